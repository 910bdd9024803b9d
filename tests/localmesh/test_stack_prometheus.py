"""The stack's Prometheus: `up` returns once it has scraped every target (so traffic sent at once shows
in rate()), and it loads every plain rule file of manifests/monitoring/, as a cluster's Prometheus does."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from egresswatch import exposition
from localmesh.stack.driver import local_stack
from localmesh.stack.plan import RULES_DIR, find_prometheus, prometheus_config, rule_files
from localmesh.stack.procs import StartError, free_port, running
from localmesh.stack.supervisor import wait_targets_scraped
from localmesh.stack.topology import Ports

needs_prometheus = pytest.mark.skipif(
    find_prometheus() is None,
    reason="needs prometheus (Debian: apt-get install prometheus) and LOCALMESH_PROMETHEUS not off",
)


def test_every_plain_rule_file_of_the_monitoring_folder_is_loaded(tmp_path: Path) -> None:
    # The folder's PrometheusRule and kustomization are Kubernetes objects, not Prometheus rule files.
    assert rule_files() == [str(RULES_DIR / "egress-rules.yaml")]
    # A rule file added next to the others is loaded too, whatever its name.
    for path in RULES_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    extra = {"groups": [{"name": "more", "rules": [{"alert": "More", "expr": "vector(1)", "for": "1m"}]}]}
    (tmp_path / "overflow-rules.yaml").write_text(yaml.safe_dump(extra))
    found = rule_files(tmp_path)
    assert found == [str(tmp_path / "egress-rules.yaml"), str(tmp_path / "overflow-rules.yaml")]
    config = yaml.safe_load(prometheus_config(Ports(), found))
    assert config["rule_files"] == found
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package ships it: the files must be rules Prometheus accepts
        cmd = [promtool, "check", "rules", *found]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_envoys_istio_metrics_are_renamed_as_egresswatch_reads_them(tmp_path: Path) -> None:
    """Real Envoy exports envoy_istio_*: the local Prometheus takes them back to istio_* with the same
    pattern egresswatch applies when it reads a proxy directly (a live scrape of real Envoy:
    tests/localmesh/test_stack_envoy.py)."""
    (job,) = yaml.safe_load(prometheus_config(Ports(), []))["scrape_configs"]
    (relabel,) = job["metric_relabel_configs"]
    assert relabel == {
        "source_labels": ["__name__"],
        "regex": exposition.ENVOY_ISTIO_NAME.pattern,
        "target_label": "__name__",
        "replacement": "$1",
    }
    promtool = shutil.which("promtool")
    if promtool:  # the whole file is a configuration Prometheus accepts
        (tmp_path / "prometheus.yml").write_text(prometheus_config(Ports(), rule_files()))
        done = subprocess.run(
            [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.prometheus
@needs_prometheus
def test_up_returns_once_prometheus_has_scraped_every_target(tmp_path: Path) -> None:
    with local_stack(tmp_path / "state") as stack:
        prometheus = stack.url("prometheus")
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert len(targets) == 2
        assert {t["health"] for t in targets} == {"up"}
        assert not [t for t in targets if t["lastScrape"].startswith("0001-")]
        # The rules are loaded: the alert exists (inactive) from the start.
        rules = requests.get(f"{prometheus}/api/v1/rules?type=alert", timeout=10).json()["data"]["groups"]
        assert "EgressBlocked" in {r["name"] for g in rules for r in g["rules"]}

        # Traffic sent right away, over a few seconds, shows in rate() and increase().
        for _ in range(4):
            assert requests.get(f"{stack.gateway}/id", timeout=30).status_code == 200
            time.sleep(0.8)
        query = 'sum(increase(istio_requests_total{reporter="source",source_workload="idgen"}[1m]))'
        deadline = time.monotonic() + 30
        seen = 0.0
        while time.monotonic() < deadline and seen < 3:
            got = requests.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
            seen = float(got["data"]["result"][0]["value"][1]) if got["data"]["result"] else 0.0
            time.sleep(0.5)
        # increase() misses a series' first request (Istio creates the series with it): 3 of 4 at least.
        assert seen >= 3, f"increase() saw {seen} of the 4 requests sent right after up"


@pytest.mark.prometheus
@needs_prometheus
def test_a_target_prometheus_cannot_scrape_is_named_when_the_wait_runs_out(tmp_path: Path) -> None:
    # A real Prometheus whose two proxies are not there: the bounded wait ends with what it saw.
    ports = Ports(gateway_admin=free_port(), sidecar_admin=free_port(), prometheus=free_port())
    (tmp_path / "prometheus.yml").write_text(prometheus_config(ports, []))
    url = f"http://127.0.0.1:{ports.prometheus}"
    cmd = [
        str(find_prometheus()),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{ports.prometheus}",
    ]
    log = tmp_path / "prometheus.log"
    with running("prometheus", cmd, f"{url}/-/ready", log), pytest.raises(StartError) as err:
        wait_targets_scraped(url, 8.0)
    message = str(err.value)
    assert "had not scraped every target within 8 s" in message
    assert f"http://127.0.0.1:{ports.gateway_admin}/stats/prometheus: health " in message
    assert f"{url}/targets" in message

"""The egress alert and recording rules: promtool checks and unit tests, and the PrometheusRule copy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cluster_paths import DATA, MANIFESTS

RULES = MANIFESTS / "monitoring" / "egress-rules.yaml"
PROMETHEUS_RULE = MANIFESTS / "monitoring" / "prometheusrule-egress.yaml"
UNIT_TESTS = DATA / "egress-rules.test.yaml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, check=False)


def plain_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def test_prometheusrule_holds_the_plain_files_groups() -> None:
    """The two forms cannot drift: the PrometheusRule's spec.groups is the rule file's groups."""
    prometheus_rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert prometheus_rule["spec"] == {"groups": plain_groups()}


def test_rule_names_and_alert_labels() -> None:
    rules = {r.get("alert") or r.get("record"): r for g in plain_groups() for r in g["rules"]}
    assert {"EgressBlocked", "EgressToUnregisteredHost"} <= set(rules)
    assert any(name.startswith("egress:") for name in rules), "no recording rule for the report"
    for alert in ("EgressBlocked", "EgressToUnregisteredHost"):
        # Which workload tried which host: the grouping of every branch of the expression.
        assert rules[alert]["expr"].count(
            "sum by (source_workload, source_workload_namespace, destination_service)"
        ) == rules[alert]["expr"].count("sum by"), alert
    assert "BlackHoleCluster" in rules["EgressBlocked"]["expr"]
    assert "PassthroughCluster" not in rules["EgressBlocked"]["expr"]
    assert "PassthroughCluster" in rules["EgressToUnregisteredHost"]["expr"]
    # The local proxies' cap on distinct passthrough hosts (localmesh.proxy.telemetry) has its own alert.
    assert "localmesh_telemetry_overflow_total" in rules["EgressHostsOverflow"]["expr"]


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


@needs_promtool
def test_promtool_check_rules_on_the_prometheusrule_groups(tmp_path: Path) -> None:
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))
    proc = promtool("check", "rules", extracted)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_unit_tests() -> None:
    """EgressBlocked fires on BlackHoleCluster series with the caller and host; neither alert fires on
    ServiceEntry traffic, EgressBlocked not on Passthrough (tests/cluster/data/egress-rules.test.yaml)."""
    proc = promtool("test", "rules", UNIT_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def mutated_unit_test(tmp_path: Path, old: str, new: str) -> subprocess.CompletedProcess[str]:
    """Run the same unit tests against a rule file with one change made."""
    rules = RULES.read_text()
    assert old in rules
    (tmp_path / "egress-rules.yaml").write_text(rules.replace(old, new))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = ["egress-rules.yaml"]
    (tmp_path / "egress-rules.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", tmp_path / "egress-rules.test.yaml")


@needs_promtool
def test_unit_tests_catch_an_alert_on_the_wrong_cluster(tmp_path: Path) -> None:
    # EgressBlocked watching PassthroughCluster would fire on allowed traffic and miss blocked calls.
    proc = mutated_unit_test(
        tmp_path,
        'destination_service_name="BlackHoleCluster"',
        'destination_service_name="PassthroughCluster"',
    )
    assert proc.returncode != 0
    assert "EgressBlocked" in proc.stdout + proc.stderr


@needs_promtool
def test_unit_tests_catch_a_missed_single_call(tmp_path: Path) -> None:
    # Without the "new series" branch, increase() never sees a single blocked call.
    blocked = 'istio_requests_total{reporter="source", destination_service_name="BlackHoleCluster"}'
    new_series_branch = (
        "      or\n"
        "      sum by (source_workload, source_workload_namespace, destination_service) (\n"
        f"        {blocked}\n"
        "        unless\n"
        f"        {blocked} offset 5m\n"
        "      )\n"
    )
    proc = mutated_unit_test(tmp_path, new_series_branch, "")
    assert proc.returncode != 0
    assert "one blocked call" in proc.stdout + proc.stderr

"""Windows that start when the applied option took effect, on the whole local mesh (`localmesh up` on free
ports, its real Prometheus), and the stack's console after a switch: its applied option, its requests/s
chart, its alerts, and a refresh that updates the data in place.

Each test switches options the way a user does (`localmesh apply -k`), sends traffic, and runs the
egresswatch commands without --window: they must see the current option's traffic only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from ew_fakes import ROOT
from test_ew_live_stack import WAIT, drive, needs_prometheus, node_names, wait_scraped

if TYPE_CHECKING:
    from localmesh.stack.driver import LocalStack

pytestmark = [pytest.mark.prometheus, needs_prometheus]
GATEWAY_TO_IDGEN = ("vapp_Kubernetes_istio-system_istio-ingressgateway", "svc_Kubernetes_recipes_idgen")


def ew(stack: LocalStack, *args: str) -> subprocess.CompletedProcess:
    """egresswatch against the stack's Prometheus, finding the stack the way `make` does (its state)."""
    cmd = [sys.executable, "-m", "egresswatch", *args, "--prometheus", stack.url("prometheus")]
    env = {**stack.env, "LOCALMESH_STATE": str(stack.state_dir)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)


def ew_json(stack: LocalStack, *args: str) -> Any:
    done = ew(stack, *args, "--json")
    assert done.returncode in (0, 1), f"egresswatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout)


def step(stack: LocalStack, option: str, ids: int) -> None:
    """Apply an option, send `ids` calls through the gateway, wait until Prometheus holds them all."""
    stack.apply(option)
    codes = drive(stack, ids=ids)
    assert codes == [502 if option == "blackhole" else 200] * ids
    wait_scraped(stack)


def kinds(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["kind"] for r in rows})


def test_commands_default_to_the_traffic_since_the_option_took_effect(
    stack: LocalStack, tmp_path: Path
) -> None:
    # serviceentry, then blackhole, then back to passthrough: the sequence.
    step(stack, "serviceentry", 2)
    step(stack, "blackhole", 2)
    stack.apply("passthrough")
    # The passthrough series may be new on this stack: Kiali's rate() never sees a series' first value, so
    # one request is scraped on its own first, and the next two make it grow.
    assert drive(stack, ids=1) == [200]
    wait_scraped(stack)
    assert drive(stack, ids=2) == [200] * 2
    wait_scraped(stack)

    report = ew_json(stack, "report")
    assert kinds(report["rows"]) == ["PassthroughCluster"], report["rows"]
    assert report["rows"][0]["count"] == 3  # exactly: the counter now less its value at the switch
    assert report["source"]["window_start"] > time.time() - WAIT * 3
    table = ew(stack, "report").stdout
    assert "since option passthrough took effect at" in table

    suggestion = ew_json(stack, "suggest")
    assert [s["host"] for s in suggestion["service_entries"]] == ["httpbin.org"]
    assert suggestion["covered"] == []  # the deleted ServiceEntry's traffic is from before the switch

    check = ew(stack, "lockdown-check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "WOULD BREAK" in check.stdout and "covered" not in check.stdout

    for rates in ("kiali", "counts"):
        graph = ew_json(stack, "graph", "--rates", rates, "--out", str(tmp_path / f"graph-{rates}.svg"))
        assert "PassthroughCluster" in node_names(graph)
        assert not node_names(graph) & {"BlackHoleCluster", "httpbin.org"}, graph["nodes"]
        assert {e["healthStatus"] for e in graph["edges"]} == {"Healthy"}

    # An explicit window still reaches back over the switches; --since takes a time or "applied".
    wide = ew_json(stack, "report", "--window", "10m")
    assert kinds(wide["rows"]) == ["BlackHoleCluster", "PassthroughCluster", "ServiceEntry"]
    same = ew_json(stack, "report", "--since", "applied")
    assert kinds(same["rows"]) == ["PassthroughCluster"]
    bad = ew(stack, "report", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday' is not 'applied'" in bad.stderr
    assert "option passthrough (since " in stack.localmesh("status").stdout


def console_graph(stack: LocalStack, want: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    last: Any = None
    while time.monotonic() < deadline:
        resp = requests.get(f"{stack.url('console')}/api/graph", timeout=10)
        last = resp.json()
        if resp.status_code == 200 and want in node_names(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"the console never showed {want} within {WAIT:.0f} s; last: {last}")


def test_console_after_a_switch_shows_only_the_new_option(stack: LocalStack) -> None:
    step(stack, "blackhole", 3)
    red = console_graph(stack, "BlackHoleCluster")
    health = {(e["source"], e["target"]): e["healthStatus"] for e in red["edges"]}
    assert health[GATEWAY_TO_IDGEN] == "Failure"

    step(stack, "serviceentry", 3)
    graph = console_graph(stack, "httpbin.org")
    assert "BlackHoleCluster" not in node_names(graph)
    health = {(e["source"], e["target"]): e["healthStatus"] for e in graph["edges"]}
    assert health[GATEWAY_TO_IDGEN] == "Healthy", graph["edges"]

    live = requests.get(f"{stack.url('console')}/api/live", timeout=10).json()["html"]
    assert "Applied: <b>option serviceentry</b>" in live
    # The chart has a line per destination cluster of the last minutes, and marks the switch.
    assert 'class="rate-chart"' in live and 'data-name="httpbin.org"' in live
    assert 'data-name="BlackHoleCluster"' in live and 'class="marker"' in live


def test_egress_blocked_alert_fires_locally_and_the_console_lists_it(stack: LocalStack) -> None:
    step(stack, "blackhole", 2)
    deadline = time.monotonic() + WAIT
    firing: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not firing:
        got = requests.get(f"{stack.url('prometheus')}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        firing = [
            a
            for a in got
            if a["labels"]["alertname"] == "EgressBlocked"
            and a["state"] == "firing"
            and a["labels"].get("destination_service") == "httpbin.org"
            and a["labels"].get("source_workload") == "idgen"
        ]
        time.sleep(0.5)
    assert firing, "EgressBlocked never fired in the stack's Prometheus"
    assert firing[0]["labels"]["severity"] == "critical"

    deadline = time.monotonic() + WAIT
    shown: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not shown:
        resp = requests.get(f"{stack.url('console')}/api/alerts", timeout=10)
        shown = [a for a in resp.json() or [] if a["name"] == "EgressBlocked" and a["state"] == "firing"]
        time.sleep(0.5)
    assert shown and shown[0]["labels"]["destination_service"] == "httpbin.org"
    page = requests.get(f"{stack.url('console')}/", timeout=10).text
    assert "data-alertname='EgressBlocked' data-state='firing'" in page

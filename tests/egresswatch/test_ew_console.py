"""The live console as a real process on a free port: its JSON and page over HTTP, its error page when
Prometheus is down, its proxies mode, and the page in headless Chromium (Debian's) with a screenshot
(in the test's temporary folder)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ew_fakes import CHROMIUM, CHROMIUM_ARGS, FakeProxy, Mesh
from ewseries import SCENARIOS
from playwright import sync_api

from localmesh.stack.procs import free_port, running


def console_cmd(port: int, *source: str, refresh: str = "1") -> list[str]:
    return [
        sys.executable,
        "-m",
        "egresswatch",
        "console",
        *source,
        "--port",
        str(port),
        "--refresh",
        refresh,
    ]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for_graph(base: str, timeout: float = 20.0) -> dict:
    """Poll /api/graph until the background refresh has built a graph (503 until then)."""
    deadline = time.monotonic() + timeout
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = get(f"{base}/api/graph")
        if status == 200:
            return json.loads(body)
        time.sleep(0.3)
    raise AssertionError(f"no graph from the console within {timeout:.0f} s (last: {status} {body[:300]})")


@pytest.mark.prometheus
def test_console_serves_graph_report_and_svg(passthrough: Mesh, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = console_cmd(port, "--prometheus", passthrough.prometheus)
    with running("console", cmd, f"{base}/healthz", tmp_path / "console.log"):
        graph = wait_for_graph(base)
        # Kiali's UI default: the versioned-app graph (app nodes); ?graphType=workload gives workloads.
        assert graph["graphType"] == "versionedApp"
        assert {n["kind"] for n in graph["nodes"]} >= {"PassthroughCluster", "app", "unknown"}
        status, body = get(f"{base}/api/graph?graphType=workload")
        workload = json.loads(body)
        assert status == 200 and workload["graphType"] == "workload"
        assert {n["kind"] for n in workload["nodes"]} >= {"PassthroughCluster", "workload", "unknown"}
        assert "app" not in {n["kind"] for n in workload["nodes"]}
        status, svg = get(f"{base}/graph.svg?graphType=workload")
        assert status == 200 and 'data-graph-type="workload"' in svg and 'data-node-type="app"' not in svg
        status, text = get(f"{base}/api/graph?graphType=app")
        assert status == 400 and "use graphType=versionedApp or graphType=workload" in text
        status, report = get(f"{base}/api/report")
        assert status == 200 and json.loads(report)["rows"][0]["kind"] == "PassthroughCluster"
        status, svg = get(f"{base}/graph.svg")
        assert status == 200 and svg.startswith("<svg") and 'data-kind="PassthroughCluster"' in svg
        status, page = get(f"{base}/")
        assert status == 200 and '<meta http-equiv="refresh" content="1">' in page and "Egress report" in page


def test_console_page_explains_an_unreachable_prometheus(tmp_path: Path) -> None:
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    base = f"http://127.0.0.1:{port}"
    with running("console", console_cmd(port, "--prometheus", dead), f"{base}/healthz", tmp_path / "c.log"):
        deadline = time.monotonic() + 10
        page = ""
        while "Cannot reach Prometheus" not in page and time.monotonic() < deadline:
            time.sleep(0.3)
            _, page = get(f"{base}/")
        assert f"Cannot reach Prometheus at {dead}" in page and "make up" in page
        status, body = get(f"{base}/api/graph")
        assert status == 503 and "Cannot reach Prometheus" in json.loads(body)["error"]


def test_console_reads_proxies_without_prometheus(tmp_path: Path) -> None:
    scenario = SCENARIOS["blackhole"]()
    proxies = [FakeProxy("gw", scenario.gateway).start(), FakeProxy("side", scenario.sidecar).start()]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        cmd = console_cmd(port, "--proxies", *(p.url for p in proxies))
        with running("console", cmd, f"{base}/healthz", tmp_path / "c.log"):
            graph = wait_for_graph(base)
            assert "BlackHoleCluster" in {n["kind"] for n in graph["nodes"]}
            assert {e["healthStatus"] for e in graph["edges"]} == {"Failure"}
    finally:
        for p in proxies:
            p.stop()


@pytest.mark.prometheus
@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_console_in_headless_chromium(passthrough: Mesh, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = console_cmd(port, "--prometheus", passthrough.prometheus, refresh="3")
    with running("console", cmd, f"{base}/healthz", tmp_path / "console.log"):
        wait_for_graph(base)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{base}/")
                page.wait_for_selector(
                    "svg.egress-graph g.node[data-kind='PassthroughCluster']", timeout=15000
                )
                assert "egresswatch console" in page.title()
                names = page.eval_on_selector_all(
                    "svg.egress-graph g.node", "els => els.map(e => e.dataset.name)"
                )
                assert set(names) == {"unknown", "istio-ingressgateway", "idgen", "PassthroughCluster"}
                assert page.locator("svg.egress-graph g.node[data-kind='PassthroughCluster']").is_visible()
                assert page.locator("table#report tr.report-row").count() == 2
                assert set(
                    page.eval_on_selector_all(
                        "svg.egress-graph g.node", "els => els.map(e => e.dataset.nodeType)"
                    )
                ) == {"unknown", "app", "service"}
                page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
                # The workload graph, Kiali's other view: its link, kept across the page's live refresh.
                page.click("#graph-types a[href='?graphType=workload']")
                page.wait_for_url(f"{base}/?graphType=workload")
                page.wait_for_function("Number(document.body.dataset.refreshes || 0) >= 1", timeout=15000)
                types = page.eval_on_selector_all(
                    "svg.egress-graph g.node", "els => els.map(e => e.dataset.nodeType)"
                )
                assert set(types) == {"unknown", "workload", "service"}
                assert page.locator("#graph-types b").inner_text() == "workload graph"
            finally:
                browser.close()
    assert (tmp_path / "console.png").stat().st_size > 10_000

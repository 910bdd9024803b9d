"""The benchmarks' tools, run for real and briefly: the fast upstream, both load generators, the proxy rig
(route tables built from manifests/ must still route the benchmark's requests), /proc readings, the
RESULTS.md writer and the py-spy output reader. No figure is judged: only that each tool measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bench import loadgen, procstat, profile, results
from bench.loadgen import Request
from bench.parts import proxy_rig
from localmesh.stack.procs import free_port, running
from localmesh.stack.topology import EXTERNAL_HOST, IDGEN_SERVICE


@pytest.fixture(scope="module")
def fast_upstream(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    cmd = [sys.executable, "-m", "bench.fastupstream", "--port", str(port)]
    log = tmp_path_factory.mktemp("fastupstream") / "log"
    with running("fastupstream", cmd, f"http://127.0.0.1:{port}/", log):
        yield f"http://127.0.0.1:{port}"


def test_python_client_measures_a_bounded_run(fast_upstream: str) -> None:
    result = loadgen.run_python(Request(f"{fast_upstream}/uuid"), connections=2, seconds=0.5)
    assert result.requests > 0
    assert result.statuses == {200: result.requests}
    assert result.socket_errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms


def test_python_client_paces_and_posts(fast_upstream: str) -> None:
    req = Request(f"{fast_upstream}/anything", "POST", b'{"a": 1}', {"Content-Type": "application/json"})
    result = loadgen.run_python(req, connections=2, seconds=0.5, rate=40)
    # 40 req/s for half a second over 2 connections: about 20 requests, never the hundreds unpaced.
    assert 5 <= result.requests <= 30
    assert result.statuses == {200: result.requests}


@pytest.mark.skipif(loadgen.WRK is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_run_reports_figures_and_statuses(fast_upstream: str) -> None:
    result = loadgen.run_wrk(Request(f"{fast_upstream}/uuid"), connections=2, seconds=1, count_statuses=True)
    assert result.tool == "wrk"
    assert result.requests > 0
    assert result.statuses == {200: result.requests}
    assert result.non2xx == 0 and result.socket_errors == 0


def test_proxy_rig_routes_every_path_to_the_fast_upstream(tmp_path: Path) -> None:
    with proxy_rig(tmp_path) as rig:
        cases = [
            (f"{rig.outbound}/uuid", EXTERNAL_HOST, b"envoy"),
            (f"{rig.inbound}/id", IDGEN_SERVICE, b"istio-envoy"),
            (f"{rig.gateway}/id", None, b"istio-envoy"),
        ]
        for url, host, server in cases:
            request = urllib.request.Request(url, headers={"Host": host} if host else {})
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200, url
                assert b'"uuid"' in resp.read(), url
                assert resp.headers["server"].encode() == server, url
        # Every proxy is one process whose CPU and memory /proc reports.
        for child in (rig.sidecar, rig.gateway_child):
            assert procstat.cpu_seconds(child.pid) > 0
            assert procstat.rss_mb(child.pid) > 1
            assert procstat.peak_rss_mb(child.pid) >= procstat.rss_mb(child.pid)


def test_process_tree_cpu_includes_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procstat.descendants(os.getpid())
        assert procstat.tree_cpu_seconds(os.getpid()) >= procstat.cpu_seconds(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_record_replaces_its_own_section_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    results.record("proxy", ["## 1. Proxy", "first"], path=path)
    path.write_text(path.read_text() + "\n## Analysis\n\nwritten by hand\n")
    results.record("chain", ["## 2. Chain", "chain figures"], path=path)
    results.record("proxy", ["## 1. Proxy", "second"], path=path)
    text = path.read_text()
    assert "second" in text and "first" not in text
    assert text.index("chain figures") < text.index("## Analysis")  # new sections go above the analysis
    assert text.count("<!-- bench:proxy -->") == 1
    assert text.endswith("written by hand\n")


def test_top_frames_counts_self_time_of_leaf_frames() -> None:
    collapsed = (
        "main (/x/localmesh/proxy.py:279);write (/x/localmesh/upstream.py:108) 30\n"
        "main (/x/localmesh/proxy.py:279);run (/usr/lib/python3.11/asyncio/runners.py:118) 10\n"
    )
    top = profile.top_frames(collapsed)
    assert top == [
        (75.0, "write (localmesh/upstream.py:108)"),
        (25.0, "run (lib/python3.11/asyncio/runners.py:118)"),
    ]

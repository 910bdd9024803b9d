"""The benchmarks' tools, run for real and briefly: the fast upstream, both load generators, the proxy rig
(route tables built from manifests/ must still route the benchmark's requests), /proc readings, the
RESULTS.md writer and the py-spy output reader. No figure is judged: only that each tool measures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bench import loadgen, procstat, profile, proxy_overhead, results, startup
from bench.loadgen import Request
from bench.parts import DATAPLANES, proxy_rig
from localmesh.envoy.binary import EnvoyUnavailable, envoy_binary
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


@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_proxy_rig_routes_every_path_to_the_fast_upstream(tmp_path: Path, dataplane: str) -> None:
    if dataplane == "envoy":
        envoy_or_skip()
    with proxy_rig(tmp_path, dataplanes=(dataplane,)) as rig:
        plane = rig.planes[dataplane]
        cases = [
            (f"{plane.outbound}/uuid", EXTERNAL_HOST, b"envoy"),
            (f"{plane.inbound}/id", IDGEN_SERVICE, b"istio-envoy"),
            (f"{plane.gateway}/id", None, b"istio-envoy"),
        ]
        for url, host, server in cases:
            request = urllib.request.Request(url, headers={"Host": host} if host else {})
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200, url
                assert b'"uuid"' in resp.read(), url
                assert resp.headers["server"].encode() == server, url
        # Every proxy is one process whose CPU and memory /proc reports.
        for child in (plane.sidecar, plane.gateway_child):
            assert procstat.cpu_seconds(child.pid) > 0
            assert 0 < procstat.private_mb(child.pid) < procstat.rss_mb(child.pid)
            assert procstat.peak_rss_mb(child.pid) >= procstat.rss_mb(child.pid)


def envoy_or_skip() -> None:
    try:
        envoy_binary()
    except EnvoyUnavailable as err:
        pytest.skip(f"no Envoy here: {err}")


def test_proxy_bench_puts_envoy_rows_beside_the_local_proxies(capsys: pytest.CaptureFixture[str]) -> None:
    """The whole proxy benchmark at a tiny size (a few hundred requests per path, the Python client):
    every table has its Envoy rows, with numbers; which data plane wins is not judged here."""
    envoy_or_skip()
    tiny = ["--seconds", "0.3", "--rounds", "1", "--connections", "2", "--paced-connections", "2"]
    code = proxy_overhead.main([*tiny, "--rate", "200", "--python-client", "--no-record"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()]
    envoy_rows = [row for row in rows if any(cell.startswith("Envoy 1.") for cell in row)]
    number = re.compile(r"^[+-]?[\d,]+(\.\d+)?x?( MB)?$")

    def numbers(row: list[str]) -> list[str]:
        return [cell for cell in row if number.match(cell)]

    # Per hop: the hop table (3 rows), the per-proxy CPU table (4: the gateway hop has two proxies),
    # memory (sidecar and gateway).
    hops = [row for row in envoy_rows if row[0].split(":")[0] in proxy_overhead.HOPS and len(row) == 9]
    assert [row[0].split(":")[0] for row in hops] == list(proxy_overhead.HOPS)
    assert all(len(numbers(row)) == 7 for row in hops), hops
    cpu = [row for row in envoy_rows if row[2].startswith("Envoy 1.")]
    assert [(row[0], row[1]) for row in cpu] == [
        ("outbound", "sidecar"),
        ("inbound", "sidecar"),
        ("gateway", "gateway"),
        ("gateway", "sidecar"),
    ]
    assert all(len(numbers(row)) == 3 for row in cpu), cpu
    memory = [row for row in envoy_rows if len(row) == 6 and row[1].startswith("Envoy 1.")]
    assert [row[0] for row in memory] == ["sidecar", "gateway"]
    for row in memory:
        assert len(numbers(row)) == 4, row
        assert float(row[-1].replace(",", "")) > 0, f"Envoy counted no istio_requests_total: {row}"
    # Nine verdicts, each local against Envoy with its ratio, and the probe's claim answered.
    verdicts = [row for row in rows if row[-1] in ("PASS", "FAIL")]
    assert len(verdicts) == 9, verdicts
    assert all(number.match(row[-2]) and row[-2].endswith("x") for row in verdicts), verdicts
    assert re.search(r"\*\*(confirmed|partly confirmed|refuted[^*]*)\*\* by this run", out)


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


def test_startup_bench_starts_each_data_plane_to_a_first_answer(tmp_path: Path) -> None:
    """bench/startup.py's side-by-side start, once per data plane: each comes up from the same
    manifests and answers through gateway -> sidecar -> app (wait_for raises otherwise)."""
    envoy_or_skip()
    took = startup.time_dataplane_starts(tmp_path, 1)
    assert set(took) == set(DATAPLANES)
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in took.values()), took
    assert startup.starts_table(took)[-3].startswith("| local Python proxies |")

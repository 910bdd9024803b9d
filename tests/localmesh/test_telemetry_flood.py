"""Monitoring cannot be blinded: a flood of invented Host values through the real sidecar process keeps
its metrics page bounded (distinct passthrough hosts are capped, the rest is counted as overflow)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from proxy_testlib import App, samples, tables

from localmesh.mesh.names import BLACKHOLE, PASSTHROUGH, UNKNOWN, Service, Workload
from localmesh.proxy.telemetry import DEFAULT_MAX_PASSTHROUGH_HOSTS, MAX_HOSTS_ENV, OVERFLOW_METRIC, Telemetry
from localmesh.stack.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 20_000
CONNECTIONS = 8
BATCH = 250  # requests pipelined on a connection before their answers are read
PAGE_LIMIT = 64 * 1024 * 1024  # stop reading a page beyond this (today's code would serve ~1 GB)


class Sidecar:
    """`python -m localmesh.proxy --role sidecar --offline` on free ports, stopped by its PID."""

    def __init__(self, tmp: Path, app: App, env: dict[str, str]) -> None:
        routes = tmp / "idgen.json"
        routes.write_text(tables("passthrough", {"httpbin.org:80": app.address})["idgen"].to_json())
        self.outbound, self.admin = free_port(), free_port()
        cmd = [sys.executable, "-m", "localmesh.proxy", "--role", "sidecar", "--routes", str(routes)]
        cmd += ["--admin", f"127.0.0.1:{self.admin}", "--inbound", f"127.0.0.1:{free_port()}"]
        cmd += ["--app", f"127.0.0.1:{app.port}", "--outbound", f"127.0.0.1:{self.outbound}", "--offline"]
        clean = {k: v for k, v in os.environ.items() if k != MAX_HOSTS_ENV}
        self.proc = subprocess.Popen(
            cmd, env={**clean, **env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        # The proxy prints its listeners once they are bound (or why it could not start).
        self.banner = self.proc.stdout.readline()

    def page(self) -> bytes:
        """The metrics page, read up to PAGE_LIMIT bytes."""
        url = f"http://127.0.0.1:{self.admin}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=120) as resp:
            return resp.read(PAGE_LIMIT + 1)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


@contextmanager
def sidecar(tmp: Path, env: dict[str, str]) -> Iterator[Sidecar]:
    with App() as app:
        proxy = Sidecar(tmp, app, env)
        try:
            yield proxy
        finally:
            proxy.stop()


def read_answers(sock: socket.socket, count: int) -> list[int]:
    """The status codes of `count` responses with content-length framing, in order."""
    data, codes = b"", []
    while len(codes) < count:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(codes)} of {count} answers"
            data += chunk
            continue
        head = data[:end].decode("latin-1")
        length = int(re.search(r"(?im)^content-length:\s*(\d+)", head)[1])
        if len(data) < end + 4 + length:
            data += sock.recv(65536)
            continue
        codes.append(int(head.split(" ", 2)[1]))
        data = data[end + 4 + length :]
    return codes


def flood(port: int, hosts: int) -> dict[int, int]:
    """One GET per distinct host, over CONNECTIONS keep-alive connections, pipelined in batches."""
    statuses: dict[int, int] = {}
    conns = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CONNECTIONS)]
    try:
        for start in range(0, hosts, BATCH * CONNECTIONS):
            sent = []
            for c, sock in enumerate(conns):
                first = start + c * BATCH
                names = [f"h{n}.flood.test" for n in range(first, min(first + BATCH, hosts))]
                sock.sendall(
                    b"".join(
                        b"GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (h.encode(), h.encode())
                        for h in names
                    )
                )
                sent.append(len(names))
            for sock, count in zip(conns, sent, strict=True):
                for code in read_answers(sock, count):
                    statuses[code] = statuses.get(code, 0) + 1
    finally:
        for sock in conns:
            sock.close()
    return statuses


def destination_services(page: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, count in samples(page, "istio_requests_total"):
        out[labels["destination_service"]] = out.get(labels["destination_service"], 0) + count
    return out


def test_a_20000_host_flood_keeps_the_metrics_page_bounded_and_counts_the_overflow(tmp_path):
    with sidecar(tmp_path, {}) as proxy:
        statuses = flood(proxy.outbound, FLOOD)
        page = proxy.page()
        rss = proxy.rss_kib()
    # Offline, an invented host fails as a failed DNS lookup: a 503 UF that still makes a series.
    assert statuses == {503: FLOOD}
    assert len(page) <= PAGE_LIMIT, "the metrics page grew without bound"
    text = page.decode()
    services = destination_services(text)
    assert len(services) == DEFAULT_MAX_PASSTHROUGH_HOSTS + 1
    overflowed = FLOOD - DEFAULT_MAX_PASSTHROUGH_HOSTS
    assert services["overflow"] == overflowed
    assert sum(services.values()) == FLOOD
    assert samples(text, OVERFLOW_METRIC) == [
        (
            {
                "source_workload": "idgen",
                "source_workload_namespace": "recipes",
                "destination_service_name": "PassthroughCluster",
            },
            overflowed,
        )
    ]
    # Each HTTP series is about 50 KB of exposition: the cap's hosts plus one overflow series.
    per_series = len(page) / len(samples(text, "istio_requests_total"))
    assert len(page) < (DEFAULT_MAX_PASSTHROUGH_HOSTS + 5) * per_series
    print(f"flood of {FLOOD} hosts: page {len(page) / 1e6:.1f} MB, proxy RSS {rss / 1024:.0f} MiB")
    assert rss < 300 * 1024


def test_the_cap_can_be_turned_off_and_set(tmp_path):
    with sidecar(tmp_path, {MAX_HOSTS_ENV: "0"}) as proxy:
        flood(proxy.outbound, 300)
        text = proxy.page().decode()
    assert len(destination_services(text)) == 300 and "overflow" not in destination_services(text)
    assert OVERFLOW_METRIC not in text
    with sidecar(tmp_path, {MAX_HOSTS_ENV: "10"}) as proxy:
        flood(proxy.outbound, 300)
        text = proxy.page().decode()
    assert destination_services(text)["overflow"] == 290 and len(destination_services(text)) == 11


@pytest.mark.parametrize("value", ["many", "-1"])
def test_an_invalid_cap_is_a_clear_error(tmp_path, value):
    with App() as app:
        proxy = Sidecar(tmp_path, app, {MAX_HOSTS_ENV: value})
        try:
            proxy.proc.wait(30)
            out = proxy.banner + proxy.proc.stdout.read()
        finally:
            proxy.stop()
    assert proxy.proc.returncode == 2
    assert f"{MAX_HOSTS_ENV}={value!r} is not a whole number" in out


def test_the_alert_watches_the_counter_the_proxies_export():
    rules = (ROOT / "manifests" / "monitoring" / "egress-rules.yaml").read_text()
    assert f"({OVERFLOW_METRIC}) > 0" in rules


def test_localmesh_up_refuses_an_invalid_cap_before_starting_anything(tmp_path):
    env = {**os.environ, "LOCALMESH_STATE": str(tmp_path / "state"), MAX_HOSTS_ENV: "lots"}
    localmesh = ROOT / ".venv" / "bin" / "localmesh"
    done = subprocess.run(
        [str(localmesh), "up"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert done.returncode == 2
    assert f"localmesh up: {MAX_HOSTS_ENV}='lots' is not a whole number" in done.stderr
    assert not (tmp_path / "state").exists()


def test_the_cap_counts_passthrough_and_blackhole_hosts_only_and_covers_tcp():
    idgen = Workload("idgen", "recipes")
    telemetry = Telemetry(max_passthrough_hosts=2)

    def http(host: str, cluster: str) -> None:
        telemetry.http(
            "source", idgen, UNKNOWN, Service(host, cluster, "unknown"), 502, "-", "unknown"
        ).observe(1, 1, 1)

    for host in ("a.test", "b.test", "c.test", "a.test"):
        http(host, PASSTHROUGH)
    http("d.test", BLACKHOLE)
    # A registered host (ServiceEntry) is not the app's free choice: never capped.
    telemetry.http(
        "source", idgen, UNKNOWN, Service("httpbin.org", "httpbin.org", "recipes"), 200, "-", "unknown"
    )
    telemetry.tcp(
        "source", idgen, UNKNOWN, Service("e.test", PASSTHROUGH, "unknown"), "-", "unknown"
    ).opened += 1
    text = telemetry.exposition()
    assert destination_services(text) == {"a.test": 2, "b.test": 1, "overflow": 2, "httpbin.org": 0}
    assert [
        labels["destination_service"] for labels, _ in samples(text, "istio_tcp_connections_opened_total")
    ] == ["overflow"]
    overflow = {labels["destination_service_name"]: count for labels, count in samples(text, OVERFLOW_METRIC)}
    assert overflow == {PASSTHROUGH: 2, BLACKHOLE: 1}

"""Fixtures for egresswatch: fake proxies serving Istio-shaped /stats/prometheus, and a real Prometheus
(Debian's binary) scraping them every second on 127.0.0.1, one per egress option.

The fake proxies are the only stand-in: they play the gateway's and idgen's sidecar's admin endpoints
with series the test controls (and can change between scrapes). Everything else is real: Prometheus
scrapes, stores and evaluates the PromQL that egresswatch sends over HTTP.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ewseries import SCENARIOS, Scenario, Series

from localmesh.procs import free_port, running


def _import_real_package() -> None:
    """pytest puts tests/ on sys.path, where this folder would make `egresswatch` a namespace package;
    import the real package (the editable install) before any test does."""
    if "egresswatch" in sys.modules:
        return
    tests_dir = Path(__file__).resolve().parents[1]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != tests_dir]
    try:
        importlib.import_module("egresswatch")
    finally:
        sys.path[:] = saved


_import_real_package()

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "out"

HISTOGRAM_BUCKETS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)


@dataclass
class FakeProxy:
    """An Envoy-like admin endpoint: GET /stats/prometheus renders the series at the time of the scrape."""

    name: str
    series: list[Series] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    scrapes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def value(self, s: Series, now: float) -> int:
        return math.floor(s.base + s.rate * (now - (s.started or self.started)))

    def switch(self, series: list[Series]) -> None:
        """What a config push does to a proxy's counters: the old series stop growing (Envoy keeps them),
        the new ones start from 0 now."""
        now = time.time()
        with self.lock:
            old = {s.key: Series(s.metric, s.labels, 0.0, now, self.value(s, now)) for s in self.series}
            for s in series:
                old.pop(s.key, None)
            self.series = [*old.values(), *(Series(s.metric, s.labels, s.rate, now) for s in series)]

    def exposition(self) -> str:
        """Text format 0.0.4 as Envoy writes it: # TYPE per family, integer counters, and one request
        duration histogram (Envoy's default buckets) for the first HTTP series."""
        now = time.time()
        elapsed = now - self.started
        with self.lock:
            series = list(self.series)
            self.scrapes += 1
        lines: list[str] = []
        typed: set[str] = set()
        for s in series:
            if s.metric not in typed:
                lines.append(f"# TYPE {s.metric} counter")
                typed.add(s.metric)
            lines.append(f"{s.metric}{{{s.render_labels()}}} {self.value(s, now)}")
        http = [s for s in series if s.metric == "istio_requests_total"]
        if http:
            name = "istio_request_duration_milliseconds"
            labels = http[0].render_labels()
            count = self.value(http[0], now)
            lines.append(f"# TYPE {name} histogram")
            for le in HISTOGRAM_BUCKETS:
                lines.append(f'{name}_bucket{{{labels},le="{le:g}"}} {count if le >= 25 else 0}')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
            lines.append(f"{name}_sum{{{labels}}} {count * 20}")
            lines.append(f"{name}_count{{{labels}}} {count}")
        lines.append("# TYPE envoy_server_uptime gauge")
        lines.append(f"envoy_server_uptime {int(elapsed)}")
        return "\n".join(lines) + "\n"

    def start(self) -> FakeProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/stats/prometheus":
                    self.send_error(404)
                    return
                body = proxy.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Mesh:
    """One egress option as Prometheus sees it: the two fake proxies and the Prometheus URL."""

    scenario: Scenario
    gateway: FakeProxy
    sidecar: FakeProxy
    prometheus: str

    @property
    def proxies(self) -> list[str]:
        return [self.gateway.url, self.sidecar.url]


def prom_query(url: str, query: str) -> list[dict]:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=5
    ) as r:
        return json.load(r)["data"]["result"]


def wait_for_samples(url: str, minimum: int = 5, timeout: float = 30.0) -> None:
    """Wait until Prometheus holds `minimum` scrapes of the fake proxies (1 s apart), so windows have data."""
    deadline = time.monotonic() + timeout
    query = "min(count_over_time(up[1m]))"
    while time.monotonic() < deadline:
        result = prom_query(url, query)
        if result and float(result[0]["value"][1]) >= minimum:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus at {url} has fewer than {minimum} scrapes after {timeout:.0f} s")


def prometheus_config(targets: list[str]) -> str:
    hosts = ", ".join(f'"{t.removeprefix("http://")}"' for t in targets)
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "- job_name: envoy-stats\n"
        "  metrics_path: /stats/prometheus\n"
        f"  static_configs:\n  - targets: [{hosts}]\n"
    )


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return PROMETHEUS


@pytest.fixture(scope="session")
def start_prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator:
    """A factory: start a real Prometheus scraping the given targets; all are stopped at session end."""
    stack = []

    def start(name: str, targets: list[str]) -> str:
        tmp = tmp_path_factory.mktemp(f"prom-{name}")
        (tmp / "prometheus.yml").write_text(prometheus_config(targets))
        port = free_port()
        cmd = [
            prometheus_bin,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        ctx = running(f"prometheus-{name}", cmd, f"http://127.0.0.1:{port}/-/ready", tmp / "prometheus.log")
        ctx.__enter__()
        stack.append(ctx)
        return f"http://127.0.0.1:{port}"

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="session")
def meshes(start_prometheus) -> Iterator[dict[str, Mesh]]:
    """The three egress options, each with its own fake proxies and Prometheus, all scraping in parallel."""
    built: dict[str, Mesh] = {}
    proxies: list[FakeProxy] = []
    try:
        for name, make in SCENARIOS.items():
            scenario = make()
            gw = FakeProxy(f"{name}-gateway", scenario.gateway).start()
            side = FakeProxy(f"{name}-sidecar", scenario.sidecar).start()
            proxies += [gw, side]
            built[name] = Mesh(scenario, gw, side, start_prometheus(name, [gw.url, side.url]))
        for mesh in built.values():
            wait_for_samples(mesh.prometheus)
        yield built
    finally:
        for p in proxies:
            p.stop()


@pytest.fixture(scope="session")
def passthrough(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["passthrough"]


@pytest.fixture(scope="session")
def blackhole(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["blackhole"]


@pytest.fixture(scope="session")
def serviceentry(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["serviceentry"]


@pytest.fixture()
def fake_proxy() -> Iterator[FakeProxy]:
    proxy = FakeProxy("scratch").start()
    yield proxy
    proxy.stop()

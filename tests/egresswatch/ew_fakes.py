"""Test helpers for egresswatch: fake proxies serving Istio-shaped /stats/prometheus, and a real Prometheus
(Debian's binary) scraping them every second on 127.0.0.1, one per egress option.

The fake proxies are the only stand-in: they play the gateway's and idgen's sidecar's admin endpoints
with series the test controls (and can change between scrapes). Everything else is real: Prometheus
scrapes, stores and evaluates the PromQL that egresswatch sends over HTTP.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ewseries import Scenario, Series

from localmesh.stack.procs import free_port

# Debian's Chromium, driven by Playwright (it never downloads a browser); flags that keep it off the
# network, as this machine has none.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]

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


class ManualClock:
    """A clock that moves only when told: the counters of a FakeProxy on it grow by exactly the time a
    test advances it, without waiting for real time to pass."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeProxy:
    """An Envoy-like admin endpoint: GET /stats/prometheus renders the series at the time of the scrape
    (the time of `clock`: real by default)."""

    name: str
    series: list[Series] = field(default_factory=list)
    started: float | None = None  # when the proxy started (None: now)
    scrapes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def value(self, s: Series, now: float) -> int:
        return math.floor(s.base + s.rate * (now - (s.started or self.started)))

    def switch(self, series: list[Series]) -> None:
        """What a config push does to a proxy's counters: the old series stop growing (Envoy keeps them),
        the new ones start from 0 now."""
        now = self.clock()
        with self.lock:
            old = {s.key: Series(s.metric, s.labels, 0.0, now, self.value(s, now)) for s in self.series}
            for s in series:
                old.pop(s.key, None)
            self.series = [*old.values(), *(Series(s.metric, s.labels, s.rate, now) for s in series)]

    def exposition(self) -> str:
        """Text format 0.0.4 as Envoy writes it: # TYPE per family, integer counters, and one request
        duration histogram (Envoy's default buckets) for the first HTTP series."""
        now = self.clock()
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
        # shutdown() returns at the next poll: a short interval keeps each test's teardown short.
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()
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

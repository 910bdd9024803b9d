"""A live console: the graph and the egress report on one local page, refreshed every few seconds.

A background thread rebuilds graph and report every `refresh` seconds (so Prometheus sees one set
of queries per period, however many browsers are open); the page reloads itself with a meta refresh
(no JavaScript). Bound to 127.0.0.1 by default; port 20001 is Kiali's (config.go Server.Port).
Routes: / (page), /graph.svg, /api/graph, /api/report (JSON), /healthz.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from egresswatch import exposition, render
from egresswatch.errors import EgressWatchError, UsageError
from egresswatch.graph import Graph, build_graph
from egresswatch.promql import Window
from egresswatch.report import Report, build_report
from egresswatch.source import METRICS, PrometheusSource, ProxiesSource, Source


@dataclass
class View:
    graph: Graph | None = None
    report: Report | None = None
    error: str | None = None
    updated: float = 0.0


class Console:
    """Holds the latest view and refreshes it; `source_factory` makes a fresh Source per refresh."""

    def __init__(
        self, source_factory: Callable[[], Source], namespace: str, refresh: float, label: str
    ) -> None:
        self.source_factory = source_factory
        self.namespace = namespace
        self.refresh = refresh
        self.label = label
        self.view = View(error="Waiting for the first data...")
        self._stop = threading.Event()

    def update(self) -> None:
        try:
            source = self.source_factory()  # one source per refresh: graph and report see the same numbers
            graph = build_graph(source, self.namespace)
            report = build_report(source, self.namespace, egress_only=True)
            done = getattr(self.source_factory, "done", None)
            if done:
                done(source)
            self.view = View(graph, report, None, time.time())
        except EgressWatchError as err:
            self.view = View(None, None, str(err), time.time())

    def run_updates(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.update()
            self._stop.wait(max(0.2, self.refresh - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()

    def page(self) -> str:
        v = self.view
        return render.render_html(
            v.graph,
            v.report,
            title=f"egresswatch console: namespace {self.namespace}",
            refresh_seconds=max(1, round(self.refresh)),
            error=v.error,
            subtitle=self.label,
        )


def prometheus_factory(url: str, window: Window) -> Callable[[], Source]:
    return lambda: PrometheusSource(url, window)


class ProxiesFactory:
    """Rolling deltas without Prometheus: each refresh compares a new scrape with the previous one."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.last: exposition.Snapshot | None = None

    def __call__(self) -> Source:
        if self.last is None:
            self.last = exposition.scrape([exposition.metrics_url(u) for u in self.urls], METRICS)
        return ProxiesSource(self.urls, method="since-snapshot", baseline=self.last)

    def done(self, source: Source) -> None:
        if isinstance(source, ProxiesSource):
            self.last = source.end_snapshot


def make_handler(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "egresswatch"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            v = console.view
            if path == "/":
                self._send(200, "text/html; charset=utf-8", console.page())
            elif path == "/healthz":
                self._send(200, "text/plain", "ok\n")
            elif path == "/graph.svg" and v.graph is not None:
                self._send(200, "image/svg+xml", render.render_svg(v.graph))
            elif path == "/api/graph":
                body: dict[str, Any] = v.graph.to_dict() if v.graph else {"error": v.error}
                self._send(200 if v.graph else 503, "application/json", json.dumps(body, indent=2))
            elif path == "/api/report":
                from egresswatch.report import to_json

                body = to_json(v.report) if v.report else {"error": v.error}
                self._send(200 if v.report else 503, "application/json", json.dumps(body, indent=2))
            else:
                self._send(404 if path != "/graph.svg" else 503, "text/plain", f"{v.error or 'not found'}\n")

        def _send(self, code: int, ctype: str, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per browser refresh would drown the stack's log

    return Handler


def serve(console: Console, host: str, port: int) -> None:
    """Serve until interrupted (SIGINT/SIGTERM end the process; nothing to clean up on disk)."""
    try:
        server = ThreadingHTTPServer((host, port), make_handler(console))
    except OSError as err:
        raise UsageError(
            f"Cannot listen on {host}:{port} ({err.strerror}). Is a console already running? "
            f"Pick another --port."
        ) from err
    server.daemon_threads = True
    updater = threading.Thread(target=console.run_updates, name="egresswatch-refresh", daemon=True)
    updater.start()
    print(
        f"egresswatch console on http://{host}:{port}/ "
        f"({console.label}; refresh every {console.refresh:g} s)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        console.stop()
        server.server_close()

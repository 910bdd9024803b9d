"""A live console: the applied option, firing alerts, a requests/s chart, the graph and the egress report
on one local page, refreshed every few seconds.

A background thread rebuilds everything every `refresh` seconds (so Prometheus sees one set of queries
per period, however many browsers are open). The page fetches /api/live and swaps the live part in
place, so an open PromQL panel stays open; without JavaScript it reloads itself. The graph's edge rates
are the report's counts divided by the window (`rates="counts"`): one page, one set of numbers.
Bound to 127.0.0.1 by default; port 20001 is Kiali's (config.go Server.Port).
Routes: / (page), /api/live, /graph.svg, /chart.svg, /api/graph, /api/report, /api/alerts, /healthz.
The graph is Kiali's versioned-app graph unless `--graph-type` says otherwise; `?graphType=workload` (or
`versionedApp`), Kiali's own URL parameter, picks one for a page, /graph.svg or /api/graph. Both are
built at every refresh from the same query results.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from egresswatch import alerts, exposition, localstack, render, timeseries
from egresswatch.errors import EgressWatchError, UsageError
from egresswatch.graph import DEFAULT_GRAPH_TYPE, GRAPH_TYPES, Graph, build_graphs
from egresswatch.prom import PrometheusClient
from egresswatch.report import Report, build_report, to_json
from egresswatch.source import METRICS, ProxiesSource, Source
from localmesh.stack.statefile import Applied

CHART_MINUTES = 5
RATES_NOTE = (
    "Graph edge labels and the report's per-s column are the same numbers: requests in the window divided "
    "by its length (the graph command's `--rates kiali` draws Kiali's rate() instead)."
)


@dataclass
class View:
    graphs: dict[str, Graph] = field(default_factory=dict)  # by graph type
    report: Report | None = None
    error: str | None = None
    updated: float = 0.0
    where: str = ""
    applied: Applied | None = None
    alerts: list[alerts.Alert] | None = None
    chart: timeseries.Chart | None = None
    problems: list[str] = field(default_factory=list)  # alerts or chart that could not be read


class Console:
    """Holds the latest view and refreshes it; `source_factory` makes a fresh Source per refresh.
    With `prometheus` (its URL) the view also holds its alerts and the requests/s chart."""

    def __init__(
        self,
        source_factory: Callable[[], Source],
        namespace: str,
        refresh: float,
        label: str,
        prometheus: str | None = None,
        chart_rate: str = "30s",
        graph_type: str = DEFAULT_GRAPH_TYPE,
    ) -> None:
        self.source_factory = source_factory
        self.namespace = namespace
        self.refresh = refresh
        self.label = label
        self.prometheus = PrometheusClient(prometheus) if prometheus else None
        self.chart_rate = chart_rate
        self.graph_type = graph_type  # the one a request that names none gets
        self.view = View(error="Waiting for the first data...")
        self._stop = threading.Event()

    def update(self) -> None:
        view = View(updated=time.time())
        view.applied = localstack.applied(self.prometheus.url if self.prometheus else None)
        try:
            source = self.source_factory()  # one source per refresh: graph and report see the same numbers
            view.graphs = build_graphs(source, self.namespace, rates="counts")
            view.report = build_report(source, self.namespace, egress_only=True)
            view.where = source.where()
            done = getattr(self.source_factory, "done", None)
            if done:
                done(source)
        except EgressWatchError as err:
            view.graphs, view.report, view.error = {}, None, str(err)
        if self.prometheus is not None:
            try:
                view.alerts = alerts.active(self.prometheus)
            except EgressWatchError as err:
                view.problems.append(f"Alerts: {err}")
            try:
                view.chart = timeseries.fetch(self.prometheus, self.namespace, self.chart_rate, CHART_MINUTES)
            except EgressWatchError as err:
                view.problems.append(f"Chart: {err}")
        self.view = view

    def run_updates(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.update()
            self._stop.wait(max(0.2, self.refresh - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()

    @property
    def title(self) -> str:
        return f"egresswatch console: namespace {self.namespace}"

    def live(self, graph_type: str | None = None) -> tuple[str, list[str]]:
        """The part of the page that changes (with the graph of `graph_type`, default the console's):
        its HTML and the PromQL behind it."""
        v = self.view
        parts = [_applied_html(v.applied, v.updated or time.time())]
        if v.where:
            parts.append(f"<p class='meta' id='where'>Numbers: {escape(v.where)}. {escape(RATES_NOTE)}</p>")
        parts += [f"<div class='error problem'>{escape(p)}</div>" for p in v.problems]
        queries = []
        if v.alerts is not None:
            parts.append(f"<h2>Alerts</h2>{alerts.render_table(v.alerts)}")
        if v.chart is not None:
            marker = None
            if v.applied is not None:
                marker = (v.applied.since, f"{localstack.option_name(v.applied)} applied")
            title = (
                f"Requests/s from namespace {self.namespace} by destination cluster, last {CHART_MINUTES} min"
            )
            parts.append(
                f"<h2>Requests/s by destination cluster, last {CHART_MINUTES} minutes</h2>"
                f"<div class='card' id='chart'>{timeseries.render_svg(v.chart, marker, title)}</div>"
                f"<p class='meta'>Each point is rate() over the {escape(self.chart_rate)} before it, so a "
                f"line takes that long to fall after a switch.</p>"
            )
            queries.append(v.chart.query)
        shown = graph_type or self.graph_type
        links = " · ".join(
            f"<b>{escape(render.GRAPH_TYPE_NAMES[t])}</b>"
            if t == shown
            else f"<a href='?graphType={t}'>{escape(render.GRAPH_TYPE_NAMES[t])}</a>"
            for t in GRAPH_TYPES
        )
        parts.append(f"<p class='meta' id='graph-types' data-graph-type='{shown}'>Graph: {links}</p>")
        sections, more = render.render_sections(v.graphs.get(shown), v.report, v.error)
        parts.append(sections)
        return "".join(parts), more + queries

    def page(self, graph_type: str | None = None) -> str:
        html, queries = self.live(graph_type)
        every = max(1, round(self.refresh))
        return (
            render.page_head(
                self.title, f'<noscript><meta http-equiv="refresh" content="{every}"></noscript>'
            )
            + f"<p class='meta'>{escape(self.label)} · refreshes every {every} s · updated "
            f"<span id='updated'>{_clock(self.view.updated)}</span></p>"
            f"<div id='live'>{html}</div>{render.queries_panel(queries)}"
            + LIVE_SCRIPT.replace("EVERY_MS", str(every * 1000))
            + "</body></html>\n"
        )

    def live_json(self, graph_type: str | None = None) -> dict[str, Any]:
        html, queries = self.live(graph_type)
        return {"html": html, "queries": "\n\n".join(queries), "updated": _clock(self.view.updated)}


# Swap the live part in place; the <details> with the PromQL is outside it, so it stays as the reader left it.
LIVE_SCRIPT = """<script>
(function () {
  async function tick() {
    try {
      const resp = await fetch("/api/live" + window.location.search, {cache: "no-store"});
      if (resp.ok) {
        const data = await resp.json();
        document.getElementById("live").innerHTML = data.html;
        const pre = document.getElementById("queries");
        if (pre.textContent !== data.queries) pre.textContent = data.queries;
        document.getElementById("updated").textContent = data.updated;
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
      }
    } catch (err) { /* the console restarts or the network hiccups: try again next time */ }
    setTimeout(tick, EVERY_MS);
  }
  setTimeout(tick, EVERY_MS);
})();
</script>"""


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when)) if when else "-"


def _applied_html(applied: Applied | None, now: float) -> str:
    if applied is None:
        return ""
    ago = max(0, round(now - applied.since))
    at = dt.datetime.fromtimestamp(applied.since).astimezone().strftime("%H:%M:%S")
    return (
        f"<div class='note applied' id='applied' data-since='{applied.since:.3f}'>Applied: "
        f"<b>{escape(localstack.option_name(applied))}</b> ({escape(applied.option.rsplit(': ', 1)[0])}) "
        f"since {at} ({ago} s ago). The window starts there: what you see is this option's traffic.</div>"
    )


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
            path, _, query = self.path.partition("?")
            v = console.view
            wanted = urllib.parse.parse_qs(query).get("graphType", [console.graph_type])[-1]
            if wanted not in GRAPH_TYPES:
                self._send(
                    400,
                    "text/plain",
                    f"graphType={wanted!r} is not a graph type egresswatch draws: use "
                    f"{' or '.join(f'graphType={t}' for t in GRAPH_TYPES)}\n",
                )
                return
            graph = v.graphs.get(wanted)
            if path == "/":
                self._send(200, "text/html; charset=utf-8", console.page(wanted))
            elif path == "/api/live":
                self._send(200, "application/json", json.dumps(console.live_json(wanted)))
            elif path == "/api/alerts":
                found = [a.__dict__ for a in v.alerts] if v.alerts is not None else None
                self._send(200 if found is not None else 503, "application/json", json.dumps(found))
            elif path == "/chart.svg" and v.chart is not None:
                self._send(200, "image/svg+xml", timeseries.render_svg(v.chart))
            elif path == "/healthz":
                self._send(200, "text/plain", "ok\n")
            elif path == "/graph.svg" and graph is not None:
                self._send(200, "image/svg+xml", render.render_svg(graph))
            elif path == "/api/graph":
                body: dict[str, Any] = graph.to_dict() if graph else {"error": v.error}
                self._send(200 if graph else 503, "application/json", json.dumps(body, indent=2))
            elif path == "/api/report":
                body = to_json(v.report) if v.report else {"error": v.error}
                self._send(200 if v.report else 503, "application/json", json.dumps(body, indent=2))
            else:
                known = path in ("/graph.svg", "/chart.svg")
                self._send(503 if known else 404, "text/plain", f"{(known and v.error) or 'not found'}\n")

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

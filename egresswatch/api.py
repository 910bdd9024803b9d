"""The functions other parts of the bundle call (the local demo, the stack), in one place.

    from egresswatch import api
    snap = api.snapshot(["127.0.0.1:15000", "127.0.0.1:15090"])   # before a demo step's traffic
    ...                                                             # switch option, send traffic
    rows = api.breakdown(["127.0.0.1:15000", "127.0.0.1:15090"], namespace=None, baseline=snap)
    api.write_graph(["127.0.0.1:15000", "127.0.0.1:15090"], "out/graph-passthrough.svg", baseline=snap)
    rows = api.breakdown("http://127.0.0.1:9090", window="30s")    # or from Prometheus

The local demo compares two snapshots (`snapshot`, or `prometheus_snapshot` for the same counters as
a Prometheus holds them), reads what happened `between` them, prints `report_table` and draws
`write_graph`; its page embeds `render_svg` with `CSS` and counts formatted by `fmt_count`.

Each raises an EgressWatchError subclass (SourceUnreachable, EmptyWindow, NoTraffic) whose str() is
the message to print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from egresswatch import exposition, prom, render
from egresswatch.errors import EgressWatchError
from egresswatch.exposition import SeriesKey, Snapshot
from egresswatch.graph import DEFAULT_GRAPH_TYPE, Graph, build_graph
from egresswatch.promql import REQUESTS
from egresswatch.render import CSS, render_svg
from egresswatch.report import breakdown, build_report, fmt_count, make_source, render_table
from egresswatch.source import METRICS, ProxiesSource, Source

__all__ = [
    "CSS",
    "REQUESTS",
    "EgressWatchError",
    "Graph",
    "SeriesKey",
    "Snapshot",
    "Source",
    "between",
    "breakdown",
    "fmt_count",
    "prometheus_snapshot",
    "render_svg",
    "report_table",
    "snapshot",
    "write_graph",
]


def snapshot(proxy_urls: Sequence[str]) -> Snapshot:
    """Every Istio counter of these proxies now: the baseline for `breakdown`/`write_graph(baseline=...)`."""
    return exposition.scrape([exposition.metrics_url(u) for u in proxy_urls], METRICS)


def write_graph(
    source: str | Sequence[str] | Source,
    out: str | Path,
    namespace: str = "recipes",
    window: str = "1m",
    *,
    rates: str = "counts",
    baseline: Snapshot | None = None,
    scrape_interval: float = 10.0,
    title: str | None = None,
    graph_type: str = DEFAULT_GRAPH_TYPE,
) -> Graph:
    """Build the namespace graph (Kiali's versioned-app graph by default, or "workload") and write OUT
    (.svg) and the page next to it (.html).

    rates="counts" by default here: a demo step sends a short burst, which Kiali's rate() can miss.
    """
    src = make_source(source, window, scrape_interval=scrape_interval, baseline=baseline)
    graph = build_graph(src, namespace, rates=rates, graph_type=graph_type)
    render.write_graph(graph, out, title=title, subtitle=src.where())
    return graph


def prometheus_snapshot(prometheus_url: str) -> Snapshot:
    """The counters `snapshot` reads, as the Prometheus at prometheus_url holds them now, keyed by
    each target's metrics URL (so the two compare: equal once Prometheus has caught up)."""
    return prom.snapshot(prom.PrometheusClient(prometheus_url), METRICS)


def between(proxy_urls: Sequence[str], before: Snapshot, after: Snapshot, origin: str) -> Source:
    """What the proxies counted between two snapshots, as a source for `report_table` and
    `write_graph`; `origin` says where the numbers come from in what they print."""
    return ProxiesSource(proxy_urls, method="since-snapshot", baseline=before, end=after, origin=origin)


def report_table(source: Source, namespace: str | None) -> str:
    """The egress report of `namespace` (None: every namespace) as the text table the CLI prints."""
    return render_table(build_report(source, namespace))

"""The functions other parts of the bundle call (the local demo, the stack), in one place.

    from egresswatch import api
    snap = api.snapshot(["127.0.0.1:15000", "127.0.0.1:15090"])   # before a demo step's traffic
    ...                                                             # switch option, send traffic
    rows = api.breakdown(["127.0.0.1:15000", "127.0.0.1:15090"], namespace=None, baseline=snap)
    api.write_graph(["127.0.0.1:15000", "127.0.0.1:15090"], "out/graph-passthrough.svg", baseline=snap)
    rows = api.breakdown("http://127.0.0.1:9090", window="30s")    # or from Prometheus

Each raises an EgressWatchError subclass (SourceUnreachable, EmptyWindow, NoTraffic) whose str() is
the message to print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from egresswatch import exposition, render
from egresswatch.exposition import Snapshot
from egresswatch.graph import Graph, build_graph
from egresswatch.report import breakdown, make_source
from egresswatch.source import METRICS, Source

__all__ = ["Snapshot", "breakdown", "snapshot", "write_graph"]


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
) -> Graph:
    """Build the namespace graph and write OUT (.svg) and the page next to it (.html).

    rates="counts" by default here: a demo step sends a short burst, which Kiali's rate() can miss.
    """
    src = make_source(source, window, scrape_interval=scrape_interval, baseline=baseline)
    graph = build_graph(src, namespace, rates=rates)
    render.write_graph(graph, out, title=title, subtitle=src.where())
    return graph

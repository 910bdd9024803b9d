"""Where the numbers come from: a Prometheus server, or the proxies' metrics endpoints directly.

Both answer the same two questions for a metric, a selector and a group-by list:
`counts` (how much in the window: PromQL increase) and `rates` (per second: PromQL rate, Kiali's
query shape). The Prometheus source runs the PromQL; the proxies source evaluates the same matchers
in Python over two scrapes (or over the counters since each proxy started), and records the PromQL
that Prometheus would have run, so --show-queries prints the same text in both modes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from egresswatch import exposition, promql
from egresswatch.errors import UsageError
from egresswatch.prom import PrometheusClient
from egresswatch.promql import Matcher, Window

METRICS = (promql.REQUESTS, promql.TCP_OPENED, promql.TCP_SENT, promql.TCP_RECEIVED)


@dataclass(frozen=True)
class Sample:
    """One aggregated group: its group-by labels and value (a count, or a per-second rate)."""

    labels: dict[str, str]
    value: float


class Source(Protocol):
    """What every command needs from a metrics source."""

    queries: list[str]

    def counts(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]: ...

    def rates(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]: ...

    def seconds(self) -> float | None: ...

    def has_samples(self) -> bool: ...

    def namespaces_seen(self) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...

    def where(self) -> str: ...


class PrometheusSource:
    """Numbers from a Prometheus server over a look-back window ending now."""

    def __init__(self, url: str, window: Window) -> None:
        self.client = PrometheusClient(url)
        self.window = window
        self.queries: list[str] = []

    def _run(self, query: str) -> list[Sample]:
        self.queries.append(query)
        return [Sample(s.labels, s.value) for s in self.client.query(query)]

    def counts(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]:
        return self._run(promql.counts_query(metric, matchers, by, self.window))

    def rates(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]:
        return self._run(promql.kiali_rate_query(metric, matchers, by, self.window))

    def seconds(self) -> float:
        return self.window.seconds

    def has_samples(self) -> bool:
        # One metric per count_over_time: the TCP families share label sets, which one vector cannot hold.
        w = self.window.text
        return bool(
            self._run(
                f"count(count_over_time({promql.REQUESTS}[{w}])) "
                f"or count(count_over_time({promql.TCP_OPENED}[{w}]))"
            )
        )

    def namespaces_seen(self) -> list[str]:
        w, by = self.window.text, "count by (source_workload_namespace)"
        found = self._run(
            f'{by} (count_over_time({promql.REQUESTS}{{reporter="source"}}[{w}])) '
            f'or {by} (count_over_time({promql.TCP_OPENED}{{reporter="source"}}[{w}]))'
        )
        return sorted({s.labels.get("source_workload_namespace", "") for s in found} - {""})

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "prometheus",
            "url": self.client.url,
            "window": self.window.text,
            "window_seconds": self.window.seconds,
            **({"window_start": self.window.start} if self.window.start is not None else {}),
        }

    def where(self) -> str:
        return f"Prometheus {self.client.url}, {self.window.describe()}"


class ProxiesSource:
    """Numbers from the proxies' /stats/prometheus, without Prometheus.

    method "two-scrapes": scrape, wait `interval` seconds, scrape again; counts are the differences
    (a series absent from the first scrape counts from 0, a counter that went down restarted) and
    rates divide them by the measured time between the scrapes.
    method "since-start": one scrape; counts are the counters' values, i.e. everything since each
    proxy started; there are no rates.
    method "since-snapshot": counts since an earlier `exposition.Snapshot` (the demo takes one
    before a step's traffic) up to now, or up to `end` when given (two snapshots taken by the caller,
    e.g. from Prometheus with `prom.snapshot`); rates divide by the time between the two.
    """

    def __init__(
        self,
        urls: Sequence[str],
        method: str = "two-scrapes",
        interval: float = 10.0,
        baseline: exposition.Snapshot | None = None,
        end: exposition.Snapshot | None = None,
        origin: str | None = None,
    ) -> None:
        if method not in ("two-scrapes", "since-start", "since-snapshot"):
            raise UsageError(f"unknown proxies method {method!r}")
        if method == "since-snapshot" and baseline is None:
            raise UsageError("method since-snapshot needs a baseline Snapshot")
        if method == "two-scrapes" and interval <= 0:
            raise UsageError("the interval between two scrapes must be positive")
        self.urls = [exposition.metrics_url(u) for u in urls]
        self.method = method
        self.interval = interval
        self.queries: list[str] = []
        self._start = baseline
        self._end: exposition.Snapshot | None = end
        # Where the snapshots came from, for where(): the proxies themselves unless the caller says.
        self.origin = origin or f"{len(self.urls)} proxies' /stats/prometheus"
        # The window printed in the equivalent PromQL: the scrape interval, rounded up to whole seconds.
        self.window = Window(f"{max(1, round(interval))}s", float(max(1, round(interval))))

    def _scrapes(self) -> tuple[exposition.Snapshot | None, exposition.Snapshot]:
        if self._end is None:
            if self.method == "two-scrapes":
                self._start = exposition.scrape(self.urls, METRICS)
                time.sleep(self.interval)
            self._end = exposition.scrape(self.urls, METRICS)
            if self.method == "since-start":
                self._start = None
        return self._start, self._end

    def _deltas(self, metric: str, matchers: Sequence[Matcher]) -> list[tuple[dict[str, str], float]]:
        start, end = self._scrapes()
        before = start.samples() if start else {}
        out = []
        for (url, (name, pairs)), value in end.samples().items():
            labels = dict(pairs)
            if name != metric or not promql.all_match(matchers, labels):
                continue
            delta = value - before.get((url, (name, pairs)), 0.0)
            out.append((labels, value if delta < 0 else delta))
        return out

    @staticmethod
    def _group(rows: list[tuple[dict[str, str], float]], by: Sequence[str], scale: float) -> list[Sample]:
        groups: dict[tuple[str, ...], float] = {}
        for labels, value in rows:
            key = tuple(labels.get(b, "") for b in by)
            groups[key] = groups.get(key, 0.0) + value
        return [Sample(dict(zip(by, key, strict=True)), v / scale) for key, v in groups.items() if v > 0]

    def counts(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]:
        self.queries.append(promql.counts_query(metric, matchers, by, self.window))
        return self._group(self._deltas(metric, matchers), by, 1.0)

    def rates(self, metric: str, matchers: Sequence[Matcher], by: Sequence[str]) -> list[Sample]:
        seconds = self.seconds()
        if seconds is None:
            return []
        self.queries.append(promql.kiali_rate_query(metric, matchers, by, self.window))
        return self._group(self._deltas(metric, matchers), by, seconds)

    @property
    def end_snapshot(self) -> exposition.Snapshot:
        """The last scrape (a rolling console uses it as the next baseline)."""
        return self._scrapes()[1]

    def seconds(self) -> float | None:
        start, end = self._scrapes()
        if start is None:
            return None
        return max(end.taken_at - start.taken_at, 1e-6)

    def has_samples(self) -> bool:
        _, end = self._scrapes()
        return any(end.per_proxy.values())

    def namespaces_seen(self) -> list[str]:
        _, end = self._scrapes()
        return sorted(
            {
                dict(pairs).get("source_workload_namespace", "")
                for series in end.per_proxy.values()
                for (_, pairs) in series
            }
            - {"", "unknown"}
        )

    def describe(self) -> dict[str, Any]:
        seconds = self.seconds()
        out: dict[str, Any] = {"kind": "proxies", "urls": self.urls, "method": self.method}
        if seconds is not None:
            out["interval_seconds"] = round(seconds, 3)
        else:
            out["note"] = "cumulative counters since each proxy started; no rates"
        return out

    def where(self) -> str:
        seconds = self.seconds()
        what = {
            "two-scrapes": f"two scrapes {seconds or 0:.1f} s apart",
            "since-start": "counters since each proxy started",
            "since-snapshot": f"the {seconds or 0:.1f} s since the snapshot",
        }[self.method]
        return f"{self.origin}, {what}"

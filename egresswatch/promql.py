"""PromQL pieces: label matchers, windows, and the exact query text every command runs.

Matchers render to PromQL and also evaluate in Python (`Matcher.matches`), so the proxies mode
(no Prometheus) applies the very selectors that the printed queries show.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from egresswatch.errors import UsageError

# Istio's metric names (istio/proxy istio_stats; docs/istio-facts.md lists them).
REQUESTS = "istio_requests_total"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Window:
    """A look-back window: the text the user gave (e.g. "1m") and its length in seconds; for a window
    that starts at a moment (`since`), that moment and what happened then (e.g. an option applied)."""

    text: str
    seconds: float
    start: float | None = None  # Unix time the window starts at, when it was given as a moment
    start_event: str = ""

    @classmethod
    def since(cls, start: float, event: str = "", now: float | None = None) -> Window:
        """From `start` (Unix time) to now, in milliseconds, as Prometheus takes it (e.g. "83412ms")."""
        ms = max(1, round(((time.time() if now is None else now) - start) * 1000))
        return cls(f"{ms}ms", ms / 1000, start, event)

    def describe(self) -> str:
        """The window in words: "last 1m", or "since <event> at 04:12:03 (83 s)"."""
        if self.start is None:
            return f"last {self.text}"
        at = time.strftime("%H:%M:%S", time.localtime(self.start))
        return f"since {self.start_event or 'the start'} at {at} ({self.seconds:.0f} s)"

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse a Prometheus duration with a single unit (30s, 1m, 5m, 2h); at least 1 s."""
        m = _DURATION.match(text.strip())
        if not m:
            raise UsageError(f"--window {text!r} is not a duration like 30s, 1m, 5m or 1h")
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds < 1:
            raise UsageError(f"--window {text!r} is shorter than 1s; Prometheus needs two samples in it")
        return cls(text.strip(), float(seconds))

    @property
    def range_seconds(self) -> str:
        """The window as Kiali writes it in its queries: whole seconds, e.g. "60s" (at least 1s). A window
        that starts at a moment is rounded up, so the scrape taken at that moment stays inside it."""
        whole = math.ceil(self.seconds) if self.start is not None else int(self.seconds)
        return f"{max(1, whole)}s"


@dataclass(frozen=True)
class Matcher:
    """One PromQL label matcher: label, op (=, !=, =~, !~) and value (a regex for =~ and !~)."""

    label: str
    op: str
    value: str

    def promql(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Prometheus semantics: a missing label is "", regexes are fully anchored."""
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


def eq(label: str, value: str) -> Matcher:
    return Matcher(label, "=", value)


def ne(label: str, value: str) -> Matcher:
    return Matcher(label, "!=", value)


def re_eq(label: str, value: str) -> Matcher:
    return Matcher(label, "=~", value)


def selector(metric: str, matchers: Sequence[Matcher]) -> str:
    return f"{metric}{{{','.join(m.promql() for m in matchers)}}}"


def all_match(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


def counts_query(metric: str, matchers: Sequence[Matcher], by: Sequence[str], window: Window) -> str:
    """How many requests (or connections, bytes) each label group saw in the window: exactly, to the
    scrape, as the counter's value now less its value at the window's start.

    Not `increase()`: it extrapolates to the window's edges (promql/functions.go extrapolatedRate), so
    3 requests in a short window could read as 6.5; and it misses a series' first value (Istio creates a
    series at its first request, so a host called once would count 0 and slip past the lock-down
    check). A series that did not exist at the start, or that went down (its proxy restarted), counts
    its whole value: `or` keeps it, matching on labels without the metric name, so once per series.
    """
    sel = selector(metric, matchers)
    return f"sum by ({', '.join(by)}) (\n  ({sel} - {sel} offset {window.text} >= 0)\n  or {sel}\n) > 0"


def kiali_rate_query(metric: str, matchers: Sequence[Matcher], by: Sequence[str], window: Window) -> str:
    """Kiali's graph query shape, character for character (kiali/kiali graph/telemetry/istio/istio.go):
    sum(rate(M{...} [60s])) by (...) > 0, the "> 0" being its idle-edge filter."""
    return f"sum(rate({selector(metric, matchers)} [{window.range_seconds}])) by ({','.join(by)}) > 0"

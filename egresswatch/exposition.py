"""Read proxies' /stats/prometheus directly: a parser for Prometheus's text format 0.0.4 and snapshots.

Used when no Prometheus runs. A `Snapshot` is every counter sample of a set of proxies at one moment;
two snapshots give the same increases and rates Prometheus would compute from its scrapes.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import requests

from egresswatch.errors import SourceUnreachable, UsageError

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted label pairs)


class ParseError(ValueError):
    """A line that is not valid text exposition format."""


# Envoy's /stats/prometheus puts `envoy_` before every stat whose first segment is not a registered custom
# stat namespace (envoyproxy/envoy source/server/admin/prometheus_stats.cc, metricName). Istio's own
# istio_stats filter registers "istio" (contrib/istio/filters/http/istio_stats), so a cluster shows
# istio_requests_total; Envoy's generic stats access logger, which `--dataplane envoy` uses, registers
# none, so the same metric reads envoy_istio_requests_total. The name is taken back to Istio's, as the
# local Prometheus does with metric_relabel_configs (localmesh/stack/plan.py, the same regex).
ENVOY_ISTIO_NAME = re.compile(r"envoy_(istio_.*)")


def istio_name(name: str) -> str:
    """A metric's name as Istio exports it: envoy_istio_requests_total -> istio_requests_total."""
    found = ENVOY_ISTIO_NAME.fullmatch(name)
    return found.group(1) if found else name


def parse_text(text: str, wanted: Iterable[str] | None = None) -> dict[SeriesKey, float]:
    """Samples of the text format as {(name, sorted labels): value}; only names in wanted if given.

    Comments (# HELP, # TYPE) and blank lines are skipped; an optional timestamp after the value is
    ignored (the scrape time is what counts here, as for Prometheus with honor_timestamps off).
    Envoy's envoy_istio_* names are read as Istio's istio_* (`istio_name`).
    """
    names = set(wanted) if wanted is not None else None
    samples: dict[SeriesKey, float] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, labels, rest = _split_sample(line)
            name = istio_name(name)
            if names is not None and name not in names:
                continue
            value = _parse_value(rest.split()[0])
        except (ParseError, IndexError) as err:
            raise ParseError(f"line {lineno}: {err or 'no value'}: {raw[:200]!r}") from err
        # Prometheus treats an empty label value as no label at all (data model docs), so the
        # series keys here match what it stores (e.g. grpc_response_status="" on plain HTTP).
        samples[(name, tuple(sorted((k, v) for k, v in labels.items() if v)))] = value
    return samples


def _split_sample(line: str) -> tuple[str, dict[str, str], str]:
    i = 0
    while i < len(line) and line[i] not in "{ \t":
        i += 1
    name = line[:i]
    if not name:
        raise ParseError("no metric name")
    labels: dict[str, str] = {}
    if i < len(line) and line[i] == "{":
        i += 1
        while True:
            while i < len(line) and line[i] in " ,":
                i += 1
            if i < len(line) and line[i] == "}":
                i += 1
                break
            eq_at = line.find("=", i)
            if eq_at < 0 or eq_at + 1 >= len(line) or line[eq_at + 1] != '"':
                raise ParseError("bad label pair")
            label = line[i:eq_at].strip()
            value, i = _read_quoted(line, eq_at + 2)
            labels[label] = value
    return name, labels, line[i:].strip()


def _read_quoted(line: str, i: int) -> tuple[str, int]:
    """Read a label value up to its closing quote; the format escapes only \\\\, \\" and \\n."""
    out: list[str] = []
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ParseError("unterminated label value")


def _parse_value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError as err:
        raise ParseError(f"bad value {text!r}") from err


def metrics_url(url: str) -> str:
    """A proxy admin address or URL -> its metrics URL (Envoy's path /stats/prometheus by default)."""
    if not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    _scheme, _, rest = url.partition("://")
    if "/" not in rest:
        return f"{url}/stats/prometheus"
    return url


@dataclass
class Snapshot:
    """Counter samples of several proxies at one moment (monotonic clock), keyed per proxy URL."""

    taken_at: float
    per_proxy: dict[str, dict[SeriesKey, float]] = field(default_factory=dict)

    def samples(self) -> dict[tuple[str, SeriesKey], float]:
        return {(url, key): v for url, series in self.per_proxy.items() for key, v in series.items()}


def scrape(urls: Sequence[str], wanted: Iterable[str], timeout: float = 5.0) -> Snapshot:
    """One scrape of every proxy; a proxy that does not answer stops the command with its URL."""
    if not urls:
        raise UsageError("--proxies needs at least one proxy metrics URL")
    wanted = list(wanted)
    snap = Snapshot(taken_at=time.monotonic())
    for raw in urls:
        url = metrics_url(raw)
        try:
            resp = requests.get(url, timeout=timeout)
        except requests.RequestException as err:
            raise SourceUnreachable(
                f"Cannot read proxy metrics at {url} ({type(err).__name__}). Is the local stack up? "
                f"Run `make up`, or check the proxy's admin port (`make status` lists them)."
            ) from err
        if resp.status_code != 200:
            raise SourceUnreachable(f"Proxy metrics at {url} answered HTTP {resp.status_code}, not 200.")
        try:
            snap.per_proxy[url] = parse_text(resp.text, wanted)
        except ParseError as err:
            raise SourceUnreachable(f"{url} did not serve Prometheus text format: {err}") from err
    return snap

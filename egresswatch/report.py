"""The egress report: who sent what where, through which cluster, with which answer.

`collect` reads source-reported traffic (reporter="source": the client sidecar or gateway, the only
reporter for egress without an egress gateway) for HTTP (istio_requests_total) and TCP/TLS
(istio_tcp_*), one row per source workload, destination host, cluster kind, code and flags.
`build_report` adds the checks that turn an empty answer into a clear message; `render_table` and
`to_json` present it. `breakdown` is the one-call form the local demo uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from egresswatch import classify, promql
from egresswatch.errors import EmptyWindow, NoTraffic
from egresswatch.exposition import Snapshot
from egresswatch.promql import Matcher, Window
from egresswatch.source import PrometheusSource, ProxiesSource, Source

HTTP_BY = (
    "source_workload_namespace",
    "source_workload",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "response_flags",
)
TCP_BY = (
    "source_workload_namespace",
    "source_workload",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "response_flags",
)

HIDDEN_HOST_NOTE = (
    'TLS passthrough hides the host: destination_service="unknown" means the sidecar forwarded an '
    "encrypted stream (e.g. HTTPS on 443) without seeing a Host header, so the metrics cannot say where it "
    "went. `make suggest` says how to find out."
)


@dataclass
class Row:
    """One group of source-reported traffic. For TCP rows `count` is connections opened."""

    protocol: str
    source_namespace: str
    source_workload: str
    host: str
    destination_service_name: str
    destination_service_namespace: str
    kind: str
    response_code: str | None
    response_flags: str
    count: float
    rate: float | None
    bytes_sent: float | None = None
    bytes_received: float | None = None

    @property
    def host_hidden(self) -> bool:
        return self.protocol == "tcp" and self.host in ("", "unknown")

    @property
    def egress(self) -> bool:
        return classify.is_egress(self.kind)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["host_hidden"] = self.host_hidden
        out["egress"] = self.egress
        out["destination_service"] = self.host
        return out

    def sort_key(self) -> tuple[str, str, bool, int, str, str, str]:
        return (
            self.source_namespace,
            self.source_workload,
            self.protocol != "http",
            classify.KIND_ORDER.get(self.kind, 9),
            self.host,
            self.response_code or "",
            self.response_flags,
        )


@dataclass
class Report:
    namespace: str | None
    egress_only: bool
    source: dict[str, Any]
    where: str
    rows: list[Row]
    total_rows: int
    queries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def source_matchers(namespace: str | None) -> list[Matcher]:
    matchers = [promql.eq("reporter", "source")]
    if namespace:
        matchers.append(promql.eq("source_workload_namespace", namespace))
    return matchers


def collect(source: Source, namespace: str | None) -> list[Row]:
    """Every source-reported HTTP and TCP group from the namespace (all namespaces if None)."""
    matchers = source_matchers(namespace)
    seconds = source.seconds()
    rows: list[Row] = []
    for s in source.counts(promql.REQUESTS, matchers, HTTP_BY):
        lab = s.labels
        rows.append(
            Row(
                protocol=lab.get("request_protocol", "http") or "http",
                source_namespace=lab.get("source_workload_namespace", ""),
                source_workload=lab.get("source_workload", ""),
                host=lab.get("destination_service", ""),
                destination_service_name=lab.get("destination_service_name", ""),
                destination_service_namespace=lab.get("destination_service_namespace", ""),
                kind=classify.kind_of(
                    lab.get("destination_service", ""), lab.get("destination_service_name", "")
                ),
                response_code=lab.get("response_code", ""),
                response_flags=lab.get("response_flags", ""),
                count=s.value,
                rate=s.value / seconds if seconds else None,
            )
        )
    tcp: dict[tuple[str, ...], dict[str, float]] = {}
    for metric, key in (
        (promql.TCP_OPENED, "count"),
        (promql.TCP_SENT, "sent"),
        (promql.TCP_RECEIVED, "received"),
    ):
        for s in source.counts(metric, matchers, TCP_BY):
            tcp.setdefault(tuple(s.labels.get(b, "") for b in TCP_BY), {})[key] = s.value
    for values, got in tcp.items():
        lab = dict(zip(TCP_BY, values, strict=True))
        count = got.get("count", 0.0)
        rows.append(
            Row(
                protocol="tcp",
                source_namespace=lab["source_workload_namespace"],
                source_workload=lab["source_workload"],
                host=lab["destination_service"],
                destination_service_name=lab["destination_service_name"],
                destination_service_namespace=lab["destination_service_namespace"],
                kind=classify.kind_of(lab["destination_service"], lab["destination_service_name"]),
                response_code=None,
                response_flags=lab["response_flags"],
                count=count,
                rate=count / seconds if seconds else None,
                bytes_sent=got.get("sent", 0.0),
                bytes_received=got.get("received", 0.0),
            )
        )
    return sorted(rows, key=Row.sort_key)


def check_not_empty(source: Source, namespace: str | None, rows: Sequence[Row]) -> None:
    """Turn "no rows" into the reason: nothing at all in the window, or nothing from the namespace."""
    if rows:
        return
    where = source.where()
    if not source.has_samples():
        raise EmptyWindow(
            f"No Istio metrics in {where}. Generate some traffic (e.g. `make demo`, or create a recipe on "
            f"the site), make sure Prometheus scrapes the proxies (its /targets page), or use a longer "
            f"--window."
        )
    seen = source.namespaces_seen()
    if namespace and namespace not in seen:
        others = ", ".join(seen) if seen else "none"
        raise NoTraffic(
            f"No traffic from namespace {namespace!r} in {where}. Namespaces with source-reported traffic: "
            f"{others}. Pass --namespace NAME (or --all-namespaces)."
        )
    raise EmptyWindow(
        f"Namespace {namespace or '(all)'} has Istio series, but none grew in {where}: no requests in the "
        f"window. Send some traffic or use a longer --window."
    )


def build_report(source: Source, namespace: str | None, egress_only: bool = True) -> Report:
    first_query = len(source.queries)
    rows = collect(source, namespace)
    check_not_empty(source, namespace, rows)
    shown = [r for r in rows if r.egress] if egress_only else rows
    notes = []
    if egress_only and not shown:
        total = sum(r.count for r in rows if r.protocol != "tcp")
        notes.append(f"No egress: all {fmt_count(total)} requests went to services inside the mesh.")
    if any(r.host_hidden and r.kind == classify.PASSTHROUGH for r in shown):
        notes.append(HIDDEN_HOST_NOTE)
    if any(r.host_hidden and r.kind == classify.BLACKHOLE for r in shown):
        notes.append(
            'Blocked TLS/TCP connections name no host either (destination_service="unknown", flags UH: '
            "the sidecar closed them at once)."
        )
    if any(r.kind == classify.BLACKHOLE for r in shown):
        notes.append(
            "BlackHoleCluster rows are calls the mesh blocked (REGISTRY_ONLY and no ServiceEntry): "
            "the sidecar answered 502 itself (HTTP) or closed the connection (TCP)."
        )
    return Report(
        namespace=namespace,
        egress_only=egress_only,
        source=source.describe(),
        where=source.where(),
        rows=shown,
        total_rows=len(rows),
        queries=source.queries[first_query:],
        notes=notes,
    )


def make_source(
    source: str | Sequence[str] | Source,
    window: str = "1m",
    *,
    proxy_method: str | None = None,
    scrape_interval: float = 10.0,
    baseline: Snapshot | None = None,
) -> Source:
    """A Prometheus URL (str) -> PrometheusSource; a list of proxy URLs -> ProxiesSource; a Source as is."""
    if isinstance(source, str):
        return PrometheusSource(source, Window.parse(window))
    if isinstance(source, (list, tuple)):
        method = proxy_method or ("since-snapshot" if baseline is not None else "two-scrapes")
        return ProxiesSource(list(source), method=method, interval=scrape_interval, baseline=baseline)
    return source  # type: ignore[return-value]


def breakdown(
    source: str | Sequence[str] | Source,
    window: str = "1m",
    namespace: str | None = "recipes",
    *,
    proxy_method: str | None = None,
    scrape_interval: float = 10.0,
    baseline: Snapshot | None = None,
) -> list[dict[str, Any]]:
    """All source-reported traffic of a namespace (None: every namespace) as JSON-ready rows.

    source: a Prometheus URL ("http://127.0.0.1:9090", uses `window`), or a list of proxy metrics
    URLs (two scrapes `scrape_interval` s apart; or since `baseline`, a Snapshot from
    `egresswatch.exposition.scrape(urls, egresswatch.source.METRICS)`; or proxy_method="since-start").
    Each row has destination_service, destination_service_name, destination_service_namespace,
    response_code (None for TCP), response_flags, protocol, source_workload, kind, count, rate, egress.
    Raises EmptyWindow / NoTraffic / SourceUnreachable (all EgressWatchError) with a readable message.
    """
    src = make_source(
        source, window, proxy_method=proxy_method, scrape_interval=scrape_interval, baseline=baseline
    )
    rows = collect(src, namespace)
    check_not_empty(src, namespace, rows)
    return [r.to_dict() for r in rows]


# ---- presentation ----------------------------------------------------------------------------------


def fmt_count(value: float) -> str:
    """Counts from Prometheus's increase() are extrapolated, so not always whole: show 1 decimal then."""
    return str(round(value)) if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_table(report: Report) -> str:
    scope = f"namespace {report.namespace}" if report.namespace else "all namespaces"
    what = "Egress" if report.egress_only else "Traffic"
    out = [f"{what} from {scope} ({report.where})", ""]
    http = [r for r in report.rows if r.protocol != "tcp"]
    tcp = [r for r in report.rows if r.protocol == "tcp"]
    if http:
        out.append("HTTP requests (istio_requests_total, reporter=source)")
        out.append(
            _table(
                [
                    "SOURCE",
                    "DESTINATION HOST",
                    "CLUSTER",
                    "DEST NAMESPACE",
                    "CODE",
                    "FLAGS",
                    "REQUESTS",
                    "REQ/S",
                ],
                [
                    [
                        f"{r.source_workload}.{r.source_namespace}",
                        r.host,
                        r.kind,
                        r.destination_service_namespace,
                        r.response_code or "-",
                        r.response_flags,
                        fmt_count(r.count),
                        fmt_rate(r.rate),
                    ]
                    for r in http
                ],
            )
        )
        out.append("")
    if tcp:
        out.append("TCP/TLS connections (istio_tcp_*, reporter=source)")
        out.append(
            _table(
                [
                    "SOURCE",
                    "DESTINATION HOST",
                    "CLUSTER",
                    "FLAGS",
                    "CONNECTIONS",
                    "CONN/S",
                    "SENT",
                    "RECEIVED",
                ],
                [
                    [
                        f"{r.source_workload}.{r.source_namespace}",
                        "(hidden by TLS)" if r.host_hidden else r.host,
                        r.kind,
                        r.response_flags,
                        fmt_count(r.count),
                        fmt_rate(r.rate),
                        fmt_bytes(r.bytes_sent),
                        fmt_bytes(r.bytes_received),
                    ]
                    for r in tcp
                ],
            )
        )
        out.append("")
    out += [f"Note: {n}" for n in report.notes]
    return "\n".join(out).rstrip() + "\n"


def to_json(report: Report) -> dict[str, Any]:
    return {
        "namespace": report.namespace,
        "egress_only": report.egress_only,
        "source": report.source,
        "rows": [r.to_dict() for r in report.rows],
        "rows_total_before_egress_filter": report.total_rows,
        "tls_host_hidden": any(r.host_hidden for r in report.rows),
        "notes": report.notes,
        "queries": report.queries,
    }

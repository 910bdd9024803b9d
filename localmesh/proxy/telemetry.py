"""Istio's standard metrics, as the istio_stats filter of istio-proxy records and Envoy exports them.

Metric names, the label set and its order, the defaults for unknown peers and the values of
`grpc_response_status` (empty for non-gRPC HTTP) and `connection_security_policy` ("mutual_tls",
"none", or "unknown" for a client-side reporter) follow istio/proxy
`source/extensions/filters/http/istio_stats/istio_stats.cc` (IstioStatsFilter::log,
populatePeerInfo, populateFlagsAndConnectionSecurity). Request and response sizes are the wire
bytes of the downstream connection (`getDownstreamBytesMeter()->wireBytesReceived()/Sent()`), the
duration is `requestComplete()` in whole milliseconds, and histograms use Envoy's default buckets
(envoy `source/common/stats/histogram_impl.h`, `supportedBuckets`) and its way of filling them (see
`Histogram`).

Hot path: a series (one label set: the counter and three histograms of an HTTP edge, or the four
TCP counters) is created once and then found with one dict lookup on a key of objects the proxy
already holds. The label text is rendered once, when the series is created.

A departure from Istio, on purpose: the number of distinct `destination_service` values of
PassthroughCluster and BlackHoleCluster series is capped per proxy (default
DEFAULT_MAX_PASSTHROUGH_HOSTS; LOCALMESH_MAX_PASSTHROUGH_HOSTS, 0 turns the cap off). Those values
come from the request's Host, which the calling app chooses: without a cap, a flood of invented
hosts grows the metrics page without bound (3,000 hosts made a 160 MB page that Prometheus could no
longer scrape in time, blinding every egress series and alert). Istio and Envoy have no such cap.
Past it, a new host is recorded as destination_service="overflow" (its other labels unchanged, so
BlackHoleCluster traffic still fires EgressBlocked) and counted in localmesh_telemetry_overflow_total,
which the EgressHostsOverflow alert watches. The overflow value follows OpenTelemetry's metrics SDK,
which folds attribute sets beyond its cardinality limit into one overflow series
(`otel.metric.overflow=true`); Istio's label set has no room for an extra label, so the value of the
label that overflows says it instead.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from functools import cache

from localmesh.mesh.names import (
    BLACKHOLE,
    HTTP_LABELS,
    ISTIO_VERSION,
    PASSTHROUGH,
    TCP_LABELS,
    Service,
    Workload,
)

# Distinct passthrough/blackhole hosts a proxy names before it reports "overflow": far above what a
# mesh's unregistered egress normally shows (this demo: 1), small enough that the metrics page stays
# a few MB (each HTTP series is about 50 KB of exposition with its three histograms).
DEFAULT_MAX_PASSTHROUGH_HOSTS = 100
MAX_HOSTS_ENV = "LOCALMESH_MAX_PASSTHROUGH_HOSTS"
OVERFLOW = "overflow"
OVERFLOW_METRIC = "localmesh_telemetry_overflow_total"
# The clusters whose destination_service is the request's Host (the others name their service).
HOST_KEYED = frozenset((PASSTHROUGH, BLACKHOLE))

BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip


def max_passthrough_hosts(env: Mapping[str, str] = os.environ) -> int:
    """The cap from LOCALMESH_MAX_PASSTHROUGH_HOSTS (0: no cap); ValueError with the fix if invalid."""
    value = env.get(MAX_HOSTS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PASSTHROUGH_HOSTS
    if not value.isdigit():
        raise ValueError(
            f"{MAX_HOSTS_ENV}={value!r} is not a whole number: give the maximum of distinct passthrough "
            f"hosts per proxy (default {DEFAULT_MAX_PASSTHROUGH_HOSTS}), or 0 for no cap"
        )
    return int(value)


def escape(value: str) -> str:
    """A label value in Prometheus text format 0.0.4: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_labels(names: Iterable[str], values: Iterable[str]) -> str:
    """`name="value",...` (without braces) in the given order."""
    return ",".join(f'{name}="{escape(value)}"' for name, value in zip(names, values, strict=True))


def peer_values(
    reporter: str, source: Workload, destination: Workload, service: Service, protocol: str
) -> tuple[str, ...]:
    """The first 21 label values, in PEER_LABELS order, from the two workloads and the service."""
    return (
        reporter,
        source.name,
        source.canonical_service,
        source.canonical_revision,
        source.namespace,
        source.principal,
        source.app,
        source.version,
        source.cluster,
        destination.name,
        destination.namespace,
        destination.principal,
        destination.app,
        destination.version,
        service.host,
        destination.canonical_service,
        destination.canonical_revision,
        service.name,
        service.namespace,
        destination.cluster,
        protocol,
    )


class Histogram:
    """An Envoy histogram: what it keeps and how /stats/prometheus reports it, value for value.

    Envoy records each value into a log-linear histogram (libcircllhist: bins of two significant
    digits, e.g. [120, 130)) and exports from those bins only (envoyproxy/envoy
    source/common/stats/histogram_impl.cc HistogramStatisticsImpl: `hist_approx_count_below` per
    bucket, `hist_approx_sum` for `_sum`). So, as real Envoy shows (tests/conformance/test_histograms.py):
    - a bin is counted in every bucket whose bound is not below the bin's lower edge
      (openhistogram/libcircllhist src/circllhist.c `hist_approx_count_below_inclusive`): a value
      equal to a bound falls in that bound's bucket, and so does any value of the same bin
      (105 bytes in le="100", 1234 ms in le="2500");
    - `_sum` adds each bin's `hist_bucket_midpoint` (the point that balances the relative error
      at both edges, bottom + width * bottom / (bottom + top)) times its count: 1 ms gives
      1.047619..., 1234 bytes gives 1248.
    """

    __slots__ = ("bins",)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}  # a bin's lower edge -> how many values fell in it

    def observe(self, value: int) -> None:
        low = value if value < 100 else _bin_floor(value)
        self.bins[low] = self.bins.get(low, 0) + 1

    def cumulative(self) -> list[int]:
        """The count of each bucket of BUCKETS, then +Inf, cumulated as Prometheus shows them."""
        counts = [0] * (len(BUCKETS) + 1)
        for low, count in self.bins.items():
            counts[bisect_left(BUCKETS, low)] += count
        total = 0
        for i, count in enumerate(counts):
            total += count
            counts[i] = total
        return counts

    def sum(self) -> float:
        """`hist_approx_sum`: the bins in ascending order, each its midpoint times its count."""
        total = 0.0
        for low in sorted(self.bins):
            total += _midpoint(low) * float(self.bins[low])
        return total


def _bin_floor(value: int) -> int:
    """The lower edge of the libcircllhist bin that holds value (>= 100): its first two digits."""
    step = int(10 ** (len(str(value)) - 2))
    return value - value % step


@cache
def _midpoint(low: int) -> float:
    """libcircllhist's `hist_bucket_midpoint` of the bin whose lower edge is low, computed with the
    same floating-point steps as its C code (`int_scale_to_hist_bucket`, `hist_bucket_to_double`),
    so the sum is Envoy's to the last bit."""
    if low == 0:
        return 0.0  # the zero bin
    if low < 10:
        val, exp = low * 10, 0
    else:
        digits = len(str(low))
        val, exp = low // 10 ** (digits - 2), digits - 1
    power = float(f"1e{exp}")  # the C code's table of powers of ten holds these literals
    bottom = (val / 10.0) * power
    interval = power / 10.0
    top = bottom + interval
    return bottom + interval * (bottom / (bottom + top))


class HttpSeries:
    """One label set of an HTTP edge: istio_requests_total and the three histograms."""

    __slots__ = ("count", "duration", "labels", "request_bytes", "response_bytes")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.count = 0
        self.duration = Histogram()
        self.request_bytes = Histogram()
        self.response_bytes = Histogram()

    def observe(self, duration_ms: int, request_bytes: int, response_bytes: int) -> None:
        self.count += 1
        self.duration.observe(duration_ms)
        self.request_bytes.observe(request_bytes)
        self.response_bytes.observe(response_bytes)


class TcpSeries:
    """One label set of a TCP edge: the four istio_tcp_* counters."""

    __slots__ = ("closed", "labels", "opened", "received", "sent")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.opened = 0
        self.closed = 0
        self.sent = 0
        self.received = 0


def _format_number(number: float) -> str:
    # Envoy prints bucket bounds and sums with "{:.32g}": 0.5, 1, 1800000 (never 1.8e+06), 1248,
    # 1.0476190476190476719153821250075 (envoyproxy/envoy source/server/admin/prometheus_stats.cc).
    return format(number, ".32g")


_LE = (*tuple(_format_number(b) for b in BUCKETS), "+Inf")


# A series' identity: the label inputs it was created from (reporter, peers, service, outcome).
HttpKey = tuple[str, Workload, Workload, Service, int, str, str, str]
TcpKey = tuple[str, Workload, Workload, Service, str, str]


class Telemetry:
    """All series of one proxy process, and their Prometheus text exposition."""

    def __init__(self, max_passthrough_hosts: int = DEFAULT_MAX_PASSTHROUGH_HOSTS) -> None:
        self._http: dict[HttpKey, HttpSeries] = {}
        self._tcp: dict[TcpKey, TcpSeries] = {}
        self.max_passthrough_hosts = max_passthrough_hosts
        self._hosts: set[str] = set()
        self._overflow: dict[tuple[str, str, str], int] = {}

    def _capped(self, source: Workload, service: Service) -> Service:
        """The service to record: itself, or its "overflow" stand-in for a passthrough or blackhole
        host beyond the cap (counted). Called only when a new series would be created."""
        if service.name not in HOST_KEYED or not self.max_passthrough_hosts or service.host in self._hosts:
            return service
        if len(self._hosts) < self.max_passthrough_hosts:
            self._hosts.add(service.host)
            return service
        key = (source.name, source.namespace, service.name)
        self._overflow[key] = self._overflow.get(key, 0) + 1
        return Service(OVERFLOW, service.name, service.namespace)

    def http(
        self,
        reporter: str,
        source: Workload,
        destination: Workload,
        service: Service,
        code: int,
        flags: str,
        security: str,
        protocol: str = "http",
    ) -> HttpSeries:
        """The series of one HTTP edge and outcome (created on first use)."""
        key = (reporter, source, destination, service, code, flags, security, protocol)
        series = self._http.get(key)
        if series is None:
            capped = self._capped(source, service)
            if capped is not service:
                service = capped
                key = (reporter, source, destination, service, code, flags, security, protocol)
                series = self._http.get(key)
                if series is not None:
                    return series
            values = (*peer_values(reporter, source, destination, service, protocol), str(code))
            # grpc_response_status is "" for HTTP that is not gRPC (istio_stats: context_.empty_).
            values += ("", flags, security)
            series = self._http[key] = HttpSeries(render_labels(HTTP_LABELS, values))
        return series

    def tcp(
        self,
        reporter: str,
        source: Workload,
        destination: Workload,
        service: Service,
        flags: str,
        security: str,
    ) -> TcpSeries:
        """The series of one TCP edge and outcome (created on first use)."""
        key = (reporter, source, destination, service, flags, security)
        series = self._tcp.get(key)
        if series is None:
            capped = self._capped(source, service)
            if capped is not service:
                service = capped
                key = (reporter, source, destination, service, flags, security)
                series = self._tcp.get(key)
                if series is not None:
                    return series
            values = (*peer_values(reporter, source, destination, service, "tcp"), flags, security)
            series = self._tcp[key] = TcpSeries(render_labels(TCP_LABELS, values))
        return series

    def exposition(self) -> str:
        """Prometheus text format 0.0.4 as Envoy's /stats/prometheus writes it: counters, gauges,
        then histograms, each family sorted by name, with a `# TYPE` line and no `# HELP` (envoy
        source/server/admin/prometheus_stats.cc; checked on Envoy 1.40). The one gauge is istio_build,
        which the istio_stats filter sets to 1 when it is configured (envoyproxy/envoy
        contrib/istio/filters/http/istio_stats/source/istio_stats.cc: component="proxy", tag=the
        proxy's ISTIO_VERSION)."""
        out: list[str] = []
        http = list(self._http.values())
        tcp = list(self._tcp.values())
        counters: list[tuple[str, list[HttpSeries] | list[TcpSeries], str]] = [
            ("istio_requests_total", http, "count"),
            ("istio_tcp_connections_closed_total", tcp, "closed"),
            ("istio_tcp_connections_opened_total", tcp, "opened"),
            ("istio_tcp_received_bytes_total", tcp, "received"),
            ("istio_tcp_sent_bytes_total", tcp, "sent"),
        ]
        for name, series_list, attr in counters:
            if not series_list:
                continue
            out.append(f"# TYPE {name} counter")
            out.extend(f"{name}{{{s.labels}}} {getattr(s, attr)}" for s in series_list)
        if self._overflow:
            out.append(f"# TYPE {OVERFLOW_METRIC} counter")
            names = ("source_workload", "source_workload_namespace", "destination_service_name")
            out.extend(
                f"{OVERFLOW_METRIC}{{{render_labels(names, key)}}} {count}"
                for key, count in self._overflow.items()
            )
        out.append("# TYPE istio_build gauge")
        out.append(f'istio_build{{component="proxy",tag="{ISTIO_VERSION}"}} 1')
        histograms = [
            ("istio_request_bytes", "request_bytes"),
            ("istio_request_duration_milliseconds", "duration"),
            ("istio_response_bytes", "response_bytes"),
        ]
        for name, attr in histograms:
            if not http:
                continue
            out.append(f"# TYPE {name} histogram")
            for series in http:
                histogram: Histogram = getattr(series, attr)
                counts = histogram.cumulative()
                for le, count in zip(_LE, counts, strict=True):
                    out.append(f'{name}_bucket{{{series.labels},le="{le}"}} {count}')
                out.append(f"{name}_sum{{{series.labels}}} {_format_number(histogram.sum())}")
                out.append(f"{name}_count{{{series.labels}}} {counts[-1]}")
        return "\n".join(out) + "\n"

"""Istio's metrics from both data planes for the same traffic: what each scenario adds to the
sidecar's and the gateway's /stats/prometheus (Envoy's `envoy_` prefix removed), diffed series by
series and label by label (Envoy is the reference), then the histograms of all of it: counts of
every series, and the size histograms in full where the byte counts are the same on both planes."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable

import pytest
from dataplanes import ENVOY, PLANES, PYTHON, Plane
from diffing import SeriesKey, assert_none, assert_same, delta, istio_samples, series_differences
from proxy_testlib import connect, exchange, read_response

from localmesh.pilot.xds import GATEWAY, SIDECAR
from localmesh.proxy.telemetry import Histogram

COUNTERS = (
    "istio_requests_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_sent_bytes_total",
)
HISTOGRAMS = ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes")


def _egress(request: bytes) -> Callable[[Plane], None]:
    return lambda plane: exchange(plane.outbound, request) and None


def _ingress(request: bytes) -> Callable[[Plane], None]:
    return lambda plane: exchange(plane.gateway, request) and None


def _tunnel(authority: str) -> Callable[[Plane], None]:
    """CONNECT, then one request in the tunnel when it opens (Connection: close), read to the end:
    httpbin closes first, then the proxy, then the client (who closes first is a response flag)."""

    def run(plane: Plane) -> None:
        with connect(plane.outbound, timeout=5) as sock:
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            try:
                if read_response(sock, head_request=True)[0] == 200:
                    sock.sendall(b"GET /get HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n")
                    read_response(sock)
                    while sock.recv(65536):
                        pass
            except (ConnectionError, TimeoutError):
                pass  # a blackholed tunnel: how it ends is test_http_answers.py's business

    return run


GET = b"GET http://httpbin.org/get HTTP/1.1\r\nHost: httpbin.org\r\nUser-Agent: t\r\n\r\n"
SCENARIOS: dict[str, tuple[str, Callable[[Plane], None]]] = {
    # name -> (option, what the client does)
    "egress/passthrough/get": ("passthrough", _egress(GET)),
    "egress/passthrough/host with port": (
        "passthrough",
        _egress(b"GET http://httpbin.org:80/get HTTP/1.1\r\nHost: httpbin.org:80\r\n\r\n"),
    ),
    "egress/passthrough/status 503": (
        "passthrough",
        _egress(b"GET http://httpbin.org/status/503 HTTP/1.1\r\nHost: httpbin.org\r\n\r\n"),
    ),
    "egress/blackhole/get": ("blackhole", _egress(GET)),
    "egress/serviceentry/get": ("serviceentry", _egress(GET)),
    "ingress/passthrough/route": ("passthrough", _ingress(b"GET /id HTTP/1.1\r\nHost: localhost\r\n\r\n")),
    "ingress/passthrough/no route": (
        "passthrough",
        _ingress(b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    ),
    "connect/passthrough/port 80": ("passthrough", _tunnel("httpbin.org:80")),
    "connect/serviceentry/port 80": ("serviceentry", _tunnel("httpbin.org:80")),
    "connect/blackhole/port 443": ("blackhole", _tunnel("httpbin.org:443")),
}
OPTIONS = tuple(dict.fromkeys(option for option, _ in SCENARIOS.values()))

# Differences whose fix belongs to another area, reported there: (scenario pattern, reason). Strict:
# once fixed the test passes and the mark must go.
XFAIL: tuple[tuple[str, str], ...] = ()


def _marked(names: list[str], prefix: str = "") -> list[object]:
    """Each name as a parameter, expected to fail (strict) with the reasons of the patterns it matches."""
    params = []
    for name in names:
        reasons = [reason for pattern, reason in XFAIL if fnmatch.fnmatchcase(prefix + name, pattern)]
        marks = [pytest.mark.xfail(strict=True, reason="; ".join(reasons))] if reasons else []
        params.append(pytest.param(name, marks=marks))
    return params


def _scrape(plane: Plane) -> dict[SeriesKey, float]:
    return {
        **istio_samples(SIDECAR, plane.metrics(SIDECAR)),
        **istio_samples(GATEWAY, plane.metrics(GATEWAY)),
    }


def _counters(samples: dict[SeriesKey, float]) -> dict[SeriesKey, float]:
    return {k: v for k, v in samples.items() if k[1] in COUNTERS}


def _settled(plane: Plane, before: dict[SeriesKey, float], timeout: float = 5.0) -> dict[SeriesKey, float]:
    """The counters a scenario added, once they stop moving (a tunnel is counted when it closes)."""
    deadline = time.monotonic() + timeout
    last = _counters(delta(_scrape(plane), before))
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _counters(delta(_scrape(plane), before))
        if now and now == last:
            return now
        last = now
    return last


def _histograms_flushed(
    plane: Plane, since: dict[SeriesKey, float], timeout: float = 15.0
) -> dict[SeriesKey, float]:
    """Everything added since `since`, once every request is in the histograms: Envoy moves them to
    /stats/prometheus at its stats flush (every 5 s by default)."""
    deadline = time.monotonic() + timeout
    while True:
        added = delta(_scrape(plane), since)
        requests = sum(v for k, v in added.items() if k[1] == "istio_requests_total")
        counted = sum(v for k, v in added.items() if k[1] == "istio_request_duration_milliseconds_count")
        if counted >= requests or time.monotonic() > deadline:
            return added


@pytest.fixture(scope="module")
def observed(dataplanes) -> dict[str, dict[str, dict[SeriesKey, float]]]:
    """scenario (or "histograms/<option>") -> data plane -> the series it added."""
    out: dict[str, dict[str, dict[SeriesKey, float]]] = {}
    for option in OPTIONS:
        planes = dataplanes(option)
        start = {kind: _scrape(planes[kind]) for kind in PLANES}
        for scenario, (scenario_option, run) in SCENARIOS.items():
            if scenario_option != option:
                continue
            out[scenario] = {}
            for kind in PLANES:
                before = _scrape(planes[kind])
                run(planes[kind])
                out[scenario][kind] = _settled(planes[kind], before)
        out[f"histograms/{option}"] = {
            kind: _histograms_flushed(planes[kind], start[kind]) for kind in PLANES
        }
    return out


@pytest.mark.parametrize("scenario", _marked(list(SCENARIOS), "metrics/"))
def test_counters(observed, scenario: str) -> None:
    """istio_requests_total and istio_tcp_*: the same series (every label) with the same values."""
    envoy, python = observed[scenario][ENVOY], observed[scenario][PYTHON]
    assert envoy, f"{scenario}: Envoy recorded nothing"
    assert_none(series_differences(f"metrics/{scenario}", envoy, python))


def _deterministic(key: SeriesKey) -> bool:
    """Size histograms whose byte counts do not depend on the data plane: what the client sent to
    the first proxy (reporter="source"), and direct answers (blackhole 502, no route 404)."""
    labels = dict(key[2])
    if key[1].startswith("istio_request_bytes"):
        return labels.get("reporter") == "source"
    if key[1].startswith("istio_response_bytes"):
        return (
            labels.get("destination_service_name") == "BlackHoleCluster"
            or labels.get("response_flags") == "NR"
        )
    return False


# The labels a histogram is compared by (with the proxy: which side of which edge, and the outcome).
# The other labels are compared series by series by test_counters, so a label difference is
# reported there once, not again for every bucket.
EDGE = ("reporter", "response_code", "response_flags", "le")


def _by_edge(samples: dict[SeriesKey, float]) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    for (proxy, name, labels), value in samples.items():
        key = (proxy, name, tuple((k, v) for k, v in labels if k in EDGE))
        out[key] = out.get(key, 0.0) + value
    return out


@pytest.mark.parametrize("option", OPTIONS)
def test_histograms(observed, option: str) -> None:
    """Every histogram's count, and the size histograms in full (buckets, _sum) where the byte counts
    are the same on both planes, per edge and outcome."""
    found = observed[f"histograms/{option}"]
    compared = {
        kind: _by_edge(
            {
                k: v
                for k, v in found[kind].items()
                if k[1].startswith(HISTOGRAMS) and (k[1].endswith("_count") or _deterministic(k))
            }
        )
        for kind in PLANES
    }
    assert any(k[1].endswith("_count") for k in compared[ENVOY]), f"{option}: no Envoy histogram moved"
    assert any(k[1] == "istio_request_bytes_sum" for k in compared[ENVOY]), f"{option}: no size compared"
    assert_none(series_differences(f"histograms/{option}", compared[ENVOY], compared[PYTHON]))


def test_peer_identity(observed) -> None:
    """Through the gateway, the sidecar names the gateway as the source and the gateway names idgen
    as the destination (metadata exchange), on both planes."""
    for kind in PLANES:
        series = [dict(k[2]) | {"proxy": k[0]} for k in observed["ingress/passthrough/route"][kind]]
        inbound = [s for s in series if s["proxy"] == SIDECAR and s.get("reporter") == "destination"]
        gateway = [s for s in series if s["proxy"] == GATEWAY and s.get("reporter") == "source"]
        assert [s["source_workload"] for s in inbound] == ["istio-ingressgateway"], (kind, inbound)
        assert [s["destination_workload"] for s in gateway] == ["idgen"], (kind, gateway)


def _exposition(text: str) -> dict[str, str]:
    """The metadata lines of the istio_* families (Envoy's prefix removed) and the istio_build series."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, _, rest = line[2:].partition(" ")
            family, _, what = rest.partition(" ")
            family = family.removeprefix("envoy_")
            if family.startswith("istio_"):
                out[f"# {kind} {family}"] = what if kind == "TYPE" else "(present)"
        elif line.removeprefix("envoy_").startswith("istio_build"):
            out["istio_build"] = line.removeprefix("envoy_")
    return out


@pytest.mark.parametrize("proxy", (SIDECAR, GATEWAY))
def test_exposition(dataplanes, observed, proxy: str) -> None:
    """What /stats/prometheus declares about Istio's families (after the scenarios' traffic)."""
    planes = dataplanes("passthrough")
    found = {kind: _exposition(planes[kind].metrics(proxy)) for kind in PLANES}
    assert any(k.startswith("# TYPE") for k in found[ENVOY]), f"Envoy's {proxy} declares no istio_* family"
    assert_same(f"exposition/{proxy}", found[ENVOY], found[PYTHON])


def _one_value_sums(limit: int) -> set[float]:
    """The `_sum` of a histogram holding one whole number below limit, as Envoy writes it."""
    sums = set()
    for value in range(limit):
        histogram = Histogram()
        histogram.observe(value)
        sums.add(histogram.sum())
    return sums


@pytest.mark.parametrize("option", OPTIONS)
def test_durations_are_whole_milliseconds(observed, option: str) -> None:
    """Durations are recorded as whole milliseconds on both planes (Envoy's %DURATION%, istio_stats'
    requestComplete in ms): a duration series holding one request has the `_sum` of one whole
    number of milliseconds (test_histograms.py checks that binning against Envoy value for value)."""
    sums = _one_value_sums(10_000)
    for kind in PLANES:
        found = observed[f"histograms/{option}"][kind]
        single = [
            (proxy, labels)
            for (proxy, name, labels), value in found.items()
            if name == "istio_request_duration_milliseconds_count" and value == 1
        ]
        assert single, f"{kind}: no duration series with one request"
        for proxy, labels in single:
            total = found.get((proxy, "istio_request_duration_milliseconds_sum", labels), 0.0)
            assert total in sums, f"{kind} {proxy}: duration _sum {total} is not one whole millisecond value"

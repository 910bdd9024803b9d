"""Attacks on the proxies from a client on the same machine, against real proxy processes
(`python -m localmesh.proxy`) and a real upstream on 127.0.0.1: request smuggling, header limits,
a header that never ends, route-memo growth, unfinished requests, spoofed Envoy headers and
Envoy's answers to odd requests. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from proxy_testlib import App, ProxyProcess, closed_by_peer, connect, exchange, read_response, tables

MIB = 1024 * 1024


@pytest.fixture
def app():
    with App() as app:
        yield app


def gateway(app: App, *extra: str) -> ProxyProcess:
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    return ProxyProcess("gateway", table, extra=extra)


def sidecar(app: App, *extra: str) -> ProxyProcess:
    table = tables("passthrough", {"httpbin.org:80": app.address})["idgen"]
    return ProxyProcess("sidecar", table, app=app.address, extra=extra)


def victim_status(port: int, host: bytes = b"site", path: bytes = b"/id?victim=1") -> int:
    return exchange(port, b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))[0]


# --- smuggling through a Connection header that nominates the framing -------------------------------


@pytest.mark.parametrize("nominated", [b"content-length", b"Content-Length, close"])
def test_connection_nominating_content_length_cannot_smuggle_a_request_through_the_gateway(app, nominated):
    body = b"GET /healthz HTTP/1.1\r\nHost: site\r\n\r\n"
    attack = b"POST /id HTTP/1.1\r\nHost: site\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        nominated,
        len(body),
        body,
    )
    with gateway(app) as gw:
        status = exchange(gw.listen_port, attack)[0]
        assert victim_status(gw.listen_port) == 200
    assert status == 200
    # The body went up framed, as a body: the upstream saw the two requests and nothing else.
    assert [r["path"] for r in app.requests] == ["/id", "/id?victim=1"]
    assert app.requests[0]["headers"]["transfer-encoding"] == "chunked"
    assert app.requests[1]["client_port"] == app.requests[0]["client_port"]


# --- header limits (Envoy: max_request_headers_kb 60, max_headers_count 100) ------------------------

LIMITS = {
    "61 KiB header": b"GET /id HTTP/1.1\r\nHost: site\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n",
    "8 MiB header": b"GET /id HTTP/1.1\r\nHost: site\r\nX-Big: " + b"a" * (8 * MIB) + b"\r\n\r\n",
    "101 headers": b"GET /id HTTP/1.1\r\nHost: site\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(100))
    + b"\r\n",
    "20,000 headers": b"GET /id HTTP/1.1\r\nHost: site\r\n" + b"X: v\r\n" * 20_000 + b"\r\n",
    "70 KiB URI": b"GET /id?" + b"q" * (70 * 1024) + b" HTTP/1.1\r\nHost: site\r\n\r\n",
    "8 MiB URI": b"GET /id?" + b"q" * (8 * MIB) + b" HTTP/1.1\r\nHost: site\r\n\r\n",
}


def test_requests_beyond_envoys_header_limits_get_431_and_are_not_forwarded(app):
    got = {}
    with gateway(app) as gw:
        for name, request in LIMITS.items():
            with connect(gw.listen_port, timeout=30) as sock:
                # Refused while still sending: the answer is already waiting to be read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(request)
                try:
                    got[name] = read_response(sock)[0]
                except (ConnectionError, OSError) as exc:
                    got[name] = type(exc).__name__
        # Under both limits is served (89 headers: the test upstream, Python's http.server, refuses
        # more than 100 and the gateway adds its own).
        big = b"X-Big: " + b"a" * (50 * 1024) + b"\r\n"
        ok = (
            b"GET /id HTTP/1.1\r\nHost: site\r\n"
            + big
            + b"".join(b"X-%d: v\r\n" % i for i in range(88))
            + b"\r\n"
        )
        assert exchange(gw.listen_port, ok)[0] == 200
    assert got == dict.fromkeys(LIMITS, 431)
    assert len(app.requests) == 1


def test_a_header_that_never_ends_is_refused_with_bounded_memory_while_others_are_served(app):
    chunk = b"a" * MIB
    sent = 0
    refused = False
    served: list[int] = []
    with sidecar(app) as proxy:
        before = proxy.rss_kb()
        deadline = time.monotonic() + 60
        with connect(proxy.outbound_port, timeout=20) as sock:
            sock.sendall(b"GET http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nX-Endless: ")
            try:
                while sent < 300 * MIB and time.monotonic() < deadline:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    if sent == 8 * MIB:  # another client, while the endless header is still coming
                        served.append(victim_status(proxy.outbound_port, b"httpbin.org", b"/echo"))
            except (BrokenPipeError, ConnectionResetError):
                refused = True
            except TimeoutError:
                pass
        if not served:
            served.append(victim_status(proxy.outbound_port, b"httpbin.org", b"/echo"))
        grown_mb = (proxy.rss_kb() - before) / 1024
    assert refused, f"the proxy kept reading: {sent // MIB} MiB sent"
    assert served == [200]
    assert grown_mb < 30, f"RSS grew by {grown_mb:.0f} MB"


def test_the_head_limit_does_not_charge_pipelined_requests_for_what_came_before_them(app):
    many = b"GET /nothing HTTP/1.1\r\nHost: nowhere.example\r\n\r\n" * 1500  # 73 KiB in one send
    body = b"b" * (300 * 1024)
    after_body = (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: %d\r\n\r\n%s"
        b"GET http://httpbin.org/echo?second HTTP/1.1\r\nHost: httpbin.org\r\n\r\n" % (len(body), body)
    )
    with gateway(app) as gw, connect(gw.listen_port, timeout=30) as sock:
        sock.sendall(many)
        assert {read_response(sock)[0] for _ in range(1500)} == {404}
    with sidecar(app) as proxy, connect(proxy.outbound_port, timeout=30) as sock:
        sock.sendall(after_body)
        assert [read_response(sock)[0] for _ in range(2)] == [200, 200]
    assert [r["path"] for r in app.requests] == ["/echo", "/echo?second"]


# --- the route-decision memo ----------------------------------------------------------------------


def test_distinct_long_queries_do_not_grow_the_route_memo(app):
    query = b"q" * (48 * 1024)
    with gateway(app) as gw, connect(gw.listen_port, timeout=30) as sock:

        def send(i: int) -> int:
            sock.sendall(b"GET /nothing?%d%s HTTP/1.1\r\nHost: nowhere.example\r\n\r\n" % (i, query))
            return read_response(sock)[0]

        assert {send(i) for i in range(50)} == {404}  # no route: Envoy's 404 NR, decided by the gateway
        before = gw.rss_kb()
        assert {send(i) for i in range(50, 1550)} == {404}
        grown_mb = (gw.rss_kb() - before) / 1024
    assert grown_mb < 25, f"RSS grew by {grown_mb:.0f} MB over 1,500 distinct 48 KiB queries"


# --- unfinished requests --------------------------------------------------------------------------


def test_half_sent_headers_get_408_request_header_timeout(app):
    with sidecar(app, "--request-headers-timeout", "0.5") as proxy, connect(proxy.outbound_port, 20) as sock:
        sock.sendall(b"GET http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nX-Half")
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers["connection"]) == (408, b"request header timeout", "close")
        assert closed_by_peer(sock, timeout=10)
    assert app.requests == []


def test_half_sent_body_gets_408_stream_timeout(app):
    with sidecar(app, "--stream-idle-timeout", "0.5") as proxy, connect(proxy.outbound_port, 20) as sock:
        sock.sendall(
            b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: 10\r\n\r\nabc"
        )
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers["connection"]) == (408, b"stream timeout", "close")
        assert closed_by_peer(sock, timeout=10)
        metrics = proxy.metrics()
    assert 'response_code="408"' in metrics and 'response_flags="SI"' in metrics


def test_timeouts_have_documented_defaults():
    from localmesh.proxy.server import build_parser

    args = build_parser().parse_args(["--role", "gateway", "--routes", "x", "--admin", "127.0.0.1:1"])
    assert (args.request_headers_timeout, args.stream_idle_timeout) == (60.0, 300.0)


# --- spoofed Envoy headers at the gateway -----------------------------------------------------------


def test_gateway_strips_client_envoy_headers_and_sets_its_own(app):
    spoofed = (
        b"X-Envoy-External-Address: 6.6.6.6\r\nX-Envoy-Internal: true\r\n"
        b"X-Envoy-Decorator-Operation: admin\r\nX-Envoy-Downstream-Service-Cluster: evil\r\n"
        b"X-Envoy-Downstream-Service-Node: evil\r\nX-Envoy-Retry-On: 5xx\r\nX-Envoy-Max-Retries: 99\r\n"
        b"X-Envoy-Upstream-Rq-Timeout-Ms: 1\r\nX-Envoy-Force-Trace: true\r\nX-Envoy-Original-Url: http://x/\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: chosen-by-client\r\n"
    )
    with gateway(app) as gw:
        assert exchange(gw.listen_port, b"GET /id HTTP/1.1\r\nHost: site\r\n" + spoofed + b"\r\n")[0] == 200
    seen = app.requests[0]["headers"]
    leaked = {k: v for k, v in seen.items() if ("6.6.6.6" in v and k != "x-forwarded-for") or v == "evil"}
    assert leaked == {}
    for name in (
        "x-envoy-internal",
        "x-envoy-downstream-service-cluster",
        "x-envoy-downstream-service-node",
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-force-trace",
        "x-envoy-original-url",
    ):
        assert name not in seen, name
    # Istio's Envoy treats no address as internal (since Envoy 1.33 internal_address_config is empty
    # and Istio sets none: istio/istio pilot/pkg/networking/core/gateway.go), loopback included.
    assert seen["x-envoy-external-address"] == "127.0.0.1"
    # The client's decorator is replaced by the route's (pilot's GetRouteOperation for exact /id).
    assert seen["x-envoy-decorator-operation"] == "idgen.recipes.svc.cluster.local:80/id"
    assert seen["x-forwarded-for"] == "6.6.6.6,127.0.0.1"  # appended, as use_remote_address does
    assert seen["x-forwarded-proto"] == "http"  # the client's value is not trusted (no trusted hops)
    assert seen["x-request-id"] != "chosen-by-client"  # an edge request gets Envoy's own ID


# --- Envoy's answers to odd requests ---------------------------------------------------------------


def test_two_transfer_encoding_headers_get_501(app):
    request = (
        b"POST /id HTTP/1.1\r\nHost: site\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    )
    with gateway(app) as gw:
        status, headers, _, _ = exchange(gw.listen_port, request)
    assert (status, headers["connection"]) == (501, "close")
    assert app.requests == []


def test_http10_without_host_gets_400_at_a_gateway_that_accepts_http10(app):
    with gateway(app, "--http10") as gw:
        status = exchange(gw.listen_port, b"GET /id HTTP/1.0\r\n\r\n")[0]
        assert exchange(gw.listen_port, b"GET /id HTTP/1.0\r\nHost: site\r\n\r\n")[0] == 200
    assert status == 400
    assert [r["path"] for r in app.requests] == ["/id"]


def test_fragment_is_stripped_and_te_trailers_kept_as_istios_envoy_does(app):
    request = b"GET /id#section HTTP/1.1\r\nHost: site\r\nTE: trailers, deflate\r\n\r\n"
    with gateway(app) as gw:
        assert exchange(gw.listen_port, request)[0] == 200
        assert exchange(gw.listen_port, b"GET /id HTTP/1.1\r\nHost: site\r\nTE: gzip\r\n\r\n")[0] == 200
    assert [r["path"] for r in app.requests] == ["/id", "/id"]
    assert app.requests[0]["headers"]["te"] == "trailers"
    assert "te" not in app.requests[1]["headers"]

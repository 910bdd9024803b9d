"""The proxy's HTTP/1.1 handling, over real sockets on 127.0.0.1: keep-alive and pooling, chunked
bodies, Connection: close, HTTP/1.0, timeouts, malformed requests, Envoy's local replies, retries.

The proxy runs in-process on a background uvloop (proxy_testlib.BackgroundProxy) with route
tables built from manifests/overlays/*; the upstream is a small recording HTTP/1.1 app.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from proxy_testlib import (
    ISTIO_LINE,
    App,
    BackgroundProxy,
    EchoServer,
    closed_by_peer,
    closed_port,
    connect,
    exchange,
    http_post,
    metrics_when,
    read_response,
    tables,
    value,
    wait_for,
    with_addresses,
)

from localmesh.proxy.exchange import CONNECT_ERROR
from localmesh.proxy.server import build_parser
from localmesh.proxy.state import Timeouts
from localmesh.proxy.telemetry import Histogram

DATE = r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
# The answer that opens a CONNECT tunnel, as Envoy writes it.
ESTABLISHED = rb"HTTP/1\.1 200 OK\r\ndate: " + DATE.encode() + rb"\r\nserver: envoy\r\n\r\n"


@pytest.fixture
def app():
    with App() as app:
        yield app


def sidecar(app: App, overlay: str = "passthrough", httpbin: tuple[str, int] | None = None, **kwargs):
    table = tables(overlay, {"httpbin.org:80": httpbin or app.address})["idgen"]
    return BackgroundProxy("sidecar", table, app=app.address, **kwargs)


def get(path: str, host: str = "httpbin.org", extra: str = "") -> bytes:
    """An absolute-form request, as an app using HTTP_PROXY sends it."""
    return f"GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


# --- keep-alive, pooling, framing ------------------------------------------------------------------


def test_keep_alive_reuses_the_client_connection_and_a_pooled_upstream_connection(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        for _ in range(3):
            sock.sendall(get("/ok"))
            status, headers, body, _ = read_response(sock)
            assert (status, body) == (200, b"hello")
            assert "connection" not in headers
        with connect(proxy.outbound_port) as other:
            other.sendall(get("/ok"))
            assert read_response(other)[0] == 200
    # Four requests on two client connections, one upstream connection reused each time.
    assert len(app.requests) == 4
    assert len({r["client_port"] for r in app.requests}) == 1
    assert proxy.state.pool.opened == 1


def test_chunked_request_and_response_bodies_are_streamed_through(app):
    request = (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(request)
        status, _, body, _ = read_response(sock)
        echoed = json.loads(body)
        assert status == 200
        assert echoed["body"] == "hello world"
        assert ["transfer-encoding", "chunked"] in echoed["headers"]
        sock.sendall(get("/chunked"))
        status, headers, body, raw = read_response(sock)
    assert (status, body) == (200, b"alpha-beta-gamma")
    assert headers["transfer-encoding"] == "chunked"
    assert raw.endswith(b"6\r\nalpha-\r\n5\r\nbeta-\r\n5\r\ngamma\r\n0\r\n\r\n")


def test_response_delimited_by_close_is_rechunked_for_a_keep_alive_client(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/unframed"))
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers["transfer-encoding"]) == (200, b"until-close", "chunked")
        sock.sendall(get("/ok"))  # the client connection is still usable
        assert read_response(sock)[2] == b"hello"


def test_connection_close_is_honoured(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/ok", extra="Connection: close\r\n"))
        status, headers, _, _ = read_response(sock)
        assert status == 200
        assert headers["connection"] == "close"
        assert closed_by_peer(sock)


def test_pipelined_requests_are_answered_in_order(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/slow?s=0.2") + get("/ok") + get("/chunked"))
        bodies = [read_response(sock)[2] for _ in range(3)]
    assert bodies == [b"slow", b"hello", b"alpha-beta-gamma"]


def test_head_response_has_no_body_and_the_connection_stays_usable(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(b"HEAD http://httpbin.org/ok HTTP/1.1\r\nHost: httpbin.org\r\n\r\n")
        status, headers, body, _ = read_response(sock, head_request=True)
        assert (status, headers["content-length"], body) == (200, "5", b"")
        sock.sendall(get("/ok"))
        assert read_response(sock)[2] == b"hello"


def test_expect_100_continue_is_answered_by_the_proxy(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(
            b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        status, _, body, _ = read_response(sock)
    echoed = json.loads(body)
    assert (status, echoed["body"]) == (200, "data")
    assert not any(name == "expect" for name, _ in echoed["headers"])


def test_forwarding_rewrites_headers_as_envoy_does(app):
    request = get(
        "/echo?x=1",
        extra=(
            "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nProxy-Connection: keep-alive\r\n"
            "Keep-Alive: 5\r\nX-Keep: yes\r\n"
        ),
    )
    with sidecar(app) as proxy:
        status, headers, body, _ = exchange(proxy.outbound_port, request)
    seen = dict(json.loads(body)["headers"])
    assert json.loads(body)["path"] == "/echo?x=1"  # absolute-form -> origin-form
    assert seen["host"] == "httpbin.org"
    assert seen["x-keep"] == "yes"
    for hop in ("connection", "x-hop", "proxy-connection", "keep-alive"):
        assert hop not in seen
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-envoy-attempt-count"] == "1"
    assert re.fullmatch(r"[0-9a-f-]{36}", seen["x-request-id"])
    # Istio's default: the metadata exchange headers go to every upstream, external ones too.
    assert (
        seen["x-envoy-peer-metadata-id"] == "sidecar~127.0.0.1~idgen-local.recipes~recipes.svc.cluster.local"
    )
    assert "x-localmesh-peer-principal" not in seen  # no mTLS to an external host
    assert status == 200
    assert headers["server"] == "envoy"  # sidecar outbound: Envoy's default server name
    assert re.fullmatch(r"\d+", headers["x-envoy-upstream-service-time"])
    assert re.fullmatch(DATE, headers["date"])


def test_server_header_of_the_app_is_overwritten_on_inbound(app):
    with sidecar(app) as proxy:
        _, headers, _, raw = exchange(proxy.inbound_port, b"GET /ok HTTP/1.1\r\nHost: idgen\r\n\r\n")
    assert headers["server"] == "istio-envoy"
    assert b"testapp" not in raw
    assert headers["x-app"] == "1"


# --- HTTP/1.0 ------------------------------------------------------------------------------------


def test_http10_is_refused_by_the_gateway_with_envoys_exact_426_log_line_and_metric(app, tmp_path):
    """Istio's gateway accepts HTTP/1.0 only with PILOT_HTTP10 (istio/istio
    pilot/pkg/networking/core/gateway.go); Envoy 1.40's codec then sends exactly this answer."""
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    log = (tmp_path / "access.log").open("w+")
    with BackgroundProxy("gateway", table, access_log=log) as gateway:
        with connect(gateway.listen_port) as sock:
            sock.sendall(b"GET /id HTTP/1.0\r\nHost: site\r\nUser-Agent: old\r\n\r\n")
            raw = read_response(sock)[3]
            assert closed_by_peer(sock)
        metrics = gateway.metrics()
    assert re.fullmatch(
        rb"HTTP/1\.1 426 Upgrade Required\r\ncontent-length: 16\r\ncontent-type: text/plain\r\n"
        rb"date: " + DATE.encode() + rb"\r\nserver: istio-envoy\r\nconnection: close\r\n\r\nUpgrade Required",
        raw,
    ), raw
    assert app.requests == []
    log.seek(0)
    line = log.read()
    local = f"127.0.0.1:{gateway.listen_port}"
    assert re.fullmatch(
        r"\[[0-9T:.-]+Z\] \"- - HTTP/1\.1\" 426 DPE low_version - \"-\" 0 16 \d+ - "
        r"\"-\" \"-\" \"-\" \"-\" \"-\" - - " + re.escape(local) + r" 127\.0\.0\.1:\d+ - -\n",
        line,
    ), line
    assert (
        value(
            metrics,
            "istio_requests_total",
            reporter="source",
            source_workload="istio-ingressgateway",
            destination_service="unknown",
            destination_service_name="unknown",
            response_code="426",
            response_flags="DPE",
        )
        == 1
    )


def test_http10_is_served_by_the_gateway_when_enabled_and_closed_after_the_response(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table, http10=True) as gateway, connect(gateway.listen_port) as sock:
        sock.sendall(b"GET /id HTTP/1.0\r\nHost: site\r\n\r\n")
        status, _, body, raw = read_response(sock)
        assert raw.startswith(b"HTTP/1.0 200 OK\r\n")
        assert (status, body) == (200, b"hello")
        assert closed_by_peer(sock)


def test_http10_keep_alive_is_kept_when_asked(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table, http10=True) as gateway, connect(gateway.listen_port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /id HTTP/1.0\r\nHost: site\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _, _ = read_response(sock)
            assert (status, headers["connection"]) == (200, "keep-alive")


def test_http10_is_refused_by_a_sidecar_with_426_as_istio_does_by_default(app):
    with sidecar(app) as proxy:
        status, headers, body, raw = exchange(proxy.inbound_port, b"GET /ok HTTP/1.0\r\n\r\n")
        metrics = proxy.metrics()
    assert raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")  # as Envoy's codec answers
    assert (status, body, headers["connection"]) == (426, b"Upgrade Required", "close")
    assert value(metrics, "istio_requests_total", response_code="426", response_flags="DPE") == 1


def test_http10_is_accepted_by_a_sidecar_when_enabled(app):
    with sidecar(app, http10=True) as proxy:
        status, _, body, raw = exchange(proxy.inbound_port, b"GET /ok HTTP/1.0\r\nHost: idgen\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200 OK\r\n")
    assert (status, body) == (200, b"hello")


# --- timeouts ------------------------------------------------------------------------------------


def test_request_timeout_answers_408_and_closes(app):
    with sidecar(app, timeouts=Timeouts(request=0.3)) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(b"GET http://httpbin.org/ok HTTP/1.1\r\nHost: httpbin.org\r\n")  # headers never end
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers["connection"]) == (408, b"request timeout", "close")
        assert closed_by_peer(sock)
    assert app.requests == []


def test_idle_connection_is_closed_after_the_idle_timeout(app):
    with sidecar(app, timeouts=Timeouts(idle=0.3)) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/ok"))
        assert read_response(sock)[0] == 200
        assert closed_by_peer(sock, timeout=5)


def test_busy_connection_is_not_closed_by_the_idle_timeout(app):
    with sidecar(app, timeouts=Timeouts(idle=0.3)) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/slow?s=0.8"))
        assert read_response(sock)[2] == b"slow"


def test_slow_upstream_gets_504_upstream_request_timeout(app):
    with sidecar(app, "serviceentry", timeouts=Timeouts(route=0.3)) as proxy:
        status, headers, body, _ = exchange(proxy.outbound_port, get("/slow?s=2"))
        metrics = proxy.metrics()
    assert (status, body) == (504, b"upstream request timeout")
    assert headers["content-type"] == "text/plain"
    assert "x-envoy-upstream-service-time" not in headers
    assert value(metrics, "istio_requests_total", response_code="504", response_flags="UT") == 1


# --- malformed requests --------------------------------------------------------------------------

BAD_REQUESTS = {
    "garbage": b"GARBAGE\r\n\r\n",
    "no host on HTTP/1.1": b"GET /ok HTTP/1.1\r\n\r\n",
    "content-length and chunked": (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    ),
    "bad header name": b"GET http://httpbin.org/ok HTTP/1.1\r\nHost: httpbin.org\r\nBad Header: x\r\n\r\n",
    "bad chunk size": (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_request_gets_400_and_the_connection_is_closed(app, request_bytes):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(request_bytes)
        _, _, _, raw = read_response(sock)
        assert re.fullmatch(
            rb"HTTP/1\.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"
            rb"date: " + DATE.encode() + rb"\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request",
            raw,
        )
        assert closed_by_peer(sock)
        metrics = proxy.metrics()
    assert value(metrics, "istio_requests_total", response_code="400", response_flags="DPE") == 1


def test_malformed_request_after_a_good_one_is_answered_in_turn(app):
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(get("/slow?s=0.2") + b"GARBAGE\r\n\r\n")
        assert read_response(sock)[2] == b"slow"
        assert read_response(sock)[0] == 400
        assert closed_by_peer(sock)


# --- local replies: blackhole, no route, upstream failures -------------------------------------------


def test_blackhole_is_a_direct_502_with_an_empty_body_exactly_as_envoy_sends_it(app):
    with sidecar(app, "blackhole") as proxy:
        _, _, _, raw = exchange(proxy.outbound_port, get("/uuid"))
        metrics = proxy.metrics()
    assert re.fullmatch(
        rb"HTTP/1\.1 502 Bad Gateway\r\ndate: "
        + DATE.encode()
        + rb"\r\nserver: envoy\r\ncontent-length: 0\r\n\r\n",
        raw,
    )
    assert app.requests == []
    assert (
        value(
            metrics,
            "istio_requests_total",
            destination_service="httpbin.org",
            destination_service_name="BlackHoleCluster",
            response_code="502",
            response_flags="-",
        )
        == 1
    )


def test_gateway_without_a_route_answers_404_nr_with_no_body(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table) as gateway:
        _, _, _, raw = exchange(gateway.listen_port, b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
        metrics = gateway.metrics()
    assert re.fullmatch(
        rb"HTTP/1\.1 404 Not Found\r\ndate: "
        + DATE.encode()
        + rb"\r\nserver: istio-envoy\r\ncontent-length: 0\r\n\r\n",
        raw,
    )
    assert value(metrics, "istio_requests_total", response_code="404", response_flags="NR") == 1


@pytest.mark.parametrize(
    ("overlay", "cluster", "code"),
    [("passthrough", "PassthroughCluster", 200), ("blackhole", "BlackHoleCluster", 502)],
)
def test_unregistered_destination_service_is_the_host_header_as_sent(app, overlay, cluster, code):
    """istio_stats takes destination_service from the Host header, port and case included, for
    PassthroughCluster and BlackHoleCluster (envoyproxy/envoy contrib/istio/filters/http/istio_stats)."""
    with sidecar(app, overlay) as proxy:
        for host in ("httpbin.org", "httpbin.org:80", "HttpBin.org"):
            request = f"GET /uuid HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            assert exchange(proxy.outbound_port, request)[0] == code
        metrics = proxy.metrics()
    for host in ("httpbin.org", "httpbin.org:80", "HttpBin.org"):
        assert (
            value(metrics, "istio_requests_total", destination_service=host, destination_service_name=cluster)
            == 1
        )


@pytest.mark.parametrize(
    ("overlay", "operation"), [("serviceentry", "httpbin.org:80/*"), ("passthrough", "mine")]
)
def test_outbound_sends_the_routes_decorator_operation_and_no_client_cert(app, overlay, operation):
    """A registered host's default route has pilot's decorator (TraceOperation), which replaces the
    app's; allow_any has none, so the app's passes. An app's own XFCC is sanitized (Envoy's default
    on Istio's outbound listeners)."""
    with sidecar(app, overlay) as proxy:
        extra = "X-Envoy-Decorator-Operation: mine\r\nX-Forwarded-Client-Cert: By=app\r\n"
        assert exchange(proxy.outbound_port, get("/echo", extra=extra))[0] == 200
    seen = app.requests[-1]["headers"]
    assert seen.get("x-envoy-decorator-operation") == operation
    assert "x-forwarded-client-cert" not in seen


def test_refused_passthrough_upstream_gets_503_uf(app):
    with sidecar(app, httpbin=("127.0.0.1", closed_port())) as proxy:
        status, headers, body, _ = exchange(proxy.outbound_port, get("/uuid"))
        metrics = proxy.metrics()
    assert status == 503
    assert body == (
        b"upstream connect error or disconnect/reset before headers. reset reason: "
        b"remote connection failure, transport failure reason: delayed connect error: Connection refused"
    )
    assert (headers["content-type"], headers["server"]) == ("text/plain", "envoy")
    assert value(metrics, "istio_requests_total", response_code="503", response_flags="UF") == 1


def test_refused_serviceentry_upstream_is_retried_then_503_urx_uf(app):
    with sidecar(app, "serviceentry", httpbin=("127.0.0.1", closed_port())) as proxy:
        status, _, body, _ = exchange(proxy.outbound_port, get("/uuid"))
        metrics = proxy.metrics()
    assert status == 503
    assert body.startswith(
        b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
        b"remote connection failure"
    )
    assert value(metrics, "istio_requests_total", response_code="503", response_flags="URX,UF") == 1


def test_503_from_a_serviceentry_upstream_goes_straight_back_as_istio_default_policy(app):
    """Istio's default retry policy retries no status code since 1.24 (istio/istio
    pilot/pkg/networking/core/route/retry/retry.go defaultRetryOn): one attempt, no URX."""
    with sidecar(app, "serviceentry") as proxy:
        status, _, _, _ = exchange(proxy.outbound_port, get("/status/503"))
        metrics = proxy.metrics()
    assert status == 503
    assert [r["headers"]["x-envoy-attempt-count"] for r in app.requests] == ["1"]
    assert value(metrics, "istio_requests_total", response_code="503", response_flags="-") == 1


def test_503_from_idgen_goes_through_the_gateway_once(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table) as gateway:
        status = exchange(gateway.listen_port, b"GET /id?status=503 HTTP/1.1\r\nHost: site\r\n\r\n")[0]
        metrics = gateway.metrics()
    assert status == 503
    assert [r["headers"]["x-envoy-attempt-count"] for r in app.requests] == ["1"]
    assert value(metrics, "istio_requests_total", response_code="503", response_flags="-") == 1


def test_503_through_passthrough_is_not_retried(app):
    with sidecar(app) as proxy:
        assert exchange(proxy.outbound_port, get("/status/503"))[0] == 503
    assert len(app.requests) == 1


def test_inbound_retries_an_app_that_refuses_the_connection_twice_as_reset_before_request(app):
    """Istio's inbound route retries twice on reset-before-request (istio/istio
    pilot/pkg/networking/core/route/route.go BuildDefaultHTTPInboundRoute): a connection the app
    refuses is one; real Envoy answers this 503 flagged URX,UF after three connect attempts."""
    table = tables("passthrough", {"httpbin.org:80": app.address})["idgen"]
    with BackgroundProxy("sidecar", table, app=("127.0.0.1", closed_port())) as proxy:
        status, headers, body, _ = exchange(proxy.inbound_port, b"GET /id HTTP/1.1\r\nHost: idgen\r\n\r\n")
        metrics = proxy.metrics()
    assert (status, headers["server"]) == (503, "istio-envoy")
    # Envoy's inbound local reply carries the route's decorator too.
    assert headers["x-envoy-decorator-operation"] == "idgen.recipes.svc.cluster.local:80/*"
    assert body.startswith(
        b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
        b"remote connection failure"
    )
    assert value(metrics, "istio_requests_total", reporter="destination", response_flags="URX,UF") == 1


def test_inbound_does_not_retry_an_app_that_resets_before_answering(app):
    """reset-before-request covers resets before the request went out: an app that reads the
    request and then resets the connection gets it once, and the caller a 503 UC, as from Envoy."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def reset_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(65536)  # the request arrived: the reset comes after it
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # linger 0: the close is a reset

    thread = threading.Thread(target=reset_each, daemon=True)
    thread.start()
    table = tables("passthrough", {"httpbin.org:80": app.address})["idgen"]
    try:
        with BackgroundProxy("sidecar", table, app=listener.getsockname()) as proxy:
            status, _, body, _ = exchange(proxy.inbound_port, b"GET /id HTTP/1.1\r\nHost: idgen\r\n\r\n")
            metrics = proxy.metrics()
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(5)
    assert status == 503
    assert body == CONNECT_ERROR + b"reset reason: connection termination"
    assert len(accepted) == 1
    assert value(metrics, "istio_requests_total", reporter="destination", response_flags="UC") == 1


def test_upstream_closing_without_an_answer_gets_503_uc(app):
    with sidecar(app) as proxy:
        status, _, body, _ = exchange(proxy.outbound_port, get("/drop"))
        metrics = proxy.metrics()
    assert (status, body) == (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
    )
    assert value(metrics, "istio_requests_total", response_code="503", response_flags="UC") == 1


def test_client_going_away_is_counted_as_dc(app):
    with sidecar(app) as proxy:
        with connect(proxy.outbound_port) as sock:
            sock.sendall(get("/slow?s=0.5"))
            assert wait_for(lambda: app.requests), "the request never reached the app"
        # The client left while the app still held its request.
        metrics = metrics_when(proxy, "istio_requests_total", response_code="0", response_flags="DC")
    assert value(metrics, "istio_requests_total", response_code="0", response_flags="DC") == 1


# --- request and response sizes as Istio counts them -------------------------------------------------


def envoy_sum(size: int) -> float:
    """The `_sum` Envoy shows for one observation of size: its bin's midpoint (exact below 100)."""
    histogram = Histogram()
    histogram.observe(size)
    return histogram.sum()


def test_request_and_response_bytes_are_wire_bytes(app):
    request = get("/ok", extra="User-Agent: t\r\n")
    with sidecar(app) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(request)
        _, _, _, raw = read_response(sock)
        metrics = proxy.metrics()
    assert value(metrics, "istio_request_bytes_sum", reporter="source") == envoy_sum(len(request))
    assert value(metrics, "istio_response_bytes_sum", reporter="source") == envoy_sum(len(raw))


def test_chunked_request_bytes_include_the_chunk_framing(app):
    request = (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    with sidecar(app) as proxy:
        exchange(proxy.outbound_port, request)
        metrics = proxy.metrics()
    assert value(metrics, "istio_request_bytes_sum", reporter="source") == envoy_sum(len(request))


# --- CONNECT: the sidecar's TCP path ----------------------------------------------------------------


def test_connect_tunnel_relays_bytes_and_reports_tcp_metrics(app):
    with EchoServer() as echo:
        table = tables("passthrough", {"httpbin.org:80": app.address})["idgen"]
        table = with_addresses(table, {"secure.example:443": ("127.0.0.1", echo.port)})
        with BackgroundProxy("sidecar", table, app=app.address) as proxy:
            with connect(proxy.outbound_port) as sock:
                sock.sendall(b"CONNECT secure.example:443 HTTP/1.1\r\nHost: secure.example:443\r\n\r\n")
                assert re.fullmatch(ESTABLISHED, sock.recv(100))
                sock.sendall(b"client hello")
                received = b""
                while len(received) < 12:
                    received += sock.recv(100)
                assert received == b"client hello"
            labels = {
                "reporter": "source",
                "source_workload": "idgen",
                "destination_service": "unknown",  # TLS: the host is not visible
                "destination_service_name": "PassthroughCluster",
                "request_protocol": "tcp",
                "response_flags": "-",
            }
            metrics = metrics_when(proxy, "istio_tcp_connections_closed_total", **labels)
    assert value(metrics, "istio_tcp_connections_opened_total", **labels) == 1
    assert value(metrics, "istio_tcp_received_bytes_total", **labels) == 12
    assert value(metrics, "istio_tcp_sent_bytes_total", **labels) == 12
    assert value(metrics, "istio_requests_total") == 0


def test_connect_to_a_blackholed_host_is_closed_at_once(app):
    with sidecar(app, "blackhole") as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(b"CONNECT httpbin.org:443 HTTP/1.1\r\nHost: httpbin.org:443\r\n\r\n")
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        # The app's TLS handshake then fails on the closed connection (curl exit code 35).
        assert re.fullmatch(ESTABLISHED, data)
        labels = {
            "destination_service_name": "BlackHoleCluster",
            "response_flags": "UH",
            "request_protocol": "tcp",
        }
        metrics = metrics_when(proxy, "istio_tcp_connections_closed_total", **labels)
    assert value(metrics, "istio_tcp_connections_opened_total", **labels) == 1
    assert value(metrics, "istio_tcp_sent_bytes_total", **labels) == 0


def test_connect_to_a_refused_port_closes_with_uf(app):
    table = with_addresses(
        tables("passthrough", {"httpbin.org:80": app.address})["idgen"],
        {"down.example:443": ("127.0.0.1", closed_port())},
    )
    with BackgroundProxy("sidecar", table, app=app.address) as proxy, connect(proxy.outbound_port) as sock:
        sock.sendall(b"CONNECT down.example:443 HTTP/1.1\r\nHost: down.example:443\r\n\r\n")
        assert re.fullmatch(ESTABLISHED, sock.recv(100))
        assert closed_by_peer(sock)
        metrics = metrics_when(proxy, "istio_tcp_connections_closed_total", response_flags="UF")
    assert metrics


def test_connect_on_the_gateway_has_no_route(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table) as gateway:
        status, headers, _, _ = exchange(
            gateway.listen_port, b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n"
        )
    assert (status, headers["connection"]) == (404, "close")


def test_many_concurrent_clients(app):
    """A burst of parallel connections all get answers (pool bounded, nothing lost)."""
    with sidecar(app) as proxy:

        def one(_: int) -> int:
            return exchange(proxy.outbound_port, get("/ok", extra="Connection: close\r\n"))[0]

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64


def test_socket_helpers_do_not_leak(app):
    # closed_port really refuses connections (the refused-upstream tests depend on it).
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_transfer_codings_other_than_chunked_are_not_implemented(app):
    request = (
        b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    )
    with sidecar(app) as proxy:
        status, headers, body, _ = exchange(proxy.outbound_port, request)
    assert (status, body, headers["connection"]) == (501, b"Not Implemented", "close")
    assert app.requests == []


def test_gateway_forwards_with_edge_headers(app):
    table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})["istio-ingressgateway"]
    with BackgroundProxy("gateway", table) as gateway:
        status, _, _, _ = exchange(
            gateway.listen_port, b"GET /id HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n"
        )
    seen = app.requests[-1]["headers"]
    assert status == 200
    assert seen["x-forwarded-for"] == "10.1.1.1,127.0.0.1"  # use_remote_address: the client is appended
    # Envoy 1.36+ treats no address as internal unless internal_address_config says so (Istio sets
    # none on gateways): the request is external, so no x-envoy-internal and the client is the
    # external address.
    assert "x-envoy-internal" not in seen
    assert seen["x-envoy-external-address"] == "127.0.0.1"
    assert seen["x-envoy-attempt-count"] == "1"
    assert seen["x-envoy-peer-metadata-id"].startswith(
        "router~127.0.0.1~istio-ingressgateway-local.istio-system~"
    )
    assert seen["x-localmesh-peer-principal"] == (
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    )


def test_access_log_is_off_by_default_and_one_istio_line_per_request_when_on(app, tmp_path):
    log = (tmp_path / "access.log").open("w+")
    with sidecar(app, access_log=log) as proxy:
        exchange(proxy.outbound_port, get("/ok", extra="User-Agent: tester\r\n"))
        exchange(proxy.outbound_port, get("/status/503"))
        admin = proxy.admin_port
        blackhole = tables("blackhole", {"httpbin.org:80": app.address})["idgen"]
        assert http_post(admin, "/routes", blackhole.to_json().encode())[0] == 200
        exchange(proxy.outbound_port, get("/uuid"))
        entry = tables("serviceentry", {"httpbin.org:80": app.address})["idgen"]
        assert http_post(admin, "/routes", entry.to_json().encode())[0] == 200
        exchange(proxy.outbound_port, get("/uuid"))
    log.seek(0)  # the proxy flushes its buffered lines when it stops
    lines = [ISTIO_LINE.fullmatch(line) for line in log.read().splitlines()]
    assert len(lines) == 4 and all(lines), lines
    passthrough, failed, blocked, registered = (m.groupdict() for m in lines if m)
    assert passthrough["request"] == "GET /ok HTTP/1.1"  # origin-form :path, as Envoy logs it
    assert (passthrough["code"], passthrough["flags"], passthrough["details"]) == ("200", "-", "via_upstream")
    assert (passthrough["ua"], passthrough["authority"]) == ("tester", "httpbin.org")
    assert re.fullmatch(r"[0-9a-f-]{36}", passthrough["rid"])
    assert passthrough["upstream"] == f"127.0.0.1:{app.address[1]}"
    assert (passthrough["cluster"], passthrough["route"]) == ("PassthroughCluster", "allow_any")
    assert passthrough["local"] == f"127.0.0.1:{proxy.outbound_port}"
    assert failed["code"] == "503" and failed["cluster"] == "PassthroughCluster"
    # A blackholed request: Istio's sidecar logs a direct response with no upstream from block_all.
    assert (blocked["code"], blocked["flags"], blocked["details"]) == ("502", "-", "direct_response")
    assert (blocked["upstream"], blocked["cluster"], blocked["route"]) == ("-", "-", "block_all")
    assert (blocked["service_time"], blocked["received"], blocked["sent"]) == ("-", "0", "0")
    assert re.fullmatch(r"[0-9a-f-]{36}", blocked["rid"])
    assert (registered["cluster"], registered["route"]) == ("outbound|80||httpbin.org", "default")
    args = build_parser().parse_args(["--role", "gateway", "--routes", "r.json", "--admin", "127.0.0.1:1"])
    assert args.access_log is None  # no per-request logging unless asked


def test_route_push_lets_in_flight_requests_finish_on_the_old_table(app):
    blackhole = tables("blackhole", {"httpbin.org:80": app.address})["idgen"]
    with sidecar(app) as proxy, connect(proxy.outbound_port) as slow:
        slow.sendall(get("/slow?s=0.5"))
        # Wait until the request is routed (passthrough) and the app holds it, not a guessed delay.
        deadline = time.monotonic() + 10
        while not any(r["path"].startswith("/slow") for r in app.requests):
            assert time.monotonic() < deadline, "the slow request never reached the app"
            time.sleep(0.01)
        assert http_post(proxy.admin_port, "/routes", blackhole.to_json().encode())[0] == 200
        assert exchange(proxy.outbound_port, get("/ok"))[0] == 502  # the next request: new table
        assert read_response(slow)[:3:2] == (200, b"slow")  # the in-flight one: old table

"""Request framing corpus: malformed and edge-case request shapes sent through a real sidecar
process (outbound listener, PassthroughCluster) to a real HTTP/1.1 upstream on 127.0.0.1.

Each shape is followed by a victim request on a new client connection, which the proxy sends on the
same pooled upstream connection. The proxy must answer the expected status, forward nothing for a
refused shape, never let bytes of a body reach the upstream as a request of their own (every body
here carries `GET /smuggled`), and the victim must get the answer to its own request.
"""

from __future__ import annotations

import json

import pytest
from proxy_testlib import App, ProxyProcess, closed_by_peer, connect, read_response, tables

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: httpbin.org\r\n\r\n"
N = len(SMUGGLED)
POST = b"POST http://httpbin.org/echo HTTP/1.1\r\nHost: httpbin.org\r\n"
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)


def post(headers: bytes, body: bytes = SMUGGLED) -> bytes:
    return POST + headers + b"\r\n" + body


def cl(value: bytes, extra: bytes = b"") -> bytes:
    return post(extra + b"Content-Length: " + value + b"\r\n")


def te(value: bytes, extra: bytes = b"", body: bytes = CHUNKED) -> bytes:
    return post(extra + b"Transfer-Encoding: " + value + b"\r\n", body)


def chunks(wire: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", wire)


def line(request_line: bytes, headers: bytes = b"Host: httpbin.org\r\n") -> bytes:
    return request_line + b"\r\n" + headers + b"\r\n"


CL_N = b"%d" % N
GET = b"GET http://httpbin.org/echo HTTP/1.1"
HOST = b"Host: httpbin.org\r\n"
# name -> (request bytes, expected status); 200 means forwarded with the body framed by the proxy.
CORPUS: dict[str, tuple[bytes, int]] = {
    # accepted, re-framed by the proxy
    "content-length": (cl(CL_N), 200),
    "chunked": (te(b"chunked"), 200),
    "chunked upper case": (te(b"CHUNKED"), 200),
    "chunked with spaces around": (te(b"  chunked "), 200),
    "connection nominates content-length": (cl(CL_N, b"Connection: content-length\r\n"), 200),
    "connection nominates content-length, upper case": (cl(CL_N, b"Connection: Content-Length\r\n"), 200),
    "connection nominates transfer-encoding": (te(b"chunked", b"Connection: transfer-encoding\r\n"), 200),
    "connection nominates both": (te(b"chunked", b"Connection: transfer-encoding, content-length\r\n"), 200),
    "connection keep-alive and te": (cl(CL_N, b"Connection: keep-alive, te\r\nTE: trailers\r\n"), 200),
    "connection close": (cl(CL_N, b"Connection: close\r\n"), 200),
    "content-length with spaces around": (cl(b"  " + CL_N + b"  "), 200),
    "chunk extension": (chunks(b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 200),
    "chunk extension quoted": (chunks(b'%x;name="a b"\r\n%s\r\n0\r\n\r\n' % (N, SMUGGLED)), 200),
    "chunk size upper-case hex": (chunks(b"%X\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 200),
    "chunk size leading zeros": (chunks(b"000%x\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 200),
    "chunked with trailers": (chunks(b"%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (N, SMUGGLED)), 200),
    "many small chunks": (chunks(b"".join(b"1\r\n%c\r\n" % c for c in SMUGGLED) + b"0\r\n\r\n"), 200),
    "te trailers kept": (cl(CL_N, b"TE: trailers\r\n"), 200),
    "te other values dropped": (cl(CL_N, b"TE: gzip, deflate\r\n"), 200),
    "get with content-length body": (line(GET, HOST + b"Content-Length: %d\r\n" % N) + SMUGGLED, 200),
    "get with chunked body": (line(GET, HOST + b"Transfer-Encoding: chunked\r\n") + CHUNKED, 200),
    "origin-form on the outbound listener": (line(b"GET /echo HTTP/1.1"), 200),
    "absolute-form wins over host header": (line(GET, b"Host: other.example\r\n"), 200),
    "absolute-form with port": (line(b"GET http://httpbin.org:80/echo HTTP/1.1"), 200),
    "fragment in origin-form is stripped": (line(b"GET /echo#frag HTTP/1.1"), 200),
    "fragment in absolute-form is stripped": (line(b"GET http://httpbin.org/echo#frag HTTP/1.1"), 200),
    "two spaces in the request line": (line(b"GET  /echo HTTP/1.1"), 200),
    "empty header value": (line(b"GET /echo HTTP/1.1", b"Host: httpbin.org\r\nX-Empty:\r\n"), 200),
    "underscore header name": (te(b"chunked", b"Transfer_Encoding: chunked\r\n"), 200),
    # refused before anything is forwarded
    "content-length and chunked": (cl(CL_N, b"Transfer-Encoding: chunked\r\n"), 400),
    "chunked and content-length": (te(b"chunked", b"Content-Length: 5\r\n"), 400),
    "duplicate content-length, same": (cl(CL_N, b"Content-Length: %d\r\n" % N), 400),
    "duplicate content-length, different": (cl(CL_N, b"Content-Length: 5\r\n"), 400),
    "content-length list": (cl(CL_N + b", " + CL_N), 400),
    "content-length plus sign": (cl(b"+" + CL_N), 400),
    "content-length minus sign": (cl(b"-1"), 400),
    "content-length hex": (cl(b"0x2f"), 400),
    "content-length trailing letters": (cl(CL_N + b"a"), 400),
    "content-length space inside": (cl(b"4 7"), 400),
    "content-length overflow": (cl(b"99999999999999999999999"), 400),
    "content-length empty": (cl(b""), 400),
    "two transfer-encoding headers, gzip then chunked": (te(b"chunked", b"Transfer-Encoding: gzip\r\n"), 501),
    "transfer-encoding gzip, chunked": (te(b"gzip, chunked"), 501),
    "transfer-encoding chunked, chunked": (te(b"chunked, chunked"), 501),
    "transfer-encoding identity": (te(b"identity", body=SMUGGLED), 501),
    "transfer-encoding chunked, gzip": (te(b"chunked, gzip", body=SMUGGLED), 501),
    "transfer-encoding xchunked": (te(b"xchunked", body=SMUGGLED), 501),
    "transfer-encoding chunked-false": (te(b"chunked-false", body=SMUGGLED), 501),
    "transfer-encoding with a vertical tab": (te(b"\x0bchunked"), 400),
    "space before colon": (post(b"Transfer-Encoding : chunked\r\n", CHUNKED), 400),
    "tab before colon": (post(b"Content-Length\t: %d\r\n" % N), 400),
    "obs-fold on transfer-encoding": (post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED), 400),
    "obs-fold on another header": (post(b"X-Folded: a\r\n b\r\nContent-Length: %d\r\n" % N), 400),
    "bare LF line endings": (b"GET /echo HTTP/1.1\nHost: httpbin.org\n\n", 400),
    "bare LF after a header": (post(b"Content-Length: %d\nX-A: b\r\n" % N), 400),
    "bare CR in a value": (post(b"X-A: a\rb\r\nContent-Length: %d\r\n" % N), 400),
    "NUL in a value": (post(b"X-A: a\x00b\r\nContent-Length: %d\r\n" % N), 400),
    "NUL in a name": (post(b"X-\x00A: b\r\nContent-Length: %d\r\n" % N), 400),
    "space in a name": (post(b"Bad Header: x\r\nContent-Length: %d\r\n" % N), 400),
    "parenthesis in a name": (post(b"(x): y\r\nContent-Length: %d\r\n" % N), 400),
    "DEL in a name": (post(b"X\x7fA: y\r\nContent-Length: %d\r\n" % N), 400),
    "empty name": (post(b": y\r\nContent-Length: %d\r\n" % N), 400),
    "header without colon": (post(b"NoColon\r\nContent-Length: %d\r\n" % N), 400),
    "chunk size not hex": (chunks(b"zz\r\n%s\r\n0\r\n\r\n" % SMUGGLED), 400),
    "chunk size 0x prefix": (chunks(b"0x%x\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 400),
    "chunk size negative": (chunks(b"-%x\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 400),
    "chunk size overflow": (chunks(b"fffffffffffffffffff\r\n%s\r\n0\r\n\r\n" % SMUGGLED), 400),
    "chunk size empty": (chunks(b"\r\n%s\r\n0\r\n\r\n" % SMUGGLED), 400),
    "chunk size with a space": (chunks(b"%x 1\r\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 400),
    "chunk data longer than its size": (chunks(b"2\r\n%s\r\n0\r\n\r\n" % SMUGGLED), 400),
    "chunk without CRLF after the data": (chunks(b"%x\r\n%sXX0\r\n\r\n" % (N, SMUGGLED)), 400),
    "chunk size line ended by bare LF": (chunks(b"%x\n%s\r\n0\r\n\r\n" % (N, SMUGGLED)), 400),
    "connection nominates x-forwarded-for": (cl(CL_N, b"Connection: x-forwarded-for\r\n"), 400),
    "connection nominates x-forwarded-proto": (cl(CL_N, b"Connection: X-Forwarded-Proto\r\n"), 400),
    "connection nominates a pseudo-header": (cl(CL_N, b"Connection: :authority\r\n"), 400),
    "connection nominates ten headers": (cl(CL_N, b"Connection: a, b, c, d, e, f, g, h, i, j\r\n"), 400),
    "connection nominates a long te": (cl(CL_N, b"Connection: te\r\nTE: " + b"x" * 300 + b"\r\n"), 400),
    "HTTP/0.9 request": (b"GET /echo\r\n\r\n", 426),
    "HTTP/2.0 on the HTTP/1 listener": (line(b"GET /echo HTTP/2.0"), 426),
    "huge minor version": (line(b"GET /echo HTTP/1.1000"), 400),
    "huge major version": (line(b"GET /echo HTTP/11.1"), 400),
    "version 9.9": (line(b"GET /echo HTTP/9.9"), 426),
    "lower-case protocol": (line(b"GET /echo http/1.1"), 400),
    "trailing space in the request line": (line(b"GET /echo HTTP/1.1 "), 400),
    "lower-case method": (line(b"get /echo HTTP/1.1"), 400),
    "unknown method": (line(b"FROB /echo HTTP/1.1"), 400),
    "asterisk-form with GET": (line(b"GET * HTTP/1.1"), 400),
    "no host on HTTP/1.1": (line(b"GET /echo HTTP/1.1", b""), 400),
    "empty host": (line(b"GET /echo HTTP/1.1", b"Host:\r\n"), 400),
    "absolute-form with a bad port": (line(b"GET http://httpbin.org:99999/echo HTTP/1.1"), 400),
    "absolute-form https scheme": (line(b"GET https://httpbin.org/echo HTTP/1.1"), 400),
    "CONNECT without a port": (line(b"CONNECT httpbin.org HTTP/1.1"), 400),
    "CONNECT origin-form": (line(b"CONNECT /echo HTTP/1.1"), 400),
    "CONNECT with a bad port": (line(b"CONNECT httpbin.org:0 HTTP/1.1", b"Host: httpbin.org:0\r\n"), 400),
    "HTTP/1.0 without host": (b"GET /echo HTTP/1.0\r\n\r\n", 426),
}


@pytest.fixture(scope="module")
def upstream():
    with App() as app:
        yield app


@pytest.fixture(scope="module")
def proxy(upstream):
    table = tables("passthrough", {"httpbin.org:80": upstream.address})["idgen"]
    with ProxyProcess("sidecar", table, app=upstream.address) as proxy:
        yield proxy


def _send(port: int, request: bytes) -> tuple[int, bool]:
    """(status of the first final response, whether the proxy then closed the connection)."""
    with connect(port) as sock:
        sock.sendall(request)
        status = 100
        while status < 200:
            status = read_response(sock)[0]
        closed = closed_by_peer(sock, timeout=0.5)
    return status, closed


@pytest.mark.parametrize("name", CORPUS.keys())
def test_framing_shape_then_victim_on_the_same_upstream_connection(proxy, upstream, name):
    request, expected = CORPUS[name]
    before = len(upstream.requests)
    status, closed = _send(proxy.outbound_port, request)
    forwarded = upstream.requests[before:]
    assert status == expected, f"{name}: {status}"
    if expected == 200:
        assert [r["path"].split("?")[0] for r in forwarded] == ["/echo"]
    else:
        assert forwarded == [], f"{name} was refused but reached the upstream"
        assert closed, "a refused request closes the connection"

    victim = b"GET http://httpbin.org/echo?victim=%d HTTP/1.1\r\nHost: httpbin.org\r\n\r\n" % before
    with connect(proxy.outbound_port) as sock:
        sock.sendall(victim)
        status, _, body, _ = read_response(sock)
    assert status == 200
    assert json.loads(body)["path"] == f"/echo?victim={before}", "the victim got another request's answer"
    seen = upstream.requests[before:]
    assert not any("smuggled" in r["path"] for r in seen), f"{name} smuggled a request upstream"
    if forwarded:
        assert seen[-1]["client_port"] == forwarded[0]["client_port"], "the victim used another connection"


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 76

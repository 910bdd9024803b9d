"""One proxied HTTP request and its response: routing, forwarding, retries, local replies, metrics.

An Exchange is created when a request starts on a downstream connection (localmesh.proxy.downstream),
routed once its headers are parsed, and finished when its response has been written. Envoy
behaviours imitated here, with their sources:
- header rewriting: hop-by-hop headers dropped, `server` overwritten, `date` kept or added,
  `x-envoy-upstream-service-time` on proxied responses, `x-envoy-attempt-count` on client-side
  upstream requests, `x-forwarded-proto`, `x-request-id` (envoy conn_manager_utility.cc, router.cc;
  istio ProxyHeaders defaults);
- absolute-form requests rewritten to origin-form with Host from the URL (RFC 7230 5.7, envoy
  http1 codec `handlePath`);
- Istio's default retry policy on client-side routes except the passthrough route: 2 retries on
  connect-failure (the other conditions of `defaultRetryOn`, refused-stream, unavailable and
  cancelled, are HTTP/2 and gRPC ones) and on no status code: a 503 goes straight back (istio/istio
  pilot/pkg/networking/core/route/retry/retry.go `defaultRetryOn`, no RetriableStatusCodes since
  1.24; httproute.go buildCatchAllVirtualHost has no retry policy); flags "URX" when the retries
  run out; the inbound route retries twice on reset-before-request, which on an HTTP/1.1 upstream
  (the request is written as soon as the connection is up) is a failed connect to the app, e.g. an
  app not yet listening (istio/istio pilot/pkg/networking/core/route/route.go
  BuildDefaultHTTPInboundRoute); an app resetting a connection it accepted is not retried (UC);
- local reply bodies and flags: 503 "upstream connect error or disconnect/reset before headers.
  [retried and the latest ]reset reason: ..., transport failure reason: ..." (UF/URX,UF/UC/UPE),
  503 "no healthy upstream" (UH), 504 "upstream request timeout" (UT), 404 NR with no body,
  408 "request timeout", 0 + "DC" when the client goes away (envoy router.cc, conn_manager_impl.cc);
- tracing and certificate headers: the route's x-envoy-decorator-operation goes upstream from the
  gateway and the outbound listener and never back; inbound answers with its own (conn_manager_impl.cc);
  x-forwarded-client-cert is appended inbound over (stand-in) mTLS, removed otherwise
  (conn_manager_utility.cc mutateXfccRequestHeader; docs/istio-facts.md);
- peer metadata exchange (proxy.peer_metadata) and Istio's metric labels (proxy.telemetry).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time
import traceback
from random import getrandbits
from typing import cast

import httptools

from localmesh.mesh.names import PASSTHROUGH, UNKNOWN, Service, Workload
from localmesh.pilot.routes import Decision, decide_ingress, decide_outbound
from localmesh.proxy import http1, peer_metadata
from localmesh.proxy.http1 import CRLF, DATE, HOP_BY_HOP, LAST_CHUNK
from localmesh.proxy.interfaces import DownstreamConnection
from localmesh.proxy.state import UNKNOWN_SERVICE, Listener, ProxyState
from localmesh.proxy.telemetry import HOST_KEYED
from localmesh.proxy.upstream import Address, UpstreamConnection

# Envoy's retry buffer limit is the connection buffer limit; bodies above it are not retried.
RETRY_BUFFER_LIMIT = 1024 * 1024
# Downstream reading pauses while this much request body waits for an upstream connection.
PENDING_LIMIT = 256 * 1024
RETRIES = 2  # Istio DefaultPolicy NumRetries
RETRY_BASE = 0.025  # Envoy's default retry back-off base interval (25 ms), fully jittered

CONNECT_ERROR = b"upstream connect error or disconnect/reset before headers. "
# Envoy's x-envoy-* request headers that only Envoy may set: removed from every request that is not
# "internal" (envoy conn_manager_utility.cc mutateRequestHeaders and cleanInternalHeaders). Since
# Envoy 1.33 no address is internal unless internal_address_config says so, and Istio sets none
# (ENABLE_HCM_INTERNAL_NETWORKS is off: istio/istio pilot/pkg/networking/core/gateway.go), so every
# request is external, from loopback and private addresses too.
ENVOY_INTERNAL = frozenset(
    (
        b"x-envoy-internal",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-force-trace",
        b"x-envoy-ip-tags",
        b"x-envoy-original-url",
        b"x-envoy-hedge-on-per-try-timeout",
    )
)
# Framing is never forwarded as received: the proxy writes its own content-length or chunking.
DECORATOR = b"x-envoy-decorator-operation"
XFCC = b"x-forwarded-client-cert"
# The decorator header is written by the proxy (see _build_head); x-forwarded-client-cert is removed
# from every request that did not come over mutual TLS, as Envoy's sanitizing does for each of
# Istio's listeners (APPEND_FORWARD inbound, SANITIZE_SET at gateways, Envoy's default SANITIZE
# outbound: envoy conn_manager_utility.cc mutateXfccRequestHeader).
SKIP_REQUEST = (
    HOP_BY_HOP | peer_metadata.HEADERS | ENVOY_INTERNAL | {b"expect", b"content-length", DECORATOR, XFCC}
)
# An edge request (a gateway uses the remote address) also loses these, and its x-forwarded-proto,
# x-envoy-external-address, x-forwarded-for and x-request-id are the gateway's own
# (cleanInternalHeaders with edge_request; xff_num_trusted_hops is 0 in Istio's default gateway
# topology; Istio leaves preserve_external_request_id off, so Envoy sets a new request ID at the edge).
SKIP_EDGE = SKIP_REQUEST | {
    b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node",
    b"x-envoy-external-address",
    b"x-forwarded-proto",
    b"x-request-id",
}
# Request headers the framing decision reads (one set lookup per header on the hot path).
FRAMING = frozenset((b"transfer-encoding", b"content-length", b"connection", b"te"))
# server and x-envoy-upstream-service-time are set by this proxy, replacing an upstream proxy's
# (Envoy's router overwrites the service-time header; proxy_headers.go overwrites server).
# The decorator header of a response is the proxy's own too (set inbound, removed elsewhere).
SKIP_RESPONSE = HOP_BY_HOP | peer_metadata.HEADERS | {b"server", b"x-envoy-upstream-service-time", DECORATOR}


def request_id() -> bytes:
    """A random (version 4) UUID for x-request-id, as Envoy generates when the request has none.

    Built from random.getrandbits: an ID, not a secret, and several times cheaper than uuid.uuid4().
    """
    bits = getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
    h = b"%032x" % bits
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def _mesh_service(service: Service) -> bool:
    """Destinations that are Kubernetes services in the mesh get (stand-in) mutual TLS."""
    return service.host.endswith(".svc.cluster.local")


class Exchange:
    """A request/response pair on one downstream connection."""

    __slots__ = (
        "address",
        "attempts",
        "authority",
        "body_framing",
        "can_retry",
        "chunk_size",
        "close_after",
        "conn_tokens",
        "content_length",
        "decision_cluster",
        "decorated",
        "done",
        "down",
        "down_md",
        "down_mx_id",
        "down_mx_md",
        "down_peer",
        "down_principal",
        "flags",
        "head",
        "head_request",
        "headers",
        "headers_done",
        "http10",
        "keep_alive",
        "listener",
        "method",
        "mtls_upstream",
        "operation",
        "pending",
        "pending_size",
        "refuse",
        "replay",
        "replay_size",
        "req_bytes",
        "req_complete",
        "req_done_at",
        "request_id",
        "resp_bytes",
        "resp_chunked",
        "resp_started",
        "sent_at",
        "service",
        "start",
        "started",
        "state",
        "status",
        "te_trailers",
        "up_mtls",
        "up_peer",
        "upstream",
        "url",
        "written",
    )

    def __init__(self, down: DownstreamConnection, state: ProxyState, listener: Listener) -> None:
        self.down = down
        self.state = state
        self.listener = listener
        self.start = time.monotonic()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.http10 = False
        self.keep_alive = True
        self.head_request = False
        self.request_id = b"-"
        self.headers_done = False
        self.started = False
        self.req_complete = False
        self.req_done_at = 0.0
        self.req_bytes = 0
        self.body_framing = b""
        self.content_length: bytes | None = None
        self.conn_tokens: set[bytes] | None = None
        self.te_trailers = False
        self.refuse = 0  # a status to refuse the request with once it is routed (0: none)
        self.chunk_size = 0
        self.authority = b""
        self.head = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.written = False
        self.upstream: UpstreamConnection | None = None
        self.address: Address | None = None
        self.service: Service = UNKNOWN_SERVICE
        self.decision_cluster = ""
        self.operation = b""  # the route's decorator operation, sent upstream (gateway, outbound)
        self.decorated = False  # inbound: the caller sent its own decorator operation
        self.can_retry = False
        self.attempts = 0
        self.sent_at = 0.0
        self.resp_started = False
        self.resp_chunked = False
        self.resp_bytes = 0
        self.status = 0
        self.flags = "-"
        self.close_after = False
        self.done = False
        self.down_peer: Workload = UNKNOWN
        self.down_principal: bytes | None = None
        self.down_mx_id = False
        self.down_mx_md = False
        self.down_md: bytes | None = None
        self.up_peer: Workload = UNKNOWN
        self.mtls_upstream = False
        self.up_mtls = False

    # --- request side (called by the downstream connection) ------------------------------------

    def headers_complete(self, parser: httptools.HttpRequestParser) -> None:
        self.method = parser.get_method()
        version = parser.get_http_version()
        self.http10 = version == "1.0"
        if not self.http10 and version != "1.1":
            # llhttp reads HTTP/2.0 (and 0.9) request lines; Envoy's codec answers any version but
            # HTTP/1.1 (or an accepted 1.0) with 426 (codec_impl.cc checkProtocolVersion).
            self.refuse = 426
        self.keep_alive = parser.should_keep_alive()
        self.head_request = self.method == b"HEAD"
        self.headers_done = True
        # Wire size of the request line and headers as received (canonical "name: value" form).
        size = len(self.method) + len(self.url) + 14  # " ", " HTTP/1.1\r\n", final "\r\n"
        framing = None
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name in FRAMING:
                if framing is None:
                    framing = []
                framing.append((name, value))
        self.req_bytes += size
        if framing is not None:
            self._framing(framing)

    def _framing(self, headers: list[tuple[bytes, bytes]]) -> None:
        """How the body goes upstream, decided before any of it is read (called only when the
        request has a framing, Connection or TE header).

        Envoy's codec reads the body by the received framing, and its encoder writes the body again
        with content-length or chunking (envoy http1 codec_impl.cc): whatever the Connection header
        nominates, a body never goes out unframed.
        """
        te = coding = None
        connection: list[bytes] = []
        for name, value in headers:
            if name == b"transfer-encoding":
                # Several headers are one list (RFC 9112 6.1): "gzip" then "chunked" is "gzip, chunked".
                coding = value if coding is None else coding + b"," + value
            elif name == b"content-length":
                self.content_length = value.strip()
            elif name == b"connection":
                connection.append(value)
            else:
                te = value if te is None else te + b"," + value
        if coding is not None:
            # Envoy answers 501 to any transfer coding but chunked alone (codec_impl.cc).
            self.body_framing = b"chunked" if coding.strip().lower() == b"chunked" else b"other"
            self.content_length = None
        if te is not None:
            self.te_trailers = http1.has_trailers(te)
        if connection:
            if not http1.nominations_valid(connection, te):
                self.refuse = 400
            tokens = http1.connection_tokens(headers)
            self.conn_tokens = tokens
            if b"content-length" in tokens and self.content_length is not None:
                # Envoy removes a nominated content-length; its encoder then chunks the body.
                self.content_length = None
                self.body_framing = b"chunked"

    def request_body(self, data: bytes) -> None:
        self.req_bytes += len(data)
        self.chunk_size += len(data)
        if self.done:
            return
        if self.body_framing == b"chunked":
            data = http1.chunk(data)
        self._send_body(data)

    def chunk_complete(self) -> None:
        # Chunk framing on the wire: size line and CRLF after the data.
        self.req_bytes += len(b"%x" % self.chunk_size) + 4
        self.chunk_size = 0

    def request_complete(self) -> None:
        self.req_complete = True
        self.req_done_at = time.monotonic()
        if self.done:
            return
        if self.body_framing == b"chunked":
            self._send_body(LAST_CHUNK)

    def _send_body(self, data: bytes) -> None:
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > RETRY_BUFFER_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)
        upstream = self.upstream
        if upstream is not None and self.written:
            upstream.write(data)
        else:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT:
                self.down.pause("pending")

    # --- routing ------------------------------------------------------------------------------

    def begin(self) -> None:
        """Route the request (headers are complete) and start forwarding or answer locally."""
        self.started = True
        try:
            self._route()
        except Exception as exc:  # a bug here must not take the connection's other requests down
            traceback.print_exc(file=sys.stderr)
            self.local_reply(
                500, f"localmesh proxy error: {type(exc).__name__}: {exc}".encode(), "-", close=True
            )

    def _route(self) -> None:
        listener = self.listener
        if self.refuse:
            self.down.protocol_error(self.refuse, self)
            return
        if self.http10 and not listener.http10:
            # Envoy's codec rejects HTTP/1.0 on listeners without accept_http_10, before the
            # connection manager sees the request: its answer and access log line are HTTP/1.1.
            self.http10 = False
            self.down.protocol_error(426, self)
            return
        if self.body_framing == b"other":
            # Envoy's codec: a transfer coding other than chunked is not implemented.
            self.down.protocol_error(501, self)
            return
        url = self.url
        authority = None
        for name, value in self.headers:
            if name == b"host":
                authority = value
                break
        if url[:1] == b"/":
            path = url
            if b"#" in path:
                # Istio sets http_reject_path_with_fragment to false, so its Envoy strips the
                # fragment instead of refusing it (istio/istio pkg/bootstrap/config.go
                # extractRuntimeFlags; envoy http1 codec_impl.cc).
                path = path.partition(b"#")[0]
        elif url[:7].lower() == b"http://":
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self.down.protocol_error(400, self)
                return
            authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            path = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        elif url == b"*" and self.method == b"OPTIONS":
            path = url
        else:
            self.down.protocol_error(400, self)
            return
        if not authority:
            # Envoy requires a host on every request, HTTP/1.0 included when no
            # default_host_for_http_10 is set, as in Istio (envoy conn_manager_impl.cc, MissingHost).
            self.down.protocol_error(400, self)
            return
        self.authority = authority
        state = self.state
        table = state.table
        kind = listener.kind
        if kind == "inbound":
            self.address = state.app
            self.service = state.service
            self.can_retry = True  # reset-before-request
        elif kind == "gateway":
            decision = decide_ingress(table, authority.decode("latin-1"), path.decode("latin-1"))
            if decision is None:
                self.local_reply(404, b"", "NR", close=self._body_expected())
                return
            self._use(decision)
        else:
            try:
                host, port = http1.split_authority(authority)
            except ValueError:
                self.down.protocol_error(400, self)
                return
            decision = decide_outbound(table, host, port, "http")
            self._use(decision)
            service = self.service
            if decision.cluster in HOST_KEYED and service.host.encode() != authority:
                # istio_stats names a passthrough or blackholed request's destination_service by the
                # Host header as sent, port and case included (envoyproxy/envoy
                # contrib/istio/filters/http/istio_stats/source/istio_stats.cc populatePeerInfo).
                self.service = Service(authority.decode("latin-1"), service.name, service.namespace)
            if decision.upstream is None:
                # BlackHoleCluster: Istio's block_all route is a direct response 502 with no body;
                # a direct response sets no response flag.
                self.local_reply(502, b"", "-", close=self._body_expected())
                return
        self.head = self._build_head(path)
        if not self.req_complete and self._expects_continue():
            # The client gets its 100 Continue from the proxy and the upstream never sees Expect
            # (Envoy's handling when it does not proxy 100-continue; the client sees the same).
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._acquire()

    def _use(self, decision: Decision) -> None:
        self.service = decision.service
        self.decision_cluster = decision.cluster
        self.operation = decision.operation.encode()
        self.address = decision.upstream
        # The endpoint's metadata names the destination until (unless) the peer answers with its own.
        self.up_peer = decision.peer
        self.can_retry = decision.cluster != PASSTHROUGH
        self.mtls_upstream = _mesh_service(decision.service)

    def _expects_continue(self) -> bool:
        return any(name == b"expect" and value.lower() == b"100-continue" for name, value in self.headers)

    def _build_head(self, path: bytes) -> bytes:
        """Request line and headers for the upstream, without the attempt count and final CRLF."""
        listener = self.listener
        kind = listener.kind
        headers = self.headers
        out = [self.method, b" ", path, b" HTTP/1.1\r\n"]
        skip = SKIP_EDGE if kind == "gateway" else SKIP_REQUEST
        extra = self.conn_tokens
        if extra:
            skip = skip | extra
        has_xfp = has_rid = has_host = False
        xff = None
        mx_id = mx_md = False
        principal = xfcc = None
        for name, value in headers:
            if name in skip:
                if kind == "inbound":
                    if name == peer_metadata.HEADER_METADATA:
                        self.down_md = value
                        mx_md = True
                    elif name == peer_metadata.HEADER_ID:
                        mx_id = True
                    elif name == peer_metadata.HEADER_PRINCIPAL:
                        principal = value
                    elif name == DECORATOR:
                        self.decorated = True
                    elif name == XFCC:
                        xfcc = value if xfcc is None else xfcc + b"," + value
                elif name == DECORATOR and kind == "outbound" and not self.operation:
                    # A route without a decorator (allow_any) leaves the app's own in place.
                    out += (name, b": ", value, CRLF)
                continue
            if name == b"host":
                # Absolute-form: the Host of the URL wins (RFC 7230 5.7).
                if has_host:
                    continue
                has_host = True
                value = self.authority
            elif name == b"x-forwarded-proto":
                has_xfp = True
            elif name == b"x-request-id":
                has_rid = True
            elif name == b"x-forwarded-for" and kind == "gateway":
                xff = value
                continue
            out += (name, b": ", value, CRLF)
        if not has_host and self.authority:
            out += (b"host: ", self.authority, CRLF)
        if self.body_framing == b"chunked":
            out.append(b"transfer-encoding: chunked\r\n")
        elif self.content_length is not None:
            out += (b"content-length: ", self.content_length, CRLF)
        if self.te_trailers:
            out.append(b"te: trailers\r\n")
        if kind == "gateway":
            # Gateways use the remote address (use_remote_address: true): the client is appended to
            # XFF and, the request being external, is the x-envoy-external-address.
            client = self.down.peer_ip
            out += (b"x-forwarded-for: ", xff + b"," + client if xff else client, CRLF)
            out += (b"x-envoy-external-address: ", client, CRLF)
        if not has_xfp:
            out.append(b"x-forwarded-proto: http\r\n")
        if not has_rid:
            self.request_id = request_id()
            out += (b"x-request-id: ", self.request_id, CRLF)
        if kind == "inbound":
            self.down_mx_id = mx_id
            self.down_mx_md = mx_md
            self.down_principal = principal
            if mx_md or principal is not None:
                self.down_peer = self.state.peers.lookup(self.down_md, principal)
            if principal:
                # Over (stand-in) mutual TLS Istio's inbound appends the peer's certificate details:
                # By=<own SAN>;Hash=<peer certificate digest>;Subject="";URI=<peer SAN> (APPEND_FORWARD
                # with subject, uri and dns; istio/istio pilot/pkg/networking/core/listener_inbound.go).
                # There is no certificate locally, so no Hash (docs/istio-facts.md).
                own = self.state.identity.workload.principal
                details = (
                    (b"By=%s;" % own.encode() if own != "unknown" else b"") + b'Subject="";URI=' + principal
                )
                out += (XFCC, b": ", xfcc + b"," + details if xfcc else details, CRLF)
        else:
            if self.operation:
                # Egress: the route's decorator operation goes upstream (Envoy traceRequest).
                out += (DECORATOR, b": ", self.operation, CRLF)
            identity = self.state.identity
            out += (peer_metadata.HEADER_ID, b": ", identity.id_value, CRLF)
            out += (peer_metadata.HEADER_METADATA, b": ", identity.metadata_value, CRLF)
            if self.mtls_upstream and identity.workload.principal != "unknown":
                out += (peer_metadata.HEADER_PRINCIPAL, b": ", identity.principal_value, CRLF)
        return b"".join(out)

    # --- upstream connection ------------------------------------------------------------------

    def _acquire(self) -> None:
        # begin() sets the address before the first attempt; a request without one (no route,
        # BlackHoleCluster) is answered locally and never connects.
        address = cast(Address, self.address)
        conn = self.state.pool.take(address)
        if conn is not None:
            self._attach(conn)
        else:
            asyncio.get_running_loop().create_task(self._connect(address))

    async def _connect(self, address: Address) -> None:
        state = self.state
        try:
            conn = await state.pool.connect(address)
        except socket.gaierror as exc:
            if self.done:
                return
            if self.decision_cluster != PASSTHROUGH:
                # A DNS cluster whose host resolves to nothing has no endpoint: Envoy's UH.
                self.local_reply(503, b"no healthy upstream", "UH")
            else:
                # PassthroughCluster connects to the address the app resolved; here the proxy
                # resolves for the app, and a failed lookup is that connection failing.
                reason = b"remote connection failure, transport failure reason: resolve error: %s"
                self.local_reply(503, CONNECT_ERROR + b"reset reason: " + reason % str(exc).encode(), "UF")
            return
        except (TimeoutError, OSError) as exc:
            if self.done:
                return
            if isinstance(exc, asyncio.TimeoutError | TimeoutError):
                reason = b"connection timeout"
            else:
                detail = os.strerror(exc.errno) if exc.errno else str(exc)
                reason = b"remote connection failure, transport failure reason: delayed connect error: %s" % (
                    detail.encode()
                )
            self._connect_failed(reason)
            return
        if self.done:
            state.pool.give(conn)
            return
        if conn.closed:
            # The upstream reset the connection before the request could be written: a reset
            # before request, retried like a failed connect.
            self._connect_failed(b"connection termination", "UC")
            return
        self._attach(conn)

    def _connect_failed(self, reason: bytes, flag: str = "UF") -> None:
        if self.can_retry and self.attempts < RETRIES:
            self._schedule_retry()
            return
        retried = self.attempts > 0
        body = CONNECT_ERROR + (b"retried and the latest " if retried else b"") + b"reset reason: " + reason
        self.local_reply(503, body, "URX," + flag if retried else flag)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.begin(self, self.head_request)
        attempt = b""
        if self.listener.attempt_count:
            attempt = b"x-envoy-attempt-count: %d\r\n" % (self.attempts + 1)
        pending = self.pending
        self.sent_at = time.monotonic()
        conn.write(b"".join((self.head, attempt, CRLF, *pending)))
        self.written = True
        if pending:
            self.pending = []
            if self.pending_size > PENDING_LIMIT:
                self.down.resume("pending")
            self.pending_size = 0

    def _schedule_retry(self) -> None:
        self.attempts += 1
        delay = random.uniform(0, RETRY_BASE * (2 ** (self.attempts - 1)))
        asyncio.get_running_loop().call_later(delay, self._retry)

    def _retry(self) -> None:
        # Retries follow a failed connect only: nothing was written, the body still waits in pending.
        if not self.done:
            self._acquire()

    # --- response side (called by the upstream connection) ---------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        if self.done:
            return
        listener = self.listener
        kind = listener.kind
        now = time.monotonic()
        self.status = status
        out = [http1.status_line(status, self.http10)]
        skip = SKIP_RESPONSE
        extra = http1.connection_tokens(headers)
        if extra:
            skip = skip | extra
        has_length = has_date = False
        up_md = up_principal = None
        for name, value in headers:
            if name in skip:
                if kind != "inbound":
                    if name == peer_metadata.HEADER_METADATA:
                        up_md = value
                    elif name == peer_metadata.HEADER_PRINCIPAL:
                        up_principal = value
                continue
            if name == b"content-length":
                has_length = True
            elif name == b"date":
                has_date = True
            out += (name, b": ", value, CRLF)
        if up_md is not None:
            self.up_peer = self.state.peers.lookup(up_md, up_principal)
        # The (stand-in) mTLS handshake happened when the answering proxy presented its principal.
        self.up_mtls = bool(up_principal) and self.mtls_upstream
        if not has_date:
            out += (b"date: ", DATE.get(), CRLF)
        out += (b"server: ", listener.server, CRLF)
        out.append(b"x-envoy-upstream-service-time: %d\r\n" % int((now - self.sent_at) * 1000))
        if kind == "inbound":
            out.append(self._inbound_decorator())
            identity = self.state.identity
            if self.down_mx_id:
                out += (peer_metadata.HEADER_ID, b": ", identity.id_value, CRLF)
            if self.down_mx_md:
                out += (peer_metadata.HEADER_METADATA, b": ", identity.metadata_value, CRLF)
            if self.down_principal is not None and identity.workload.principal != "unknown":
                out += (peer_metadata.HEADER_PRINCIPAL, b": ", identity.principal_value, CRLF)
        no_body = self.head_request or status in (204, 304)
        close = not self.keep_alive or self.down.closing
        if not has_length and not no_body:
            if self.http10:
                close = True  # an HTTP/1.0 client reads to the end of the connection
            else:
                out.append(b"transfer-encoding: chunked\r\n")
                self.resp_chunked = True
        if close:
            out.append(b"connection: close\r\n")
            self.close_after = True
        elif self.http10:
            out.append(b"connection: keep-alive\r\n")
        out.append(CRLF)
        self.resp_started = True
        self._write(b"".join(out))

    def response_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        self._write(http1.chunk(data) if self.resp_chunked else data)

    def response_complete(self, keep_alive: bool) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            if keep_alive and self.req_complete and not conn.closed:
                self.state.pool.give(conn)
            else:
                conn.close()
        if self.done:
            return
        if self.resp_chunked:
            self._write(LAST_CHUNK)
        self.finish()

    def upstream_lost(self, conn: UpstreamConnection, protocol_error: bool) -> None:
        self.upstream = None
        if self.done:
            return
        if self.resp_started:
            # The upstream went away mid-response: the client's connection is reset too.
            self.flags = "UC"
            self.close_after = True
            self.down.abort()
            self.finish()
        elif conn.reused and not conn.received_any and (not self.written or self.replay is not None):
            # A pooled connection the upstream had just closed: try a fresh one (not a retry).
            conn.reused = False
            if self.written:
                self.pending = list(self.replay or ())
                self.pending_size = self.replay_size
                self.written = False
            asyncio.get_running_loop().create_task(self._connect(cast(Address, self.address)))
        elif protocol_error:
            self.local_reply(503, CONNECT_ERROR + b"reset reason: protocol error", "UPE")
        else:
            self.local_reply(503, CONNECT_ERROR + b"reset reason: connection termination", "UC")

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self.down.pause("upstream")
        else:
            self.down.resume("upstream")

    # --- endings ------------------------------------------------------------------------------

    def _body_expected(self) -> bool:
        """The request announces a body. Envoy answers a route's direct response (or no route) from
        the headers alone, before the body is read, and closes the connection after it since the
        request is not complete (envoy source/common/http/conn_manager_impl.cc sendLocalReply);
        here the body may have been parsed already, so the announcement decides."""
        return self.body_framing == b"chunked" or self.content_length not in (None, b"0")

    def _write(self, data: bytes) -> None:
        self.resp_bytes += len(data)
        self.down.write(data)

    def _inbound_decorator(self) -> bytes:
        """The decorator header an inbound response gets: the inbound route's operation, unless the
        caller sent its own (Envoy's ingress tracing: conn_manager_impl.cc encodeHeaders); b"" else."""
        operation = self.state.inbound_operation
        if self.decorated or not operation:
            return b""
        return DECORATOR + b": " + operation + CRLF

    def local_reply(self, code: int, body: bytes, flags: str, close: bool = False) -> None:
        """Answer from the proxy itself (Envoy's sendLocalReply) and finish."""
        if self.done:
            return
        if self.resp_started:
            self.flags = flags
            self.close_after = True
            self.down.abort()
            self.finish()
            return
        self._drop_upstream()
        close = close or not self.keep_alive or not self.req_complete or self.down.closing
        self.status = code
        self.flags = flags
        self.close_after = close
        self.resp_started = True
        # Inbound local replies after routing carry the decorator too (checked on Envoy 1.40).
        extra = self._inbound_decorator() if self.listener.kind == "inbound" and self.started else b""
        self._write(
            http1.local_reply(code, body, self.listener.server, close, self.http10, self.head_request, extra)
        )
        self.finish()

    def _drop_upstream(self) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.close()

    def downstream_lost(self) -> None:
        """The client closed its connection before the response was complete."""
        if self.done:
            return
        self._drop_upstream()
        if self.flags == "-":
            self.flags = "DC"
        self.close_after = True
        self.finish()

    def check_timeouts(self, now: float) -> None:
        """Called periodically by the proxy's timer sweep."""
        timeouts = self.state.timeouts
        if not self.headers_done and timeouts.headers and now - self.start > timeouts.headers:
            self.local_reply(408, b"request header timeout", "-", close=True)
        elif timeouts.stream_idle and now - self.down.last_active > timeouts.stream_idle:
            # No byte either way for the stream idle timeout (envoy conn_manager_impl.cc
            # onIdleTimeout): 408 before the request is complete, 504 after, flag SI.
            if self.resp_started:
                self.flags = "SI"
                self.close_after = True
                self._drop_upstream()
                self.down.abort()
                self.finish()
            else:
                self.local_reply(504 if self.req_complete else 408, b"stream timeout", "SI", close=True)
        elif not self.req_complete:
            if timeouts.request and now - self.start > timeouts.request:
                self.local_reply(408, b"request timeout", "-", close=True)
        elif timeouts.route and self.started and now - self.req_done_at > timeouts.route:
            if self.resp_started:
                self.flags = "UT"
                self.close_after = True
                self._drop_upstream()
                self.down.abort()
                self.finish()
            else:
                self.local_reply(504, b"upstream request timeout", "UT")

    def finish(self) -> None:
        """Record the metrics (and the access log line) and hand the connection back."""
        if self.done:
            return
        self.done = True
        self._drop_upstream()
        if not self.req_complete:
            self.close_after = True
        state = self.state
        listener = self.listener
        if listener.kind == "inbound":
            mtls = self.down_principal is not None
            source = self.down_peer
            destination = state.own_mtls if mtls else state.own_plain
            security = "mutual_tls" if mtls else "none"
        else:
            source = state.own_mtls if self.up_mtls else state.own_plain
            destination = self.up_peer
            security = "unknown"
        duration = int((time.monotonic() - self.start) * 1000)
        state.telemetry.http(
            listener.reporter, source, destination, self.service, self.status, self.flags, security
        ).observe(duration, self.req_bytes, self.resp_bytes)
        if state.access_log is not None:
            state.access_log.record(self, duration)
        self.down.exchange_finished(self)

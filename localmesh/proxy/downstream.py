"""A client's connection to one of the proxy's listeners: HTTP/1.x parsing with httptools,
keep-alive, pipelining (answered in order), flow control, protocol errors, CONNECT tunnels.

Envoy behaviours imitated (envoy http1 `codec_impl.cc`, `conn_manager_impl.cc`):
- a request that cannot be parsed is answered by a local reply whose body is the status text
  ("Bad Request"), with `connection: close`, response flag "DPE", and the connection is closed;
- an HTTP/1.0 request on a listener that does not accept HTTP/1.0 gets 426 "Upgrade Required", and
  so does any other version but HTTP/1.1 (0.9, 2.0, 9.9: `checkProtocolVersion`); a transfer coding
  other than `chunked` alone gets 501 "Not Implemented" (tests/conformance/test_framing.py checks
  both against Envoy);
- reading pauses while a pipelined request waits for the one before it;
- a connection with no request for the idle timeout is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast

import httptools

from localmesh.proxy.exchange import Exchange
from localmesh.proxy.http1 import REASONS
from localmesh.proxy.state import Listener, ProxyState
from localmesh.proxy.tunnel import Tunnel

# Envoy's defaults (envoy http_connection_manager.proto max_request_headers_kb: 60;
# core protocol.proto HttpProtocolOptions.max_headers_count: 100): 431 beyond either.
MAX_HEAD_BYTES = 60 * 1024
MAX_HEADERS = 100


def refusal_code(err: httptools.HttpParserError) -> int:
    """Envoy's status for a request llhttp cannot parse: 501 for a bad Transfer-Encoding, 426 for a
    version it does not know, else 400 (envoy http1 codec_impl.cc: invalid_transfer_encoding is
    NotImplemented; checkProtocolVersion answers UpgradeRequired)."""
    return _REFUSALS.get(str(err), 400)


# llhttp's messages (httptools) for the requests Envoy does not answer with 400.
_REFUSALS = {
    "Invalid `Transfer-Encoding` header value": 501,  # "chunked, chunked", "chunked, gzip"
    "Request has invalid `Transfer-Encoding`": 501,  # "identity", "xchunked"
    "Invalid HTTP version": 426,  # HTTP/9.9
}


class Downstream(asyncio.Protocol):
    """One accepted client connection."""

    # Set by connection_made, which asyncio calls before any other method.
    transport: asyncio.Transport

    def __init__(self, state: ProxyState, listener: Listener) -> None:
        self.state = state
        self.listener = listener
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # the exchange whose response is being produced
        self.parsing: Exchange | None = None  # the exchange whose request is being parsed
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting for `current`
        self.paused: set[str] = set()
        self.closing = False  # no further request will be served: answers carry connection: close
        self.broken = False  # the request stream cannot be parsed any further
        self.closed = False
        self.error: Exchange | None = None  # a malformed pipelined request, answered in turn
        self.tunnel: Tunnel | None = None
        self.last_active = time.monotonic()
        self.peer_ip = b"-"
        # Bytes of the reads that ended inside a request head, from the read after the one where
        # the head began (-1: it began in this read): a head that never ends is refused once it
        # passes MAX_HEAD_BYTES, so neither memory nor parsing time grows with it.
        self.head_bytes = 0
        self.corked = False
        self.out: list[bytes] = []

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        self.state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.tunnel is not None:
            self.tunnel.from_downstream(data)
            return
        if self.closing or self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserError as err:
            self.protocol_error(refusal_code(err), self.parsing)
        parsing = self.parsing
        if parsing is not None and not parsing.headers_done and not self.broken:
            # The read where a head begins also holds what came before it (pipelined requests,
            # a body's end), so it is not counted: a head that never ends is cut off within one
            # read (256 KiB) past the limit. A head that ends is measured exactly when it does.
            if self.head_bytes < 0:
                self.head_bytes = 0
            else:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.protocol_error(431, parsing)
        current = self.current
        # Routing happens after the whole buffer is parsed, so a small body that came with the
        # headers is already complete when the request is answered.
        if current is not None and current.headers_done and not current.started:
            current.begin()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.downstream_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            return
        current = self.current
        self.queue.clear()
        if current is not None and current.started and not current.done:
            current.downstream_lost()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_upstream(True)
        elif self.current is not None and self.current.upstream is not None:
            self.current.upstream.pause_reading(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_upstream(False)
        elif self.current is not None and self.current.upstream is not None:
            self.current.upstream.pause_reading(False)

    # --- httptools callbacks ------------------------------------------------------------------
    # httptools calls on_message_begin before the others of a message, so `parsing` is set in them
    # (the casts tell the type checker, at no cost beyond a call).

    def on_message_begin(self) -> None:
        self.head_bytes = -1
        exchange = Exchange(self, self.state, self.listener)
        self.parsing = exchange
        if self.current is None:
            self.current = exchange
        else:
            self.queue.append(exchange)
            self.pause("pipeline")

    def on_url(self, url: bytes) -> None:
        cast(Exchange, self.parsing).url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        cast(Exchange, self.parsing).headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        exchange = cast(Exchange, self.parsing)
        exchange.headers_complete(self.parser)
        if exchange.req_bytes > MAX_HEAD_BYTES or len(exchange.headers) > MAX_HEADERS:
            exchange.refuse = 431

    def on_body(self, body: bytes) -> None:
        cast(Exchange, self.parsing).request_body(body)

    def on_chunk_complete(self) -> None:
        cast(Exchange, self.parsing).chunk_complete()

    def on_message_complete(self) -> None:
        exchange, self.parsing = cast(Exchange, self.parsing), None
        exchange.request_complete()

    # --- used by exchanges --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.corked:
            self.out.append(data)
        elif not self.closed:
            self.transport.write(data)

    def cork(self) -> None:
        """Collect writes until uncork(): a response head and body go out in one send."""
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        if self.out:
            out, self.out = self.out, []
            if not self.closed:
                self.transport.write(b"".join(out))

    def close_transport(self) -> None:
        """Close after what is written (and still corked) has been sent."""
        self.uncork()
        if not self.closed:
            self.transport.close()

    def pause(self, reason: str) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def abort(self) -> None:
        """End the connection after what is already written (a reset, as far as the client can tell)."""
        self.closing = True
        self.close_transport()

    def exchange_finished(self, exchange: Exchange) -> None:
        self.last_active = time.monotonic()
        if self.closed or exchange is not self.current:
            return
        if exchange.close_after:
            self.closing = True
            self.queue.clear()
            self.close_transport()
            return
        self.current = self.queue.popleft() if self.queue else None
        if not self.queue:
            self.resume("pipeline")
        current = self.current
        if current is not None:
            # The next pipelined request starts from the event loop, not from inside this call:
            # requests answered locally would otherwise nest one call per request, and a few
            # hundred pipelined in one read would exhaust the stack.
            asyncio.get_running_loop().call_soon(self._start, current)

    def _start(self, exchange: Exchange) -> None:
        if self.closed or exchange is not self.current or exchange.started:
            return
        if exchange is self.error:
            self._answer_error(exchange)
        elif exchange.headers_done:
            exchange.begin()

    def protocol_error(self, code: int, exchange: Exchange | None) -> None:
        """A request that breaks HTTP/1.1 (or HTTP/1.0 where refused): local reply, then close.

        Requests before it on the connection are answered first (in order), then this one.
        """
        self.broken = True
        self.pause("error")
        if exchange is None:
            exchange = Exchange(self, self.state, self.listener)
            if self.current is None:
                self.current = exchange
            else:
                self.queue.append(exchange)
        exchange.status = code
        if exchange is self.current:
            self._answer_error(exchange)
        else:
            self.error = exchange

    def _answer_error(self, exchange: Exchange) -> None:
        self.closing = True
        exchange.started = True
        exchange.local_reply(exchange.status, REASONS[exchange.status], "DPE", close=True)

    def check_timeouts(self, now: float) -> None:
        """Idle, request and route timeouts (called by the proxy's periodic sweep)."""
        if self.tunnel is not None or self.closed:
            return
        current = self.current
        if current is None:
            idle = self.state.timeouts.idle
            if idle and now - self.last_active > idle:
                self.closing = True
                self.close_transport()
        elif not current.done:
            current.check_timeouts(now)

    # --- upgrades -----------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        exchange = self.queue[-1] if self.queue else self.current
        if exchange is None or exchange is not self.current:
            # An upgrade pipelined behind another request is not supported.
            self.protocol_error(400, exchange)
            return
        self.parsing = None
        if not exchange.req_complete:
            exchange.request_complete()
        if exchange.method == b"CONNECT" and self.listener.kind == "outbound":
            # The sidecar's TCP path (HTTPS egress through HTTPS_PROXY).
            self.current = None
            self.parsing = None
            self.tunnel = Tunnel(self, exchange.url, rest)
            self.tunnel.start()
            return
        if exchange.method == b"CONNECT":
            # No route matches a CONNECT on a gateway or inbound listener.
            exchange.started = True
            exchange.local_reply(404, b"", "NR", close=True)
            return
        # Other upgrades (websocket) are not supported: forward as a plain request without the
        # Upgrade headers (they are hop-by-hop) on a fresh parser.
        self.parser = httptools.HttpRequestParser(self)
        exchange.begin()
        if rest and not self.closing:
            self.data_received(rest)

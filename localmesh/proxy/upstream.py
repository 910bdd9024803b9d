"""Upstream HTTP/1.1 connections and their pool (Envoy's per-cluster HTTP/1 connection pool).

A connection serves one request at a time (no pipelining upstream, as Envoy's HTTP/1 pool), goes
back to its address's idle list when the response is complete and both sides allow keep-alive,
and leaves the pool as soon as the upstream closes it. Idle lists are bounded; a connection past
the bound is closed instead of kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, cast, overload

import httptools

from localmesh.proxy.interfaces import DownstreamConnection

Address = tuple[str, int]
# The protocol a caller of Pool.connect builds for its connection (UpstreamConnection by default).
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange that owns it."""

    down: DownstreamConnection  # corked while a chunk of the response is parsed

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self, keep_alive: bool) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, protocol_error: bool) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; parses responses with httptools and hands them to its owner."""

    def __init__(self, pool: Pool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.owner: ResponseSink | None = None
        self.closed = False
        self.received_any = False
        self.reused = False
        self.head_request = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._informational = False
        self._delimited = True
        self._complete = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        owner = self.owner
        down = owner.down if owner is not None else None
        if down is not None:
            down.last_active = time.monotonic()  # upstream bytes keep the stream alive (stream idle)
            down.cork()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(protocol_error=True)
        finally:
            if down is not None:
                down.uncork()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        owner = self.owner
        if owner is None:
            return
        if not self._delimited and not self._complete and self._headers_done:
            # A response without content-length or chunked framing ends when the connection does.
            self._complete = True
            self.owner = None
            owner.response_complete(False)
            return
        self.owner = None
        owner.upstream_lost(self, False)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(False)

    # --- used by the exchange -----------------------------------------------------------------

    def begin(self, owner: ResponseSink, head_request: bool) -> None:
        """Give this connection to an exchange for one request/response."""
        self.owner = owner
        self.head_request = head_request
        self.received_any = False
        self._complete = False
        self._headers_done = False
        self._delimited = True

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Drop the connection (e.g. the response was abandoned); the owner is not told."""
        self.owner = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def pause_reading(self, paused: bool) -> None:
        if self.transport is not None and not self.closed:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _fail(self, protocol_error: bool) -> None:
        owner, self.owner = self.owner, None
        self.close()
        if owner is not None:
            owner.upstream_lost(self, protocol_error)

    # --- httptools callbacks ------------------------------------------------------------------

    _headers_done = False

    def on_message_begin(self) -> None:
        self._headers = []
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200:
            # 1xx (e.g. 100 Continue) are not forwarded: the proxy answers Expect itself.
            self._informational = True
            return
        self._headers_done = True
        headers = self._headers
        self._delimited = (
            self.head_request
            or status in (204, 304)
            or any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
        )
        owner = self.owner
        if owner is None:
            return
        keep_alive = parser.should_keep_alive()
        owner.response_head(status, headers, keep_alive)
        if self.head_request:
            # llhttp cannot be told the request was HEAD: finish here and start a fresh parser,
            # since a response to HEAD has no body whatever its content-length says.
            self._parser = httptools.HttpResponseParser(self)
            self._finish(keep_alive)

    def on_body(self, body: bytes) -> None:
        if self._informational or self.owner is None:
            return
        self.owner.response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:
            return
        self._finish(self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.response_complete(keep_alive)


OFFLINE_HINT = (
    "localmesh runs offline: only addresses in the stack's address book (127.0.0.1) are reachable; "
    "start the stack with LOCALMESH_ONLINE=1 to let the proxies resolve and reach real hosts"
)


def check_offline(host: str) -> None:
    """Offline, refuse anything but a loopback address before any lookup or packet leaves the machine.

    Raises socket.gaierror, so callers treat it as the failed DNS lookup it stands for.
    """
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: {OFFLINE_HINT}")


class Pool:
    """Idle upstream connections per address, bounded, reused most-recent first."""

    def __init__(
        self, max_idle_per_address: int = 64, connect_timeout: float = 10.0, offline: bool = False
    ) -> None:
        self.max_idle = max_idle_per_address
        self.connect_timeout = connect_timeout
        self.offline = offline
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self.opened = 0

    def take(self, address: Address) -> UpstreamConnection | None:
        """An idle open connection to address, or None."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def give(self, conn: UpstreamConnection) -> None:
        """Return a connection whose response is complete and which may be reused."""
        if conn.closed:
            return
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) >= self.max_idle:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    @overload
    async def connect(self, address: Address) -> UpstreamConnection: ...
    @overload
    async def connect(self, address: Address, factory: Callable[[], _P]) -> _P: ...

    async def connect(
        self, address: Address, factory: Callable[[], asyncio.BaseProtocol] | None = None
    ) -> asyncio.BaseProtocol:
        """A new connection (raises OSError, socket.gaierror or TimeoutError on failure)."""
        if self.offline:
            check_offline(address[0])
        loop = asyncio.get_running_loop()
        make = factory or (lambda: UpstreamConnection(self, address))
        _, conn = await asyncio.wait_for(
            loop.create_connection(make, address[0], address[1]), self.connect_timeout
        )
        self.opened += 1
        return conn

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()

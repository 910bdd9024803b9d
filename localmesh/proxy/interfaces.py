"""What one part of the data plane needs of another, as Protocols, so imports point one way: the
exchange and the tunnel talk to their downstream connection, and the proxy state holds a request
log, without importing the modules that implement them (as upstream.ResponseSink does for the
upstream side)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # for the type checker only: at run time these modules import this one
    from localmesh.proxy.exchange import Exchange
    from localmesh.proxy.state import ProxyState


class DownstreamConnection(Protocol):
    """The client connection (downstream.Downstream) as an exchange or a tunnel drives it."""

    state: ProxyState
    transport: asyncio.Transport
    closed: bool
    closing: bool
    last_active: float
    peer_ip: bytes

    def write(self, data: bytes) -> None: ...
    def pause(self, reason: str) -> None: ...
    def resume(self, reason: str) -> None: ...
    def abort(self) -> None: ...
    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def exchange_finished(self, exchange: Exchange) -> None: ...
    def protocol_error(self, code: int, exchange: Exchange | None) -> None: ...
    def check_timeouts(self, now: float) -> None: ...


class RequestLog(Protocol):
    """Where finished requests are recorded (accesslog.AccessLog)."""

    def record(self, ex: Exchange, duration: int) -> None: ...
    def flush(self) -> None: ...

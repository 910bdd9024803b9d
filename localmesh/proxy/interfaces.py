"""What one part of the data plane needs of another, as Protocols, so imports point one way: the
exchange and the tunnel talk to their downstream connection, and the proxy state holds a request
log, without importing the modules that implement them (as upstream.ResponseSink does for the
upstream side)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class DownstreamConnection(Protocol):
    """The client connection (downstream.Downstream) as an exchange or a tunnel drives it."""

    transport: asyncio.Transport | None
    closed: bool
    closing: bool
    last_active: float
    peer_ip: bytes

    def write(self, data: bytes) -> None: ...
    def pause(self, reason: str) -> None: ...
    def resume(self, reason: str) -> None: ...
    def abort(self) -> None: ...
    def exchange_finished(self, exchange: Any) -> None: ...
    def protocol_error(self, code: int, exchange: Any) -> None: ...


class RequestLog(Protocol):
    """Where finished requests are recorded (accesslog.AccessLog)."""

    def record(self, ex: Any, duration: int) -> None: ...
    def flush(self) -> None: ...

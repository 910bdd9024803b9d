"""The sidecar's TCP path: a CONNECT tunnel from the app's HTTPS_PROXY use to the destination.

In Istio the app's TLS connection is captured by iptables and handled by Envoy's tcp_proxy: the
app's own connect always succeeds (it reaches the local Envoy), then Envoy either relays bytes to
the original destination (PassthroughCluster or a ServiceEntry's cluster) or, for
BlackHoleCluster, closes the connection at once, which the app sees as a failed TLS handshake
(curl exit code 35). Here the app asks with CONNECT, so the proxy answers 200 first (its "accept")
and then behaves as tcp_proxy does.

Metrics (istio/proxy istio_stats.cc, reportHelper for a network filter): `request_protocol="tcp"`,
no response_code; an external peer never completes the TCP metadata exchange, so the connection
is only reported when it closes: opened, closed and byte counters together. response_flags:
"UH" for BlackHoleCluster (no host), "UF" when the upstream connect fails, "-" otherwise.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

from localmesh.mesh.names import PASSTHROUGH
from localmesh.pilot.routes import Decision, decide_outbound
from localmesh.proxy import http1
from localmesh.proxy.interfaces import DownstreamConnection
from localmesh.proxy.state import ProxyState


def established() -> bytes:
    """The answer that opens a tunnel, as Envoy's HTTP connection manager writes it for CONNECT (a
    200 with its date and server headers; checked by tests/conformance/test_http_answers.py)."""
    return b"HTTP/1.1 200 OK\r\ndate: %s\r\nserver: envoy\r\n\r\n" % http1.DATE.get()


class TunnelClient(DownstreamConnection, Protocol):
    """The downstream connection as a tunnel drives it: it also gives the proxy's state."""

    state: ProxyState


class _Upstream(asyncio.Protocol):
    # Set by connection_made, which asyncio calls before Pool.connect returns this connection.
    transport: asyncio.Transport

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's transport

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_upstream(data)

    def eof_received(self) -> bool:
        self.tunnel.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        self.tunnel.down.pause("tunnel")

    def resume_writing(self) -> None:
        self.tunnel.down.resume("tunnel")


class Tunnel:
    """Relays bytes both ways between the downstream connection and the decided upstream."""

    def __init__(self, down: TunnelClient, target: bytes, initial: bytes) -> None:
        self.down = down
        self.state = down.state
        self.target = target
        self.pending: list[bytes] = [initial] if initial else []
        self.upstream: _Upstream | None = None
        self.decision: Decision | None = None  # set by start() once the target is valid
        self.flags = "-"
        self.sent = 0
        self.received = len(initial)
        self.closed = False
        self.eofs = 0

    def start(self) -> None:
        state = self.state
        try:
            # CONNECT takes the authority-form `host:port` only (RFC 9112 3.2.3): no path, no
            # default port (port 0 is refused by split_authority).
            if b"/" in self.target:
                raise ValueError("not authority-form")
            host, port = http1.split_authority(self.target, default_port=0)
        except ValueError:
            self.down.write(http1.local_reply(400, b"Bad Request", b"envoy", close=True))
            self.closed = True
            self.down.abort()
            return
        decision = self.decision = decide_outbound(state.table, host, port, "tcp")
        self.down.write(established())
        if decision.upstream is None:
            # BlackHoleCluster: tcp_proxy finds no host and closes the connection right away.
            self.flags = "UH"
            self.close()
            return
        asyncio.get_running_loop().create_task(self._connect(decision.upstream, decision.cluster))

    async def _connect(self, address: tuple[str, int], cluster: str) -> None:
        try:
            upstream = await self.state.pool.connect(address, lambda: _Upstream(self))
        except socket.gaierror:
            # No address: a DNS cluster without endpoints (UH); for PassthroughCluster the lookup
            # stands for the app's own, and failing it is a failed connection (UF).
            self.flags = "UF" if cluster == PASSTHROUGH else "UH"
            self.close()
            return
        except (TimeoutError, OSError):
            self.flags = "UF"
            self.close()
            return
        if self.closed:
            upstream.transport.close()
            return
        self.upstream = upstream
        if self.pending:
            upstream.transport.write(b"".join(self.pending))
            self.pending = []
        if self.eofs & 1 and upstream.transport.can_write_eof():
            upstream.transport.write_eof()

    def from_downstream(self, data: bytes) -> None:
        self.received += len(data)
        if self.upstream is not None:
            self.upstream.transport.write(data)
        elif not self.closed:
            self.pending.append(data)

    def from_upstream(self, data: bytes) -> None:
        self.sent += len(data)
        self.down.write(data)

    def downstream_eof(self) -> None:
        self.eofs |= 1
        if self.upstream is not None and self.upstream.transport.can_write_eof():
            self.upstream.transport.write_eof()
        self._maybe_done()

    def upstream_eof(self) -> None:
        self.eofs |= 2
        transport = self.down.transport
        if not self.down.closed and transport.can_write_eof():
            transport.write_eof()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.eofs == 3:
            self.close()

    def pause_upstream(self, paused: bool) -> None:
        if self.upstream is not None:
            if paused:
                self.upstream.transport.pause_reading()
            else:
                self.upstream.transport.resume_reading()

    def close(self) -> None:
        """Close both sides (once) and report the connection."""
        if self.closed:
            return
        self.closed = True
        if self.upstream is not None:
            self.upstream.transport.close()
        self.down.abort()
        if self.decision is None:
            return
        state = self.state
        series = state.telemetry.tcp(
            "source", state.own_plain, self.decision.peer, self.decision.service, self.flags, "unknown"
        )
        series.opened += 1
        series.closed += 1
        series.sent += self.sent
        series.received += self.received

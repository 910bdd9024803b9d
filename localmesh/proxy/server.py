"""The local mesh's data plane: one proxy program playing Istio's ingress gateway or a sidecar.

    python -m localmesh.proxy --role gateway --routes gw.json --admin 127.0.0.1:15000 \\
        --listen 127.0.0.1:8000
    python -m localmesh.proxy --role sidecar --routes idgen.json --admin 127.0.0.1:15090 \\
        --inbound 127.0.0.1:15006 --app 127.0.0.1:18080 --outbound 127.0.0.1:15001

asyncio + uvloop + httptools. The pieces: downstream (client connections and HTTP/1.x parsing),
exchange (one request: routing, forwarding, retries, local replies, metrics), upstream (pooled
upstream connections), tunnel (CONNECT, the sidecar's TCP path), peer_metadata (Istio's metadata
exchange), telemetry (Istio's metrics), admin (stats, readiness, config dump, route push), state
(the route table, swapped atomically on push).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localmesh.proxy.accesslog import AccessLog
from localmesh.proxy.admin import Admin
from localmesh.proxy.downstream import Downstream
from localmesh.proxy.state import Listener, ProxyState, Timeouts
from localmesh.proxy.telemetry import DEFAULT_MAX_PASSTHROUGH_HOSTS, MAX_HOSTS_ENV, max_passthrough_hosts
from localmesh.proxy.upstream import Address

GATEWAY = Listener("gateway", b"istio-envoy", http10=False)
INBOUND = Listener("inbound", b"istio-envoy", http10=False)
OUTBOUND = Listener("outbound", b"envoy", http10=False)


class ListenError(OSError):
    """A listener could not be opened; the message names the address and the flag."""


@dataclass(frozen=True)
class Endpoint:
    """Where a listener binds, and which command-line flag asked for it (for error messages)."""

    flag: str
    host: str
    port: int


def parse_address(text: str) -> Address:
    """`127.0.0.1:8000` -> ("127.0.0.1", 8000)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class ProxyServer:
    """The listeners, the admin listener and the timeout sweep of one proxy, on the running loop."""

    def __init__(
        self,
        state: ProxyState,
        listeners: Sequence[tuple[Listener, Endpoint]],
        admin: Endpoint,
        admin_token: bytes | None = None,
    ) -> None:
        self.state = state
        self.listeners = listeners
        self.admin = admin
        self.admin_token = admin_token
        self.servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind every listener (ListenError names the one that failed) and start serving."""
        loop = asyncio.get_running_loop()
        state = self.state
        try:
            for listener, endpoint in self.listeners:
                server = await self._bind(loop, functools.partial(Downstream, state, listener), endpoint)
                self.servers.append(server)
            admin = await self._bind(loop, lambda: Admin(state, self.admin_token), self.admin)
            self.servers.append(admin)
        except ListenError:
            await self.stop()
            raise
        state.listening = True
        self._sweeper = loop.create_task(self._sweep())

    @staticmethod
    async def _bind(
        loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol], endpoint: Endpoint
    ) -> asyncio.Server:
        try:
            return await loop.create_server(
                factory, endpoint.host, endpoint.port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {endpoint.host}:{endpoint.port} (given by {endpoint.flag}): "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from exc

    async def _sweep(self) -> None:
        """Check idle, request and route timeouts of every connection a few times a second."""
        timeouts = self.state.timeouts
        enabled = [
            t
            for t in (timeouts.idle, timeouts.request, timeouts.route, timeouts.headers, timeouts.stream_idle)
            if t
        ]
        interval = min(1.0, max(0.05, min(enabled) / 5)) if enabled else 1.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.state.connections):
                conn.check_timeouts(now)

    async def stop(self) -> None:
        """Stop accepting, close every connection, wait for the listeners to go away."""
        self.state.listening = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for server in self.servers:
            server.close()
        for conn in list(self.state.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.state.pool.close_all()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self.servers = []
        if self.state.access_log is not None:
            self.state.access_log.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localmesh.proxy",
        description="Istio's ingress gateway or sidecar on 127.0.0.1, with Istio's standard metrics.",
    )
    parser.add_argument("--role", required=True, choices=("gateway", "sidecar"))
    parser.add_argument("--routes", required=True, type=Path, help="route table JSON (localmesh.pilot)")
    parser.add_argument(
        "--admin",
        required=True,
        type=parse_address,
        metavar="HOST:PORT",
        help="admin listener: /stats/prometheus, /ready, /config_dump, POST /routes",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="PATH",
        help="the credential POST /routes must carry (Authorization: Bearer); without it, no push is taken",
    )
    parser.add_argument("--listen", type=parse_address, metavar="HOST:PORT", help="gateway: listener")
    parser.add_argument(
        "--inbound",
        type=parse_address,
        metavar="HOST:PORT",
        help="sidecar: inbound listener (in front of the app)",
    )
    parser.add_argument("--app", type=parse_address, metavar="HOST:PORT", help="sidecar: the app's address")
    parser.add_argument(
        "--outbound",
        type=parse_address,
        metavar="HOST:PORT",
        help="sidecar: outbound listener (the app's HTTP_PROXY / HTTPS_PROXY)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="close a client connection idle this long (Envoy/Istio default 3600; 0: never)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="408 when a request is not fully received in S seconds (Envoy default 0: off)",
    )
    parser.add_argument(
        "--request-headers-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="408 when a request's headers are not complete S seconds after its first byte "
        "(Envoy default 0: off; 60 here; 0: off)",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="408 (504 once the request is complete) when a request sees no byte either way for S "
        "seconds (Envoy default 300; 0: off)",
    )
    parser.add_argument(
        "--route-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="504 UT when the upstream has not answered S seconds after the request (Istio default 0: off)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="upstream connect timeout (Istio default 10)",
    )
    parser.add_argument(
        "--http10",
        action="store_true",
        help="accept HTTP/1.0 (Istio's PILOT_HTTP10 / ISTIO_META_HTTP10); without it, gateway and "
        "sidecar answer HTTP/1.0 with 426, as Istio's proxies do",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="connect only to loopback addresses: hosts outside the route table's address book fail "
        "as a failed DNS lookup, and nothing leaves the machine (the local stack's default)",
    )
    parser.add_argument(
        "--access-log",
        metavar="PATH",
        help="write an access log line per request to PATH ('-': stdout), in Istio's default text "
        "format; off by default (the local stack turns it on, as Istio's demo profile does)",
    )
    parser.add_argument(
        "--max-passthrough-hosts",
        type=int,
        metavar="N",
        help="distinct PassthroughCluster/BlackHoleCluster destination_service values before new hosts "
        f'are reported as "overflow" (0: no cap; default ${MAX_HOSTS_ENV} or '
        f"{DEFAULT_MAX_PASSTHROUGH_HOSTS}); Istio has no such cap",
    )
    return parser


def _listeners(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[Listener, Endpoint]]:
    if args.role == "gateway":
        if args.listen is None:
            parser.error("--role gateway needs --listen HOST:PORT")
        return [(Listener("gateway", GATEWAY.server, http10=args.http10), Endpoint("--listen", *args.listen))]
    missing = [flag for flag in ("inbound", "app", "outbound") if getattr(args, flag) is None]
    if missing:
        parser.error("--role sidecar needs " + ", ".join(f"--{flag} HOST:PORT" for flag in missing))
    inbound = Listener("inbound", INBOUND.server, http10=args.http10)
    outbound = Listener("outbound", OUTBOUND.server, http10=args.http10)
    return [
        (inbound, Endpoint("--inbound", *args.inbound)),
        (outbound, Endpoint("--outbound", *args.outbound)),
    ]


async def _serve(server: ProxyServer) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except ListenError as exc:
        print(f"localmesh.proxy: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(f"{listener.kind} {e.host}:{e.port}" for listener, e in server.listeners)
    print(
        f"localmesh.proxy ({server.state.role}): {names}; admin {server.admin.host}:{server.admin.port}",
        flush=True,
    )
    await stop.wait()
    await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    import uvloop

    from localmesh.pilot import routes

    parser = build_parser()
    args = parser.parse_args(argv)
    listeners = _listeners(args, parser)
    try:
        table = routes.RouteTable.from_json(args.routes.read_text())
    except OSError as exc:
        print(f"localmesh.proxy: cannot read --routes {args.routes}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"localmesh.proxy: --routes {args.routes} is not a valid route table: {exc}", file=sys.stderr)
        return 2
    admin_token = None
    if args.admin_token_file is not None:
        try:
            admin_token = args.admin_token_file.read_bytes().strip()
        except OSError as exc:
            print(
                f"localmesh.proxy: cannot read --admin-token-file {args.admin_token_file}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        if not admin_token:
            print(f"localmesh.proxy: --admin-token-file {args.admin_token_file} is empty", file=sys.stderr)
            return 2
    cap = args.max_passthrough_hosts
    if cap is not None and cap < 0:
        parser.error("--max-passthrough-hosts must be 0 (no cap) or more")
    if cap is None:
        try:
            cap = max_passthrough_hosts()
        except ValueError as exc:
            print(f"localmesh.proxy: {exc}", file=sys.stderr)
            return 2
    access_log = None
    if args.access_log == "-":
        access_log = AccessLog(sys.stdout)
    elif args.access_log:
        access_log = AccessLog(open(args.access_log, "a", encoding="utf-8"))  # noqa: SIM115 (open for the process)
    state = ProxyState(
        args.role,
        table,
        app=args.app,
        timeouts=Timeouts(
            idle=args.idle_timeout,
            request=args.request_timeout,
            headers=args.request_headers_timeout,
            stream_idle=args.stream_idle_timeout,
            route=args.route_timeout,
            connect=args.connect_timeout,
        ),
        access_log=access_log,
        offline=args.offline,
        max_passthrough_hosts=cap,
    )
    server = ProxyServer(state, listeners, Endpoint("--admin", *args.admin), admin_token)
    return uvloop.run(_serve(server))

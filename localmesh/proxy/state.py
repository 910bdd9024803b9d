"""What one proxy process knows: its role, its current route table and identity, and shared parts
(metrics, upstream pool, peer cache, timeouts). The route table is swapped atomically: a request
reads `state.table` once, when it is routed, so in-flight requests finish on the table they
started with and the next request sees the new one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from localmesh.mesh.names import Service, Workload
from localmesh.pilot.routes import RouteTable, trace_operation
from localmesh.proxy.interfaces import DownstreamConnection, RequestLog
from localmesh.proxy.peer_metadata import Identity, PeerCache
from localmesh.proxy.telemetry import DEFAULT_MAX_PASSTHROUGH_HOSTS, Telemetry
from localmesh.proxy.upstream import Address, Pool

UNKNOWN_SERVICE = Service(host="unknown", name="unknown", namespace="unknown")


@dataclass
class Timeouts:
    """Seconds; 0 disables. Defaults are Envoy's and Istio's own defaults."""

    idle: float = 3600.0  # HTTP connection idle_timeout: Istio/Envoy default 1 h
    request: float = 0.0  # HCM request_timeout: disabled by default in Envoy
    # HCM request_headers_timeout: off in Envoy; 60 s here so a half-sent head cannot hold a
    # connection for the hour of the idle timeout (stricter than Envoy: docs/proxy-limits.md).
    headers: float = 60.0
    stream_idle: float = 300.0  # HCM stream_idle_timeout: Envoy's default 5 min
    route: float = 0.0  # route timeout: Istio disables it unless a VirtualService sets one
    connect: float = 10.0  # cluster connect_timeout: Istio's default 10 s


@dataclass(frozen=True)
class Listener:
    """One listening socket's behaviour.

    kind: "gateway", "inbound" or "outbound". server: the `server` header Envoy writes (Istio uses
    "istio-envoy" for gateways and inbound listeners and Envoy's default "envoy" for sidecar outbound:
    istio/istio pilot/pkg/networking/util GetProxyHeadersFromProxyConfig). http10: accept HTTP/1.0;
    Istio's gateways and sidecars answer it 426 unless PILOT_HTTP10 or the proxy's ISTIO_META_HTTP10
    is set (istio/istio pilot/pkg/networking/core gateway.go buildGatewayConnectionManager,
    listener_builder.go and listener_inbound.go: http_protocol_options.accept_http_10).
    """

    kind: str
    server: bytes
    http10: bool

    @property
    def reporter(self) -> str:
        # A server sidecar reports "destination"; a client sidecar and a gateway report "source".
        return "destination" if self.kind == "inbound" else "source"

    @property
    def attempt_count(self) -> bool:
        # x-envoy-attempt-count goes upstream from the virtual hosts that include it: the gateway's
        # and the sidecar's outbound ones, not the inbound one (istio/istio
        # pilot/pkg/networking/core/httproute.go IncludeRequestAttemptCount).
        return self.kind != "inbound"


def inbound_service(table: RouteTable) -> Service:
    """The Service in front of the sidecar's workload: its inbound cluster's `istio.services` entry.

    The route table lists the mesh Services; the one in the workload's namespace named after its
    app (or canonical service, or workload) is taken, as a Service selecting `app: <name>` would be.
    """
    proxy: Workload = table.proxy
    candidates = [s for s in table.mesh_services if s.namespace == proxy.namespace]
    for wanted in (proxy.app, proxy.canonical_service, proxy.name):
        for svc in candidates:
            if svc.name == wanted:
                return Service(host=svc.host, name=svc.name, namespace=svc.namespace)
    if candidates:
        svc = candidates[0]
        return Service(host=svc.host, name=svc.name, namespace=svc.namespace)
    name = proxy.canonical_service if proxy.canonical_service != "unknown" else proxy.app
    return Service(host=f"{name}.{proxy.namespace}.svc.cluster.local", name=name, namespace=proxy.namespace)


def inbound_operation(table: RouteTable, service: Service) -> bytes:
    """The inbound route's decorator operation, host:port/* of the Service in front of the workload
    (istio/istio pilot/pkg/networking/core/httproute.go buildSidecarInboundHTTPRouteConfig); b"" when
    no mesh Service names it."""
    port = next((s.port for s in table.mesh_services if s.host == service.host), None)
    return trace_operation(service.host, port).encode() if port is not None else b""


class ProxyState:
    """The running proxy's shared state (one per process)."""

    def __init__(
        self,
        role: str,
        table: RouteTable,
        app: Address | None = None,
        timeouts: Timeouts | None = None,
        access_log: RequestLog | None = None,
        offline: bool = False,
        max_passthrough_hosts: int = DEFAULT_MAX_PASSTHROUGH_HOSTS,
    ) -> None:
        self.role = role
        self.kind = "router" if role == "gateway" else "sidecar"
        self.app = app
        self.timeouts = timeouts or Timeouts()
        self.access_log = access_log
        self.telemetry = Telemetry(max_passthrough_hosts)
        self.pool = Pool(connect_timeout=self.timeouts.connect, offline=offline)
        self.peers = PeerCache()
        self.connections: set[DownstreamConnection] = set()
        self.listening = False
        self.table: RouteTable
        self.swap(table)

    def swap(self, table: RouteTable) -> None:
        """Install a new route table (one reference assignment: atomic for the event loop)."""
        proxy: Workload = table.proxy
        # The identity pieces are derived before the table is published, so a request never sees
        # a new table with an old identity.
        self.identity = Identity.of(proxy, self.kind)
        self.own_mtls = proxy
        self.own_plain = dataclasses.replace(proxy, principal="unknown")
        self.service = inbound_service(table) if self.role == "sidecar" else UNKNOWN_SERVICE
        self.inbound_operation = inbound_operation(table, self.service)
        self.table = table

    @property
    def ready(self) -> bool:
        return self.listening

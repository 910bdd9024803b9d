"""The control plane's output: each proxy's route table, and the pure decisions made from it.

No I/O here. `build_tables` turns validated config (localmesh.mesh) into one RouteTable per proxy;
`decide_outbound` and `decide_ingress` are what a proxy asks for every request. Tables travel to the
running proxies as JSON (`to_json`/`from_json`), the way istiod pushes xDS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from localmesh.mesh.load import ConfigError
from localmesh.mesh.model import MeshState
from localmesh.mesh.names import (
    ALLOW_ANY,
    BLACKHOLE,
    CLUSTER_ID,
    GATEWAY_LABELS,
    GATEWAY_NAMESPACE,
    INGRESS_GATEWAY,
    PASSTHROUGH,
    REGISTRY_ONLY,
    UNKNOWN,
    Service,
    Workload,
    canonical_service,
    resolve_host,
    spiffe_principal,
)
from localmesh.pilot.codec import RouteTableError, decode, encode


@dataclass(frozen=True)
class Decision:
    """Where one outbound (or ingress) request goes, and how the metrics name its destination.

    cluster: Envoy's cluster name: "outbound|80||httpbin.org", PASSTHROUGH or BLACKHOLE.
    upstream: (ip, port) to connect to; None means BlackHoleCluster (HTTP: direct 502; TCP: close).
    protocol: "http" or "tcp" (TCP for CONNECT tunnels and non-HTTP ServiceEntry ports).
    operation: the HTTP route's decorator operation, which Envoy sends upstream as
    x-envoy-decorator-operation; "" for routes without a decorator (allow_any, block_all) and TCP.
    peer: the destination workload the upstream endpoint's metadata names, which a client-side reporter
    uses when the peer sends no metadata of its own (UNKNOWN: none, as for PassthroughCluster).
    """

    cluster: str
    service: Service
    upstream: tuple[str, int] | None
    protocol: str
    operation: str = ""
    peer: Workload = UNKNOWN


# --------------------------------------------------------------------------------------------------
# The proxies localmesh runs, as Istio would name them


# Istio's port protocols grouped by how the proxy handles them.
_HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
_TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})


def cluster_name(host: str, port: int) -> str:
    """Envoy's cluster for a service port: "outbound|<port>|<subset>|<host>", no subset here
    (istio/istio pilot/pkg/model/service.go BuildSubsetKey)."""
    return f"outbound|{port}||{host}"


def trace_operation(host: str, port: int, match: str = "prefix", path: str = "") -> str:
    """pilot's decorator operation for a route to one cluster: host:port, then the route's path
    match ("/*" for none or prefix "/", "<prefix>*" for a prefix, the path for an exact match)
    (istio/istio pilot/pkg/networking/core/route/route.go GetRouteOperation; the default routes use
    pilot/pkg/networking/telemetry TraceOperation, host:port/*)."""
    return f"{host}:{port}" + (path if match == "exact" else (path or "/") + "*")


# --------------------------------------------------------------------------------------------------
# The route table


@dataclass(frozen=True)
class ServiceEntryRoute:
    """One (host, port) of a ServiceEntry visible to the proxy's namespace."""

    host: str  # lower case; may be a wildcard "*.example.com"
    port: int
    protocol: str  # the ServiceEntry port's protocol: HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO
    namespace: str  # the ServiceEntry's namespace (destination_service_namespace)
    name: str  # the ServiceEntry's name (for config dumps)
    resolution: str
    # Where to connect, before the addresses map: the endpoint (STATIC, or DNS with endpoints), the
    # host itself (DNS without endpoints); empty = the original destination (resolution NONE).
    endpoints: tuple[tuple[str, int], ...] = ()
    # The workload the endpoint's telemetry metadata names (see endpoint_peer); UNKNOWN: none.
    peer: Workload = UNKNOWN


@dataclass(frozen=True)
class MeshServiceRoute:
    """One port of a Kubernetes Service (a mesh service)."""

    host: str  # FQDN: idgen.recipes.svc.cluster.local
    name: str
    namespace: str
    port: int
    protocol: str  # from appProtocol or the port name ("http"); "" = sniffed (as the request comes)
    aliases: tuple[str, ...]  # the shorter names that reach it from the proxy's namespace


@dataclass(frozen=True)
class IngressRoute:
    """One uri match of a VirtualService bound to a Gateway that selects the ingress gateway."""

    gateway: str  # "recipes/recipes-gateway"
    gateway_hosts: tuple[str, ...]  # the Gateway server's hosts that admit the VirtualService
    virtual_service: str  # "recipes/idgen"
    hosts: tuple[str, ...]  # the VirtualService's hosts
    match: str  # "exact" or "prefix" (an http rule without match is prefix "")
    path: str
    cluster: str
    service: Service
    upstream: tuple[str, int]  # host and port to connect to, before the addresses map
    peer: Workload = UNKNOWN  # the workload the endpoint's metadata names (Decision.peer)


@dataclass(frozen=True)
class RouteTable:
    """Everything one proxy needs, pushed to it as JSON (the local xDS)."""

    version: str
    proxy: Workload
    outbound_policy: str  # ALLOW_ANY or REGISTRY_ONLY
    policy_source: str = ""
    service_entries: tuple[ServiceEntryRoute, ...] = ()
    mesh_services: tuple[MeshServiceRoute, ...] = ()
    ingress_routes: tuple[IngressRoute, ...] = ()
    # The local stand-in for DNS and Kubernetes endpoints: "host:port" -> (ip, port).
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(encode(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RouteTable:
        """Parses and checks a table; RouteTableError (a ValueError) says what is wrong and where."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RouteTableError(f"route table: not valid JSON: {err}") from err
        table: RouteTable = decode(cls, data, "route table")
        if table.outbound_policy not in (ALLOW_ANY, REGISTRY_ONLY):
            raise RouteTableError(
                f"route table.outbound_policy: {table.outbound_policy!r} "
                f"is neither {ALLOW_ANY} nor {REGISTRY_ONLY}"
            )
        for i, route in enumerate(table.ingress_routes):
            if route.match not in ("exact", "prefix"):
                raise RouteTableError(
                    f"route table.ingress_routes[{i}].match: {route.match!r} is not exact or prefix"
                )
        return table

    @cached_property
    def _index(self) -> _Index:
        """Lookups for decide_outbound, built once per table (tables are immutable)."""
        exact: dict[tuple[str, int], MeshServiceRoute | ServiceEntryRoute] = {}
        for svc in self.mesh_services:
            for name in (svc.host, *svc.aliases):
                exact.setdefault((name, svc.port), svc)
        wildcard: list[tuple[str, ServiceEntryRoute]] = []
        for entry in self.service_entries:
            if entry.host.startswith("*."):
                wildcard.append((entry.host, entry))
            else:
                # A Kubernetes Service wins over a ServiceEntry with the same host (Istio merges them
                # with the Kubernetes registry first).
                exact.setdefault((entry.host, entry.port), entry)
        # Envoy picks the longest wildcard suffix first (route.proto VirtualHost.domains).
        wildcard.sort(key=lambda item: -len(item[0]))
        return _Index(exact, tuple(wildcard))

    @cached_property
    def _memo(self) -> dict[tuple[Any, ...], Decision | None]:
        """Decisions already made on this table: they are pure, so a repeat is a dict lookup."""
        return {}


_MEMO_LIMIT = 4096  # distinct (host, port, protocol) or (authority, path) keys kept per table
# Keys longer than this are decided every time and not kept, so the memo stays under about
# _MEMO_LIMIT * _MEMO_KEY_LIMIT characters (4 MiB) whatever clients send.
_MEMO_KEY_LIMIT = 1024


def _remember(table: RouteTable, key: tuple[Any, ...], size: int, decision: Decision | None) -> None:
    if size > _MEMO_KEY_LIMIT:
        return
    memo = table._memo
    if len(memo) >= _MEMO_LIMIT:  # many distinct hosts or paths: start over rather than grow
        memo.clear()
    memo[key] = decision


@dataclass(frozen=True)
class _Index:
    exact: dict[tuple[str, int], MeshServiceRoute | ServiceEntryRoute]
    wildcard: tuple[tuple[str, ServiceEntryRoute], ...]  # ("*.example.com", route), longest first


def build_tables(state: MeshState, addresses: Mapping[str, tuple[str, int]]) -> dict[str, RouteTable]:
    """One RouteTable per proxy: the ingress gateway's ("istio-ingressgateway") and one sidecar's for
    each Deployment (keyed by its name), as istiod computes one configuration per connected proxy.

    `addresses` maps "host:port" to the (ip, port) that stands for it locally; other hosts are
    connected to as they are (real DNS).
    """
    if state.services and not state.deployments:
        # Name the workloads the Services expect, so the message says what is missing.
        wanted = sorted({s.selector.get("app", s.name) for s in state.services})
        raise ConfigError(
            f"no Deployment {' or '.join(wanted)} in the applied config: apply an overlay "
            "(manifests/overlays/<option>), which includes manifests/base"
        )
    addr = {key.lower(): (str(ip), int(port)) for key, (ip, port) in addresses.items()}
    gateway = replace(
        INGRESS_GATEWAY,
        principal=spiffe_principal(
            GATEWAY_NAMESPACE, "istio-ingressgateway-service-account", state.trust_domain
        ),
    )
    tables = {
        # Gateways always get the default sidecar scope, whose outbound policy is meshConfig's
        # (pilot/pkg/model/push_context.go getSidecarScope: "Gateways always use default sidecar scope").
        INGRESS_GATEWAY.name: _with_version(
            RouteTable(
                version="",
                proxy=gateway,
                outbound_policy=state.mesh_mode,
                policy_source=state.mesh_mode_source,
                service_entries=_service_entry_routes(state, GATEWAY_NAMESPACE),
                mesh_services=_mesh_service_routes(state, GATEWAY_NAMESPACE),
                ingress_routes=_ingress_routes(state),
                addresses=addr,
            )
        )
    }
    for deployment in state.deployments:
        workload = deployment.workload(state.trust_domain)
        policy = state.outbound_policy(workload.namespace, deployment.labels)
        tables.setdefault(
            deployment.name,
            _with_version(
                RouteTable(
                    version="",
                    proxy=workload,
                    outbound_policy=policy.mode,
                    policy_source=policy.source,
                    service_entries=_service_entry_routes(state, workload.namespace),
                    mesh_services=_mesh_service_routes(state, workload.namespace),
                    addresses=dict(addr),
                )
            ),
        )
    return tables


def _with_version(table: RouteTable) -> RouteTable:
    """The version is a digest of the content: the same config gives the same version (no-op pushes show)."""
    digest = hashlib.sha256(table.to_json().encode()).hexdigest()[:12]
    return replace(table, version=digest)


def endpoint_peer(name: str, namespace: str) -> Workload:
    """The endpoint Istio (1.30 and later) gives a DNS ServiceEntry without endpoints, as the client
    sidecar's metrics read it: workload name the ServiceEntry's name, its namespace, no labels.

    istio/istio pilot/pkg/serviceregistry/serviceentry/conversion.go convertServiceEntryToInstances
    (Namespace: cfg.Namespace, WorkloadName: cfg.Name, Labels: nil, ClusterID); pilot/pkg/networking/
    util/util.go AppendLbEndpointMetadata encodes it as "name;namespace;canonical name;revision;cluster"
    with the canonical name from the workload name (no labels) and "latest" sent as "". istio_stats
    (envoyproxy/envoy contrib/istio/filters/http/istio_stats, populatePeerInfo) falls back to it on the
    client side: an empty revision reads "latest"; app, version and principal, absent from the encoding,
    read "unknown".
    """
    canonical, revision = canonical_service({}, name)
    return replace(
        UNKNOWN,
        name=name,
        namespace=namespace,
        canonical_service=canonical,
        canonical_revision=revision,
        cluster=CLUSTER_ID,
    )


def _service_entry_routes(state: MeshState, namespace: str) -> tuple[ServiceEntryRoute, ...]:
    """The ServiceEntries exported to `namespace` (istiod sends a proxy only what it may see)."""
    routes = []
    for entry in state.service_entries:
        if not entry.visible_to(namespace):
            continue
        dns = entry.resolution in ("DNS", "DNS_ROUND_ROBIN")
        # Only a DNS entry without endpoints gets the endpoint named after it (conversion.go above).
        peer = endpoint_peer(entry.name, entry.namespace) if dns and not entry.endpoints else UNKNOWN
        for host in entry.hosts:
            for port in entry.ports:
                target = port.target_port or port.number
                if entry.endpoints:
                    endpoints = tuple(
                        (ep.address.lower(), ep.ports.get(port.name, target)) for ep in entry.endpoints
                    )
                elif dns:
                    endpoints = ((host, target),)
                else:
                    endpoints = ()  # NONE: the original destination
                routes.append(
                    ServiceEntryRoute(
                        host,
                        port.number,
                        port.protocol,
                        entry.namespace,
                        entry.name,
                        entry.resolution,
                        endpoints,
                        peer,
                    )
                )
    return tuple(routes)


def _mesh_service_routes(state: MeshState, namespace: str) -> tuple[MeshServiceRoute, ...]:
    routes = []
    for svc in state.services:
        # The names a pod in `namespace` can use, as Kubernetes DNS search domains resolve them and as
        # Istio adds them to the service's virtual host (pilot/pkg/networking/core/httproute.go
        # generateVirtualHostDomains): the short name only from the service's own namespace.
        short = (svc.name,) if svc.namespace == namespace else ()
        aliases = (*short, f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc")
        for port in svc.ports:
            routes.append(
                MeshServiceRoute(
                    svc.hostname, svc.name, svc.namespace, port.port, port.istio_protocol, aliases
                )
            )
    return tuple(routes)


def _split_gateway_host(host: str) -> tuple[str, str]:
    """A Gateway server host "namespace/dnsName" (no namespace part = "*/")."""
    ns, _, dns = host.rpartition("/")
    return (ns or "*"), dns.lower()


def _hosts_intersect(a: str, b: str) -> bool:
    if a == "*" or b == "*":
        return True
    if a.startswith("*.") and b.startswith("*."):
        return a.endswith(b[1:]) or b.endswith(a[1:])
    return host_matches(a, b) or host_matches(b, a)


def host_matches(pattern: str, host: str) -> bool:
    """Envoy's domain match: "*" any host, "*.example.com" any name ending in ".example.com", else equal."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def _ingress_routes(state: MeshState) -> tuple[IngressRoute, ...]:
    routes: list[IngressRoute] = []
    for vs in state.virtual_services:
        # A gateway sees VirtualServices exported to its own namespace (pilot/pkg/model/push_context.go
        # VirtualServicesForGateway looks them up by the proxy's ConfigNamespace).
        if not vs.visible_to(GATEWAY_NAMESPACE):
            continue
        for key in vs.gateway_keys():
            gw = state.gateway(key)
            if gw is None or not gw.selects(GATEWAY_LABELS):
                continue
            for server in gw.servers:
                if server.protocol not in ("HTTP", "HTTP2"):
                    continue
                # "ns/host" admits VirtualServices of that namespace only; "./host" the Gateway's own.
                gateway_hosts = tuple(
                    dns
                    for ns, dns in map(_split_gateway_host, server.hosts)
                    if ns == "*" or ns == vs.namespace or (ns == "." and gw.namespace == vs.namespace)
                )
                hosts = tuple(h for h in vs.hosts if any(_hosts_intersect(h, g) for g in gateway_hosts))
                if not hosts:
                    continue
                for rule in vs.http:
                    dest = _destination(
                        state, resolve_host(rule.destination_host, vs.namespace), rule.destination_port
                    )
                    if dest is None:  # parse() warned about it
                        continue
                    cluster, service, upstream, peer = dest
                    for m in rule.matches or ():
                        if m.kind in ("exact", "prefix"):
                            routes.append(
                                IngressRoute(
                                    key,
                                    gateway_hosts,
                                    f"{vs.namespace}/{vs.name}",
                                    hosts,
                                    m.kind,
                                    m.value,
                                    cluster,
                                    service,
                                    upstream,
                                    peer,
                                )
                            )
                    if not rule.matches:
                        routes.append(
                            IngressRoute(
                                key,
                                gateway_hosts,
                                f"{vs.namespace}/{vs.name}",
                                hosts,
                                "prefix",
                                "",
                                cluster,
                                service,
                                upstream,
                                peer,
                            )
                        )
    return tuple(dict.fromkeys(routes))  # a VirtualService bound twice to one Gateway routes once


def _destination(
    state: MeshState, host: str, port: int | None
) -> tuple[str, Service, tuple[str, int], Workload] | None:
    """A route destination's cluster, metric labels and upstream, from a Service or a ServiceEntry."""
    svc = state.service(host)
    if svc is not None:
        if port is None and len(svc.ports) == 1:
            port = svc.ports[0].port
        if port is None or port not in (p.port for p in svc.ports):
            return None
        return cluster_name(host, port), Service(host, svc.name, svc.namespace), (host, port), UNKNOWN
    entry = next(
        (e for e in state.service_entries if host in e.hosts and e.visible_to(GATEWAY_NAMESPACE)), None
    )
    if entry is None:
        return None
    if port is None and len(entry.ports) == 1:
        port = entry.ports[0].number
    route = next(
        (r for r in _service_entry_routes(state, GATEWAY_NAMESPACE) if (r.host, r.port) == (host, port)), None
    )
    if route is None or port is None:
        return None
    upstream = route.endpoints[0] if route.endpoints else (host, port)
    return cluster_name(host, port), Service(host, host, entry.namespace), upstream, route.peer


# --------------------------------------------------------------------------------------------------
# Decisions (what a proxy asks for every request)


def host_only(authority: str) -> str:
    """A Host header or CONNECT authority as Envoy matches it: lower case, no port, no trailing dot."""
    text = authority.strip().lower()
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        name, _, port = text.partition(":")
        if port.isdigit() or not port:
            text = name
    return text.rstrip(".")


def _connect(addresses: Mapping[str, tuple[str, int]], host: str, port: int) -> tuple[str, int]:
    return addresses.get(f"{host}:{port}", (host, port))


def decide_outbound(table: RouteTable, host: str, port: int, protocol: str) -> Decision:
    """What a sidecar does with a request to host:port (protocol "http", or "tcp" for CONNECT).

    Istio's outbound rules: a host in a ServiceEntry exported to the namespace, on one of its ports,
    goes to that entry's cluster; a mesh Service (by its FQDN or the shorter names Kubernetes DNS
    resolves) to its cluster; anything else to PassthroughCluster under ALLOW_ANY or BlackHoleCluster
    under REGISTRY_ONLY. On TLS (CONNECT) the host is the SNI, so a ServiceEntry matches by it, but an
    unregistered host is not visible: destination_service is "unknown".
    """
    key = ("out", host, port, protocol)
    known = table._memo.get(key)
    if known is not None:
        return known
    decision = _decide_outbound(table, host, port, protocol)
    _remember(table, key, len(host), decision)
    return decision


def _decide_outbound(table: RouteTable, host: str, port: int, protocol: str) -> Decision:
    if protocol not in ("http", "tcp"):
        raise ValueError(f"protocol must be 'http' or 'tcp', not {protocol!r}")
    name = host_only(host)
    index = table._index
    route = index.exact.get((name, port))
    if route is None:
        route = next(
            (r for pattern, r in index.wildcard if r.port == port and host_matches(pattern, name)), None
        )

    if isinstance(route, MeshServiceRoute):
        wire = "http" if protocol == "http" and route.protocol in ("", *_HTTP_PROTOCOLS) else "tcp"
        return Decision(
            cluster_name(route.host, port),
            Service(route.host, route.name, route.namespace),
            _connect(table.addresses, route.host, port),
            wire,
            trace_operation(route.host, port) if wire == "http" else "",
        )
    # Plain HTTP to a TLS port carries no SNI, so it cannot match the entry's filter chain and falls
    # through to the outbound policy, as on a cluster.
    if isinstance(route, ServiceEntryRoute) and not (protocol == "http" and route.protocol in _TLS_PROTOCOLS):
        target = route.endpoints[0] if route.endpoints else (name, port)
        wire = "http" if protocol == "http" and route.protocol in _HTTP_PROTOCOLS else "tcp"
        # destination_service(_name) is the entry's host; its namespace the ServiceEntry's; the
        # destination workload its endpoint's (docs/istio-facts.md).
        return Decision(
            cluster_name(route.host, port),
            Service(route.host, route.host, route.namespace),
            _connect(table.addresses, *target),
            wire,
            operation=trace_operation(route.host, port) if wire == "http" else "",
            peer=route.peer,
        )
    # No registered host: the outbound policy decides. Istio's sidecar sends it to the "allow_any"
    # virtual host / passthrough filter chain (PassthroughCluster) under ALLOW_ANY, else to "block_all"
    # (BlackHoleCluster) (istio/istio pilot/pkg/networking/util/util.go constants; core/httproute.go and
    # listener.go build them). On TCP/TLS the metrics cannot see the host: destination_service "unknown".
    shown = name if protocol == "http" and name else "unknown"
    if table.outbound_policy == ALLOW_ANY:
        return Decision(
            PASSTHROUGH,
            Service(shown, PASSTHROUGH, "unknown"),
            _connect(table.addresses, name, port),
            protocol,
        )
    return Decision(BLACKHOLE, Service(shown, BLACKHOLE, "unknown"), None, protocol)


def _specificity(pattern: str) -> tuple[int, int]:
    """Envoy's virtual host order: exact domains, then longer wildcard suffixes, then "*"."""
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*."):
        return (1, len(pattern))
    return (2, len(pattern))


def decide_ingress(table: RouteTable, authority: str, path: str) -> Decision | None:
    """The gateway's route for a request: Gateway and VirtualService hosts must admit the authority;
    the most specific matching host wins, then the first uri match in order. None = no route (404 NR)."""
    # Routes match the path without its query, so the query is not part of the key.
    path = path.partition("?")[0]
    key = ("in", authority, path)
    memo = table._memo
    if key in memo:
        return memo[key]
    found = _decide_ingress(table, authority, path)
    _remember(table, key, len(authority) + len(path), found)
    return found


def _decide_ingress(table: RouteTable, authority: str, path: str) -> Decision | None:
    name = host_only(authority)
    path = path.split("?", 1)[0].split("#", 1)[0]  # Envoy matches the path without the query string
    candidates: list[tuple[tuple[int, int], IngressRoute]] = []
    for route in table.ingress_routes:
        if not any(host_matches(g, name) for g in route.gateway_hosts):
            continue
        scores = [_specificity(h) for h in route.hosts if host_matches(h, name)]
        if scores:
            candidates.append((max(scores), route))
    if not candidates:
        return None
    best = max(score for score, _ in candidates)
    for score, route in candidates:
        if score != best:
            continue
        if (route.match == "exact" and path == route.path) or (
            route.match == "prefix" and path.startswith(route.path)
        ):
            port = int(route.cluster.split("|")[1])  # outbound|<port>||<host>
            operation = trace_operation(route.service.host, port, route.match, route.path)
            upstream = _connect(table.addresses, *route.upstream)
            return Decision(route.cluster, route.service, upstream, "http", operation, route.peer)
    return None

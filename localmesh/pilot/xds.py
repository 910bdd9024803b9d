"""The same route tables as Envoy xDS resources, shaped and named as Istio 1.31's pilot generates them.

Pure translation, no I/O: `envoy_resources(table, ports)` gives the clusters, route configurations
and listeners of one proxy (the sidecar of a workload, or the ingress gateway), as v3 JSON-ready
dicts, each with its "@type". localmesh/envoy writes them as file-based xDS. What pilot would emit,
and every place this differs from it, is in docs/envoy-dataplane.md; the pilot sources are cited
where a name or a value is copied (istio/istio pilot/pkg/networking/core/...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localmesh.mesh.names import (
    ALLOW_ANY,
    BLACKHOLE,
    CLUSTER_ID,
    HTTP_LABELS,
    PASSTHROUGH,
    TCP_LABELS,
    Service,
    Workload,
)
from localmesh.pilot.identity import peer_headers
from localmesh.pilot.routes import (
    _HTTP_PROTOCOLS,
    IngressRoute,
    MeshServiceRoute,
    RouteTable,
    ServiceEntryRoute,
    cluster_name,
    trace_operation,
)

Resource = dict[str, Any]

SIDECAR = "sidecar"
GATEWAY = "gateway"

# --- names pilot gives things (istio/istio pilot/pkg/networking/util/util.go, pilot/pkg/model) ---
ALLOW_ANY_VHOST = "allow_any"  # util.Passthrough: virtual host and route of ALLOW_ANY
BLOCK_ALL_VHOST = "block_all"  # util.BlackHole: virtual host and route of REGISTRY_ONLY
HTTP_PROXY_ROUTE = "http_proxy"  # model.RDSHttpProxy: the route of the HTTP_PROXY listener
DEFAULT_ROUTE = "default"  # route.DefaultRouteName
# The sidecar's server header: outbound leaves Envoy's default ("envoy"), inbound and gateways set
# "istio-envoy" (pilot/pkg/networking/util/proxy_headers.go GetProxyHeadersFromProxyConfig).
OUTBOUND_SERVER = "envoy"
ISTIO_SERVER = "istio-envoy"

# Default retries (pilot/pkg/networking/core/route/retry/retry.go, 1.31: defaultRetryOn with
# retriable-status-codes but no status codes listed, so no status is retried; defaultInboundRetryOn).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
INBOUND_RETRY_ON = "reset-before-request"
DEFAULT_RETRIES = 2

# The header an ORIGINAL_DST cluster reads the upstream address from (envoy cluster.proto
# OriginalDstLbConfig.use_http_header). The route sets it from the address book, so a host is never
# resolved by DNS here; an upstream HTTP filter removes it before the request leaves.
ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"
# Route metadata holding the destination labels of the metrics (filter_metadata namespace).
LABELS_NS = "istio.labels"
# Dynamic metadata namespaces the header_to_metadata filter fills with the peer's identity.
DOWNSTREAM_PEER_NS = "istio.downstream_peer"
UPSTREAM_PEER_NS = "istio.upstream_peer"
# The peer identity the gateway sends the sidecar (and the sidecar answers with), one header per
# field, read into dynamic metadata by header_to_metadata and removed at once (no app sees them).
PEER_HEADER_PREFIX = "x-localmesh-peer-"
# Istio's metadata-exchange pair, still sent between the proxies and stripped at the receiver.
MX_HEADERS = ("x-envoy-peer-metadata-id", "x-envoy-peer-metadata")


# The workload fields, in the order of the source_*/destination_* labels, and the peer header of each.
_WORKLOAD_FIELDS = (
    ("workload", "name"),
    ("canonical_service", "canonical_service"),
    ("canonical_revision", "canonical_revision"),
    ("workload_namespace", "namespace"),
    ("principal", "principal"),
    ("app", "app"),
    ("version", "version"),
    ("cluster", "cluster"),
)
PEER_HEADERS = tuple(PEER_HEADER_PREFIX + s.replace("_", "-") for s, _ in _WORKLOAD_FIELDS)
_EMPTY = "%CEL('')%"  # a label with no value (a literal value_format may not be empty)

_T = "type.googleapis.com/"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass(frozen=True)
class EnvoyPorts:
    """Where this proxy's listeners bind (the stack decides)."""

    role: str  # "sidecar" or "gateway"
    outbound: tuple[str, int] | None = None  # sidecar: idgen's HTTP_PROXY target (Istio's 15001)
    inbound: tuple[str, int] | None = None  # sidecar: what the gateway connects to (Istio's 15006)
    app: tuple[str, int] | None = None  # sidecar: the app it fronts (inbound cluster endpoint)
    gateway: tuple[str, int] | None = None  # gateway: its HTTP listener (Istio's 8080)


@dataclass(frozen=True)
class EnvoyResources:
    version: str  # the RouteTable's version
    clusters: tuple[dict[str, Any], ...]  # v3 Cluster resources, each with "@type"
    routes: tuple[dict[str, Any], ...]  # v3 RouteConfiguration resources (RDS)
    listeners: tuple[dict[str, Any], ...]  # v3 Listener resources


def routes_file(name: str) -> str:
    """The file of one route configuration (file-based RDS holds one per file), relative: the
    listeners name it and localmesh/envoy/xdsfiles.py writes it into the proxy's xDS directory and
    makes the listeners' paths absolute (the translation knows no directory)."""
    return "rds_" + "".join(c if c.isalnum() or c in "-." else "_" for c in name) + ".json"


def envoy_resources(table: RouteTable, ports: EnvoyPorts) -> EnvoyResources:
    """The clusters, routes and listeners of one proxy, from its route table."""
    if ports.role == SIDECAR:
        if ports.outbound is None or ports.inbound is None or ports.app is None:
            raise ValueError("a sidecar needs its outbound, inbound and app addresses")
        clusters = [
            *_outbound_clusters(table),
            _blackhole_tunnel_cluster(),
            _inbound_cluster(table, ports.app),
        ]
        routes = [_http_proxy_route(table), _inbound_route(table)]
        listeners = [
            _outbound_listener(table, ports.outbound),
            _blackhole_tunnel_listener(table),
            _inbound_listener(table, ports.inbound),
        ]
    elif ports.role == GATEWAY:
        if ports.gateway is None:
            raise ValueError("a gateway needs its gateway address")
        clusters = [*_outbound_clusters(table)]
        routes = [_gateway_route(table, ports.gateway[1])]
        listeners = [_gateway_listener(table, ports.gateway)]
    else:
        raise ValueError(f"role must be {SIDECAR!r} or {GATEWAY!r}, not {ports.role!r}")
    return EnvoyResources(table.version, tuple(clusters), tuple(routes), tuple(listeners))


# --------------------------------------------------------------------------------------------------
# Small builders


def _typed(type_name: str, **fields: Any) -> Resource:
    return {"@type": _T + type_name, **fields}


def _address(addr: tuple[str, int]) -> Resource:
    return {"socket_address": {"address": addr[0], "port_value": addr[1]}}


def _filter(name: str, type_name: str, **fields: Any) -> Resource:
    return {"name": name, "typed_config": _typed(type_name, **fields)}


def _header(name: str, value: str, append: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> Resource:
    return {"header": {"key": name, "value": value}, "append_action": append}


def _rds(name: str) -> Resource:
    return {
        "route_config_name": name,
        "config_source": {
            "path_config_source": {"path": routes_file(name)},
            "resource_api_version": "V3",
        },
    }


def _retry(retry_on: str) -> Resource:
    policy: Resource = {"retry_on": retry_on, "num_retries": DEFAULT_RETRIES}
    if retry_on == DEFAULT_RETRY_ON:
        # pilot's cachedDefaultPolicy: another host on a retry, up to 5 host selections.
        policy["retry_host_predicate"] = [
            _filter(
                "envoy.retry_host_predicates.previous_hosts",
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
            )
        ]
        policy["host_selection_retry_max_attempts"] = 5
    return policy


# --------------------------------------------------------------------------------------------------
# Clusters (pilot/pkg/networking/core/cluster.go, cluster_builder.go)


def _passthrough_cluster() -> Resource:
    """PassthroughCluster: ORIGINAL_DST, the destination from ORIGINAL_DST_HEADER (pilot's reads the
    connection's original destination, which iptables keeps; here HTTP_PROXY carries no such thing)."""
    return _typed(
        "envoy.config.cluster.v3.Cluster",
        name=PASSTHROUGH,
        type="ORIGINAL_DST",
        connect_timeout="10s",
        lb_policy="CLUSTER_PROVIDED",
        original_dst_lb_config={"use_http_header": True, "http_header_name": ORIGINAL_DST_HEADER},
        typed_extension_protocol_options=_strip_upstream(ORIGINAL_DST_HEADER),
    )


def _strip_upstream(*headers: str) -> Resource:
    """Upstream HTTP filters that remove internal headers after the load balancer has read them."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http_protocol_options": {}},
            http_filters=[
                _filter(
                    "envoy.filters.http.header_mutation",
                    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    mutations={"request_mutations": [{"remove": h} for h in headers]},
                ),
                _filter(
                    "envoy.filters.http.upstream_codec",
                    "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                ),
            ],
        )
    }


def _blackhole_cluster() -> Resource:
    """BlackHoleCluster: STATIC with no endpoints (cluster_builder.go buildBlackHoleCluster)."""
    return _typed("envoy.config.cluster.v3.Cluster", name=BLACKHOLE, type="STATIC", connect_timeout="10s")


def _static_cluster(name: str, endpoint: tuple[str, int], metadata: Resource | None = None) -> Resource:
    cluster = _typed(
        "envoy.config.cluster.v3.Cluster",
        name=name,
        type="STATIC",
        connect_timeout="10s",
        load_assignment={
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(endpoint)}}]}],
        },
    )
    if metadata:
        cluster["metadata"] = {"filter_metadata": metadata}
    return cluster


def _services_metadata(service: Service) -> Resource:
    """pilot's cluster metadata: istio.services[{host, name, namespace}]
    (pilot/pkg/networking/core/cluster_builder.go buildServiceMetadata)."""
    return {
        "istio": {"services": [{"host": service.host, "name": service.name, "namespace": service.namespace}]}
    }


def _connect(table: RouteTable, host: str, port: int) -> tuple[str, int] | None:
    """The address book's (ip, port) for host:port; None when the host is not in it (no DNS here)."""
    return table.addresses.get(f"{host}:{port}")


def _outbound_clusters(table: RouteTable) -> list[Resource]:
    clusters = [_blackhole_cluster(), _passthrough_cluster()]
    seen = {BLACKHOLE, PASSTHROUGH}
    for svc in table.mesh_services:
        name = cluster_name(svc.host, svc.port)
        if name in seen:
            continue
        seen.add(name)
        endpoint = _connect(table, svc.host, svc.port)
        meta = _services_metadata(Service(svc.host, svc.name, svc.namespace))
        clusters.append(_static_cluster(name, endpoint, meta) if endpoint else _empty_cluster(name, meta))
    for entry in table.service_entries:
        name = cluster_name(entry.host, entry.port)
        if name in seen or entry.host.startswith("*."):
            continue
        seen.add(name)
        target = entry.endpoints[0] if entry.endpoints else (entry.host, entry.port)
        endpoint = _connect(table, *target)
        meta = _services_metadata(Service(entry.host, entry.host, entry.namespace))
        clusters.append(_static_cluster(name, endpoint, meta) if endpoint else _empty_cluster(name, meta))
    return clusters


def _empty_cluster(name: str, metadata: Resource) -> Resource:
    """A service the address book cannot place: no endpoint, so requests fail with UH, as a DNS
    cluster whose name does not resolve."""
    cluster = _blackhole_cluster()
    cluster.update(name=name, load_assignment={"cluster_name": name}, metadata={"filter_metadata": metadata})
    return cluster


def _inbound_cluster_name(table: RouteTable) -> str:
    """inbound|<port>||: the port of the proxy's own Service (model.BuildInboundSubsetKey)."""
    return f"inbound|{_own_service(table)[1]}||"


def _own_service(table: RouteTable) -> tuple[Service, int]:
    """The mesh Service that selects this workload (by its app label), and its port."""
    proxy = table.proxy
    for svc in table.mesh_services:
        if svc.namespace == proxy.namespace and svc.name in (proxy.app, proxy.canonical_service, proxy.name):
            return Service(svc.host, svc.name, svc.namespace), svc.port
    return Service("unknown", "unknown", "unknown"), 80


def _inbound_cluster(table: RouteTable, app: tuple[str, int]) -> Resource:
    return _static_cluster(_inbound_cluster_name(table), app)


# --------------------------------------------------------------------------------------------------
# Metric labels: the route carries the destination's, the listener the proxy's own


def _destination_metadata(
    service: Service, workload: Workload | None, host_is_service: bool, source_principal: str = "unknown"
) -> Resource:
    """Route metadata with the labels this route decides (LABELS_NS). `workload` None: the peer tells
    (the gateway reads the sidecar's answer); host_is_service: destination_service is the request's
    Host (passthrough and blackhole); source_principal: the proxy's own SPIFFE ID on a route whose
    upstream connection is (stand-in) mutual TLS, else "unknown": istio_stats takes it from the
    upstream TLS connection's local certificate (envoyproxy/envoy
    contrib/istio/filters/http/istio_stats/source/istio_stats.cc, Reporter::ClientSidecar)."""
    labels: dict[str, str] = {
        "destination_service_name": service.name,
        "destination_service_namespace": service.namespace,
        "source_principal": source_principal,
    }
    if not host_is_service:
        labels["destination_service"] = service.host
    if workload is not None:
        for suffix, attr in _WORKLOAD_FIELDS:
            if suffix != "principal":
                labels[f"destination_{suffix}"] = getattr(workload, attr)
        labels["destination_principal"] = workload.principal
    return {LABELS_NS: labels}


_ROUTE_LABELS = f"xds.route_metadata.filter_metadata['{LABELS_NS}']"


def _routed(expression: str, otherwise: str) -> str:
    """A CEL value_format: `expression` when the request took one of our routes, else `otherwise`."""
    routed = f"has(xds.route_metadata) && '{LABELS_NS}' in xds.route_metadata.filter_metadata"
    return f"%CEL({routed} ? ({expression}) : {otherwise})%"


def _route_label(key: str) -> str:
    return f"%METADATA(ROUTE:{LABELS_NS}:{key})%"


def _peer_label(namespace: str, field: str) -> str:
    return f"%DYNAMIC_METADATA({namespace}:{field})%"


def _own_labels(prefix: str, workload: Workload, role: str) -> dict[str, str]:
    labels = {f"{prefix}_{suffix}": getattr(workload, attr) or _EMPTY for suffix, attr in _WORKLOAD_FIELDS}
    if role == GATEWAY and prefix == "source":
        # The gateway's pod has no version label: its own series carry source_version="" (istio_stats
        # reads the node's labels; an absent one is an empty value).
        labels["source_version"] = _EMPTY
    return labels


def _label_formats(table: RouteTable, role: str, direction: str, tcp: bool) -> dict[str, str]:
    """label -> value_format for one listener. direction: "outbound", "inbound" or "gateway"."""
    labels: dict[str, str] = {}
    if direction == "inbound":
        labels["reporter"] = "destination"
        labels.update({f"source_{s}": _peer_label(DOWNSTREAM_PEER_NS, s) for s, _ in _WORKLOAD_FIELDS})
        labels.update(_own_labels("destination", table.proxy, role))
        service, _ = _own_service(table)
        labels.update(
            destination_service=service.host,
            destination_service_name=service.name,
            destination_service_namespace=service.namespace,
            connection_security_policy=_peer_label(DOWNSTREAM_PEER_NS, "connection_security_policy"),
        )
    else:
        labels["reporter"] = "source"
        labels.update(_own_labels("source", table.proxy, role))
        for suffix, _ in _WORKLOAD_FIELDS:
            key = f"destination_{suffix}"
            labels[key] = (
                _peer_label(UPSTREAM_PEER_NS, suffix) if direction == "gateway" else _route_label(key)
            )
        # A request no route took (the gateway's 404 NR) names an "unknown" service and has no upstream
        # TLS connection; passthrough and blackhole routes name none: there the Host header is
        # destination_service.
        for key in ("destination_service_name", "destination_service_namespace", "source_principal"):
            labels[key] = _routed(f"{_ROUTE_LABELS}['{key}']", "'unknown'")
        labels["destination_service"] = (
            _route_label("destination_service")
            if tcp
            else _routed(
                f"'destination_service' in {_ROUTE_LABELS} ? "
                f"{_ROUTE_LABELS}['destination_service'] : request.host",
                "'unknown'",
            )
        )
        labels["connection_security_policy"] = "unknown"
    labels["request_protocol"] = "tcp" if tcp else "http"
    if not tcp:
        labels["response_code"] = "%RESPONSE_CODE%"
        labels["grpc_response_status"] = _EMPTY
    labels["response_flags"] = "%RESPONSE_FLAGS%"
    return labels


def _tags(formats: Mapping[str, str], names: Iterable[str]) -> list[Resource]:
    return [{"name": name, "value_format": formats[name]} for name in names]


def _http_stats_logger(formats: Mapping[str, str], log_filter: Resource | None = None) -> Resource:
    """istio_requests_total and the three histograms, by Envoy's stats access logger."""
    tags = _tags(formats, HTTP_LABELS)

    def histogram(name: str, unit: str, value: str) -> Resource:
        return {"stat": {"name": name, "tags": tags}, "unit": unit, "value_format": value}

    logger = _filter(
        "envoy.access_loggers.stats",
        "envoy.extensions.access_loggers.stats.v3.Config",
        # Envoy's prometheus output prefixes "envoy_": envoy_istio_requests_total (see the docs).
        stats_scope={"prefix": "istio"},
        counters=[{"stat": {"name": "requests_total", "tags": tags}, "value_fixed": 1}],
        histograms=[
            histogram("request_duration_milliseconds", "Milliseconds", "%DURATION%"),
            histogram("request_bytes", "Bytes", "%DOWNSTREAM_WIRE_BYTES_RECEIVED%"),
            histogram("response_bytes", "Bytes", "%DOWNSTREAM_WIRE_BYTES_SENT%"),
        ],
    )
    if log_filter:
        logger["filter"] = log_filter
    return logger


def _tcp_stats_logger(
    formats: Mapping[str, str], log_filter: Resource | None = None, nothing_moved: bool = False
) -> Resource:
    """The four istio_tcp_* counters of one connection (or CONNECT tunnel), at its end. nothing_moved:
    a blackholed connection, which Istio's tcp_proxy closes on accept, before it reads or writes a
    byte (the PROXY protocol header of the stand-in tunnel is not the client's)."""
    tags = _tags(formats, TCP_LABELS)

    def moved(value: str) -> Resource:
        return {"value_format": "%CEL(0)%" if nothing_moved else value}

    logger = _filter(
        "envoy.access_loggers.stats",
        "envoy.extensions.access_loggers.stats.v3.Config",
        stats_scope={"prefix": "istio"},
        counters=[
            {"stat": {"name": "tcp_connections_opened_total", "tags": tags}, "value_fixed": 1},
            {"stat": {"name": "tcp_connections_closed_total", "tags": tags}, "value_fixed": 1},
            {"stat": {"name": "tcp_sent_bytes_total", "tags": tags}, **moved("%BYTES_SENT%")},
            {"stat": {"name": "tcp_received_bytes_total", "tags": tags}, **moved("%BYTES_RECEIVED%")},
        ],
    )
    if log_filter:
        logger["filter"] = log_filter
    return logger


def _build_logger() -> Resource:
    """istio_build{component="proxy",tag=<the node's ISTIO_VERSION>} 1, as istio_stats sets it from the
    node metadata (envoyproxy/envoy contrib/istio/filters/http/istio_stats/source/istio_stats.cc,
    Context::istio_build_). A stats logger writes stats on a log event only, so the gauge is set by
    each request and appears with the proxy's first one (istio_stats sets it at startup)."""
    return _filter(
        "envoy.access_loggers.stats",
        "envoy.extensions.access_loggers.stats.v3.Config",
        stats_scope={"prefix": "istio"},
        gauges=[
            {
                "stat": {
                    "name": "build",
                    "tags": [
                        {"name": "component", "value_format": "proxy"},
                        {"name": "tag", "value_format": "%CEL(xds.node.metadata.ISTIO_VERSION)%"},
                    ],
                },
                "value_fixed": 1,
                "set": {"log_type": "DownstreamEnd"},
            }
        ],
    )


# Istio's default text access log format (pilot/pkg/model/telemetry_logging.go EnvoyTextLogFormat).
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)


def _stdout_logger(log_filter: Resource | None = None) -> Resource:
    logger = _filter(
        "envoy.access_loggers.stdout",
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        log_format={"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
    )
    if log_filter:
        logger["filter"] = log_filter
    return logger


def _cel_filter(expression: str) -> Resource:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
            ),
        }
    }


# CONNECT tunnels are TCP edges: the HCM records them, except blackholed ones (their internal
# tcp_proxy does, as Istio's); it logs everything else, and the tunnel's tcp_proxy that one.
_CONNECT_FILTER = _cel_filter(f"request.method == 'CONNECT' && xds.route_name != '{BLOCK_ALL_VHOST}'")
_NOT_BLACKHOLED_CONNECT = _cel_filter(f"request.method != 'CONNECT' || xds.route_name != '{BLOCK_ALL_VHOST}'")
_NOT_CONNECT_FILTER = {
    "header_filter": {
        "header": {"name": ":method", "string_match": {"exact": "CONNECT"}, "invert_match": True}
    }
}


# --------------------------------------------------------------------------------------------------
# Sidecar outbound: the HTTP_PROXY listener (pilot/pkg/networking/core/listener.go buildHTTPProxy)


def _vhost_domains(names: Iterable[str], port: int) -> list[str]:
    """A service's names with the port, and without it for port 80 (what a Host header without a port
    means). pilot's http_proxy routes list both forms (httproute.go generateVirtualHostDomains with
    listenerPort 0); its per-port listeners let it ignore the port elsewhere, the single HTTP_PROXY
    listener here cannot (docs/envoy-dataplane.md)."""
    out: list[str] = []
    for name in names:
        for domain in (name, f"{name}:{port}") if port == 80 else (f"{name}:{port}",):
            if domain not in out:
                out.append(domain)
    return out


def _cluster_route(
    name: str,
    cluster: str,
    metadata: Resource,
    *,
    headers: Iterable[Resource] = (),
    connect: bool = False,
    retry: bool = True,
    operation: str = "",
) -> Resource:
    """A route to a cluster (no timeout, as pilot's); HTTP ones retry as pilot's default routes, except
    allow_any, which pilot builds without a retry policy (httproute.go buildCatchAllVirtualHost).
    operation: the tracing decorator of a registered host's default route (route/route.go
    buildDefaultHTTPRoute); allow_any and block_all have none."""
    route: Resource = {
        "name": name,
        "match": {"connect_matcher": {}} if connect else {"prefix": "/"},
        "route": {"cluster": cluster, "timeout": "0s"},
        "metadata": {"filter_metadata": metadata},
    }
    if operation:
        route["decorator"] = {"operation": operation}
    if connect:
        route["route"]["upgrade_configs"] = [{"upgrade_type": "CONNECT", "connect_config": {}}]
    elif retry:
        route["route"]["retry_policy"] = _retry(DEFAULT_RETRY_ON)
    added = list(headers)
    if added:
        route["request_headers_to_add"] = added
    if cluster == PASSTHROUGH:
        # Only the route says where PassthroughCluster connects: a client's own header is dropped
        # (Envoy removes before it adds).
        route["request_headers_to_remove"] = [ORIGINAL_DST_HEADER]
    return route


def _exchange_metadata(route: Resource, workload: Workload, extra: Iterable[str] = ()) -> Resource:
    """Istio's outbound metadata exchange on an HTTP route: the proxy's own
    x-envoy-peer-metadata(-id) go upstream in place of any the app sent, and the upstream's are
    removed from the answer. Istio 1.31 sends them to every HTTP upstream, external ones included,
    unless ProxyConfig proxyHeaders.metadataExchangeHeaders.mode is IN_MESH (istio/api
    mesh/v1alpha1/proxy.proto; istio/istio pilot/pkg/networking/core/listener_builder.go appendMxFilter,
    pilot/pkg/xds/filters/filters.go SidecarOutboundMetadataFilter; the filter's setReference in
    envoyproxy/envoy contrib/istio/filters/http/peer_metadata/source/peer_metadata.cc). `extra`:
    more headers removed both ways."""
    route["request_headers_to_remove"] = [*route.get("request_headers_to_remove", ()), *MX_HEADERS, *extra]
    route["request_headers_to_add"] = [
        *route.get("request_headers_to_add", ()),
        *_mx_headers(workload, SIDECAR),
    ]
    route["response_headers_to_remove"] = [*MX_HEADERS, *extra]
    return route


def _http_proxy_route(table: RouteTable) -> Resource:
    """The http_proxy route configuration: a virtual host per registered host and port, then
    allow_any or block_all for the rest (httproute.go BuildSidecarOutboundVirtualHosts and
    buildCatchAllVirtualHost)."""
    vhosts: list[Resource] = []
    for svc in table.mesh_services:
        vhosts.append(_mesh_vhost(table, svc))
    vhosts.extend(_service_entry_vhost(table, entry) for entry in table.service_entries)
    vhosts.append(_catch_all_vhost(table))
    return _typed(
        "envoy.config.route.v3.RouteConfiguration",
        name=HTTP_PROXY_ROUTE,
        virtual_hosts=_unique_domains(vhosts),
        validate_clusters=False,
    )


def _unique_domains(vhosts: list[Resource]) -> list[Resource]:
    """Envoy refuses a domain in two virtual hosts; the first one keeps it (a Kubernetes Service
    before a ServiceEntry of the same host, as pilot merges the registries)."""
    seen: set[str] = set()
    out = []
    for vhost in vhosts:
        domains = [d for d in vhost["domains"] if d not in seen]
        seen.update(domains)
        if domains:
            out.append({**vhost, "domains": domains})
    return out


def _mesh_vhost(table: RouteTable, svc: MeshServiceRoute) -> Resource:
    name = cluster_name(svc.host, svc.port)
    service = Service(svc.host, svc.name, svc.namespace)
    # A mesh Service's upstream connection is (stand-in) mutual TLS.
    meta = _destination_metadata(service, Workload(), False, source_principal=table.proxy.principal)
    route = _cluster_route(DEFAULT_ROUTE, name, meta, operation=trace_operation(svc.host, svc.port))
    # A mesh peer learns who calls (as from the gateway); its own identity headers stop here, so the
    # app never sees them.
    _exchange_metadata(route, table.proxy, PEER_HEADERS)
    route["request_headers_to_add"].extend(_peer_identity_headers(table.proxy))
    return {
        "name": f"{svc.host}:{svc.port}",
        "domains": _vhost_domains((svc.host, *svc.aliases), svc.port),
        "routes": [route],
        "include_request_attempt_count": True,
    }


def _service_entry_workload(entry: ServiceEntryRoute) -> Workload:
    """The destination of a ServiceEntry: a DNS entry without endpoints gets one carrying the entry's
    namespace and name (istio/istio pilot/pkg/serviceregistry/serviceentry/conversion.go, 1.30+);
    other entries' endpoints carry no workload."""
    if entry.resolution in ("DNS", "DNS_ROUND_ROBIN") and entry.endpoints == ((entry.host, entry.port),):
        return Workload(
            name=entry.name,
            namespace=entry.namespace,
            canonical_service=entry.name,
            cluster=CLUSTER_ID,
        )
    return Workload()


def _service_entry_vhost(table: RouteTable, entry: ServiceEntryRoute) -> Resource:
    """A ServiceEntry port's virtual host: CONNECT tunnels to its cluster; plain HTTP too when the
    port is HTTP, else it falls through to the outbound policy (plain HTTP to a TLS port carries no
    SNI, so on a cluster it matches the catch-all, not the entry's filter chain)."""
    name = cluster_name(entry.host, entry.port)
    service = Service(entry.host, entry.host, entry.namespace)
    meta = _destination_metadata(service, _service_entry_workload(entry), host_is_service=False)
    routes = [_cluster_route("connect", name, meta, connect=True)]
    if entry.protocol in _HTTP_PROTOCOLS:
        operation = trace_operation(entry.host, entry.port)
        routes.append(
            _exchange_metadata(_cluster_route(DEFAULT_ROUTE, name, meta, operation=operation), table.proxy)
        )
    else:
        routes.extend(r for r in _catch_all_routes(table) if "connect_matcher" not in r["match"])
    return {
        "name": f"{entry.host}:{entry.port}",
        "domains": _vhost_domains((entry.host,), entry.port),
        "routes": routes,
        "include_request_attempt_count": True,
    }


def _catch_all_vhost(table: RouteTable) -> Resource:
    """allow_any or block_all, for every host no other virtual host names (httproute.go
    buildCatchAllVirtualHost)."""
    name = ALLOW_ANY_VHOST if table.outbound_policy == ALLOW_ANY else BLOCK_ALL_VHOST
    return {
        "name": name,
        "domains": ["*"],
        "routes": _catch_all_routes(table),
        "include_request_attempt_count": True,
    }


def _catch_all_routes(table: RouteTable) -> list[Resource]:
    """ALLOW_ANY: to PassthroughCluster (HTTP and CONNECT). REGISTRY_ONLY: HTTP gets a direct 502
    with an empty body; a CONNECT tunnel is accepted and closed at once, as Istio's tcp_proxy to
    BlackHoleCluster closes a TLS connection (BLACKHOLE_TUNNEL)."""
    unknown = Workload()
    if table.outbound_policy != ALLOW_ANY:
        http_meta = _destination_metadata(Service("", BLACKHOLE, "unknown"), unknown, host_is_service=True)
        tcp_meta = _destination_metadata(
            Service("unknown", BLACKHOLE, "unknown"), unknown, host_is_service=False
        )
        tunnel = _cluster_route(BLOCK_ALL_VHOST, BLACKHOLE_TUNNEL, tcp_meta, connect=True)
        # The PROXY protocol header is written into the tunnel as the CONNECT's 200 is sent (envoyproxy/
        # envoy source/extensions/upstreams/http/tcp/upstream_request.cc TcpUpstream::encodeHeaders):
        # the first bytes the internal listener's tcp_proxy gets, so it connects to BlackHoleCluster,
        # fails (UH) and closes right after the 200, before the client writes.
        tunnel["route"]["upgrade_configs"][0]["connect_config"]["proxy_protocol_config"] = {"version": "V2"}
        return [
            tunnel,
            {
                "name": BLOCK_ALL_VHOST,
                "match": {"prefix": "/"},
                "direct_response": {"status": 502},
                "metadata": {"filter_metadata": http_meta},
            },
        ]
    http_meta = _destination_metadata(Service("", PASSTHROUGH, "unknown"), unknown, host_is_service=True)
    tcp_meta = _destination_metadata(
        Service("unknown", PASSTHROUGH, "unknown"), unknown, host_is_service=False
    )
    routes: list[Resource] = []
    # The address book stands in for DNS: a route per known host:port sets the upstream address.
    for key, (ip, port) in sorted(table.addresses.items()):
        host, _, host_port = key.rpartition(":")
        target = [_header(ORIGINAL_DST_HEADER, f"{ip}:{port}")]
        connect = _cluster_route(ALLOW_ANY_VHOST, PASSTHROUGH, tcp_meta, headers=target, connect=True)
        connect["match"]["headers"] = [_authority(key)]
        routes.append(connect)
        for authority in (host, key) if host_port == "80" else (key,):
            route = _cluster_route(ALLOW_ANY_VHOST, PASSTHROUGH, http_meta, headers=target, retry=False)
            route["match"]["headers"] = [_authority(authority)]
            routes.append(_exchange_metadata(route, table.proxy))
    # Any other host: offline there is no DNS, so no upstream address: 503 UH, as a failed lookup.
    routes.append(_cluster_route(ALLOW_ANY_VHOST, PASSTHROUGH, tcp_meta, connect=True))
    routes.append(
        _exchange_metadata(_cluster_route(ALLOW_ANY_VHOST, PASSTHROUGH, http_meta, retry=False), table.proxy)
    )
    return routes


def _authority(value: str) -> Resource:
    return {"name": ":authority", "string_match": {"exact": value, "ignore_case": True}}


# A blackholed CONNECT goes through this internal listener, whose tcp_proxy to BlackHoleCluster
# closes the tunnel at once (UH) and records the istio_tcp_* series, as Istio's outbound tcp_proxy.
BLACKHOLE_TUNNEL = "blackhole_tunnel"


def _blackhole_tunnel_cluster() -> Resource:
    return _typed(
        "envoy.config.cluster.v3.Cluster",
        name=BLACKHOLE_TUNNEL,
        type="STATIC",
        connect_timeout="10s",
        load_assignment={
            "cluster_name": BLACKHOLE_TUNNEL,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": BLACKHOLE_TUNNEL}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        transport_socket={
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                transport_socket={
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": _typed("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"),
                },
            ),
        },
    )


def _blackhole_tunnel_listener(table: RouteTable) -> Resource:
    formats = _label_formats(table, SIDECAR, "outbound", tcp=True)
    # A TCP listener has no route: its destination labels are literal.
    formats.update(
        _destination_metadata(Service("unknown", BLACKHOLE, "unknown"), Workload(), False)[LABELS_NS]
    )
    tcp_proxy = _filter(
        "envoy.filters.network.tcp_proxy",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        stat_prefix=BLACKHOLE,
        cluster=BLACKHOLE,
        # Connect (and fail) on the first bytes: the PROXY protocol header the CONNECT route writes.
        upstream_connect_mode="ON_DOWNSTREAM_DATA",
        max_early_data_bytes=16384,
        access_log=[_stdout_logger(), _tcp_stats_logger(formats, nothing_moved=True)],
    )
    return _typed(
        "envoy.config.listener.v3.Listener",
        name=BLACKHOLE_TUNNEL,
        internal_listener={},
        filter_chains=[{"filters": [tcp_proxy]}],
    )


def _hcm(
    stat_prefix: str,
    route: str,
    access_log: list[Resource],
    *,
    server_name: str | None,
    http_filters: Iterable[Resource] = (),
    **extra: Any,
) -> Resource:
    config: Resource = {
        "stat_prefix": stat_prefix,
        "rds": _rds(route),
        "http_filters": [
            *http_filters,
            _filter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router"),
        ],
        "access_log": [*access_log, _build_logger()],
        # Tracing is on in Istio by default (meshConfig.enableTracing: istio/istio
        # pkg/config/mesh/mesh.go; pilot/pkg/networking/core/tracing.go configureSampling): with no
        # provider Envoy traces to nothing, but it handles x-envoy-decorator-operation as Istio's
        # proxies do (envoyproxy/envoy source/common/http/conn_manager_impl.cc): an OUTBOUND
        # listener (egress) sends the route's decorator operation upstream and drops the header from
        # the answer; an INBOUND one (ingress) drops it from the request and answers with its own.
        "tracing": {
            "client_sampling": {"value": 100.0},
            "random_sampling": {"value": 1.0},
            "overall_sampling": {"value": 100.0},
        },
        **extra,
    }
    if server_name:
        config["server_name"] = server_name
    return _filter("envoy.filters.network.http_connection_manager", _HCM, **config)


def _listener(name: str, addr: tuple[str, int], hcm: Resource, direction: str) -> Resource:
    """direction: INBOUND or OUTBOUND, as pilot marks its listeners: a gateway's is OUTBOUND
    (pilot/pkg/networking/core/listener.go buildGatewayListener), so Envoy traces it as egress."""
    return _typed(
        "envoy.config.listener.v3.Listener",
        name=name,
        address=_address(addr),
        filter_chains=[{"filters": [hcm]}],
        traffic_direction=direction,
    )


def _outbound_listener(table: RouteTable, addr: tuple[str, int]) -> Resource:
    http = _label_formats(table, SIDECAR, "outbound", tcp=False)
    tcp = _label_formats(table, SIDECAR, "outbound", tcp=True)
    hcm = _hcm(
        f"outbound_{addr[0]}_{addr[1]}",
        HTTP_PROXY_ROUTE,
        [
            _stdout_logger(_NOT_BLACKHOLED_CONNECT),
            _http_stats_logger(http, _NOT_CONNECT_FILTER),
            _tcp_stats_logger(tcp, _CONNECT_FILTER),
        ],
        server_name=None,  # outbound keeps Envoy's own "envoy"
        http_protocol_options={"allow_absolute_url": True},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        use_remote_address=False,
        # A connection Envoy ends is closed once written, not after waiting up to 1 s for the client to
        # close first (Envoy's default delayed close): a blackholed CONNECT tunnel stands for a TLS
        # connection Istio's tcp_proxy closes at once, with no connection manager in front.
        delayed_close_timeout="0s",
    )
    return _listener(f"{addr[0]}_{addr[1]}", addr, hcm, "OUTBOUND")


# --------------------------------------------------------------------------------------------------
# Sidecar inbound (pilot/pkg/networking/core/listener_inbound.go, route/route.go BuildDefaultHTTPInboundRoute)


def _peer_request_rules(namespace: str) -> list[Resource]:
    """header_to_metadata rules that read the calling proxy's identity and remove its headers; a
    caller without a proxy is "unknown" (revision "latest") and its connection "none"."""
    rules: list[Resource] = [
        {
            "header": f"{PEER_HEADER_PREFIX}principal",
            "on_header_present": {
                "metadata_namespace": namespace,
                "key": "connection_security_policy",
                "value": "mutual_tls",
            },
            "on_header_missing": {
                "metadata_namespace": namespace,
                "key": "connection_security_policy",
                "value": "none",
            },
        },
    ]
    for suffix, _ in _WORKLOAD_FIELDS:
        default = "latest" if suffix == "canonical_revision" else "unknown"
        rules.append(
            {
                "header": PEER_HEADER_PREFIX + suffix.replace("_", "-"),
                "on_header_present": {"metadata_namespace": namespace, "key": suffix, "type": "STRING"},
                "on_header_missing": {"metadata_namespace": namespace, "key": suffix, "value": default},
                "remove": True,
            }
        )
    return rules


def _peer_identity_headers(workload: Workload) -> list[Resource]:
    """This proxy's identity for the peer: one header per field (empty ones left out)."""
    return [
        _header(PEER_HEADER_PREFIX + suffix.replace("_", "-"), value)
        for suffix, attr in _WORKLOAD_FIELDS
        if (value := getattr(workload, attr)) and value != "unknown"
    ]


def _mx_headers(workload: Workload, kind: str) -> list[Resource]:
    return [_header(k, v) for k, v in peer_headers(workload, kind).items()]


def _inbound_route(table: RouteTable) -> Resource:
    cluster = _inbound_cluster_name(table)
    service, port = _own_service(table)
    proxy = table.proxy
    # XFCC as Istio's inbound sets it from the peer certificate (forward_client_cert_details
    # APPEND_FORWARD, set_current_client_cert_details uri): By= this workload, URI= the peer. No TLS
    # here, so it is built from the peer principal header, only when a mesh peer sent one.
    xfcc = _peer_label(DOWNSTREAM_PEER_NS, "xfcc")
    return _typed(
        "envoy.config.route.v3.RouteConfiguration",
        name=cluster,
        validate_clusters=False,
        virtual_hosts=[
            {
                "name": f"inbound|http|{port}",
                "domains": ["*"],
                "routes": [
                    {
                        "name": DEFAULT_ROUTE,
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": cluster,
                            "timeout": "0s",
                            "retry_policy": _retry(INBOUND_RETRY_ON),
                        },
                        "decorator": {"operation": f"{service.host}:{port}/*"},
                        "request_headers_to_add": [
                            _header("x-forwarded-client-cert", xfcc, "APPEND_IF_EXISTS_OR_ADD")
                        ],
                        "request_headers_to_remove": list(MX_HEADERS),
                        "response_headers_to_add": [
                            *_mx_headers(proxy, SIDECAR),
                            *_peer_identity_headers(proxy),
                        ],
                    }
                ],
            }
        ],
    )


def _inbound_listener(table: RouteTable, addr: tuple[str, int]) -> Resource:
    formats = _label_formats(table, SIDECAR, "inbound", tcp=False)
    principal_header = f"{PEER_HEADER_PREFIX}principal"
    rules = _peer_request_rules(DOWNSTREAM_PEER_NS)
    rules.insert(
        1,
        {
            "header": principal_header,
            "on_header_present": {
                "metadata_namespace": DOWNSTREAM_PEER_NS,
                "key": "xfcc",
                "type": "STRING",
                "regex_value_rewrite": {
                    "pattern": {"regex": "^(.*)$"},
                    # Istio sets subject, URI and DNS (proxy_headers.go); a workload certificate's
                    # subject is empty, hence Subject="" (there is no certificate to hash here).
                    "substitution": f'By={table.proxy.principal};Subject="";URI=\\1',
                },
            },
        },
    )
    hcm = _hcm(
        "inbound_0.0.0.0_80",
        _inbound_cluster_name(table),
        [_stdout_logger(), _http_stats_logger(formats)],
        server_name=ISTIO_SERVER,
        http_filters=[
            _filter(
                "envoy.filters.http.header_to_metadata",
                "envoy.extensions.filters.http.header_to_metadata.v3.Config",
                request_rules=rules,
            )
        ],
        forward_client_cert_details="APPEND_FORWARD",
        use_remote_address=False,
    )
    return _listener("virtualInbound", addr, hcm, "INBOUND")


# --------------------------------------------------------------------------------------------------
# Gateway (pilot/pkg/networking/core/gateway.go)


def _gateway_route(table: RouteTable, listen_port: int) -> Resource:
    """http.<port>: a virtual host per VirtualService host; no match is Envoy's 404 NR."""
    by_host: dict[str, list[Resource]] = {}
    for route in table.ingress_routes:
        for host in route.hosts:
            by_host.setdefault(host, []).append(_ingress_route(table, route))
    vhosts = [
        {"name": f"{host}:80", "domains": [host], "routes": routes, "include_request_attempt_count": True}
        for host, routes in by_host.items()
    ]
    # gateway.go: with no virtual host, one "blackhole:<port>" without routes (404 NR to all).
    return _typed(
        "envoy.config.route.v3.RouteConfiguration",
        name=f"http.{listen_port}",
        virtual_hosts=vhosts or [{"name": "blackhole:80", "domains": ["*"], "routes": []}],
        validate_clusters=False,
        ignore_port_in_host_matching=True,
    )


def _ingress_route(table: RouteTable, route: IngressRoute) -> Resource:
    match: Resource = {"path": route.path} if route.match == "exact" else {"prefix": route.path or "/"}
    path = route.path if route.match == "exact" else (route.path or "/") + "*"
    _, port, _, host = route.cluster.split("|", 3)  # outbound|<port>|<subset>|<host>
    gw = table.proxy
    operation = f"{host}:{port}{path}"
    return {
        "name": f"{route.virtual_service}",
        "match": match,
        "route": {"cluster": route.cluster, "timeout": "0s", "retry_policy": _retry(DEFAULT_RETRY_ON)},
        # route/route.go GetRouteOperation: <host>:<port><path> of the destination cluster.
        "decorator": {"operation": operation},
        # The gateway's upstream connection to a mesh Service is (stand-in) mutual TLS.
        "metadata": {
            "filter_metadata": _destination_metadata(
                route.service, None, False, source_principal=gw.principal
            )
        },
        # A client's own peer headers are dropped first (Envoy removes before it adds).
        "request_headers_to_remove": [*MX_HEADERS, *PEER_HEADERS],
        "request_headers_to_add": [*_mx_headers(gw, "router"), *_peer_identity_headers(gw)],
        "response_headers_to_remove": list(MX_HEADERS),
    }


def _gateway_listener(table: RouteTable, addr: tuple[str, int]) -> Resource:
    formats = _label_formats(table, GATEWAY, "gateway", tcp=False)
    response_rules = []
    for rule in _peer_request_rules(UPSTREAM_PEER_NS)[1:]:
        response_rules.append(rule)
    hcm = _hcm(
        f"outbound_0.0.0.0_{addr[1]}",
        f"http.{addr[1]}",
        [_stdout_logger(), _http_stats_logger(formats)],
        server_name=ISTIO_SERVER,
        http_filters=[
            _filter(
                "envoy.filters.http.header_to_metadata",
                "envoy.extensions.filters.http.header_to_metadata.v3.Config",
                response_rules=response_rules,
            )
        ],
        # Gateways see the client's address (gateway.go: useRemoteAddress true).
        use_remote_address=True,
        forward_client_cert_details="SANITIZE_SET",
    )
    return _listener(f"0.0.0.0_{addr[1]}", addr, hcm, "OUTBOUND")

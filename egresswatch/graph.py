"""The service graph, built the way Kiali builds its graphs, from Kiali's own queries.

Kiali v2.27 (the Istio 1.31 addon) is the reference. Its UI opens on the versioned-app graph with
service nodes shown (frontend/src/reducers/GraphDataState.ts: graphType VERSIONED_APP,
showServiceNodes true) and asks for ambient "total" traffic, so every query selects
reporter=~"waypoint|source" or reporter=~"waypoint|destination" (graph/telemetry/istio/util/util.go
GetReporter; graph/options.go defaultAmbientTraffic). egresswatch draws the same by default; the
workload graph (Kiali's graphType=workload) is the option.

Sources checked (kiali/kiali at v2.27.0):
- graph/telemetry/istio/istio.go, buildNamespaceTrafficMap: the queries (HTTP: 0 "unserviced incoming",
  2 "incoming, destination-reported", 3 "outgoing, source-reported"; TCP the same three on
  istio_tcp_received_bytes_total, which is Kiali's default "sent" TCP rate because "L4 telemetry is
  backwards", istio/istio#32399), the "> 0" idle filter, skipping series that lack the canonical
  labels, service-node injection (never for PassthroughCluster, kiali#4488), and de-duplication of
  series reported by both proxies (edgeTSHash: metric, source, dest, code, flags, host).
- graph/types.go, Id/NewNodeExplicit: the "unknown" source node (namespace, workload and app all
  "unknown"), service nodes for destinations without a workload (PassthroughCluster and
  BlackHoleCluster are service nodes in namespace "unknown", flagged isEgressCluster); in the
  versioned-app graph, app nodes (vapp_<cluster>_<ns>_<workload>) for anything with a canonical
  service; in the workload graph, workload nodes.
- graph/telemetry/istio/util/util.go: IsBadSourceTelemetry, IsBadDestTelemetry, HandleResponseCode
  ("0" -> "-"), destination_cluster defaulting to the source's.
- config/config.go AddHealthDefault + business/health_calculator.go applyThresholds: edge health.
- graph/telemetry/istio/appender/service_entry.go: Kiali merges a ServiceEntry's hosts into one node
  named after the ServiceEntry, read from the Kubernetes API.

The ServiceEntry node. Since Istio 1.30 a DNS ServiceEntry without endpoints gets an endpoint named
after it (docs/istio-facts.md), so its series carry destination_workload and
destination_canonical_service = the ServiceEntry's name: Kiali's queries then give a node named after
the ServiceEntry (httpbin-ext) behind an injected service node per host (httpbin.org). egresswatch marks
that node isServiceEntry and lists its hosts (the destination_service values of the traffic into it).
Kiali itself draws it as an app (or workload) node, because its ServiceEntry appender only merges
service nodes that are not injected; egresswatch has no Kubernetes API to ask, and the node is what the
egress question is about. A ServiceEntry whose series name no workload (resolution NONE or STATIC) stays
one service node per host, flagged isServiceEntry and named after the host (the ServiceEntry's name is
not in the metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from egresswatch import classify, promql
from egresswatch.errors import UsageError
from egresswatch.promql import Matcher
from egresswatch.report import check_not_empty
from egresswatch.source import Sample, Source

UNKNOWN = "unknown"
# Kiali's graph types that egresswatch draws (graph/types.go GraphTypeVersionedApp, GraphTypeWorkload).
VERSIONED_APP, WORKLOAD = "versionedApp", "workload"
GRAPH_TYPES = (VERSIONED_APP, WORKLOAD)
DEFAULT_GRAPH_TYPE = VERSIONED_APP
KIALI_HTTP_BY = (
    "source_cluster",
    "source_workload_namespace",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_cluster",
    "destination_service_namespace",
    "destination_service",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
)
# Kiali's TCP query groups by the same labels less the HTTP-only ones, with "app" first.
KIALI_TCP_BY = (
    "app",
    *(
        label
        for label in KIALI_HTTP_BY
        if label not in ("request_protocol", "response_code", "grpc_response_status")
    ),
)
# Labels Kiali requires on every series (populateTrafficMap skips the series otherwise).
REQUIRED = (
    "source_workload_namespace",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_service_namespace",
    "destination_service",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "response_flags",
)

# Health statuses, worst last (Kiali's HealthStatusPriority order for these three).
HEALTHY, DEGRADED, FAILURE = "Healthy", "Degraded", "Failure"
_PRIORITY = {"NA": 0, HEALTHY: 1, DEGRADED: 2, FAILURE: 3}


@dataclass(frozen=True)
class Tolerance:
    code: str  # regex; Kiali writes "5XX" and turns each X into \d
    protocol: str  # regex
    degraded: float  # percent; 0 means any error is degraded
    failure: float  # percent; 0 means never failure


# Kiali's defaults: config/config.go AddHealthDefault().
DEFAULT_TOLERANCES = (
    Tolerance(r"^5\d\d$", "http", degraded=0, failure=10),
    Tolerance(r"^4\d\d$", "http", degraded=10, failure=20),
    Tolerance(r"^[1-9]$|^1[0-6]$", "grpc", degraded=0, failure=10),
    Tolerance(r"^-$", "http|grpc", degraded=0, failure=10),
)


def apply_thresholds(error_percent: float, degraded: float, failure: float) -> str:
    """business/health_calculator.go applyThresholds: no errors healthy; >= failure (when set) failure;
    >= degraded (0: any error) degraded."""
    if error_percent <= 0:
        return HEALTHY
    if failure > 0 and error_percent >= failure:
        return FAILURE
    if error_percent >= degraded:
        return DEGRADED
    return HEALTHY


def edge_health(protocol: str, responses: dict[str, dict[str, float]]) -> str:
    """The worst status over the default tolerances that match the edge's protocol."""
    codes = {code: sum(flags.values()) for code, flags in responses.items()}
    total = sum(codes.values())
    worst = "NA"
    for tol in DEFAULT_TOLERANCES:
        if not re.fullmatch(tol.protocol, protocol) or total <= 0:
            continue
        errors = sum(v for code, v in codes.items() if re.search(tol.code, code))
        status = apply_thresholds(errors / total * 100, tol.degraded, tol.failure)
        if _PRIORITY[status] > _PRIORITY[worst]:
            worst = status
    return HEALTHY if worst == "NA" and total > 0 else worst


def is_ok(value: str) -> bool:
    """graph.IsOK: set and not "unknown"."""
    return value not in ("", UNKNOWN)


def is_ok_version(value: str) -> bool:
    """graph.IsOKVersion: IsOK and not "latest" (the canonical revision of an unversioned workload)."""
    return is_ok(value) and value != "latest"


def is_http_error(code: str) -> bool:
    """What Kiali counts in an edge's error percentage: no response ("-"), 4xx and 5xx."""
    return code == "-" or code[:1] in ("4", "5")


@dataclass
class Node:
    id: str
    node_type: str  # app | workload | service | unknown
    cluster: str
    namespace: str
    workload: str = ""
    app: str = ""
    version: str = ""
    service: str = ""
    is_egress_cluster: bool = False
    is_service_entry: bool = False
    is_injected: bool = False
    is_outside: bool = False
    is_root: bool = False
    health: str = "NA"
    hosts: set[str] = field(default_factory=set)  # destination_service values of traffic into the node

    @property
    def name(self) -> str:
        if self.node_type == "app":
            return self.app
        if self.node_type == "workload":
            return self.workload
        if self.node_type == "service":
            return self.service
        return UNKNOWN

    @property
    def kind(self) -> str:
        """What the node stands for: PassthroughCluster, BlackHoleCluster, ServiceEntry, service, workload
        or unknown (the source of traffic from outside the mesh)."""
        if self.is_egress_cluster:
            return self.service
        if self.is_service_entry:
            return classify.SERVICE_ENTRY
        return self.node_type

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "nodeType": self.node_type,
            "kind": self.kind,
            "cluster": self.cluster,
            "namespace": self.namespace,
            "workload": self.workload,
            "app": self.app,
            "version": self.version,
            "service": self.service,
            "isEgressCluster": self.is_egress_cluster,
            "isServiceEntry": self.is_service_entry,
            "isInjected": self.is_injected,
            "isOutside": self.is_outside,
            "isRoot": self.is_root,
            "healthStatus": self.health,
            "hosts": sorted(self.hosts),
        }


@dataclass
class Edge:
    source: str
    dest: str
    protocol: str
    rate: float = 0.0  # requests/s (http, grpc) or bytes/s (tcp)
    responses: dict[str, dict[str, float]] = field(default_factory=dict)  # code -> flags -> rate
    hosts: set[str] = field(default_factory=set)
    seen: set[tuple[str, ...]] = field(default_factory=set)
    health: str = "NA"

    @property
    def error_percent(self) -> float:
        if self.protocol == "tcp" or self.rate <= 0:
            return 0.0
        errors = sum(sum(f.values()) for code, f in self.responses.items() if is_http_error(code))
        return errors / self.rate * 100

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.dest,
            "protocol": self.protocol,
            "rate": self.rate,
            "errorPercent": round(self.error_percent, 3),
            "healthStatus": self.health,
            "responses": self.responses,
            "hosts": sorted(self.hosts),
        }


@dataclass
class Graph:
    namespace: str
    window: str
    nodes: dict[str, Node]
    edges: list[Edge]
    source: dict[str, Any]
    queries: list[str]
    rates: str = "kiali"  # how edge rates were computed: "kiali" (rate()) or "counts" (count / window)
    notes: list[str] = field(default_factory=list)
    graph_type: str = DEFAULT_GRAPH_TYPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "graphType": self.graph_type,
            "window": self.window,
            "source": self.source,
            "rates": self.rates,
            "notes": self.notes,
            "nodes": [n.to_dict() for n in self.nodes.values()],
            "edges": [e.to_dict() for e in self.edges],
            "queries": self.queries,
        }


def node_id(
    cluster: str,
    service_ns: str,
    service: str,
    workload_ns: str,
    workload: str,
    app: str,
    version: str = "",
    graph_type: str = DEFAULT_GRAPH_TYPE,
) -> tuple[str, str]:
    """graph.Id: (id, node type) for the versioned-app or the workload graph."""
    namespace = workload_ns if is_ok(workload_ns) else service_ns
    if namespace == UNKNOWN and workload == UNKNOWN and app == UNKNOWN and service == "":
        return f"{cluster}_unknown_source", "unknown"
    if workload == UNKNOWN and app == UNKNOWN and service == UNKNOWN:
        return f"svc_{cluster}_{namespace}_unknown", "service"
    if graph_type == WORKLOAD:
        if not is_ok(workload):
            return f"svc_{cluster}_{namespace}_{service if is_ok(service) else UNKNOWN}", "service"
        return f"wl_{cluster}_{namespace}_{workload}", "workload"
    if is_ok(app):
        if is_ok(workload):
            return f"vapp_{cluster}_{namespace}_{workload}", "app"
        if is_ok_version(version):
            return f"vapp_{cluster}_{namespace}_{app}_{version}", "app"
        return f"app_{cluster}_{namespace}_{app}", "app"
    if is_ok(workload):
        return f"wl_{cluster}_{namespace}_{workload}", "workload"
    return f"svc_{cluster}_{namespace}_{service}", "service"


_IP_SERVICE = re.compile(r"^\d+\.\d+\.\d+\.\d+(:\d+)?$")


class _Builder:
    def __init__(self, namespace: str, graph_type: str) -> None:
        self.namespace = namespace
        self.graph_type = graph_type
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}

    def add_node(
        self,
        cluster: str,
        service_ns: str,
        service: str,
        workload_ns: str,
        workload: str,
        app: str,
        version: str = "",
    ) -> Node:
        nid, ntype = node_id(
            cluster, service_ns, service, workload_ns, workload, app, version, self.graph_type
        )
        if nid not in self.nodes:
            ns = workload_ns if is_ok(workload_ns) else service_ns
            node = Node(nid, ntype, cluster, ns)
            # NewNodeExplicit keeps, per node type, the fields that name it.
            if ntype == "app":
                node.app, node.workload, node.version = app, workload, version
            elif ntype == "workload":
                node.workload = workload
                node.app = "" if app == UNKNOWN else app
                node.version = "" if version == UNKNOWN else version
            elif ntype == "service":
                node.service = service or UNKNOWN
                node.is_egress_cluster = service in (classify.PASSTHROUGH, classify.BLACKHOLE)
            self.nodes[nid] = node
        return self.nodes[nid]

    def add_edge(
        self,
        source: Node,
        dest: Node,
        protocol: str,
        value: float,
        code: str,
        flags: str,
        host: str,
        dedup: tuple[str, ...],
    ) -> bool:
        edge = self.edges.setdefault((source.id, dest.id, protocol), Edge(source.id, dest.id, protocol))
        if dedup in edge.seen:
            return False  # the same series reported by both proxies: count it once, as Kiali does
        edge.seen.add(dedup)
        edge.rate += value
        if protocol != "tcp":
            edge.responses.setdefault(code, {}).setdefault(flags, 0.0)
            edge.responses[code][flags] += value
        if host:
            edge.hosts.add(host)
            dest.hosts.add(host)
        return True

    def populate(self, samples: list[Sample], metric: str, tcp: bool) -> None:
        for s in samples:
            lab = s.labels
            if any(not lab.get(k) for k in REQUIRED) or (not tcp and not lab.get("request_protocol")):
                continue  # Kiali: "Skipping ..., missing expected TS labels"
            src_cluster = lab.get("source_cluster") or UNKNOWN
            dst_cluster = lab.get("destination_cluster") or UNKNOWN
            src_ns, src_wl, src_app = (
                lab["source_workload_namespace"],
                lab["source_workload"],
                lab["source_canonical_service"],
            )
            if is_ok(src_ns) and not is_ok(src_wl) and not is_ok(src_app):
                continue  # IsBadSourceTelemetry case 1
            dst_svc_ns, dst_svc, dst_svc_name = (
                lab["destination_service_namespace"],
                lab["destination_service"],
                lab["destination_service_name"],
            )
            src_ver = lab["source_canonical_revision"]
            dst_wl_ns, dst_wl, dst_app, dst_ver = (
                lab["destination_workload_namespace"],
                lab["destination_workload"],
                lab["destination_canonical_service"],
                lab["destination_canonical_revision"],
            )
            if not is_ok(dst_cluster) and is_ok(src_cluster) and is_ok(dst_svc_ns):
                dst_cluster = src_cluster  # HandleDestination, istio#29373
            if (
                not is_ok(dst_wl)
                and is_ok(dst_svc)
                and dst_svc == dst_svc_name
                and _IP_SERVICE.match(dst_svc_name)
            ):
                continue  # IsBadDestTelemetry case 1
            protocol = "tcp" if tcp else lab["request_protocol"]
            code = "" if tcp else lab.get("response_code", "")
            if code == "0":
                code = "-"  # HandleResponseCode: no response
            elif protocol == "grpc" and not is_http_error(code) and lab.get("grpc_response_status"):
                code = lab["grpc_response_status"]
            flags = lab["response_flags"]
            inject = False
            if is_ok(dst_svc_name) and dst_svc_name != classify.PASSTHROUGH:
                dest_id = (dst_cluster, dst_svc_ns, dst_svc_name, dst_wl_ns, dst_wl, dst_app, dst_ver)
                _, dest_type = node_id(*dest_id, self.graph_type)
                inject = dest_type != "service"
            source = self.add_node(src_cluster, src_ns, "", src_ns, src_wl, src_app, src_ver)
            dest = self.add_node(dst_cluster, dst_svc_ns, dst_svc_name, dst_wl_ns, dst_wl, dst_app, dst_ver)
            dedup = (metric, source.id, dest.id, code, flags, dst_svc)
            if inject:
                svc = self.add_node(dst_cluster, dst_svc_ns, dst_svc_name, "", "", "")
                svc.is_injected = True
                if self.add_edge(source, svc, protocol, s.value, code, flags, dst_svc, dedup):
                    self.add_edge(svc, dest, protocol, s.value, code, flags, dst_svc, dedup)
            else:
                self.add_edge(source, dest, protocol, s.value, code, flags, dst_svc, dedup)

    def finish(self) -> tuple[dict[str, Node], list[Edge]]:
        for node in self.nodes.values():
            # The ServiceEntry node (see the module's docstring): the workload named after a ServiceEntry,
            # reached only through its hosts, or, when its series name no workload, the host's own service
            # node. A host is a ServiceEntry's when it is not a Kubernetes service (<name>.<ns>.svc...).
            if node.node_type in ("app", "workload"):
                candidate = True
            else:
                candidate = (
                    node.node_type == "service"
                    and not node.is_injected
                    and not node.is_egress_cluster
                    and node.service != UNKNOWN
                )
            if candidate and node.hosts:
                node.is_service_entry = all(
                    classify.kind_of(h, h) == classify.SERVICE_ENTRY for h in node.hosts
                )
            # MarkOutsideOrInaccessible: nodes of other namespaces (not the unknown ones) are outsiders.
            node.is_outside = node.namespace not in (self.namespace, UNKNOWN)
        edges = list(self.edges.values())
        targets = {e.dest for e in edges}
        for node in self.nodes.values():
            node.is_root = node.id not in targets  # MarkTrafficGenerators: only outgoing edges
        for e in edges:
            e.health = "NA" if e.protocol == "tcp" else edge_health(e.protocol, e.responses)
        # Node border: the worst of the node's HTTP edges (inbound for services, both ways for workloads).
        for e in edges:
            if e.health == "NA":
                continue
            for nid in (e.dest, e.source):
                node = self.nodes[nid]
                if nid == e.source and node.node_type != "workload":
                    continue
                if _PRIORITY[e.health] > _PRIORITY[node.health]:
                    node.health = e.health
        return self.nodes, sorted(edges, key=lambda e: (e.source, e.dest, e.protocol))


def kiali_queries(namespace: str) -> list[tuple[str, list[Matcher], tuple[str, ...], bool]]:
    """Kiali's namespace-graph queries for a namespace that is not ambient, with the UI's default ambient
    traffic ("total": waypoint reports count too, no app!="ztunnel" filter): (metric, matchers, group
    by, is_tcp)."""
    src = promql.re_eq("reporter", "waypoint|source")
    dst = promql.re_eq("reporter", "waypoint|destination")
    unserviced = [
        promql.ne("source_workload_namespace", namespace),
        promql.eq("destination_workload_namespace", UNKNOWN),
        promql.eq("destination_workload", UNKNOWN),
        promql.re_eq("destination_service", rf"^.+\.{re.escape(namespace)}\..+$"),
    ]
    out = []
    for metric, by, tcp in (
        (promql.REQUESTS, KIALI_HTTP_BY, False),
        (promql.TCP_RECEIVED, KIALI_TCP_BY, True),
    ):
        out.append((metric, [src, *unserviced], by, tcp))
        out.append((metric, [dst, promql.eq("destination_workload_namespace", namespace)], by, tcp))
        out.append((metric, [src, promql.eq("source_workload_namespace", namespace)], by, tcp))
    return out


RATES = ("kiali", "counts")
COUNTS_FALLBACK_NOTE = (
    "Kiali's rate() query saw no growth in the window (rate() needs two scrapes with different values: a "
    "short burst of requests that all landed before a series' first scrape has none), so edge rates are "
    "counts / window instead, from the same selectors (the report's counting query)."
)


def _fetch(source: Source, namespace: str, rates: str) -> list[tuple[list[Sample], str, bool]]:
    """The samples of Kiali's queries: (samples, metric, is_tcp) per query."""
    seconds = source.seconds() or 1.0
    out = []
    for metric, matchers, by, tcp in kiali_queries(namespace):
        if rates == "kiali":
            samples = source.rates(metric, matchers, by)
        else:
            samples = [Sample(s.labels, s.value / seconds) for s in source.counts(metric, matchers, by)]
        out.append((samples, metric, tcp))
    return out


def _builder(namespace: str, graph_type: str, fetched: list[tuple[list[Sample], str, bool]]) -> _Builder:
    builder = _Builder(namespace, graph_type)
    for samples, metric, tcp in fetched:
        builder.populate(samples, metric, tcp)
    return builder


def build_graphs(
    source: Source, namespace: str, rates: str = "kiali", graph_types: tuple[str, ...] = GRAPH_TYPES
) -> dict[str, Graph]:
    """Kiali's namespace graph of each type, from one run of its queries. rates="kiali": edge rates from
    Kiali's rate() queries; if those find nothing while the window has traffic, the counts below are used
    instead (and a note says so). rates="counts": count / window, which also sees bursts that rate()
    misses (what the demo wants)."""
    if rates not in RATES:
        raise UsageError(f"--rates must be one of {', '.join(RATES)}")
    unknown = [t for t in graph_types if t not in GRAPH_TYPES]
    if unknown:
        raise UsageError(f"graph type {unknown[0]!r} is not one of {', '.join(GRAPH_TYPES)}")
    first_query = len(source.queries)
    fetched = _fetch(source, namespace, rates)
    notes = []
    if rates == "kiali" and not _builder(namespace, WORKLOAD, fetched).edges:
        counted = _fetch(source, namespace, "counts")
        if _builder(namespace, WORKLOAD, counted).edges:
            fetched, rates, notes = counted, "counts", [COUNTS_FALLBACK_NOTE]
    graphs = {}
    for graph_type in graph_types:
        nodes, edges = _builder(namespace, graph_type, fetched).finish()
        if not edges:
            check_not_empty(source, namespace, [])
        window = source.describe().get("window") or f"{source.seconds() or 0:.0f}s"
        graphs[graph_type] = Graph(
            namespace,
            window,
            nodes,
            edges,
            source.describe(),
            source.queries[first_query:],
            rates,
            list(notes),
            graph_type,
        )
    return graphs


def build_graph(
    source: Source, namespace: str, rates: str = "kiali", graph_type: str = DEFAULT_GRAPH_TYPE
) -> Graph:
    """Kiali's namespace graph of one type (versioned-app by default, as Kiali's UI opens)."""
    return build_graphs(source, namespace, rates, (graph_type,))[graph_type]

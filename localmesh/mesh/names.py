"""Names the mesh gives things: namespaces, the cluster ID, outbound policy and cluster constants,
workload and service identities, SPIFFE principals and canonical names, the ingress gateway.

A leaf: it imports nothing from localmesh, and every other layer may import it.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

# Istio's config root namespace (meshConfig.rootNamespace default): a Sidecar there is the mesh-wide default.
ROOT_NAMESPACE = "istio-system"
# kubectl puts resources without metadata.namespace into the context's namespace, normally "default".
DEFAULT_NAMESPACE = "default"
# Kubernetes DNS suffix and Istio's default trust domain (meshConfig.trustDomain).
CLUSTER_DOMAIN = "cluster.local"
# The cluster ID Istio reports as source_cluster/destination_cluster (ISTIO_META_CLUSTER_ID default).
CLUSTER_ID = "Kubernetes"
# The Istio release the local mesh emulates (the one scripts/versions.env pins for the cluster path;
# a test keeps the two equal): the proxies' istio_build metric names it.
ISTIO_VERSION = "1.31.0"
# Option-specific resources carry this label; switching options deletes those the new overlay lacks.
OPTION_LABEL = "egress-lab/option-resource"
OPTION_SELECTOR = f"{OPTION_LABEL}=true"

PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True)
class Workload:
    """A workload's identity as Istio's metrics name it (unknown peers use the defaults).

    A proxy reports its own app and version labels as they are, "" when the pod has none, and a
    peer's missing ones as "unknown" (envoyproxy/envoy contrib/istio/filters/http/istio_stats
    istio_stats.cc: `context_.app_version_` against `peer->app_version_.empty() ? unknown_`).
    """

    name: str = "unknown"
    namespace: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"
    canonical_service: str = "unknown"
    canonical_revision: str = "latest"
    principal: str = "unknown"
    cluster: str = "unknown"


UNKNOWN = Workload()


@dataclass(frozen=True)
class Service:
    """The destination_service, destination_service_name and destination_service_namespace labels."""

    host: str
    name: str
    namespace: str


# Istio's ingress gateway as its charts install it (istio/istio manifests/charts/gateways/istio-ingress:
# values.yaml labels app/istio; templates/deployment.yaml sets service.istio.io/canonical-name to the
# gateway's name, canonical-revision "latest" when it has no version label, serviceAccountName
# "<name>-service-account", and ISTIO_META_CLUSTER_ID defaulting to "Kubernetes").
GATEWAY_NAMESPACE = "istio-system"
GATEWAY_LABELS: Mapping[str, str] = types.MappingProxyType(
    {"app": "istio-ingressgateway", "istio": "ingressgateway"}
)
INGRESS_GATEWAY = Workload(
    name="istio-ingressgateway",
    namespace=GATEWAY_NAMESPACE,
    app="istio-ingressgateway",
    # No version label: istio_stats writes a proxy's own labels as they are, so the gateway's own
    # series carry source_version="" (a peer's missing label is "unknown" instead).
    version="",
    canonical_service="istio-ingressgateway",
    canonical_revision="latest",
    principal="spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    cluster="Kubernetes",
)


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """Istio's canonical service name and revision for a workload's labels.

    istio/istio pkg/kube/labels/labels.go CanonicalService: name from service.istio.io/canonical-name,
    then app.kubernetes.io/name, then app, else the workload name; revision from
    service.istio.io/canonical-revision, then app.kubernetes.io/version, then version, else "latest".
    """
    name = next(
        (
            labels[k]
            for k in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
            if k in labels
        ),
        workload_name,
    )
    revision = next(
        (
            labels[k]
            for k in ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
            if k in labels
        ),
        "latest",
    )
    return name, revision


def spiffe_principal(namespace: str, service_account: str, trust_domain: str = CLUSTER_DOMAIN) -> str:
    """Istio's workload identity: spiffe://<trust domain>/ns/<namespace>/sa/<service account>."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def resolve_host(host: str, namespace: str) -> str:
    """A destination host as Istio reads it in a VirtualService of `namespace`: a short name is a
    Kubernetes Service in that namespace (pilot/pkg/model/virtualservice.go
    resolveVirtualServiceShortnames)."""
    host = host.lower().rstrip(".")
    if "." not in host and "*" not in host:
        return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"
    return host


# Istio's standard metric labels in the order istio_stats pushes its tags, which is the order Envoy
# exports them (envoyproxy/envoy contrib/istio/filters/http/istio_stats/source/istio_stats.cc).
# Both data planes' metrics use these lists.
PEER_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
)
HTTP_LABELS: tuple[str, ...] = (
    *PEER_LABELS,
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
TCP_LABELS: tuple[str, ...] = (*PEER_LABELS, "response_flags", "connection_security_policy")

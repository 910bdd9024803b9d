"""Istio's standard metric labels in the proxy's order, written out from docs/istio-facts.md (istio/proxy
istio_stats), and the bundle's workloads as those labels name them: the tests' own copy, so they
check the code instead of trusting its constants."""

ISTIO_LABELS = (
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
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)

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

"""What each egress option must show: docs/istio-facts.md's table, as data the demo and the tests
check against.

For each option: what the recipe site answers when a recipe is created, and the one
istio_requests_total series (reporter="source", source_workload="idgen") that idgen's calls to
httpbin.org must land in. Any other series growing during the step is a mismatch too.
"""

from __future__ import annotations

from dataclasses import dataclass

from localmesh.stack.topology import EXTERNAL_HOST, OPTIONS

# No workload behind PassthroughCluster and BlackHoleCluster: the destination labels are "unknown".
_NO_WORKLOAD = {
    "destination_workload": "unknown",
    "destination_workload_namespace": "unknown",
    "destination_canonical_service": "unknown",
    "destination_cluster": "unknown",
}
# Istio 1.30+ gives the DNS ServiceEntry httpbin-ext (no endpoints) an endpoint named after it, in its
# namespace and the cluster's (istio/istio pilot/pkg/serviceregistry/serviceentry/conversion.go).
_SERVICE_ENTRY_ENDPOINT = {
    "destination_workload": "httpbin-ext",
    "destination_workload_namespace": "recipes",
    "destination_canonical_service": "httpbin-ext",
    "destination_cluster": "Kubernetes",
}


@dataclass(frozen=True)
class Expectation:
    option: str
    summary: str  # one line: the mesh setting and what happens
    site_status: int  # what POST /api/recipes answers
    site_error: str | None  # the JSON "error" code on failure
    series: dict[str, str]  # labels the egress series must have (a subset of Istio's full set)


EXPECTATIONS = {
    "passthrough": Expectation(
        "passthrough",
        "ALLOW_ANY, no ServiceEntry: the sidecar passes the call on through PassthroughCluster",
        201,
        None,
        {
            **_NO_WORKLOAD,
            "destination_service": EXTERNAL_HOST,
            "destination_service_name": "PassthroughCluster",
            "destination_service_namespace": "unknown",
            "response_code": "200",
            "response_flags": "-",
        },
    ),
    "blackhole": Expectation(
        "blackhole",
        "REGISTRY_ONLY, no ServiceEntry: the sidecar answers 502 itself (BlackHoleCluster)",
        502,
        "egress_blocked",
        {
            **_NO_WORKLOAD,
            "destination_service": EXTERNAL_HOST,
            "destination_service_name": "BlackHoleCluster",
            "destination_service_namespace": "unknown",
            "response_code": "502",
            "response_flags": "-",
        },
    ),
    "serviceentry": Expectation(
        "serviceentry",
        "REGISTRY_ONLY + ServiceEntry httpbin-ext: httpbin.org is a registered host with its own telemetry",
        201,
        None,
        {
            **_SERVICE_ENTRY_ENDPOINT,
            "destination_service": EXTERNAL_HOST,
            "destination_service_name": EXTERNAL_HOST,
            "destination_service_namespace": "recipes",
            "response_code": "200",
            "response_flags": "-",
        },
    ),
}
# Every option of manifests/overlays/ has its expectation, and only those, in the same order.
if tuple(EXPECTATIONS) != OPTIONS:
    raise RuntimeError(f"expected.py lists {tuple(EXPECTATIONS)}; manifests/overlays/ has {OPTIONS}")

# The series the verdict reads: idgen's sidecar reporting its own outbound calls.
EGRESS_SELECTOR = {"reporter": "source", "source_workload": "idgen", "source_workload_namespace": "recipes"}

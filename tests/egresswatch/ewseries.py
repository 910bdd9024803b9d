"""Istio-shaped series for the tests: the label set in the proxy's order (docs/istio-facts.md),
identities of the bundle's workloads, and the three egress options' series as each proxy would export them.

A `Series` grows linearly with time (integer counter = floor(rate x seconds since the proxy started)),
so Prometheus's increase() and rate() over real scrapes give known proportions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from istio_labels import (
    GATEWAY_SOURCE,
    GATEWAY_SOURCE_OWN,
    IDGEN_DESTINATION,
    ISTIO_LABELS,
    UNKNOWN_DESTINATION,
)

# Label order of istio_requests_total as the proxy writes it (docs/istio-facts.md, "Istio's standard
# metrics").
LABEL_ORDER = ISTIO_LABELS
TCP_DROPPED = ("response_code", "grpc_response_status")

IDGEN_SRC = {
    "source_workload": "idgen",
    "source_canonical_service": "idgen",
    "source_canonical_revision": "v1",
    "source_workload_namespace": "recipes",
    "source_principal": "spiffe://cluster.local/ns/recipes/sa/idgen",
    "source_app": "idgen",
    "source_version": "v1",
    "source_cluster": "Kubernetes",
}
UNKNOWN_SRC = {
    "source_workload": "unknown",
    "source_canonical_service": "unknown",
    "source_canonical_revision": "latest",
    "source_workload_namespace": "unknown",
    "source_principal": "unknown",
    "source_app": "unknown",
    "source_version": "unknown",
    "source_cluster": "unknown",
}


def external(host: str, cluster: str, namespace: str = "unknown", entry: str = "") -> dict[str, str]:
    """An egress destination: PassthroughCluster / BlackHoleCluster (namespace "unknown") or a
    ServiceEntry host (cluster == host, namespace = the ServiceEntry's). A DNS ServiceEntry without
    endpoints (`entry`, its name) gets an endpoint named after it (Istio 1.30+), whose workload,
    namespace, canonical service and cluster the client sidecar reports."""
    endpoint = (
        {
            "destination_workload": entry,
            "destination_workload_namespace": namespace,
            "destination_canonical_service": entry,
        }
        if entry
        else {}
    )
    return {
        **UNKNOWN_DESTINATION,
        **endpoint,
        "destination_service": host,
        "destination_service_name": cluster,
        "destination_service_namespace": namespace,
        "destination_cluster": "Kubernetes" if namespace != "unknown" else "unknown",
    }


@dataclass
class Series:
    metric: str
    labels: dict[str, str]
    rate: float  # per second
    started: float | None = None  # when the series began growing (None: when its proxy started)
    base: float = 0.0  # value it had then

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.metric, tuple(sorted(self.labels.items()))

    def render_labels(self) -> str:
        tcp = self.metric.startswith("istio_tcp_")
        order = [k for k in LABEL_ORDER if not (tcp and k in TCP_DROPPED)]
        missing = [k for k in order if k not in self.labels]
        assert not missing, f"series lacks labels {missing}"
        return ",".join(f'{k}="{self.labels[k]}"' for k in order)


def http(reporter: str, src: dict, dst: dict, code: str, rate: float, flags: str = "-") -> Series:
    return Series(
        "istio_requests_total",
        {
            "reporter": reporter,
            **src,
            **dst,
            "request_protocol": "http",
            "response_code": code,
            "grpc_response_status": "",
            "response_flags": flags,
            "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls",
        },
        rate,
    )


def tcp(src: dict, dst: dict, opened: float, sent: float, received: float, flags: str = "-") -> list[Series]:
    labels = {
        "reporter": "source",
        **src,
        **dst,
        "request_protocol": "tcp",
        "response_flags": flags,
        "connection_security_policy": "unknown",
    }
    return [
        Series("istio_tcp_connections_opened_total", dict(labels), opened),
        Series("istio_tcp_connections_closed_total", dict(labels), opened),
        Series("istio_tcp_sent_bytes_total", dict(labels), sent),
        Series("istio_tcp_received_bytes_total", dict(labels), received),
    ]


@dataclass
class Scenario:
    """What the gateway's and idgen's sidecar's /stats/prometheus export for one egress option."""

    name: str
    gateway: list[Series] = field(default_factory=list)
    sidecar: list[Series] = field(default_factory=list)


def gateway_to_idgen(codes: dict[str, float], flags: str = "-") -> tuple[list[Series], list[Series]]:
    """Gateway -> idgen as both proxies report it: the gateway (reporter=source) and idgen's sidecar
    (reporter=destination, source istio-ingressgateway via peer metadata)."""
    dst = IDGEN_DESTINATION
    gw = [http("source", GATEWAY_SOURCE_OWN, dst, code, rate, flags) for code, rate in codes.items()]
    side = [http("destination", GATEWAY_SOURCE, dst, code, rate, flags) for code, rate in codes.items()]
    return gw, side


def passthrough() -> Scenario:
    """Option 1: ALLOW_ANY, no ServiceEntry. Also a TLS call on 443 (TCP, host hidden) and a direct
    call to idgen's sidecar from outside the mesh (the "unknown" source)."""
    gw, side = gateway_to_idgen({"200": 10})
    side += [http("destination", UNKNOWN_SRC, IDGEN_DESTINATION, "200", 2)]
    side += [http("source", IDGEN_SRC, external("httpbin.org", "PassthroughCluster"), "200", 10)]
    side += tcp(IDGEN_SRC, external("unknown", "PassthroughCluster"), opened=2, sent=600, received=5000)
    return Scenario("passthrough", gw, side)


def blackhole() -> Scenario:
    """Option 2: REGISTRY_ONLY, no ServiceEntry: the sidecar answers 502 (flags "-"); idgen answers 502."""
    gw, side = gateway_to_idgen({"502": 10})
    side += [http("source", IDGEN_SRC, external("httpbin.org", "BlackHoleCluster"), "502", 10)]
    side += tcp(IDGEN_SRC, external("unknown", "BlackHoleCluster"), opened=2, sent=0, received=0, flags="UH")
    return Scenario("blackhole", gw, side)


def serviceentry() -> Scenario:
    """Option 3: REGISTRY_ONLY + ServiceEntry httpbin-ext in recipes; 5% of calls fail upstream (503 UF)."""
    gw, side = gateway_to_idgen({"200": 19, "503": 1})
    entry = external("httpbin.org", "httpbin.org", "recipes", "httpbin-ext")
    side += [
        http("source", IDGEN_SRC, entry, "200", 19),
        http("source", IDGEN_SRC, entry, "503", 1, flags="UF"),
    ]
    return Scenario("serviceentry", gw, side)


SCENARIOS = {"passthrough": passthrough, "blackhole": blackhole, "serviceentry": serviceentry}

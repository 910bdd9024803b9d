"""Istio's metric families, label order, Envoy's buckets and the Prometheus text format."""

from __future__ import annotations

from pathlib import Path

from istio_labels import ISTIO_LABELS

from localmesh.mesh.load import load_kustomization
from localmesh.mesh.model import parse
from localmesh.mesh.names import ISTIO_VERSION, UNKNOWN, Service, Workload
from localmesh.pilot.routes import build_tables, decide_outbound
from localmesh.proxy.telemetry import HTTP_LABELS, TCP_LABELS, Telemetry, escape
from localmesh.stack.topology import ROOT

OVERLAYS = Path(__file__).resolve().parents[2] / "manifests" / "overlays"

IDGEN = Workload("idgen", "recipes", "idgen", "v1", "idgen", "v1", "unknown", "Kubernetes")
PASSTHROUGH = Service("httpbin.org", "PassthroughCluster", "unknown")


def test_label_order_is_istio_stats_push_order():
    assert HTTP_LABELS == ISTIO_LABELS
    assert (*HTTP_LABELS[:21], "response_flags", "connection_security_policy") == TCP_LABELS


def test_http_series_exposition_exact():
    telemetry = Telemetry()
    telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 200, "-", "unknown").observe(3, 120, 300)
    telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 200, "-", "unknown").observe(1, 100, 300)
    text = telemetry.exposition()
    labels = (
        'reporter="source",source_workload="idgen",source_canonical_service="idgen",'
        'source_canonical_revision="v1",source_workload_namespace="recipes",source_principal="unknown",'
        'source_app="idgen",source_version="v1",source_cluster="Kubernetes",destination_workload="unknown",'
        'destination_workload_namespace="unknown",destination_principal="unknown",destination_app="unknown",'
        'destination_version="unknown",destination_service="httpbin.org",destination_canonical_service="unknown",'
        'destination_canonical_revision="latest",destination_service_name="PassthroughCluster",'
        'destination_service_namespace="unknown",destination_cluster="unknown",request_protocol="http",'
        'response_code="200",grpc_response_status="",response_flags="-",connection_security_policy="unknown"'
    )
    lines = text.splitlines()
    assert lines[:2] == [
        "# TYPE istio_requests_total counter",
        f"istio_requests_total{{{labels}}} 2",
    ]
    duration = [line for line in lines if line.startswith("istio_request_duration_milliseconds")]
    assert duration[0] == f'istio_request_duration_milliseconds_bucket{{{labels},le="0.5"}} 0'
    assert duration[1] == f'istio_request_duration_milliseconds_bucket{{{labels},le="1"}} 1'  # 1 <= 1
    assert duration[2] == f'istio_request_duration_milliseconds_bucket{{{labels},le="5"}} 2'
    assert duration[17] == f'istio_request_duration_milliseconds_bucket{{{labels},le="1800000"}} 2'
    assert duration[19] == f'istio_request_duration_milliseconds_bucket{{{labels},le="+Inf"}} 2'
    # Sums as Envoy prints them: each value stands for the midpoint of its bin (1 -> 1.0476..., 3 ->
    # 3.0491..., 100 -> 104.76..., 120 -> 124.8, 300 -> 304.91...); tests/conformance checks them
    # against real Envoy.
    duration_sum = "4.0967993754879001855329079262447"
    assert duration[20] == f"istio_request_duration_milliseconds_sum{{{labels}}} {duration_sum}"
    assert duration[21] == f"istio_request_duration_milliseconds_count{{{labels}}} 2"
    assert "# TYPE istio_request_bytes histogram" in lines
    assert f"istio_request_bytes_sum{{{labels}}} 229.56190476190477056661620736122" in lines
    assert f"istio_response_bytes_sum{{{labels}}} 609.83606557377049739443464204669" in lines
    assert text.endswith("\n")


def test_one_series_per_outcome_and_cached_per_edge():
    telemetry = Telemetry()
    first = telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 200, "-", "unknown")
    assert telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 200, "-", "unknown") is first
    assert telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 503, "UF", "unknown") is not first


def test_tcp_series_have_no_response_code_nor_grpc_status():
    telemetry = Telemetry()
    series = telemetry.tcp(
        "source", IDGEN, UNKNOWN, Service("unknown", "PassthroughCluster", "unknown"), "-", "unknown"
    )
    series.opened += 1
    series.closed += 1
    series.sent += 4000
    series.received += 500
    text = telemetry.exposition()
    (line,) = [line for line in text.splitlines() if line.startswith("istio_tcp_sent_bytes_total")]
    assert line.endswith(
        'destination_service_namespace="unknown",destination_cluster="unknown",request_protocol="tcp",'
        'response_flags="-",connection_security_policy="unknown"} 4000'
    )
    assert "response_code" not in text and "grpc_response_status" not in text
    for name, value in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_received_bytes_total", 500),
    ]:
        assert f"# TYPE {name} counter" in text
        assert any(line.startswith(name + "{") and line.endswith(f" {value}") for line in text.splitlines())
    assert "histogram" not in text


def test_the_serviceentry_endpoint_names_the_destination_of_http_and_tcp_series():
    # Option 3's ServiceEntry httpbin-ext (DNS, no endpoints): Istio 1.30+ gives it an endpoint named
    # after it, and the client sidecar's destination labels come from it (docs/istio-facts.md).
    state, _ = parse(load_kustomization(OVERLAYS / "serviceentry"))
    table = build_tables(state, {})["idgen"]
    telemetry = Telemetry()
    for protocol in ("http", "tcp"):
        decision = decide_outbound(table, "httpbin.org", 80, protocol)
        if protocol == "http":
            telemetry.http("source", IDGEN, decision.peer, decision.service, 200, "-", "unknown")
        else:
            telemetry.tcp("source", IDGEN, decision.peer, decision.service, "-", "unknown").opened += 1
    destination = (
        'destination_workload="httpbin-ext",destination_workload_namespace="recipes",'
        'destination_principal="unknown",destination_app="unknown",destination_version="unknown",'
        'destination_service="httpbin.org",destination_canonical_service="httpbin-ext",'
        'destination_canonical_revision="latest",destination_service_name="httpbin.org",'
        'destination_service_namespace="recipes",destination_cluster="Kubernetes",request_protocol="{}"'
    )
    lines = telemetry.exposition().splitlines()
    (http,) = [line for line in lines if line.startswith("istio_requests_total{")]
    (tcp,) = [line for line in lines if line.startswith("istio_tcp_connections_opened_total{")]
    assert destination.format("http") in http
    assert destination.format("tcp") in tcp


def test_label_values_are_escaped():
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    telemetry = Telemetry()
    odd = Service('we"ird\\host\n', "PassthroughCluster", "unknown")
    telemetry.http("source", IDGEN, UNKNOWN, odd, 200, "-", "unknown").observe(1, 1, 1)
    assert 'destination_service="we\\"ird\\\\host\\n"' in telemetry.exposition()


def test_a_proxy_without_traffic_exports_istio_build_only():
    assert Telemetry().exposition() == (
        '# TYPE istio_build gauge\nistio_build{component="proxy",tag="1.31.0"} 1\n'
    )


def test_exposition_has_type_lines_only_and_istio_build_between_counters_and_histograms():
    """Envoy's /stats/prometheus: no # HELP; counters, then gauges, then histograms."""
    telemetry = Telemetry()
    telemetry.http("source", IDGEN, UNKNOWN, PASSTHROUGH, 200, "-", "unknown").observe(3, 120, 300)
    lines = telemetry.exposition().splitlines()
    assert not [line for line in lines if line.startswith("# HELP")]
    types = [line.split()[2:] for line in lines if line.startswith("# TYPE")]
    assert types == [
        ["istio_requests_total", "counter"],
        ["istio_build", "gauge"],
        ["istio_request_bytes", "histogram"],
        ["istio_request_duration_milliseconds", "histogram"],
        ["istio_response_bytes", "histogram"],
    ]
    assert 'istio_build{component="proxy",tag="1.31.0"} 1' in lines


def test_istio_build_names_the_version_the_cluster_path_pins():
    versions = (ROOT / "scripts" / "versions.env").read_text()
    assert f"ISTIO_VERSION={ISTIO_VERSION}\n" in versions

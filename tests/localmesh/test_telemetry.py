"""Istio's metric families, label order, Envoy's buckets and the Prometheus text format."""

from __future__ import annotations

from istio_labels import ISTIO_LABELS

from localmesh.mesh.names import UNKNOWN, Service, Workload
from localmesh.proxy.telemetry import HTTP_LABELS, TCP_LABELS, Telemetry, escape

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
    assert lines[:3] == [
        "# HELP istio_requests_total Request count, incremented for every request handled by an Istio proxy.",
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


def test_label_values_are_escaped():
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    telemetry = Telemetry()
    odd = Service('we"ird\\host\n', "PassthroughCluster", "unknown")
    telemetry.http("source", IDGEN, UNKNOWN, odd, 200, "-", "unknown").observe(1, 1, 1)
    assert 'destination_service="we\\"ird\\\\host\\n"' in telemetry.exposition()


def test_empty_registry_exports_nothing():
    assert Telemetry().exposition() == ""

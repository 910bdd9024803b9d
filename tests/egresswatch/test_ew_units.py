"""Pure pieces: the exposition parser, windows and matchers, classification, Kiali's health thresholds,
and the ServiceEntry text validated by the project's own config loader."""

from __future__ import annotations

import math

import pytest

from egresswatch import classify, exposition, graph, promql, suggest
from egresswatch.errors import UsageError
from egresswatch.promql import Matcher, Window


def test_parse_text_reads_labels_escapes_and_skips_comments_and_timestamps() -> None:
    text = (
        "# HELP istio_requests_total Total requests.\n"
        "# TYPE istio_requests_total counter\n"
        'istio_requests_total{reporter="source",destination_service="a\\"b\\\\c\\nd",response_code="200"} 7 '
        "1700000000000\n"
        'istio_request_duration_milliseconds_bucket{reporter="source",le="+Inf"} 3\n'
        "envoy_server_uptime 12\n"
        'weird{le="x"} +Inf\n'
    )
    samples = exposition.parse_text(text)
    key = (
        "istio_requests_total",
        (("destination_service", 'a"b\\c\nd'), ("reporter", "source"), ("response_code", "200")),
    )
    assert samples[key] == 7
    assert samples[("envoy_server_uptime", ())] == 12
    assert math.isinf(samples[("weird", (("le", "x"),))])
    only = exposition.parse_text(text, wanted=["envoy_server_uptime"])
    assert list(only) == [("envoy_server_uptime", ())]


def test_parse_text_reads_envoys_prefixed_istio_metrics_under_istios_names() -> None:
    """Real Envoy's stats access logger exports envoy_istio_*: read as istio_*, the rest left alone."""
    text = (
        "# TYPE envoy_istio_requests_total counter\n"
        'envoy_istio_requests_total{reporter="source",response_code="200"} 4\n'
        'envoy_istio_request_duration_milliseconds_bucket{reporter="source",le="+Inf"} 4\n'
        "envoy_server_uptime 12\n"
        "envoy_istio 1\n"
    )
    samples = exposition.parse_text(
        text, wanted=["istio_requests_total", "envoy_server_uptime", "envoy_istio"]
    )
    assert samples == {
        ("istio_requests_total", (("reporter", "source"), ("response_code", "200"))): 4,
        ("envoy_server_uptime", ()): 12,
        ("envoy_istio", ()): 1,
    }
    assert exposition.istio_name("envoy_istio_tcp_sent_bytes_total") == "istio_tcp_sent_bytes_total"
    assert exposition.istio_name("my_envoy_istio_x") == "my_envoy_istio_x"


@pytest.mark.parametrize("bad", ['m{a="1" 2', "m{a=1} 2", 'm{a="1"} notanumber', '{a="1"} 1'])
def test_parse_text_rejects_malformed_lines_with_the_line_number(bad: str) -> None:
    with pytest.raises(exposition.ParseError, match="line 2"):
        exposition.parse_text(f"ok 1\n{bad}\n")


def test_metrics_url_adds_envoys_path_only_when_missing() -> None:
    assert exposition.metrics_url("127.0.0.1:15000") == "http://127.0.0.1:15000/stats/prometheus"
    assert exposition.metrics_url("http://h:1") == "http://h:1/stats/prometheus"
    assert exposition.metrics_url("http://h:1/metrics") == "http://h:1/metrics"


def test_window_parsing() -> None:
    assert Window.parse("1m").seconds == 60
    assert Window.parse("90s").range_seconds == "90s"
    for bad in ("1", "5 minutes", "1m30s", "500ms"):
        with pytest.raises(UsageError, match="--window"):
            Window.parse(bad)


def test_matchers_render_promql_and_match_like_prometheus() -> None:
    m = promql.re_eq("destination_service", r"^.+\.recipes\..+$")
    assert m.promql() == 'destination_service=~"^.+\\\\.recipes\\\\..+$"'
    assert m.matches({"destination_service": "idgen.recipes.svc.cluster.local"})
    assert not m.matches({"destination_service": "httpbin.org"})
    assert Matcher("x", "!=", "").matches({"x": "1"}) and not Matcher("x", "!=", "").matches({})
    assert Matcher("x", "!~", "a|b").matches({"x": "ab"})  # anchored: "ab" is neither "a" nor "b"


def test_counts_query_is_the_difference_to_the_windows_start_and_new_series_whole() -> None:
    q = promql.counts_query("m", [promql.eq("reporter", "source")], ["a", "b"], Window.parse("5m"))
    assert '(m{reporter="source"} - m{reporter="source"} offset 5m >= 0)' in q
    assert '  or m{reporter="source"}\n' in q
    assert "increase(" not in q  # it extrapolates: 3 requests could read as 6.5
    assert q.startswith("sum by (a, b) (") and q.endswith("> 0")


def test_a_window_since_a_moment_rounds_its_kiali_range_up() -> None:
    """rate() over whole seconds: a window since a switch 4.2 s ago is 5s, so it keeps the scrape taken at
    the switch (4s would drop it, and with it the only sample before the traffic)."""
    assert Window.since(100.0, now=104.2).range_seconds == "5s"
    assert Window.parse("90s").range_seconds == "90s"


@pytest.mark.parametrize(
    ("service", "name", "kind"),
    [
        ("httpbin.org", "PassthroughCluster", classify.PASSTHROUGH),
        ("unknown", "PassthroughCluster", classify.PASSTHROUGH),
        ("httpbin.org", "BlackHoleCluster", classify.BLACKHOLE),
        ("httpbin.org", "httpbin.org", classify.SERVICE_ENTRY),
        ("idgen.recipes.svc.cluster.local", "idgen", classify.MESH_SERVICE),
        ("unknown", "unknown", classify.UNKNOWN),
    ],
)
def test_destination_kinds(service: str, name: str, kind: str) -> None:
    assert classify.kind_of(service, name) == kind
    assert classify.is_egress(kind) == (
        kind in (classify.PASSTHROUGH, classify.BLACKHOLE, classify.SERVICE_ENTRY)
    )


@pytest.mark.parametrize(
    ("responses", "status"),
    [
        ({"200": {"-": 10.0}}, graph.HEALTHY),
        ({"200": {"-": 999.0}, "503": {"UF": 1.0}}, graph.DEGRADED),  # any 5xx: degraded
        ({"200": {"-": 9.0}, "502": {"-": 1.0}}, graph.FAILURE),  # 10% is failure (>=)
        ({"200": {"-": 95.0}, "404": {"-": 5.0}}, graph.HEALTHY),  # 4xx below its 10% degraded threshold
        ({"200": {"-": 85.0}, "404": {"NR": 15.0}}, graph.DEGRADED),
        ({"-": {"DC": 1.0}, "200": {"-": 1.0}}, graph.FAILURE),  # no response counts as failure at 10%
    ],
)
def test_edge_health_uses_kialis_default_tolerances(responses: dict, status: str) -> None:
    assert graph.edge_health("http", responses) == status


def test_kiali_node_ids() -> None:
    assert graph.node_id("Kubernetes", "unknown", "", "unknown", "unknown", "unknown") == (
        "Kubernetes_unknown_source",
        "unknown",
    )
    assert graph.node_id("unknown", "unknown", "PassthroughCluster", "unknown", "unknown", "unknown") == (
        "svc_unknown_unknown_PassthroughCluster",
        "service",
    )
    assert graph.node_id("Kubernetes", "recipes", "idgen", "recipes", "idgen", "idgen") == (
        "wl_Kubernetes_recipes_idgen",
        "workload",
    )


def test_service_entry_names_and_ports() -> None:
    assert suggest.split_host("httpbin.org") == ("httpbin.org", 80)
    assert suggest.split_host("Api.Example.com:8080") == ("api.example.com", 8080)
    assert suggest.entry_name("httpbin.org", 80) == "httpbin-org-ext"
    assert suggest.entry_name("api.example.com", 8080) == "api-example-com-8080-ext"
    assert len(suggest.entry_name("a" * 100 + ".com", 80)) <= 63


def test_suggested_service_entry_passes_localmesh_validation(tmp_path) -> None:
    from localmesh.mesh.load import load_file
    from localmesh.mesh.model import parse

    path = tmp_path / "se.yaml"
    path.write_text(suggest.service_entry_yaml("api.example.com", 8080, "recipes", "test"))
    state, warnings = parse(load_file(path))
    (entry,) = state.service_entries
    assert entry.hosts == ("api.example.com",) and entry.namespace == "recipes"
    assert [(p.number, p.protocol) for p in entry.ports] == [(8080, "HTTP")]
    assert entry.resolution == "DNS" and entry.location == "MESH_EXTERNAL"
    assert warnings == []

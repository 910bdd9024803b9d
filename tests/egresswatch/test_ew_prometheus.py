"""egresswatch against a real Prometheus scraping Istio-shaped proxies, for each of the three egress options:
the report's rows and JSON, the graph's nodes and edge colours (read back from the SVG), the suggested
ServiceEntry (validated by localmesh's config loader), lockdown-check's exit codes, and the errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from ew_fakes import Mesh
from ewseries import SCENARIOS

from egresswatch.cli import main
from egresswatch.render import COLORS
from localmesh.stack.procs import free_port

pytestmark = pytest.mark.prometheus
SVG = "{http://www.w3.org/2000/svg}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def report_json(capsys: pytest.CaptureFixture[str], mesh: Mesh, *extra: str) -> dict:
    rc, out, err = run(capsys, "report", "--prometheus", mesh.prometheus, "--json", *extra)
    assert rc == 0, err
    return json.loads(out)


def keyed(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["protocol"], r["host"], r["kind"], r["response_code"], r["response_flags"]): r for r in rows}


# ---- report ----------------------------------------------------------------------------------------


def test_report_passthrough_rows_and_hidden_tls_host(capsys, passthrough: Mesh) -> None:
    data = report_json(capsys, passthrough)
    rows = keyed(data["rows"])
    assert set(rows) == {
        ("http", "httpbin.org", "PassthroughCluster", "200", "-"),
        ("tcp", "unknown", "PassthroughCluster", None, "-"),
    }
    http = rows[("http", "httpbin.org", "PassthroughCluster", "200", "-")]
    assert http["source_workload"] == "idgen" and http["source_namespace"] == "recipes"
    assert http["destination_service_namespace"] == "unknown" and http["egress"] is True
    assert http["count"] > 0 and http["rate"] == pytest.approx(http["count"] / 60)
    tcp = rows[("tcp", "unknown", "PassthroughCluster", None, "-")]
    assert tcp["host_hidden"] is True and tcp["bytes_received"] > tcp["bytes_sent"] > 0
    assert data["tls_host_hidden"] is True
    assert data["source"] == {
        "kind": "prometheus",
        "url": passthrough.prometheus,
        "window": "1m",
        "window_seconds": 60.0,
    }
    # The gateway's call to idgen stays inside the mesh: counted before the egress filter, not shown.
    assert data["rows_total_before_egress_filter"] == 2
    assert any("TLS passthrough hides the host" in n for n in data["notes"])


def test_report_table_says_plainly_when_tls_hides_the_host(capsys, passthrough: Mesh) -> None:
    rc, out, _ = run(capsys, "report", "--prometheus", passthrough.prometheus, "--show-queries")
    assert rc == 0
    assert "Egress from namespace recipes" in out
    assert "(hidden by TLS)" in out and 'destination_service="unknown"' in out
    assert "PassthroughCluster" in out and "httpbin.org" in out
    sel = 'istio_requests_total{reporter="source",source_workload_namespace="recipes"}'
    assert f"({sel} - {sel} offset 1m >= 0)" in out


def test_report_blackhole_rows(capsys, blackhole: Mesh) -> None:
    rows = keyed(report_json(capsys, blackhole)["rows"])
    assert set(rows) == {
        ("http", "httpbin.org", "BlackHoleCluster", "502", "-"),
        ("tcp", "unknown", "BlackHoleCluster", None, "UH"),
    }
    assert rows[("tcp", "unknown", "BlackHoleCluster", None, "UH")]["bytes_sent"] == 0


def test_report_serviceentry_rows(capsys, serviceentry: Mesh) -> None:
    rows = keyed(report_json(capsys, serviceentry)["rows"])
    assert set(rows) == {
        ("http", "httpbin.org", "ServiceEntry", "200", "-"),
        ("http", "httpbin.org", "ServiceEntry", "503", "UF"),
    }
    ok, failed = (
        rows[("http", "httpbin.org", "ServiceEntry", "200", "-")],
        rows[("http", "httpbin.org", "ServiceEntry", "503", "UF")],
    )
    assert (
        ok["destination_service_namespace"] == "recipes" and ok["destination_service_name"] == "httpbin.org"
    )
    assert 0.02 < failed["count"] / (ok["count"] + failed["count"]) < 0.09  # the 5% the proxies export


def test_full_breakdown_includes_the_gateways_calls(capsys, blackhole: Mesh) -> None:
    data = report_json(capsys, blackhole, "--all", "--all-namespaces")
    kinds = {(r["source_workload"], r["kind"], r["response_code"]) for r in data["rows"]}
    assert ("istio-ingressgateway", "Service", "502") in kinds
    assert ("idgen", "BlackHoleCluster", "502") in kinds


def test_breakdown_function_for_the_demo(passthrough: Mesh) -> None:
    from egresswatch.report import breakdown

    rows = breakdown(passthrough.prometheus, "1m", None)
    triples = {(r["destination_service"], r["destination_service_name"], r["response_code"]) for r in rows}
    assert ("httpbin.org", "PassthroughCluster", "200") in triples
    assert ("idgen.recipes.svc.cluster.local", "idgen", "200") in triples
    assert all(isinstance(r["count"], float) and r["rate"] > 0 for r in rows)


# ---- errors ----------------------------------------------------------------------------------------


def test_unreachable_prometheus_names_the_url_and_the_fix(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in ("report", "graph", "suggest", "lockdown-check"):
        rc, _out, err = run(capsys, command, "--prometheus", url)
        assert rc == 2, command
        assert f"Cannot reach Prometheus at {url}" in err and "make up" in err


def test_unreachable_prometheus_through_the_console_script_entry(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "egresswatch", "report", "--prometheus", url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["kind"] == "SourceUnreachable"


def test_namespace_without_traffic_lists_the_namespaces_that_have_some(capsys, passthrough: Mesh) -> None:
    rc, _, err = run(capsys, "report", "--prometheus", passthrough.prometheus, "--namespace", "shop")
    assert rc == 2
    assert "No traffic from namespace 'shop'" in err and "istio-system, recipes" in err


def test_empty_window_when_prometheus_has_no_istio_samples(capsys, start_prometheus, fake_proxy) -> None:
    from ew_fakes import wait_for_samples

    url = start_prometheus("empty", [fake_proxy.url])  # the proxy exports only envoy_server_uptime
    wait_for_samples(url, minimum=2)
    rc, _, err = run(capsys, "report", "--prometheus", url)
    assert rc == 2 and "No Istio metrics in Prometheus" in err and "--window" in err
    rc, _, err = run(capsys, "lockdown-check", "--prometheus", url)
    assert rc == 2


def test_bad_window_is_a_usage_error(capsys, passthrough: Mesh) -> None:
    rc, _, err = run(capsys, "report", "--prometheus", passthrough.prometheus, "--window", "5 minutes")
    assert rc == 2 and "is not a duration" in err


# ---- graph -----------------------------------------------------------------------------------------


def draw(
    capsys, mesh: Mesh, tmp_path: Path, *flags: str
) -> tuple[dict[str, ET.Element], list[ET.Element], Path]:
    out = tmp_path / f"{mesh.scenario.name}.svg"
    rc, _, err = run(capsys, "graph", "--prometheus", mesh.prometheus, "--out", str(out), *flags)
    assert rc == 0, err
    root = ET.parse(out).getroot()
    nodes = {g.get("data-id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    return nodes, edges, out


def edge(edges: list[ET.Element], source: str, target: str, protocol: str = "http") -> ET.Element:
    found = [
        e
        for e in edges
        if (e.get("data-source"), e.get("data-target"), e.get("data-protocol")) == (source, target, protocol)
    ]
    assert len(found) == 1, [(e.get("data-source"), e.get("data-target")) for e in edges]
    return found[0]


def stroke(e: ET.Element) -> str:
    return next(p for p in e.iter(f"{SVG}path") if p.get("class") == "edge-line").get("stroke")


# Node ids of Kiali's versioned-app graph (its UI's default, and egresswatch's), graph/types.go Id.
GW = "vapp_Kubernetes_istio-system_istio-ingressgateway"
SVC = "svc_Kubernetes_recipes_idgen"
WL = "vapp_Kubernetes_recipes_idgen"
PASS = "svc_unknown_unknown_PassthroughCluster"
HOLE = "svc_unknown_unknown_BlackHoleCluster"
# Istio 1.30+: the ServiceEntry's endpoint is a node named after it, behind the host's service node.
SE_HOST = "svc_Kubernetes_recipes_httpbin.org"
SE = "vapp_Kubernetes_recipes_httpbin-ext"
UNKNOWN_SOURCE = "unknown_unknown_source"


def test_graph_passthrough_nodes_and_edges(capsys, passthrough: Mesh, tmp_path: Path) -> None:
    nodes, edges, out = draw(capsys, passthrough, tmp_path)
    assert set(nodes) == {UNKNOWN_SOURCE, GW, SVC, WL, PASS}
    assert nodes[UNKNOWN_SOURCE].get("data-node-type") == "unknown"
    assert (
        nodes[PASS].get("data-kind") == "PassthroughCluster"
        and nodes[PASS].get("data-namespace") == "unknown"
    )
    assert nodes[GW].get("data-namespace") == "istio-system"
    for src, dst in ((GW, SVC), (UNKNOWN_SOURCE, SVC), (SVC, WL), (WL, PASS)):
        e = edge(edges, src, dst)
        assert e.get("data-health") == "Healthy" and stroke(e) == COLORS["Healthy"]
        assert "rps" in "".join(e.itertext())
    tcp = edge(edges, WL, PASS, "tcp")
    assert stroke(tcp) == COLORS["tcp"] and "B/s" in "".join(tcp.itertext())
    html = out.with_suffix(".html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "").replace(
        passthrough.prometheus, ""
    )  # self-contained: no external assets


def test_graph_blackhole_edges_are_failures(capsys, blackhole: Mesh, tmp_path: Path) -> None:
    nodes, edges, _ = draw(capsys, blackhole, tmp_path)
    assert set(nodes) == {GW, SVC, WL, HOLE}
    assert (
        nodes[HOLE].get("data-kind") == "BlackHoleCluster" and nodes[HOLE].get("data-namespace") == "unknown"
    )
    for src, dst in ((GW, SVC), (SVC, WL), (WL, HOLE)):
        e = edge(edges, src, dst)
        assert e.get("data-health") == "Failure" and stroke(e) == COLORS["Failure"]
        assert "100% err" in "".join(e.itertext())
    assert nodes[HOLE].get("data-health") == "Failure"


def test_graph_serviceentry_node_named_after_the_entry_and_degraded_edges(
    capsys, serviceentry: Mesh, tmp_path: Path
) -> None:
    nodes, edges, _ = draw(capsys, serviceentry, tmp_path)
    assert set(nodes) == {GW, SVC, WL, SE_HOST, SE}
    assert nodes[WL].get("data-node-type") == "app" and nodes[WL].get("data-name") == "idgen"
    assert nodes[SE].get("data-kind") == "ServiceEntry" and nodes[SE].get("data-name") == "httpbin-ext"
    assert nodes[SE].get("data-hosts") == "httpbin.org" and nodes[SE].get("data-namespace") == "recipes"
    assert nodes[SE_HOST].get("data-kind") == "service" and nodes[SE_HOST].get("data-name") == "httpbin.org"
    assert nodes[SVC].get("data-kind") == "service"
    for src, dst in ((GW, SVC), (SVC, WL), (WL, SE_HOST), (SE_HOST, SE)):
        e = edge(edges, src, dst)
        assert e.get("data-health") == "Degraded" and stroke(e) == COLORS["Degraded"]
        assert 2 < float(e.get("data-error-percent")) < 9


def test_graph_type_workload_draws_kialis_workload_graph(capsys, serviceentry: Mesh, tmp_path: Path) -> None:
    nodes, edges, out = draw(capsys, serviceentry, tmp_path, "--graph-type", "workload")
    gw, wl, se = (
        "wl_Kubernetes_istio-system_istio-ingressgateway",
        "wl_Kubernetes_recipes_idgen",
        "wl_Kubernetes_recipes_httpbin-ext",
    )
    assert set(nodes) == {gw, SVC, wl, SE_HOST, se}
    assert {nodes[n].get("data-node-type") for n in (gw, wl, se)} == {"workload"}
    assert nodes[se].get("data-kind") == "ServiceEntry" and nodes[se].get("data-hosts") == "httpbin.org"
    for src, dst in ((gw, SVC), (SVC, wl), (wl, SE_HOST), (SE_HOST, se)):
        edge(edges, src, dst)
    assert ET.parse(out).getroot().get("data-graph-type") == "workload"
    assert "Service graph (workload graph)" in out.with_suffix(".html").read_text()


def test_a_bad_graph_type_is_a_usage_error(capsys, serviceentry: Mesh, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "graph", "--prometheus", serviceentry.prometheus, "--graph-type", "app")
    assert exit_.value.code == 2
    assert "invalid choice: 'app'" in capsys.readouterr().err


def test_graph_json_dedups_series_reported_by_both_proxies(capsys, passthrough: Mesh, tmp_path: Path) -> None:
    rc, out, _ = run(
        capsys, "graph", "--prometheus", passthrough.prometheus, "--out", str(tmp_path / "g.svg"), "--json"
    )
    assert rc == 0
    data = json.loads(out)
    rates = {(e["source"], e["target"], e["protocol"]): e["rate"] for e in data["edges"]}
    # gateway -> idgen is exported by the gateway (source) and idgen's sidecar (destination); Kiali's
    # queries only read the destination report here, so service -> workload equals the two inbound edges.
    assert rates[(SVC, WL, "http")] == pytest.approx(
        rates[(GW, SVC, "http")] + rates[(UNKNOWN_SOURCE, SVC, "http")]
    )
    assert len(data["queries"]) == 6


# ---- suggest and lockdown-check --------------------------------------------------------------------


def test_suggest_passthrough_writes_a_valid_service_entry(capsys, passthrough: Mesh, tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "suggest", "--prometheus", passthrough.prometheus)
    assert rc == 0
    assert "kind: ServiceEntry" in out and "- httpbin.org" in out and "protocol: HTTP" in out
    assert "number: 80" in out and "Hidden host" in out and "egress gateway" in out
    from localmesh.mesh.load import load_file
    from localmesh.mesh.model import parse

    path = tmp_path / "suggested.yaml"
    path.write_text(out)
    state, warnings = parse(load_file(path))
    (entry,) = state.service_entries
    assert entry.hosts == ("httpbin.org",) and entry.namespace == "recipes"
    assert [(p.number, p.name, p.protocol) for p in entry.ports] == [(80, "http", "HTTP")]
    assert entry.location == "MESH_EXTERNAL" and entry.resolution == "DNS"
    assert warnings == []


def test_suggest_json_and_nothing_to_suggest(capsys, passthrough: Mesh, serviceentry: Mesh) -> None:
    rc, out, _ = run(capsys, "suggest", "--prometheus", passthrough.prometheus, "--json")
    data = json.loads(out)
    assert rc == 0 and [s["host"] for s in data["service_entries"]] == ["httpbin.org"]
    assert data["hidden"][0]["workload"] == "idgen"
    rc, out, _ = run(capsys, "suggest", "--prometheus", serviceentry.prometheus)
    assert rc == 0 and "Nothing to register" in out and "kind: ServiceEntry" not in out


def test_lockdown_check_exit_codes(capsys, passthrough: Mesh, blackhole: Mesh, serviceentry: Mesh) -> None:
    rc, out, _ = run(capsys, "lockdown-check", "--prometheus", passthrough.prometheus)
    assert rc == 1
    assert "WOULD BREAK" in out and "httpbin.org" in out and "TLS passthrough hides it" in out
    rc, out, _ = run(capsys, "lockdown-check", "--prometheus", serviceentry.prometheus)
    assert rc == 0 and out.splitlines()[1].startswith("SAFE")
    rc, out, _ = run(capsys, "lockdown-check", "--prometheus", blackhole.prometheus, "--json")
    data = json.loads(out)
    assert rc == 0 and data["safe"] is True
    assert {r["kind"] for r in data["already_blocked"]} == {"BlackHoleCluster"}


def test_lockdown_check_registered_hosts_do_not_cover_hidden_tls(capsys, passthrough: Mesh) -> None:
    rc, out, _ = run(
        capsys,
        "lockdown-check",
        "--prometheus",
        passthrough.prometheus,
        "--registered",
        "httpbin.org",
        "--json",
    )
    data = json.loads(out)
    assert rc == 1
    assert [r["host"] for r in data["covered_by_service_entry"]] == ["httpbin.org"]
    assert [r["host_hidden"] for r in data["would_break"]] == [True]


# ---- a burst: all requests before the series' first scrape -----------------------------------------


@pytest.fixture(scope="module")
def burst(start_prometheus) -> Iterator[str]:
    """idgen made 10 calls to httpbin.org through PassthroughCluster in one burst, then nothing: every
    scrape sees the same value 10, so rate() is 0 although 10 requests left the mesh in the window."""
    from ew_fakes import FakeProxy, wait_for_samples

    sidecar = [dataclasses.replace(s, rate=0.0, base=10.0) for s in SCENARIOS["passthrough"]().sidecar]
    proxy = FakeProxy("burst", sidecar).start()
    try:
        url = start_prometheus("burst", [proxy.url])
        wait_for_samples(url, minimum=3)
        yield url
    finally:
        proxy.stop()


def test_a_single_burst_is_counted_in_full_and_breaks_the_lockdown(capsys, burst: str) -> None:
    rc, out, _ = run(capsys, "report", "--prometheus", burst, "--json")
    rows = keyed(json.loads(out)["rows"])
    assert rc == 0
    assert rows[("http", "httpbin.org", "PassthroughCluster", "200", "-")]["count"] == 10
    rc, out, _ = run(capsys, "lockdown-check", "--prometheus", burst)
    assert rc == 1 and "httpbin.org: 10 http requests" in out


def test_graph_falls_back_to_counts_when_kialis_rate_sees_nothing(capsys, burst: str, tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "graph", "--prometheus", burst, "--out", str(tmp_path / "g.svg"), "--json")
    data = json.loads(out)
    assert rc == 0 and data["rates"] == "counts" and "rate() query saw no growth" in data["notes"][0]
    rates = {(e["source"], e["target"], e["protocol"]): e["rate"] for e in data["edges"]}
    assert rates[(WL, PASS, "http")] == pytest.approx(10 / 60)
    assert "rate() query saw no growth" in (tmp_path / "g.html").read_text()

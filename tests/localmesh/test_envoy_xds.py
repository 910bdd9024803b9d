"""The route tables as Envoy resources: one test per pilot rule the translation copies (names,
metadata, retries, server headers, block_all); test_envoy_validate.py has real Envoy check them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from localmesh.envoy import binary
from localmesh.envoy.binary import EnvoyUnavailable, envoy_binary
from localmesh.envoy.bootstrap import bootstrap, command
from localmesh.envoy.xdsfiles import write_resources
from localmesh.mesh.names import HTTP_LABELS, TCP_LABELS
from localmesh.pilot import xds
from localmesh.pilot.xds import EnvoyPorts, EnvoyResources, envoy_resources
from localmesh.proxy.peer_metadata import Identity
from tests.localmesh.proxy_testlib import closed_port, tables

IDGEN = "idgen.recipes.svc.cluster.local"
BOOK = {f"{IDGEN}:80": ("127.0.0.1", 15006), "httpbin.org:80": ("127.0.0.1", 18080)}
SIDECAR = EnvoyPorts(
    "sidecar", outbound=("127.0.0.1", 15001), inbound=("127.0.0.1", 15006), app=("127.0.0.1", 8080)
)
GATEWAY = EnvoyPorts("gateway", gateway=("127.0.0.1", 8081))
OVERLAYS = ("passthrough", "blackhole", "serviceentry")


def sidecar(overlay: str) -> EnvoyResources:
    return envoy_resources(tables(overlay, BOOK)["idgen"], SIDECAR)


def gateway(overlay: str = "passthrough") -> EnvoyResources:
    return envoy_resources(tables(overlay, BOOK)["istio-ingressgateway"], GATEWAY)


def by_name(resources: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in resources}


def vhosts(res: EnvoyResources, route: str = xds.HTTP_PROXY_ROUTE) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in by_name(res.routes)[route]["virtual_hosts"]}


def hcm(res: EnvoyResources, listener: str) -> dict[str, Any]:
    typed: dict[str, Any] = by_name(res.listeners)[listener]["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def http_routes(res: EnvoyResources) -> list[dict[str, Any]]:
    return [
        r
        for route in res.routes
        for v in route["virtual_hosts"]
        for r in v["routes"]
        if "route" in r and "connect_matcher" not in r["match"]
    ]


# --- pilot's names and shapes (istio/istio pilot/pkg/networking/util/util.go, core/httproute.go) ---


def test_blackhole_cluster_is_static_without_endpoints():
    cluster = by_name(sidecar("passthrough").clusters)["BlackHoleCluster"]
    assert (cluster["type"], "load_assignment" in cluster) == ("STATIC", False)


def test_passthrough_cluster_is_original_dst():
    assert by_name(sidecar("passthrough").clusters)["PassthroughCluster"]["type"] == "ORIGINAL_DST"


def test_allow_any_is_the_catch_all_under_allow_any():
    assert vhosts(sidecar("passthrough"))["allow_any"]["domains"] == ["*"]


def test_block_all_answers_a_direct_502_with_no_body():
    (http,) = [r for r in vhosts(sidecar("blackhole"))["block_all"]["routes"] if "direct_response" in r]
    assert (http["name"], http["direct_response"]) == ("block_all", {"status": 502})


def test_serviceentry_cluster_is_named_and_carries_istio_services_metadata():
    cluster = by_name(sidecar("serviceentry").clusters)["outbound|80||httpbin.org"]
    assert cluster["metadata"]["filter_metadata"]["istio"]["services"] == [
        {"host": "httpbin.org", "name": "httpbin.org", "namespace": "recipes"}
    ]


def test_mesh_service_cluster_is_named_as_pilot_names_it():
    assert f"outbound|80||{IDGEN}" in by_name(sidecar("blackhole").clusters)


def test_hosts_resolve_through_the_address_book_never_dns():
    cluster = by_name(sidecar("serviceentry").clusters)["outbound|80||httpbin.org"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert (cluster["type"], endpoint["address"]["socket_address"]["port_value"]) == ("STATIC", 18080)


def test_outbound_routes_use_istio_131_default_retries():
    routes = [
        r for r in http_routes(sidecar("serviceentry")) if r["route"]["cluster"].startswith("outbound|")
    ]
    assert len(routes) == 2  # idgen's and httpbin.org's
    for route in routes:
        policy = route["route"]["retry_policy"]
        assert (policy["retry_on"], policy["num_retries"]) == (xds.DEFAULT_RETRY_ON, 2)
        assert "retriable_status_codes" not in policy  # no status code is retried (1.24+)


def test_allow_any_routes_have_no_retry_policy_as_pilots():
    routes = [r for r in http_routes(sidecar("passthrough")) if r["route"]["cluster"] == "PassthroughCluster"]
    assert routes and all("retry_policy" not in r["route"] for r in routes)


def test_inbound_route_retries_twice_on_reset_before_request():
    (route,) = [r for r in http_routes(sidecar("passthrough")) if r["route"]["cluster"] == "inbound|80||"]
    assert route["route"]["retry_policy"] == {"retry_on": "reset-before-request", "num_retries": 2}


def test_outbound_server_header_is_envoys_default():
    assert "server_name" not in hcm(sidecar("passthrough"), "127.0.0.1_15001")


def test_inbound_and_gateway_server_header_is_istio_envoy():
    assert hcm(sidecar("passthrough"), "virtualInbound")["server_name"] == "istio-envoy"
    assert hcm(gateway(), "0.0.0.0_8081")["server_name"] == "istio-envoy"


def test_http_proxy_listener_accepts_absolute_urls_and_connect():
    manager = hcm(sidecar("passthrough"), "127.0.0.1_15001")
    assert manager["rds"]["route_config_name"] == "http_proxy"
    assert manager["http_protocol_options"] == {"allow_absolute_url": True}
    assert manager["upgrade_configs"] == [{"upgrade_type": "CONNECT"}]


def test_gateway_routes_the_virtual_service_and_nothing_else():
    (vhost,) = vhosts(gateway(), "http.8081").values()
    (route,) = vhost["routes"]
    assert (route["match"], route["route"]["cluster"]) == ({"path": "/id"}, f"outbound|80||{IDGEN}")
    assert route["decorator"] == {"operation": f"{IDGEN}:80/id"}


def test_gateway_accepts_no_http10():
    assert "accept_http_10" not in json.dumps(hcm(gateway(), "0.0.0.0_8081"))


def test_dns_service_entry_destination_is_the_entrys_workload():
    meta = vhosts(sidecar("serviceentry"))["httpbin.org:80"]["routes"][1]["metadata"]["filter_metadata"]
    labels = meta[xds.LABELS_NS]
    assert (labels["destination_workload"], labels["destination_workload_namespace"]) == (
        "httpbin-ext",
        "recipes",
    )
    assert (labels["destination_canonical_service"], labels["destination_cluster"]) == (
        "httpbin-ext",
        "Kubernetes",
    )


def test_metric_labels_are_istios_in_order():
    logs = hcm(sidecar("passthrough"), "127.0.0.1_15001")["access_log"]
    http, tcp = (log["typed_config"]["counters"][0]["stat"]["tags"] for log in logs[1:3])
    assert tuple(t["name"] for t in http) == HTTP_LABELS
    assert tuple(t["name"] for t in tcp) == TCP_LABELS


def test_peer_metadata_headers_match_the_python_proxies():
    table = tables("passthrough", BOOK)["istio-ingressgateway"]
    ident = Identity.of(table.proxy, "router")
    (route,) = next(iter(vhosts(gateway(), "http.8081").values()))["routes"]
    added = {h["header"]["key"]: h["header"]["value"] for h in route["request_headers_to_add"]}
    assert added["x-envoy-peer-metadata-id"] == ident.id_value.decode()
    assert added["x-envoy-peer-metadata"] == ident.metadata_value.decode()


def test_node_ids_are_pilot_agents():
    table = tables("passthrough", BOOK)
    node = bootstrap(table["idgen"], "sidecar", ("127.0.0.1", 15000), Path("/x"))["node"]
    assert node["id"] == "sidecar~127.0.0.1~idgen-local.recipes~recipes.svc.cluster.local"
    gw = bootstrap(table["istio-ingressgateway"], "gateway", ("127.0.0.1", 15000), Path("/x"))["node"]
    assert gw["id"].startswith("router~127.0.0.1~istio-ingressgateway-local.istio-system~")


def test_an_unknown_role_is_named():
    with pytest.raises(ValueError, match="role must be 'sidecar' or 'gateway', not 'waypoint'"):
        envoy_resources(tables("passthrough", BOOK)["idgen"], EnvoyPorts("waypoint"))


# --- the binary ---------------------------------------------------------------------------------


def test_envoy_binary_is_the_pinned_wheels_launcher():
    assert envoy_binary() == Path(sys.executable).parent / "envoy"
    assert command(Path("b.json"), 12345)[:5] == [str(envoy_binary()), "-c", "b.json", "--base-id", "12345"]


def test_a_missing_envoy_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(binary.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(EnvoyUnavailable, match=r"Envoy is not installed: .* Run `make setup`"):
        envoy_binary()


def test_a_platform_without_a_wheel_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(binary.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(binary.platform, "system", lambda: "Linux")
    monkeypatch.setattr(binary.platform, "machine", lambda: "riscv64")
    with pytest.raises(EnvoyUnavailable, match=r"not available on Linux riscv64: .*--dataplane python"):
        envoy_binary()


# --- the files ---------------------------------------------------------------------------------


def test_files_are_written_with_stale_clusters_pruned(tmp_path: Path):
    # No Envoy answers at that admin address (a closed port): nothing to wait for.
    admin = f"http://127.0.0.1:{closed_port()}"
    write_resources(tmp_path, sidecar("serviceentry"), admin)
    write_resources(tmp_path, sidecar("blackhole"), admin)
    clusters = {c["name"] for c in json.loads((tmp_path / "cds.json").read_text())["resources"]}
    assert "outbound|80||httpbin.org" not in clusters and "BlackHoleCluster" in clusters
    listeners = json.loads((tmp_path / "lds.json").read_text())
    assert listeners["version_info"] == sidecar("blackhole").version
    rds = json.dumps(listeners).count(str(tmp_path.resolve() / "rds_http_proxy.json"))
    assert rds == 1 and not list(tmp_path.glob(".*.tmp"))

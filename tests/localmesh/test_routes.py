"""localmesh.pilot.routes: every Istio rule the proxies follow, one line each, plus the route table's JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from localmesh.mesh.load import ConfigError, load_kustomization, load_text
from localmesh.mesh.model import parse
from localmesh.mesh.names import (
    ALLOW_ANY,
    BLACKHOLE,
    INGRESS_GATEWAY,
    PASSTHROUGH,
    REGISTRY_ONLY,
    UNKNOWN,
    Service,
    Workload,
)
from localmesh.pilot.codec import RouteTableError
from localmesh.pilot.routes import (
    Decision,
    RouteTable,
    build_tables,
    decide_ingress,
    decide_outbound,
    endpoint_peer,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = load_kustomization(ROOT / "manifests" / "base")
IDGEN_FQDN = "idgen.recipes.svc.cluster.local"
IDGEN_LOCAL = ("127.0.0.1", 15006)
HTTPBIN_LOCAL = ("127.0.0.1", 18000)
ADDRESSES = {"httpbin.org:80": HTTPBIN_LOCAL, f"{IDGEN_FQDN}:80": IDGEN_LOCAL}
IDGEN_SERVICE = Service(IDGEN_FQDN, "idgen", "recipes")
TO_IDGEN = Decision(f"outbound|80||{IDGEN_FQDN}", IDGEN_SERVICE, IDGEN_LOCAL, "http", f"{IDGEN_FQDN}:80/*")


def via(match: str) -> Decision:
    """TO_IDGEN from a gateway route: its decorator operation ends in the route's path match."""
    return replace(TO_IDGEN, operation=f"{IDGEN_FQDN}:80{match}")


def head(kind: str, name: str, ns: str, api: str = "networking.istio.io/v1") -> str:
    """The first lines of an object: apiVersion, kind, metadata."""
    return f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\n"


def tables(*docs: str, without: tuple[str, ...] = ()) -> dict[str, RouteTable]:
    base = [r for r in BASE if r.kind not in without]
    state, _ = parse(base + load_text("\n---\n".join(docs), "test.yaml"))
    return build_tables(state, ADDRESSES)


def idgen(*docs: str) -> RouteTable:
    return tables(*docs)["idgen"]


def out(table: RouteTable, host: str, port: int = 80, protocol: str = "http") -> Decision:
    return decide_outbound(table, host, port, protocol)


def sidecar(mode: str | None, ns: str = "recipes", name: str = "default", selector: str = "") -> str:
    spec = f"outboundTrafficPolicy: {{mode: {mode}}}" if mode else "egress: [{hosts: ['./*']}]"
    sel = f"workloadSelector: {{labels: {{{selector}}}}}, " if selector else ""
    return head("Sidecar", name, ns) + f"spec: {{{sel}{spec}}}"


def mesh(mode: str) -> str:
    return (
        head("IstioOperator", "x", "istio-system", "install.istio.io/v1alpha1")
        + f"spec: {{meshConfig: {{outboundTrafficPolicy: {{mode: {mode}}}}}}}"
    )


def entry(
    hosts: str = "[httpbin.org]",
    ports: str = "[{number: 80, name: http, protocol: HTTP}]",
    more: str = "resolution: DNS",
    ns: str = "recipes",
    name: str = "ext",
) -> str:
    return head("ServiceEntry", name, ns) + f"spec:\n  hosts: {hosts}\n  ports: {ports}\n  {more}"


TLS_PORT = "[{number: 443, name: tls, protocol: TLS}]"
REGISTRY = sidecar(REGISTRY_ONLY)


# --- outbound: ServiceEntry hosts ------------------------------------------------------------------


def test_serviceentry_host_goes_to_its_cluster_with_the_entry_namespace():
    assert out(idgen(REGISTRY, entry()), "httpbin.org") == Decision(
        "outbound|80||httpbin.org",
        Service("httpbin.org", "httpbin.org", "recipes"),
        HTTPBIN_LOCAL,
        "http",
        "httpbin.org:80/*",  # pilot's default route decorator (TraceOperation)
        endpoint_peer("ext", "recipes"),
    )


# Istio 1.30+: a DNS ServiceEntry without endpoints gets one endpoint named after the entry
# (conversion.go), whose metadata the client sidecar's metrics fall back to.
def test_dns_serviceentry_without_endpoints_names_its_endpoint_after_the_entry():
    assert endpoint_peer("httpbin-ext", "recipes") == Workload(
        name="httpbin-ext",
        namespace="recipes",
        app="unknown",
        version="unknown",
        canonical_service="httpbin-ext",
        canonical_revision="latest",
        principal="unknown",
        cluster="Kubernetes",
    )
    assert out(idgen(REGISTRY, entry(name="httpbin-ext")), "httpbin.org").peer == endpoint_peer(
        "httpbin-ext", "recipes"
    )


@pytest.mark.parametrize(
    "more",
    [
        "resolution: NONE",
        "resolution: STATIC\n  endpoints: [{address: 192.0.2.7}]",
        "resolution: DNS\n  endpoints: [{address: httpbin.org}]",
    ],
)
def test_other_serviceentries_get_no_endpoint_named_after_them(more):
    assert out(idgen(REGISTRY, entry(more=more)), "httpbin.org").peer == UNKNOWN


def test_passthrough_blackhole_and_mesh_services_name_no_endpoint_peer():
    assert out(idgen(), "example.com").peer == UNKNOWN
    assert out(idgen(REGISTRY), "example.com").peer == UNKNOWN
    assert out(idgen(), IDGEN_FQDN).peer == UNKNOWN


def test_host_match_is_case_insensitive():
    assert out(idgen(REGISTRY, entry()), "HttpBin.ORG").cluster == "outbound|80||httpbin.org"


def test_host_header_port_is_stripped():
    assert out(idgen(REGISTRY, entry()), "httpbin.org:80").cluster == "outbound|80||httpbin.org"


def test_fully_qualified_trailing_dot_is_the_same_host():
    assert out(idgen(REGISTRY, entry()), "httpbin.org.").cluster == "outbound|80||httpbin.org"


def test_serviceentry_host_on_another_port_is_not_registered():
    assert out(idgen(REGISTRY, entry()), "httpbin.org", 8080).cluster == BLACKHOLE


@pytest.mark.parametrize(
    ("export_to", "entry_ns", "visible"),
    [
        ("['.']", "recipes", True),
        ("['.']", "other", False),
        ("['*']", "other", True),
        ("[recipes]", "other", True),
        ("[elsewhere]", "other", False),
        ("['~']", "recipes", False),
        ("[]", "other", True),
    ],
)
def test_serviceentry_export_to_decides_visibility(export_to, entry_ns, visible):
    table = idgen(REGISTRY, entry(more=f"resolution: DNS\n  exportTo: {export_to}", ns=entry_ns))
    assert (out(table, "httpbin.org").cluster == "outbound|80||httpbin.org") is visible


def test_wildcard_host_matches_a_subdomain():
    table = idgen(REGISTRY, entry("['*.example.com']", TLS_PORT, "resolution: NONE"))
    assert out(table, "api.example.com", 443, "tcp").cluster == "outbound|443||*.example.com"


def test_wildcard_host_matches_deeper_subdomains():
    table = idgen(REGISTRY, entry("['*.example.com']", TLS_PORT, "resolution: NONE"))
    assert out(table, "a.b.example.com", 443, "tcp").service == Service(
        "*.example.com", "*.example.com", "recipes"
    )


def test_wildcard_host_does_not_match_the_bare_domain():
    table = idgen(REGISTRY, entry("['*.example.com']", TLS_PORT, "resolution: NONE"))
    assert out(table, "example.com", 443, "tcp").cluster == BLACKHOLE


def test_longest_wildcard_wins():
    docs = (
        entry("['*.example.com']", TLS_PORT, "resolution: NONE", name="a"),
        entry("['*.api.example.com']", TLS_PORT, "resolution: NONE", name="b"),
    )
    assert (
        out(idgen(REGISTRY, *docs), "v1.api.example.com", 443, "tcp").cluster
        == "outbound|443||*.api.example.com"
    )


def test_exact_host_beats_wildcard():
    docs = (
        entry("['*.example.com']", TLS_PORT, "resolution: NONE", name="a"),
        entry("[api.example.com]", TLS_PORT, name="b"),
    )
    assert (
        out(idgen(REGISTRY, *docs), "api.example.com", 443, "tcp").cluster == "outbound|443||api.example.com"
    )


def test_resolution_none_connects_to_the_original_destination():
    table = idgen(REGISTRY, entry("['*.example.com']", TLS_PORT, "resolution: NONE"))
    assert out(table, "api.example.com", 443, "tcp").upstream == ("api.example.com", 443)


def test_resolution_static_connects_to_the_endpoint_and_its_named_port():
    more = "resolution: STATIC\n  endpoints: [{address: 192.0.2.7, ports: {http: 8080}}]"
    assert out(idgen(REGISTRY, entry(more=more)), "httpbin.org").upstream == ("192.0.2.7", 8080)


def test_resolution_dns_with_endpoints_resolves_the_endpoint_name_through_addresses():
    more = "resolution: DNS\n  endpoints: [{address: httpbin.org}]"
    assert (
        out(idgen(REGISTRY, entry("[httpbin.internal]", more=more)), "httpbin.internal").upstream
        == HTTPBIN_LOCAL
    )


def test_resolution_dns_without_endpoints_connects_to_the_host_itself():
    assert out(idgen(REGISTRY, entry("[api.example.com]")), "api.example.com").upstream == (
        "api.example.com",
        80,
    )


def test_resolution_dns_uses_the_target_port():
    table = idgen(
        REGISTRY, entry("[api.example.com]", "[{number: 80, name: http, protocol: HTTP, targetPort: 8080}]")
    )
    assert out(table, "api.example.com").upstream == ("api.example.com", 8080)


def test_tls_serviceentry_matches_connect_by_host():
    table = idgen(REGISTRY, entry("[api.example.com]", TLS_PORT))
    assert out(table, "api.example.com:443", 443, "tcp") == Decision(
        "outbound|443||api.example.com",
        Service("api.example.com", "api.example.com", "recipes"),
        ("api.example.com", 443),
        "tcp",
        peer=endpoint_peer("ext", "recipes"),
    )


@pytest.mark.parametrize("protocol", ["TLS", "HTTPS"])
def test_plain_http_to_a_tls_serviceentry_port_falls_through_to_the_policy(protocol):
    table = idgen(REGISTRY, entry("[api.example.com]", f"[{{number: 443, name: x, protocol: {protocol}}}]"))
    assert out(table, "api.example.com", 443, "http").cluster == BLACKHOLE


def test_http_to_a_tcp_serviceentry_port_is_proxied_as_tcp():
    table = idgen(REGISTRY, entry("[db.example.com]", "[{number: 5432, name: pg, protocol: TCP}]"))
    assert out(table, "db.example.com", 5432, "http").protocol == "tcp"


def test_connect_to_an_http_serviceentry_port_uses_its_cluster_as_tcp():
    decision = out(idgen(REGISTRY, entry()), "httpbin.org", 80, "tcp")
    assert (decision.cluster, decision.service.host, decision.protocol) == (
        "outbound|80||httpbin.org",
        "httpbin.org",
        "tcp",
    )


# --- outbound: mesh services -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "idgen",
        "idgen.recipes",
        "idgen.recipes.svc",
        IDGEN_FQDN,
        "IDGEN.Recipes.svc.cluster.local.",
        "idgen:80",
    ],
)
def test_mesh_service_by_any_name_kubernetes_dns_resolves(host):
    assert out(idgen(), host) == TO_IDGEN


def test_mesh_service_on_a_port_it_does_not_have_is_not_registered():
    assert out(idgen(REGISTRY), "idgen", 8080).cluster == BLACKHOLE


def test_mesh_service_short_name_is_not_visible_from_another_namespace():
    assert out(tables()["istio-ingressgateway"], "idgen").cluster == PASSTHROUGH


def test_mesh_service_namespace_qualified_name_works_from_another_namespace():
    assert out(tables()["istio-ingressgateway"], "idgen.recipes") == TO_IDGEN


def test_mesh_service_connect_is_tcp():
    assert out(idgen(), IDGEN_FQDN, 80, "tcp").protocol == "tcp"


def test_kubernetes_service_wins_over_a_serviceentry_with_the_same_host():
    assert out(idgen(entry(f"[{IDGEN_FQDN}]")), IDGEN_FQDN) == TO_IDGEN


# --- outbound: the policy for unregistered hosts ---------------------------------------------------


def test_allow_any_http_goes_to_passthrough_named_by_host():
    assert out(idgen(), "httpbin.org") == Decision(
        PASSTHROUGH, Service("httpbin.org", PASSTHROUGH, "unknown"), HTTPBIN_LOCAL, "http"
    )


def test_allow_any_connects_to_a_host_not_in_addresses_as_is():
    assert out(idgen(), "example.net", 8080).upstream == ("example.net", 8080)


def test_allow_any_tls_goes_to_passthrough_with_the_host_unknown():
    assert out(idgen(), "httpbin.org", 443, "tcp") == Decision(
        PASSTHROUGH, Service("unknown", PASSTHROUGH, "unknown"), ("httpbin.org", 443), "tcp"
    )


def test_registry_only_http_goes_to_blackhole_named_by_host():
    assert out(idgen(REGISTRY), "httpbin.org") == Decision(
        BLACKHOLE, Service("httpbin.org", BLACKHOLE, "unknown"), None, "http"
    )


def test_registry_only_tls_goes_to_blackhole_with_the_host_unknown():
    assert out(idgen(REGISTRY), "httpbin.org", 443, "tcp") == Decision(
        BLACKHOLE, Service("unknown", BLACKHOLE, "unknown"), None, "tcp"
    )


def test_protocol_must_be_http_or_tcp():
    with pytest.raises(ValueError, match="protocol must be"):
        out(idgen(), "httpbin.org", 80, "udp")


# --- the outbound policy: Istio's precedence -------------------------------------------------------


@pytest.mark.parametrize(
    ("docs", "mode"),
    [
        ((), ALLOW_ANY),  # Istio's default
        ((mesh(REGISTRY_ONLY),), REGISTRY_ONLY),  # meshConfig
        ((mesh(REGISTRY_ONLY), sidecar(ALLOW_ANY)), ALLOW_ANY),  # the namespace Sidecar overrides meshConfig
        ((mesh(ALLOW_ANY), sidecar(REGISTRY_ONLY)), REGISTRY_ONLY),
        (
            (sidecar(REGISTRY_ONLY, ns="istio-system"),),
            REGISTRY_ONLY,
        ),  # root namespace Sidecar: mesh-wide default
        (
            (sidecar(REGISTRY_ONLY, ns="istio-system"), sidecar(ALLOW_ANY)),
            ALLOW_ANY,
        ),  # the namespace's own wins
        (
            (mesh(REGISTRY_ONLY), sidecar(None)),
            REGISTRY_ONLY,
        ),  # a Sidecar without the policy inherits meshConfig
        ((sidecar(ALLOW_ANY), sidecar(REGISTRY_ONLY, name="idgen", selector="app: idgen")), REGISTRY_ONLY),
        ((sidecar(ALLOW_ANY), sidecar(REGISTRY_ONLY, name="other", selector="app: other")), ALLOW_ANY),
        ((sidecar(REGISTRY_ONLY, ns="other"),), ALLOW_ANY),  # another namespace's Sidecar does not apply
    ],
)
def test_outbound_policy_precedence(docs, mode):
    assert idgen(*docs).outbound_policy == mode


def test_policy_source_names_the_sidecar():
    assert idgen(REGISTRY).policy_source == "Sidecar recipes/default (test.yaml)"


def test_gateway_uses_the_mesh_config_not_the_namespace_sidecar():
    assert tables(mesh(ALLOW_ANY), REGISTRY)["istio-ingressgateway"].outbound_policy == ALLOW_ANY


# --- proxy identities ------------------------------------------------------------------------------


def test_idgen_table_carries_idgen_identity():
    assert idgen().proxy == Workload(
        "idgen",
        "recipes",
        "idgen",
        "v1",
        "idgen",
        "v1",
        "spiffe://cluster.local/ns/recipes/sa/idgen",
        "Kubernetes",
    )


def test_gateway_table_carries_istio_ingressgateway_identity():
    assert (
        tables()["istio-ingressgateway"].proxy
        == INGRESS_GATEWAY
        == Workload(
            name="istio-ingressgateway",
            namespace="istio-system",
            app="istio-ingressgateway",
            version="",  # no version label: its own series say source_version=""
            canonical_service="istio-ingressgateway",
            canonical_revision="latest",
            principal="spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
            cluster="Kubernetes",
        )
    )


def test_build_tables_without_idgen_is_a_config_error():
    with pytest.raises(ConfigError, match="no Deployment idgen"):
        build_tables(parse([r for r in BASE if r.kind != "Deployment"])[0], ADDRESSES)


# --- ingress: Gateway + VirtualService -------------------------------------------------------------


def gw(
    hosts: str = "['*']",
    selector: str = "{istio: ingressgateway}",
    protocol: str = "HTTP",
    ns: str = "recipes",
) -> str:
    return (
        head("Gateway", "web", ns)
        + f"spec:\n  selector: {selector}\n  servers:\n"
        + f"  - {{port: {{number: 80, name: web, protocol: {protocol}}}, hosts: {hosts}}}"
    )


def vs(
    http: str,
    hosts: str = "['*']",
    gateways: str = "[web]",
    ns: str = "recipes",
    name: str = "site",
    more: str = "",
) -> str:
    return (
        head("VirtualService", name, ns)
        + f"spec:\n  hosts: {hosts}\n  gateways: {gateways}\n  http: {http}\n  {more}"
    )


def ingress(*docs: str) -> RouteTable:
    return tables(*docs, without=("VirtualService",))["istio-ingressgateway"]


TO_IDGEN_EXACT = "[{match: [{uri: {exact: /id}}], route: [{destination: {host: idgen}}]}]"


def test_base_routes_id_to_idgen():
    assert decide_ingress(tables()["istio-ingressgateway"], "127.0.0.1:8000", "/id") == via("/id")


@pytest.mark.parametrize("path", ["/id/", "/idx", "/", "/ID"])
def test_exact_match_is_exact(path):
    assert decide_ingress(tables()["istio-ingressgateway"], "localhost", path) is None


def test_query_string_is_not_part_of_the_path():
    assert decide_ingress(tables()["istio-ingressgateway"], "localhost", "/id?n=1") == via("/id")


def test_prefix_match_is_a_string_prefix():
    table = ingress(gw(), vs("[{match: [{uri: {prefix: /api}}], route: [{destination: {host: idgen}}]}]"))
    assert decide_ingress(table, "x", "/apix/1") == via("/api*")


def test_rule_without_match_takes_every_path():
    assert decide_ingress(ingress(gw(), vs("[{route: [{destination: {host: idgen}}]}]")), "x", "/any") == via(
        "/*"
    )


def test_first_matching_rule_wins():
    http = (
        "[{match: [{uri: {prefix: /}}], route: [{destination: {host: idgen}}]},"
        " {match: [{uri: {exact: /id}}], route: [{destination: {host: httpbin.org}}]}]"
    )
    assert decide_ingress(ingress(gw(), entry(), vs(http)), "x", "/id") == via("/*")


def test_route_to_a_serviceentry_host_uses_its_cluster():
    table = ingress(gw(), entry(), vs("[{route: [{destination: {host: httpbin.org, port: {number: 80}}}]}]"))
    assert decide_ingress(table, "x", "/uuid") == Decision(
        "outbound|80||httpbin.org",
        Service("httpbin.org", "httpbin.org", "recipes"),
        HTTPBIN_LOCAL,
        "http",
        "httpbin.org:80/*",
        endpoint_peer("ext", "recipes"),
    )


def test_specific_virtual_service_host_beats_star():
    docs = (
        gw(),
        vs(TO_IDGEN_EXACT, hosts="['*']", name="any"),
        vs("[{route: [{destination: {host: httpbin.org}}]}]", hosts="[api.example.com]", name="api"),
        entry(),
    )
    assert decide_ingress(ingress(*docs), "api.example.com:8000", "/id").cluster == "outbound|80||httpbin.org"


def test_virtual_service_hosts_restrict_the_authority():
    assert (
        decide_ingress(ingress(gw(), vs(TO_IDGEN_EXACT, hosts="['site.example']")), "other.example", "/id")
        is None
    )


def test_wildcard_virtual_service_host_admits_subdomains():
    assert decide_ingress(
        ingress(gw(), vs(TO_IDGEN_EXACT, hosts="['*.example']")), "www.example", "/id"
    ) == via("/id")


def test_gateway_hosts_restrict_the_authority():
    assert decide_ingress(ingress(gw("['site.example']"), vs(TO_IDGEN_EXACT)), "other.example", "/id") is None


@pytest.mark.parametrize(
    ("hosts", "routed"), [("['recipes/*']", True), ("['./*']", True), ("['other/*']", False)]
)
def test_gateway_host_namespace_part_admits_virtual_services_of_that_namespace(hosts, routed):
    assert (decide_ingress(ingress(gw(hosts), vs(TO_IDGEN_EXACT)), "x", "/id") is not None) is routed


def test_virtual_service_names_gateway_as_namespace_slash_name():
    http = TO_IDGEN_EXACT.replace("host: idgen", f"host: {IDGEN_FQDN}")
    table = ingress(gw(), vs(http, gateways="[recipes/web]", ns="other"))
    assert decide_ingress(table, "x", "/id") == via("/id")


def test_short_destination_host_means_a_service_in_the_virtual_service_namespace():
    assert (
        decide_ingress(ingress(gw(), vs(TO_IDGEN_EXACT, gateways="[recipes/web]", ns="other")), "x", "/id")
        is None
    )


def test_short_gateway_name_means_the_virtual_service_namespace():
    assert decide_ingress(ingress(gw(), vs(TO_IDGEN_EXACT, gateways="[web]", ns="other")), "x", "/id") is None


def test_virtual_service_exported_only_to_its_namespace_is_invisible_to_the_gateway():
    assert decide_ingress(ingress(gw(), vs(TO_IDGEN_EXACT, more="exportTo: ['.']")), "x", "/id") is None


def test_virtual_service_exported_to_istio_system_is_visible_to_the_gateway():
    assert decide_ingress(
        ingress(gw(), vs(TO_IDGEN_EXACT, more="exportTo: [istio-system]")), "x", "/id"
    ) == via("/id")


def test_gateway_selecting_another_gateway_routes_nothing():
    assert (
        decide_ingress(ingress(gw(selector="{istio: egressgateway}"), vs(TO_IDGEN_EXACT)), "x", "/id") is None
    )


def test_https_gateway_server_routes_nothing():
    table = ingress(gw(protocol="HTTPS").replace("hosts:", "tls: {mode: SIMPLE}, hosts:"), vs(TO_IDGEN_EXACT))
    assert decide_ingress(table, "x", "/id") is None


def test_regex_match_never_matches():
    table = ingress(gw(), vs("[{match: [{uri: {regex: '/i.'}}], route: [{destination: {host: idgen}}]}]"))
    assert decide_ingress(table, "x", "/id") is None


def test_no_virtual_service_means_no_route():
    assert decide_ingress(ingress(gw()), "x", "/id") is None


# --- the route table as JSON -----------------------------------------------------------------------


ALL = [
    idgen(),
    idgen(REGISTRY, entry(more="resolution: STATIC\n  endpoints: [{address: 192.0.2.7}]")),
    tables()["istio-ingressgateway"],
]


@pytest.mark.parametrize("table", ALL)
def test_table_json_round_trip_is_exact(table):
    assert (
        RouteTable.from_json(table.to_json()) == table
        and RouteTable.from_json(table.to_json()).to_json() == table.to_json()
    )


def test_decisions_are_the_same_after_a_round_trip():
    table = RouteTable.from_json(idgen(REGISTRY, entry()).to_json())
    assert out(table, "httpbin.org").cluster == "outbound|80||httpbin.org" and out(table, "idgen") == TO_IDGEN


def test_version_is_a_digest_of_the_content():
    assert idgen().version == idgen().version != idgen(REGISTRY).version


def mutate(change) -> str:
    data = json.loads(ALL[2].to_json())
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "route table: not valid JSON"),
        ("[]", "route table: expected an object, got list"),
        (mutate(lambda d: d.update(extra=1)), "route table: unknown field 'extra'"),
        (mutate(lambda d: d.pop("proxy")), "route table.proxy: required field is missing"),
        (mutate(lambda d: d["proxy"].update(name=3)), "route table.proxy.name: expected a string, got 3"),
        (
            mutate(lambda d: d.update(outbound_policy="DENY")),
            "route table.outbound_policy: 'DENY' is neither",
        ),
        (
            mutate(lambda d: d["addresses"].update(x=["h", "80"])),
            "route table.addresses['x'][1]: expected an integer",
        ),
        (
            mutate(lambda d: d["ingress_routes"][0].update(match="regex")),
            "ingress_routes[0].match: 'regex' is not",
        ),
        (
            mutate(lambda d: d["ingress_routes"][0].update(upstream=["h"])),
            "upstream: expected 2 items, got 1",
        ),
    ],
)
def test_bad_table_json_is_refused_with_where(text, message):
    with pytest.raises(RouteTableError) as info:
        RouteTable.from_json(text)
    assert message in str(info.value)


def test_remembered_decisions_stay_right_past_the_memo_limit():
    table = idgen(REGISTRY, entry())
    blocked = [out(table, f"h{i}.example").cluster for i in range(5000)]
    assert set(blocked) == {BLACKHOLE} and out(table, "httpbin.org").cluster == "outbound|80||httpbin.org"


def test_the_memo_is_keyed_on_what_decides_a_route_and_keeps_no_long_key():
    table = tables()["istio-ingressgateway"]
    for i in range(100):
        assert decide_ingress(table, "localhost", f"/id?q={i}{'x' * 4096}") == via("/id")
    assert decide_ingress(table, "localhost", "/" + "p" * 5000) is None
    assert out(table, "h" * 5000 + ".example").cluster == PASSTHROUGH
    # One key for the hundred queries; the 5,000-character path and host were decided, not kept.
    assert sorted(key[:2] for key in table._memo) == [("in", "localhost")]

"""localmesh.mesh: loading manifests as kubectl does, validation errors and warnings, the cluster state."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localmesh.mesh.load import ConfigError, load_file, load_kustomization, load_text
from localmesh.mesh.model import parse
from localmesh.mesh.names import (
    ALLOW_ANY,
    BLACKHOLE,
    OPTION_SELECTOR,
    PASSTHROUGH,
    REGISTRY_ONLY,
    canonical_service,
)
from localmesh.mesh.store import ClusterState
from localmesh.pilot.routes import build_tables, decide_outbound

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
DATA = Path(__file__).resolve().parent / "data"
OVERLAYS = ("passthrough", "blackhole", "serviceentry")
ADDRESSES = {
    "httpbin.org:80": ("127.0.0.1", 18000),
    "idgen.recipes.svc.cluster.local:80": ("127.0.0.1", 15006),
}


def head(kind: str, name: str, ns: str, api: str = "networking.istio.io/v1") -> str:
    """The first lines of an object: apiVersion, kind, metadata."""
    return f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\n"


OPERATOR = head("IstioOperator", "x", "istio-system", "install.istio.io/v1alpha1")


def overlay(name: str) -> list:
    return load_kustomization(MANIFESTS / "overlays" / name)


def parse_text(text: str) -> tuple:
    return parse(load_text(text, "test.yaml"))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    return str(info.value)


SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: recipes}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"""


# --- the real overlays -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_loads_without_warnings_about_what_localmesh_reads(name):
    _, warnings = parse(overlay(name) + load_file(MANIFESTS / "istio" / "mesh-allow-any.yaml"))
    # Kinds localmesh has no use for (e.g. alert rules) may join the overlays; they warn, nothing else may.
    assert [w for w in warnings if "not used by localmesh" not in w] == []


def test_passthrough_overlay_is_allow_any_and_httpbin_goes_to_passthrough():
    state, _ = parse(overlay("passthrough"))
    decision = decide_outbound(build_tables(state, ADDRESSES)["idgen"], "httpbin.org", 80, "http")
    assert (state.outbound_mode, decision.cluster, decision.upstream) == (
        ALLOW_ANY,
        PASSTHROUGH,
        ("127.0.0.1", 18000),
    )


def test_blackhole_overlay_sends_httpbin_to_blackhole():
    state, _ = parse(overlay("blackhole"))
    decision = decide_outbound(build_tables(state, ADDRESSES)["idgen"], "httpbin.org", 80, "http")
    assert (state.outbound_mode, decision.cluster, decision.upstream) == (REGISTRY_ONLY, BLACKHOLE, None)


def test_serviceentry_overlay_routes_httpbin_to_its_cluster_in_recipes():
    state, _ = parse(overlay("serviceentry"))
    decision = decide_outbound(build_tables(state, ADDRESSES)["idgen"], "httpbin.org", 80, "http")
    assert decision.cluster == "outbound|80||httpbin.org"
    assert (decision.service.host, decision.service.name, decision.service.namespace) == (
        "httpbin.org",
        "httpbin.org",
        "recipes",
    )


@pytest.mark.parametrize(
    ("name", "mesh", "mode"),
    [
        ("passthrough", "mesh-registry-only.yaml", ALLOW_ANY),
        ("blackhole", "mesh-allow-any.yaml", REGISTRY_ONLY),
    ],
)
def test_overlay_sidecar_overrides_the_istio_operator_mesh_config(name, mesh, mode):
    assert parse(load_file(MANIFESTS / "istio" / mesh) + overlay(name))[0].outbound_mode == mode


@pytest.mark.parametrize("mesh", ["mesh-allow-any.yaml", "mesh-registry-only.yaml"])
def test_istio_operator_sets_the_mesh_default_without_warnings(mesh):
    state, warnings = parse(load_file(MANIFESTS / "istio" / mesh))
    assert (state.mesh_mode, warnings) == (
        mesh.removeprefix("mesh-").removesuffix(".yaml").upper().replace("-", "_"),
        [],
    )


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: cannot compare with kustomize"
)
@pytest.mark.parametrize("name", OVERLAYS)
def test_loader_builds_what_kubectl_kustomize_builds(name):
    built = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / "overlays" / name)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in yaml.safe_load_all(built)
    }
    ours = {(r.kind, r.raw_namespace, r.name): r.body for r in overlay(name)}
    assert ours == theirs


# --- kustomize loader ------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n"


def kustomize_error(tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_kustomization(tmp_path / "app")
    return str(info.value)


@pytest.mark.parametrize("filename", ["kustomization.yaml", "kustomization.yml", "Kustomization"])
def test_kustomization_file_names_kustomize_accepts(tmp_path, filename):
    write(tmp_path / "app" / filename, "resources: [ns.yaml]\n")
    write(tmp_path / "app" / "ns.yaml", NS.format("a"))
    assert [r.name for r in load_kustomization(tmp_path / "app")] == ["a"]


def test_resources_then_components_in_order(tmp_path):
    write(tmp_path / "base" / "kustomization.yaml", "resources: [ns.yaml]\n")
    write(tmp_path / "base" / "ns.yaml", NS.format("a"))
    write(tmp_path / "comp" / "kustomization.yaml", "kind: Component\nresources: [ns.yaml]\n")
    write(tmp_path / "comp" / "ns.yaml", NS.format("b"))
    write(tmp_path / "app" / "kustomization.yaml", "components: [../comp]\nresources: [../base]\n")
    assert [r.name for r in load_kustomization(tmp_path / "app")] == ["a", "b"]


def test_unknown_kustomization_field_names_file_and_field():
    with pytest.raises(ConfigError) as info:
        load_kustomization(DATA / "invalid" / "kustomize-unknown-field")
    expected = "kustomize-unknown-field/kustomization.yaml: namePrefix: localmesh reads only resources and"
    assert expected in str(info.value)


def test_kustomization_missing(tmp_path):
    (tmp_path / "app").mkdir()
    assert "no kustomization file" in kustomize_error(tmp_path)


def test_two_kustomization_files_are_refused_as_kustomize_does(tmp_path):
    write(tmp_path / "app" / "kustomization.yaml", "resources: []\n")
    write(tmp_path / "app" / "kustomization.yml", "resources: []\n")
    assert "found multiple kustomization files" in kustomize_error(tmp_path)


def test_component_listed_under_resources_is_refused(tmp_path):
    write(tmp_path / "comp" / "kustomization.yaml", "kind: Component\nresources: []\n")
    write(tmp_path / "app" / "kustomization.yaml", "resources: [../comp]\n")
    assert "a Component must be listed under components:" in kustomize_error(tmp_path)


def test_kustomization_listed_under_components_is_refused(tmp_path):
    write(tmp_path / "base" / "kustomization.yaml", "resources: []\n")
    write(tmp_path / "app" / "kustomization.yaml", "components: [../base]\n")
    assert "kind: expected 'Component'" in kustomize_error(tmp_path)


def test_file_outside_the_kustomization_directory_is_refused(tmp_path):
    write(tmp_path / "other" / "ns.yaml", NS.format("a"))
    write(tmp_path / "app" / "kustomization.yaml", "resources: [../other/ns.yaml]\n")
    assert "is not in or below" in kustomize_error(tmp_path)


def test_duplicate_object_id_is_refused(tmp_path):
    write(tmp_path / "app" / "a.yaml", NS.format("same"))
    write(tmp_path / "app" / "b.yaml", NS.format("same"))
    write(tmp_path / "app" / "kustomization.yaml", "resources: [a.yaml, b.yaml]\n")
    assert re.search(
        r"Namespace same from \S*app/b.yaml is already defined in \S*app/a.yaml", kustomize_error(tmp_path)
    )


def test_missing_resource_path(tmp_path):
    write(tmp_path / "app" / "kustomization.yaml", "resources: [nope.yaml]\n")
    assert "resources[0]: 'nope.yaml' does not exist" in kustomize_error(tmp_path)


def test_remote_base_is_refused(tmp_path):
    write(tmp_path / "app" / "kustomization.yaml", "resources: [https://github.com/x/y//base]\n")
    assert "localmesh reads local paths only" in kustomize_error(tmp_path)


def test_kustomization_cycle_is_reported(tmp_path):
    write(tmp_path / "app" / "kustomization.yaml", "resources: [../loop]\n")
    write(tmp_path / "loop" / "kustomization.yaml", "resources: [../app]\n")
    assert "kustomization cycle" in kustomize_error(tmp_path)


# --- files and YAML --------------------------------------------------------------------------------


def test_multi_document_file_skips_empty_documents():
    assert [r.name for r in load_text("---\n" + NS.format("a") + "---\n---\n" + NS.format("b"))] == ["a", "b"]


def test_list_kind_stands_for_its_items():
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
    assert [r.ref for r in load_text(text)] == ["Namespace a"]


def test_load_file_of_a_directory_reads_its_yaml_files_in_name_order(tmp_path):
    write(tmp_path / "b.yaml", NS.format("b"))
    write(tmp_path / "a.yml", NS.format("a"))
    write(tmp_path / "notes.txt", "not yaml")
    assert [r.name for r in load_file(tmp_path)] == ["a", "b"]


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_file("/nonexistent/x.yaml")


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(ConfigError) as info:
        load_text("a: 1\n b: 2\n", "test.yaml")
    assert str(info.value).startswith(
        "test.yaml: invalid YAML at line 2, column 3: mapping values are not allowed"
    )


def test_duplicate_yaml_key_is_an_error_as_in_kubectl():
    with pytest.raises(ConfigError, match="found duplicate key 'name'"):
        load_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Namespace\nmetadata: {name: a}\n", "Namespace a: apiVersion: required field is missing"),
        ("apiVersion: v1\nmetadata: {name: a}\n", "<no kind> a: kind: required field is missing"),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {}\n",
            "Namespace ?: metadata.name: required field is missing",
        ),
        (
            "apiVersion: v1\nkind: Namespace\n",
            "Namespace ?: metadata: expected a mapping with a name, got nothing",
        ),
        ("- a\n- b\n", "expected a Kubernetes object (a mapping), got a list"),
    ],
)
def test_object_without_its_identity_is_refused(text, expected):
    with pytest.raises(ConfigError) as info:
        load_text(text, "test.yaml")
    assert str(info.value) == f"test.yaml (document 1): {expected}"


def test_unquoted_label_value_is_refused_with_a_hint():
    text = NS.format("a") + "  labels:\n    egress-lab/option-resource: true\n"
    with pytest.raises(
        ConfigError, match=r"metadata.labels\['egress-lab/option-resource'\]: .*boolean true \(quote"
    ):
        load_text(text)


def test_missing_namespace_is_default_like_kubectl():
    resource = load_text(SE.replace("namespace: recipes", "labels: {}"))[0]
    assert (resource.namespace, resource.ref) == ("default", "ServiceEntry default/ext")


# --- invalid resources: file, resource and field ---------------------------------------------------


def test_bad_enum_message_names_file_resource_and_field(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as info:
        parse(load_file("tests/localmesh/data/invalid/serviceentry-bad-enum.yaml"))
    assert str(info.value) == (
        "tests/localmesh/data/invalid/serviceentry-bad-enum.yaml: ServiceEntry recipes/httpbin-ext: "
        "spec.ports[0].protocol: 'HTTPX' is not one of HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO"
    )


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (
            "serviceentry-bad-type.yaml",
            "ServiceEntry recipes/httpbin-ext: spec.ports[0].number: expected an integer, got string '80'",
        ),
        (
            "serviceentry-missing-hosts.yaml",
            "ServiceEntry recipes/no-hosts: spec.hosts: required field is missing",
        ),
        (
            "sidecar-bad-mode.yaml",
            "Sidecar recipes/default: spec.outboundTrafficPolicy.mode: "
            "'DENY_ALL' is not one of REGISTRY_ONLY, ALLOW_ANY",
        ),
    ],
)
def test_invalid_resource_message_names_file_resource_and_field(monkeypatch, file, expected):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as info:
        parse(load_file(DATA / "invalid" / file))
    assert str(info.value) == f"tests/localmesh/data/invalid/{file}: {expected}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("hosts: [api.example.com]", "hosts: ['*']"), "spec.hosts[0]: '*' is not allowed"),
        (
            ("hosts: [api.example.com]", "hosts: ['bad host']"),
            "spec.hosts[0]: 'bad host' is not a valid host",
        ),
        (
            ("hosts: [api.example.com]", "hosts: ['*.example.com']"),
            "wildcard host '*.example.com' needs resolution NONE",
        ),
        (("resolution: DNS", "resolution: STATIC"), "spec.endpoints: resolution STATIC needs endpoints"),
        (
            ("resolution: DNS", "resolution: STATIC\n  endpoints: [{address: api.example.com}]"),
            "spec.endpoints[0].address: 'api.example.com': resolution STATIC needs IP addresses",
        ),
        (
            ("resolution: DNS", "resolution: NONE\n  endpoints: [{address: 192.0.2.1}]"),
            "endpoints are not allowed with resolution NONE",
        ),
        (("resolution: DNS", "resolution: dns"), "spec.resolution: 'dns' is not one of NONE, STATIC, DNS"),
        (
            ("resolution: DNS", "resolution: DNS\n  location: OUTSIDE"),
            "spec.location: 'OUTSIDE' is not one of",
        ),
        (("resolution: DNS", "resolution: DNS\n  exportTo: [Bad_NS]"), "spec.exportTo[0]: 'Bad_NS' is not"),
        (
            ("number: 443", "number: 70000"),
            "spec.ports[0].number: 70000 is out of range (expected 1 to 65535)",
        ),
        (("number: 443, name: tls, ", "number: 443, "), "spec.ports[0].name: required field is missing"),
        (
            ("ports: [", "ports: [{number: 443, name: b, protocol: TLS}, "),
            "spec.ports[1].number: port 443 is used twice",
        ),
        (
            ("ports: [{number: 443, name: tls, protocol: TLS}]", "ports: []"),
            "spec.ports: required: at least one entry",
        ),
        (
            ("apiVersion: networking.istio.io/v1", "apiVersion: networking.istio.io/v2"),
            "apiVersion: 'networking",
        ),
    ],
)
def test_service_entry_validation(change, expected):
    message = error_of(SE.replace(*change))
    assert message.startswith("test.yaml: ServiceEntry recipes/ext: ") and expected in message


def test_port_protocol_is_case_insensitive_like_istio():
    state, _ = parse_text(SE.replace("protocol: TLS", "protocol: tls"))
    assert state.service_entries[0].ports[0].protocol == "TLS"


def test_sidecar_without_any_configuration_is_refused_like_istio():
    text = head("Sidecar", "s", "recipes") + "spec: {}\n"
    assert (
        error_of(text)
        == "test.yaml: Sidecar recipes/s: spec: empty Sidecar: set outboundTrafficPolicy (or egress/ingress)"
    )


def test_gateway_server_without_hosts_is_refused():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: recipes}\n"
        "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n"
    )
    assert error_of(text) == "test.yaml: Gateway recipes/g: spec.servers[0].hosts: required field is missing"


def test_virtual_service_uri_needs_exactly_one_kind():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: recipes}\n"
        "spec:\n  hosts: ['*']\n  gateways: [g]\n  http:\n  - match: [{uri: {exact: /a, prefix: /b}}]\n"
        "    route: [{destination: {host: idgen}}]\n"
    )
    assert error_of(text).endswith("spec.http[0].match[0].uri: expected exactly one of exact, prefix, regex")


def test_kinds_of_other_api_groups_are_not_taken_for_istio_or_kubernetes_ones():
    text = (
        head("Gateway", "g", "recipes", "gateway.networking.k8s.io/v1") + "spec: {gatewayClassName: istio}\n"
    )
    assert parse_text(text)[1] == [
        "test.yaml: Gateway recipes/g: not used by localmesh (gateway.networking.k8s.io/v1 Gateway)"
    ]


def test_the_same_object_twice_is_refused():
    assert "defined twice" in error_of(SE + "---\n" + SE)


# --- warnings: unsupported and unknown fields, unused kinds, dangling references -------------------


def test_unsupported_fields_are_warned_about_with_file_resource_and_field(monkeypatch):
    monkeypatch.chdir(ROOT)
    _, warnings = parse(
        load_kustomization(MANIFESTS / "base") + load_file(DATA / "unsupported" / "unsupported-fields.yaml")
    )
    prefix = "tests/localmesh/data/unsupported/unsupported-fields.yaml: "
    assert [w.removeprefix(prefix) for w in warnings] == [
        "Sidecar recipes/default: spec.egress: localmesh does not implement this; every ServiceEntry "
        "exported to this namespace stays visible (no host import lists)",
        "ServiceEntry recipes/api-ext: spec.addresses: localmesh does not implement this; localmesh matches "
        "ServiceEntries by host name (requests reach it by host through HTTP_PROXY or CONNECT), so addresses "
        "are ignored",
        "ServiceEntry recipes/api-ext: spec.colour: unknown field (not in the schema); ignored",
        "VirtualService recipes/idgen-canary: spec.http[0].retries: localmesh does not implement this; "
        "ignored",
        "VirtualService recipes/idgen-canary: spec.http[0].match[0].headers: localmesh does not implement "
        "this; localmesh ignores this condition, so the match is wider than on a cluster",
        "DestinationRule recipes/idgen: not used by localmesh (networking.istio.io/v1 DestinationRule)",
    ]


def test_allow_any_dynamic_dns_is_refused_with_what_to_use_instead():
    text = OPERATOR + "spec:\n  meshConfig: {outboundTrafficPolicy: {mode: ALLOW_ANY_DYNAMIC_DNS}}\n"
    assert error_of(text) == (
        "test.yaml: IstioOperator istio-system/x: spec.meshConfig.outboundTrafficPolicy.mode: "
        "ALLOW_ANY_DYNAMIC_DNS (Istio 1.31's dynamic forward proxy for plain HTTP, reported under "
        "AllowAnyDynamicDNSCluster) is not supported by localmesh; use ALLOW_ANY, which sends unknown "
        "hosts to PassthroughCluster, or REGISTRY_ONLY"
    )
    sidecar = (
        head("Sidecar", "s", "recipes") + "spec: {outboundTrafficPolicy: {mode: ALLOW_ANY_DYNAMIC_DNS}}\n"
    )
    assert error_of(sidecar) == (
        "test.yaml: Sidecar recipes/s: spec.outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS is only valid "
        "in the mesh config, not in a Sidecar (Istio refuses it too); use ALLOW_ANY or REGISTRY_ONLY here"
    )


def test_istio_operator_install_settings_give_no_warning():
    text = (
        OPERATOR + "spec:\n  profile: demo\n"
        "  components: {egressGateways: [{name: istio-egressgateway, enabled: true}]}\n"
        "  meshConfig: {accessLogFile: /dev/stdout, outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n"
    )
    assert parse_text(text)[1] == []


def test_sidecar_policy_without_mode_is_registry_only_with_a_warning():
    text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: recipes}\n"
    state, warnings = parse_text(text + "spec: {outboundTrafficPolicy: {}}\n")
    assert state.outbound_policy("recipes").mode == REGISTRY_ONLY
    assert warnings == [
        "test.yaml: Sidecar recipes/s: spec.outboundTrafficPolicy.mode: not set: "
        "Istio reads that as REGISTRY_ONLY (the enum's default)"
    ]


def test_gateway_tls_server_is_ignored_with_a_warning():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: recipes}\n"
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        "  - {port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}\n"
    )
    assert parse_text(text)[1] == [
        "test.yaml: Gateway recipes/g: spec.servers[0].tls: localmesh does not implement this; "
        "localmesh's gateway serves plain HTTP only",
        "test.yaml: Gateway recipes/g: spec.servers[0].port.protocol: HTTPS: "
        "localmesh's gateway serves plain HTTP only; server ignored",
    ]


def test_virtual_service_for_the_mesh_is_warned_about():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: recipes}\n"
        "spec:\n  hosts: [httpbin.org]\n  http:\n  - route: [{destination: {host: httpbin.org}}]\n"
    )
    warnings = parse_text(text)[1]
    assert "spec.gateways: localmesh applies VirtualServices at the ingress gateway only" in warnings[0]
    assert "destination httpbin.org is no Service or ServiceEntry host" in warnings[1]


def test_dangling_gateway_reference_and_foreign_selector_are_warned_about():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: recipes}\n"
        "spec:\n  selector: {istio: egressgateway}\n  servers:\n"
        "  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}\n---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: recipes}\n"
        "spec:\n  hosts: ['*']\n  gateways: [nope]\n  http:\n  - route: [{destination: {host: idgen}}]\n"
    )
    joined = "\n".join(parse_text(text)[1])
    assert "Gateway recipes/g: spec.selector: selects no gateway localmesh runs" in joined
    assert "VirtualService recipes/v: spec.gateways[0]: no Gateway recipes/nope; binding ignored" in joined


def test_two_namespace_wide_sidecars_are_warned_about():
    text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {}, namespace: recipes}}\n"
    spec = "spec: {outboundTrafficPolicy: {mode: ALLOW_ANY}}\n"
    _, warnings = parse_text(
        text.format("a") + spec + "---\n" + text.format("b") + spec.replace("ALLOW_ANY", "REGISTRY_ONLY")
    )
    assert "more than one Sidecar without workloadSelector" in warnings[0]


# --- workload identity -----------------------------------------------------------------------------


def test_idgen_deployment_gives_its_workload_identity():
    state, _ = parse(overlay("passthrough"))
    idgen = state.workload("idgen", "recipes")
    assert (idgen.name, idgen.namespace, idgen.app, idgen.version) == ("idgen", "recipes", "idgen", "v1")
    assert (idgen.canonical_service, idgen.canonical_revision) == ("idgen", "v1")
    assert (idgen.principal, idgen.cluster) == ("spiffe://cluster.local/ns/recipes/sa/idgen", "Kubernetes")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a"},
            ("c", "latest"),
        ),
        ({"app.kubernetes.io/name": "k", "app": "a"}, ("k", "latest")),
        ({"app": "a"}, ("a", "latest")),
        ({}, ("workload", "latest")),
        (
            {"service.istio.io/canonical-revision": "r", "app.kubernetes.io/version": "k", "version": "v"},
            ("workload", "r"),
        ),
        ({"app.kubernetes.io/version": "k", "version": "v"}, ("workload", "k")),
        ({"version": "v"}, ("workload", "v")),
    ],
)
def test_canonical_service_and_revision_follow_istio(labels, expected):
    assert canonical_service(labels, "workload") == expected


def test_deployment_without_service_account_runs_as_default():
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: n}\nspec: {template: {}}\n"
    assert parse_text(text)[0].workload("w").principal == "spiffe://cluster.local/ns/n/sa/default"


def test_mesh_trust_domain_changes_principals():
    text = OPERATOR + "spec: {meshConfig: {trustDomain: lab.local}}\n"
    state, _ = parse(load_text(text) + overlay("passthrough"))
    assert state.workload("idgen").principal == "spiffe://lab.local/ns/recipes/sa/idgen"


# --- the cluster state: kubectl apply, the option switch, JSON --------------------------------------


def test_apply_file_creates_then_reports_unchanged_then_configured():
    cluster = ClusterState()
    first = cluster.apply(load_text(SE))
    second = cluster.apply(load_text(SE))
    third = cluster.apply(load_text(SE.replace("443", "8443")))
    assert [c.action for r in (first, second, third) for c in r.changes] == [
        "created",
        "unchanged",
        "configured",
    ]
    assert str(first.changes[0]) == "serviceentry.networking.istio.io/ext created"


def test_switching_overlays_deletes_the_option_resources_the_new_one_lacks():
    cluster = ClusterState(load_file(MANIFESTS / "istio" / "mesh-allow-any.yaml"))
    cluster.apply(overlay("serviceentry"), prune_selector=OPTION_SELECTOR)
    result = cluster.apply(overlay("blackhole"), prune_selector=OPTION_SELECTOR)
    assert [str(c) for c in result.changes if c.action != "unchanged"] == [
        'serviceentry.networking.istio.io "httpbin-ext" deleted from recipes namespace'
    ]
    assert result.state.outbound_mode == REGISTRY_ONLY and result.state.service_entries == ()
    assert any(r.kind == "IstioOperator" for r in cluster.resources)  # not an option resource: kept


def test_switching_to_passthrough_reconfigures_the_sidecar():
    cluster = ClusterState()
    cluster.apply_kustomization(MANIFESTS / "overlays" / "blackhole")
    result = cluster.apply_kustomization(MANIFESTS / "overlays" / "passthrough")
    assert [str(c) for c in result.changes if c.action != "unchanged"] == [
        "sidecar.networking.istio.io/default configured"
    ]
    assert result.state.outbound_mode == ALLOW_ANY


def test_apply_file_does_not_prune(tmp_path):
    cluster = ClusterState()
    cluster.apply(overlay("serviceentry"), prune_selector=OPTION_SELECTOR)
    cluster.apply_file(write(tmp_path / "se.yaml", SE))
    assert {r.name for r in cluster.resources if r.kind == "ServiceEntry"} == {"httpbin-ext", "ext"}


def test_invalid_apply_changes_nothing():
    cluster = ClusterState()
    cluster.apply(overlay("passthrough"), prune_selector=OPTION_SELECTOR)
    before = cluster.to_json()
    with pytest.raises(ConfigError):
        cluster.apply(load_text(SE.replace("TLS", "HTTPX")))
    assert cluster.to_json() == before


def test_delete_by_label():
    cluster = ClusterState(overlay("serviceentry"))
    assert sorted(c.kind for c in cluster.delete(OPTION_SELECTOR)) == ["ServiceEntry", "Sidecar"]


def test_delete_resources_removes_what_a_file_names_and_reports_the_rest(tmp_path):
    cluster = ClusterState()
    cluster.apply(overlay("blackhole"), prune_selector=OPTION_SELECTOR)
    cluster.apply_file(write(tmp_path / "se.yaml", SE))
    result = cluster.delete_resources(load_file(tmp_path / "se.yaml"))
    assert [str(c) for c in result.changes] == [
        'serviceentry.networking.istio.io "ext" deleted from recipes namespace'
    ]
    assert not [r for r in cluster.resources if r.kind == "ServiceEntry"]
    again = cluster.delete_resources(load_file(tmp_path / "se.yaml"))
    assert again.changes == () and "ServiceEntry recipes/ext: not found" in again.warnings[0]


def test_cluster_state_json_round_trip():
    cluster = ClusterState(overlay("serviceentry"))
    again = ClusterState.from_json(cluster.to_json())
    assert again.to_json() == cluster.to_json() and [r.source for r in again.resources] == [
        r.source for r in cluster.resources
    ]


def test_cluster_state_from_garbage_is_a_config_error():
    with pytest.raises(ConfigError, match="not a localmesh cluster state"):
        ClusterState.from_json('{"resources": 3}')

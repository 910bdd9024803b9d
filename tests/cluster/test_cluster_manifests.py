"""Every manifest validates against its kind's schema, and the checks reject broken ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cluster_checks import ManifestError, check_document, check_file, load_documents, unparsed_fields
from cluster_paths import DATA, MANIFESTS, ROOT, kubernetes_schema_version, pinned_versions

# Files under manifests/ that are not Kubernetes/kustomize/istioctl input: the plain Prometheus rule file
# (checked by promtool in test_cluster_rules.py).
NOT_RESOURCES = {MANIFESTS / "monitoring" / "egress-rules.yaml"}
MANIFEST_FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p not in NOT_RESOURCES)
BROKEN = DATA / "broken"


def test_every_manifest_is_found() -> None:
    # Guard against the glob silently matching nothing (a check that cannot fail).
    names = {p.relative_to(MANIFESTS).as_posix() for p in MANIFEST_FILES}
    assert {
        "base/idgen-deployment.yaml",
        "components/serviceentry-httpbin/serviceentry-httpbin.yaml",
        "istio/mesh-registry-only.yaml",
        "monitoring/prometheusrule-egress.yaml",
    } <= names


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.relative_to(MANIFESTS).as_posix())
def test_manifest_validates(path: Path) -> None:
    checked = check_file(path, kubernetes_schema_version())
    assert checked, f"{path} has no resources"
    for c in checked:
        # Nothing slips through without a schema: each resource names the one it passed.
        assert c.schema, c


def test_kubernetes_validate_cli_agrees(tmp_path: Path) -> None:
    """The kubernetes-validate command itself (--strict, pinned version) passes the Kubernetes kinds of
    base and fails the broken Deployment."""
    cli = Path(sys.executable).parent / "kubernetes-validate"
    version = kubernetes_schema_version()
    kube_files = [
        MANIFESTS / "base" / name
        for name in (
            "namespace-recipes.yaml",
            "idgen-serviceaccount.yaml",
            "idgen-deployment.yaml",
            "idgen-service.yaml",
        )
    ]
    ok = subprocess.run(
        [cli, "--strict", "-k", version, *kube_files], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("passed") == len(kube_files), ok.stdout
    bad = subprocess.run(
        [cli, "--strict", "-k", version, BROKEN / "deployment-misspelled-field.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "replica" in bad.stdout + bad.stderr


# Each broken fixture, and the field its error must name.
BROKEN_CASES = {
    "deployment-misspelled-field.yaml": "'replica' was unexpected",
    "deployment-wrong-type.yaml": "containerPort",
    "serviceentry-misspelled-field.yaml": "spec.exportto (unknown field)",
    "serviceentry-bad-resolution.yaml": "spec.resolution",
    "sidecar-misspelled-mode.yaml": "spec.outboundTrafficPolicy.mode",
    "virtualservice-nested-unknown-field.yaml": "spec.http[0].route[0].destination.prot (unknown field)",
    "istiooperator-unknown-mesh-field.yaml": "outboundTraficPolicy",
    "istiooperator-bad-mode.yaml": "'DENY_ALL' is not one of",
    "prometheusrule-unknown-field.yaml": "spec.groups[0].rules[0].label (unknown field)",
    "istiooperator-gateway-misspelled-service-field.yaml": "spec.components.ingressGateways[0].k8s.service",
    "podmonitor-misspelled-field.yaml": "spec.podMetricsEndpoints[0].intervall (unknown field)",
    "kustomization-with-patches/kustomization.yaml": "only resources and components allowed",
}


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_broken_manifest_is_rejected(name: str) -> None:
    path = BROKEN / name
    with pytest.raises(ManifestError) as caught:
        check_file(path, kubernetes_schema_version())
    assert BROKEN_CASES[name] in str(caught.value)
    # The error names the file and the resource, so a user can find it.
    assert str(path) in str(caught.value)
    doc = load_documents(path)[0]
    assert doc["kind"] in caught.value.resource


def test_every_broken_fixture_is_a_case() -> None:
    on_disk = {p.relative_to(BROKEN).as_posix() for p in BROKEN.rglob("*.yaml")}
    assert on_disk == set(BROKEN_CASES)


def test_unknown_kind_is_an_error() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ManifestError, match="no schema for this kind"):
        check_document(Path("widget.yaml"), doc, kubernetes_schema_version())


def test_unparsed_fields_reports_drops_and_coercions() -> None:
    original = {"a": 1, "b": {"c": "80", "d": [1, {"e": 2}]}}
    parsed = {"a": 1, "b": {"c": 80, "d": [1, {}]}}
    assert unparsed_fields(original, parsed) == [
        "b.c ('80' read as 80)",
        "b.d[1].e (unknown field)",
    ]
    assert unparsed_fields(original, original) == []


def test_serviceentry_is_designs_plus_export_to() -> None:
    """The ServiceEntry of option 3 (docs/istio-facts.md), exactly, plus exportTo and the option label."""
    design = yaml.safe_load(
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
  namespace: recipes
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"""
    )
    (actual,) = load_documents(
        MANIFESTS / "components" / "serviceentry-httpbin" / "serviceentry-httpbin.yaml"
    )
    assert actual["metadata"].pop("labels") == {"egress-lab/option-resource": "true"}
    assert actual["spec"].pop("exportTo") == ["."]
    assert actual == design


def test_istio_facts_doc_gives_that_serviceentry() -> None:
    """docs/istio-facts.md shows the ServiceEntry of option 3: the manifest's, minus label and exportTo."""
    text = (ROOT / "docs" / "istio-facts.md").read_text()
    block = text.split("The ServiceEntry of option 3", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (actual,) = load_documents(
        MANIFESTS / "components" / "serviceentry-httpbin" / "serviceentry-httpbin.yaml"
    )
    del actual["metadata"]["labels"], actual["spec"]["exportTo"]
    assert yaml.safe_load(block) == actual


def test_deployment_hardening() -> None:
    """idgen's Deployment: identity labels, probes, resources, a locked-down container, field by field."""
    (dep,) = load_documents(MANIFESTS / "base" / "idgen-deployment.yaml")
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == {"app": "idgen", "version": "v1"}
    assert (
        '"holdApplicationUntilProxyStarts": true' in pod["metadata"]["annotations"]["proxy.istio.io/config"]
    )
    (container,) = pod["spec"]["containers"]
    assert container["image"] == pinned_versions()["IDGEN_IMAGE"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]) == {"requests", "limits"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    (svc,) = load_documents(MANIFESTS / "base" / "idgen-service.yaml")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080}]
    (ns,) = load_documents(MANIFESTS / "base" / "namespace-recipes.yaml")
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"


def test_istio_install_values_side_by_side() -> None:
    """The two IstioOperator files differ only in the mesh-wide outbound policy."""
    allow = load_documents(MANIFESTS / "istio" / "mesh-allow-any.yaml")[0]
    registry = load_documents(MANIFESTS / "istio" / "mesh-registry-only.yaml")[0]
    assert allow["spec"]["meshConfig"]["outboundTrafficPolicy"]["mode"] == "ALLOW_ANY"
    assert registry["spec"]["meshConfig"]["outboundTrafficPolicy"]["mode"] == "REGISTRY_ONLY"
    registry["spec"]["meshConfig"]["outboundTrafficPolicy"]["mode"] = "ALLOW_ANY"
    assert allow == registry
    assert allow["spec"]["profile"] == "demo"


def test_gateway_node_port_is_the_one_kind_publishes() -> None:
    """kind maps GATEWAY_NODE_PORT (scripts/lib.sh) to the host; the IstioOperator gives it to port 80."""
    (doc,) = load_documents(MANIFESTS / "istio" / "gateway-nodeport.yaml")
    (gateway,) = doc["spec"]["components"]["ingressGateways"]
    assert gateway["name"] == "istio-ingressgateway" and gateway["enabled"] is True
    service = gateway["k8s"]["service"]
    assert service["type"] == "NodePort"
    by_name = {port["name"]: port for port in service["ports"]}
    # Helm replaces the ports list: the demo profile's five ports must all be there.
    assert set(by_name) == {"status-port", "http2", "https", "tcp", "tls"}
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert f"GATEWAY_NODE_PORT={by_name['http2']['nodePort']}\n" in lib
    assert by_name["http2"]["port"] == 80 and by_name["http2"]["targetPort"] == 8080


def test_mesh_files_leave_the_gateway_service_alone() -> None:
    """Only the kind-only file sets the gateway's Service: a GKE install keeps the LoadBalancer."""
    for name in ("mesh-allow-any.yaml", "mesh-registry-only.yaml"):
        (doc,) = load_documents(MANIFESTS / "istio" / name)
        assert "components" not in doc["spec"], name

"""Every overlay builds with kubectl's kustomize and holds exactly the resources of its option."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_checks import check_document, resource_name
from cluster_paths import MANIFESTS, kubernetes_schema_version

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed, so kustomize cannot build the overlays here"
)

OPTION_LABEL = ("egress-lab/option-resource", "true")
BASE = {
    "Namespace recipes",
    "ServiceAccount recipes/idgen",
    "Deployment recipes/idgen",
    "Service recipes/idgen",
    "Gateway recipes/recipes-gateway",
    "VirtualService recipes/idgen",
}
# Per option: the option resources, and what the ones that matter must say.
OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "passthrough": {"Sidecar recipes/default": {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}},
    "blackhole": {"Sidecar recipes/default": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}},
    "serviceentry": {
        "Sidecar recipes/default": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}},
        "ServiceEntry recipes/httpbin-ext": {
            "hosts": ["httpbin.org"],
            "exportTo": ["."],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "DNS",
            "location": "MESH_EXTERNAL",
        },
    },
}


def build(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {resource_name(d): d for d in docs}
    assert len(out) == len(docs), "two resources with the same kind and name"
    return out


def test_the_overlays_are_the_three_options() -> None:
    assert {p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()} == set(OPTIONS)


@needs_kubectl
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_overlay_holds_exactly_its_option(option: str) -> None:
    resources = by_name(build(MANIFESTS / "overlays" / option))
    assert set(resources) == BASE | set(OPTIONS[option])
    for name, spec in OPTIONS[option].items():
        assert resources[name]["spec"] == spec, name
        # Option resources carry the label the demo step deletes by; base resources do not.
        assert resources[name]["metadata"]["labels"][OPTION_LABEL[0]] == OPTION_LABEL[1], name
    for name in BASE:
        assert OPTION_LABEL[0] not in (resources[name]["metadata"].get("labels") or {}), name


@needs_kubectl
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_overlay_output_validates(option: str) -> None:
    """What `kubectl apply -k` would send, resource by resource, against the schemas."""
    for doc in build(MANIFESTS / "overlays" / option):
        check_document(
            MANIFESTS / "overlays" / option / "kustomization.yaml", doc, kubernetes_schema_version()
        )


@needs_kubectl
def test_base_and_monitoring_build() -> None:
    assert set(by_name(build(MANIFESTS / "base"))) == BASE
    monitoring = by_name(build(MANIFESTS / "monitoring"))
    assert set(monitoring) == {
        "PrometheusRule istio-system/egress-lab",
        "PodMonitor istio-system/envoy-stats-monitor",
    }
    for doc in monitoring.values():
        check_document(MANIFESTS / "monitoring" / "kustomization.yaml", doc, kubernetes_schema_version())


@needs_kubectl
def test_the_rules_come_with_the_scrape_they_read() -> None:
    """The PrometheusRule reads the sidecars' istio_requests_total: the PodMonitor beside it makes the
    Operator scrape every istio-proxy container (all namespaces) at Istio's merged-metrics endpoint."""
    monitor = by_name(build(MANIFESTS / "monitoring"))["PodMonitor istio-system/envoy-stats-monitor"]["spec"]
    assert monitor["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/stats/prometheus"
    keep = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_container_name"],
        "regex": "istio-proxy",
        "action": "keep",
    } in keep
    # Scraped no less often than the rules' 5m windows need, and at the addon's interval.
    assert endpoint["interval"] == "15s"


@needs_kubectl
def test_switching_options_deletes_what_the_new_one_lacks() -> None:
    """The resources the demo step must delete when moving between options (apply -k does not prune)."""

    def option_resources(option: str) -> set[str]:
        docs = build(MANIFESTS / "overlays" / option)
        return {
            resource_name(d)
            for d in docs
            if (d["metadata"].get("labels") or {}).get(OPTION_LABEL[0]) == OPTION_LABEL[1]
        }

    assert option_resources("serviceentry") - option_resources("blackhole") == {
        "ServiceEntry recipes/httpbin-ext"
    }
    assert option_resources("serviceentry") - option_resources("passthrough") == {
        "ServiceEntry recipes/httpbin-ext"
    }
    # The Sidecar is in every option under one name: it is updated in place, never deleted.
    assert option_resources("passthrough") == option_resources("blackhole") == {"Sidecar recipes/default"}


def test_every_kustomization_uses_only_resources_and_components() -> None:
    files = sorted(MANIFESTS.rglob("kustomization.yaml"))
    assert len(files) >= 8
    for path in files:
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        check_document(path, doc, kubernetes_schema_version())

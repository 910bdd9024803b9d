"""Offline validation of the manifests the cluster path applies, with each kind's own schema:

- Kubernetes kinds: the Kubernetes OpenAPI schemas of the pinned version, strict (kubernetes-validate).
- Istio kinds: Istio's CRD models (cloudcoil-models-istio); PrometheusRule: the Prometheus Operator's
  (cloudcoil-models-prometheus-operator). Those pydantic models drop fields they do not know, so the parsed
  model is dumped again and compared with the input: anything dropped or changed is an unknown field.
- IstioOperator (read by istioctl, not a cluster resource since Istio 1.24): ISTIO_OPERATOR_SCHEMA below,
  and each gateway's k8s.service as the Kubernetes ServiceSpec it becomes (strict, as above).
- kustomization.yaml: only resources and components, so localmesh reads the same state.

Every check raises ManifestError naming the file, the resource (Kind namespace/name) and the field.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import yaml

# The CRD models by (apiVersion, kind): (module, class). Imported on first use: those modules define
# thousands of pydantic classes (seconds to import), which collecting the other tiers should not pay.
CRD_MODELS: dict[tuple[str, str], tuple[str, str]] = {
    ("networking.istio.io/v1", "Gateway"): ("cloudcoil.models.istio.networking.v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"): ("cloudcoil.models.istio.networking.v1", "VirtualService"),
    ("networking.istio.io/v1", "ServiceEntry"): ("cloudcoil.models.istio.networking.v1", "ServiceEntry"),
    ("networking.istio.io/v1", "Sidecar"): ("cloudcoil.models.istio.networking.v1", "Sidecar"),
    ("networking.istio.io/v1", "DestinationRule"): (
        "cloudcoil.models.istio.networking.v1",
        "DestinationRule",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "cloudcoil.models.prometheus_operator.v1",
        "PrometheusRule",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("cloudcoil.models.prometheus_operator.v1", "PodMonitor"),
}


def crd_model(key: tuple[str, str]) -> type[pydantic.BaseModel]:
    """The CRD model of a (apiVersion, kind) in CRD_MODELS (Python caches the module once imported)."""
    module, name = CRD_MODELS[key]
    model: type[pydantic.BaseModel] = getattr(importlib.import_module(module), name)
    return model


KUSTOMIZE_KINDS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ("kustomize.config.k8s.io/v1alpha1", "Component"),
}
# localmesh reads these kustomizations itself: they may only list resources and components (no patches,
# generators or transformers), so a reader without kustomize sees the same state.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components"}

_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
_NAME_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _OBJECT, "annotations": _OBJECT},
}
# IstioOperatorSpec as istioctl parses it: istio/istio operator/pkg/apis/types.go (IstioOperatorSpec,
# IstioComponentSpec). meshConfig lists only the MeshConfig fields this lab sets; OutboundTrafficPolicy.Mode
# is REGISTRY_ONLY or ALLOW_ANY (istio/api mesh/v1alpha1/config.proto). Extend it when the lab sets more.
ISTIO_OPERATOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "spec"],
    "properties": {
        "apiVersion": {"const": "install.istio.io/v1alpha1"},
        "kind": {"const": "IstioOperator"},
        "metadata": _NAME_META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "profile": {
                    "enum": ["default", "demo", "minimal", "remote", "empty", "preview", "ambient", "stable"]
                },
                "installPackagePath": _STRING,
                "hub": _STRING,
                "tag": {"type": ["string", "number"]},
                "namespace": _STRING,
                "revision": _STRING,
                "compatibilityVersion": _STRING,
                "meshConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "outboundTrafficPolicy": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["mode"],
                            "properties": {"mode": {"enum": ["REGISTRY_ONLY", "ALLOW_ANY"]}},
                        },
                        "accessLogFile": _STRING,
                    },
                },
                "components": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: {"type": ["object", "array"]}
                        for name in (
                            "base",
                            "pilot",
                            "cni",
                            "ztunnel",
                            "istiodRemote",
                            "ingressGateways",
                            "egressGateways",
                            "gateway",
                        )
                    },
                },
                "values": _OBJECT,
                "unvalidatedValues": _OBJECT,
            },
        },
    },
}


class ManifestError(Exception):
    """A manifest that a cluster would reject or silently misread."""

    def __init__(self, file: Path | str, resource: str, message: str) -> None:
        super().__init__(f"{file}: {resource}: {message}")
        self.file = str(file)
        self.resource = resource
        self.message = message


@dataclass(frozen=True)
class Checked:
    """One resource that passed, and by which schema."""

    file: str
    resource: str
    schema: str


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, empty ones dropped."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def resource_name(doc: dict[str, Any]) -> str:
    """Kind namespace/name, as errors name a resource."""
    kind = doc.get("kind", "<no kind>")
    meta = doc.get("metadata") or {}
    if "name" not in meta:
        return kind
    return f"{kind} {meta['namespace']}/{meta['name']}" if "namespace" in meta else f"{kind} {meta['name']}"


def _path(parts: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def unparsed_fields(original: Any, parsed: Any, where: tuple[Any, ...] = ()) -> list[str]:
    """Paths present in `original` that `parsed` lost or changed: a model that ignores unknown fields
    accepts a misspelled field silently, so comparing its dump with the input is what rejects it."""
    if isinstance(original, dict):
        if not isinstance(parsed, dict):
            return [f"{_path(where)} (an object here, the schema wants another type)"]
        found = []
        for key, value in original.items():
            if key not in parsed:
                found.append(f"{_path((*where, key))} (unknown field)")
            else:
                found += unparsed_fields(value, parsed[key], (*where, key))
        return found
    if isinstance(original, list):
        if not isinstance(parsed, list) or len(parsed) != len(original):
            return [f"{_path(where)} (list changed by the schema)"]
        found = []
        for i, (a, b) in enumerate(zip(original, parsed, strict=True)):
            found += unparsed_fields(a, b, (*where, i))
        return found
    if original != parsed or type(original) is not type(parsed):
        return [f"{_path(where)} ({original!r} read as {parsed!r})"]
    return []


def check_model(file: Path | str, doc: dict[str, Any], model: type[pydantic.BaseModel]) -> None:
    """Parse with the CRD's model, then require that nothing was dropped or coerced."""
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(file, resource_name(doc), f"{_path(first['loc'])}: {first['msg']}") from exc
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    lost = unparsed_fields(doc, dumped)
    if lost:
        raise ManifestError(file, resource_name(doc), "; ".join(lost))


def check_kubernetes(file: Path | str, doc: dict[str, Any], kubernetes_version: str) -> None:
    """Strict validation against the Kubernetes OpenAPI schemas: unknown fields are errors."""
    try:
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ManifestError(file, resource_name(doc), f"{_path(list(exc.path))}: {exc.message}") from exc
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(file, resource_name(doc), f"no schema for this kind: {exc}") from exc


def check_istio_operator(file: Path | str, doc: dict[str, Any], kubernetes_version: str) -> None:
    try:
        jsonschema.validate(doc, ISTIO_OPERATOR_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise ManifestError(file, resource_name(doc), f"{_path(list(exc.path))}: {exc.message}") from exc
    # components.<ingress|egress>Gateways[].k8s.service is the gateway's Service spec (istio/istio
    # operator/pkg/apis/types.go: KubernetesResources.Service is a *corev1.ServiceSpec): check it as one.
    components = doc["spec"].get("components") or {}
    for key in ("ingressGateways", "egressGateways"):
        for i, gateway in enumerate(components.get(key) or []):
            service = (gateway.get("k8s") or {}).get("service")
            if service is None:
                continue
            wrapped = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "gateway"},
                "spec": service,
            }
            try:
                kubernetes_validate.validate(wrapped, kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = _path(["spec", "components", key, i, "k8s", "service", *list(exc.path)[1:]])
                raise ManifestError(file, resource_name(doc), f"{where}: {exc.message}") from exc


def check_kustomization(file: Path, doc: dict[str, Any]) -> None:
    extra = set(doc) - KUSTOMIZATION_KEYS
    if extra:
        raise ManifestError(
            file, resource_name(doc), f"only resources and components allowed, not {sorted(extra)}"
        )
    for key in ("resources", "components"):
        for entry in doc.get(key) or []:
            if not (file.parent / entry).exists():
                raise ManifestError(file, resource_name(doc), f"{key}: {entry} does not exist")


def check_document(file: Path, doc: dict[str, Any], kubernetes_version: str) -> Checked:
    """Validate one resource with the schema of its kind; returns which schema was used."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in KUSTOMIZE_KINDS:
        check_kustomization(file, doc)
        schema = "kustomization (resources/components only)"
    elif key == ("install.istio.io/v1alpha1", "IstioOperator"):
        check_istio_operator(file, doc, kubernetes_version)
        schema = "IstioOperator (istio/istio operator/pkg/apis/types.go)"
    elif key in CRD_MODELS:
        model = crd_model(key)
        check_model(file, doc, model)
        schema = f"CRD model {model.__module__}.{model.__name__}"
    else:
        check_kubernetes(file, doc, kubernetes_version)
        schema = f"Kubernetes {kubernetes_version} (strict)"
    return Checked(str(file), resource_name(doc), schema)


def check_file(path: Path, kubernetes_version: str) -> list[Checked]:
    """Validate every resource of a manifest file."""
    docs = load_documents(path)
    if not docs:
        raise ManifestError(path, "-", "no YAML documents")
    return [check_document(path, doc, kubernetes_version) for doc in docs]

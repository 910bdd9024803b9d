"""The mesh config as localmesh reads it: the same YAML a cluster gets from `kubectl apply -k/-f`.

Three layers, each usable on its own:
- loading: `load_kustomization(dir)` (what `kubectl kustomize` builds, for the `resources:` and
  `components:` this bundle uses), `load_file(path)` (`-f`) and `load_text(text, source)` -> a list
  of `Resource`, each remembering the file it came from;
- validation: `parse(resources)` -> (`MeshState`, warnings). Invalid input raises `ConfigError`
  naming file, resource (Kind namespace/name) and field; fields localmesh does not implement, and
  fields no schema knows, become warnings (never silently ignored);
- the local stand-in for the API server: `ClusterState`, with `kubectl apply` semantics (upsert by
  kind/namespace/name, and the option switch's delete-by-label), saved as JSON in the stack's state folder.

Istio rules implemented here cite the Istio source they follow.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from localmesh.routes import ALLOW_ANY, GATEWAY_LABELS, REGISTRY_ONLY, Workload

# Istio's config root namespace (meshConfig.rootNamespace default): a Sidecar there is the mesh-wide default.
ROOT_NAMESPACE = "istio-system"
# The namespace of the bundle's app (idgen); MeshState.outbound_mode answers for it.
APP_NAMESPACE = "recipes"
# kubectl puts resources without metadata.namespace into the context's namespace, normally "default".
DEFAULT_NAMESPACE = "default"
# Kubernetes DNS suffix and Istio's default trust domain (meshConfig.trustDomain).
CLUSTER_DOMAIN = "cluster.local"
# The cluster ID Istio reports as source_cluster/destination_cluster (ISTIO_META_CLUSTER_ID default).
CLUSTER_ID = "Kubernetes"
# Option-specific resources carry this label; switching options deletes those the new overlay lacks.
OPTION_LABEL = "egress-lab/option-resource"
OPTION_SELECTOR = f"{OPTION_LABEL}=true"

ISTIO_NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
OUTBOUND_MODES = (REGISTRY_ONLY, ALLOW_ANY)
# Port protocols localmesh accepts on ServiceEntry and Gateway ports (Istio parses them case-insensitively:
# pkg/config/protocol/instance.go Parse).
PORT_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "MONGO")
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")

# Kinds without a namespace (kubectl ignores metadata.namespace on them).
_CLUSTER_SCOPED = frozenset(
    [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "Node",
    ]
)
# Standard ObjectMeta fields: accepted without a word (they do not change what the mesh does).
_METADATA_FIELDS = frozenset(
    [
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "generateName",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    ]
)


class ConfigError(Exception):
    """Invalid mesh config: the message names the file, the resource and the field, and what is expected."""


# --------------------------------------------------------------------------------------------------
# Resources and loading


@dataclass(frozen=True, eq=False)
class Resource:
    """One Kubernetes object as read from a file: the raw document plus where it came from."""

    body: dict[str, Any]
    source: str

    @classmethod
    def from_body(cls, body: Any, source: str, where: str = "") -> Resource:
        """Checks what every object needs (apiVersion, kind, metadata.name); the rest is parse()'s job."""
        at = f"{source}{where}"
        if not isinstance(body, dict):
            raise ConfigError(f"{at}: expected a Kubernetes object (a mapping), got {_describe(body)}")
        kind = body.get("kind")
        meta = body.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        shown_kind = kind if isinstance(kind, str) and kind else "<no kind>"
        label = f"{shown_kind} {name if isinstance(name, str) else '?'}"
        for key in ("apiVersion", "kind"):
            value = body.get(key)
            if value is None:
                raise ConfigError(f"{at}: {label}: {key}: required field is missing")
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"{at}: {label}: {key}: expected a non-empty string, got {_describe(value)}"
                )
        if not isinstance(meta, dict):
            got = "nothing" if meta is None else _describe(meta)
            raise ConfigError(f"{at}: {label}: metadata: expected a mapping with a name, got {got}")
        if name is None:
            raise ConfigError(f"{at}: {label}: metadata.name: required field is missing")
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{at}: {label}: metadata.name: expected a non-empty string, got {_describe(name)}"
            )
        namespace = meta.get("namespace")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ConfigError(
                f"{at}: {label}: metadata.namespace: expected a non-empty string, got {_describe(namespace)}"
            )
        for key in ("labels", "annotations"):
            _check_string_map(
                meta.get(key), f"metadata.{key}", lambda path, msg: f"{at}: {label}: {path}: {msg}"
            )
        _check_json(body, "", lambda path, msg: f"{at}: {label}: {path or '(top level)'}: {msg}")
        return cls(body, source)

    @property
    def api_version(self) -> str:
        return self.body["apiVersion"]

    @property
    def group(self) -> str:
        """The API group ("" for the core group), as kustomize uses it in resource IDs."""
        return self.api_version.rpartition("/")[0]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def raw_namespace(self) -> str | None:
        return self.body["metadata"].get("namespace")

    @property
    def namespace(self) -> str:
        """The namespace kubectl would use: none for cluster-scoped kinds, else the given one or "default"."""
        if self.kind in _CLUSTER_SCOPED:
            return ""
        return self.raw_namespace or DEFAULT_NAMESPACE

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("labels") or {})

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity in the cluster state: (kind, namespace, name), as `kubectl apply` upserts."""
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """How messages name it: "ServiceEntry recipes/httpbin-ext" (or "Namespace recipes")."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def _describe(value: Any) -> str:
    """A value's YAML type and text, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, _BigInteger):
        return f"an integer of {value.digits} digits"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _check_json(value: Any, path: str, message: Any) -> None:
    """A Kubernetes object is JSON: string keys, and strings, finite numbers, 64-bit integers,
    booleans, null, lists and mappings as values. YAML can say more (!!binary, !!set, integer or
    list keys, huge integers); each is refused here, naming the field, instead of failing later."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(
                    message(
                        path,
                        f"key {key!r} is not a string ({_describe(key)}): Kubernetes objects are JSON, "
                        "whose keys are strings; quote it",
                    )
                )
            _check_json(item, _join(path, key), message)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", message)
    elif isinstance(value, _BigInteger):
        raise ConfigError(
            message(
                path,
                f"an integer of {value.digits} digits is out of range (Kubernetes integers are "
                "64-bit); quote it if it is meant as text",
            )
        )
    elif isinstance(value, bytes):
        raise ConfigError(
            message(path, "binary data (!!binary) is not a JSON value; give it as a base64 string")
        )
    elif isinstance(value, set):
        raise ConfigError(message(path, "a set (!!set) is not a JSON value; write a list"))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(message(path, f"{value} is not a JSON number"))
    elif value is not None and not isinstance(value, str | int | float):
        raise ConfigError(message(path, f"{_describe(value)} is not a JSON value"))


def _check_string_map(value: Any, path: str, message: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(message(path, f"expected a mapping of strings, got {_describe(value)}"))
    for k, v in value.items():
        if not isinstance(k, str):
            raise ConfigError(message(path, f"key {k!r} must be a string"))
        if not isinstance(v, str):
            hint = " (quote it)" if isinstance(v, bool | int | float) else ""
            raise ConfigError(message(f"{path}[{k!r}]", f"expected a string, got {_describe(v)}{hint}"))


# YAML as kubectl reads it: YAML 1.1 scalars, but timestamps stay strings (Kubernetes fields are strings),
# and a duplicated key is an error (kubectl rejects it; PyYAML would silently keep the last one).
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


class _BigInteger(int):
    """An integer literal too long to be a Kubernetes integer (int64). Kept unconverted, so that a
    5,000-digit literal neither trips Python's int conversion limit nor costs time, and reported by
    Resource.from_body with its resource and field."""

    digits = 0


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = sum(ch.isdigit() for ch in node.value)
    if digits > MAX_INTEGER_DIGITS:
        big = _BigInteger(0)
        big.digits = digits
        return big
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in result
        except TypeError as err:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
            ) from err
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

# Input limits, so that a small hostile file cannot take the control plane's time and memory:
# - a file may hold at most what the Kubernetes API server accepts in one request body, 3 MiB
#   (k8s.io/apiserver/pkg/server/config.go NewConfig: MaxRequestBodyBytes = 3 * 1024 * 1024);
# - aliases may not do most of the work: kubectl's YAML decoder (go-yaml v2 decode.go, the fix for
#   CVE-2019-11253 "billion laughs", kubernetes/kubernetes#83253) fails with "document contains
#   excessive aliasing" when more than 100 aliases expand and alias expansion makes more than
#   allowedAliasRatio() of the nodes decoded; the same rule is applied here to the node graph before
#   anything is built from it;
# - nesting: go-yaml stops at 10,000 levels; Python's recursion limit is lower, and Kubernetes objects
#   nest a dozen levels deep, so localmesh stops at 100;
# - integers: Kubernetes integers are 64-bit (19 digits); longer literals are refused;
# - kustomizations may include kustomizations up to 100 levels deep (this bundle uses 3).
MAX_FILE_BYTES = 3 * 1024 * 1024
MAX_NESTING = 100
MAX_INTEGER_DIGITS = 19
MAX_KUSTOMIZATION_DEPTH = 100


def _allowed_alias_ratio(decoded: int) -> float:
    """go-yaml v2 decode.go allowedAliasRatio: 99% up to 400,000 decoded nodes, down to 10% at 4,000,000."""
    low, high = 400_000, 4_000_000
    if decoded <= low:
        return 0.99
    if decoded >= high:
        return 0.10
    return 0.99 - 0.89 * (decoded - low) / (high - low)


def _check_node_graph(root: yaml.Node, source: str) -> None:
    """Refuse excessive aliasing and nesting in a composed document, before it is constructed.

    An alias is the anchored node object itself, so the graph has each node once; `expanded` counts
    what a decoder that copies aliases (kubectl's) would decode, memoised by node, so even a billion
    laughs is counted in a few hundred steps."""
    expanded: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if id(node) in expanded:
            continue
        if depth > MAX_NESTING:
            mark = node.start_mark
            raise ConfigError(
                f"{source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: nested more "
                f"than {MAX_NESTING} levels deep (Kubernetes objects nest far less)"
            )
        if isinstance(node, yaml.ScalarNode):
            expanded[id(node)] = 1
            continue
        children = (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if children_done:
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in children)
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in expanded)
    decoded = expanded[id(root)]
    distinct = len(expanded)
    from_aliases = decoded - distinct
    if from_aliases > 100 and decoded > 1000 and from_aliases / decoded > _allowed_alias_ratio(decoded):
        raise ConfigError(
            f"{source}: invalid YAML: document contains excessive aliasing ({distinct} nodes expand to "
            f"{decoded} through anchors and aliases; kubectl refuses such a document too). Write the "
            "objects out without anchors"
        )


def _display(path: Path) -> str:
    """Paths in messages: relative to the working directory when below it (as the user typed them)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{_display(path)}: {size} bytes is more than the {MAX_FILE_BYTES} bytes (3 MiB) the "
                "Kubernetes API server accepts in one request; split the file"
            )
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{_display(path)}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{_display(path)}: not UTF-8 text: {err}") from err


def _yaml_documents(text: str, source: str) -> list[Any]:
    """The documents of a YAML stream, each checked for aliasing and nesting before it is built
    (what yaml.load_all does, with that check in between)."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: more than {MAX_FILE_BYTES} bytes (3 MiB, the API server's limit)")
    loader = _Loader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            _check_node_graph(node, source)
            documents.append(loader.construct_document(node))
        return documents
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{source}: invalid YAML{where}: {what}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from err
    finally:
        loader.dispose()


def load_text(text: str, source: str = "<stdin>") -> list[Resource]:
    """The objects in YAML/JSON text (multi-document); `source` names it in messages (`-f -` reads stdin)."""
    resources: list[Resource] = []
    for index, doc in enumerate(_yaml_documents(text, source), start=1):
        if doc is None:  # an empty document (e.g. a leading or trailing ---)
            continue
        where = f" (document {index})"
        # A kind: List (what `kubectl get -o yaml` writes) stands for its items.
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            resources.extend(Resource.from_body(item, source, where) for item in doc["items"])
        else:
            resources.append(Resource.from_body(doc, source, where))
    return resources


def load_file(path: str | Path) -> list[Resource]:
    """`kubectl apply -f PATH`: the objects of a (multi-document) YAML/JSON file, or of every
    .yaml/.yml/.json file directly in a directory (sorted by name, as kubectl does)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
        if not files:
            raise ConfigError(f"{_display(p)}: no .yaml, .yml or .json files in this directory")
        return [r for f in files for r in load_file(f)]
    if not p.exists():
        raise ConfigError(f"{_display(p)}: no such file or directory")
    return load_text(_read_text(p), _display(p))


KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Fields localmesh reads in a kustomization; anything else (patches, namePrefix, ...) would make
# `kubectl apply -k` and localmesh see different objects, so it is refused.
KUSTOMIZATION_FIELDS = ("apiVersion", "kind", "metadata", "resources", "components")


def load_kustomization(directory: str | Path) -> list[Resource]:
    """`kubectl kustomize DIR` for what this bundle uses: `resources:` (files or kustomization
    directories) and `components:` (directories whose kustomization is `kind: Component`).
    Follows kustomize's rules: resources first, then components; a file must lie in or below the
    kustomization's directory (kustomize's load restrictor); an object ID may appear only once."""
    return _build_kustomization(Path(directory), "Kustomization", ())


def _build_kustomization(directory: Path, expected_kind: str, stack: tuple[Path, ...]) -> list[Resource]:
    shown = _display(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(f"{shown}: {what} (expected a kustomization directory)")
    real = directory.resolve()
    if real in stack:
        chain = " -> ".join(_display(p) for p in (*stack, real))
        raise ConfigError(f"{shown}: kustomization cycle: {chain}")
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if not found:
        raise ConfigError(
            f"{shown}: no kustomization file (expected one of {', '.join(KUSTOMIZATION_FILES)})"
        )
    if len(found) > 1:
        raise ConfigError(f"{shown}: found multiple kustomization files: {', '.join(p.name for p in found)}")
    kfile = found[0]
    kshown = _display(kfile)
    docs = [d for d in _yaml_documents(_read_text(kfile), kshown) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ConfigError(f"{kshown}: expected one YAML mapping (a kustomization)")
    spec = docs[0]
    for key in spec:
        if key not in KUSTOMIZATION_FIELDS:
            raise ConfigError(
                f"{kshown}: {key}: localmesh reads only resources and components of a kustomization "
                f"(plus {', '.join(KUSTOMIZATION_FIELDS[:3])}), so that localmesh and `kubectl apply -k` "
                f"build the same objects; remove {key!r} or apply the built output with -f"
            )
    kind = spec.get("kind", "Kustomization")
    if kind not in ("Kustomization", "Component"):
        raise ConfigError(f"{kshown}: kind: {kind!r} is not one of Kustomization, Component")
    # kustomize: a directory in `resources:` must not be a Component; one in `components:` must be.
    if expected_kind == "Component" and kind != "Component":
        raise ConfigError(
            f"{kshown}: kind: expected 'Component' (it is listed under components:), got {kind!r}"
        )
    if expected_kind == "Kustomization" and kind == "Component" and stack:
        raise ConfigError(f"{kshown}: kind: a Component must be listed under components:, not resources:")

    accumulated: list[Resource] = []
    seen: dict[tuple[str, str, str | None, str], Resource] = {}

    def add(items: Iterable[Resource], entry: str) -> None:
        for res in items:
            # kustomize's resource ID: group, kind, namespace as written, name.
            rid = (res.group, res.kind, res.raw_namespace, res.name)
            if rid in seen:
                raise ConfigError(
                    f"{kshown}: {entry}: {res.ref} from {res.source} is already defined in "
                    f"{seen[rid].source} (kustomize: may not add resource with an already registered id)"
                )
            seen[rid] = res
            accumulated.append(res)

    for section in ("resources", "components"):
        entries = spec.get(section) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{kshown}: {section}: expected a list of paths, got {_describe(entries)}")
        for i, entry in enumerate(entries):
            at = f"{section}[{i}]"
            if not isinstance(entry, str) or not entry:
                raise ConfigError(f"{kshown}: {at}: expected a path, got {_describe(entry)}")
            if "://" in entry or entry.startswith(("github.com/", "git@")):
                raise ConfigError(
                    f"{kshown}: {at}: {entry!r}: localmesh reads local paths only (no remote bases)"
                )
            target = directory / entry
            if len(stack) + 1 >= MAX_KUSTOMIZATION_DEPTH and (section == "components" or target.is_dir()):
                raise ConfigError(
                    f"{kshown}: {at}: {entry!r}: kustomizations nested more than {MAX_KUSTOMIZATION_DEPTH} "
                    f"deep (from {_display(stack[0]) if stack else shown}); flatten the chain"
                )
            if section == "components":
                add(_build_kustomization(target, "Component", (*stack, real)), at)
            elif target.is_dir():
                add(_build_kustomization(target, "Kustomization", (*stack, real)), at)
            elif target.is_file():
                if not target.resolve().is_relative_to(real):
                    raise ConfigError(
                        f"{kshown}: {at}: {entry!r} is not in or below {shown} (kustomize's load restrictor "
                        "refuses files outside the kustomization's directory; list its directory instead)"
                    )
                add(load_file(target), at)
            else:
                raise ConfigError(f"{kshown}: {at}: {entry!r} does not exist")
    return accumulated


# --------------------------------------------------------------------------------------------------
# Typed, validated objects


@dataclass(frozen=True)
class MeshConfig:
    """The part of an IstioOperator localmesh uses: spec.meshConfig (the rest is install-time config)."""

    ref: str
    source: str
    outbound_mode: str | None  # None: not set here
    trust_domain: str | None


@dataclass(frozen=True)
class SidecarConfig:
    name: str
    namespace: str
    source: str
    selector: dict[str, str] | None  # workloadSelector.labels; None = the namespace-wide Sidecar
    outbound_mode: str | None  # None: outboundTrafficPolicy not set (the mesh config's applies)

    @property
    def ref(self) -> str:
        return f"Sidecar {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceEntryPort:
    number: int
    name: str
    protocol: str  # upper case, one of PORT_PROTOCOLS
    target_port: int | None = None


@dataclass(frozen=True)
class ServiceEntryEndpoint:
    address: str
    ports: dict[str, int] = field(default_factory=dict)  # port name -> endpoint port


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    namespace: str
    source: str
    hosts: tuple[str, ...]  # lower case
    ports: tuple[ServiceEntryPort, ...]
    resolution: str = "NONE"
    location: str = "MESH_EXTERNAL"
    export_to: tuple[str, ...] = ()  # empty: every namespace
    endpoints: tuple[ServiceEntryEndpoint, ...] = ()

    @property
    def ref(self) -> str:
        return f"ServiceEntry {self.namespace}/{self.name}"

    def visible_to(self, namespace: str) -> bool:
        return _exported_to(self.export_to, self.namespace, namespace)


def _exported_to(export_to: tuple[str, ...], own_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: empty or "*" = every namespace, "." = its own, "~" = none, else the names listed
    (pilot/pkg/model/push_context.go initServiceRegistry; meshConfig.defaultServiceExportTo default "*")."""
    if not export_to or "*" in export_to:
        return True
    if "~" in export_to:
        return False
    return any((e == "." and namespace == own_namespace) or e == namespace for e in export_to)


@dataclass(frozen=True)
class GatewayServer:
    port_number: int
    port_name: str
    protocol: str
    hosts: tuple[str, ...]  # as written: "host", "ns/host", "./host", "*/host"


@dataclass(frozen=True)
class Gateway:
    name: str
    namespace: str
    source: str
    selector: dict[str, str]
    servers: tuple[GatewayServer, ...]

    @property
    def ref(self) -> str:
        return f"Gateway {self.namespace}/{self.name}"

    def selects(self, labels: Mapping[str, str]) -> bool:
        """A Gateway applies to the gateway pods whose labels include its selector (empty: all)."""
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True)
class UriMatch:
    kind: str  # "exact", "prefix" or "regex" (regex is not implemented: never matches)
    value: str


@dataclass(frozen=True)
class HTTPRoute:
    """One http[] entry: any of `matches` (none = every request) -> the destination."""

    matches: tuple[UriMatch, ...]
    destination_host: str
    destination_port: int | None


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    source: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]  # as written ("mesh", "name", "ns/name")
    export_to: tuple[str, ...]
    http: tuple[HTTPRoute, ...]

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"

    def gateway_keys(self) -> tuple[str, ...]:
        """Its gateways as "namespace/name" (a short name means one in the VirtualService's namespace)."""
        return tuple(g if "/" in g else f"{self.namespace}/{g}" for g in self.gateways if g != "mesh")

    def visible_to(self, namespace: str) -> bool:
        return _exported_to(self.export_to, self.namespace, namespace)


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    source: str
    labels: dict[str, str]  # the pod template's labels
    service_account: str

    def workload(self, trust_domain: str = CLUSTER_DOMAIN) -> Workload:
        """The workload identity Istio's metrics report for this Deployment's pods."""
        service, revision = canonical_service(self.labels, self.name)
        return Workload(
            name=self.name,
            namespace=self.namespace,
            app=self.labels.get("app", "unknown"),
            version=self.labels.get("version", "unknown"),
            canonical_service=service,
            canonical_revision=revision,
            principal=spiffe_principal(self.namespace, self.service_account, trust_domain),
            cluster=CLUSTER_ID,
        )


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """Istio's canonical service name and revision for a workload's labels.

    istio/istio pkg/kube/labels/labels.go CanonicalService: name from service.istio.io/canonical-name,
    then app.kubernetes.io/name, then app, else the workload name; revision from
    service.istio.io/canonical-revision, then app.kubernetes.io/version, then version, else "latest".
    """
    name = next(
        (
            labels[k]
            for k in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
            if k in labels
        ),
        workload_name,
    )
    revision = next(
        (
            labels[k]
            for k in ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
            if k in labels
        ),
        "latest",
    )
    return name, revision


def spiffe_principal(namespace: str, service_account: str, trust_domain: str = CLUSTER_DOMAIN) -> str:
    """Istio's workload identity: spiffe://<trust domain>/ns/<namespace>/sa/<service account>."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    app_protocol: str = ""

    @property
    def istio_protocol(self) -> str:
        """Istio's protocol selection: appProtocol, else the port name's prefix ("http", "http-web",
        "tcp-db"); unnamed ports are sniffed, which for localmesh means "as the request comes"."""
        hint = (self.app_protocol or self.name.split("-", 1)[0]).upper()
        return hint if hint in PORT_PROTOCOLS else ""


@dataclass(frozen=True)
class KubeService:
    name: str
    namespace: str
    source: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str]

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    @property
    def ref(self) -> str:
        return f"Service {self.namespace}/{self.name}"


class _Reader:
    """Typed access to one resource's fields; every error and warning names file, resource and field."""

    def __init__(self, res: Resource, warnings: list[str]) -> None:
        self.res = res
        self.warnings = warnings

    def where(self, path: str) -> str:
        return f"{self.res.source}: {self.res.ref}: {path}"

    def fail(self, path: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.where(path)}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.where(path)}: {message}")

    def keys(
        self, obj: dict[str, Any], path: str, known: Iterable[str], unsupported: Mapping[str, str]
    ) -> None:
        """Warns about fields localmesh does not implement (with why) and fields the schema lacks."""
        known = set(known)
        for key in obj:
            sub = _join(path, key)
            if key in unsupported:
                self.warn(sub, f"localmesh does not implement this; {unsupported[key]}")
            elif key not in known:
                self.warn(sub, "unknown field (not in the schema); ignored")

    def mapping(self, value: Any, path: str, required: bool = False) -> dict[str, Any]:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_describe(value)}")
        return value

    def seq(self, value: Any, path: str, required: bool = False) -> list[Any]:
        if value is None or value == []:
            if required:
                self.fail(
                    path, "required: at least one entry" if value == [] else "required field is missing"
                )
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {_describe(value)}")
        return value

    def string(self, value: Any, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_describe(value)}")
        if required and not value:
            self.fail(path, "must not be empty")
        return value

    def strings(self, value: Any, path: str, required: bool = False) -> tuple[str, ...]:
        items = self.seq(value, path, required)
        return tuple(self.string(v, f"{path}[{i}]", required=True) or "" for i, v in enumerate(items))

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        _check_string_map(value, path, lambda p, m: f"{self.where(p)}: {m}")
        return dict(value or {})

    def integer(
        self, value: Any, path: str, required: bool = False, lo: int = 1, hi: int = 65535
    ) -> int | None:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected an integer, got {_describe(value)}")
        if not lo <= value <= hi:
            self.fail(path, f"{value} is out of range (expected {lo} to {hi})")
        return value

    def enum(self, value: Any, path: str, allowed: tuple[str, ...], ignore_case: bool = False) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        canonical = text.upper() if ignore_case else text
        if canonical not in allowed:
            self.fail(path, f"{text!r} is not one of {', '.join(allowed)}")
        return canonical


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\.?$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_api_version(r: _Reader, allowed: tuple[str, ...]) -> None:
    if r.res.api_version not in allowed:
        r.fail("apiVersion", f"{r.res.api_version!r} is not one of {', '.join(allowed)}")


def _check_metadata(r: _Reader) -> None:
    for key in r.res.body["metadata"]:
        if key not in _METADATA_FIELDS:
            r.warn(f"metadata.{key}", "unknown field (not in ObjectMeta); ignored")


def _check_top_level(r: _Reader, extra: Iterable[str] = ()) -> dict[str, Any]:
    """The object's spec, after warning about top-level fields a CRD object does not have."""
    r.keys(r.res.body, "", ("apiVersion", "kind", "metadata", "spec", "status", *extra), {})
    return r.mapping(r.res.body.get("spec"), "spec", required=True)


def _parse_istio_operator(r: _Reader) -> MeshConfig:
    _check_api_version(r, ("install.istio.io/v1alpha1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    # Everything else in an IstioOperator (profile, components, values) is install-time config for
    # istioctl; localmesh has nothing to install, so it reads meshConfig only and says nothing about the rest.
    mesh = r.mapping(spec.get("meshConfig"), "spec.meshConfig")
    policy = r.mapping(mesh.get("outboundTrafficPolicy"), "spec.meshConfig.outboundTrafficPolicy")
    r.keys(policy, "spec.meshConfig.outboundTrafficPolicy", ("mode",), {"egressProxy": "ignored"})
    mode = r.enum(policy.get("mode"), "spec.meshConfig.outboundTrafficPolicy.mode", OUTBOUND_MODES)
    trust_domain = r.string(mesh.get("trustDomain"), "spec.meshConfig.trustDomain")
    return MeshConfig(r.res.ref, r.res.source, mode, trust_domain or None)


def _parse_sidecar(r: _Reader) -> SidecarConfig:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("workloadSelector", "outboundTrafficPolicy"),
        {
            "egress": "every ServiceEntry exported to this namespace stays visible (no host import lists)",
            "ingress": "the sidecar's inbound listener is the one `make up` starts",
            "inboundConnectionPool": "ignored",
        },
    )
    selector: dict[str, str] | None = None
    if "workloadSelector" in spec:
        ws = r.mapping(spec["workloadSelector"], "spec.workloadSelector", required=True)
        r.keys(ws, "spec.workloadSelector", ("labels",), {})
        selector = r.string_map(ws.get("labels"), "spec.workloadSelector.labels")
    mode: str | None = None
    if "outboundTrafficPolicy" in spec:
        policy = r.mapping(spec["outboundTrafficPolicy"], "spec.outboundTrafficPolicy", required=True)
        r.keys(policy, "spec.outboundTrafficPolicy", ("mode",), {"egressProxy": "ignored"})
        mode = r.enum(policy.get("mode"), "spec.outboundTrafficPolicy.mode", OUTBOUND_MODES)
        if mode is None:
            # The mode enum's zero value is REGISTRY_ONLY (istio/api networking/v1alpha3/sidecar.proto
            # OutboundTrafficPolicy.Mode), so a policy without a mode blocks unknown hosts.
            mode = REGISTRY_ONLY
            r.warn(
                "spec.outboundTrafficPolicy.mode",
                "not set: Istio reads that as REGISTRY_ONLY (the enum's default)",
            )
    elif "egress" not in spec and "ingress" not in spec:
        # Istio's validation (ValidateSidecar): "sidecar: empty configuration provided".
        r.fail("spec", "empty Sidecar: set outboundTrafficPolicy (or egress/ingress)")
    return SidecarConfig(r.res.name, r.res.namespace, r.res.source, selector, mode)


def _parse_service_entry(r: _Reader) -> ServiceEntry:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("hosts", "ports", "resolution", "location", "exportTo", "endpoints"),
        {
            "addresses": "localmesh matches ServiceEntries by host name (requests reach it by host through "
            "HTTP_PROXY or CONNECT), so addresses are ignored",
            "workloadSelector": "use endpoints",
            "subjectAltNames": "localmesh does not originate TLS; ignored",
        },
    )
    hosts = r.strings(spec.get("hosts"), "spec.hosts", required=True)
    for i, host in enumerate(hosts):
        path = f"spec.hosts[{i}]"
        if host == "*":
            r.fail(path, "'*' is not allowed in a ServiceEntry (name the hosts, or use '*.domain')")
        if not (_is_ip(host) or _HOST_NAME.match(host.lower())):
            r.fail(path, f"{host!r} is not a valid host name (DNS name, optionally starting with '*.')")
    ports: list[ServiceEntryPort] = []
    names: set[str] = set()
    numbers: set[int] = set()
    for i, item in enumerate(r.seq(spec.get("ports"), "spec.ports", required=True)):
        path = f"spec.ports[{i}]"
        port = r.mapping(item, path, required=True)
        r.keys(port, path, ("number", "name", "protocol", "targetPort"), {})
        number = r.integer(port.get("number"), f"{path}.number", required=True) or 0
        name = r.string(port.get("name"), f"{path}.name", required=True) or ""
        protocol = r.enum(port.get("protocol"), f"{path}.protocol", PORT_PROTOCOLS, ignore_case=True)
        if protocol is None:
            r.fail(f"{path}.protocol", f"required field is missing (one of {', '.join(PORT_PROTOCOLS)})")
        target = r.integer(port.get("targetPort"), f"{path}.targetPort")
        if name in names:
            r.fail(f"{path}.name", f"port name {name!r} is used twice")
        if number in numbers:
            r.fail(f"{path}.number", f"port {number} is used twice")
        names.add(name)
        numbers.add(number)
        ports.append(ServiceEntryPort(number, name, protocol, target))
    resolution = r.enum(spec.get("resolution"), "spec.resolution", RESOLUTIONS) or "NONE"
    location = r.enum(spec.get("location"), "spec.location", LOCATIONS) or "MESH_EXTERNAL"
    export_to = _parse_export_to(r, spec.get("exportTo"))
    endpoints: list[ServiceEntryEndpoint] = []
    for i, item in enumerate(r.seq(spec.get("endpoints"), "spec.endpoints")):
        path = f"spec.endpoints[{i}]"
        ep = r.mapping(item, path, required=True)
        r.keys(
            ep,
            path,
            ("address", "ports", "labels"),
            {k: "ignored" for k in ("network", "locality", "weight", "serviceAccount")},
        )
        address = r.string(ep.get("address"), f"{path}.address", required=True) or ""
        ep_ports: dict[str, int] = {}
        for pname, pnum in r.mapping(ep.get("ports"), f"{path}.ports").items():
            ep_ports[str(pname)] = r.integer(pnum, f"{path}.ports.{pname}", required=True) or 0
            if pname not in names:
                r.warn(f"{path}.ports.{pname}", f"no port named {pname!r} in spec.ports; ignored")
        r.string_map(ep.get("labels"), f"{path}.labels")
        if resolution == "STATIC" and not _is_ip(address):
            r.fail(
                f"{path}.address", f"{address!r}: resolution STATIC needs IP addresses (use DNS for names)"
            )
        endpoints.append(ServiceEntryEndpoint(address, ep_ports))
    # Istio's ServiceEntry validation rules for resolution (pkg/config/validation ValidateServiceEntry).
    if resolution == "NONE" and endpoints:
        r.fail("spec.endpoints", "endpoints are not allowed with resolution NONE (use STATIC or DNS)")
    if resolution == "STATIC" and not endpoints:
        r.fail(
            "spec.endpoints",
            "resolution STATIC needs endpoints (localmesh does not implement workloadSelector)",
        )
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for i, host in enumerate(hosts):
            if host.startswith("*"):
                r.fail(
                    f"spec.hosts[{i}]",
                    f"wildcard host {host!r} needs resolution NONE, or endpoints, with {resolution}",
                )
    if len(endpoints) > 1:
        r.warn("spec.endpoints", "localmesh sends every request to the first endpoint (no load balancing)")
    return ServiceEntry(
        name=r.res.name,
        namespace=r.res.namespace,
        source=r.res.source,
        hosts=tuple(h.lower().rstrip(".") for h in hosts),
        ports=tuple(ports),
        resolution=resolution,
        location=location,
        export_to=export_to,
        endpoints=tuple(endpoints),
    )


def _parse_export_to(r: _Reader, value: Any) -> tuple[str, ...]:
    export_to = r.strings(value, "spec.exportTo")
    for i, item in enumerate(export_to):
        if item not in (".", "*", "~") and not _DNS_LABEL.match(item):
            r.fail(f"spec.exportTo[{i}]", f"{item!r} is not '.', '*', '~' or a namespace name")
    if "~" in export_to and len(export_to) > 1:
        r.fail("spec.exportTo", "'~' (visible nowhere) cannot be combined with other entries")
    return export_to


def _parse_gateway(r: _Reader) -> Gateway:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(spec, "spec", ("selector", "servers"), {})
    selector = r.string_map(spec.get("selector"), "spec.selector")
    servers: list[GatewayServer] = []
    for i, item in enumerate(r.seq(spec.get("servers"), "spec.servers", required=True)):
        path = f"spec.servers[{i}]"
        server = r.mapping(item, path, required=True)
        r.keys(
            server,
            path,
            ("port", "hosts", "name"),
            {
                "tls": "localmesh's gateway serves plain HTTP only",
                "bind": "ignored",
                "defaultEndpoint": "ignored",
            },
        )
        port = r.mapping(server.get("port"), f"{path}.port", required=True)
        r.keys(port, f"{path}.port", ("number", "name", "protocol", "targetPort"), {})
        number = r.integer(port.get("number"), f"{path}.port.number", required=True) or 0
        name = r.string(port.get("name"), f"{path}.port.name", required=True) or ""
        protocol = r.enum(port.get("protocol"), f"{path}.port.protocol", PORT_PROTOCOLS, ignore_case=True)
        if protocol is None:
            r.fail(f"{path}.port.protocol", f"required field is missing (one of {', '.join(PORT_PROTOCOLS)})")
        hosts = r.strings(server.get("hosts"), f"{path}.hosts", required=True)
        for j, host in enumerate(hosts):
            ns, _, dns = host.rpartition("/")
            if (ns and ns not in (".", "*") and not _DNS_LABEL.match(ns)) or not (
                dns == "*" or _HOST_NAME.match(dns.lower())
            ):
                r.fail(
                    f"{path}.hosts[{j}]",
                    f"{host!r} is not a host ('name', '*.domain', '*') or 'namespace/host'",
                )
        if protocol not in ("HTTP", "HTTP2"):
            r.warn(
                f"{path}.port.protocol",
                f"{protocol}: localmesh's gateway serves plain HTTP only; server ignored",
            )
        servers.append(GatewayServer(number, name, protocol, hosts))
    return Gateway(r.res.name, r.res.namespace, r.res.source, selector, tuple(servers))


_HTTP_ROUTE_UNSUPPORTED = dict.fromkeys(
    [
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirror",
        "mirrors",
        "mirrorPercentage",
        "mirrorPercent",
        "corsPolicy",
        "headers",
    ],
    "ignored",
)
_MATCH_UNSUPPORTED = dict.fromkeys(
    [
        "scheme",
        "method",
        "authority",
        "headers",
        "port",
        "sourceLabels",
        "gateways",
        "queryParams",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
    ],
    "localmesh ignores this condition, so the match is wider than on a cluster",
)


def _parse_virtual_service(r: _Reader) -> VirtualService:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("hosts", "gateways", "http", "exportTo"),
        {"tcp": "only http routes are implemented", "tls": "only http routes are implemented"},
    )
    hosts = r.strings(spec.get("hosts"), "spec.hosts", required=True)
    for i, host in enumerate(hosts):
        if not (host == "*" or _is_ip(host) or _HOST_NAME.match(host.lower())):
            r.fail(f"spec.hosts[{i}]", f"{host!r} is not a host ('name', '*.domain' or '*')")
    gateways = r.strings(spec.get("gateways"), "spec.gateways")
    if not gateways or "mesh" in gateways:
        r.warn(
            "spec.gateways",
            "localmesh applies VirtualServices at the ingress gateway only; the 'mesh' (sidecar) binding "
            + ("(the default when gateways is empty) " if not gateways else "")
            + "is ignored",
        )
    export_to = _parse_export_to(r, spec.get("exportTo"))
    routes: list[HTTPRoute] = []
    for i, item in enumerate(r.seq(spec.get("http"), "spec.http")):
        path = f"spec.http[{i}]"
        rule = r.mapping(item, path, required=True)
        r.keys(
            rule,
            path,
            ("name", "match", "route"),
            {
                **_HTTP_ROUTE_UNSUPPORTED,
                "redirect": "this rule is skipped",
                "directResponse": "this rule is skipped",
                "delegate": "this rule is skipped",
            },
        )
        matches: list[UriMatch] = []
        for j, m_item in enumerate(r.seq(rule.get("match"), f"{path}.match")):
            mpath = f"{path}.match[{j}]"
            m = r.mapping(m_item, mpath, required=True)
            r.keys(m, mpath, ("uri", "name"), {**_MATCH_UNSUPPORTED, "statPrefix": "ignored"})
            if "uri" not in m:
                matches.append(UriMatch("prefix", ""))  # no uri condition: every path
                continue
            uri = r.mapping(m["uri"], f"{mpath}.uri", required=True)
            kinds = [k for k in uri if k in ("exact", "prefix", "regex")]
            r.keys(uri, f"{mpath}.uri", ("exact", "prefix", "regex"), {})
            if len(kinds) != 1:
                r.fail(f"{mpath}.uri", "expected exactly one of exact, prefix, regex")
            value = r.string(uri[kinds[0]], f"{mpath}.uri.{kinds[0]}", required=kinds[0] != "prefix") or ""
            if kinds[0] == "regex":
                r.warn(
                    f"{mpath}.uri.regex",
                    "localmesh does not implement regex matches; this match never matches",
                )
            matches.append(UriMatch(kinds[0], value))
        dests = r.seq(rule.get("route"), f"{path}.route")
        if not dests:
            if not any(k in rule for k in ("redirect", "directResponse", "delegate")):
                r.fail(f"{path}.route", "required: at least one destination")
            continue
        chosen: tuple[int, str, int | None] | None = None
        for j, d_item in enumerate(dests):
            dpath = f"{path}.route[{j}]"
            d = r.mapping(d_item, dpath, required=True)
            r.keys(d, dpath, ("destination", "weight"), {"headers": "ignored"})
            dest = r.mapping(d.get("destination"), f"{dpath}.destination", required=True)
            r.keys(
                dest,
                f"{dpath}.destination",
                ("host", "port"),
                {"subset": "localmesh has no DestinationRules"},
            )
            host = r.string(dest.get("host"), f"{dpath}.destination.host", required=True) or ""
            port_spec = r.mapping(dest.get("port"), f"{dpath}.destination.port")
            r.keys(port_spec, f"{dpath}.destination.port", ("number",), {})
            number = r.integer(port_spec.get("number"), f"{dpath}.destination.port.number")
            weight = r.integer(d.get("weight"), f"{dpath}.weight", lo=0, hi=100)
            weight = 100 if weight is None and len(dests) == 1 else (weight or 0)
            if chosen is None or weight > chosen[0]:
                chosen = (weight, host.lower(), number)
        if len(dests) > 1:
            r.warn(
                f"{path}.route", "localmesh sends every request to the destination with the highest weight"
            )
        assert chosen is not None
        routes.append(HTTPRoute(tuple(matches), chosen[1], chosen[2]))
    return VirtualService(
        r.res.name,
        r.res.namespace,
        r.res.source,
        tuple(h.lower() for h in hosts),
        gateways,
        export_to,
        tuple(routes),
    )


def _parse_deployment(r: _Reader) -> Deployment:
    _check_api_version(r, ("apps/v1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    template = r.mapping(spec.get("template"), "spec.template")
    meta = r.mapping(template.get("metadata"), "spec.template.metadata")
    labels = r.string_map(meta.get("labels"), "spec.template.metadata.labels")
    pod = r.mapping(template.get("spec"), "spec.template.spec")
    account = (
        r.string(pod.get("serviceAccountName"), "spec.template.spec.serviceAccountName")
        or r.string(pod.get("serviceAccount"), "spec.template.spec.serviceAccount")
        or "default"  # Kubernetes runs a pod without one as the namespace's "default" account
    )
    return Deployment(r.res.name, r.res.namespace, r.res.source, labels, account)


def _parse_service(r: _Reader) -> KubeService:
    _check_api_version(r, ("v1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    ports: list[ServicePort] = []
    for i, item in enumerate(r.seq(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        p = r.mapping(item, path, required=True)
        number = r.integer(p.get("port"), f"{path}.port", required=True) or 0
        target: Any = p.get("targetPort", number)
        if isinstance(target, str):
            r.string(target, f"{path}.targetPort", required=True)
        else:
            target = r.integer(target, f"{path}.targetPort", required=True)
        name = r.string(p.get("name"), f"{path}.name") or ""
        app_protocol = r.string(p.get("appProtocol"), f"{path}.appProtocol") or ""
        r.enum(p.get("protocol"), f"{path}.protocol", ("TCP", "UDP", "SCTP"))
        ports.append(ServicePort(number, target, name, app_protocol))
    selector = r.string_map(spec.get("selector"), "spec.selector")
    return KubeService(r.res.name, r.res.namespace, r.res.source, tuple(ports), selector)


# --------------------------------------------------------------------------------------------------
# The mesh state


@dataclass(frozen=True)
class OutboundPolicy:
    mode: str  # ALLOW_ANY or REGISTRY_ONLY
    source: str  # what set it, for status output and config dumps


@dataclass(frozen=True)
class MeshState:
    """The validated mesh config: what istiod would know after these resources were applied."""

    mesh_mode: str = ALLOW_ANY
    mesh_mode_source: str = "Istio's default (meshConfig.outboundTrafficPolicy not set)"
    trust_domain: str = CLUSTER_DOMAIN
    sidecars: tuple[SidecarConfig, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    services: tuple[KubeService, ...] = ()
    namespaces: tuple[str, ...] = ()
    service_accounts: tuple[tuple[str, str], ...] = ()  # (namespace, name)

    def outbound_policy(self, namespace: str, labels: Mapping[str, str] | None = None) -> OutboundPolicy:
        """The outboundTrafficPolicy a sidecar in `namespace` with these pod labels gets.

        Istio's precedence (pilot/pkg/model/push_context.go getSidecarScope): a Sidecar in the workload's
        namespace whose workloadSelector matches, else the namespace's Sidecar without selector, else
        the Sidecar without selector in the root namespace (istio-system), else none. A chosen Sidecar
        without outboundTrafficPolicy inherits meshConfig's (pilot/pkg/model/sidecar.go
        ConvertToSidecarScope); with no Sidecar at all meshConfig applies; its default is ALLOW_ANY.
        """
        labels = labels or {}
        local = [s for s in self.sidecars if s.namespace == namespace]
        chosen = next(
            (
                s
                for s in local
                if s.selector is not None and all(labels.get(k) == v for k, v in s.selector.items())
            ),
            None,
        )
        if chosen is None:
            chosen = next((s for s in local if s.selector is None), None)
        if chosen is None:
            chosen = next(
                (s for s in self.sidecars if s.namespace == ROOT_NAMESPACE and s.selector is None), None
            )
        if chosen is None or chosen.outbound_mode is None:
            via = f" ({chosen.ref} sets no outboundTrafficPolicy)" if chosen else ""
            return OutboundPolicy(self.mesh_mode, self.mesh_mode_source + via)
        return OutboundPolicy(chosen.outbound_mode, f"{chosen.ref} ({chosen.source})")

    @property
    def outbound_mode(self) -> str:
        """The effective outbound policy mode for the app namespace (recipes), for idgen's pods."""
        deployment = self.deployment("idgen", APP_NAMESPACE)
        return self.outbound_policy(APP_NAMESPACE, deployment.labels if deployment else None).mode

    def deployment(self, name: str, namespace: str | None = None) -> Deployment | None:
        candidates = [d for d in self.deployments if d.name == name]
        return next((d for d in candidates if namespace in (None, d.namespace)), None)

    def workload(self, name: str, namespace: str | None = None) -> Workload | None:
        deployment = self.deployment(name, namespace)
        return deployment.workload(self.trust_domain) if deployment else None

    def service(self, hostname: str) -> KubeService | None:
        return next((s for s in self.services if s.hostname == hostname), None)

    def gateway(self, key: str) -> Gateway | None:
        return next((g for g in self.gateways if f"{g.namespace}/{g.name}" == key), None)


def resolve_host(host: str, namespace: str) -> str:
    """A destination host as Istio reads it in a VirtualService of `namespace`: a short name is a
    Kubernetes Service in that namespace (pilot/pkg/model/virtualservice.go
    resolveVirtualServiceShortnames)."""
    host = host.lower().rstrip(".")
    if "." not in host and "*" not in host:
        return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"
    return host


def _parse_namespace(r: _Reader) -> str:
    _check_api_version(r, ("v1",))
    return r.res.name


def _parse_service_account(r: _Reader) -> tuple[str, str]:
    _check_api_version(r, ("v1",))
    return (r.res.namespace, r.res.name)


# Dispatch by API group and kind: a Gateway of gateway.networking.k8s.io or a Knative Service is another
# kind altogether ("not used"), while networking.istio.io/v2 is a wrong version of one localmesh reads.
_PARSERS: dict[tuple[str, str], Any] = {
    ("install.istio.io", "IstioOperator"): _parse_istio_operator,
    ("networking.istio.io", "Sidecar"): _parse_sidecar,
    ("networking.istio.io", "ServiceEntry"): _parse_service_entry,
    ("networking.istio.io", "Gateway"): _parse_gateway,
    ("networking.istio.io", "VirtualService"): _parse_virtual_service,
    ("apps", "Deployment"): _parse_deployment,
    ("", "Service"): _parse_service,
    ("", "Namespace"): _parse_namespace,
    ("", "ServiceAccount"): _parse_service_account,
}


def parse(resources: Iterable[Resource]) -> tuple[MeshState, list[str]]:
    """Validates resources into a MeshState. Raises ConfigError on invalid input; returns warnings
    for fields and kinds localmesh does not use, and for references that lead nowhere."""
    warnings: list[str] = []
    seen: dict[tuple[str, str, str], Resource] = {}
    found: dict[str, list[Any]] = {kind: [] for _, kind in _PARSERS}
    for res in resources:
        if res.key in seen:
            raise ConfigError(f"{res.source}: {res.ref}: defined twice (also in {seen[res.key].source})")
        seen[res.key] = res
        r = _Reader(res, warnings)
        parser = _PARSERS.get((res.group, res.kind))
        if parser is None:
            warnings.append(f"{res.source}: {res.ref}: not used by localmesh ({res.api_version} {res.kind})")
            continue
        if res.group == "networking.istio.io":
            _check_metadata(r)
        found[res.kind].append(parser(r))
    operators: list[MeshConfig] = found["IstioOperator"]

    mesh_mode, mesh_source, trust_domain = ALLOW_ANY, MeshState.mesh_mode_source, CLUSTER_DOMAIN
    with_mode = [op for op in operators if op.outbound_mode]
    if len(with_mode) > 1:
        warnings.append(
            f"{with_mode[-1].source}: {with_mode[-1].ref}: spec.meshConfig: several IstioOperators set "
            f"outboundTrafficPolicy ({', '.join(op.ref for op in with_mode)}); the last one applies"
        )
    if with_mode:
        op = with_mode[-1]
        mesh_mode = op.outbound_mode or ALLOW_ANY
        mesh_source = f"meshConfig of {op.ref} ({op.source})"
    for op in operators:
        trust_domain = op.trust_domain or trust_domain

    state = MeshState(
        mesh_mode=mesh_mode,
        mesh_mode_source=mesh_source,
        trust_domain=trust_domain,
        sidecars=tuple(found["Sidecar"]),
        service_entries=tuple(found["ServiceEntry"]),
        gateways=tuple(found["Gateway"]),
        virtual_services=tuple(found["VirtualService"]),
        deployments=tuple(found["Deployment"]),
        services=tuple(found["Service"]),
        namespaces=tuple(found["Namespace"]),
        service_accounts=tuple(found["ServiceAccount"]),
    )
    warnings.extend(_cross_check(state))
    return state, warnings


def _cross_check(state: MeshState) -> list[str]:
    """References between resources that lead nowhere: kubectl accepts them, the mesh then misbehaves."""
    out: list[str] = []
    by_namespace: dict[str, list[SidecarConfig]] = {}
    for s in state.sidecars:
        if s.selector is None:
            by_namespace.setdefault(s.namespace, []).append(s)
    for ns, items in by_namespace.items():
        if len(items) > 1:
            out.append(
                f"{items[1].source}: {items[1].ref}: namespace {ns} has more than one Sidecar without "
                f"workloadSelector ({', '.join(s.name for s in items)}); Istio's behaviour is undefined, "
                f"localmesh uses {items[0].ref}"
            )
    for gw in state.gateways:
        if not gw.selects(GATEWAY_LABELS):
            labels = ", ".join(f"{k}={v}" for k, v in GATEWAY_LABELS.items())
            out.append(
                f"{gw.source}: {gw.ref}: spec.selector: selects no gateway localmesh runs (its ingress "
                f"gateway is labelled {labels}); ignored"
            )
    for vs in state.virtual_services:
        for i, key in enumerate(vs.gateway_keys()):
            if state.gateway(key) is None:
                out.append(f"{vs.source}: {vs.ref}: spec.gateways[{i}]: no Gateway {key}; binding ignored")
        for i, route in enumerate(vs.http):
            host = resolve_host(route.destination_host, vs.namespace)
            svc = state.service(host)
            entry = next((e for e in state.service_entries if host in e.hosts), None)
            path = f"spec.http[{i}].route"
            if svc is None and entry is None:
                out.append(
                    f"{vs.source}: {vs.ref}: {path}: destination {host} is no Service or ServiceEntry host"
                )
            elif route.destination_port is None:
                count = len(svc.ports) if svc else len(entry.ports) if entry else 0
                if count != 1:
                    out.append(
                        f"{vs.source}: {vs.ref}: {path}: destination {host} has {count} ports; set one"
                    )
    known_accounts = set(state.service_accounts)
    for d in state.deployments:
        if d.service_account != "default" and (d.namespace, d.service_account) not in known_accounts:
            out.append(
                f"{d.source}: Deployment {d.namespace}/{d.name}: spec.template.spec.serviceAccountName: "
                f"no ServiceAccount {d.namespace}/{d.service_account} in this config"
            )
    return out


# --------------------------------------------------------------------------------------------------
# The local stand-in for the cluster's API server


@dataclass(frozen=True)
class Change:
    """One object's fate in an apply, printed the way kubectl prints it."""

    action: str  # "created", "configured", "unchanged" or "deleted"
    kind: str
    namespace: str
    name: str
    api_version: str

    def __str__(self) -> str:
        group = self.api_version.rpartition("/")[0]
        resource = f"{self.kind.lower()}.{group}" if group else self.kind.lower()
        if self.action == "deleted":
            return f'{resource} "{self.name}" deleted' + (
                f" from {self.namespace} namespace" if self.namespace else ""
            )
        return f"{resource}/{self.name} {self.action}"


@dataclass(frozen=True)
class ApplyResult:
    changes: tuple[Change, ...]
    state: MeshState
    warnings: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


def _selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """A kubectl -l equality selector: "k=v,k2=v2" (also "k==v", "k!=v" and a bare "k")."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


class ClusterState:
    """The objects applied so far, in creation order: what `kubectl get` would list on a cluster.

    apply() validates the whole resulting config before it changes anything, so a bad file leaves the
    state (and the running proxies) as they were.
    """

    FORMAT = 1

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._objects: dict[tuple[str, str, str], Resource] = {}
        for res in resources:
            self._objects[res.key] = res

    @property
    def resources(self) -> list[Resource]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def mesh(self) -> tuple[MeshState, list[str]]:
        return parse(self.resources)

    def apply(self, resources: Iterable[Resource], prune_selector: str | None = None) -> ApplyResult:
        """`kubectl apply`: upsert each resource by (kind, namespace, name). With `prune_selector`
        (e.g. OPTION_SELECTOR), then delete the objects matching it that `resources` does not contain,
        as the cluster scripts do with `kubectl delete -l` when switching options."""
        incoming = list(resources)
        objects = dict(self._objects)
        changes: list[Change] = []
        keys: set[tuple[str, str, str]] = set()
        for res in incoming:
            if res.key in keys:
                raise ConfigError(f"{res.source}: {res.ref}: given twice in one apply")
            keys.add(res.key)
            old = objects.get(res.key)
            action = "created" if old is None else ("unchanged" if old.body == res.body else "configured")
            objects[res.key] = res
            changes.append(Change(action, res.kind, res.namespace, res.name, res.api_version))
        if prune_selector:
            for key, res in list(objects.items()):
                if key not in keys and _selector_matches(prune_selector, res.labels):
                    del objects[key]
                    changes.append(Change("deleted", res.kind, res.namespace, res.name, res.api_version))
        state, warnings = parse(objects.values())  # raises before anything changes
        self._objects = objects
        return ApplyResult(tuple(changes), state, tuple(warnings))

    def apply_kustomization(
        self, directory: str | Path, prune_selector: str | None = OPTION_SELECTOR
    ) -> ApplyResult:
        """`localmesh apply -k DIR`: the overlay's objects, then the option resources it lacks deleted."""
        return self.apply(load_kustomization(directory), prune_selector)

    def apply_file(self, path: str | Path) -> ApplyResult:
        """`localmesh apply -f PATH`: upsert only (kubectl apply -f deletes nothing)."""
        return self.apply(load_file(path))

    def delete_resources(self, resources: Iterable[Resource]) -> ApplyResult:
        """`kubectl delete -f`: remove these objects (by kind, namespace, name). The rest must still be a
        valid config, checked before anything changes; objects not present are reported, not errors."""
        objects = dict(self._objects)
        changes: list[Change] = []
        missing: list[str] = []
        for res in resources:
            if objects.pop(res.key, None) is None:
                missing.append(f"{res.ref}: not found (nothing to delete)")
            else:
                changes.append(Change("deleted", res.kind, res.namespace, res.name, res.api_version))
        state, warnings = parse(objects.values())
        self._objects = objects
        return ApplyResult(tuple(changes), state, (*missing, *warnings))

    def delete(self, selector: str) -> list[Change]:
        """`kubectl delete -l SELECTOR` (across namespaces)."""
        gone = [res for res in self._objects.values() if _selector_matches(selector, res.labels)]
        for res in gone:
            del self._objects[res.key]
        return [Change("deleted", r.kind, r.namespace, r.name, r.api_version) for r in gone]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": self.FORMAT,
                "resources": [{"source": r.source, "object": r.body} for r in self._objects.values()],
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, origin: str = "cluster state") -> ClusterState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{origin}: not valid JSON: {err}") from err
        if (
            not isinstance(data, dict)
            or data.get("format") != cls.FORMAT
            or not isinstance(data.get("resources"), list)
        ):
            raise ConfigError(f"{origin}: not a localmesh cluster state (format {cls.FORMAT})")
        items = []
        for i, item in enumerate(data["resources"]):
            if not isinstance(item, dict) or not isinstance(item.get("source"), str):
                raise ConfigError(f"{origin}: resources[{i}]: expected {{source, object}}")
            items.append(Resource.from_body(item.get("object"), item["source"]))
        return cls(items)

    def save(self, path: str | Path) -> None:
        """Writes atomically (temp file + rename), so a crash never leaves half a state behind."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | Path) -> ClusterState:
        """The saved state, or an empty one when there is none yet."""
        p = Path(path)
        if not p.exists():
            return cls()
        return cls.from_json(p.read_text(encoding="utf-8"), _display(p))

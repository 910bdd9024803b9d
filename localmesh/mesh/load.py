"""Loading the mesh config as kubectl reads it: `load_kustomization(dir)` (what `kubectl kustomize`
builds, for the `resources:` and `components:` this bundle uses), `load_file(path)` (`-f`) and
`load_text(text, source)` -> a list of `Resource`, each remembering the file it came from. YAML is
read with limits (size, aliases, nesting, integer digits), and a bad document raises `ConfigError`
naming file, resource and field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from localmesh.mesh.names import DEFAULT_NAMESPACE

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
METADATA_FIELDS = frozenset(
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
            raise ConfigError(f"{at}: expected a Kubernetes object (a mapping), got {describe_value(body)}")
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
                    f"{at}: {label}: {key}: expected a non-empty string, got {describe_value(value)}"
                )
        if not isinstance(meta, dict):
            got = "nothing" if meta is None else describe_value(meta)
            raise ConfigError(f"{at}: {label}: metadata: expected a mapping with a name, got {got}")
        if name is None:
            raise ConfigError(f"{at}: {label}: metadata.name: required field is missing")
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{at}: {label}: metadata.name: expected a non-empty string, got {describe_value(name)}"
            )
        namespace = meta.get("namespace")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ConfigError(
                f"{at}: {label}: metadata.namespace: expected a non-empty string, got "
                f"{describe_value(namespace)}"
            )
        for key in ("labels", "annotations"):
            check_string_map(
                meta.get(key), f"metadata.{key}", lambda path, msg: f"{at}: {label}: {path}: {msg}"
            )
        _check_json(body, "", lambda path, msg: f"{at}: {label}: {path or '(top level)'}: {msg}")
        return cls(body, source)

    # from_body checked that these fields are strings (the body itself is untyped JSON).

    @property
    def api_version(self) -> str:
        return cast(str, self.body["apiVersion"])

    @property
    def group(self) -> str:
        """The API group ("" for the core group), as kustomize uses it in resource IDs."""
        return self.api_version.rpartition("/")[0]

    @property
    def kind(self) -> str:
        return cast(str, self.body["kind"])

    @property
    def name(self) -> str:
        return cast(str, self.body["metadata"]["name"])

    @property
    def raw_namespace(self) -> str | None:
        return cast(str | None, self.body["metadata"].get("namespace"))

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


def describe_value(value: Any) -> str:
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
                        f"key {key!r} is not a string ({describe_value(key)}): Kubernetes objects are JSON, "
                        "whose keys are strings; quote it",
                    )
                )
            _check_json(item, join_path(path, key), message)
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
        raise ConfigError(message(path, f"{describe_value(value)} is not a JSON value"))


def check_string_map(value: Any, path: str, message: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(message(path, f"expected a mapping of strings, got {describe_value(value)}"))
    for k, v in value.items():
        if not isinstance(k, str):
            raise ConfigError(message(path, f"key {k!r} must be a string"))
        if not isinstance(v, str):
            hint = " (quote it)" if isinstance(v, bool | int | float) else ""
            raise ConfigError(message(f"{path}[{k!r}]", f"expected a string, got {describe_value(v)}{hint}"))


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


def _display_path(path: Path) -> str:
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
                f"{_display_path(path)}: {size} bytes is more than the {MAX_FILE_BYTES} bytes (3 MiB) the "
                "Kubernetes API server accepts in one request; split the file"
            )
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{_display_path(path)}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{_display_path(path)}: not UTF-8 text: {err}") from err


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
            raise ConfigError(f"{_display_path(p)}: no .yaml, .yml or .json files in this directory")
        return [r for f in files for r in load_file(f)]
    if not p.exists():
        raise ConfigError(f"{_display_path(p)}: no such file or directory")
    return load_text(_read_text(p), _display_path(p))


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
    shown = _display_path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(f"{shown}: {what} (expected a kustomization directory)")
    real = directory.resolve()
    if real in stack:
        chain = " -> ".join(_display_path(p) for p in (*stack, real))
        raise ConfigError(f"{shown}: kustomization cycle: {chain}")
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if not found:
        raise ConfigError(
            f"{shown}: no kustomization file (expected one of {', '.join(KUSTOMIZATION_FILES)})"
        )
    if len(found) > 1:
        raise ConfigError(f"{shown}: found multiple kustomization files: {', '.join(p.name for p in found)}")
    kfile = found[0]
    kshown = _display_path(kfile)
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
            raise ConfigError(f"{kshown}: {section}: expected a list of paths, got {describe_value(entries)}")
        for i, entry in enumerate(entries):
            at = f"{section}[{i}]"
            if not isinstance(entry, str) or not entry:
                raise ConfigError(f"{kshown}: {at}: expected a path, got {describe_value(entry)}")
            if "://" in entry or entry.startswith(("github.com/", "git@")):
                raise ConfigError(
                    f"{kshown}: {at}: {entry!r}: localmesh reads local paths only (no remote bases)"
                )
            target = directory / entry
            if len(stack) + 1 >= MAX_KUSTOMIZATION_DEPTH and (section == "components" or target.is_dir()):
                raise ConfigError(
                    f"{kshown}: {at}: {entry!r}: kustomizations nested more than {MAX_KUSTOMIZATION_DEPTH} "
                    f"deep (from {_display_path(stack[0]) if stack else shown}); flatten the chain"
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


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key

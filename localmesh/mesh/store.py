"""The local stand-in for the API server: `ClusterState`, the applied objects in creation order,
with `kubectl apply` semantics (upsert by kind/namespace/name, and the option switch's delete-by-label),
saved as JSON in the stack's state folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from localmesh.mesh.load import ConfigError, Resource, load_file, load_kustomization
from localmesh.mesh.model import MeshState, parse
from localmesh.mesh.names import OPTION_SELECTOR


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

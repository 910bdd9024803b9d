"""File-based xDS: writes one proxy's resources where its bootstrap watches, in an order that keeps
every request served during a switch, and reads back the version Envoy accepted.

The order is the one a make-before-break push needs (and istiod's ADS gives by sending CDS before
LDS and RDS): clusters old and new, then routes, then listeners, then the clusters without the stale
ones. Each file is replaced atomically (written aside, then renamed into the watched directory),
so Envoy never reads half a file. Between steps, when an admin URL is given, it waits until Envoy
has accepted the step; see docs/envoy-dataplane.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from localmesh.envoy.bootstrap import CLUSTERS_FILE, LISTENERS_FILE, file_source
from localmesh.pilot.xds import EnvoyResources, routes_file

# Without an admin URL to ask, a step is given this long to be read (inotify reacts in milliseconds).
SETTLE_SECONDS = 0.3
ACCEPT_TIMEOUT = 10.0


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _discovery(version: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": version, "resources": resources}


def _resolve_paths(node: Any, xds_dir: Path) -> Any:
    """A copy of a resource whose relative path_config_source paths point into xds_dir (watched)."""
    if isinstance(node, list):
        return [_resolve_paths(item, xds_dir) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _resolve_paths(value, xds_dir) for key, value in node.items()}
    source = out.get("path_config_source")
    if isinstance(source, dict) and not Path(source["path"]).is_absolute():
        out.update(file_source(xds_dir, source["path"]))
    return out


def _resources(path: Path) -> list[dict[str, Any]]:
    """The resources of a discovery file written before ([] when there is none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    found = data.get("resources", []) if isinstance(data, dict) else []
    return [r for r in found if isinstance(r, dict)]


def write_resources(xds_dir: Path, resources: EnvoyResources, admin_url: str | None = None) -> None:
    """Writes resources for the Envoy watching xds_dir: clusters (old + new), routes, listeners, then
    clusters without the stale ones. With admin_url, each step waits until Envoy has accepted it
    (TimeoutError after ACCEPT_TIMEOUT seconds); without, files already there are taken for a running
    Envoy, which gets SETTLE_SECONDS per step. Nothing waits when no Envoy answers at admin_url (the
    first write, before Envoy starts)."""
    xds_dir.mkdir(parents=True, exist_ok=True)
    version = resources.version
    clusters_path, listeners_path = xds_dir / CLUSTERS_FILE, xds_dir / LISTENERS_FILE
    live = listeners_path.exists() and (admin_url is None or _answers(admin_url))
    new = {c["name"]: c for c in resources.clusters}
    merged = {c["name"]: c for c in _resources(clusters_path) if c.get("name") not in new}
    merged.update(new)

    def step(path: Path, data: dict[str, Any], kind: str, name: str = "") -> None:
        _atomic_write(path, data)
        if live:
            _wait_accepted(admin_url, kind, data["version_info"], name)

    step(clusters_path, _discovery(f"{version}-merge", list(merged.values())), "clusters")
    for route in resources.routes:
        # An unchanged route configuration is left alone (nothing to reload); a new one, which no
        # listener uses yet, is loaded with the listeners.
        path = xds_dir / routes_file(route["name"])
        if _resources(path) != [route]:
            step(path, _discovery(version, [route]), "routes", route["name"])
    listeners = [_resolve_paths(listener, xds_dir) for listener in resources.listeners]
    step(listeners_path, _discovery(version, listeners), "listeners")
    step(clusters_path, _discovery(version, list(resources.clusters)), "clusters")


def _answers(admin_url: str) -> bool:
    try:
        requests.get(f"{admin_url}/ready", timeout=2)
    except requests.RequestException:
        return False
    return True


def _wait_accepted(admin_url: str | None, kind: str, version: str, name: str) -> None:
    if admin_url is None:
        time.sleep(SETTLE_SECONDS)
        return
    if kind == "routes" and _accepted_version(admin_url, kind, name) is None:
        return
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while _accepted_version(admin_url, kind, name) != version:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Envoy at {admin_url} did not accept {kind} version {version} within "
                f"{ACCEPT_TIMEOUT:.0f} s: see its log for the rejection"
            )
        time.sleep(0.02)


# The version each subscription last accepted, from Envoy's text readouts: they change on every
# accepted file, identical content included (config_dump keeps the version of the last change).
_VERSION_STATS = {
    "clusters": "cluster_manager.cds.version_text",
    "listeners": "listener_manager.lds.version_text",
}


def _accepted_version(admin_url: str, kind: str, name: str = "") -> str | None:
    """The version Envoy accepted for the clusters, the listeners or one route configuration (None:
    no answer, or no listener uses that route configuration yet)."""
    try:
        response = requests.get(f"{admin_url}/stats", params={"filter": "version_text$"}, timeout=5)
        response.raise_for_status()
    except requests.RequestException:
        return None
    found = set()
    for line in response.text.splitlines():
        stat, _, value = line.partition(": ")
        # A route configuration's readout is per listener using it: http.<prefix>.rds.<name>.version_text
        if stat == _VERSION_STATS.get(kind) or (
            kind == "routes" and stat.endswith(f".rds.{name}.version_text")
        ):
            found.add(value.strip().strip('"'))
    return found.pop() if len(found) == 1 else None


def running_version(admin_url: str) -> str | None:
    """The version of the listeners Envoy has accepted (the route table's version once a push is
    through: listeners are written after clusters and routes), or None when Envoy does not answer."""
    return _accepted_version(admin_url, "listeners")

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

from localmesh.envoy.bootstrap import CLUSTERS_FILE, LISTENERS_FILE
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
        folder = str(xds_dir.resolve())
        out["path_config_source"] = {
            **source,
            "path": str(Path(folder) / source["path"]),
            "watched_directory": {"path": folder},
        }
    return out


def _current_clusters(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    clusters = data.get("resources", []) if isinstance(data, dict) else []
    return [c for c in clusters if isinstance(c, dict)]


def write_resources(xds_dir: Path, resources: EnvoyResources, admin_url: str | None = None) -> None:
    """Writes resources for the Envoy watching xds_dir: clusters (old + new), routes, listeners, then
    clusters without the stale ones. With admin_url, each step waits until Envoy has accepted it
    (TimeoutError after ACCEPT_TIMEOUT seconds); without, a running Envoy gets SETTLE_SECONDS per step."""
    xds_dir.mkdir(parents=True, exist_ok=True)
    version = resources.version
    clusters_path, listeners_path = xds_dir / CLUSTERS_FILE, xds_dir / LISTENERS_FILE
    live = listeners_path.exists()
    new = {c["name"]: c for c in resources.clusters}
    merged = {c["name"]: c for c in _current_clusters(clusters_path) if c.get("name") not in new}
    merged.update(new)

    def step(path: Path, data: dict[str, Any], kind: str, name: str = "") -> None:
        _atomic_write(path, data)
        if live:
            _wait_accepted(admin_url, kind, data["version_info"], name)

    step(clusters_path, _discovery(f"{version}-merge", list(merged.values())), "clusters")
    for route in resources.routes:
        # A route configuration no listener uses yet is loaded with the listeners: not waited for.
        path = xds_dir / routes_file(route["name"])
        step(path, _discovery(version, [route]), "routes", route["name"])
    listeners = [_resolve_paths(listener, xds_dir) for listener in resources.listeners]
    step(listeners_path, _discovery(version, listeners), "listeners")
    step(clusters_path, _discovery(version, list(resources.clusters)), "clusters")


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


_DUMP_TYPES = {
    "clusters": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
    "routes": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
    "listeners": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
}


def _accepted_version(admin_url: str, kind: str, name: str = "") -> str | None:
    try:
        response = requests.get(f"{admin_url}/config_dump", timeout=5)
        response.raise_for_status()
        configs = response.json().get("configs", [])
    except (requests.RequestException, ValueError):
        return None
    for config in configs:
        if config.get("@type") != _DUMP_TYPES[kind]:
            continue
        if kind == "routes":
            for route in config.get("dynamic_route_configs", []):
                if route.get("route_config", {}).get("name") == name:
                    return str(route.get("version_info"))
            return None
        version = config.get("version_info")
        return str(version) if version is not None else None
    return None


def running_version(admin_url: str) -> str | None:
    """The version of the listeners Envoy has accepted (the route table's version once a push is
    through), or None when Envoy does not answer or has none yet."""
    return _accepted_version(admin_url, "listeners")

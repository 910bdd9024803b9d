"""Envoy's bootstrap as pilot-agent writes it for a sidecar or a gateway, with file-based xDS.

pilot-agent gives Envoy its node (ID, cluster, metadata: istio/istio pkg/bootstrap/config.go and
tools/packaging/common/envoy_bootstrap.json) and an admin listener, and points dynamic_resources at
istiod over ADS. Here the dynamic resources come from files in `xds_dir` (path_config_source with a
watched_directory, so an atomic rename into the directory is a config push); localmesh/envoy/xdsfiles.py
writes them. Histograms keep Envoy's default buckets (no histogram_bucket_settings), as Istio does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localmesh.envoy.binary import envoy_binary
from localmesh.mesh.names import ISTIO_VERSION
from localmesh.pilot.identity import node_id, workload_metadata
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import GATEWAY, SIDECAR

_T = "type.googleapis.com/envoy.extensions."
_DOWNSTREAM_CONNECTIONS = _T + "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_INTERNAL_LISTENER = _T + "bootstrap.internal_listener.v3.InternalListener"
CLUSTERS_FILE = "cds.json"
LISTENERS_FILE = "lds.json"
# Envoy flushes its access log file every --file-flush-interval-msec; one second keeps
# `localmesh logs` current, as the Python proxies do.
FLUSH_INTERVAL_MS = 1000


def node_kind(role: str) -> str:
    """pilot-agent's proxy type: "sidecar", or "router" for a gateway."""
    if role not in (SIDECAR, GATEWAY):
        raise ValueError(f"role must be {SIDECAR!r} or {GATEWAY!r}, not {role!r}")
    return "router" if role == GATEWAY else SIDECAR


def file_source(xds_dir: Path, name: str) -> dict[str, Any]:
    """A ConfigSource reading `name` in xds_dir, reloaded when a file is moved into the directory."""
    return {
        "path_config_source": {
            "path": str(xds_dir.resolve() / name),
            "watched_directory": {"path": str(xds_dir.resolve())},
        },
        "resource_api_version": "V3",
    }


def bootstrap(table: RouteTable, role: str, admin: tuple[str, int], xds_dir: Path) -> dict[str, Any]:
    """The bootstrap of one proxy: node as pilot-agent names it, admin listener, file-based xDS."""
    proxy = table.proxy
    metadata: dict[str, Any] = {**workload_metadata(proxy), "ISTIO_VERSION": ISTIO_VERSION}
    if proxy.principal != "unknown":
        metadata["SERVICE_ACCOUNT"] = proxy.principal.rpartition("/")[2]
    return {
        "node": {
            "id": node_id(proxy, node_kind(role)),
            # pilot-agent's --serviceCluster default: <canonical name>.<namespace>
            "cluster": f"{proxy.canonical_service}.{proxy.namespace}",
            "metadata": metadata,
        },
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
        "dynamic_resources": {
            "cds_config": file_source(xds_dir, CLUSTERS_FILE),
            "lds_config": file_source(xds_dir, LISTENERS_FILE),
        },
        # Istio's bootstrap turns Envoy's tag extraction off for its own stats and keeps the
        # default buckets; the istio_* stats carry their labels as explicit tags.
        "stats_config": {"use_all_default_tags": False},
        # pilot-agent's bootstrap (tools/packaging/common/envoy_bootstrap.json, pkg/bootstrap/config.go):
        # a connection limit of MaxInt32 through the overload manager, and its runtime defaults.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": 2**31 - 1,
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "global config",
                    "static_layer": {
                        "re2.max_program_size.error_level": "32768",
                        "envoy.reloadable_features.http_reject_path_with_fragment": False,
                    },
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
        # Internal listeners (the blackholed CONNECT tunnel's tcp_proxy; Istio uses them for HBONE).
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": _INTERNAL_LISTENER},
            }
        ],
    }


def command(
    bootstrap_file: Path, base_id: int, log_level: str = "warning", concurrency: int = 2
) -> list[str]:
    """The argv that runs Envoy on a bootstrap file. base_id: unique per Envoy on this machine
    (shared memory and the hot-restart socket are named by it); concurrency: worker threads,
    pilot-agent's default (proxyConfig.concurrency 2)."""
    return [
        str(envoy_binary()),
        "-c",
        str(bootstrap_file),
        "--base-id",
        str(base_id),
        "-l",
        log_level,
        "--file-flush-interval-msec",
        str(FLUSH_INTERVAL_MS),
        "--concurrency",
        str(concurrency),
        # A listener replaced by a push drains its connections this long (pilot-agent: 45 s; the
        # demo switches options in seconds).
        "--drain-time-s",
        "1",
        # Never hot-restarted (a push reloads xDS files; a restart is a new process): without this
        # every stop leaves its /dev/shm/envoy_shared_memory_<base_id*10> behind (checked on 1.40).
        "--disable-hot-restart",
    ]

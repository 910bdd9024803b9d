"""The local control plane: keep the applied config, turn it into route tables, push them to proxies.

What istiod does on a cluster, in three steps: the applied objects live in the stack's state folder
(the stand-in for the API server), `routes.build_tables` compiles them, and each table is written
to the file its proxy starts from and POSTed to the running proxy's admin endpoint (the stand-in for
an xDS push), with the stack's credential (istiod's channel is authenticated). Proxies swap tables
atomically, so nothing restarts. On the Envoy data plane (stack.dataplane) the same tables are
written as each Envoy's xDS files instead, which it hot-reloads. `sync_status` compares what each
proxy runs with the applied config, as `istioctl proxy-status` says SYNCED or STALE
(https://istio.io/latest/docs/reference/commands/istioctl/#istioctl-proxy-status).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

from localmesh.mesh.load import ConfigError, load_file
from localmesh.mesh.names import BLACKHOLE, PASSTHROUGH, REGISTRY_ONLY
from localmesh.mesh.store import ApplyResult, ClusterState
from localmesh.pilot.routes import RouteTable, build_tables, decide_outbound
from localmesh.stack import dataplane
from localmesh.stack.files import atomic_write
from localmesh.stack.statefile import Applied, read_state
from localmesh.stack.topology import (
    EXTERNAL_HOST,
    PROXY_CHILDREN,
    ROOT,
    SIDECAR_WORKLOAD,
    Paths,
    Ports,
    addresses,
    proxy_admins,
)

DEFAULT_MESH_CONFIG = ROOT / "manifests" / "istio" / "mesh-allow-any.yaml"
DEFAULT_OVERLAY = ROOT / "manifests" / "overlays" / "passthrough"
PUSH_TIMEOUT = 5.0
# How long `apply` waits for every Envoy to run the new config (it takes well under a second; more
# on a loaded machine).
ENVOY_TIMEOUT = 15.0


class PushError(RuntimeError):
    """A running proxy refused or missed a config push; the message names the proxy and the fix."""


def new_credential(paths: Paths) -> None:
    """A fresh random credential for this stack's config pushes, in a file only its user can read.
    Written at every `up`, before the proxies start: they read it once, at start."""
    atomic_write(paths.admin_token, secrets.token_urlsafe(32) + "\n", mode=0o600)


def credential(paths: Paths) -> str:
    try:
        return paths.admin_token.read_text().strip()
    except OSError as err:
        raise PushError(
            f"cannot read the stack's push credential {paths.admin_token} ({err.strerror or err}); "
            "restart the stack (`make down`, then `make up`) to make a new one"
        ) from err


def load_state(paths: Paths) -> ClusterState:
    if paths.config_file.exists():
        return ClusterState.from_json(paths.config_file.read_text(), origin=str(paths.config_file))
    return ClusterState()


def save_state(paths: Paths, state: ClusterState) -> None:
    atomic_write(paths.config_file, state.to_json())


def tables_for(state: ClusterState, ports: Ports) -> dict[str, RouteTable]:
    """The route tables of the applied config; ConfigError when one of the proxies this stack runs
    would have none (its Deployment is not applied)."""
    mesh, _ = state.mesh()
    tables = build_tables(mesh, addresses(ports))
    for workload in PROXY_CHILDREN:
        if workload not in tables:
            raise ConfigError(
                f"no Deployment {workload} in the applied config: apply an overlay "
                "(manifests/overlays/<option>), which includes manifests/base"
            )
    return tables


def write_tables(paths: Paths, tables: dict[str, RouteTable]) -> None:
    """The files proxies (re)start from, so a restarted proxy comes back with the current config."""
    for name, table in tables.items():
        atomic_write(paths.routes_file(name), table.to_json())


def push(tables: dict[str, RouteTable], ports: Ports, token: str) -> list[str]:
    """POST each table to its proxy's admin endpoint; raise PushError naming any proxy that refused."""
    lines = []
    for name, admin in proxy_admins(ports).items():
        request = urllib.request.Request(
            f"{admin}/routes",
            data=tables[name].to_json().encode(),
            method="POST",
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=PUSH_TIMEOUT) as resp:
                version = json.loads(resp.read()).get("version", "?")
        except urllib.error.HTTPError as err:
            raise PushError(
                f"{name}'s proxy ({admin}) refused the route table: HTTP {err.code} "
                f"{err.read().decode(errors='replace')[:300]}"
            ) from err
        except OSError as err:
            raise PushError(
                f"{name}'s proxy ({admin}) did not take the push: {err}. Is the stack healthy? "
                f"Check `make status`; the config is saved and is used when the stack starts."
            ) from err
        lines.append(f"pushed to {name} (version {version})")
    return lines


def stack_dataplane(paths: Paths) -> str:
    """The data plane of the stack in `paths`, as `up` recorded it (python when none runs)."""
    state = read_state(paths)
    return state.dataplane if state else dataplane.PYTHON


def deliver(paths: Paths, tables: dict[str, RouteTable], ports: Ports) -> list[str]:
    """Hand the tables to the running proxies, the way their data plane takes config."""
    if stack_dataplane(paths) == dataplane.ENVOY:
        return deliver_to_envoy(paths, tables, ports)
    return push(tables, ports, credential(paths))


def deliver_to_envoy(paths: Paths, tables: dict[str, RouteTable], ports: Ports) -> list[str]:
    """Write each Envoy's xDS files and wait until it runs the new version; say how long that took
    (the propagation time, which istiod's users watch as pilot_proxy_convergence_time)."""
    started = time.monotonic()
    try:
        dataplane.write_xds(paths, tables, ports)
    except TimeoutError as err:
        raise PushError(
            f"{err} ({paths.logs}/). The config is saved; `make status` shows when it catches up."
        ) from err
    lines = []
    for name, admin in proxy_admins(ports).items():
        wanted = tables[name].version
        runs = dataplane.wait_running(admin, wanted, started + ENVOY_TIMEOUT)
        if runs != wanted:
            raise PushError(
                f"{name}'s Envoy ({admin}) runs config version {runs}, not the applied {wanted}, "
                f"{ENVOY_TIMEOUT:.0f} s after its xDS files in {paths.xds_dir(name)} were written; "
                f"its log says why: {paths.logs / (PROXY_CHILDREN[name] + '.log')}. The config is saved; "
                "`make status` shows when it catches up."
            )
        lines.append(
            f"delivered to {name} (version {wanted}): Envoy runs it "
            f"{time.monotonic() - started:.2f} s after the xDS write began"
        )
    return lines


def prepare(paths: Paths, ports: Ports, overlay: Path | None, plane: str = dataplane.PYTHON) -> None:
    """Before `up`: make sure there is an applied config (the mesh default + an overlay) and the
    files the proxies start from (route tables; on Envoy, its bootstrap and xDS files too)."""
    state = load_state(paths)
    if not len(state):
        state.apply_file(DEFAULT_MESH_CONFIG)
    if overlay is not None or not paths.config_file.exists():
        state.apply_kustomization(overlay or DEFAULT_OVERLAY)
    tables = tables_for(state, ports)  # refuses a config the proxies cannot use, before it is saved
    save_state(paths, state)
    write_tables(paths, tables)
    if plane == dataplane.ENVOY:
        dataplane.write_bootstraps(paths, tables, ports)
    # The proxies start from these tables, and Prometheus from an empty database: a clean start.
    Applied(describe(state), time.time()).write(paths)


def apply(
    paths: Paths, kustomize: Path | None, file: Path | None, ports: Ports | None, delete: bool = False
) -> list[str]:
    """`localmesh apply` (or, with delete, `localmesh delete -f`): validate and record the change, then
    push it to the running proxies (if ports)."""
    state = load_state(paths)
    if not len(state):
        state.apply_file(DEFAULT_MESH_CONFIG)
    result: ApplyResult
    if kustomize and not delete:
        result = state.apply_kustomization(kustomize)
    else:
        # The command line requires -f for `delete`, and -k or -f for `apply`.
        assert file is not None
        result = state.delete_resources(load_file(file)) if delete else state.apply_file(file)
    lines = [str(change) for change in result.changes]
    lines += [f"warning: {w}" for w in result.warnings]
    # Everything that can refuse the config runs before anything is written: an error changes nothing.
    namespace = tables_for(state, Ports())[SIDECAR_WORKLOAD].proxy.namespace
    lines.append(f"egress policy for {namespace}: {describe(state)}")
    tables = tables_for(state, ports) if ports is not None else None
    save_state(paths, state)
    if ports is not None and tables:
        write_tables(paths, tables)
        lines += deliver(paths, tables, ports)
        if result.changed:  # in effect from now: every proxy has taken the new table
            Applied(describe(state), time.time()).write(paths)
    return lines


def repush(paths: Paths, ports: Ports, state: ClusterState | None = None) -> list[str]:
    """Write the applied config's route tables and push them to the running proxies."""
    tables = tables_for(state or load_state(paths), ports)
    write_tables(paths, tables)
    return deliver(paths, tables, ports)


def running_version(admin: str) -> str | None:
    """The version of the route table a proxy runs (its /config_dump); None if it does not say."""
    try:
        with urllib.request.urlopen(f"{admin}/config_dump", timeout=PUSH_TIMEOUT) as resp:
            return str(json.loads(resp.read())["version"])
    except (OSError, ValueError, KeyError):
        return None


def sync_status(paths: Paths, ports: Ports) -> dict[str, tuple[str | None, str]]:
    """proxy -> (version it runs or None, version of the applied config): equal when in sync."""
    applied = tables_for(load_state(paths), ports)
    if stack_dataplane(paths) == dataplane.ENVOY:
        runs = dataplane.running_versions(ports)
    else:
        runs = {name: running_version(admin) for name, admin in proxy_admins(ports).items()}
    return {name: (runs[name], applied[name].version) for name in proxy_admins(ports)}


def describe(state: ClusterState) -> str:
    """Which of the three options the applied config amounts to, as the stack's sidecar would route."""
    table = tables_for(state, Ports())[SIDECAR_WORKLOAD]
    cluster = decide_outbound(table, EXTERNAL_HOST, 80, "http").cluster
    policy = table.outbound_policy
    option = {PASSTHROUGH: "passthrough", BLACKHOLE: "blackhole"}.get(cluster, "serviceentry")
    if option == "serviceentry" and policy != REGISTRY_ONLY:
        option = "serviceentry (under ALLOW_ANY)"
    return f"{policy} ({table.policy_source}); {EXTERNAL_HOST}:80 -> {cluster}: option {option}"


def current_option(paths: Paths) -> str:
    state = load_state(paths)
    return describe(state) if len(state) else "none applied yet"

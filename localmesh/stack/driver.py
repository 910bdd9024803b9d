"""Drive a local stack from Python the way a user drives it from the shell: `localmesh up` on free
ports with a state folder of its own, `apply`, `down`. The tests and the benchmarks use it, so
neither ever touches a stack someone else runs on the default ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from localmesh.stack.plan import find_prometheus
from localmesh.stack.procs import free_ports as free_port_numbers
from localmesh.stack.statefile import read_state
from localmesh.stack.topology import LOOPBACK, ROOT, VENV_BIN, Paths, Ports, urls


class StackCommandError(RuntimeError):
    """A localmesh command exited non-zero; the message holds its output."""


@dataclass
class LocalStack:
    """A local mesh started with `localmesh up` in state_dir, listening on ports."""

    state_dir: Path
    ports: Ports
    prometheus: bool
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

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
        return f"http://{LOOPBACK}:{self.ports.sidecar_admin}"

    @property
    def gateway_admin(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.gateway_admin}"

    def localmesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the localmesh command line against this stack; StackCommandError if it fails and check."""
        cmd = [str(VENV_BIN / "python"), "-m", "localmesh", "--state-dir", str(self.state_dir), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=self.env)
        if check and done.returncode != 0:
            raise StackCommandError(
                f"localmesh {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def apply(self, option: str) -> str:
        """Apply one egress option's overlay (pushed live) and return what localmesh printed."""
        return self.localmesh("apply", "-k", str(ROOT / "manifests" / "overlays" / option)).stdout

    def children(self) -> dict[str, int]:
        """Process name -> PID, from the supervisor's state file."""
        state = read_state(Paths(self.state_dir))
        return dict(state.children) if state else {}


def free_ports() -> Ports:
    """Distinct free ports, one per name."""
    return Ports(*free_port_numbers(len(Ports.names())))


def start_stack(
    state_dir: Path, env: Mapping[str, str] | None = None, dataplane: str = "python"
) -> LocalStack:
    """`localmesh up` on free ports (env: extra variables for the stack; dataplane: python or envoy);
    the caller runs `down`."""
    ports = free_ports()
    full_env = {**os.environ, **(env or {})}
    stack = LocalStack(state_dir, ports, find_prometheus(full_env) is not None, full_env)
    moved = (f"--port={name}={port}" for name, port in vars(ports).items())
    stack.localmesh("up", f"--dataplane={dataplane}", *moved)
    return stack


@contextlib.contextmanager
def local_stack(
    state_dir: Path, env: Mapping[str, str] | None = None, dataplane: str = "python"
) -> Iterator[LocalStack]:
    """A started stack that is always brought down afterwards, by `localmesh down`."""
    stack = start_stack(state_dir, env, dataplane)
    try:
        yield stack
    finally:
        stack.localmesh("down", check=False)

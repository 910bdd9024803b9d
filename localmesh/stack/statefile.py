"""What a running stack tells the other commands through its state folder: state.json (the
supervisor's phase, ports and children) and applied.json (the egress option in force and since when)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from localmesh.stack.files import atomic_write
from localmesh.stack.topology import Paths, Ports


@dataclass
class StackState:
    """What state.json says about a running stack; `status`, `down`, `apply` and the demo read it."""

    supervisor_pid: int
    phase: str  # "starting", "ready", "restarting" (a crashed child), "failed", "stopping"
    ports: Ports
    prometheus: bool
    children: dict[str, int] = field(default_factory=dict)
    message: str = ""
    # Which proxies it runs: "python" (localmesh.proxy) or "envoy" (real Envoy), chosen at `up`.
    dataplane: str = "python"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ports": asdict(self.ports)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        return cls(**{**raw, "ports": Ports(**raw["ports"])})

    def write(self, paths: Paths) -> None:
        atomic_write(paths.state_file, self.to_json())


def read_state(paths: Paths) -> StackState | None:
    try:
        return StackState.from_json(paths.state_file.read_text())
    except FileNotFoundError:
        return None


@dataclass
class Applied:
    """The egress option in force and when it took effect (Unix time): the moment `up` started the
    proxies with it, or the moment the running proxies took the push of a change. Reports default to
    the traffic since then, so one step's numbers never mix with the step before."""

    option: str
    since: float

    def write(self, paths: Paths) -> None:
        atomic_write(paths.applied_file, json.dumps(asdict(self), indent=2))


def read_applied(paths: Paths) -> Applied | None:
    try:
        return Applied(**json.loads(paths.applied_file.read_text()))
    except FileNotFoundError:
        return None

"""The local stack (localmesh) as egresswatch sees it: whether the Prometheus being read is the running
stack's own, and since when its egress option is in force.

Windows default to that moment when reading the local stack, so a report, a suggestion or a lock-down
check right after a switch sees the new option's traffic only. The stack is found where localmesh keeps
it: $LOCALMESH_STATE, else .localmesh/ in the project.
"""

from __future__ import annotations

from localmesh.stack.procs import pid_alive
from localmesh.stack.statefile import Applied, read_applied, read_state
from localmesh.stack.topology import Paths, default_state_dir, urls


def applied(prometheus: str | None = None) -> Applied | None:
    """The running local stack's applied option, if one runs (and `prometheus`, when given, is its own)."""
    paths = Paths(default_state_dir())
    state = read_state(paths)
    if state is None or state.phase != "ready" or not pid_alive(state.supervisor_pid):
        return None
    own = urls(state.ports, state.prometheus).get("prometheus")
    if prometheus is not None and (own is None or own.rstrip("/") != prometheus.rstrip("/")):
        return None
    return read_applied(paths)


def option_name(found: Applied) -> str:
    """The last part of the stack's description: "... -> PassthroughCluster: option passthrough" ->
    "option passthrough"."""
    return found.option.rsplit(": ", 1)[-1]

"""The supervisor: starts the plan (stack.plan), watches it, restarts a crashed child a few times, and
otherwise stops everything loudly: the stack is either whole or gone, never half-alive. It writes
only its own state folder (`.localmesh/` by default).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request

from localmesh.stack.plan import ChildSpec
from localmesh.stack.procs import Child, StartError, log_tail, spawn, wait_http, wait_ports_free
from localmesh.stack.statefile import StackState
from localmesh.stack.topology import ROOT, Paths

# How long `up` waits, once every process answers, for Prometheus to have scraped each target.
SCRAPE_TIMEOUT = 30.0
# A crashed child is restarted at most this many times within RESTART_WINDOW seconds; one more
# crash stops the whole stack, so a broken child cannot flap forever behind a "running" status.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
# Before a restart the old process group gets this long to go after SIGTERM (then SIGKILL), and its
# ports this long to be free: a gunicorn master killed outright leaves workers that hold the port,
# and a new master gives up after 5 bind attempts.
RESTART_GRACE = 5.0
PORT_WAIT = 15.0
READY_TIMEOUT = 30.0


def targets_not_scraped(prometheus: str) -> list[str]:
    """Prometheus's active targets that are not up or not scraped yet, each with its state ([] when
    all are); raises OSError/ValueError when Prometheus does not answer its /api/v1/targets."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=5) as resp:
        targets = json.loads(resp.read())["data"]["activeTargets"]
    if not targets:
        return ["no active target yet (service discovery has not run)"]
    return [
        f"{t['scrapeUrl']}: health {t['health']}" + (f" ({t['lastError']})" if t.get("lastError") else "")
        for t in targets
        if t["health"] != "up" or t["lastScrape"].startswith("0001-")
    ]


def wait_targets_scraped(prometheus: str, timeout: float) -> None:
    """Wait until every active target of Prometheus is up and scraped; StartError naming them if not."""
    deadline = time.monotonic() + timeout
    pending = ["Prometheus did not answer /api/v1/targets"]
    while time.monotonic() < deadline:
        try:
            pending = targets_not_scraped(prometheus)
        except (OSError, ValueError, KeyError) as err:
            pending = [f"Prometheus did not answer /api/v1/targets ({err})"]
        if not pending:
            return
        time.sleep(0.2)
    raise StartError(
        f"Prometheus ({prometheus}) had not scraped every target within {timeout:.0f} s:\n  "
        + "\n  ".join(pending)
        + f"\nIts targets page says more: {prometheus}/targets"
    )


def wait_scraped_since(prometheus: str, when: float, timeout: float) -> bool:
    """Wait until Prometheus holds a scrape of every target taken at `when` (Unix time) or later;
    False if it has none within timeout. After a switch of option, that scrape is the baseline that
    lets a window starting at the switch count the requests that follow."""
    deadline = time.monotonic() + timeout
    query = urllib.parse.urlencode({"query": "min(timestamp(up))"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as resp:
                result = json.loads(resp.read())["data"]["result"]
            if result and float(result[0]["value"][1]) >= when:
                return True
        except (OSError, ValueError, KeyError):
            pass  # not answering yet: try again until the deadline
        time.sleep(0.2)
    return False


class Supervisor:
    """Starts the plan, keeps it whole, and stops it on SIGTERM/SIGINT (Ctrl-C)."""

    def __init__(self, specs: list[ChildSpec], paths: Paths, state: StackState) -> None:
        self.specs = {s.name: s for s in specs}
        self.paths = paths
        self.state = state
        self.children: dict[str, Child] = {}
        self.restarts: dict[str, list[float]] = {name: [] for name in self.specs}
        self.stopping = False

    def _log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} localmesh: {message}", flush=True)

    def _start(self, name: str) -> Child:
        spec = self.specs[name]
        child = spawn(name, spec.cmd, self.paths.logs / f"{name}.log", spec.env, cwd=ROOT)
        self.children[name] = child
        return child

    def _publish(self, phase: str, message: str = "") -> None:
        self.state.phase = phase
        self.state.message = message
        self.state.children = {n: c.pid for n, c in self.children.items()}
        self.state.write(self.paths)

    def start_all(self, timeout: float = 30.0) -> None:
        """Start every child at once and wait for each to be ready; any failure stops them all."""
        for name in self.specs:
            self._start(name)
        self._publish("starting")
        for name, child in self.children.items():
            wait_http(child, self.specs[name].ready_url, timeout)
        if "prometheus" in self.specs:
            # Ready means queryable: Prometheus hands discovered targets to its scrapers only after
            # a few seconds (about 5 here), and traffic sent before the first scrape never shows in rate().
            base = self.specs["prometheus"].ready_url.removesuffix("/-/ready")
            wait_targets_scraped(base, SCRAPE_TIMEOUT)
        self._publish("ready")
        self._log("all ready")

    def _handle_exit(self, name: str, child: Child) -> None:
        now = time.monotonic()
        recent = [t for t in self.restarts[name] if now - t < RESTART_WINDOW] + [now]
        self.restarts[name] = recent
        code = child.exit_code()
        if len(recent) > MAX_RESTARTS:
            raise StartError(
                f"{name} crashed {len(recent)} times within {RESTART_WINDOW:.0f} s (last exit code "
                f"{code}); stopping the whole stack. Its log ({child.log}):\n{log_tail(child.log)}"
            )
        self._log(
            f"{name} exited with code {code}; restarting it (restart {len(recent)} of {MAX_RESTARTS} "
            f"allowed within {RESTART_WINDOW:.0f} s). Log tail:\n{log_tail(child.log, 5)}"
        )
        self._publish("restarting", f"restarting {name}")
        self._restart(name, child)

    def _restart(self, name: str, old: Child) -> None:
        """End what is left of the old process group, wait for its ports, start it again and wait
        until the new child itself is ready. A restart that fails counts as one more crash (the
        watch loop sees the child dead again): only the restart budget stops the stack."""
        spec = self.specs[name]
        old.stop(RESTART_GRACE)
        held = wait_ports_free(spec.ports, PORT_WAIT)
        if held:
            self._log(
                f"{name}: port(s) {', '.join(map(str, held))} still held by another process after "
                f"{PORT_WAIT:.0f} s (`ss -ltnp` shows which); starting it anyway"
            )
        restarted = self._start(name)
        try:
            wait_http(restarted, spec.ready_url, READY_TIMEOUT)
        except StartError as err:
            self._log(f"{name} did not come back: {err}")
            restarted.stop()
            return
        self._log(f"{name} restarted (pid {restarted.pid})")
        self._publish("ready")

    def watch(self) -> None:
        """Until asked to stop: notice crashed children and restart or give up loudly."""
        while not self.stopping:
            for name, child in list(self.children.items()):
                if not self.stopping and not child.alive():
                    self._handle_exit(name, child)
            time.sleep(0.2)

    def stop_all(self) -> None:
        """Stop the children in reverse start order, each by its PID and process group."""
        for child in reversed(list(self.children.values())):
            child.stop()

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """The supervisor's life: start, watch, stop. Exit code 0 when stopped on request."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        code = 0
        try:
            self.start_all()
            self.watch()
            self._publish("stopping")
        except StartError as err:
            self._log(str(err))
            self._publish("failed", str(err))
            code = 1
        finally:
            self.stop_all()
            if code == 0:
                self.paths.state_file.unlink(missing_ok=True)
            self._log("stopped")
        return code

"""Start a child process, wait until it answers over HTTP, and stop it by its PID.

Shared by the stack (which supervises the whole local mesh) and the tests (which start single
services on free ports). Nothing here kills by name: every process is stopped through its own PID
and process group, so a test run never touches anything it did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartError(RuntimeError):
    """A child process exited or never became ready; the message names it and shows its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on host (the kernel picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """count distinct TCP ports, free right now on host. Every socket stays bound until all are
    chosen: binding and closing one at a time lets the kernel hand out the same port twice."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port, or the port cannot be bound."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_ports_free(ports: Sequence[int], timeout: float, host: str = "127.0.0.1") -> list[int]:
    """Wait until nothing listens on any of ports; return the ones still held after timeout."""
    deadline = time.monotonic() + timeout
    held = [port for port in ports if port_in_use(port, host)]
    while held and time.monotonic() < deadline:
        time.sleep(0.05)
        held = [port for port in held if port_in_use(port, host)]
    return held


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    """A started process: its name (for messages), Popen handle and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        """None while the child runs; else its exit code (minus the signal number if killed).

        An exited child is left unreaped, a zombie, until stop(): as long as it is, its PID, which
        is also its process group's ID, cannot be handed to another process, so stop() can signal
        the group (workers a killed master left behind) without ever reaching a stranger."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere: poll() then records it as exited
            return self.popen.poll()
        if info is None:
            return None
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        return -info.si_status if killed else info.si_status

    def alive(self) -> bool:
        return self.exit_code() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after `grace` s, then reap it.

        The group is signalled even when its leader has exited: a gunicorn master killed outright
        leaves its workers behind, still holding the port."""
        if self.popen.returncode is not None:
            return  # reaped already: its group ID may name someone else's processes by now
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.alive() or _others_in_group(self.popen.pid)):
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)  # whatever is left; the unreaped leader keeps the ID ours
        self.popen.wait(grace)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def _others_in_group(pgid: int) -> bool:
    """True while a live process other than the leader is in process group pgid (from /proc on
    Linux; elsewhere False, so what is left gets SIGKILL as soon as the leader is gone)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        state, _ppid, pgrp = raw[raw.rindex(")") + 2 :].split()[:3]
        if state != "Z" and int(pgrp) == pgid:
            return True
    return False


def spawn(
    name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Child:
    """Start cmd in its own process group (so stop() reaches its workers too), output to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name, popen, log)


def wait_http(child: Child, url: str, timeout: float = 20.0) -> None:
    """Poll url until it answers 2xx while the child lives; raise StartError if it dies first.

    Only a 2xx counts (a 404 from whatever else holds the port is not readiness), and the child
    must still be alive after the answer, so an answer from processes it left behind is not its own."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartError(
                f"{child.name} exited with code {child.exit_code()} before it was ready "
                f"({url}). Its log ({child.log}):\n{log_tail(child.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if 200 <= resp.status < 300 and child.alive():
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.05)
    raise StartError(
        f"{child.name} did not answer {url} within {timeout:.0f} s (last: {last}). "
        f"Its log ({child.log}):\n{log_tail(child.log)}"
    )


@contextlib.contextmanager
def running(
    name: str,
    cmd: Sequence[str],
    ready_url: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
) -> Iterator[Child]:
    """Start a child, wait until ready_url answers, yield it, and always stop it by PID."""
    child = spawn(name, cmd, log, env)
    try:
        wait_http(child, ready_url, timeout)
        yield child
    finally:
        child.stop()


def pid_alive(pid: int) -> bool:
    """True while pid runs. A child of ours that exited is reaped here, so it does not linger as
    a zombie that looks alive (the demo is the supervisor's parent when it started the stack)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

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
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port, or the port cannot be bound."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


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
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it after `grace` seconds."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(grace)


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
    """Poll url until it answers with any HTTP status below 500; raise StartError if the child dies first."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartError(
                f"{child.name} exited with code {child.popen.returncode} before it was ready "
                f"({url}). Its log ({child.log}):\n{log_tail(child.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
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

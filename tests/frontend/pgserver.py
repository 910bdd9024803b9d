"""A real PostgreSQL server for the tests: Debian's `postgresql` package, started on a free port.

initdb makes a cluster in a fresh temporary folder; the server listens on 127.0.0.1 and on a unix
socket in that folder only, with a password (scram-sha-256), and is stopped by its PID. PostgreSQL
refuses to run as root, so under root both run as the `postgres` user (Popen's user=, which runs the
server itself as that user: no runuser/su process sits between the PID we stop and the server).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from localmesh.stack.procs import free_port, log_tail

BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian's layout, one folder per major version


def find_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder that has initdb and postgres, or None."""
    found = [Path(p) for p in glob.glob(BIN_GLOB) if (Path(p) / "initdb").exists()]
    found = [p for p in found if (p / "postgres").exists()]
    return max(found, key=lambda p: int(p.parent.name), default=None) if found else None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if find_bin() is None:
        return (
            f"no PostgreSQL server binaries under {BIN_GLOB}: install Debian's package "
            "(apt-get install postgresql; .ci/run does)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


class PostgresServer:
    """One throwaway cluster; `url(db)` gives a postgresql:// URL with the password."""

    user = "recipes"

    def __init__(self) -> None:
        bin_dir = find_bin()
        assert bin_dir is not None, missing_reason()
        self.bin = bin_dir
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.root = Path(tempfile.mkdtemp(prefix="recipes-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.popen: subprocess.Popen | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._as,
        )
        pwfile.unlink()
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),  # the unix socket, in our folder only
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # A test cluster: durability is not under test, speed is welcome.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **self._as,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.popen.returncode}:\n{log_tail(self.log)}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"postgres not ready in {timeout:.0f} s:\n{log_tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"recipes_{secrets.token_hex(6)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID; SIGKILL to its process group if it lingers. Then clean up."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

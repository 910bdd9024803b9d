"""The local stack against a hostile neighbour and an operator's kill -9, on free 127.0.0.1 ports:
route pushes need the stack's credential, `status` tells what each proxy really runs, a crashed
gunicorn master comes back on its own port without stopping the stack, and ports are never shared."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from bench.procstat import descendants
from localmesh.stack.driver import LocalStack, free_ports, start_stack
from localmesh.stack.procs import free_port, pid_alive
from localmesh.stack.statefile import read_state
from localmesh.stack.topology import ROOT, VENV_BIN, Paths

RECIPE = {"title": "Crash soup", "author": "tests", "ingredients": ["water"], "steps": "Boil."}


def config_dump(admin: str) -> dict:
    return requests.get(f"{admin}/config_dump", timeout=5).json()


def push_table(admin: str, table: dict, token: str | None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{admin}/routes", data=json.dumps(table), headers=headers, timeout=5)


# ---- item: the admin port's writes need the stack's credential --------------------------------------


def test_a_local_process_cannot_lift_the_lock_down(stack: LocalStack) -> None:
    stack.apply("blackhole")
    before = {admin: config_dump(admin) for admin in (stack.sidecar_admin, stack.gateway_admin)}
    # What an attacker on the machine tried: read the table, flip it to ALLOW_ANY, push it back.
    lifted = {**before[stack.sidecar_admin], "outbound_policy": "ALLOW_ANY", "version": "attacker"}
    for token in (None, "guessed"):
        refused = push_table(stack.sidecar_admin, lifted, token)
        assert refused.status_code in (401, 403), refused.text
        assert "localmesh apply" in refused.json()["error"]
    assert {admin: config_dump(admin) for admin in before} == before
    assert requests.get(f"{stack.gateway}/id", timeout=10).json()["error"] == "egress_blocked"

    # The credential: a file only its user can read; in no read endpoint and no command line.
    token_file = stack.state_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    for admin in before:
        for path in ("/config_dump", "/stats/prometheus", "/ready"):
            assert token not in requests.get(f"{admin}{path}", timeout=5).text
    for pid in stack.children().values():
        assert token not in Path(f"/proc/{pid}/cmdline").read_text()

    # The real `localmesh apply` carries it.
    out = stack.apply("passthrough")
    assert "pushed to idgen" in out and "pushed to istio-ingressgateway" in out
    assert requests.get(f"{stack.gateway}/id", timeout=10).status_code == 200


def test_status_shows_the_version_each_proxy_runs_and_flags_drift(stack: LocalStack) -> None:
    stack.apply("passthrough")
    older = config_dump(stack.sidecar_admin)
    stack.apply("blackhole")
    synced = stack.localmesh("status")
    applied = config_dump(stack.sidecar_admin)["version"]
    assert f"idgen runs {applied}: SYNCED" in synced.stdout
    assert "istio-ingressgateway runs" in synced.stdout and "DRIFT" not in synced.stdout

    # A proxy running an older table than the applied one (a push it missed), simulated with the
    # stack's own credential: status names the proxy, both versions and the fix, and exits 1.
    token = (stack.state_dir / "admin-token").read_text().strip()
    assert push_table(stack.sidecar_admin, older, token).status_code == 200
    drifted = stack.localmesh("status", check=False)
    assert drifted.returncode == 1
    assert f"idgen runs {older['version']}, applied is {applied}: DRIFT" in drifted.stdout
    assert "`.venv/bin/localmesh push`" in drifted.stdout
    assert "option blackhole" in drifted.stdout  # the applied state, not what the proxy runs

    pushed = stack.localmesh("push")
    assert "pushed to idgen" in pushed.stdout
    assert f"idgen runs {applied}: SYNCED" in stack.localmesh("status").stdout
    assert requests.get(f"{stack.gateway}/id", timeout=10).json()["error"] == "egress_blocked"

    # A restarted proxy starts from its route file: one left older than the applied config shows too.
    routes_file = stack.state_dir / "routes" / "idgen.json"
    routes_file.write_text(json.dumps(older))
    sidecar = stack.children()["sidecar"]
    os.kill(sidecar, signal.SIGKILL)
    wait_restarted(stack.state_dir, "sidecar", sidecar)
    assert (
        f"idgen runs {older['version']}, applied is {applied}: DRIFT"
        in stack.localmesh("status", check=False).stdout
    )
    stack.localmesh("push")
    assert json.loads(routes_file.read_text())["version"] == applied
    assert f"idgen runs {applied}: SYNCED" in stack.localmesh("status").stdout


def test_push_on_a_stopped_stack_says_how_to_start_it(tmp_path: Path) -> None:
    cmd = [str(VENV_BIN / "python"), "-m", "localmesh", "--state-dir", str(tmp_path), "push"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 3 and "`make up`" in done.stdout


# ---- item: ports are unique --------------------------------------------------------------------------


def test_free_ports_never_returns_a_port_twice() -> None:
    # Binding and closing one socket at a time gave the same port twice in about 3 of 1,000 calls.
    for _ in range(2000):
        ports = list(vars(free_ports()).values())
        assert len(set(ports)) == len(ports), ports


def test_up_refuses_a_port_given_twice_and_names_both(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LOCALMESH_PORT_SITE": str(port), "LOCALMESH_PORT_CONSOLE": str(port)}
    cmd = [str(VENV_BIN / "python"), "-m", "localmesh", "--state-dir", str(tmp_path), "up"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 2
    assert f"port {port} is given to both site and console" in done.stderr
    assert "LOCALMESH_PORT_CONSOLE=NNNN" in done.stderr and "--port console=NNNN" in done.stderr
    assert read_state(Paths(tmp_path)) is None


def test_a_taken_port_names_the_port_and_the_hint_given_works(tmp_path: Path) -> None:
    """`localmesh up` with a port something else holds: exit 2 naming it; the command the message
    gives (`.venv/bin/localmesh up --port NAME=NNNN`) then starts the stack."""
    ports = free_ports()
    moved = {name: str(port) for name, port in vars(ports).items()}
    with socket.create_server(("127.0.0.1", 0)) as holder:
        taken = holder.getsockname()[1]
        env = {**os.environ, "LOCALMESH_PROMETHEUS": "off"}
        base = [str(VENV_BIN / "python"), "-m", "localmesh", "--state-dir", str(tmp_path), "up"]
        flags = [f"--port={name}={port}" for name, port in moved.items() if name != "gateway"]
        done = subprocess.run(
            [*base, *flags, f"--port=gateway={taken}"], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 2, done.stderr
        assert f"port {taken} (gateway) is already in use on 127.0.0.1" in done.stderr
        hint = re.search(r"`\.venv/bin/localmesh up (--port gateway=NNNN)`", done.stderr)
        assert hint, done.stderr
        again = hint.group(1).replace("NNNN", moved["gateway"]).replace(" ", "=", 1)
        try:
            started = subprocess.run(
                [*base, *flags, again], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
            )
            assert started.returncode == 0, started.stderr
            assert f"gateway: http://127.0.0.1:{moved['gateway']}" in started.stdout
        finally:
            subprocess.run([*base[:-1], "down"], capture_output=True, timeout=60, cwd=ROOT)


# ---- item: a crashed gunicorn master never stops the stack ----------------------------------------


class LightLoad:
    """Creates recipes through the whole chain in a background thread until stopped."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.statuses: Counter[int | str] = Counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                code = requests.post(f"{self.stack.site}/api/recipes", json=RECIPE, timeout=10).status_code
            except requests.RequestException as err:
                code = type(err).__name__
            self.statuses[code] += 1
            time.sleep(0.05)

    def __enter__(self) -> LightLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)


def runs(pid: int) -> bool:
    """True while pid runs; a zombie (ended, not yet reaped by whoever adopted it) does not count."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc").is_dir() and pid_alive(pid)
    return raw[raw.rindex(")") + 2] != "Z"


def wait_restarted(state_dir: Path, name: str, old_pid: int, timeout: float = 90.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(Paths(state_dir))
        assert state is not None and pid_alive(state.supervisor_pid), "the supervisor stopped the stack"
        if state.children[name] != old_pid and state.phase == "ready":
            return state.children[name]
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted within {timeout:.0f} s")


def test_kill_9_of_each_gunicorn_master_under_load_recovers_on_the_same_ports(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        stack.apply("passthrough")
        with LightLoad(stack) as load:
            for name, url in (
                ("idgen", f"http://127.0.0.1:{stack.ports.idgen}/readyz"),
                ("httpbin", f"http://127.0.0.1:{stack.ports.httpbin}/get"),
                ("frontend", f"{stack.site}/healthz"),
            ):
                master = stack.children()[name]
                workers = [pid for pid in descendants(master) if pid != master]
                assert workers, f"{name} has no workers"
                os.kill(master, signal.SIGKILL)  # the master only: its workers are left behind
                new = wait_restarted(tmp_path, name, master)
                assert not [pid for pid in workers if runs(pid)], f"{name}'s old workers still run"
                assert pid_alive(new)
                assert requests.get(url, timeout=10).status_code == 200
                created = requests.post(f"{stack.site}/api/recipes", json=RECIPE, timeout=15)
                assert created.status_code == 201, (name, created.text)
        assert load.statuses[201] > 0, load.statuses
        state = read_state(Paths(tmp_path))
        assert state is not None and state.phase == "ready"
        log = (tmp_path / "logs" / "supervisor.log").read_text()
        assert "stopping the whole stack" not in log
        assert all(f"{name} restarted (pid" in log for name in ("idgen", "httpbin", "frontend"))
    finally:
        stack.localmesh("down", check=False)


def test_readiness_wants_a_2xx_from_its_own_child(tmp_path: Path) -> None:
    """A 404 from whatever answers on the port is not readiness (Prometheus's 404 once passed)."""
    from localmesh.stack.procs import StartError, spawn, wait_http

    port = free_port()
    server = spawn(
        "http.server",
        [str(VENV_BIN / "python"), "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        tmp_path / "server.log",
        cwd=tmp_path,
    )
    try:
        with pytest.raises(StartError, match=r"HTTP 404"):
            wait_http(server, f"http://127.0.0.1:{port}/missing", timeout=3)
        wait_http(server, f"http://127.0.0.1:{port}/", timeout=10)  # the listing: 200
    finally:
        server.stop()

"""The process helper every test and the stack rely on: start, readiness, stop by PID."""

import sys

import pytest

from localmesh.stack.procs import StartError, free_port, port_in_use, running, spawn, wait_http


def test_running_serves_then_stops(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with running("http.server", cmd, f"http://127.0.0.1:{port}/", tmp_path / "log") as child:
        assert child.alive()
        assert port_in_use(port)
    assert not child.alive()
    assert not port_in_use(port)


def test_child_that_dies_is_reported_with_its_log(tmp_path):
    child = spawn(
        "crasher", [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"], tmp_path / "log"
    )
    with pytest.raises(StartError, match=r"crasher exited with code 3(.|\n)*boom: bad config"):
        wait_http(child, f"http://127.0.0.1:{free_port()}/", timeout=10)


def test_httpbin_standin_answers_uuid(httpbin_url):
    import uuid

    import requests

    body = requests.get(f"{httpbin_url}/uuid", timeout=5).json()
    assert uuid.UUID(body["uuid"]).version == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc (Linux)")
def test_stop_ends_the_workers_a_killed_leader_left_behind(tmp_path):
    """kill -9 of a master leaves its workers; stop() ends its whole group all the same."""
    import os
    import signal
    import time

    script = (
        "import subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('worker', w.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "log"
    child = spawn("master", [sys.executable, "-c", script], log)
    deadline = time.monotonic() + 20
    while "worker" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(log.read_text().split()[1])
    os.kill(child.pid, signal.SIGKILL)
    while child.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.exit_code() == -signal.SIGKILL
    assert runs(worker)  # the orphan still runs
    child.stop(grace=5)
    assert not runs(worker), f"worker {worker} outlived stop()"
    assert child.popen.returncode == -signal.SIGKILL


def runs(pid: int) -> bool:
    """True while pid runs; a zombie (ended, not yet reaped by whoever adopted it) does not count."""
    from pathlib import Path

    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"

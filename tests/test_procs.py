"""The process helper every test and the stack rely on: start, readiness, stop by PID."""

import sys

import pytest

from localmesh.procs import StartError, free_port, port_in_use, running, spawn, wait_http


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

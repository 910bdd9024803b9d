"""Shared fixtures: paths to the project's environments, a real httpbin, and the whole local mesh."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localmesh.stack.driver import LocalStack, start_stack
from localmesh.stack.procs import free_port, running
from localmesh.stack.topology import HTTPBIN_BIN


@pytest.fixture(scope="session")
def httpbin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The httpbin package (httpbin.org's code) under gunicorn, from its own environment, on 127.0.0.1."""
    gunicorn = HTTPBIN_BIN / "gunicorn"
    if not gunicorn.exists():
        pytest.fail(f"{gunicorn} is missing: run `make setup` (it builds .venv-httpbin)")
    port = free_port()
    log = tmp_path_factory.mktemp("httpbin") / "httpbin.log"
    cmd = [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "2", "httpbin:app"]
    with running("httpbin", cmd, f"http://127.0.0.1:{port}/get", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local mesh, shared by the tests that need it; each test applies the option it needs."""
    running_stack = start_stack(tmp_path_factory.mktemp("localmesh"))
    try:
        yield running_stack
    finally:
        running_stack.localmesh("down", check=False)

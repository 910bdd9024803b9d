"""Shared fixtures: paths to the project's environments and a real httpbin on a free port."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.procs import free_port, running

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HTTPBIN_BIN = Path(os.environ.get("HTTPBIN_VENV", ROOT / ".venv-httpbin")) / "bin"


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

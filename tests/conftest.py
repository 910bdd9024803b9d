"""Shared fixtures: paths to the project's environments, a real httpbin, and the whole local mesh; and
the test tiers.

Tiers (pytest markers, registered in pyproject.toml; `make test-unit` runs `-m unit`). Each test gets
exactly one, by the first rule that matches, so no test file needs its own marker:
- browser: the test carries the `browser` marker (it drives Chromium).
- stack: it uses the `stack` fixture, or its module imports the stack driver (start_stack, LocalStack).
- integration: it uses a fixture that starts processes (PROCESS_FIXTURES, directly or through another
  fixture), or its module starts them itself (it imports subprocess, localmesh.procs' `running`, or
  the proxy tests' ProxyProcess); or it carries the `integration` marker (a parameter may, as the
  PostgreSQL store does).
- unit: everything else. A unit test may use threads and in-process servers but never starts a process:
  the `_unit_tests_start_no_process` guard below fails any unit test that tries.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

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


TIERS = ("unit", "integration", "stack", "browser")
# Fixtures that start real processes (pytest lists a test's whole fixture closure, so naming the ones
# that start something is enough).
PROCESS_FIXTURES = frozenset(
    {"httpbin_url", "start_prometheus", "postgres_server", "start_idgen", "standins", "dataplanes"}
)
# Names a test module imports when it runs processes itself.
PROCESS_NAMES = frozenset({"subprocess", "running", "ProxyProcess"})
STACK_NAMES = frozenset({"start_stack", "LocalStack"})


def tier_of(item: pytest.Item) -> str:
    """The tier a collected test belongs to, by the rules in this module's docstring."""
    fixtures = set(getattr(item, "fixturenames", ()))
    module: ModuleType | None = getattr(item, "module", None)
    names = set(vars(module)) if module is not None else set()
    if item.get_closest_marker("browser") is not None:
        return "browser"
    if "stack" in fixtures or names & STACK_NAMES:
        return "stack"
    if fixtures & PROCESS_FIXTURES or names & PROCESS_NAMES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(tier_of(item))


class ProcessStartedInUnitTest(BaseException):
    """Raised (a BaseException, so no `except Exception` in the code under test swallows it) when a
    unit-tier test starts a process."""


# Every way the standard library starts a process: subprocess (and everything built on it), fork
# (multiprocessing), posix_spawn, os.system and the exec family's spawn helpers.
_SPAWNERS: tuple[tuple[Any, str], ...] = (
    (subprocess.Popen, "_execute_child"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
    (os, "popen"),
)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test that starts a process fails, naming the call: it belongs in the integration tier (use a
    fixture from PROCESS_FIXTURES, or add the fixture that starts it there)."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise ProcessStartedInUnitTest(
                f"{request.node.nodeid} is in the unit tier but called {what}: unit tests start no "
                "process; move it to the integration tier (see tests/conftest.py)"
            )

        return refused

    for owner, name in _SPAWNERS:
        if hasattr(owner, name):
            monkeypatch.setattr(owner, name, refuse(f"{getattr(owner, '__name__', owner)}.{name}"))

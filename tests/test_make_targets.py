"""Every `make` target the README names or `make help` lists, run the way a user types it.

A stack is started with `make up` on free ports (LOCALMESH_PORT_*, as a user moves them) in a state
folder of its own (LOCALMESH_STATE), the targets run against it, and `make down` stops it. Each test
checks the target's effect (what it printed, wrote or changed in the stack), not only its exit code.
Targets that run for minutes or need a cluster are checked with `make -n`; the table below says why.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from localmesh.stack.driver import free_ports
from localmesh.stack.plan import find_prometheus
from localmesh.stack.procs import free_port, running
from localmesh.stack.topology import ROOT, Ports

README = (ROOT / "README.md").read_text()
OPTIONS = ("passthrough", "blackhole", "serviceentry")
RECIPE = {"title": "Make soup", "author": "make", "ingredients": ["water"], "steps": "Boil."}
needs_prometheus = pytest.mark.skipif(
    find_prometheus() is None, reason="needs prometheus (Debian: apt-get install prometheus)"
)

# How each target is exercised here. "run": for real, by the test named after it. "dry": `make -n` only,
# with the reason it is not run for real.
DRY_ONLY = {
    "test": "it is the suite that runs this test; `.ci/run` runs it for real",
    "clean": "it deletes the shared .venv that this very test runs from",
    "lock": "it asks PyPI, and tests never leave the machine; tests/test_requirements.py checks its output",
    "bench": "minutes of load; tests/load/test_bench_tools.py runs the benchmark code bounded",
    "bench-proxy": "as bench",
    "bench-chain": "as bench",
    "bench-startup": "as bench",
    "bench-profile": "as bench, plus py-spy",
    "cluster-up": "needs Docker, kind and a cluster; tests/cluster runs the scripts on offline stand-ins",
    "cluster-deploy": "as cluster-up",
    "cluster-frontend": "as cluster-up",
    "cluster-frontend-deploy": "needs a Google Cloud project",
    "cluster-cleanup": "as cluster-up",
    "cluster-down": "as cluster-up",
    "cluster-kind": "needs Docker and kind; tests/cluster runs kind-up.sh on offline stand-ins",
    "cluster-demo": "as cluster-up; tests/cluster/test_cluster_make.py runs it with DRY_RUN=1 and -j",
}
# Run for real, the way a user types them, by the test file named.
RUN_ELSEWHERE = {
    "logs": "tests/localmesh/test_access_log_stack.py (make logs on a live stack, per option)",
    "bench-soak": "tests/load/test_soak.py (make bench-soak, bounded to seconds)",
    "test-unit": "tests/test_tiers.py (make test-unit, narrowed to that file)",
}
RUN = {
    "help", "setup", "lint", "up", "down", "status", "apply", "delete", "demo", "demo-passthrough",
    "demo-blackhole", "demo-serviceentry", "run-idgen", "run-frontend", "run-httpbin", "report",
    "report-json", "graph", "console", "suggest", "lockdown-check", "load", "load-ui",
}  # fmt: skip


# What the targets generate (the demo's page and graphs, make graph, make load) goes here, not into out/.
GENERATED = tempfile.TemporaryDirectory(prefix="egress-lab-out-")


def clean_env(**extra: str) -> dict[str, str]:
    """The user's environment without make's own variables (pytest may run under `make test`) and
    without any metrics source a developer may have set; generated files go to a temporary folder."""
    drop = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PROMETHEUS", "PROXIES", "EGRESSWATCH_PROMETHEUS", "NO_COLOR"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LOCALMESH_PORT_")}
    return {**env, "EGRESS_LAB_OUT": GENERATED.name, **extra}


def stack_env(state: Path, ports: Ports, **extra: str) -> dict[str, str]:
    moved = {f"LOCALMESH_PORT_{name.upper()}": str(port) for name, port in vars(ports).items()}
    return clean_env(LOCALMESH_STATE=str(state), **moved, **extra)


def make(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


class Stack:
    """A stack started by `make up` with every port moved; its env is what a user's shell would hold."""

    def __init__(self, state: Path, **extra: str) -> None:
        self.ports = free_ports()
        self.env = stack_env(state, self.ports, **extra)

    def url(self, port_name: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, port_name)}"

    def create_recipe(self) -> requests.Response:
        return requests.post(f"{self.url('site')}/api/recipes", json=RECIPE, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("make-stack"))
    up = ok(make("up", env=s.env))
    assert f"site: {s.url('site')}" in up.stdout
    try:
        yield s
    finally:
        down = make("down", env=s.env)
        assert "localmesh: stopped" in down.stdout, down.stdout + down.stderr


# ---- which targets exist ---------------------------------------------------------------------------


def help_targets() -> list[str]:
    done = ok(make("help", env=clean_env()))
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def readme_targets() -> set[str]:
    names = set(re.findall(r"\bmake ([a-z][a-z0-9-]*[a-z0-9])(?![\w*<-])", README))
    names |= {f"demo-{o}" for o in OPTIONS if "demo-<option>" in README}
    return names


def test_every_target_the_readme_names_and_help_lists_is_covered_here() -> None:
    targets = set(help_targets()) | readme_targets()
    untested = targets - RUN - set(DRY_ONLY) - set(RUN_ELSEWHERE)
    assert untested == set(), "a target without a test in this file or one RUN_ELSEWHERE names"
    assert set(help_targets()) >= readme_targets(), "the README names a target `make help` does not list"


def test_help_lists_real_names_only() -> None:
    names = help_targets()
    assert {"demo-passthrough", "demo-blackhole", "demo-serviceentry"} <= set(names)
    assert not [n for n in names if "%" in n or "$" in n], names
    for name in names:  # each name make knows how to build
        done = make("-n", "-B", name, env=clean_env())
        assert "No rule to make target" not in done.stderr, name
        assert "Nothing to be done" not in done.stdout, name


@pytest.mark.parametrize("target", sorted(DRY_ONLY))
def test_long_or_cluster_targets_dry_run(target: str) -> None:
    done = ok(make("-n", target, env=clean_env()))
    assert done.stdout.strip(), f"make -n {target} would run nothing"
    for word in done.stdout.split():
        if word.startswith("scripts/"):
            assert (ROOT / word).exists(), word


# ---- the stack's life cycle and the walkthrough ------------------------------------------------------


def test_status_follows_moved_ports(stack: Stack) -> None:
    done = ok(make("status", env=stack.env))
    assert "localmesh: ready" in done.stdout and "egress option:" in done.stdout
    assert f"prometheus: {stack.url('prometheus')}" in done.stdout or find_prometheus() is None
    assert ok(make("-s", "status", env=stack.env)).stdout.startswith("localmesh: ready")


@needs_prometheus
def test_report_suggest_lockdown_graph_read_the_running_stack(stack: Stack, tmp_path: Path) -> None:
    """First on the stack: its Prometheus window then holds passthrough traffic only."""
    ok(make("apply", "OPTION=passthrough", env=stack.env))
    assert stack.create_recipe().status_code == 201
    prom = stack.url("prometheus")
    deadline = time.monotonic() + 60
    while True:  # Prometheus finds and scrapes the proxies within seconds; wait until the request shows
        report = make("report", env=stack.env)
        if "PassthroughCluster" in report.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    ok(report)
    assert f"Prometheus {prom}" in report.stdout and "PassthroughCluster" in report.stdout
    assert report.stdout.startswith("Egress from namespace recipes")  # no echoed command line
    assert "PassthroughCluster" in ok(make("report-json", env=stack.env)).stdout

    # make suggest > se.yaml gives a file that applies as it is.
    se = tmp_path / "se.yaml"
    with open(se, "w") as out:
        done = subprocess.run(
            ["make", "suggest"], cwd=ROOT, env=stack.env, stdout=out, text=True, check=False
        )
    assert done.returncode == 0
    docs = [d for d in yaml.safe_load_all(se.read_text()) if d]
    assert docs and docs[0]["kind"] == "ServiceEntry" and docs[0]["spec"]["hosts"] == ["httpbin.org"]
    assert "make apply F=FILE" in se.read_text()  # the header's hint, run just below

    # lockdown-check keeps the tool's exit codes: 1 would break (the passthrough request), 2 cannot tell.
    would_break = make("lockdown-check", env=stack.env)
    assert would_break.returncode == 1, would_break.stdout + would_break.stderr
    assert "WOULD BREAK" in would_break.stdout and "make suggest > se.yaml" in would_break.stdout
    dead = make("lockdown-check", f"PROMETHEUS=http://127.0.0.1:{free_port()}", env=stack.env)
    assert dead.returncode == 2 and "Cannot reach Prometheus" in dead.stderr
    # Its fix, as printed: apply the suggested file; once httpbin.org is seen through it, 0 (safe).
    ok(make("apply", "F=" + str(se), env=stack.env))
    assert stack.create_recipe().status_code == 201
    deadline = time.monotonic() + 60
    while (safe := make("lockdown-check", env=stack.env)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert safe.returncode == 0 and "SAFE" in safe.stdout, safe.stdout + safe.stderr

    # The graph of the same window (since the ServiceEntry took effect).
    graph = ok(make("graph", f"GRAPH_OUT={tmp_path / 'g.svg'}", env=stack.env))
    assert prom in graph.stdout and (tmp_path / "g.svg").read_text().startswith("<svg")
    ok(make("delete", f"F={se}", env=stack.env))  # the overlays prune only their own resources


@pytest.mark.parametrize("option", OPTIONS)
def test_demo_option_target_runs_that_step(stack: Stack, option: str) -> None:
    done = ok(make(f"demo-{option}", "N=2", env=stack.env))
    assert f"=== Option {OPTIONS.index(option) + 1}: {option}" in done.stdout
    assert "Verdict: OK" in done.stdout and "MISMATCH" not in done.stdout
    status = ok(make("status", env=stack.env)).stdout  # the stack stays up, with that option applied
    assert re.search(rf"egress option: .*: option {option}( \(since [0-9:]+\))?$", status, re.M), status


def test_apply_and_delete_targets_change_the_mesh(stack: Stack, tmp_path: Path) -> None:
    ok(make("apply", "OPTION=blackhole", env=stack.env))
    blocked = stack.create_recipe()
    assert blocked.status_code == 502 and blocked.json()["error"] == "egress_blocked"
    # The site's hint names a command that works from the bundle's folder: run it as printed.
    hint = re.search(r"make apply OPTION=\w+", blocked.json()["message"])
    assert hint, blocked.json()["message"]
    ok(make(*hint.group(0).split()[1:], env=stack.env))
    assert stack.create_recipe().status_code == 201
    se = ROOT / "manifests" / "components" / "serviceentry-httpbin" / "serviceentry-httpbin.yaml"
    ok(make("delete", f"F={se}", env=stack.env))
    assert stack.create_recipe().status_code == 502  # REGISTRY_ONLY without the ServiceEntry
    ok(make("apply", f"F={se}", env=stack.env))
    assert stack.create_recipe().status_code == 201
    wrong = make("apply", "OPTION=allow-some", env=stack.env)
    assert wrong.returncode == 2 and "passthrough blackhole serviceentry" in wrong.stderr
    assert "OPTION=" in make("apply", env=stack.env).stderr


# ---- egresswatch targets against the moved stack -----------------------------------------------------


@needs_prometheus
def test_explicit_prometheus_wins_over_the_stack(stack: Stack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = make("report", f"PROMETHEUS={dead}", env=stack.env)
    assert done.returncode == 2 and f"Cannot reach Prometheus at {dead}" in done.stderr
    via_env = make("report", env={**stack.env, "PROMETHEUS": dead})
    assert f"Cannot reach Prometheus at {dead}" in via_env.stderr


def test_console_target(stack: Stack, tmp_path: Path) -> None:
    served = ok(make("console", env=stack.env))
    assert f"already serves the console: {stack.url('console')}" in served.stdout
    assert requests.get(f"{stack.url('console')}/healthz", timeout=10).status_code == 200
    port = free_port()
    cmd = ["make", "console", f"CONSOLE_PORT={port}"]
    with running("make console", cmd, f"http://127.0.0.1:{port}/healthz", tmp_path / "c.log", stack.env):
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "egresswatch console" in page.text


def test_load_targets_use_the_stack(stack: Stack, tmp_path: Path) -> None:
    ok(make("apply", "OPTION=passthrough", env=stack.env))
    args = ["LOCUST_RUN_TIME=3s", "LOCUST_USERS=2", "LOCUST_SPAWN_RATE=2", f"LOAD_OUT={tmp_path / 'load'}"]
    done = ok(make("load", *args, env=stack.env))
    stats = (tmp_path / "load_stats.csv").read_text()
    assert "Aggregated" in stats and stack.url("site") in done.stderr
    port = free_port()
    cmd = ["make", "load-ui", f"LOCUST_WEB_PORT={port}"]
    with running("make load-ui", cmd, f"http://127.0.0.1:{port}/", tmp_path / "ui.log", stack.env):
        assert "locust" in requests.get(f"http://127.0.0.1:{port}/", timeout=30).text.lower()


# ---- Ctrl-C and closed pipes -------------------------------------------------------------------------


def test_closed_pipe_is_silent(stack: Stack) -> None:
    pipelines = ("make status | true", ".venv/bin/localmesh status | true", "make status | head -1")
    assert stack.create_recipe().status_code in (201, 502)  # something for the report to show
    proxies = f"{stack.url('gateway_admin')} {stack.url('sidecar_admin')}"
    report = f".venv/bin/egresswatch report --proxies {proxies} --since-start --show-queries | true"
    for pipeline in (*pipelines, report):
        done = subprocess.run(
            ["bash", "-c", pipeline], cwd=ROOT, env=stack.env, capture_output=True, text=True, check=False
        )
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (pipeline, done.stderr)
        assert "Error" not in done.stderr, (pipeline, done.stderr)
    head = subprocess.run(
        ["bash", "-c", "make status | head -1"], cwd=ROOT, env=stack.env, capture_output=True, text=True
    )
    assert head.stdout.startswith("localmesh: ready")


def interrupt(cmd: list[str], env: dict[str, str], marker: str) -> subprocess.CompletedProcess[str]:
    """Start cmd in its own process group, wait for marker on stdout, then Ctrl-C the group, as a
    terminal does."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        seen = ""
        assert proc.stdout is not None
        while marker not in seen:
            line = proc.stdout.readline()
            assert line, f"ended before {marker!r}: {seen}"
            seen += line
        time.sleep(0.5)  # inside the step's requests
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, seen + out, err)


def test_ctrl_c_during_a_demo_step(stack: Stack) -> None:
    demo = [
        str(ROOT / ".venv" / "bin" / "python"),
        "-m",
        "localmesh.demo",
        "--keep",
        "-n",
        "5000",
        "passthrough",
    ]
    done = interrupt(demo, stack.env, "=== Option")
    assert done.returncode == 130, done
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "demo: interrupted (Ctrl-C); the local mesh keeps running (make down)."
    ]
    via_make = interrupt(["make", "demo-passthrough", "N=5000"], stack.env, "=== Option")
    assert "Traceback" not in via_make.stderr and "demo: interrupted" in via_make.stderr, via_make.stderr
    assert "localmesh: ready" in ok(make("status", env=stack.env)).stdout


# ---- a stack without Prometheus ----------------------------------------------------------------------


def test_without_prometheus_the_targets_read_the_proxies(tmp_path: Path) -> None:
    s = Stack(tmp_path / "state", LOCALMESH_PROMETHEUS="off")
    ok(make("up", env=s.env))
    try:
        ok(make("apply", "OPTION=serviceentry", env=s.env))
        assert s.create_recipe().status_code == 201
        report = ok(make("report", env=s.env))
        assert "httpbin.org" in report.stdout and "proxies" in report.stdout
        assert "runs no Prometheus" in report.stderr and "apt-get install prometheus" in report.stderr
        assert "Is the stack up" not in report.stdout + report.stderr
        safe = make("lockdown-check", env=s.env)  # only ServiceEntry traffic so far: safe, exit 0
        assert safe.returncode == 0, safe.stdout + safe.stderr
        suggest = ok(make("suggest", env=s.env))
        assert suggest.stdout.startswith("# egresswatch suggest")
    finally:
        ok(make("down", env=s.env))
    gone = make("report", env=s.env)  # no stack at all: says how to start one
    assert gone.returncode == 2 and "not running" in gone.stderr and "make up" in gone.stderr


# ---- the rest of the README's targets ----------------------------------------------------------------


def test_demo_runs_all_three_options_on_its_own_stack(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "state", free_ports(), NO_COLOR="1")
    done = ok(make("demo", "N=2", env=env, timeout=300))
    assert done.stdout.count("Verdict: OK") == 3
    assert "All options behave as on a real Istio mesh" in done.stdout
    assert "DESIGN" not in done.stdout and "\033[" not in done.stdout
    assert make("status", env=env).returncode != 0  # it stopped the stack it started


@pytest.mark.parametrize(
    ("target", "path"), [("run-httpbin", "/get"), ("run-idgen", "/readyz"), ("run-frontend", "/healthz")]
)
def test_run_one_service(target: str, path: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(PORT=str(port), UPSTREAM_URL=f"http://127.0.0.1:{free_port()}/uuid")
    env["RECIPES_DB"] = str(tmp_path / "recipes.db")
    with running(target, ["make", target], f"http://127.0.0.1:{port}{path}", tmp_path / "log", env):
        assert requests.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200


def test_lint_target() -> None:
    done = ok(make("lint", env=clean_env(), timeout=300))
    assert "All checks passed" in done.stdout


def test_setup_prints_its_steps(tmp_path: Path) -> None:
    """The real setup recipe on fresh virtual environments; only pip's downloads are skipped (PIP runs
    `python -c pass` with pip's arguments), so it finishes in seconds."""
    env = clean_env()
    done = make(
        "setup", f"VENV={tmp_path / 'v'}", f"HTTPBIN_VENV={tmp_path / 'h'}", "PIP=python -c pass", env=env
    )
    ok(done)
    steps = [line for line in done.stderr.splitlines() if line.startswith("setup: ")]
    assert [s.split(":")[1].strip() for s in steps[:4]] == [f"step {i}/4" for i in range(1, 5)], steps
    assert steps[-1].startswith("setup: done") and done.stdout == ""
    assert (tmp_path / "v" / ".ready").exists() and (tmp_path / "h" / ".ready").exists()


# ---- what the bundle prints and cites ----------------------------------------------------------------

SOURCES = [
    p for d in ("localmesh", "egresswatch", "frontend", "loadtest", "idgen") for p in (ROOT / d).rglob("*.py")
]


def printed_strings(path: Path) -> Iterator[str]:
    """The string literals of a module, docstrings left out: what it can print."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.value


def test_printed_hints_do_not_name_commands_that_are_not_on_path() -> None:
    """A command to type is written in backticks or after "run"/"locally:"; localmesh and egresswatch are
    not on PATH (they live in .venv/bin), so a hint names a make target or the .venv/bin path."""
    bare = re.compile(r"(`|\brun |locally: |\buse )(localmesh|egresswatch) ")
    found = [
        f"{path.relative_to(ROOT)}: {text.strip()[:80]}"
        for path in SOURCES
        for text in printed_strings(path)
        if bare.search(text)
    ]
    assert found == []
    if re.search(r"`(localmesh|egresswatch) ", README):
        assert "source .venv/bin/activate" in README


def test_nothing_cites_files_users_do_not_have() -> None:
    pattern = re.compile(r"DESIGN\.md|/work/shared|/tmp/[a-z]+\.md|\bissue [0-9]")
    skip = {
        ".venv",
        ".venv-httpbin",
        "out",
        ".git",
        ".localmesh",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
    }
    found = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if skip & set(rel.parts) or not path.is_file() or path == Path(__file__):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_demo_colours_only_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from localmesh import demo

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", Tty())
    assert demo.paint("OK") == "\033[32mOK\033[0m" and demo.paint("MISMATCH") == "\033[31mMISMATCH\033[0m"
    monkeypatch.setenv("NO_COLOR", "1")
    assert demo.paint("OK") == "OK"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))  # noqa: SIM115 - a pipe or file: no colour
    assert demo.paint("OK") == "OK"


def test_readme_states_measured_setup_cleanup_and_outputs() -> None:
    assert "## Cleanup" in README
    assert re.search(r"make setup.*measured", README, re.S | re.I)
    assert "about 20 s" not in README
    assert README.count("Verdict: OK") >= 3  # the expected output of each walkthrough step

"""The locustfile, run as a real `locust` process (headless, a few seconds, a handful of users) against the
local stack on free 127.0.0.1 ports, once per egress option: expected outcomes from Locust's CSV stats
and its exit code. No timing is asserted, only counts and outcomes.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from localmesh.stack.procs import free_port

if TYPE_CHECKING:
    from tests.conftest import LocalStack  # the `stack` fixture's type

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
CREATE_NAMES = {("POST", "/api/recipes"), ("POST", "/new (form)")}
ID_NAME = ("GET", "/id (gateway)")
BLOCKED = " blocked (expected)"


@dataclass
class Run:
    code: int
    output: str
    rows: dict[tuple[str, str], dict[str, int]]  # (method, name) -> {"requests": n, "failures": n}
    failures: list[dict[str, str]]

    def requests(self, key: tuple[str, str]) -> int:
        return self.rows.get(key, {}).get("requests", 0)

    def total_failures(self) -> int:
        return self.rows[("", "Aggregated")]["failures"]

    def show(self) -> str:
        return f"exit code {self.code}; stats {self.rows}; failures {self.failures}\n{self.output[-3000:]}"


def run_locust(stack: LocalStack, expect: str, out: Path, seconds: int = 4, users: int = 6) -> Run:
    """One bounded headless run; think time is short so a few seconds hold enough creations."""
    env = {
        **os.environ,
        "EXPECT_EGRESS": expect,
        "GATEWAY_URL": stack.gateway,
        "THINK_TIME": "0.02,0.1",
    }
    cmd = [
        str(VENV_BIN / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        stack.site,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "2",
        "--csv",
        str(out / "load"),
        "--only-summary",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out, timeout=seconds + 60)
    rows = {}
    with open(out / "load_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows[(row["Type"], row["Name"])] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
            }
    with open(out / "load_failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    return Run(done.returncode, done.stdout + done.stderr, rows, failures)


@pytest.mark.parametrize("option", ["passthrough", "serviceentry"])
def test_allowed_options_have_no_unexpected_failures(stack: LocalStack, option: str, tmp_path: Path) -> None:
    stack.apply(option)
    run = run_locust(stack, "allowed", tmp_path)
    assert run.code == 0, run.show()
    assert run.total_failures() == 0, run.show()
    created = sum(run.requests(key) for key in CREATE_NAMES)
    assert created >= 1, f"no recipe creation was attempted: {run.show()}"
    assert run.requests(ID_NAME) >= 1, run.show()
    assert run.requests(("GET", "/api/recipes")) + run.requests(("GET", "/ (list page)")) >= 1, run.show()
    assert not [key for key in run.rows if key[1].endswith(BLOCKED)], run.show()


def test_blackhole_blocks_every_creation_and_counts_it_as_expected(stack: LocalStack, tmp_path: Path) -> None:
    stack.apply("blackhole")
    run = run_locust(stack, "blocked", tmp_path)
    assert run.code == 0, run.show()
    assert run.total_failures() == 0, run.show()
    blocked = sum(run.requests((method, name + BLOCKED)) for method, name in CREATE_NAMES)
    assert blocked >= 1, f"no blocked creation was counted: {run.show()}"
    # Not one creation got through: every POST is under its "blocked (expected)" name.
    assert sum(run.requests(key) for key in CREATE_NAMES) == 0, run.show()
    assert run.requests((ID_NAME[0], ID_NAME[1] + BLOCKED)) >= 1, run.show()
    assert run.requests(ID_NAME) == 0, run.show()
    # Reading the site never needs idgen, so it works as usual.
    assert run.requests(("GET", "/api/recipes")) + run.requests(("GET", "/ (list page)")) >= 1, run.show()


def test_blocked_calls_fail_the_run_when_egress_should_be_allowed(stack: LocalStack, tmp_path: Path) -> None:
    stack.apply("blackhole")
    run = run_locust(stack, "allowed", tmp_path, seconds=3)
    assert run.code == 1, run.show()
    assert run.total_failures() >= 1, run.show()
    assert all("egress_blocked" in f["Error"] for f in run.failures), run.show()
    assert not [key for key in run.rows if key[1].endswith(BLOCKED)], run.show()


def test_unreachable_target_stops_before_any_load(tmp_path: Path) -> None:
    """Nothing listens on the ports: exit code 2 with the way out, before a single request."""
    env = {**os.environ, "GATEWAY_URL": f"http://127.0.0.1:{free_port()}"}
    cmd = [str(VENV_BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "2s"]
    cmd += ["--host", f"http://127.0.0.1:{free_port()}", "--csv", str(tmp_path / "load")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "make up" in done.stderr
    stats = tmp_path / "load_stats.csv"
    assert not stats.exists() or stats.read_text() == "", "Locust recorded requests after a failed check"

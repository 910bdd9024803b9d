"""The test tiers of tests/conftest.py: the unit tier's guard really refuses a process, and
`make test-unit` runs the unit tier only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_a_unit_test_cannot_start_a_process() -> None:
    # tests/conftest.py's ProcessStartedInUnitTest (a BaseException); "conftest" names several
    # modules here, so the class is matched by its message instead of imported. (os.fork is refused
    # too, but not tried here: were the guard broken, it would fork the test run itself.)
    refused = "is in the unit tier but called .*: unit tests start no process"
    with pytest.raises(BaseException, match=refused):
        subprocess.run(["true"], check=False)
    with pytest.raises(BaseException, match=refused):
        os.system("true")


def test_make_test_unit_runs_the_unit_tier_only() -> None:
    """`make test-unit` as a user types it, narrowed to this file with pytest's own PYTEST_ADDOPTS: the
    unit test above runs, this (integration) test is deselected."""
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    env["PYTEST_ADDOPTS"] = f"{Path(__file__).relative_to(ROOT)} -p no:cacheprovider"
    done = subprocess.run(
        ["make", "test-unit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 deselected" in done.stdout, done.stdout

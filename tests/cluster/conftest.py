"""Fixtures for the cluster path's offline checks: stand-in tools and the real tools beside them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cluster_paths import TOOLS
from cluster_standins import StandIns, make_standins


@pytest.fixture
def standins(tmp_path: Path) -> StandIns:
    return make_standins(tmp_path / "standins", TOOLS)


@pytest.fixture
def system_path() -> str:
    """The directories of the real tools the scripts need besides the stand-ins (bash, coreutils, awk, jq)."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (apt-get install jq); the scripts parse JSON with it")
    return "/usr/local/bin:/usr/bin:/bin"

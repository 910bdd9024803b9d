"""Fixtures for the recipe site: a fake idgen, and the function loaded through functions-framework.

Each test gets its own database and secret under tmp_path, and its own idgen stand-in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import flask
import functions_framework
import pytest
from recipes_testlib import FRONTEND, MAIN, FakeIdgen

# As functions-framework does when it loads frontend/main.py: the unit tier imports recipesite directly.
if str(FRONTEND) not in sys.path:
    sys.path.append(str(FRONTEND))


@pytest.fixture
def fake_idgen() -> Iterator[FakeIdgen]:
    fake = FakeIdgen().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "recipes.db"


@pytest.fixture
def site_env(monkeypatch: pytest.MonkeyPatch, db_path: Path, fake_idgen: FakeIdgen) -> dict[str, str]:
    """The environment the function reads at load time; monkeypatch restores everything afterwards."""
    env = {"RECIPES_DB": str(db_path), "IDGEN_URL": fake_idgen.url, "IDGEN_TIMEOUT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RECIPES_SECRET", raising=False)
    monkeypatch.delenv("RECIPES_BASE_PATH", raising=False)
    # functions-framework writes these into os.environ while creating an app; keep them test-local.
    monkeypatch.setenv("FUNCTION_TARGET", "recipes")
    monkeypatch.setenv("FUNCTION_SIGNATURE_TYPE", "http")
    return env


@pytest.fixture
def app(site_env: dict[str, str]) -> flask.Flask:
    """The function as functions-framework serves it (integration tier)."""
    return functions_framework.create_app(target="recipes", source=str(MAIN))


@pytest.fixture
def client(app: flask.Flask) -> flask.testing.FlaskClient:
    return app.test_client()

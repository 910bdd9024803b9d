"""Fixtures for the recipe site: a fake idgen, and the function loaded through functions-framework.

Each test gets its own database and secret under tmp_path, and its own idgen stand-in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import flask
import functions_framework
import pytest
from pgserver import PostgresServer, missing_reason
from recipes_testlib import FRONTEND, MAIN, SITE_IDGEN_TIMEOUT, FakeIdgen

# As functions-framework does when it loads frontend/main.py: the unit tier imports recipesite directly.
if str(FRONTEND) not in sys.path:
    sys.path.append(str(FRONTEND))

from recipesite.store import RecipeStore, open_store


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
def idgen_timeout() -> str:
    """The site's IDGEN_TIMEOUT; a test parametrizes `idgen_timeout` to give another."""
    return SITE_IDGEN_TIMEOUT


@pytest.fixture
def site_env(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, fake_idgen: FakeIdgen, idgen_timeout: str
) -> dict[str, str]:
    """The environment the function reads at load time; monkeypatch restores everything afterwards."""
    env = {"RECIPES_DB": str(db_path), "IDGEN_URL": fake_idgen.url, "IDGEN_TIMEOUT": idgen_timeout}
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package) on a free port, shared by the session's tests."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the shared server."""
    return postgres_server.create_database()


# The PostgreSQL run starts a server (postgres_server), so it is an integration test (tests/conftest.py).
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """RECIPES_DB for each store: the same store tests run on both."""
    if request.param == "sqlite":
        return str(tmp_path / "store" / "recipes.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def make_store(store_location: str) -> Iterator[Callable[[], RecipeStore]]:
    """Opens stores on this test's database (several: like several worker processes); closes them."""
    opened: list[RecipeStore] = []

    def make() -> RecipeStore:
        opened.append(open_store(store_location))
        return opened[-1]

    yield make
    for store in opened:
        store.close()

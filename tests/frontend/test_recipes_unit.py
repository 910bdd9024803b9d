"""Unit tier: the site's parts on their own (rules, storage, CSRF, settings, idgen client), and the
function called directly with a request object, as in the functions-framework samples."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import sqlite3
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import psycopg
import pytest
from recipes_testlib import FRONTEND
from recipesite import csrf, validation
from recipesite.body import BodyTooLarge, body_left_unread, read_limited
from recipesite.config import ConfigError, Settings
from recipesite.idgen_client import IdgenClient, IdgenError
from recipesite.store import DuplicateIdError, RecipeStore, StorageUnavailable
from recipesite.store_postgres import PostgresStore
from recipesite.store_sqlite import SqliteStore
from werkzeug.test import EnvironBuilder

from localmesh.stack.procs import free_port

# --- input rules ---------------------------------------------------------------------------------


def rules(recipe: validation.RecipeInput) -> set[tuple[str, str]]:
    return {(e.field, e.rule) for e in recipe.errors}


def test_form_input_is_normalised_one_ingredient_per_line():
    recipe = validation.from_form(
        {
            "title": "  Soup \r\n",
            "author": " Ada ",
            "ingredients": "salt\r\n\r\n  water \r\n",
            "steps": "a\r\nb",
        }
    )
    assert recipe.ok
    assert (recipe.title, recipe.author, recipe.ingredients, recipe.steps) == (
        "Soup",
        "Ada",
        ["salt", "water"],
        "a\nb",
    )


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"title": "", "ingredients": "x"}, ("title", "required")),
        ({"title": "   ", "ingredients": "x"}, ("title", "required")),
        ({"title": "t" * 201, "ingredients": "x"}, ("title", "max_length")),
        ({"title": "t", "author": "a" * 101, "ingredients": "x"}, ("author", "max_length")),
        ({"title": "t", "ingredients": "\r\n \r\n"}, ("ingredients", "min_items")),
        ({"title": "t", "ingredients": "\n".join(["x"] * 101)}, ("ingredients", "max_items")),
        ({"title": "t", "ingredients": "ok\n" + "i" * 201}, ("ingredients", "max_length")),
        ({"title": "t", "ingredients": "x", "steps": "s" * 10_001}, ("steps", "max_length")),
    ],
)
def test_form_rules_name_field_and_rule(form, expected):
    recipe = validation.from_form(form)
    assert rules(recipe) == {expected}
    assert recipe.errors[0].message.startswith(expected[0])


def test_limits_are_inclusive():
    form = {
        "title": "t" * 200,
        "author": "a" * 100,
        "ingredients": "\n".join(["i" * 200] * 100),
        "steps": "s" * 10_000,
    }
    assert validation.from_form(form).ok
    as_json = {
        "title": "t" * 200,
        "author": "a" * 100,
        "ingredients": ["i" * 200] * 100,
        "steps": "s" * 10_000,
    }
    assert validation.from_json(as_json).ok


def test_crlf_counts_as_one_character_like_the_browser_shows_it():
    # 5,000 lines of "x" typed in a textarea arrive as 5,000 "x" + 4,999 CRLF = 14,998 bytes, but 9,999
    # characters as the user sees them: within the 10,000 limit.
    assert validation.from_form({"title": "t", "ingredients": "x", "steps": "\r\n".join(["x"] * 5000)}).ok


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], {("body", "type")}),
        (None, {("body", "type")}),
        ({"title": 5, "ingredients": ["x"]}, {("title", "type")}),
        ({"title": "t", "ingredients": "salt, water"}, {("ingredients", "type")}),
        ({"title": "t", "ingredients": ["salt", 3]}, {("ingredients[1]", "type")}),
        ({"title": "t", "ingredients": ["salt", "  "]}, {("ingredients[1]", "required")}),
        ({"title": "t", "ingredients": ["x"], "author": ["me"]}, {("author", "type")}),
        ({"title": "t", "ingredients": ["x"], "steps": {"1": "boil"}}, {("steps", "type")}),
        ({"title": "t", "ingredients": ["x"], "id": "mine"}, {("id", "unknown_field")}),
        ({"ingredients": ["x"]}, {("title", "required")}),
        ({"title": "t"}, {("ingredients", "min_items")}),
        ({"title": "t", "ingredients": ["x"] * 101}, {("ingredients", "max_items")}),
        ({"title": "t", "ingredients": ["x", "i" * 201]}, {("ingredients[1]", "max_length")}),
    ],
)
def test_json_rules_name_field_and_rule(data, expected):
    assert rules(validation.from_json(data)) == expected


def test_json_null_optional_fields_mean_empty():
    recipe = validation.from_json({"title": "t", "ingredients": ["x"], "author": None, "steps": None})
    assert recipe.ok and recipe.author == "" and recipe.steps == ""


def test_every_violation_is_reported_at_once():
    recipe = validation.from_json(
        {"title": "", "author": "a" * 101, "ingredients": [], "steps": "s" * 10_001}
    )
    assert rules(recipe) == {
        ("title", "required"),
        ("author", "max_length"),
        ("ingredients", "min_items"),
        ("steps", "max_length"),
    }


# --- storage: the same tests on SQLite and on a real PostgreSQL server --------------------------


def add(store: RecipeStore, rid: str, when: datetime | None = None):
    return store.add(rid, f"title {rid}", "", ["x"], "", created_at=when)


def test_sqlite_store_creates_schema_in_wal_mode_with_parent_dirs(tmp_path):
    db = tmp_path / "a" / "b" / "recipes.db"
    SqliteStore(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = {row[1]: row for row in conn.execute("PRAGMA table_info(recipes)")}
    assert cols["id"][5] == 1, "id is the primary key"
    assert set(cols) == {"id", "title", "author", "ingredients", "steps", "created_at"}


def test_sqlite_store_keeps_ingredients_as_json_text(tmp_path):
    SqliteStore(tmp_path / "r.db").add("abc-1", "Crème brûlée", "Zoë", ["œufs", "sucre"], "")
    with sqlite3.connect(tmp_path / "r.db") as conn:
        raw = conn.execute("SELECT ingredients FROM recipes").fetchone()[0]
    assert json.loads(raw) == ["œufs", "sucre"]


def test_store_round_trip_keeps_unicode_and_ingredients(make_store):
    store = make_store()
    stored = store.add("abc-1", "Crème brûlée", "Zoë", ["œufs", "sucre"], "Line 1\nLine 2")
    assert store.get("abc-1") == stored
    assert stored.created_at.endswith("Z") and len(stored.created_at) == len("2026-01-01T00:00:00.000000Z")
    assert store.get("nope") is None


def test_store_keeps_the_timestamp_to_the_microsecond(make_store):
    store = make_store()
    moment = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    add(store, "t", moment)
    assert store.get("t").created_at == "2026-03-04T05:06:07.891011Z"


def test_duplicate_id_is_refused_and_nothing_changes(make_store):
    store = make_store()
    first = store.add("same", "First", "", ["x"], "")
    with pytest.raises(DuplicateIdError, match="same"):
        store.add("same", "Second", "", ["y"], "")
    assert store.count() == 1
    assert store.get("same") == first


def test_pages_are_newest_first_with_total(make_store):
    store = make_store()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(25):
        add(store, f"r{i:02d}", start + timedelta(minutes=i))
    first, last = store.page(1, 10), store.page(3, 10)
    assert first.total == last.total == 25 and first.pages == 3
    assert [r.id for r in first.recipes] == [f"r{i:02d}" for i in range(24, 14, -1)]
    assert [r.id for r in last.recipes] == [f"r{i:02d}" for i in range(4, -1, -1)]
    assert store.page(4, 10).recipes == []


def test_same_timestamp_falls_back_to_insertion_order(make_store):
    store = make_store()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for rid in ("a", "b", "c"):
        add(store, rid, moment)
    assert [r.id for r in store.page(1, 10).recipes] == ["c", "b", "a"]


def test_concurrent_writers_and_readers_on_one_store(make_store):
    store = make_store()

    def work(worker: int) -> int:
        for i in range(25):
            add(store, f"w{worker}-{i}")
            store.page(1, 20)
        return worker

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(work, range(8))) == list(range(8))
    assert store.count() == 200


def test_fifty_concurrent_creates_race_for_ids_and_none_is_lost(make_store):
    """50 creates at once from two stores (two worker processes), 10 of them reusing an ID already
    taken: every distinct ID lands exactly once, each clash is a DuplicateIdError, nothing is lost."""
    stores = [make_store(), make_store()]
    ids = [f"id-{i}" for i in range(40)] + [f"id-{i}" for i in range(10)]
    barrier = threading.Barrier(len(ids))

    def create(i: int) -> str:
        barrier.wait(30)
        try:
            stores[i % 2].add(ids[i], f"title {i}", "", ["x"], "")
        except DuplicateIdError:
            return "duplicate"
        return "created"

    with ThreadPoolExecutor(len(ids)) as pool:
        outcomes = list(pool.map(create, range(len(ids))))
    assert outcomes.count("created") == 40 and outcomes.count("duplicate") == 10
    listed = stores[1].page(1, 100)
    assert listed.total == 40 and sorted(r.id for r in listed.recipes) == sorted(set(ids))


def test_two_stores_on_one_database_see_each_other(make_store):
    # Two functions-framework workers (WORKERS=2), or two instances, each with its own store.
    one, two = make_store(), make_store()
    add(one, "from-one")
    assert two.get("from-one") is not None


def test_healthy_store_pings(make_store):
    make_store().ping()


def test_postgres_store_refuses_to_write_on_a_read_only_database(postgres_url):
    """A replica, or a database set read-only: readiness says so and a write is StorageUnavailable."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        name = conn.info.dbname
        PostgresStore(postgres_url).close()  # creates the schema while it still can
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    store = PostgresStore(postgres_url)
    try:
        with pytest.raises(StorageUnavailable, match="read-only"):
            store.ping()
        with pytest.raises(StorageUnavailable, match="read-only"):
            add(store, "nope")
        assert store.count() == 0, "reads still work"
    finally:
        store.close()


def test_postgres_server_down_is_storage_unavailable_not_a_crash():
    url = f"postgresql://recipes:pw@127.0.0.1:{free_port()}/recipes"
    # It starts (pages and /healthz then say what is wrong); a call fails once the pool gives up
    # waiting for a connection, after pool_timeout (5 s by default, shortened here).
    store = PostgresStore(url, pool_timeout=0.5)
    try:
        with pytest.raises(StorageUnavailable, match=r"PostgreSQL at postgresql://recipes@127\.0\.0\.1"):
            store.ping()
    finally:
        store.close()


# --- CSRF ----------------------------------------------------------------------------------------


def test_csrf_token_is_bound_to_the_cookie_and_the_secret():
    signer = csrf.CsrfSigner(b"s" * 32)
    cookie = csrf.new_cookie_value()
    token = signer.token(cookie)
    assert signer.check(cookie, token) is None
    assert signer.check(csrf.new_cookie_value(), token) == "bad_signature"
    assert csrf.CsrfSigner(b"t" * 32).check(cookie, token) == "bad_signature"
    # One character changed (a fixed replacement would equal the original one time in 1024).
    tampered = token[:-1] + ("B" if token[-1] == "A" else "A")
    assert signer.check(cookie, tampered) == "bad_signature"
    assert signer.check(cookie, None) == "missing_token"
    assert signer.check(None, token) == "missing_cookie"
    assert signer.check(cookie, "garbage") == "malformed_token"


def test_csrf_token_expires():
    signer = csrf.CsrfSigner(b"s" * 32)
    cookie = csrf.new_cookie_value()
    issued = 1_800_000_000
    token = signer.token(cookie, now=issued)
    assert signer.check(cookie, token, now=issued + csrf.MAX_AGE_S - 1) is None
    assert signer.check(cookie, token, now=issued + csrf.MAX_AGE_S + 1) == "expired"
    assert signer.check(cookie, token, now=issued - csrf.CLOCK_SKEW_S - 1) == "expired"


def test_cookie_value_shape():
    assert csrf.looks_like_cookie_value(csrf.new_cookie_value())
    for bad in (None, "", "short", "x" * 43 + "!", "<script>" * 6):
        assert not csrf.looks_like_cookie_value(bad)


def test_secret_is_created_once_private_and_agreed_under_a_race(tmp_path):
    path = tmp_path / "d" / "recipes.db.secret"
    barrier = threading.Barrier(16)

    def load(_: int) -> bytes:
        barrier.wait()
        return csrf.load_or_create_secret(path)

    with ThreadPoolExecutor(16) as pool:
        secrets = set(pool.map(load, range(16)))
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary files left behind"


def test_empty_secret_file_is_an_error_that_says_what_to_do(tmp_path):
    path = tmp_path / "recipes.db.secret"
    path.write_text("")
    with pytest.raises(RuntimeError, match=r"delete it .* or set RECIPES_SECRET"):
        csrf.load_or_create_secret(path)


# --- settings ------------------------------------------------------------------------------------


def test_settings_defaults():
    settings = Settings.from_env({})
    assert settings.idgen_url == "http://127.0.0.1:8000/id"
    assert settings.idgen_timeout == 5.0
    assert settings.db_path == Path("data/recipes.db")
    assert settings.secret is None and settings.base_path == "" and settings.max_body == 65536


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IDGEN_TIMEOUT": "soon"}, "IDGEN_TIMEOUT must be a number"),
        ({"IDGEN_TIMEOUT": "0"}, "IDGEN_TIMEOUT must be between"),
        ({"IDGEN_URL": "idgen:8080/id"}, "IDGEN_URL must be an http"),
        ({"RECIPES_BASE_PATH": "recipes"}, "RECIPES_BASE_PATH must start with"),
        ({"RECIPES_DB": "mysql://u:hunter2@db/recipes"}, "RECIPES_DB: unknown scheme 'mysql:'"),
        ({"RECIPES_DB": "sqlite:///data/r.db"}, "RECIPES_DB: unknown scheme 'sqlite:'.*file path for SQLite"),
        ({"RECIPES_DB": "postgresql://u:hunter2@db/r?sslmod=require"}, "not a valid PostgreSQL URL"),
        ({"RECIPES_DB": "postgresql://u:hunter2@db:54x2/r"}, "the port must be a number"),
        ({"RECIPES_DB": "postgresql://u:hunter2%zz@db/r"}, "invalid percent-encoded token"),
        ({"RECIPES_DB": "postgresql://u:hunter2@[::1/r"}, "not a valid PostgreSQL URL"),
        ({"RECIPES_DB": "postgresql://u@/r?host=/cloudsql/p:r:i"}, "RECIPES_SECRET must be set"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    env = {"RECIPES_SECRET": "s" * 16, **env} if "RECIPES_SECRET" not in message else env
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env(env)
    assert "hunter2" not in str(caught.value), "a password is never shown"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://recipes:pw@db.internal:5432/recipes",
        "postgres://recipes@/recipes?host=/cloudsql/my-project:europe-west1:recipes-db",
        "postgresql://recipes@db1:5432,db2:5432/recipes?target_session_attrs=read-write",
    ],
)
def test_postgresql_urls_are_accepted_without_connecting(url):
    settings = Settings.from_env({"RECIPES_DB": url, "RECIPES_SECRET": "s" * 16})
    assert settings.db == url and settings.db_path is None


# --- idgen client (against the idgen stand-in on a real port) ------------------------------------


@pytest.mark.parametrize(
    ("mode", "code", "status", "says"),
    [
        ("egress_blocked", "egress_blocked", 502, "REGISTRY_ONLY"),
        ("upstream_error", "upstream_error", 502, "httpbin.org answered idgen with an error"),
        ("bad_upstream_response", "bad_upstream_response", 502, "not a UUID"),
        ("upstream_unreachable", "upstream_unreachable", 503, "could not connect to httpbin.org"),
        ("upstream_timeout", "upstream_timeout", 504, "timed out"),
        ("garbage", "bad_idgen_response", 502, "HTTP 200 without an ID"),
        ("no_code_503", "idgen_unreachable", 503, "answered HTTP 503 without an ID"),
        ("gateway_503", "idgen_unreachable", 503, "answered HTTP 503 itself, without reaching idgen"),
        ("bad_id", "bad_idgen_response", 502, "cannot use"),
        ("hang", "idgen_timeout", 504, "did not answer within 0.3 s"),
    ],
)
def test_idgen_failures_become_codes_statuses_and_sentences(fake_idgen, mode, code, status, says):
    fake_idgen.mode = mode
    with pytest.raises(IdgenError) as caught:
        IdgenClient(fake_idgen.url, 0.3).new_id()
    assert (caught.value.code, caught.value.status) == (code, status)
    assert says in caught.value.message


def test_egress_blocked_message_says_how_to_allow_it(fake_idgen):
    fake_idgen.mode = "egress_blocked"
    with pytest.raises(IdgenError) as caught:
        IdgenClient(fake_idgen.url, 1).new_id()
    assert "blocked idgen's call to httpbin.org" in caught.value.message
    assert "ServiceEntry" in caught.value.message
    assert caught.value.detail["upstream"] == "httpbin.org"


def test_idgen_not_listening_is_unreachable():
    with pytest.raises(IdgenError) as caught:
        IdgenClient(f"http://127.0.0.1:{free_port()}/id", 1).new_id()
    assert (caught.value.code, caught.value.status) == ("idgen_unreachable", 503)


def test_idgen_ok_returns_its_id(fake_idgen):
    client = IdgenClient(fake_idgen.url, 1)
    ids = {client.new_id() for _ in range(3)}
    assert ids == set(fake_idgen.issued)


# --- request bodies ------------------------------------------------------------------------------


def request_with(body: bytes, declare_length: bool = True) -> flask.Request:
    headers = {} if declare_length else {"Transfer-Encoding": "chunked"}
    builder = EnvironBuilder(
        method="POST",
        path="/api/recipes",
        input_stream=io.BytesIO(body),
        content_length=len(body) if declare_length else None,
        headers=headers,
    )
    environ = builder.get_environ()
    if not declare_length:
        environ["wsgi.input_terminated"] = True  # as gunicorn sets it: it ends chunked bodies itself
    return flask.Request(environ)


def test_body_at_the_limit_is_read_whole():
    assert read_limited(request_with(b"a" * 1024), 1024) == b"a" * 1024


def test_body_over_the_declared_limit_is_refused_unread():
    req = request_with(b"a" * 2000)
    with pytest.raises(BodyTooLarge):
        read_limited(req, 1024)
    assert req.environ["wsgi.input"].tell() == 0, "not a byte read"
    assert body_left_unread(req)


def test_chunked_body_over_the_limit_stops_after_limit_plus_one():
    req = request_with(b"a" * 5000, declare_length=False)
    with pytest.raises(BodyTooLarge):
        read_limited(req, 1024)
    assert req.environ["wsgi.input"].tell() == 1025
    assert body_left_unread(req)


def test_fully_read_body_is_not_left_unread():
    req = request_with(b"{}")
    read_limited(req, 1024)
    assert not body_left_unread(req)


# --- the function with a request object ----------------------------------------------------------


def load_main(monkeypatch, tmp_path, idgen_url: str):
    monkeypatch.setenv("RECIPES_DB", str(tmp_path / "recipes.db"))
    monkeypatch.setenv("IDGEN_URL", idgen_url)
    spec = importlib.util.spec_from_file_location("recipes_main_under_test", FRONTEND / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_function_called_with_a_request_object(monkeypatch, tmp_path, fake_idgen):
    main = load_main(monkeypatch, tmp_path, fake_idgen.url)
    body = json.dumps({"title": "Toast", "ingredients": ["bread"]}).encode()
    request = flask.Request(
        EnvironBuilder(
            method="POST", path="/api/recipes", data=body, content_type="application/json"
        ).get_environ()
    )
    response = main.recipes(request)
    assert response.status_code == 201
    assert response.get_json()["id"] == fake_idgen.issued[0]
    health = main.recipes(flask.Request(EnvironBuilder(path="/healthz").get_environ()))
    assert (health.status_code, health.get_json()) == (200, {"status": "ok"})


def test_secret_file_sits_next_to_the_database_unless_recipes_secret_is_set(
    monkeypatch, tmp_path, fake_idgen
):
    load_main(monkeypatch, tmp_path / "a", fake_idgen.url)
    assert (tmp_path / "a" / "recipes.db.secret").exists()
    monkeypatch.setenv("RECIPES_SECRET", "an operator-provided secret")
    load_main(monkeypatch, tmp_path / "b", fake_idgen.url)
    assert not (tmp_path / "b" / "recipes.db.secret").exists()


def test_short_recipes_secret_is_refused(monkeypatch, tmp_path, fake_idgen):
    monkeypatch.setenv("RECIPES_SECRET", "short")
    with pytest.raises(ValueError, match="RECIPES_SECRET must be at least 16"):
        load_main(monkeypatch, tmp_path, fake_idgen.url)


# --- what a Cloud Function deploy of frontend/ would install -------------------------------------


def test_frontend_imports_only_stdlib_its_requirements_and_itself():
    """frontend/ is deployed alone: it must not import idgen, localmesh or anything that its
    requirements.txt does not pin."""
    dists = {
        "flask": "flask",
        "jinja2": "jinja2",
        "markupsafe": "markupsafe",
        "werkzeug": "werkzeug",
        "requests": "requests",
        "urllib3": "urllib3",
        "functions_framework": "functions-framework",
        "psycopg": "psycopg[binary]",
        "psycopg_pool": "psycopg-pool",
        "gunicorn": "gunicorn",  # the local server's worker class (recipesite/server.py)
    }
    found: set[str] = set()
    for path in FRONTEND.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = found - set(sys.stdlib_module_names) - {"recipesite"}
    assert third_party <= set(dists), f"not in frontend/requirements.txt: {third_party - set(dists)}"
    declared = (FRONTEND / "requirements.in").read_text().lower()
    pins = (FRONTEND / "requirements.txt").read_text().lower()
    for module in third_party:
        assert f"\n{dists[module]}==" in declared, f"{dists[module]} is imported but not declared"
        assert f"\n{dists[module].split('[')[0]}==" in pins, f"{dists[module]} is imported but not pinned"

"""System tier: a real functions-framework server (gunicorn inside) running the function, talking to
a real idgen under gunicorn, which talks to the real httpbin package. Every process listens on a free
127.0.0.1 port and is stopped by its PID (localmesh.stack.procs)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests
from recipes_testlib import (
    FRONTEND,
    RECIPE,
    ROOT,
    BlockingSidecar,
    count_rows,
    csrf_token,
    field_value,
    form_fields,
    problem,
)

from localmesh.mesh.load import load_kustomization
from localmesh.mesh.model import parse
from localmesh.pilot.routes import build_tables
from localmesh.stack.procs import free_port, running, spawn, wait_http

BIN = ROOT / ".venv" / "bin"
FUNCTIONS_FRAMEWORK = BIN / "functions-framework"
GUNICORN = BIN / "gunicorn"
# A proxy configured on the machine must never carry test traffic off 127.0.0.1: blank them all
# (requests ignores empty proxy variables).
NO_PROXY_ENV = {
    f(n): "" for n in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for f in (str.lower, str.upper)
}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment, see NO_PROXY_ENV
    return session


@contextlib.contextmanager
def idgen(upstream_url: str, logs: Path) -> Iterator[str]:
    """The real idgen under gunicorn with its checked-in config; yields the URL of its /id."""
    if not (ROOT / "idgen" / "app.py").exists():
        pytest.fail("idgen/app.py is missing: the system tier needs the real idgen")
    port = free_port()
    env = {**NO_PROXY_ENV, "HOST": "127.0.0.1", "PORT": str(port), "UPSTREAM_URL": upstream_url}
    cmd = [str(GUNICORN), "-c", str(ROOT / "idgen" / "gunicorn.conf.py"), "idgen.app:create_app()"]
    with running("idgen", cmd, f"http://127.0.0.1:{port}/healthz", logs / f"idgen-{port}.log", env):
        yield f"http://127.0.0.1:{port}/id"


def private_runtime_dir(logs: Path) -> str:
    """gunicorn 27 (under functions-framework, which offers no switch for it) opens a control socket
    at $XDG_RUNTIME_DIR/gunicorn.ctl, else $HOME/.gunicorn/gunicorn.ctl: one path for every server on
    the machine. Each test server gets a directory of its own instead."""
    return tempfile.mkdtemp(prefix="gunicorn-", dir=logs)


def site_env(idgen_url: str, db: Path | str | None, logs: Path, **extra: str) -> dict[str, str]:
    # Every setting explicit ("" = the default), whatever the environment running the tests holds.
    return {
        **NO_PROXY_ENV,
        "XDG_RUNTIME_DIR": private_runtime_dir(logs),
        "IDGEN_URL": idgen_url,
        "IDGEN_TIMEOUT": "5",
        "RECIPES_DB": str(db or ""),
        "RECIPES_SECRET": "",
        "RECIPES_BASE_PATH": "",
        **extra,
    }


@contextlib.contextmanager
def site(
    idgen_url: str, db: Path | str, logs: Path, ready_path: str = "/healthz", **env: str
) -> Iterator[str]:
    """What `make run-frontend` runs: gunicorn -c frontend/gunicorn.conf.py, on HOST and PORT.
    ready_path: what must answer below 500 first (/new needs no storage, for a site whose storage fails)."""
    port = free_port()
    cmd = [str(GUNICORN), "-c", str(FRONTEND / "gunicorn.conf.py")]
    env = {"HOST": "127.0.0.1", "PORT": str(port), **env}
    with running(
        "recipes site",
        cmd,
        f"http://127.0.0.1:{port}{ready_path}",
        logs / f"site-{port}.log",
        site_env(idgen_url, db, logs, **env),
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipes-system-logs")


@pytest.fixture(scope="module")
def idgen_url(httpbin_url: str, logs: Path) -> Iterator[str]:
    with idgen(f"{httpbin_url}/uuid", logs) as url:
        yield url


@pytest.fixture
def start_site(idgen_url: str, logs: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Start a site on its own fresh database; returns (base URL, database path)."""
    with contextlib.ExitStack() as stack:

        def start(idgen: str = idgen_url, db: Path | str | None = None, **env: str) -> tuple[str, Path]:
            db = db or Path(tempfile.mkdtemp(prefix="site-", dir=tmp_path)) / "recipes.db"
            return stack.enter_context(site(idgen, db, logs, **env)), db

        yield start


def post_form(session: requests.Session, base: str, fields: dict[str, str]) -> requests.Response:
    """Load the form, then submit it as the browser does: multipart/form-data, cookie and token."""
    token = csrf_token(session.get(f"{base}/new").text)
    parts = {name: (None, value) for name, value in {**fields, "csrf_token": token}.items()}
    return session.post(f"{base}/new", files=parts, allow_redirects=False)


def raw_exchange(base: str, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes and return the response head. Used where requests would not send what we need:
    a body announced but never sent, or a chunked body that never ends."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


# --- the happy path ------------------------------------------------------------------------------


def test_form_create_then_view_and_list(start_site):
    base, db = start_site()
    browser = http()
    response = post_form(browser, base, form_fields())
    assert response.status_code == 303, response.text
    new_id = re.fullmatch(r"/recipes/([^?]+)\?created=1", response.headers["Location"]).group(1)
    assert UUID_RE.match(new_id), "the ID is httpbin's UUID, through idgen"
    page = browser.get(base + response.headers["Location"])
    assert page.status_code == 200 and "<h1>Lentil soup</h1>" in page.text and new_id in page.text
    listing = browser.get(f"{base}/")
    assert new_id in listing.text and "1 recipe, newest first." in listing.text
    assert count_rows(db) == 1


def test_api_create_get_and_paginate(start_site):
    base, _ = start_site()
    client = http()
    ids = []
    for i in range(3):
        response = client.post(f"{base}/api/recipes", json={**RECIPE, "title": f"Dish {i}"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    assert len(set(ids)) == 3 and all(UUID_RE.match(i) for i in ids)
    assert client.get(f"{base}/api/recipes/{ids[0]}").json()["title"] == "Dish 0"
    first = client.get(f"{base}/api/recipes", params={"per_page": 2}).json()
    second = client.get(f"{base}/api/recipes", params={"per_page": 2, "page": 2}).json()
    assert first["total"] == second["total"] == 3
    assert [r["id"] for r in first["recipes"] + second["recipes"]] == ids[::-1]


def test_xss_comes_back_escaped_from_the_real_server(start_site):
    base, _ = start_site()
    client = http()
    payload = "<script>alert(1)</script>"
    new_id = client.post(
        f"{base}/api/recipes",
        json={"title": payload, "author": payload, "ingredients": [payload], "steps": payload},
    ).json()["id"]
    for url in (f"{base}/", f"{base}/recipes/{new_id}"):
        page = client.get(url).text
        assert payload not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- bad input at the real server -----------------------------------------------------------------


def test_413_for_a_declared_length_over_64_kb_without_waiting_for_the_body(start_site):
    """Content-Length says 1 GB and no byte of it is sent: the answer must still come back. (Had the
    site, or functions-framework's after-request hook, tried to read the body, this would hang.)"""
    base, db = start_site()
    head = (
        b"POST /api/recipes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    answer = raw_exchange(base, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert count_rows(db) == 0


def test_413_for_a_chunked_body_that_grows_past_64_kb(start_site):
    base, db = start_site()
    chunk = b"x" * 70_000
    request = (
        b"POST /api/recipes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    )
    answer = raw_exchange(base, request)  # the final 0-length chunk is never sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert count_rows(db) == 0


def test_413_for_a_large_form_and_400_for_malformed_json(start_site):
    base, db = start_site()
    browser = http()
    big = post_form(browser, base, form_fields(steps="s" * 70_000))
    assert big.status_code == 413 and "more than 64 KB" in big.text
    bad = browser.post(
        f"{base}/api/recipes", data=b'{"title": ', headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json"
    rules = browser.post(f"{base}/api/recipes", json={"title": "", "ingredients": ["x"] * 101})
    assert rules.status_code == 400
    assert {f["field"] for f in rules.json()["fields"]} == {"title", "ingredients"}
    assert count_rows(db) == 0


def test_csrf_rejection_at_the_real_server(start_site):
    base, db = start_site()
    browser = http()
    browser.get(f"{base}/new")
    fields = {name: (None, value) for name, value in form_fields(title="No token").items()}
    response = browser.post(f"{base}/new", files=fields, allow_redirects=False)
    assert response.status_code == 403 and field_value(response.text, "title") == "No token"
    assert count_rows(db) == 0


# --- concurrency ---------------------------------------------------------------------------------


def stored(db: Path | str) -> list[tuple[str, str]]:
    """(id, title) of every stored recipe, read straight from the database, not through the site."""
    if isinstance(db, Path):
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return conn.execute("SELECT id, title FROM recipes").fetchall()
    with psycopg.connect(db) as conn:
        return conn.execute("SELECT id, title FROM recipes").fetchall()


@pytest.mark.parametrize(
    ("store", "workers"), [("sqlite", "1"), ("sqlite", "2"), ("postgresql", "1"), ("postgresql", "2")]
)
def test_fifty_concurrent_creates_all_land_with_distinct_ids(start_site, request, store, workers):
    """50 at once against gunicorn's threads (THREADS=8), in one worker process or two sharing the
    database: a SQLite file, or a real PostgreSQL server."""
    if store == "sqlite":
        base, db = start_site(WORKERS=workers, THREADS="8")
    else:
        url = request.getfixturevalue("postgres_url")
        base, db = start_site(db=url, WORKERS=workers, THREADS="8", RECIPES_SECRET="s" * 32)

    def create(i: int) -> requests.Response:
        with http() as client:
            return client.post(f"{base}/api/recipes", json={**RECIPE, "title": f"Concurrent {i}"}, timeout=60)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(create, range(50)))
    assert [r.status_code for r in responses] == [201] * 50, [
        r.text for r in responses if r.status_code != 201
    ]
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 50
    listing = http().get(f"{base}/api/recipes", params={"per_page": 100}).json()
    assert listing["total"] == 50
    assert {r["id"] for r in listing["recipes"]} == set(ids)
    assert {r["title"] for r in listing["recipes"]} == {f"Concurrent {i}" for i in range(50)}
    assert sorted(stored(db)) == sorted((r["id"], r["title"]) for r in listing["recipes"])


def test_form_create_on_postgresql(start_site, postgres_url):
    base, db = start_site(db=postgres_url, RECIPES_SECRET="s" * 32)
    browser = http()
    response = post_form(browser, base, form_fields(title="Borscht"))
    assert response.status_code == 303, response.text
    page = browser.get(base + response.headers["Location"])
    assert "<h1>Borscht</h1>" in page.text
    assert [title for _, title in stored(db)] == ["Borscht"]
    assert browser.get(f"{base}/healthz").json() == {"status": "ok"}


def test_postgresql_down_the_site_starts_and_says_storage_unavailable(start_site):
    """A database that does not answer (nothing listens on its port): the site still starts, its
    readiness and its creates say storage unavailable, and /healthz names the database (no password)."""
    url = f"postgresql://recipes:hunter2@127.0.0.1:{free_port()}/recipes"
    base, _ = start_site(db=url, ready_path="/new", RECIPES_SECRET="s" * 32)
    client = http()
    health = client.get(f"{base}/healthz", timeout=30)
    assert health.status_code == 503 and health.json()["error"] == "storage_unavailable"
    assert "PostgreSQL at postgresql://recipes@127.0.0.1:" in health.json()["message"]
    assert "hunter2" not in health.text
    created = client.post(f"{base}/api/recipes", json=RECIPE, timeout=30)
    assert (created.status_code, created.json()["error"]) == (503, "storage_unavailable")


@pytest.mark.parametrize("server", ["functions-framework", "gunicorn.conf.py"])
@pytest.mark.parametrize(
    "db", ["postgresql://recipes:hunter2@db:54x2/recipes", "mysql://recipes:hunter2@db/recipes"]
)
def test_a_malformed_or_unknown_recipes_db_stops_the_site_at_start(db, server, logs, tmp_path):
    """Once, RECIPES_DB=postgresql://... made a folder named "postgresql:" holding a SQLite file.
    Both ways the site is served: functions-framework's command (deployed) and make run-frontend's."""
    cmd = (
        [str(FUNCTIONS_FRAMEWORK), "--target=recipes", f"--source={FRONTEND / 'main.py'}"]
        if server == "functions-framework"
        else [str(GUNICORN), "-c", str(FRONTEND / "gunicorn.conf.py")]
    )
    # Both read HOST and PORT from the environment (functions-framework: --host, --port).
    env = site_env(
        f"http://127.0.0.1:{free_port()}/id",
        db,
        logs,
        HOST="127.0.0.1",
        PORT=str(free_port()),
        RECIPES_SECRET="s" * 32,
    )
    result = subprocess.run(
        cmd,
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ConfigError: RECIPES_DB" in result.stderr and "postgresql://USER:PASSWORD@HOST" in result.stderr
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing created"


# --- the lesson: a blocked egress, end to end ----------------------------------------------------


def test_blocked_egress_keeps_the_form_and_stores_nothing(start_site, logs):
    """idgen's upstream is a sidecar that blocks egress (502, empty body, server: envoy): the real
    idgen reports egress_blocked and the site says what happened, keeping what the user typed."""
    with BlockingSidecar() as sidecar, idgen(sidecar.url, logs) as blocked_idgen:
        base, db = start_site(blocked_idgen)
        browser = http()
        typed = form_fields(title="Blocked bread", author="Grace", steps="Knead.\r\nBake.")
        response = post_form(browser, base, typed)
        assert response.status_code == 502
        message = problem(response.text)
        assert "egress policy" in message and "REGISTRY_ONLY" in message and "ServiceEntry" in message
        for name, value in typed.items():
            assert field_value(response.text, name) == value
        api = browser.post(f"{base}/api/recipes", json=RECIPE)
        assert api.status_code == 502 and api.json()["error"] == "egress_blocked"
        assert count_rows(db) == 0


def test_idgen_down_is_a_503(start_site):
    base, db = start_site(f"http://127.0.0.1:{free_port()}/id")
    response = http().post(f"{base}/api/recipes", json=RECIPE)
    assert response.status_code == 503 and response.json()["error"] == "idgen_unreachable"
    assert count_rows(db) == 0


def test_idgen_sidecar_down_says_the_gateway_answered_not_idgen(start_site, tmp_path, logs):
    """The real local ingress gateway (localmesh.proxy, with the route table `localmesh apply`
    builds from manifests/) routes /id to idgen's sidecar, which is not running: the gateway answers
    503 itself. The site must say so, not "idgen answered HTTP 503"."""
    state, _ = parse(load_kustomization(ROOT / "manifests" / "overlays" / "passthrough"))
    nothing_listens = ("127.0.0.1", free_port())
    tables = build_tables(
        state, {"idgen.recipes.svc.cluster.local:80": nothing_listens, "httpbin.org:80": nothing_listens}
    )
    routes = tmp_path / "gateway-routes.json"
    routes.write_text(tables["istio-ingressgateway"].to_json())
    gateway, admin = free_port(), free_port()
    cmd = [str(BIN / "python"), "-m", "localmesh.proxy", "--role", "gateway", "--routes", str(routes)]
    cmd += ["--admin", f"127.0.0.1:{admin}", "--listen", f"127.0.0.1:{gateway}"]
    with running("gateway", cmd, f"http://127.0.0.1:{admin}/ready", logs / f"gateway-{gateway}.log"):
        raw = http().get(f"http://127.0.0.1:{gateway}/id")
        assert raw.headers["server"] == "istio-envoy" and "x-envoy-upstream-service-time" not in raw.headers
        base, db = start_site(f"http://127.0.0.1:{gateway}/id")
        browser = http()
        api = browser.post(f"{base}/api/recipes", json=RECIPE)
        typed = form_fields(title="Sidecar soup")
        form = post_form(browser, base, typed)
    body = api.json()
    assert (api.status_code, body["error"], body["answered_by"]) == (503, "idgen_unreachable", "proxy")
    assert f"proxy at 127.0.0.1:{gateway} (server: istio-envoy" in body["message"]
    assert "answered HTTP 503 itself, without reaching idgen" in body["message"]
    assert "upstream connect error" in body["message"], "Envoy's own words are quoted"
    assert "idgen answered" not in body["message"]
    assert form.status_code == 503 and "idgen did not answer" in problem(form.text)
    assert field_value(form.text, "title") == "Sidecar soup"
    assert count_rows(db) == 0


def test_make_run_frontend_as_the_readme_shows_it(idgen_url, logs, tmp_path):
    """`make run-frontend` (HOST, PORT, IDGEN_URL and RECIPES_DB from the environment)."""
    port = free_port()
    env = site_env(idgen_url, tmp_path / "recipes.db", logs, HOST="127.0.0.1", PORT=str(port))
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "run-frontend"]
    with running("make run-frontend", cmd, f"http://127.0.0.1:{port}/healthz", logs / "make.log", env):
        response = http().post(f"http://127.0.0.1:{port}/api/recipes", json=RECIPE)
    assert response.status_code == 201, response.text
    assert count_rows(tmp_path / "recipes.db") == 1


# --- slow clients ("slowloris") ------------------------------------------------------------------


class SlowClients:
    """`count` connections that each send a request one byte per `pace` seconds and never finish it:
    half trickle the head, half a body after a complete head. Each stops sending once the server has
    answered or closed; `outcome[i]` is then what it got (the status code, "closed" or "reset")."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nUser-Agent: " + b"s" * 10_000
    BODY_HEAD = (
        b"POST /api/recipes HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )

    def __init__(self, base: str, count: int, pace: float = 0.5) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(count)]
        self.kinds = ["head" if i % 2 == 0 else "body" for i in range(count)]
        for sock, kind in zip(self.socks, self.kinds, strict=True):
            sock.sendall(self.BODY_HEAD if kind == "body" else self.HEAD[:1])
        self.sent = [1] * count
        self.outcome: dict[int, str] = {}
        self.rounds = 0
        self._pace = pace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="slowloris", daemon=True)

    def _trickle(self) -> None:
        while not self._stop.wait(self._pace):
            for i, sock in enumerate(self.socks):
                if i in self.outcome:
                    continue
                if select.select([sock], [], [], 0)[0]:
                    try:
                        data = sock.recv(100)
                        self.outcome[i] = data.split(b" ", 2)[1].decode() if data else "closed"
                    except OSError:
                        self.outcome[i] = "reset"
                    continue
                byte = self.HEAD[self.sent[i] : self.sent[i] + 1] if self.kinds[i] == "head" else b" "
                with contextlib.suppress(OSError):
                    sock.send(byte or b"s")
                self.sent[i] += 1
            self.rounds += 1

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()

    def wait(self, done: Callable[[], bool], seconds: float) -> bool:
        """Poll `done` for at most `seconds` (a bounded wait, not a timing claim)."""
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True


def test_a_hundred_slow_clients_do_not_freeze_the_site(start_site):
    """100 clients trickling a head or a body, held open: the site still answers /healthz and saves
    recipes, and ends each slow client with 408 once its deadline has passed (recipesite/server.py).
    Once, 8 such clients (4 threads x 2 CPUs) made /healthz time out."""
    base, db = start_site()
    with SlowClients(base, 100) as slow:
        assert slow.wait(lambda: slow.rounds >= 4, 30), "the slow clients got going"
        client = http()
        for _ in range(5):
            assert client.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        assert client.post(f"{base}/api/recipes", json=RECIPE, timeout=10).status_code == 201
        assert len(slow.outcome) < 100, "they were still held open while the site answered"
        assert slow.wait(lambda: len(slow.outcome) == 100, 90), f"not all cut: {len(slow.outcome)}"
    heads = {slow.outcome[i] for i in range(0, 100, 2)}
    bodies = {slow.outcome[i] for i in range(1, 100, 2)}
    # 408 when the answer was read before the close; "closed"/"reset" if the close came first.
    assert "408" in heads and heads <= {"408", "closed", "reset"}, heads
    assert "408" in bodies and bodies <= {"408", "closed", "reset"}, bodies
    assert count_rows(db) == 1


# --- deployed as a Cloud Function: frontend/ is the whole source ----------------------------------


def test_runs_from_a_copy_of_frontend_alone(idgen_url, logs, tmp_path):
    """What `gcloud functions deploy --source=frontend` uploads: the folder alone, as the working
    directory, with main.py found by functions-framework's default (--source not given)."""
    workspace = tmp_path / "workspace"
    shutil.copytree(FRONTEND, workspace, ignore=shutil.ignore_patterns("__pycache__", "data", "*.pyc"))
    marker = f"deployed-copy-{uuid.uuid4()}"
    base_html = workspace / "templates" / "base.html"
    base_html.write_text(base_html.read_text().replace("</footer>", f"<!-- {marker} --></footer>"))
    port = free_port()
    cmd = [str(FUNCTIONS_FRAMEWORK), "--target=recipes", "--host=127.0.0.1", f"--port={port}"]
    # spawn + wait_http (not running): this one needs its own working directory.
    child = spawn(
        "recipes site (deployed layout)",
        cmd,
        logs / f"deployed-{port}.log",
        site_env(idgen_url, None, logs),
        cwd=workspace,
    )
    try:
        wait_http(child, f"http://127.0.0.1:{port}/healthz")
        client = http()
        assert marker in client.get(f"http://127.0.0.1:{port}/").text, (
            "templates and recipesite load from the copy"
        )
        assert client.post(f"http://127.0.0.1:{port}/api/recipes", json=RECIPE).status_code == 201
    finally:
        child.stop()
    assert count_rows(workspace / "data" / "recipes.db") == 1, "RECIPES_DB defaults to data/ in the cwd"
    assert (workspace / "data" / "recipes.db.secret").exists()


def test_idgen_url_pointing_at_httpbin_itself_is_a_clear_502(httpbin_url, logs, tmp_path):
    """A likely misconfiguration: IDGEN_URL set to the UUID API instead of idgen. httpbin answers
    {"uuid": ...}, not idgen's {"id": ...}; the site says what it got instead of storing anything."""
    with site(f"{httpbin_url}/uuid", tmp_path / "recipes.db", logs) as base:
        response = http().post(f"{base}/api/recipes", json=RECIPE)
    assert response.status_code == 502 and response.json()["error"] == "bad_idgen_response"
    assert "HTTP 200 without an ID" in response.json()["message"]
    assert count_rows(tmp_path / "recipes.db") == 0


# --- storage faults: a full disk and a read-only filesystem, for real -----------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own: a disk that really fills up and really turns read-only (remount),
    which no chmod can fake for root. Needs root with CAP_SYS_ADMIN, as .ci/run has."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def test_full_disk_is_a_503_that_keeps_the_form_and_readiness_reports_it(idgen_url, logs, small_disk):
    db = small_disk / "recipes.db"
    with site(idgen_url, db, logs, RECIPES_SECRET="s" * 32) as base:
        browser = http()
        assert browser.post(f"{base}/api/recipes", json=RECIPE).status_code == 201
        filler = fill(small_disk)
        typed = form_fields(title="Bread on a full disk", steps="Knead.\r\nBake." * 200)
        response = post_form(browser, base, typed)
        assert response.status_code == 503, response.text[:300]
        assert "storage unavailable" in problem(response.text)
        for name, value in typed.items():
            assert field_value(response.text, name) == value
        api = browser.post(f"{base}/api/recipes", json=RECIPE)
        assert (api.status_code, api.json()["error"]) == (503, "storage_unavailable")
        health = browser.get(f"{base}/healthz")
        assert health.status_code == 503 and "the disk is full" in health.json()["message"]
        filler.unlink()
        assert browser.post(f"{base}/api/recipes", json=RECIPE).status_code == 201
        assert browser.get(f"{base}/healthz").json() == {"status": "ok"}, "ready again once a write works"
    assert count_rows(db) == 2


# One recipe stored by the site's own store, then the process closes its connection (the -wal and
# -shm files go) or dies without closing it (they stay, as after a crash; SQLite can then still read
# the file on read-only media).
PREPARE_DB = """
import os, sys
sys.path.append(sys.argv[3])
from recipesite.store_sqlite import SqliteStore
store = SqliteStore(sys.argv[1])
store.add("r1", "Old soup", "", ["x"], "")
if sys.argv[2] == "crash":
    os._exit(0)
store.close()
"""


@pytest.mark.parametrize("left", ["closed", "crash"])
def test_read_only_filesystem_is_a_503_and_readiness_reports_it(idgen_url, logs, small_disk, left):
    db = small_disk / "recipes.db"
    subprocess.run([str(BIN / "python"), "-c", PREPARE_DB, str(db), left, str(FRONTEND)], check=True)
    assert (small_disk / "recipes.db-shm").exists() == (left == "crash")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with site(idgen_url, db, logs, ready_path="/new", RECIPES_SECRET="s" * 32) as base:
        browser = http()
        health = browser.get(f"{base}/healthz")
        assert health.status_code == 503 and health.json()["error"] == "storage_unavailable"
        assert ("SQLITE_READONLY" if left == "crash" else "SQLITE_CANTOPEN") in health.json()["message"]
        typed = form_fields(title="Read-only soup")
        response = post_form(browser, base, typed)
        assert response.status_code == 503 and "storage unavailable" in problem(response.text)
        assert field_value(response.text, "title") == "Read-only soup"
        api = browser.post(f"{base}/api/recipes", json=RECIPE)
        assert (api.status_code, api.json()["error"]) == (503, "storage_unavailable")
        listing = browser.get(f"{base}/")
        if left == "crash":
            assert listing.status_code == 200 and "Old soup" in listing.text, "reads still work"
        else:
            assert listing.status_code == 503 and "Storage unavailable" in listing.text

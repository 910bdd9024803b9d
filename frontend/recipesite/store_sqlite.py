"""Recipes in SQLite: one file, WAL mode, the ID as primary key, safe under gunicorn threads and workers.

functions-framework serves the function with gunicorn's gthread worker (THREADS threads) and
optionally several worker processes (WORKERS). SQLite connections must not be shared between threads
without care nor carried across fork(), so each (process, thread) gets its own connection, opened on
first use. WAL lets readers run while one writer writes; busy_timeout makes a writer wait for the lock
instead of failing at once with "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .store import DuplicateIdError, Page, Recipe, StorageUnavailable, WriteHealth, new_recipe

log = logging.getLogger("recipes")

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS recipes (
    id          TEXT PRIMARY KEY,                                   -- from idgen
    title       TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    author      TEXT NOT NULL DEFAULT '' CHECK (length(author) <= 100),
    ingredients TEXT NOT NULL CHECK (json_valid(ingredients)),      -- JSON array of strings
    steps       TEXT NOT NULL DEFAULT '' CHECK (length(steps) <= 10000),
    created_at  TEXT NOT NULL                                       -- ISO 8601, UTC, microseconds
);
CREATE INDEX IF NOT EXISTS recipes_newest ON recipes (created_at);
"""

# SQLite's primary result codes (https://www.sqlite.org/rescode.html) that mean "the storage cannot be
# used right now", with what they mean for an operator. Anything else is a bug and stays a 500.
UNAVAILABLE = {
    3: "permission denied (SQLITE_PERM)",
    5: "the database stayed locked by another writer (SQLITE_BUSY)",
    8: "the database is read-only (SQLITE_READONLY)",
    10: "a disk I/O error (SQLITE_IOERR)",
    11: "the database file is corrupt (SQLITE_CORRUPT)",
    13: "the disk is full (SQLITE_FULL)",
    14: "the database file cannot be opened, or its folder is read-only (SQLITE_CANTOPEN)",
    26: "the file is not a database (SQLITE_NOTADB)",
}


def _row(row: sqlite3.Row) -> Recipe:
    return Recipe(
        id=row["id"],
        title=row["title"],
        author=row["author"],
        ingredients=json.loads(row["ingredients"]),
        steps=row["steps"],
        created_at=row["created_at"],
    )


class SqliteStore:
    """The RecipeStore on a SQLite file. Create one per process (it opens connections lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._schema_ready = False
        self._write = WriteHealth()
        try:
            self._ensure_schema()
        except StorageUnavailable as err:
            # Start anyway: pages and /healthz then say what is wrong, and the schema is made on the
            # first use that succeeds (e.g. once the disk has room again).
            log.warning("recipe store %s not usable yet: %s", self.path, err.reason)

    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """Turn SQLite's "cannot use the storage" errors into StorageUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as err:
            reason = UNAVAILABLE.get(getattr(err, "sqlite_errorcode", -1) & 0xFF)
            if reason is None:
                raise
            raise StorageUnavailable(f"{reason}: {err} ({self.path})") from err
        except OSError as err:  # creating the folder
            raise StorageUnavailable(f"{err.strerror}: {self.path.parent}") from err

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        # On a connection closed right away: functions-framework builds the app in gunicorn's master
        # and forks workers, and an open SQLite connection must not cross a fork.
        with self._storage():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._open()
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
                conn.executescript(SCHEMA)
            finally:
                conn.close()
        self._schema_ready = True

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; the few multi-statement reads use explicit BEGIN/COMMIT.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=True
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: durable except on power loss
        return conn

    def _conn(self) -> sqlite3.Connection:
        self._ensure_schema()
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.conn = self._open()
            self._local.pid = os.getpid()
        return conn

    def add(
        self,
        recipe_id: str,
        title: str,
        author: str,
        ingredients: list[str],
        steps: str,
        created_at: datetime | None = None,
    ) -> Recipe:
        """Insert one recipe in a single statement: it is stored whole or not at all."""
        recipe = new_recipe(recipe_id, title, author, ingredients, steps, created_at)
        try:
            with self._storage():
                self._conn().execute(
                    "INSERT INTO recipes (id, title, author, ingredients, steps, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        recipe.id,
                        recipe.title,
                        recipe.author,
                        json.dumps(recipe.ingredients, ensure_ascii=False),
                        recipe.steps,
                        recipe.created_at,
                    ),
                )
        except StorageUnavailable as err:
            self._write.failed(err.reason)
            raise
        except sqlite3.IntegrityError as err:
            if "UNIQUE" in str(err) or "PRIMARY KEY" in str(err):
                raise DuplicateIdError(recipe_id) from err
            raise
        self._write.succeeded()
        return recipe

    def get(self, recipe_id: str) -> Recipe | None:
        with self._storage():
            row = self._conn().execute("SELECT * FROM recipes WHERE id = ?", (recipe_id,)).fetchone()
        return _row(row) if row else None

    def page(self, page: int, per_page: int) -> Page:
        """Newest first; rowid breaks ties between recipes created in the same microsecond."""
        with self._storage():
            conn = self._conn()
            # One read transaction: the count and the rows come from the same snapshot (WAL isolation).
            conn.execute("BEGIN")
            try:
                total = conn.execute("SELECT count(*) FROM recipes").fetchone()[0]
                rows = conn.execute(
                    "SELECT * FROM recipes ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                    (per_page, (page - 1) * per_page),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        return Page([_row(r) for r in rows], total, page, per_page)

    def count(self) -> int:
        with self._storage():
            return self._conn().execute("SELECT count(*) FROM recipes").fetchone()[0]

    def ping(self) -> None:
        with self._storage():
            conn = self._conn()
            conn.execute("SELECT 1 FROM recipes LIMIT 1").fetchall()
            # Can this connection write? Taking the write lock is not proof (a read-only WAL
            # database whose -shm file exists grants it), changing a page is: the header's
            # user_version, set to the value it has, then rolled back (in WAL mode the page never
            # leaves the cache). SQLITE_BUSY means another connection holds the lock: writable.
            conn.execute("PRAGMA busy_timeout=0")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    conn.execute(f"PRAGMA user_version={int(version)}")
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.OperationalError as err:
                if getattr(err, "sqlite_errorcode", -1) & 0xFF != 5:
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._write.check()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

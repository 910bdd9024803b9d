"""Recipes in SQLite: one file, WAL mode, the ID as primary key, safe under gunicorn threads and workers.

functions-framework serves the function with gunicorn's gthread worker (THREADS, default 4 per CPU) and
optionally several worker processes (WORKERS). SQLite connections must not be shared between threads
without care nor carried across fork(), so each (process, thread) gets its own connection, opened on
first use. WAL lets readers run while one writer writes; busy_timeout makes a writer wait for the lock
instead of failing at once with "database is locked".
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class DuplicateIdError(Exception):
    """The ID is already taken (PRIMARY KEY clash); nothing was written."""

    def __init__(self, recipe_id: str) -> None:
        super().__init__(f"a recipe with id {recipe_id!r} already exists")
        self.recipe_id = recipe_id


@dataclass(frozen=True)
class Recipe:
    id: str
    title: str
    author: str
    ingredients: list[str]
    steps: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "author": self.author,
            "ingredients": list(self.ingredients),
            "steps": self.steps,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Page:
    recipes: list[Recipe]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _row(row: sqlite3.Row) -> Recipe:
    return Recipe(
        id=row["id"],
        title=row["title"],
        author=row["author"],
        ingredients=json.loads(row["ingredients"]),
        steps=row["steps"],
        created_at=row["created_at"],
    )


class RecipeStore:
    """All reads and writes of recipes. Create one per process (it opens connections lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Schema on start, on a connection closed right away: functions-framework builds the app in
        # gunicorn's master and forks workers, and an open SQLite connection must not cross a fork.
        conn = self._open()
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            conn.executescript(SCHEMA)
        finally:
            conn.close()

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
        when = (created_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
        recipe = Recipe(recipe_id, title, author, list(ingredients), steps, when.replace("+00:00", "Z"))
        try:
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
        except sqlite3.IntegrityError as err:
            if "UNIQUE" in str(err) or "PRIMARY KEY" in str(err):
                raise DuplicateIdError(recipe_id) from err
            raise
        return recipe

    def get(self, recipe_id: str) -> Recipe | None:
        row = self._conn().execute("SELECT * FROM recipes WHERE id = ?", (recipe_id,)).fetchone()
        return _row(row) if row else None

    def page(self, page: int, per_page: int) -> Page:
        """Newest first; rowid breaks ties between recipes created in the same microsecond."""
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
        return self._conn().execute("SELECT count(*) FROM recipes").fetchone()[0]

    def ping(self) -> None:
        """Raise if the database cannot be read (for /healthz)."""
        self._conn().execute("SELECT 1 FROM recipes LIMIT 1").fetchall()

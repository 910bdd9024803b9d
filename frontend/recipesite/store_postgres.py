"""Recipes in PostgreSQL (RECIPES_DB=postgresql://...), e.g. Cloud SQL: every instance sees one list.

psycopg 3 with a connection pool (psycopg_pool) per process: the pool is opened on first use in the
process that uses it, never in gunicorn's master before the fork (a connection must not cross fork()).
Each call takes a connection for one transaction: an INSERT is stored whole or not at all, and a page
reads its total and its rows from one REPEATABLE READ snapshot, as SQLite's read transaction does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from .store import (
    DuplicateIdError,
    Page,
    Recipe,
    StorageUnavailable,
    StoreConfigError,
    WriteHealth,
    describe,
    iso_utc,
    new_recipe,
)

log = logging.getLogger("recipes")

# Connections per process. gunicorn may run many threads, but a Cloud SQL instance allows few
# connections (25 on the smallest tiers); threads beyond this wait up to POOL_TIMEOUT_S for one.
POOL_MAX = 8
POOL_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5  # libpq waits for ever by default
STATEMENT_TIMEOUT_MS = 10_000

# The same rules as SQLite's schema; char_length counts characters, as SQLite's length() does.
SCHEMA = """
CREATE TABLE IF NOT EXISTS recipes (
    id          text PRIMARY KEY,                        -- from idgen
    seq         bigint GENERATED ALWAYS AS IDENTITY,     -- insertion order: breaks created_at ties
    title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    author      text NOT NULL DEFAULT '' CHECK (char_length(author) <= 100),
    ingredients jsonb NOT NULL CHECK (jsonb_typeof(ingredients) = 'array'),
    steps       text NOT NULL DEFAULT '' CHECK (char_length(steps) <= 10000),
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS recipes_newest ON recipes (created_at DESC, seq DESC);
"""
# Several processes may start at once; CREATE TABLE IF NOT EXISTS is not safe against that in
# PostgreSQL (a unique violation on pg_type), so schema changes take this transaction-scoped lock.
SCHEMA_LOCK = 7_202_611  # any constant; "recipes" on a phone keypad


def check_url(url: str) -> None:
    """StoreConfigError unless libpq can parse `url` (a malformed URL fails at start, not later)."""
    try:
        params = conninfo_to_dict(url)
        problem = None
        ports = str(params.get("port", "")).split(",")
        if params.get("port") and not all(p.strip().isascii() and p.strip().isdigit() for p in ports):
            problem = f"the port must be a number, got {params['port']!r}"
    except psycopg.ProgrammingError as err:
        problem = str(err).strip()
        # libpq quotes the part it could not parse, which may be the password.
        _, _, userinfo = url.partition("://")[2].rpartition("@")[0].partition(":")
        if userinfo:
            problem = problem.replace(userinfo, "***")
    if problem:
        raise StoreConfigError(
            f"RECIPES_DB is not a valid PostgreSQL URL ({describe(url)!r}): {problem}. Expected "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (percent-encode special characters in the "
            "password), or for Cloud SQL's unix socket postgresql://USER@/DATABASE?host=/cloudsql/"
            "PROJECT:REGION:INSTANCE."
        )


def _row(row: dict[str, Any]) -> Recipe:
    return Recipe(
        id=row["id"],
        title=row["title"],
        author=row["author"],
        ingredients=row["ingredients"],
        steps=row["steps"],
        created_at=iso_utc(row["created_at"]),
    )


class PostgresStore:
    """The RecipeStore on a PostgreSQL database."""

    def __init__(self, url: str, pool_timeout: float = POOL_TIMEOUT_S) -> None:
        check_url(url)
        self._pool_timeout = pool_timeout  # how long a call waits for a connection before it fails
        params = conninfo_to_dict(url)
        defaults = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "recipes",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        self._conninfo = make_conninfo(url, **{k: v for k, v in defaults.items() if k not in params})
        self.where = describe(url)
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._schema_ready = False
        self._write = WriteHealth()
        # Checked on a connection of its own, closed at once: this runs before gunicorn forks.
        try:
            with self._storage(), psycopg.connect(self._conninfo, row_factory=dict_row) as conn:
                self._create_schema(conn)
        except StorageUnavailable as err:
            log.warning("recipe store %s not usable yet: %s", self.where, err.reason)

    def _create_schema(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            # Look first: a read-only database refuses even CREATE TABLE IF NOT EXISTS.
            if conn.execute("SELECT to_regclass('recipes') AS t").fetchone()["t"] is None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(SCHEMA)
        self._schema_ready = True

    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """Turn "the database cannot be used" errors into StorageUnavailable (others stay bugs)."""
        try:
            yield
        except (psycopg.OperationalError, errors.ReadOnlySqlTransaction) as err:
            # OperationalError covers a server that is down or unreachable, a full disk
            # (DiskFull), too many connections and psycopg_pool's PoolTimeout.
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StorageUnavailable(f"PostgreSQL at {self.where}: {detail}") from err

    def _pool_for_this_process(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A pool inherited through fork() belongs to the parent: never used, never closed here.
                self._pool = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=POOL_MAX,
                    timeout=self._pool_timeout,
                    check=ConnectionPool.check_connection,  # replaces connections the server dropped
                    kwargs={"row_factory": dict_row},
                    name=f"recipes-{os.getpid()}",
                    open=False,
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
            return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one transaction (committed at the end, rolled back on error)."""
        with self._storage(), self._pool_for_this_process().connection() as conn:
            if not self._schema_ready:
                self._create_schema(conn)
            yield conn

    def add(
        self,
        recipe_id: str,
        title: str,
        author: str,
        ingredients: list[str],
        steps: str,
        created_at: datetime | None = None,
    ) -> Recipe:
        """Insert one recipe in one statement and one transaction: stored whole or not at all."""
        recipe = new_recipe(recipe_id, title, author, ingredients, steps, created_at)
        try:
            with self._connection() as conn:
                conn.execute(
                    "INSERT INTO recipes (id, title, author, ingredients, steps, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        recipe.id,
                        recipe.title,
                        recipe.author,
                        Jsonb(recipe.ingredients),
                        recipe.steps,
                        datetime.fromisoformat(recipe.created_at),
                    ),
                )
        except StorageUnavailable as err:
            self._write.failed(err.reason)
            raise
        except errors.UniqueViolation as err:
            if err.diag.constraint_name == "recipes_pkey":
                raise DuplicateIdError(recipe_id) from err
            raise
        self._write.succeeded()
        return recipe

    def get(self, recipe_id: str) -> Recipe | None:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM recipes WHERE id = %s", (recipe_id,)).fetchone()
        return _row(row) if row else None

    def page(self, page: int, per_page: int) -> Page:
        """Newest first; seq (insertion order) breaks ties between recipes created in one microsecond."""
        with self._connection() as conn:
            # The transaction's first statement: the count and the rows then share one snapshot.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            total = conn.execute("SELECT count(*) AS n FROM recipes").fetchone()["n"]
            rows = conn.execute(
                "SELECT * FROM recipes ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                (per_page, (page - 1) * per_page),
            ).fetchall()
        return Page([_row(r) for r in rows], total, page, per_page)

    def count(self) -> int:
        with self._connection() as conn:
            return conn.execute("SELECT count(*) AS n FROM recipes").fetchone()["n"]

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1 FROM recipes LIMIT 1").fetchall()
            # "on" for a read replica, or a database set read-only (default_transaction_read_only).
            read_only = conn.execute("SHOW transaction_read_only").fetchone()["transaction_read_only"]
        if read_only == "on":
            raise StorageUnavailable(f"PostgreSQL at {self.where} is read-only (transaction_read_only=on)")
        self._write.check()

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None

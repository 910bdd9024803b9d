"""Where recipes are kept: one interface, two stores, chosen by RECIPES_DB.

- a file path (the default, `data/recipes.db`): SQLite, for one machine (store_sqlite.py);
- `postgresql://...`: PostgreSQL, for a deployed site whose instances share one database, e.g.
  Cloud SQL (store_postgres.py).

Both give the same guarantees: a recipe is written by one INSERT, so it is stored whole or not at
all; the ID is the primary key, so a duplicate is refused (DuplicateIdError) and never overwrites;
a store that cannot read or write raises StorageUnavailable, which the site answers with 503.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

# A URL's scheme (RFC 3986): what tells a database URL from a file path.
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
POSTGRES_SCHEMES = ("postgresql", "postgres")  # the two libpq accepts


class StoreConfigError(ValueError):
    """RECIPES_DB names no store the site can use; the message says what is wrong and what works."""


class StorageUnavailable(Exception):
    """The store cannot be read or written right now (disk full, read-only, database down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    created_at: str  # ISO 8601, UTC, microseconds, "Z"

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


def iso_utc(moment: datetime) -> str:
    """The one text form of a timestamp, whichever store keeps it: 2026-11-27T12:40:00.000000Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_recipe(
    recipe_id: str,
    title: str,
    author: str,
    ingredients: list[str],
    steps: str,
    created_at: datetime | None = None,
) -> Recipe:
    return Recipe(
        recipe_id, title, author, list(ingredients), steps, iso_utc(created_at or datetime.now(UTC))
    )


class RecipeStore(Protocol):
    """All reads and writes of recipes. One per process; safe to call from any thread."""

    def add(
        self,
        recipe_id: str,
        title: str,
        author: str,
        ingredients: list[str],
        steps: str,
        created_at: datetime | None = None,
    ) -> Recipe:
        """Insert one recipe: stored whole or not at all. DuplicateIdError, StorageUnavailable."""
        ...

    def get(self, recipe_id: str) -> Recipe | None: ...

    def page(self, page: int, per_page: int) -> Page:
        """Newest first, with the total, from one snapshot."""
        ...

    def count(self) -> int: ...

    def ping(self) -> None:
        """Raise StorageUnavailable unless recipes can be read and written (for /healthz)."""
        ...

    def close(self) -> None:
        """Let go of this thread's or process's connections (tests; a server process just exits)."""
        ...


class WriteHealth:
    """The last write's outcome, for readiness: a disk that filled up shows no sign until a write
    fails, so a failed write keeps readiness down until a later write succeeds."""

    def __init__(self) -> None:
        self.failure: str | None = None

    def failed(self, reason: str) -> None:
        self.failure = reason

    def succeeded(self) -> None:
        self.failure = None

    def check(self) -> None:
        if self.failure:
            raise StorageUnavailable(f"the last write failed: {self.failure}")


def describe(location: str) -> str:
    """RECIPES_DB as it may be logged or shown: a URL without its password."""
    if SCHEME_RE.match(location) and "@" in location:
        scheme, _, rest = location.partition("://")
        userinfo, _, host = rest.rpartition("@")
        return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"
    return location


def check_location(location: str) -> None:
    """StoreConfigError unless `location` is a usable RECIPES_DB (a path or a PostgreSQL URL)."""
    match = SCHEME_RE.match(location)
    if not match:
        return  # a file path
    scheme = match.group(1)
    if scheme.lower() not in POSTGRES_SCHEMES:
        raise StoreConfigError(
            f"RECIPES_DB: unknown scheme {scheme + ':'!r} in {describe(location)!r}. Use a file path for "
            "SQLite (e.g. data/recipes.db) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "(Cloud SQL over its unix socket: postgresql://USER@/DATABASE?host=/cloudsql/PROJECT:REGION:INSTANCE)."
        )
    from .store_postgres import check_url  # psycopg is only loaded for a PostgreSQL URL

    check_url(location)


def open_store(location: str) -> RecipeStore:
    """The store RECIPES_DB names (already checked by check_location)."""
    if SCHEME_RE.match(location):
        from .store_postgres import PostgresStore

        return PostgresStore(location)
    from .store_sqlite import SqliteStore

    return SqliteStore(Path(location))

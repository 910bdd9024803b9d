"""Settings of the recipe site, read once from the environment (the function's only configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .store import SCHEME_RE, StoreConfigError, check_location

DEFAULT_IDGEN_URL = "http://127.0.0.1:8000/id"  # the local ingress gateway's /id route
DEFAULT_DB = "data/recipes.db"  # relative to the working directory, like the Makefile's other state
# idgen gives up on httpbin.org after 1 s connect + 3 s read (its own defaults) and answers 504, so 5 s
# lets idgen's precise error reach the user before this side times out with the vaguer idgen_timeout.
DEFAULT_IDGEN_TIMEOUT = 5.0
MAX_BODY_BYTES = 64 * 1024
PAGE_SIZE = 20
MAX_PER_PAGE = 100


class ConfigError(ValueError):
    """An environment variable has a value the site cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    db: str  # RECIPES_DB: a SQLite file path or a postgresql:// URL (see store.py)
    idgen_url: str
    idgen_timeout: float = DEFAULT_IDGEN_TIMEOUT
    # None: a random secret kept in a file next to the database (see csrf.load_or_create_secret).
    secret: bytes | None = None
    # Prefix for the links the site writes, when a front end that strips it serves the site under a
    # path (e.g. "/recipes" on the cloudfunctions.net URL); "" when the site is at the root.
    base_path: str = ""
    max_body: int = MAX_BODY_BYTES
    page_size: int = PAGE_SIZE

    @property
    def db_path(self) -> Path | None:
        """The SQLite file, or None when the recipes are in PostgreSQL."""
        return None if SCHEME_RE.match(self.db) else Path(self.db)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url = env.get("IDGEN_URL", "").strip() or DEFAULT_IDGEN_URL
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"IDGEN_URL must be an http:// or https:// URL, got {url!r}")
        raw_timeout = env.get("IDGEN_TIMEOUT", "").strip()
        try:
            timeout = float(raw_timeout) if raw_timeout else DEFAULT_IDGEN_TIMEOUT
        except ValueError:
            raise ConfigError(f"IDGEN_TIMEOUT must be a number of seconds, got {raw_timeout!r}") from None
        if not 0 < timeout <= 300:
            raise ConfigError(f"IDGEN_TIMEOUT must be between 0 and 300 seconds, got {raw_timeout!r}")
        secret = env.get("RECIPES_SECRET", "")
        base_path = env.get("RECIPES_BASE_PATH", "").strip().rstrip("/")
        if base_path and not base_path.startswith("/"):
            raise ConfigError(f"RECIPES_BASE_PATH must start with '/', got {base_path!r}")
        db = env.get("RECIPES_DB", "").strip() or DEFAULT_DB
        try:
            check_location(db)
        except StoreConfigError as err:
            raise ConfigError(str(err)) from None
        if not secret and SCHEME_RE.match(db):
            # Instances that share a database must share the key too, or they refuse each other's forms.
            raise ConfigError(
                "RECIPES_SECRET must be set when RECIPES_DB is a PostgreSQL URL: every instance "
                "serving that database must sign forms with the same key (at least 16 characters; "
                "e.g. openssl rand -hex 32)."
            )
        return cls(
            db=db,
            idgen_url=url,
            idgen_timeout=timeout,
            secret=secret.encode() if secret else None,
            base_path=base_path,
        )

"""Settings of the recipe site, read once from the environment (the function's only configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    db_path: Path
    idgen_url: str
    idgen_timeout: float = DEFAULT_IDGEN_TIMEOUT
    # None: a random secret kept in a file next to the database (see csrf.load_or_create_secret).
    secret: bytes | None = None
    # Prefix for the links the site writes, when a front end that strips it serves the site under a
    # path (e.g. "/recipes" on the cloudfunctions.net URL); "" when the site is at the root.
    base_path: str = ""
    max_body: int = MAX_BODY_BYTES
    page_size: int = PAGE_SIZE

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
        return cls(
            db_path=Path(env.get("RECIPES_DB", "").strip() or DEFAULT_DB),
            idgen_url=url,
            idgen_timeout=timeout,
            secret=secret.encode() if secret else None,
            base_path=base_path,
        )

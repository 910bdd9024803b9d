"""idgen's settings: defaults from the environment, checked once at startup.

A bad value stops the app from starting with a message naming the variable, rather than turning
every request into a puzzling 5xx later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

DEFAULTS: dict[str, str] = {
    "UPSTREAM_URL": "http://httpbin.org/uuid",
    # Connect fast-fails (a sidecar or a LAN answers in milliseconds); the read allows a slow API.
    "UPSTREAM_CONNECT_TIMEOUT": "1.0",
    "UPSTREAM_READ_TIMEOUT": "3.0",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and shows the bad value."""


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings as raw values: each one from the environment if set, else its default."""
    env = os.environ if environ is None else environ
    return {name: env.get(name) or default for name, default in DEFAULTS.items()}


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, checked settings: URL with an http(s) scheme and a host; timeouts positive numbers."""
    url = str(config["UPSTREAM_URL"])
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"UPSTREAM_URL must be an http:// or https:// URL with a host, got {url!r}")
    out = {"UPSTREAM_URL": url}
    for name in ("UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_READ_TIMEOUT"):
        raw = config[name]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
        if not (value > 0 and math.isfinite(value)):  # NaN and inf fail too: sockets need a real limit
            raise SettingsError(f"{name} must be a finite number of seconds above 0, got {raw!r}")
        out[name] = value
    return out

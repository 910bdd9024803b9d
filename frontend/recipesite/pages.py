"""HTML rendering: Jinja2 with autoescape on, so everything user-written is escaped on output.

A jinja2 Environment of its own (not flask.render_template) keeps the function callable without a
Flask app context, as the unit tier calls it, and pins autoescape for every template, not only for
those whose file name ends in .html.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup

HERE = Path(__file__).resolve().parent.parent  # frontend/
TEMPLATES = HERE / "templates"
STYLESHEET = HERE / "static" / "site.css"


def _when(value: str) -> str:
    """ISO 8601 UTC (as stored) -> "27 Nov 2026, 12:40 UTC"."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.strftime("%d %b %Y, %H:%M UTC").lstrip("0")


class Pages:
    def __init__(self, base_path: str = "") -> None:
        self.base_path = base_path
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,  # a typo in a template fails the tests, not silently blank
            trim_blocks=True,
            lstrip_blocks=True,
        )
        css = STYLESHEET.read_text(encoding="utf-8")
        # The stylesheet is inlined (one request per page, works under any URL prefix) and allowed by
        # its hash in the Content-Security-Policy, so no other style and no script at all can run.
        self.css_hash = "sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
        self.env.globals.update(css=Markup(css), url=self.url)
        self.env.filters["when"] = _when

    def url(self, path: str, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.base_path}{path}" + (f"?{query}" if query else "")

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    @property
    def content_security_policy(self) -> str:
        return (
            f"default-src 'none'; style-src '{self.css_hash}'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )

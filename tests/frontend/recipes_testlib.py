"""Helpers for the recipe site's tests: a local stand-in for idgen, and small HTML/DB readers.

The stand-in is a real HTTP server (stdlib http.server in a thread, on a free 127.0.0.1 port) that
answers like idgen does (see idgen/app.py and idgen/upstream.py), or fails the ways idgen can fail.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import sqlite3
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
MAIN = FRONTEND / "main.py"
# The site's IDGEN_TIMEOUT in the in-process tests: ample for the stand-in's instant answers on a
# loaded machine; a test that waits it out (idgen hanging) sets a shorter one.
SITE_IDGEN_TIMEOUT = "1"

# mode -> (status, JSON body) for idgen's own error answers (its error codes and statuses).
IDGEN_ERRORS: dict[str, tuple[int, dict[str, str]]] = {
    "egress_blocked": (
        502,
        {
            "error": "egress_blocked",
            "upstream": "httpbin.org",
            "message": "httpbin.org answered 502 with an empty body from envoy",
        },
    ),
    "upstream_error": (
        502,
        {"error": "upstream_error", "upstream": "httpbin.org", "message": "httpbin.org answered 500"},
    ),
    "bad_upstream_response": (
        502,
        {"error": "bad_upstream_response", "upstream": "httpbin.org", "message": "not a UUID"},
    ),
    "upstream_unreachable": (
        503,
        {"error": "upstream_unreachable", "upstream": "httpbin.org", "message": "connection refused"},
    ),
    "upstream_timeout": (
        504,
        {"error": "upstream_timeout", "upstream": "httpbin.org", "message": "no answer within 3.0 s"},
    ),
}


# mode -> (extra headers, body) of an answer from Istio's gateway (server: istio-envoy) instead of
# idgen: its own reply (no x-envoy-upstream-service-time), or one from a proxy behind it.
ENVOY_REPLIES: dict[str, tuple[dict[str, str], bytes]] = {
    "gateway_503": ({}, b"no healthy upstream"),
    "behind_gateway_503": (
        {"x-envoy-upstream-service-time": "2"},
        b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    ),
}


class FakeIdgen:
    """idgen's /id on a free port. Set .mode to choose the answer; .calls counts requests, .headers
    keeps each request's headers (names in lower case)."""

    MODES = ("ok", "dup", "garbage", "hang", "bad_id", "no_code_503", *ENVOY_REPLIES, *IDGEN_ERRORS)

    def __init__(self) -> None:
        self.mode = "ok"
        self.fixed_id = str(uuid.uuid4())
        self.calls = 0
        self.issued: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: with Nagle's algorithm the body waits for the
            # client's delayed ACK (40 ms on Linux) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def version_string(self) -> str:  # the Server header
                return "istio-envoy" if fake.mode in ENVOY_REPLIES else super().version_string()

            def _send(
                self, status: int, body: bytes, ctype: str = "application/json", **headers: str
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.calls += 1
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                mode = fake.mode
                if self.path != "/id":
                    self._send(404, b'{"error": "not_found", "message": "no such path"}')
                elif mode == "ok":
                    new = str(uuid.uuid4())
                    with fake._lock:
                        fake.issued.append(new)
                    self._send(200, json.dumps({"id": new}).encode())
                elif mode == "dup":
                    self._send(200, json.dumps({"id": fake.fixed_id}).encode())
                elif mode == "garbage":
                    self._send(200, b"<html>surprise</html>", "text/html")
                elif mode == "bad_id":
                    self._send(200, b'{"id": "../../etc/passwd"}')
                elif mode == "no_code_503":
                    self._send(503, b"no healthy upstream", "text/plain")
                elif mode in ENVOY_REPLIES:
                    headers, body = ENVOY_REPLIES[mode]
                    self._send(503, body, "text/plain", **headers)
                elif mode == "hang":
                    fake._release.wait(30)  # longer than any IDGEN_TIMEOUT a test sets
                    self.close_connection = True
                else:
                    status, body = IDGEN_ERRORS[mode]
                    self._send(status, json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/id"
        # shutdown() returns at the next poll: a short interval keeps each test's teardown short.
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.01,), name="fake-idgen", daemon=True
        )

    def start(self) -> FakeIdgen:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hanging handlers finish
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class BlockingSidecar:
    """What an Istio sidecar answers when REGISTRY_ONLY blocks a host: 502, empty body, server: envoy.

    Used as idgen's UPSTREAM_URL in system tests so the real idgen reports egress_blocked.
    """

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def version_string(self) -> str:
                return "envoy"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/uuid"
        # shutdown() returns at the next poll: a short interval keeps each test's teardown short.
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.01,), name="blackhole", daemon=True
        )

    def __enter__(self) -> BlockingSidecar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(page: str) -> str:
    match = CSRF_RE.search(page)
    assert match, "no csrf_token field in the page"
    return match.group(1)


def field_value(page: str, name: str) -> str:
    """The unescaped value an <input> or <textarea> named `name` shows in the page."""
    m = re.search(rf'<input [^>]*name="{name}" value="([^"]*)"', page)
    if m:
        return html.unescape(m.group(1))
    m = re.search(rf'<textarea [^>]*name="{name}"[^>]*>\n?(.*?)</textarea>', page, re.S)
    assert m, f"no field {name!r} in the page"
    return html.unescape(m.group(1))


def field_error(page: str, name: str) -> str:
    """The text of the error block next to field `name` ("" when there is none)."""
    m = re.search(rf'<div id="{name}-error">(.*?)</div>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))) if m else ""


def problem(page: str) -> str:
    """The page's alert banner text ("" when there is none)."""
    m = re.search(r'role="alert"[^>]*>(.*?)</div>', page, re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split()) if m else ""


def count_rows(db: Path) -> int:
    """Rows in the recipes table, read straight from the SQLite file (not through the site)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:  # sqlite3's own `with` does not close
        return conn.execute("SELECT count(*) FROM recipes").fetchone()[0]


RECIPE = {
    "title": "Lentil soup",
    "author": "Ada",
    "ingredients": ["200 g red lentils", "1 onion", "1 l stock"],
    "steps": "Sweat the onion.\nAdd lentils and stock.\nSimmer 20 minutes.",
}


def form_fields(recipe: dict | None = None, **overrides: str) -> dict[str, str]:
    """A recipe as the HTML form sends it: ingredients one per line (CRLF, as browsers send)."""
    r = {**RECIPE, **(recipe or {})}
    fields = {
        "title": r["title"],
        "author": r["author"],
        "ingredients": "\r\n".join(r["ingredients"]),
        "steps": r["steps"].replace("\n", "\r\n"),
    }
    fields.update(overrides)
    return fields

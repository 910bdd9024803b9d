"""The proxy's admin listener, after Envoy's admin API (and istiod's push for POST /routes).

- GET  /stats/prometheus: Istio's metrics, Prometheus text format 0.0.4;
- GET  /ready: 200 "LIVE" once the listeners are up with a route table (Envoy's /ready answers
  "LIVE" in state LIVE, 503 with the state name before);
- GET  /config_dump: the current route table as JSON;
- POST /routes: a new route table (RouteTable JSON). It is parsed and checked first, then
  installed atomically (localmesh.state.ProxyState.swap): 200 {"version": ...}; a bad table gets
  400 {"error": ...} and the running table stays.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httptools

from localmesh.http1 import DATE, REASONS
from localmesh.state import ProxyState

MAX_BODY = 16 * 1024 * 1024
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class BadTable(ValueError):
    """A pushed route table that cannot be installed; the message says why."""


def check_table(state: ProxyState, table: Any) -> None:
    """Reject a table meant for another proxy, or one the decision functions cannot use."""
    current = state.table.proxy
    if table.proxy.name != current.name or table.proxy.namespace != current.namespace:
        raise BadTable(
            f"this route table is for {table.proxy.name}.{table.proxy.namespace}, but this proxy is "
            f"{current.name}.{current.namespace}"
        )
    try:
        if state.role == "gateway":
            state.decide_ingress(table, "localmesh-probe.invalid", "/")
        else:
            state.decide_outbound(table, "localmesh-probe.invalid", 80, "http")
            state.decide_outbound(table, "localmesh-probe.invalid", 443, "tcp")
    except Exception as exc:
        raise BadTable(f"the route table cannot route a request: {type(exc).__name__}: {exc}") from exc


class Admin(asyncio.Protocol):
    """A small HTTP/1.1 server for the admin endpoints (one request at a time per connection)."""

    def __init__(self, state: ProxyState, parse_table: Callable[[str], Any]) -> None:
        self.state = state
        self.parse_table = parse_table
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"text/plain", b"Bad Request", close=True)

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        state = self.state
        if path == b"/stats/prometheus" and method in (b"GET", b"HEAD"):
            self._send(200, PROMETHEUS_TYPE, state.telemetry.exposition().encode())
        elif path == b"/ready" and method in (b"GET", b"HEAD"):
            if state.ready:
                self._send(200, b"text/plain", b"LIVE\n")
            else:
                self._send(503, b"text/plain", b"PRE_INITIALIZING\n")
        elif path == b"/config_dump" and method == b"GET":
            self._send(200, b"application/json", state.table.to_json().encode())
        elif path == b"/routes" and method == b"POST":
            self._push()
        else:
            self._send(
                404,
                b"text/plain",
                b"unknown admin path; try /stats/prometheus, /ready, /config_dump or POST /routes\n",
            )

    def _push(self) -> None:
        if self.size > MAX_BODY:
            self._json(413, {"error": f"route table larger than {MAX_BODY} bytes"})
            return
        try:
            text = b"".join(self.body).decode("utf-8")
            table = self.parse_table(text)
            check_table(self.state, table)
        except (UnicodeDecodeError, BadTable) as exc:
            self._json(400, {"error": str(exc)})
            return
        except Exception as exc:  # whatever the table parser raises for a bad document
            self._json(400, {"error": f"invalid route table: {type(exc).__name__}: {exc}"})
            return
        self.state.swap(table)
        self._json(200, {"version": table.version})

    def _json(self, code: int, payload: dict) -> None:
        self._send(code, b"application/json", json.dumps(payload).encode() + b"\n")

    def _send(self, code: int, content_type: bytes, body: bytes, close: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        close = close or not self.keep_alive
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ndate: %s\r\nserver: envoy\r\n"
            % (
                code,
                REASONS.get(code, b"Unknown"),
                content_type,
                len(body),
                DATE.get(),
            )
        )
        if close:
            head += b"connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()

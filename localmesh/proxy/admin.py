"""The proxy's admin listener, after Envoy's admin API (and istiod's push for POST /routes).

- GET  /stats/prometheus: Istio's metrics, Prometheus text format 0.0.4;
- GET  /ready: 200 "LIVE" once the listeners are up with a route table (Envoy's /ready answers
  "LIVE" in state LIVE, 503 with the state name before);
- GET  /config_dump: the current route table as JSON (its version included; no secret);
- POST /routes: a new route table (RouteTable JSON). It is parsed and checked first, then
  installed atomically (localmesh.proxy.state.ProxyState.swap): 200 {"version": ...}; a bad table gets
  400 {"error": ...} and the running table stays.

Reads are open, as Envoy's admin port is. Writes are not: Envoy's admin cannot change routes at all
(https://www.envoyproxy.io/docs/envoy/latest/operations/admin), its config comes from istiod over an
authenticated channel. Here a push must carry the stack's
credential (`Authorization: Bearer <token>`, the token from the 0600 file `--admin-token-file` names),
compared in constant time; without it: 401 (no credential) or 403 (a wrong one), and nothing changes.
A proxy started without a token file takes no push at all.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import cast

import httptools

from localmesh.pilot.routes import RouteTable, decide_ingress, decide_outbound
from localmesh.proxy.http1 import DATE, REASONS
from localmesh.proxy.state import ProxyState

MAX_BODY = 16 * 1024 * 1024
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class BadTable(ValueError):
    """A pushed route table that cannot be installed; the message says why."""


def check_table(state: ProxyState, table: RouteTable) -> None:
    """Reject a table meant for another proxy, or one the decision functions cannot use."""
    current = state.table.proxy
    if table.proxy.name != current.name or table.proxy.namespace != current.namespace:
        raise BadTable(
            f"this route table is for {table.proxy.name}.{table.proxy.namespace}, but this proxy is "
            f"{current.name}.{current.namespace}"
        )
    try:
        if state.role == "gateway":
            decide_ingress(table, "localmesh-probe.invalid", "/")
        else:
            decide_outbound(table, "localmesh-probe.invalid", 80, "http")
            decide_outbound(table, "localmesh-probe.invalid", 443, "tcp")
    except Exception as exc:
        raise BadTable(f"the route table cannot route a request: {type(exc).__name__}: {exc}") from exc


class Admin(asyncio.Protocol):
    """A small HTTP/1.1 server for the admin endpoints (one request at a time per connection)."""

    def __init__(self, state: ProxyState, token: bytes | None = None) -> None:
        self.state = state
        self.token = token
        self.authorization: bytes | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"text/plain", b"Bad Request", close=True)

    def on_message_begin(self) -> None:
        self.authorization = None
        self.url = b""
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        # Only a push with the credential is kept: nobody else makes the proxy hold 16 MiB.
        if self.size <= MAX_BODY and self._credential_ok():
            self.body.append(body)

    def _credential_ok(self) -> bool:
        return (
            self.token is not None
            and self.authorization is not None
            and hmac.compare_digest(self.authorization, b"Bearer " + self.token)
        )

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
            if self._authorized():
                self._push()
        else:
            self._send(
                404,
                b"text/plain",
                b"unknown admin path; try /stats/prometheus, /ready, /config_dump or POST /routes\n",
            )

    def _authorized(self) -> bool:
        """True when the push carries the stack's credential; otherwise answer 401 or 403."""
        fix = (
            "config is pushed with `make apply` (`.venv/bin/localmesh apply`), "
            "which sends the stack's credential"
        )
        if self.token is None:
            self._json(
                403, {"error": f"this proxy takes no route push (started without --admin-token-file); {fix}"}
            )
            return False
        if self.authorization is None:
            self._json(
                401,
                {"error": f"POST /routes needs the stack's credential (Authorization: Bearer); {fix}"},
                b'www-authenticate: Bearer realm="localmesh admin"\r\n',
            )
            return False
        if not self._credential_ok():
            self._json(403, {"error": f"wrong credential for POST /routes; {fix}"})
            return False
        return True

    def _push(self) -> None:
        if self.size > MAX_BODY:
            self._json(413, {"error": f"route table larger than {MAX_BODY} bytes"})
            return
        try:
            text = b"".join(self.body).decode("utf-8")
            table = RouteTable.from_json(text)
            check_table(self.state, table)
        except (UnicodeDecodeError, BadTable) as exc:
            self._json(400, {"error": str(exc)})
            return
        except Exception as exc:  # whatever the table parser raises for a bad document
            self._json(400, {"error": f"invalid route table: {type(exc).__name__}: {exc}"})
            return
        self.state.swap(table)
        self._json(200, {"version": table.version})

    def _json(self, code: int, payload: dict[str, object], extra: bytes = b"") -> None:
        self._send(code, b"application/json", json.dumps(payload).encode() + b"\n", extra=extra)

    def _send(
        self, code: int, content_type: bytes, body: bytes, close: bool = False, extra: bytes = b""
    ) -> None:
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
        self.transport.write(head + extra + b"\r\n" + body)
        if close:
            self.transport.close()

"""Fixtures for idgen's tests: stand-in upstreams (stdlib HTTP servers in threads) and idgen itself
under gunicorn, all on free 127.0.0.1 ports.

The stand-ins play what idgen meets in the mesh: httpbin, a sidecar that blocks egress (502, empty
body, `server: envoy`), upstreams that hang, break or answer garbage, and an HTTP proxy (the local
sidecar's outbound port) that records the request lines it is sent.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from idgen.app import create_app
from localmesh.stack.procs import Child, free_port, running

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
GUNICORN_CONF = ROOT / "idgen" / "gunicorn.conf.py"

# Every spelling requests reads a proxy from. Tests start from none of them, so a proxy set on the
# machine running the tests can never carry their traffic off 127.0.0.1.
PROXY_VARS = [
    f(name) for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for f in (str.lower, str.upper)
]


# --- stand-in upstreams ------------------------------------------------------------------------


def _send(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, server: str = "stub", **headers: str
) -> None:
    handler.server_header = server  # type: ignore[attr-defined]
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _json(handler: BaseHTTPRequestHandler, data: Any, status: int = 200) -> None:
    _send(handler, status, json.dumps(data).encode(), **{"Content-Type": "application/json"})


def _hang(handler: BaseHTTPRequestHandler) -> None:
    handler.server.release.wait(30)  # type: ignore[attr-defined]
    _json(handler, {"uuid": str(uuid.uuid4())})


def _stall_body(handler: BaseHTTPRequestHandler) -> None:
    # Headers promise 60 bytes, 10 arrive, then nothing: the read timeout must also cover the body.
    handler.server_header = "stub"  # type: ignore[attr-defined]
    handler.send_response(200)
    handler.send_header("Content-Length", "60")
    handler.end_headers()
    handler.wfile.write(b'{"uuid": "')
    handler.wfile.flush()
    handler.server.release.wait(30)  # type: ignore[attr-defined]
    handler.close_connection = True


def _drop(handler: BaseHTTPRequestHandler) -> None:
    handler.close_connection = True  # close without a byte of answer


# Path -> what the stand-in answers. The paths are what tests put in UPSTREAM_URL.
BEHAVIOURS: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
    "/uuid": lambda h: _json(h, {"uuid": str(uuid.uuid4())}),
    "/uuid-upper": lambda h: _json(h, {"uuid": str(uuid.uuid4()).upper()}),
    # Istio's sidecar when REGISTRY_ONLY sends the call to BlackHoleCluster.
    "/blackhole": lambda h: _send(h, 502, b"", server="envoy"),
    "/bad-gateway": lambda h: _send(h, 502, b"", server="nginx"),
    "/envoy-502-with-body": lambda h: _send(h, 502, b"upstream reset", server="envoy"),
    "/envoy-503": lambda h: _send(h, 503, b"no healthy upstream", server="envoy"),
    "/server-error": lambda h: _send(h, 500, b"<h1>Internal Server Error</h1>"),
    "/not-found": lambda h: _send(h, 404, b"not here"),
    "/redirect": lambda h: _send(h, 302, b"", Location="http://elsewhere.invalid/uuid"),
    "/garbage": lambda h: _send(h, 200, b"<html>\x00\xff not json</html>"),
    "/not-a-uuid": lambda h: _json(h, {"uuid": "not-a-uuid"}),
    "/uuid1": lambda h: _json(h, {"uuid": str(uuid.uuid1())}),
    "/uuid-braces": lambda h: _json(h, {"uuid": "{" + str(uuid.uuid4()) + "}"}),
    "/uuid-number": lambda h: _json(h, {"uuid": 12345}),
    "/no-uuid-key": lambda h: _json(h, {"id": str(uuid.uuid4())}),
    "/json-list": lambda h: _json(h, [str(uuid.uuid4())]),
    "/huge": lambda h: _send(h, 200, b'{"uuid": "' + b"x" * 100_000 + b'"}'),
    "/hang": _hang,
    "/stall-body": _stall_body,
    "/drop": _drop,
}


@dataclass
class Seen:
    """One request a stand-in received."""

    requestline: str
    headers: dict[str, str]
    client_port: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so idgen's connection pooling is exercised
    # Headers and body leave in two writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK (40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True
    timeout = 10  # idle keep-alive connections end on their own

    def version_string(self) -> str:  # the Server header
        return getattr(self, "server_header", "stub")

    def do_GET(self) -> None:
        server: Stub = self.server.stub  # type: ignore[attr-defined]
        server.record(Seen(self.requestline, dict(self.headers.items()), self.client_address[1]))
        # A proxy is sent the absolute form (GET http://httpbin.org/uuid): route on its path.
        path = urlsplit(self.path).path
        behaviour = BEHAVIOURS.get(server.fixed or path) or (lambda h: _send(h, 404, b"no such stub path"))
        behaviour(self)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # idgen hanging up on a stand-in (a timeout, an answer too big) is the point of those
        # tests, not an error; anything else is still printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Stub:
    """A stdlib HTTP server in a thread: BEHAVIOURS by path, or one fixed behaviour for every path."""

    fixed: str | None = None  # a BEHAVIOURS path to answer every request with
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.stub = self  # type: ignore[attr-defined]
        self.httpd.release = threading.Event()  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # shutdown() returns at the next poll: a short interval keeps each test's teardown short.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.01,), name=f"stub-{self.port}", daemon=True
        )
        self._thread.start()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def requests_seen(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while len(self.requests_seen()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.requests_seen()

    def stop(self) -> None:
        self.httpd.release.set()  # type: ignore[attr-defined]  # free any handler held in _hang
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def make_stub() -> Iterator[Callable[..., Stub]]:
    """Start stand-ins on demand: make_stub() routes by path; make_stub("/blackhole") answers every
    request that way, whatever its path (a sidecar or proxy). All are stopped after the test."""
    stubs: list[Stub] = []

    def make(fixed: str | None = None) -> Stub:
        stubs.append(Stub(fixed))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.stop()


@pytest.fixture
def stub(make_stub: Callable[..., Stub]) -> Stub:
    return make_stub()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (free a moment ago): connecting to it is refused."""
    return free_port()


@pytest.fixture
def full_backlog_port() -> Iterator[int]:
    """A port whose listen queue is full, so new connections hang in SYN_SENT: a connect timeout
    without sending anything off the machine. Linux drops SYNs to a full accept queue
    (tcp_abort_on_overflow=0, the default); where a kernel answers otherwise, the test is skipped."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.socket()
            sock.settimeout(0.2)
            fillers.append(sock)
            try:
                sock.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # the queue is full: this connect hung
        else:
            pytest.skip("this kernel accepts connections beyond the listen backlog; no local connect timeout")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


# --- idgen in-process (Flask test client) -----------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process apps read HTTP_PROXY from this process's environment: start every test without one."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app(stub: Stub) -> Flask:
    """idgen with its upstream on the path-routed stand-in (tests point UPSTREAM_URL at a path)."""
    return create_app({"TESTING": True, "UPSTREAM_URL": f"{stub.url}/uuid", "UPSTREAM_READ_TIMEOUT": 0.5})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def app_for(stub: Stub) -> Callable[..., Flask]:
    """create_app pointed at one stand-in path (or any URL), with short timeouts."""

    def make(path_or_url: str, **config: Any) -> Flask:
        url = path_or_url if "://" in path_or_url else f"{stub.url}{path_or_url}"
        settings = {"UPSTREAM_URL": url, "UPSTREAM_CONNECT_TIMEOUT": 0.5, "UPSTREAM_READ_TIMEOUT": 0.5}
        return create_app({"TESTING": True, **settings, **config})

    return make


# --- idgen under gunicorn ---------------------------------------------------------------------


@dataclass
class Idgen:
    """A running idgen: its base URL, its log, and its process."""

    url: str
    log: Path
    child: Child

    def log_lines(self) -> list[dict[str, Any]]:
        """idgen's JSON request lines (gunicorn's own lines are plain text and skipped)."""
        lines = []
        for text in self.log.read_text().splitlines():
            if text.startswith("{"):
                lines.append(json.loads(text))
        return lines

    def other_lines(self) -> list[str]:
        return [t for t in self.log.read_text().splitlines() if not t.startswith("{")]


@pytest.fixture
def start_idgen(tmp_path: Path) -> Iterator[Callable[..., Idgen]]:
    """Start idgen exactly as `make run-idgen` does (gunicorn -c idgen/gunicorn.conf.py), with
    UPSTREAM_URL and any other env given; stopped by PID after the test."""
    with contextlib.ExitStack() as stack:

        def start(upstream_url: str, **env: str) -> Idgen:
            port = free_port()
            full_env = {"HOST": "127.0.0.1", "PORT": str(port), "UPSTREAM_URL": upstream_url, **env}
            # procs.spawn passes on os.environ, from which _no_proxy_env removed every proxy
            # variable: a test that wants a proxy passes it here.
            cmd = [str(GUNICORN), "-c", str(GUNICORN_CONF), "idgen.app:create_app()"]
            log = tmp_path / f"idgen-{port}.log"
            child = stack.enter_context(
                running("idgen", cmd, f"http://127.0.0.1:{port}/healthz", log, full_env)
            )
            return Idgen(f"http://127.0.0.1:{port}", log, child)

        yield start


@pytest.fixture(scope="session")
def http() -> requests.Session:
    """The tests' own HTTP client: never through a proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    # No kept-alive connections to idgen: gunicorn lingers up to 2 s on them when it stops.
    session.headers["Connection"] = "close"
    return session

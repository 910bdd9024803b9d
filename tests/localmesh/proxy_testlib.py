"""Support for the proxy tests: route tables from manifests/, a proxy on a background event loop,
a scriptable upstream app, a TCP echo server, raw-socket HTTP helpers and metric lookups.

Everything listens on 127.0.0.1 free ports; every server is stopped by the test that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import uvloop

from localmesh.mesh.load import load_kustomization
from localmesh.mesh.model import parse
from localmesh.pilot import routes
from localmesh.proxy.accesslog import AccessLog
from localmesh.proxy.server import GATEWAY, INBOUND, OUTBOUND, Endpoint, ProxyServer
from localmesh.proxy.state import Listener, ProxyState, Timeouts
from localmesh.stack.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
IDGEN_FQDN = "idgen.recipes.svc.cluster.local"
# The push credential the test proxies take (the stack makes a random one per `up`).
ADMIN_TOKEN = "test-push-credential"


def tables(overlay: str, addresses: dict[str, tuple[str, int]]) -> dict[str, routes.RouteTable]:
    """The route tables localmesh would push for manifests/overlays/<overlay>."""
    state, _ = parse(load_kustomization(ROOT / "manifests" / "overlays" / overlay))
    return routes.build_tables(state, addresses)


def with_addresses(table: routes.RouteTable, addresses: dict[str, tuple[str, int]]) -> routes.RouteTable:
    return replace(table, addresses={**table.addresses, **addresses})


# --- the proxy on a background loop ------------------------------------------------------------


class BackgroundProxy:
    """A ProxyServer (gateway or sidecar) on its own uvloop thread, on free ports."""

    def __init__(
        self,
        role: str,
        table: routes.RouteTable,
        app: tuple[str, int] | None = None,
        timeouts: Timeouts | None = None,
        http10: bool = False,
        access_log=None,
    ) -> None:
        self.role = role
        self.admin_port = free_port()
        if role == "gateway":
            self.listen_port = free_port()
            gateway = Listener("gateway", GATEWAY.server, http10)
            listeners = [(gateway, Endpoint("--listen", "127.0.0.1", self.listen_port))]
        else:
            self.inbound_port = free_port()
            self.outbound_port = free_port()
            listeners = [
                (
                    Listener("inbound", INBOUND.server, http10),
                    Endpoint("--inbound", "127.0.0.1", self.inbound_port),
                ),
                (
                    Listener("outbound", OUTBOUND.server, http10),
                    Endpoint("--outbound", "127.0.0.1", self.outbound_port),
                ),
            ]
        self.state = ProxyState(
            role,
            table,
            app=app,
            timeouts=timeouts or Timeouts(),
            access_log=AccessLog(access_log) if access_log is not None else None,
        )
        self.server = ProxyServer(
            self.state,
            listeners,
            Endpoint("--admin", "127.0.0.1", self.admin_port),
            ADMIN_TOKEN.encode(),
        )
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def metrics(self) -> str:
        return http_get(self.admin_port, "/stats/prometheus")[2].decode()


class ProxyProcess:
    """`python -m localmesh.proxy` as a child process on free ports, offline (loopback only), for
    tests that measure the process (RSS) or must not share an event loop with the test."""

    def __init__(
        self, role: str, table: routes.RouteTable, app: tuple[str, int] | None = None, extra: tuple = ()
    ) -> None:
        self.role = role
        self.table = table
        self.admin_port = free_port()
        self.listen_port = self.inbound_port = self.outbound_port = 0
        self.args = ["--role", role, "--admin", f"127.0.0.1:{self.admin_port}", "--offline", *extra]
        if role == "gateway":
            self.listen_port = free_port()
            self.args += ["--listen", f"127.0.0.1:{self.listen_port}"]
        else:
            self.inbound_port, self.outbound_port = free_port(), free_port()
            self.args += [
                "--inbound",
                f"127.0.0.1:{self.inbound_port}",
                "--outbound",
                f"127.0.0.1:{self.outbound_port}",
                "--app",
                f"{app[0]}:{app[1]}",
            ]
        self.dir = tempfile.TemporaryDirectory(prefix="localmesh-proxy-test-")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ProxyProcess:
        routes_file = Path(self.dir.name) / "routes.json"
        routes_file.write_text(self.table.to_json())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localmesh.proxy", "--routes", str(routes_file), *self.args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(self.admin_port, "/ready")[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"proxy {self.args} did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.dir.cleanup()

    def rss_kb(self) -> int:
        """Resident memory of the proxy process now (VmRSS from /proc)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))

    def metrics(self) -> str:
        return http_get(self.admin_port, "/stats/prometheus")[2].decode()


# --- a scriptable upstream app ----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK (40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _AppServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a response to HEAD has no body (RFC 9110 9.3.2)
            self.wfile.write(body)

    def _handle(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self._body()
        app.record(self)
        if url.path == "/echo":
            payload = {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
            }
            self._send(200, json.dumps(payload).encode(), {"content-type": "application/json"})
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"alpha-", b"beta-", b"gamma"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/slow":
            time.sleep(float(query.get("s", ["1"])[0]))
            self._send(200, b"slow")
        elif url.path.startswith("/status/"):
            self._send(int(url.path.rsplit("/", 1)[1]), b"")
        elif "status" in query:
            # Any path (the gateway routes /id only) answers with the status asked for.
            self._send(int(query["status"][0]), b"")
        elif url.path == "/drop":
            # Close the connection without answering.
            self.close_connection = True
        elif url.path == "/unframed":
            # No content-length, no chunking: the body ends when the connection does.
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close")
            self.close_connection = True
        else:
            self._send(200, b"hello", {"server": "testapp", "x-app": "1"})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _AppServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        # The proxy hanging up on the app (a client that left, a timeout) is what those tests
        # do, not an error; anything else is still printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class App:
    """An HTTP/1.1 app on 127.0.0.1 that records what it receives (paths, headers, client ports)."""

    def __init__(self) -> None:
        self.server = _AppServer(("127.0.0.1", 0), _Handler)
        self.server.app = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        # shutdown() returns at the next poll: a short interval keeps each test's teardown short.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append(
                {
                    "path": handler.path,
                    "client_port": handler.client_address[1],
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                }
            )

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __enter__(self) -> App:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoServer:
    """A TCP server that sends back what it receives (the far end of a CONNECT tunnel)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def closed_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    return free_port()


# --- raw HTTP over sockets ------------------------------------------------------------------------


class Client:
    """A client socket with a read buffer, so pipelined responses can be read one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        if self.buffer:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
            return data
        return self.sock.recv(size)

    def unread(self, data: bytes) -> None:
        self.buffer = data + self.buffer

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)


@contextlib.contextmanager
def connect(port: int, timeout: float = 10.0) -> Iterator[Client]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield Client(sock)
    finally:
        sock.close()


def read_response(sock: Client, head_request: bool = False) -> tuple[int, dict[str, str], bytes, bytes]:
    """Read one response: (status, headers with lower-case names, body, raw bytes); the bytes after
    it stay in the client's buffer for the next call."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed before a full response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = head + b"\r\n\r\n"
    if head_request or status in (204, 304) or 100 <= status < 200:
        sock.unread(rest)
        return status, headers, b"", raw
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed in the middle of a body")
            rest += data
        sock.unread(rest[length:])
        return status, headers, rest[:length], raw + rest[:length]
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        wire = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            line, _, rest = rest.partition(b"\r\n")
            size = int(line, 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body += rest[:size]
            wire += line + b"\r\n" + rest[: size + 2]
            rest = rest[size + 2 :]
            if size == 0:
                sock.unread(rest)
                return status, headers, body, raw + wire
    while data := sock.recv(65536):
        rest += data
    return status, headers, rest, raw + rest


def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send raw request bytes on a new connection and read one response."""
    with connect(port, timeout) as sock:
        sock.sendall(request)
        return read_response(sock, head_request=request.startswith(b"HEAD "))


def http_get(port: int, path: str, host: str = "localhost") -> tuple[int, dict[str, str], bytes]:
    status, headers, body, _ = exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    return status, headers, body


def http_post(
    port: int, path: str, body: bytes, token: str | None = ADMIN_TOKEN
) -> tuple[int, dict[str, str], bytes]:
    """POST body (to an admin port: with the push credential unless token is None)."""
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    status, headers, data, _ = exchange(port, request)
    return status, headers, data


def closed_by_peer(sock: Client, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (EOF or reset) within timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- metrics ------------------------------------------------------------------------------------

# Istio's default text format (istio pilot/pkg/model/telemetry_logging.go EnvoyTextLogFormat), with the
# values an Istio sidecar writes for each egress option.
ISTIO_LINE = re.compile(
    r'\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(?P<request>[^"]*)" '
    r"(?P<code>\d+) (?P<flags>\S+) "
    r'(?P<details>\S+) - "-" (?P<received>\d+) (?P<sent>\d+) \d+ (?P<service_time>\S+) '
    r'"(?P<xff>[^"]*)" "(?P<ua>[^"]*)" '
    r'"(?P<rid>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream>[^"]*)" (?P<cluster>\S+) - '
    r"(?P<local>\S+) (?P<remote>\S+) - (?P<route>\S+)"
)

_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of a metric name: (labels, value)."""
    out = []
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match and match["name"] == name:
            labels = dict(_LABEL.findall(match["labels"] or ""))
            out.append((labels, float(match["value"])))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(v for lbls, v in samples(text, name) if all(lbls.get(k) == want for k, want in labels.items()))


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll until predicate() is truthy (metrics of a closing connection land a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def metrics_when(proxy: BackgroundProxy, name: str, timeout: float = 5.0, **labels: str) -> str:
    """The proxy's metrics once a series of `name` with `labels` is non-zero (or after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        text = proxy.metrics()
        if value(text, name, **labels) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)

"""One call to the UUID API (httpbin's /uuid shape), with every way it can go wrong given a name.

The error codes and statuses are idgen's contract with the frontend (frontend/recipesite/idgen_client.py
reads them): egress_blocked 502, upstream_error 502, bad_upstream_response 502,
upstream_unreachable 503, upstream_timeout 504.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
import requests.utils
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProxyError as Urllib3ProxyError

# httpbin answers about 53 bytes; anything much bigger is not a UUID answer, and reading it whole
# would let a broken upstream fill idgen's memory.
MAX_BODY_BYTES = 64 * 1024

# The canonical 8-4-4-4-12 form only: uuid.UUID() alone also takes braces, "urn:uuid:" and bare hex.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

STATUS = {
    "egress_blocked": 502,
    "upstream_error": 502,
    "bad_upstream_response": 502,
    "upstream_unreachable": 503,
    "upstream_timeout": 504,
}


class UpstreamFailure(Exception):
    """The call for a UUID failed; code and message say how, in the contract's terms."""

    def __init__(self, code: str, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS[code]
        self.message = message
        self.upstream_status = upstream_status

    def to_json(self, upstream_host: str) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message, "upstream": upstream_host}
        if self.upstream_status is not None:
            body["upstream_status"] = self.upstream_status
        return body


class Fetched(NamedTuple):
    id: str
    upstream_status: int


class UpstreamClient:
    """Fetches UUIDs from one URL over pooled connections, one requests.Session per thread.

    Why per thread: requests does not promise that a Session is thread-safe (psf/requests#2766:
    cookie jar, adapters and redirect state are shared mutable objects), and gunicorn's gthread
    workers run several requests at once in one process. A thread-local Session keeps its own
    connection pool, reused for every request that thread serves, so there is still one
    keep-alive connection per thread rather than one per request.
    """

    def __init__(self, url: str, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()

    def session(self) -> requests.Session:
        """This thread's Session, created on first use."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # trust_env (the default) stays on: HTTP_PROXY/NO_PROXY are honoured exactly as requests
            # does. In the local mesh HTTP_PROXY is how idgen reaches its sidecar.
            session.trust_env = True
            # One request at a time per thread: a small pool is enough. max_retries=0 (requests'
            # default, spelled out): a retry would double the wait on a hanging upstream, and the
            # mesh's metrics should count each call once.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update({"Accept": "application/json", "User-Agent": "idgen/0.1"})
            self._local.session = session
        return session

    def fetch(self, forwarded: Mapping[str, str] | None = None) -> Fetched:
        """One UUID from the upstream, or UpstreamFailure saying what went wrong.
        forwarded: the request ID and trace headers of the request being served (tracing.py)."""
        try:
            with self.session().get(
                self.url,
                headers=forwarded,
                timeout=(self.connect_timeout, self.read_timeout),
                stream=True,  # to cap how much of the body is read
                allow_redirects=False,  # a redirect is reported, not followed to some other host
            ) as resp:
                body = _read_capped(resp)
                status, server = resp.status_code, resp.headers.get("server", "")
        except requests.exceptions.RequestException as exc:
            raise self._failure_from_exception(exc) from exc
        return Fetched(self._uuid_from_answer(status, server, body), status)

    def _uuid_from_answer(self, status: int, server: str, body: bytes) -> str:
        if status == 502 and not body and server.lower() == "envoy":
            # What an Istio sidecar answers when REGISTRY_ONLY sends the call to BlackHoleCluster:
            # a direct 502 with no body. Its outbound listeners name themselves "envoy" and
            # overwrite the server header (istio/istio pilot/pkg/networking/util/proxy_headers.go:
            # outbound ServerName "" = Envoy's default "envoy", ServerHeaderTransformation OVERWRITE).
            raise UpstreamFailure(
                "egress_blocked",
                f"The mesh's egress policy blocked idgen's call to {self.host}: its sidecar answered 502 "
                f"with an empty body, which is how Istio answers a call to a host outside the service "
                f"registry when outboundTrafficPolicy is REGISTRY_ONLY (BlackHoleCluster). To allow it, "
                f"add a ServiceEntry for {self.host} (manifests/overlays/serviceentry) or set the "
                f"outbound traffic policy to ALLOW_ANY (manifests/overlays/passthrough).",
                upstream_status=status,
            )
        if status != 200:
            kind = "a redirect" if 300 <= status < 400 else "an error" if status >= 400 else "an answer"
            raise UpstreamFailure(
                "upstream_error",
                f"{self.host} answered {status} ({kind}, not a UUID){_snippet(body)}.",
                upstream_status=status,
            )
        try:
            data = json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            raise UpstreamFailure(
                "bad_upstream_response",
                f"{self.host} answered 200 but not with JSON{_snippet(body)}.",
                upstream_status=status,
            ) from None
        value = data.get("uuid") if isinstance(data, dict) else None
        parsed = _parse_uuid4(value)
        if parsed is None:
            raise UpstreamFailure(
                "bad_upstream_response",
                f'{self.host} answered 200 but its "uuid" is not a version-4 UUID{_snippet(body)}.',
                upstream_status=status,
            )
        return parsed

    def _failure_from_exception(self, exc: requests.exceptions.RequestException) -> UpstreamFailure:
        causes = list(_causes(exc))

        def has(*types: type[BaseException]) -> bool:
            return any(isinstance(c, types) for c in causes)

        target = f"{self.host}:{self.port}"
        if isinstance(exc, requests.exceptions.ProxyError) or has(Urllib3ProxyError):
            target = f"the HTTP proxy {self._proxy()} (from HTTP_PROXY) on the way to {target}"
        # Order matters: urllib3's NameResolutionError is a NewConnectionError, which is a
        # ConnectTimeoutError (kept for backwards compatibility, see requests' adapters.py).
        if has(NameResolutionError):
            return UpstreamFailure(
                "upstream_unreachable", f"Could not connect to {target}: DNS lookup failed."
            )
        if has(NewConnectionError):
            reason = _os_reason(causes)
            return UpstreamFailure("upstream_unreachable", f"Could not connect to {target}: {reason}.")
        if isinstance(exc, requests.exceptions.ConnectTimeout) or has(ConnectTimeoutError):
            return UpstreamFailure(
                "upstream_timeout",
                f"No connection to {target} within {self.connect_timeout:g} s (UPSTREAM_CONNECT_TIMEOUT).",
            )
        if isinstance(exc, requests.exceptions.ReadTimeout) or has(ReadTimeoutError):
            # Also a stall while reading the body: requests raises that as ConnectionError(ReadTimeoutError).
            return UpstreamFailure(
                "upstream_timeout",
                f"{self.host} did not answer within {self.read_timeout:g} s (UPSTREAM_READ_TIMEOUT).",
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return UpstreamFailure("upstream_unreachable", f"TLS with {target} failed: {_os_reason(causes)}.")
        if isinstance(
            exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
        ):
            message = f"{self.host}'s answer broke off or could not be decoded."
            return UpstreamFailure("bad_upstream_response", message)
        if isinstance(exc, requests.exceptions.ConnectionError):
            return UpstreamFailure(
                "upstream_error", f"The connection to {target} broke before a complete answer arrived."
            )
        return UpstreamFailure("upstream_error", f"The call to {self.url} failed ({type(exc).__name__}).")

    def _proxy(self) -> str:
        """The proxy requests picks for the URL from the environment, without any credentials."""
        proxy = requests.utils.select_proxy(self.url, requests.utils.get_environ_proxies(self.url)) or "?"
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _read_capped(resp: requests.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(chunk_size=8192):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise UpstreamFailure(
                "bad_upstream_response",
                f"The upstream's answer is over {MAX_BODY_BYTES} bytes; a UUID answer is under 100.",
                upstream_status=resp.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_uuid4(value: object) -> str | None:
    """The UUID in canonical lowercase form, or None unless value is a canonical RFC 4122 version-4 UUID."""
    if not isinstance(value, str) or not _CANONICAL_UUID.fullmatch(value):
        return None
    parsed = uuid.UUID(value)
    if parsed.version != 4 or parsed.variant != uuid.RFC_4122:
        return None
    return str(parsed)


def _snippet(body: bytes, limit: int = 120) -> str:
    """': <first bytes of the body>' for messages (repr escapes control characters), or ''."""
    if not body:
        return " with an empty body"
    text = body[:limit].decode("utf-8", "replace")
    return f": {text!r}" + ("..." if len(body) > limit else "")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps: requests and urllib3 nest the real cause in args, reason and context."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        nested = [*err.args, getattr(err, "reason", None), getattr(err, "original_error", None)]
        nested += [err.__cause__, err.__context__]
        stack.extend(n for n in nested if isinstance(n, BaseException))


def _os_reason(causes: list[BaseException]) -> str:
    """The operating system's words for the failure ('connection refused'), else the exception's."""
    for err in causes:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror[0].lower() + err.strerror[1:]
    return str(causes[-1]) if causes else "unknown error"

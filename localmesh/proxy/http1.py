"""HTTP/1.1 wire details shared by the proxy's listeners: status lines, Envoy's local replies,
hop-by-hop headers, the Date header, authority parsing.

Envoy facts imitated here (envoy `source/common/http/http1/codec_impl.cc`, `conn_manager_impl.cc`,
`utility.cc` sendLocalReply):
- header names go out lower-case; the status text is Envoy's own table (CodeUtility::toString);
- a local reply with a body carries `content-length`, `content-type: text/plain`, `date`, `server`
  in that order; one without a body carries `date`, `server`, then the codec's `content-length: 0`;
- a reply that ends the connection adds `connection: close`.
"""

from __future__ import annotations

import time
from email.utils import formatdate

REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    411: b"Length Required",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# Hop-by-hop headers (RFC 7230 6.1) that a proxy must not forward; transfer-encoding and
# content-length framing is redone per hop. `te` other than "trailers" is dropped too.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    )
)

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def status_line(code: int, http10: bool = False) -> bytes:
    """`HTTP/1.1 502 Bad Gateway\\r\\n` (`HTTP/1.0` when answering an HTTP/1.0 request, as Envoy does)."""
    return (
        b"HTTP/1.0 %d %s\r\n" % (code, REASONS.get(code, b"Unknown"))
        if http10
        else (b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Unknown")))
    )


class HttpDate:
    """The Date header value, formatted at most once a second (as Envoy's cached DateProvider)."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


DATE = HttpDate()


def local_reply(
    code: int,
    body: bytes,
    server: bytes,
    close: bool = False,
    http10: bool = False,
    head: bool = False,
    extra: bytes = b"",
) -> bytes:
    """An Envoy local reply (sendLocalReply): exact header set and order, text/plain body if any.

    extra: header lines the connection manager adds last (x-envoy-decorator-operation inbound)."""
    parts = [status_line(code, http10)]
    if body:
        parts.append(b"content-length: %d\r\ncontent-type: text/plain\r\n" % len(body))
        parts.append(b"date: %s\r\nserver: %s\r\n%s" % (DATE.get(), server, extra))
    else:
        parts.append(b"date: %s\r\nserver: %s\r\n%scontent-length: 0\r\n" % (DATE.get(), server, extra))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(CRLF)
    if body and not head:
        parts.append(body)
    return b"".join(parts)


def split_authority(authority: bytes, default_port: int = 80) -> tuple[str, int]:
    """`host[:port]` (or `[v6]:port`) -> (host, port); a bad port raises ValueError."""
    text = authority.decode("latin-1").strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad authority {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, default_port
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host.lower(), port


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-case tokens of all Connection headers (the extra hop-by-hop headers they name)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


# Envoy refuses a Connection header that nominates 10 or more headers, an X-Forwarded-* header
# (removing it would hide where the request came from) or a pseudo-header, and a nominated `te`
# of 256 bytes or more (envoy source/common/http/utility.cc Utility::sanitizeConnectionHeader).
MAX_NOMINATED = 10
MAX_TE_VALUE = 256
UNREMOVABLE = frozenset((b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"))


def nominations_valid(values: list[bytes], te: bytes | None) -> bool:
    """Whether the Connection header values (and the request's `te`) pass Envoy's sanitizer."""
    tokens = [t.strip().lower() for value in values for t in value.split(b",")]
    tokens = [t for t in tokens if t]
    if len(tokens) >= MAX_NOMINATED:
        return False
    for token in tokens:
        if token in UNREMOVABLE or token[:1] == b":":
            return False
        if token == b"te" and te is not None and len(te) >= MAX_TE_VALUE:
            return False
    return True


def has_trailers(te: bytes) -> bool:
    """`te` names the `trailers` token: Envoy keeps `te: trailers` and drops any other value
    (envoy conn_manager_utility.cc sanitizeTEHeader; utility.cc sanitizeConnectionHeader)."""
    return any(t.strip().lower() == b"trailers" for t in te.split(b","))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)

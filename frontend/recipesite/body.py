"""Read a request body without ever holding more than the limit (64 KB) in memory."""

from __future__ import annotations

import flask
from werkzeug.exceptions import ClientDisconnected

# How much of a refused body is read and thrown away so the connection can serve the next request.
# gunicorn (27) drains at most 64 KB itself and otherwise closes the connection right after a response
# that announced keep-alive, so a client reusing it (requests, urllib3) gets "connection aborted" on its
# *next* request. Beyond this cap the site still reads nothing: a huge upload costs a closed connection.
DRAIN_MAX_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    """The body is over the limit: by its Content-Length, or by what actually arrived."""


class BodyIncomplete(Exception):
    """The body stopped before its end: the client went away, or the server cut a client that sent
    it too slowly (recipesite.server)."""


def read_limited(request: flask.Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as more than `limit` bytes are declared or received.

    Content-Length is checked first, so an announced 1 GB upload is refused without reading a byte.
    A chunked body has no length up front: it is read to at most limit + 1 bytes, enough to know.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    stream = request.stream
    while size <= limit:
        try:
            chunk = stream.read(min(65536, limit + 1 - size))
        except (ClientDisconnected, OSError) as err:  # werkzeug's, or gunicorn's NoMoreData (an OSError)
            raise BodyIncomplete from err
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise BodyTooLarge
    if length is not None and size < length:
        # gunicorn marks its input as terminated, so werkzeug does not check this; a short body
        # must not be parsed as if it were the whole one.
        raise BodyIncomplete
    request.environ["recipes.body_read"] = True
    return b"".join(chunks)


def body_left_unread(request: flask.Request) -> bool:
    """True when the client sent (or announced) a body that this request did not read to its end.

    functions-framework registers an after_request hook (read_request) that calls request.get_data() on
    every non-streamed response, reading the rest of the body into memory, however large. It skips
    streamed responses, so the site streams its answer whenever this is True.
    """
    if request.environ.get("recipes.body_read"):
        return False
    length = request.content_length
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def drain(request: flask.Request, max_bytes: int = DRAIN_MAX_BYTES) -> bool:
    """Read and discard the rest of a body whose Content-Length is at most max_bytes.

    True when the body is now fully read. Memory stays constant (64 KB at a time). A chunked body is
    never drained: its end is unknown, and a client that stops sending would hold this thread; gunicorn
    drains those itself with a deadline, or closes the connection.
    """
    length = request.content_length
    if length is None or length > max_bytes:
        return False
    stream = request.stream
    try:
        while stream.read(65536):
            pass
    except (ClientDisconnected, OSError):  # the body ended early: there is nothing left to drain
        return False
    request.environ["recipes.body_read"] = True
    return True

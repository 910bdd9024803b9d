"""The local server's gunicorn worker: gthread with deadlines for reading a request (see gunicorn.conf.py).

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives, and the
thread then blocks on the socket until the request head (and later the body the app reads) is in. A
client that trickles its headers or body a byte at a time ("slowloris") holds that thread for as
long as it likes; a few of them hold every thread, and the site stops answering, /healthz included.

This worker bounds both reads: the head must arrive within HEADER_TIMEOUT_S of the first byte, the
body within BODY_TIMEOUT_S of the head. A client past its deadline gets 408 and loses the connection.
It also sends a connection that has sent nothing yet back to the poller at once, where gthread would
hold a thread for up to 5 s waiting for its first byte. With enough threads for the slow clients a
machine sees at once (gunicorn.conf.py), a fast request always finds one free.

Only for the site served on this machine: deployed as a Cloud Function, Google's front end receives
whole requests before they reach functions-framework's server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any

from gunicorn.workers import gthread

# The head of a request: Envoy has no default here (request_headers_timeout is off), but a browser
# sends a whole head in one packet; 10 s covers a very slow link.
HEADER_TIMEOUT_S = 10.0
# The body: the site reads at most 64 KB, which even a 2 KB/s link sends in 30 s.
BODY_TIMEOUT_S = 30.0

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

log = logging.getLogger("gunicorn.error")


class DeadlineSocket:
    """A client socket whose reads end at a deadline: past it, recv() returns b"" (end of stream),
    as if the client had closed, so gunicorn and the app stop reading and the thread is freed.

    Everything else (fileno for the poller, send, close...) is the socket's own.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._deadline: float | None = None
        self._phase = ""
        self._cut = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def expire_in(self, seconds: float, phase: str) -> None:
        self._deadline = time.monotonic() + seconds
        self._phase = phase

    def recv(self, size: int, *flags: int) -> bytes:
        if self._deadline is None:
            return self._sock.recv(size, *flags)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return self._expired()
        prior = self._sock.gettimeout()  # gunicorn's own bounded reads (draining a body) set one
        self._sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                return self._expired()
            raise
        finally:
            self._sock.settimeout(prior)

    def _expired(self) -> bytes:
        if self._cut:
            return b""  # gunicorn's close reads once more
        self._cut = True
        log.info("closing a client that did not send its request %s in time", self._phase)
        if self._phase == "head":
            # No request yet, so nobody else will answer: 408, as Envoy does for a request timeout.
            with contextlib.suppress(OSError):
                self._sock.settimeout(0)
                self._sock.send(REQUEST_TIMEOUT)
            how = socket.SHUT_RDWR
        else:
            how = socket.SHUT_RD  # the app answers (recipesite.body.BodyIncomplete -> 408)
        # Shut down, not just "end of stream": gunicorn's graceful close would otherwise linger up to
        # 2 s reading what this client still trickles, in the worker's main loop.
        with contextlib.suppress(OSError):
            self._sock.shutdown(how)
        return b""


class DeadlineThreadWorker(gthread.ThreadWorker):
    """gthread whose request reads end at deadlines (DeadlineSocket). Written against gunicorn 27.0.1's
    gthread (pinned in frontend/requirements.txt): handle() runs in a thread per request,
    handle_request() once the head is parsed, and _DEFER hands a connection back to the poller."""

    def handle(self, conn: gthread.TConn) -> Any:
        if not conn.initialized:
            if not conn.data_ready and not conn.wait_for_data(0):
                return gthread._DEFER  # nothing sent yet: wait in the poller, not in a thread
            if not isinstance(conn.sock, DeadlineSocket):
                conn.sock = DeadlineSocket(conn.sock)  # before conn.init() builds the parser on it
        conn.sock.expire_in(HEADER_TIMEOUT_S, "head")
        return super().handle(conn)

    def handle_request(self, req: Any, conn: gthread.TConn) -> bool:
        conn.sock.expire_in(BODY_TIMEOUT_S, "body")
        return super().handle_request(req, conn)

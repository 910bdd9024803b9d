"""One structured (JSON) log line per request, on stderr.

This line is idgen's access log: it knows what gunicorn's access log cannot (the upstream's status
and idgen's error code), so gunicorn's own access log stays off (see gunicorn.conf.py) and each
request is logged exactly once.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from idgen import tracing

LOGGER_NAME = "idgen.request"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (as logging's lastResort does),
    so a test that captures stderr sees the lines, and the handler's lock keeps the lines of
    concurrent gthread threads whole."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def request_logger() -> logging.Logger:
    """The logger for request lines, set up once per process however many apps are created."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # Not to the root logger as well: that would print the line a second time wherever the
        # root logger has a handler (gunicorn's, pytest's).
        logger.propagate = False
    return logger


def note(**fields: Any) -> None:
    """Add fields (upstream_status, error, ...) to the current request's log line."""
    g.setdefault("log_fields", {}).update(fields)


def init_app(app: Flask) -> None:
    """Time every request and log it once, after its response is built (errors included)."""
    logger = request_logger()

    @app.before_request
    def _start_timer() -> None:
        g.log_start = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        start = g.get("log_start")
        fields = dict(g.get("log_fields", {}))
        error = fields.pop("error", None)
        # A failed upstream call is a warning (idgen did its job: it said what happened);
        # only idgen's own bug is an error.
        level = "error" if error == "internal_error" else "warning" if response.status_code >= 500 else "info"
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "msg": "request",
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "upstream_status": fields.pop("upstream_status", None),
            "duration_ms": round((time.perf_counter() - start) * 1000, 1) if start is not None else None,
            "error": error,
            # Envoy's request ID, when a sidecar or gateway set one: joins this line to the proxy's
            # and, passed on (tracing.py), to the upstream's. The trace ID joins it to the caller's.
            "request_id": request.headers.get(tracing.REQUEST_ID),
            "trace_id": tracing.trace_id(request.headers),
            **fields,
        }
        logger.info(json.dumps(line, separators=(",", ":")))
        return response

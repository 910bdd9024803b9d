"""idgen's Flask app: GET /id returns a UUID fetched from UPSTREAM_URL; /healthz and /readyz for probes.

Served by gunicorn:  gunicorn -c idgen/gunicorn.conf.py 'idgen.app:create_app()'
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from idgen import reqlog, settings, tracing
from idgen.upstream import UpstreamClient, UpstreamFailure

EXTENSION = "idgen.upstream"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. Settings come from the environment (see settings.DEFAULTS); keys in config
    override them, and any other Flask config keys in it (TESTING, ...) are applied as given."""
    app = Flask(__name__)
    overrides = dict(config or {})
    app.config.update(overrides)
    app.config.update(settings.validate({**settings.from_env(), **_known(overrides)}))
    app.json.sort_keys = False  # keep "error" first in error bodies: easier to read in a terminal

    cfg = app.config
    upstream = UpstreamClient(
        cfg["UPSTREAM_URL"], cfg["UPSTREAM_CONNECT_TIMEOUT"], cfg["UPSTREAM_READ_TIMEOUT"]
    )
    app.extensions[EXTENSION] = upstream
    reqlog.init_app(app)

    @app.get("/id")
    def new_id() -> tuple[Response, int]:
        reqlog.note(upstream=upstream.host)
        try:
            fetched = upstream.fetch(tracing.forward_headers(request.headers))
        except UpstreamFailure as failure:
            reqlog.note(upstream_status=failure.upstream_status, error=failure.code)
            return _no_store(jsonify(failure.to_json(upstream.host))), failure.status
        reqlog.note(upstream_status=fetched.upstream_status)
        return _no_store(jsonify(id=fetched.id)), 200

    # Probes never call the upstream: a blocked egress must not make the pod unready, or users
    # would see the gateway's "no healthy upstream" instead of the lesson.
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405 (keeps the Allow header), 400...: JSON like every other answer from idgen.
        response = exc.get_response()
        code = (exc.name or "error").lower().replace(" ", "_")
        response.data = jsonify(error=code, message=exc.description).get_data()
        response.content_type = "application/json"
        reqlog.note(error=code)
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        # A bug in idgen: a JSON 500, never a traceback in the answer; the traceback goes into
        # the request's log line.
        reqlog.note(error="internal_error", traceback="".join(traceback.format_exception(exc)))
        message = "idgen failed unexpectedly; its log has the details."
        return jsonify(error="internal_error", message=message), 500

    return app


def _known(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k in settings.DEFAULTS}


def _no_store(response: Response) -> Response:
    # Every answer from /id is meant once: no cache between idgen and the site may keep one.
    response.headers["Cache-Control"] = "no-store"
    return response

"""One request's identity across hops: the site's request ID, the trace headers it forwards to idgen,
and its JSON log line, so the site's, the proxies' and idgen's lines join on one ID.

As Istio's Bookinfo productpage does (istio/istio samples/bookinfo/src/productpage/productpage.py,
getForwardHeaders; istio.io docs/tasks/observability/distributed-tracing/overview): an application
copies x-request-id and the trace context headers of the request it serves onto each request it
makes. Istio's proxies create the spans; the application only carries the headers.

The site is often the edge (a browser calls it directly, or Google's front end, which sends
traceparent but no x-request-id). A request without x-request-id gets one here, as Envoy gives one
to every request that has none, so the site's own line has an ID and a site calling idgen directly
(IDGEN_URL at idgen itself) shares it with idgen and httpbin. Through Istio's ingress gateway the ID
is replaced: the gateway is the mesh's edge and sets its own (Istio leaves Envoy's
preserve_external_request_id off). Trace headers pass the gateway (a proxy with a tracer adds its span
but keeps the trace ID), so the trace_id field joins the site's line to idgen's there. The site starts
no trace itself: it records no spans, and a traceparent of its own would decide the mesh's sampling.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import flask
from werkzeug.datastructures import Headers

REQUEST_ID = "x-request-id"
# Keep in sync with idgen/tracing.py (a test compares them): the site and idgen are deployed apart.
FORWARDED = (
    REQUEST_ID,
    # W3C Trace Context
    "traceparent",
    "tracestate",
    # Zipkin B3, multi-header and single-header forms
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    # OpenTracing (Lightstep), as Bookinfo lists it
    "x-ot-span-context",
)

_write_lock = threading.Lock()


def ensure_request_id(request: flask.Request) -> None:
    """Give a request that arrived without x-request-id one (a random UUID, as Envoy's), as if the
    edge in front had set it: request.headers reads the WSGI environ, so every reader sees it."""
    if not request.environ.get("HTTP_X_REQUEST_ID"):
        request.environ["HTTP_X_REQUEST_ID"] = str(uuid.uuid4())


def forward_headers(headers: Headers) -> dict[str, str]:
    """The request ID and trace headers of an incoming request, to send on the requests it causes."""
    return {name: value for name in FORWARDED if (value := headers.get(name))}


def trace_id(headers: Headers) -> str | None:
    """The trace ID every hop of one trace shares (span IDs change from hop to hop): from traceparent
    (version-traceid-spanid-flags), else B3's x-b3-traceid, else the single b3 header
    (traceid-spanid[-sampled[-parentspanid]]; alone, "0" or "1" is only a sampling decision)."""
    for name, position, min_parts in (("traceparent", 1, 4), ("x-b3-traceid", 0, 1), ("b3", 0, 2)):
        parts = (headers.get(name) or "").split("-")
        if len(parts) >= min_parts and parts[position]:
            return parts[position]
    return None


def log_request(request: flask.Request, response: flask.Response, started: float) -> None:
    """The request's one JSON line on stderr (Cloud Logging reads such lines as structured logs)."""
    status = response.status_code
    line = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": "warning" if status >= 500 else "info",
        "msg": "request",
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "request_id": request.headers.get(REQUEST_ID),
        "trace_id": trace_id(request.headers),
    }
    text = json.dumps(line, separators=(",", ":")) + "\n"
    with _write_lock:  # whole lines from concurrent threads; sys.stderr as it is now (tests swap it)
        sys.stderr.write(text)
        sys.stderr.flush()

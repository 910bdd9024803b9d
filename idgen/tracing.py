"""The request ID and trace headers idgen passes on, so one request's log lines join across hops.

As Istio's Bookinfo productpage does (istio/istio samples/bookinfo/src/productpage/productpage.py,
getForwardHeaders; istio.io docs/tasks/observability/distributed-tracing/overview): the headers of
the request idgen serves are copied onto its call to the upstream. idgen never makes an ID up: in
the mesh its sidecar has set x-request-id before the request reaches it.
"""

from __future__ import annotations

from werkzeug.datastructures import Headers

REQUEST_ID = "x-request-id"
# Keep in sync with frontend/recipesite/tracing.py (a test compares them): the two are deployed apart.
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

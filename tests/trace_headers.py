"""The request ID and trace context a caller in the mesh sends (a sidecar's x-request-id, W3C and B3
trace headers, OpenTracing's), shared by the site's and idgen's propagation tests."""

TRACE_HEADERS = {
    "x-request-id": "5f7a1c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
    "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
    "x-b3-spanid": "00f067aa0ba902b7",
    "x-b3-parentspanid": "a3ce929d0e0e4736",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
    "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    "x-ot-span-context": "4bf92f3577b34da6;00f067aa0ba902b7;0;sr",
}

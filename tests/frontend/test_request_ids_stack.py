"""On a live local mesh: one recipe creation's log lines join across the hops, as they would in Istio.

The ingress gateway is the mesh's edge: it replaces the x-request-id a client sends with its own
(Istio leaves Envoy's preserve_external_request_id off). From there the same ID is in the gateway's and
the sidecar's access log lines (inbound /id, outbound /uuid) and in idgen's own line, because idgen
passes it on. The site's line, before the gateway, joins them by the trace ID, which the gateway keeps.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import requests
from recipes_testlib import RECIPE

from localmesh.stack.driver import LocalStack
from localmesh.stack.topology import Paths

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def poll(find: Callable[[], list], what: str) -> list:
    """What find() returns once it is not empty: the proxies flush their access logs once a second."""
    deadline = time.monotonic() + 10
    while True:
        found = find()
        if found or time.monotonic() > deadline:
            assert found, f"not found within 10 s: {what}"
            return found
        time.sleep(0.2)


def test_one_creation_carries_one_request_id_through_the_mesh(stack: LocalStack):
    stack.apply("passthrough")
    client_id = f"client-{uuid.uuid4()}"
    session = requests.Session()
    session.trust_env = False
    response = session.post(
        f"{stack.site}/api/recipes",
        json=RECIPE,
        headers={"x-request-id": client_id, "traceparent": TRACEPARENT},
        timeout=30,
    )
    assert response.status_code == 201, response.text

    def json_lines(text: str) -> list[dict]:
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def app_lines(workload: str) -> list[dict]:
        return json_lines(stack.localmesh("logs", workload, "-c", "app").stdout)

    # The site is no mesh workload (`localmesh logs` has no entry for it): its log file.
    site_log = (Paths(stack.state_dir).logs / "frontend.log").read_text()
    (site,) = [x for x in json_lines(site_log) if x["request_id"] == client_id]
    assert (site["path"], site["status"], site["trace_id"]) == ("/api/recipes", 201, TRACE_ID)
    (idgen,) = [x for x in app_lines("idgen") if x["path"] == "/id" and x["trace_id"] == TRACE_ID]
    mesh_id = idgen["request_id"]
    assert uuid.UUID(mesh_id).version == 4 and mesh_id != client_id  # the gateway's own

    def access(workload: str, request: str) -> Callable[[], list[str]]:
        """The proxy's access log lines for `request` that carry the mesh's request ID."""

        def find() -> list[str]:
            lines = stack.localmesh("logs", workload).stdout.splitlines()
            return [line for line in lines if f'"{request} HTTP/1.1"' in line and f'"{mesh_id}"' in line]

        return find

    poll(access("istio-ingressgateway", "GET /id"), "the gateway's line for GET /id")
    poll(access("idgen", "GET /id"), "the sidecar's inbound line for GET /id")
    poll(access("idgen", "GET /uuid"), "the sidecar's outbound line for GET /uuid")
    assert not [x for x in app_lines("idgen") if x["request_id"] == client_id]

"""The request framing corpus (tests/localmesh/test_proxy_framing.py) against both sidecars, with
Envoy's answer as the reference. The local proxies may be stricter than Envoy, never looser: a shape
Envoy refuses must not reach the upstream through the Python sidecar. Past that rule, the answers
are diffed as every other scenario (a difference is fixed or listed in docs/conformance.md); a shape
the Python sidecar refuses and Envoy forwards is the allowed direction and is not a difference."""

from __future__ import annotations

import pytest
from dataplanes import ENVOY, PYTHON
from diffing import Fields, assert_same
from proxy_testlib import App, connect, read_response
from test_proxy_framing import CORPUS


def _send(port: int, request: bytes) -> str:
    """The status of the first final answer, or how the connection ended without one."""
    with connect(port, timeout=3) as sock:
        sock.sendall(request)
        try:
            status = 100
            while status < 200:
                status = read_response(sock)[0]
        except ConnectionResetError:
            return "none (reset)"
        except ConnectionError:
            return "none (closed)"
        except TimeoutError:
            return "none (no answer within 3 s)"
    return str(status)


def _answer(port: int, app: App, request: bytes) -> Fields:
    before = len(app.requests)
    status = _send(port, request)
    forwarded = [r["path"] for r in app.requests[before:]]
    return {"status": status, "forwarded": " ".join(forwarded) or "(nothing)"}


@pytest.mark.parametrize("name", CORPUS)
def test_framing_shape(dataplanes, app: App, name: str) -> None:
    planes = dataplanes("passthrough", upstream=app.port)  # httpbin.org is the recording app
    request = CORPUS[name][0]
    answers = {kind: _answer(planes[kind].outbound, app, request) for kind in (ENVOY, PYTHON)}
    envoy, python = answers[ENVOY], answers[PYTHON]
    assert "smuggled" not in python["forwarded"], (
        f"{name}: the Python sidecar let a body through as a request"
    )
    if envoy["forwarded"] == "(nothing)":
        assert python["forwarded"] == "(nothing)", (
            f"{name}: Envoy refuses it ({envoy['status']}) but the Python sidecar forwarded "
            f"{python['forwarded']} ({python['status']}): the local proxies must never be looser"
        )
    elif python["forwarded"] == "(nothing)":
        return  # stricter than Envoy: allowed
    assert_same(f"framing/{name}", envoy, python)

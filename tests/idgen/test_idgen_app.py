"""idgen in-process, through Flask's test client, against stand-in upstreams on 127.0.0.1.

Each upstream behaviour maps to one of the contract's error codes; settings come from env with
overrides; the log writes one JSON line per request.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid

import pytest
from trace_headers import TRACE_HEADERS

from idgen import settings
from idgen.app import EXTENSION, create_app


def _get_id(app):
    resp = app.test_client().get("/id")
    return resp.status_code, resp.get_json()


# --- settings ----------------------------------------------------------------------------------


def test_defaults_when_env_is_empty(monkeypatch):
    for name in settings.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    app = create_app()
    assert app.config["UPSTREAM_URL"] == "http://httpbin.org/uuid"
    assert app.config["UPSTREAM_CONNECT_TIMEOUT"] == 1.0
    assert app.config["UPSTREAM_READ_TIMEOUT"] == 3.0
    assert app.extensions[EXTENSION].host == "httpbin.org"


def test_env_sets_and_config_overrides(monkeypatch):
    monkeypatch.setenv("UPSTREAM_URL", "http://from-env.invalid/uuid")
    monkeypatch.setenv("UPSTREAM_CONNECT_TIMEOUT", "0.25")
    monkeypatch.setenv("UPSTREAM_READ_TIMEOUT", "7")
    app = create_app({"UPSTREAM_READ_TIMEOUT": "2.5", "TESTING": True})
    assert app.config["UPSTREAM_URL"] == "http://from-env.invalid/uuid"
    assert app.config["UPSTREAM_CONNECT_TIMEOUT"] == 0.25
    assert app.config["UPSTREAM_READ_TIMEOUT"] == 2.5
    assert app.config["TESTING"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSTREAM_URL", "httpbin.org/uuid"),
        ("UPSTREAM_URL", "ftp://httpbin.org/uuid"),
        ("UPSTREAM_CONNECT_TIMEOUT", "soon"),
        ("UPSTREAM_CONNECT_TIMEOUT", "0"),
        ("UPSTREAM_READ_TIMEOUT", "-1"),
        ("UPSTREAM_READ_TIMEOUT", "inf"),
        ("UPSTREAM_READ_TIMEOUT", "nan"),
    ],
)
def test_bad_settings_stop_startup_naming_the_variable(name, value):
    with pytest.raises(settings.SettingsError, match=name) as err:
        create_app({name: value})
    assert repr(value) in str(err.value)


# --- GET /id -----------------------------------------------------------------------------------


def test_id_is_the_upstreams_uuid4(client, stub):
    resp = client.get("/id")
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    value = resp.get_json()["id"]
    assert uuid.UUID(value).version == 4
    assert stub.requests_seen()[0].requestline == "GET /uuid HTTP/1.1"


def test_uppercase_uuid_comes_back_canonical(app_for):
    status, body = _get_id(app_for("/uuid-upper"))
    assert status == 200
    assert body["id"] == body["id"].lower()


@pytest.mark.parametrize(
    ("path", "status", "code", "upstream_status"),
    [
        ("/blackhole", 502, "egress_blocked", 502),
        ("/bad-gateway", 502, "upstream_error", 502),  # 502 but not from Envoy
        ("/envoy-502-with-body", 502, "upstream_error", 502),  # Envoy, but not the blackhole's empty 502
        ("/envoy-503", 502, "upstream_error", 503),
        ("/server-error", 502, "upstream_error", 500),
        ("/not-found", 502, "upstream_error", 404),
        ("/redirect", 502, "upstream_error", 302),
        ("/garbage", 502, "bad_upstream_response", 200),
        ("/not-a-uuid", 502, "bad_upstream_response", 200),
        ("/uuid1", 502, "bad_upstream_response", 200),
        ("/uuid-braces", 502, "bad_upstream_response", 200),
        ("/uuid-number", 502, "bad_upstream_response", 200),
        ("/no-uuid-key", 502, "bad_upstream_response", 200),
        ("/json-list", 502, "bad_upstream_response", 200),
        ("/huge", 502, "bad_upstream_response", 200),
        ("/drop", 502, "upstream_error", None),
        ("/hang", 504, "upstream_timeout", None),
        ("/stall-body", 504, "upstream_timeout", None),
    ],
)
def test_upstream_trouble_becomes_the_contracts_json_error(app_for, path, status, code, upstream_status):
    got_status, body = _get_id(app_for(path))
    assert (got_status, body["error"]) == (status, code)
    assert body["upstream"] == "127.0.0.1"
    assert body.get("upstream_status") == upstream_status
    assert body["message"]
    assert "Traceback" not in body["message"]


def test_egress_blocked_says_what_blocked_it_and_how_to_allow_it(app_for):
    status, body = _get_id(app_for("/blackhole"))
    assert status == 502
    assert body["error"] == "egress_blocked"
    assert "egress policy blocked" in body["message"]
    assert "ServiceEntry" in body["message"]
    assert "ALLOW_ANY" in body["message"]


def test_upstream_error_quotes_the_start_of_the_answer(app_for):
    _, body = _get_id(app_for("/envoy-503"))
    assert "503" in body["message"]
    assert "no healthy upstream" in body["message"]


def test_closed_port_is_unreachable(app_for, closed_port):
    status, body = _get_id(app_for(f"http://127.0.0.1:{closed_port}/uuid"))
    assert (status, body["error"]) == (503, "upstream_unreachable")
    assert "connection refused" in body["message"]


def test_dns_failure_is_unreachable(app_for, monkeypatch):
    # The resolver is the boundary: a failed lookup is simulated so that no query leaves the machine.
    def no_such_host(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    status, body = _get_id(app_for("http://idgen-test.invalid/uuid"))
    assert (status, body["error"], body["upstream"]) == (503, "upstream_unreachable", "idgen-test.invalid")
    assert "DNS" in body["message"]


def test_connect_timeout_is_a_timeout(app_for, full_backlog_port):
    status, body = _get_id(
        app_for(f"http://127.0.0.1:{full_backlog_port}/uuid", UPSTREAM_CONNECT_TIMEOUT=0.3)
    )
    assert (status, body["error"]) == (504, "upstream_timeout")
    assert "UPSTREAM_CONNECT_TIMEOUT" in body["message"]


def test_read_timeout_names_its_setting(app_for):
    _, body = _get_id(app_for("/hang", UPSTREAM_READ_TIMEOUT=0.3))
    assert "0.3 s" in body["message"]
    assert "UPSTREAM_READ_TIMEOUT" in body["message"]


def test_proxy_from_env_is_used_and_named_when_down(app_for, monkeypatch, closed_port):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    status, body = _get_id(app_for("http://httpbin.org/uuid"))
    assert (status, body["error"], body["upstream"]) == (503, "upstream_unreachable", "httpbin.org")
    assert f"HTTP proxy http://127.0.0.1:{closed_port}" in body["message"]


# --- probes, unknown paths, bugs ------------------------------------------------------------------


def test_probes_never_touch_the_upstream(app_for, stub):
    client = app_for("/blackhole").test_client()
    for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
        resp = client.get(path)
        assert resp.status_code == 200
        assert resp.get_json() == {"status": status}
    assert stub.requests_seen() == []


def test_unknown_path_and_method_are_json(client):
    resp = client.get("/nope")
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "not_found"
    resp = client.post("/id")
    assert resp.status_code == 405
    assert resp.get_json()["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


def test_a_bug_is_a_json_500_with_the_traceback_only_in_the_log(app, capsys):
    def broken():
        raise RuntimeError("a bug")

    app.add_url_rule("/boom", view_func=broken)
    resp = app.test_client().get("/boom")
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "internal_error"
    assert "a bug" not in resp.get_data(as_text=True)
    line = json.loads(capsys.readouterr().err.strip())
    assert line["error"] == "internal_error"
    assert line["level"] == "error"
    assert "RuntimeError: a bug" in line["traceback"]


# --- the request log ---------------------------------------------------------------------------


def test_one_json_log_line_per_request(app_for, capsys):
    client = app_for("/blackhole").test_client()
    client.get("/id")
    client.get("/healthz")
    client.get("/nope")
    lines = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("GET", "/id", 502),
        ("GET", "/healthz", 200),
        ("GET", "/nope", 404),
    ]
    blocked = lines[0]
    assert blocked["upstream_status"] == 502
    assert blocked["error"] == "egress_blocked"
    assert blocked["upstream"] == "127.0.0.1"
    assert blocked["level"] == "warning"
    assert isinstance(blocked["duration_ms"], float)
    assert lines[1]["error"] is None and lines[1]["upstream_status"] is None


def test_log_line_carries_envoys_request_id(client, capsys):
    client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert json.loads(capsys.readouterr().err)["request_id"] == "abc-123"


def test_request_id_and_trace_headers_go_on_to_the_upstream(client, stub, capsys):
    """As Istio's Bookinfo productpage does: what identifies the request and its trace is copied onto
    idgen's upstream call; nothing else of the caller's (its cookies, credentials, user agent) is."""
    others = {"cookie": "session=secret", "authorization": "Bearer secret", "user-agent": "site/1"}
    response = client.get("/id", headers={**TRACE_HEADERS, **others})
    assert response.status_code == 200
    (seen,) = stub.requests_seen()
    received = {name.lower(): value for name, value in seen.headers.items()}
    assert {name: received.get(name) for name in TRACE_HEADERS} == TRACE_HEADERS
    assert "cookie" not in received and "authorization" not in received
    assert received["user-agent"] == "idgen/0.1"
    line = json.loads(capsys.readouterr().err)
    assert (line["request_id"], line["trace_id"]) == (
        TRACE_HEADERS["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736",
    )


def test_without_trace_headers_the_upstream_call_carries_none(client, stub, capsys):
    """idgen makes up no ID: outside the mesh nothing sets one, and its line says so (null)."""
    assert client.get("/id").status_code == 200
    received = {name.lower() for name in stub.requests_seen()[0].headers}
    assert not received & set(TRACE_HEADERS)
    line = json.loads(capsys.readouterr().err)
    assert (line["request_id"], line["trace_id"]) == (None, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"traceparent": TRACE_HEADERS["traceparent"], "x-b3-traceid": "1"},
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ({"x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7"}, "80f198ee56343ba864fe8b2a57d3eff7"),
        ({"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}, "80f198ee56343ba864fe8b2a57d3eff7"),
        ({"b3": "0"}, None),  # B3's single form with a sampling decision only: no trace ID
        ({"traceparent": "garbage"}, None),
        ({}, None),
    ],
)
def test_log_line_carries_the_trace_id(client, capsys, headers, expected):
    """The part of the trace context that stays the same on every hop (span IDs change)."""
    client.get("/healthz", headers=headers)
    assert json.loads(capsys.readouterr().err)["trace_id"] == expected


# --- connections ---------------------------------------------------------------------------------


def test_each_thread_has_its_own_session_reused_across_requests(app):
    upstream = app.extensions[EXTENSION]
    here = upstream.session()
    assert upstream.session() is here
    assert here.trust_env  # HTTP_PROXY / NO_PROXY honoured, as requests does
    other: list = []
    thread = threading.Thread(target=lambda: other.append(upstream.session()))
    thread.start()
    thread.join()
    assert other[0] is not here


def test_connections_are_pooled(client, stub):
    for _ in range(3):
        assert client.get("/id").status_code == 200
    ports = {seen.client_port for seen in stub.requests_seen()}
    assert len(stub.requests_seen()) == 3
    assert len(ports) == 1  # one kept-alive connection served all three

"""idgen as it runs for real: gunicorn with idgen/gunicorn.conf.py, as a separate process on a free
127.0.0.1 port, talking to the real httpbin package and to stand-in upstreams, sidecars and proxies.

Nothing leaves the machine: where UPSTREAM_URL names httpbin.org, HTTP_PROXY points at a local
stand-in (as the local mesh points it at idgen's sidecar), checked in-process before idgen starts.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import requests.utils

from idgen.app import EXTENSION, create_app

TIMEOUT = 10  # the tests' own bound on any call to idgen: idgen must answer well within it


def assert_routed_via(proxy_url: str, upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard before giving idgen UPSTREAM_URL=http://httpbin.org/...: its own Session must send that
    URL to the local proxy, so a regression fails here instead of calling the real httpbin.org."""
    with monkeypatch.context() as patch:
        patch.setenv("HTTP_PROXY", proxy_url)
        session = create_app({"UPSTREAM_URL": upstream_url}).extensions[EXTENSION].session()
        proxies = session.merge_environment_settings(upstream_url, {}, None, None, None)["proxies"]
        assert requests.utils.select_proxy(upstream_url, proxies) == proxy_url


def test_ids_from_the_real_httpbin(start_idgen, httpbin_url, http):
    idgen = start_idgen(f"{httpbin_url}/uuid")
    ids = []
    for _ in range(3):
        resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
        assert resp.status_code == 200
        ids.append(resp.json()["id"])
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert len(set(ids)) == 3


def test_blocking_sidecar_gives_egress_blocked_while_probes_stay_green(
    start_idgen, make_stub, http, monkeypatch
):
    sidecar = make_stub("/blackhole")  # 502, empty body, server: envoy, for every request
    assert_routed_via(sidecar.url, "http://httpbin.org/uuid", monkeypatch)
    idgen = start_idgen("http://httpbin.org/uuid", HTTP_PROXY=sidecar.url)

    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert resp.status_code == 502
    body = resp.json()
    assert body["error"] == "egress_blocked"
    assert body["upstream"] == "httpbin.org"
    assert body["upstream_status"] == 502
    assert "egress policy blocked" in body["message"]
    assert "ServiceEntry" in body["message"] and "ALLOW_ANY" in body["message"]

    for path in ("/healthz", "/readyz"):
        assert http.get(f"{idgen.url}{path}", timeout=TIMEOUT).status_code == 200
    # The probes never called out: the sidecar saw the one /id call only.
    assert [s.requestline for s in sidecar.requests_seen()] == ["GET http://httpbin.org/uuid HTTP/1.1"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/bad-gateway", 502, "upstream_error"),  # a 502 without server: envoy is not the mesh blocking
        ("/envoy-503", 502, "upstream_error"),
        ("/garbage", 502, "bad_upstream_response"),
        ("/uuid1", 502, "bad_upstream_response"),
    ],
)
def test_upstream_answers_that_are_not_ids(start_idgen, stub, http, path, status, code):
    idgen = start_idgen(f"{stub.url}{path}")
    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (status, code)
    assert resp.headers["Content-Type"] == "application/json"


def test_hanging_upstream_is_a_504_after_the_read_timeout(start_idgen, stub, http):
    idgen = start_idgen(f"{stub.url}/hang", UPSTREAM_READ_TIMEOUT="0.5")
    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert resp.status_code == 504
    assert resp.json()["error"] == "upstream_timeout"
    assert "0.5 s" in resp.json()["message"]


def test_connect_timeout_is_a_504(start_idgen, full_backlog_port, http):
    idgen = start_idgen(f"http://127.0.0.1:{full_backlog_port}/uuid", UPSTREAM_CONNECT_TIMEOUT="0.3")
    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (504, "upstream_timeout")


def test_closed_port_is_a_503(start_idgen, closed_port, http):
    idgen = start_idgen(f"http://127.0.0.1:{closed_port}/uuid")
    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (503, "upstream_unreachable")


def test_http_proxy_is_honoured(start_idgen, make_stub, http, monkeypatch):
    proxy = make_stub()  # answers /uuid like httpbin: what the local sidecar does in passthrough
    assert_routed_via(proxy.url, "http://httpbin.org/uuid", monkeypatch)
    idgen = start_idgen("http://httpbin.org/uuid", HTTP_PROXY=proxy.url)

    resp = http.get(f"{idgen.url}/id", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert uuid.UUID(resp.json()["id"]).version == 4
    seen = proxy.requests_seen()
    # The absolute-form request line is what a client sends to an HTTP proxy (RFC 9112 3.2.2).
    assert [s.requestline for s in seen] == ["GET http://httpbin.org/uuid HTTP/1.1"]
    assert seen[0].headers["Host"] == "httpbin.org"


def test_no_proxy_is_honoured(start_idgen, make_stub, stub, http):
    proxy = make_stub("/blackhole")
    idgen = start_idgen(f"{stub.url}/uuid", HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1,localhost")
    assert http.get(f"{idgen.url}/id", timeout=TIMEOUT).status_code == 200
    assert proxy.requests_seen() == []
    assert len(stub.requests_seen()) == 1


def test_unknown_paths_and_methods_are_json(start_idgen, stub, http):
    idgen = start_idgen(f"{stub.url}/uuid")
    resp = http.get(f"{idgen.url}/nope", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (404, "not_found")
    resp = http.delete(f"{idgen.url}/id", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (405, "method_not_allowed")


def test_one_structured_log_line_per_request(start_idgen, stub, http):
    idgen = start_idgen(f"{stub.url}/blackhole")
    before = len(idgen.log_lines())  # the start-up readiness polls of /healthz
    calls = [
        ("GET", "/id"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/nope"),
        ("POST", "/id"),
        ("GET", "/id"),
    ]
    for method, path in calls:
        http.request(method, f"{idgen.url}{path}", timeout=TIMEOUT)

    lines = idgen.log_lines()[before:]
    assert [(x["method"], x["path"]) for x in lines] == calls
    assert [x["status"] for x in lines] == [502, 200, 200, 404, 405, 502]
    for line in lines:
        assert {
            "ts",
            "level",
            "method",
            "path",
            "status",
            "upstream_status",
            "duration_ms",
            "error",
        } <= line.keys()
    assert (lines[0]["upstream_status"], lines[0]["error"]) == (502, "egress_blocked")
    assert (lines[1]["upstream_status"], lines[1]["error"]) == (None, None)
    # No second, gunicorn-style access line for any of them.
    assert not [t for t in idgen.other_lines() if '"GET /' in t or '"POST /' in t]


def test_concurrent_requests_each_get_their_own_id(start_idgen, httpbin_url):
    idgen = start_idgen(f"{httpbin_url}/uuid")

    def get_id(_: int) -> tuple[int, str]:
        with requests.Session() as session:
            session.trust_env = False
            resp = session.get(f"{idgen.url}/id", timeout=TIMEOUT)
            return resp.status_code, resp.json().get("id", "")

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(get_id, range(48)))
    assert {status for status, _ in results} == {200}
    assert len({i for _, i in results}) == 48


def test_sigterm_lets_the_request_in_flight_finish(start_idgen, stub, http):
    idgen = start_idgen(f"{stub.url}/hang", UPSTREAM_READ_TIMEOUT="1.5")
    answers: list[requests.Response] = []
    caller = threading.Thread(target=lambda: answers.append(http.get(f"{idgen.url}/id", timeout=TIMEOUT)))
    caller.start()
    stub.wait_for_requests(1)  # the call is in flight: idgen is waiting on its upstream
    idgen.child.stop(grace=TIMEOUT)  # SIGTERM to gunicorn's process group
    caller.join(TIMEOUT)
    assert idgen.child.popen.returncode == 0
    assert answers and answers[0].status_code == 504  # answered, not cut off


def test_gunicorn_opens_no_control_socket(start_idgen, stub, http, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # Without control_socket_disable, gunicorn 27 creates $HOME/.gunicorn/gunicorn.ctl at start.
    idgen = start_idgen(f"{stub.url}/uuid", HOME=str(home), XDG_RUNTIME_DIR="")
    assert http.get(f"{idgen.url}/healthz", timeout=TIMEOUT).status_code == 200
    assert not (home / ".gunicorn").exists()
    assert not [t for t in idgen.other_lines() if "Control socket" in t]

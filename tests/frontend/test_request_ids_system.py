"""End to end with real processes: one request's ID and trace context go from the site through idgen to
httpbin, and the site's and idgen's log lines carry them, so the three join on one ID.

The site under gunicorn with frontend/gunicorn.conf.py (`make run-frontend`), idgen under gunicorn with
idgen/gunicorn.conf.py (`make run-idgen`) and the real httpbin package, whose gunicorn access log
records the headers each request arrived with. IDGEN_URL points at idgen itself: no gateway in
between (through Istio's ingress gateway the request ID is the gateway's own; see
frontend/recipesite/tracing.py).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from recipes_testlib import FRONTEND, RECIPE, ROOT

from localmesh.stack.procs import free_port, running

BIN = ROOT / ".venv" / "bin"
HTTPBIN_GUNICORN = ROOT / ".venv-httpbin" / "bin" / "gunicorn"
NO_PROXY_ENV = {
    f(n): "" for n in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for f in (str.lower, str.upper)
}
# httpbin's access log: the request line and the headers under test, tab-separated.
ACCESS_FORMAT = "\t".join(
    ["%(r)s", "%({x-request-id}i)s", "%({traceparent}i)s", "%({tracestate}i)s", "%({b3}i)s"]
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def json_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def httpbin_seen(log: Path, count: int) -> list[list[str]]:
    """httpbin's access log lines for /uuid, [request line, x-request-id, traceparent, tracestate, b3],
    once there are `count` of them: gunicorn writes the line after it has sent the answer."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line.split("\t") for line in log.read_text().splitlines() if line.startswith("GET /uuid ")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """httpbin <- idgen <- site, each on a free port; their logs."""
    if not HTTPBIN_GUNICORN.exists():
        pytest.fail(f"{HTTPBIN_GUNICORN} is missing: run `make setup` (it builds .venv-httpbin)")
    logs = tmp_path_factory.mktemp("request-ids")
    ports = {name: free_port() for name in ("httpbin", "idgen", "site")}
    httpbin_cmd = [str(HTTPBIN_GUNICORN), "--bind", f"127.0.0.1:{ports['httpbin']}", "--workers", "1"]
    httpbin_cmd += ["--access-logfile", "-", "--access-logformat", ACCESS_FORMAT, "httpbin:app"]
    idgen_cmd = [str(BIN / "gunicorn"), "-c", str(ROOT / "idgen" / "gunicorn.conf.py")]
    idgen_cmd.append("idgen.app:create_app()")
    site_cmd = [str(BIN / "gunicorn"), "-c", str(FRONTEND / "gunicorn.conf.py")]
    idgen_env = {
        **NO_PROXY_ENV,
        "HOST": "127.0.0.1",
        "PORT": str(ports["idgen"]),
        "UPSTREAM_URL": f"http://127.0.0.1:{ports['httpbin']}/uuid",
    }
    site_env = {
        **NO_PROXY_ENV,
        "HOST": "127.0.0.1",
        "PORT": str(ports["site"]),
        "IDGEN_URL": f"http://127.0.0.1:{ports['idgen']}/id",
        "RECIPES_DB": str(logs / "recipes.db"),
        "RECIPES_SECRET": "",
        "RECIPES_BASE_PATH": "",
        # gunicorn 27 opens a control socket under $XDG_RUNTIME_DIR: one of its own per test server.
        "XDG_RUNTIME_DIR": tempfile.mkdtemp(prefix="gunicorn-", dir=logs),
    }
    paths = {name: logs / f"{name}.log" for name in ports}
    with contextlib.ExitStack() as stack:
        url = f"http://127.0.0.1:{ports['httpbin']}/get"
        stack.enter_context(running("httpbin", httpbin_cmd, url, paths["httpbin"], NO_PROXY_ENV))
        url = f"http://127.0.0.1:{ports['idgen']}/healthz"
        stack.enter_context(running("idgen", idgen_cmd, url, paths["idgen"], idgen_env))
        url = f"http://127.0.0.1:{ports['site']}/healthz"
        stack.enter_context(running("recipes site", site_cmd, url, paths["site"], site_env))
        yield {"site": f"http://127.0.0.1:{ports['site']}", "logs": paths}


def create(chain: dict, headers: dict[str, str]) -> tuple[str, dict, dict, list[str]]:
    """POST one recipe; (its ID, the site's log line, idgen's line, httpbin's access line) for it."""
    session = requests.Session()
    session.trust_env = False  # never through a proxy from the environment
    response = session.post(f"{chain['site']}/api/recipes", json=RECIPE, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    logs = chain["logs"]
    # Each app writes its line before it answers; one line per recipe created so far.
    sites = [x for x in json_lines(logs["site"]) if x["method"] == "POST" and x["status"] == 201]
    idgens = [x for x in json_lines(logs["idgen"]) if x["path"] == "/id"]
    httpbins = httpbin_seen(logs["httpbin"], len(idgens))
    assert len(sites) == len(idgens) == len(httpbins), (sites, idgens, httpbins)
    return response.json()["id"], sites[-1], idgens[-1], httpbins[-1]


def test_one_request_id_and_trace_from_the_site_through_idgen_to_httpbin(chain):
    """A request that arrives with an ID and a trace context (what a proxy in front would send)."""
    request_id = str(uuid.uuid4())
    b3 = f"{TRACE_ID}-00f067aa0ba902b7-1"
    headers = {"x-request-id": request_id, "traceparent": TRACEPARENT, "tracestate": "congo=t61", "b3": b3}
    _, site, idgen, httpbin = create(chain, headers)
    assert httpbin[1:] == [request_id, TRACEPARENT, "congo=t61", b3]
    assert (site["request_id"], site["trace_id"]) == (request_id, TRACE_ID)
    assert (idgen["request_id"], idgen["trace_id"], idgen["status"]) == (request_id, TRACE_ID, 200)


def test_the_site_gives_a_request_without_an_id_one_that_reaches_httpbin(chain):
    """The site as the edge: its own ID for the request, on its line, idgen's and httpbin's; no trace
    context is made up (httpbin's log shows "-" for a header that was not sent)."""
    _, site, idgen, httpbin = create(chain, {})
    request_id = site["request_id"]
    assert uuid.UUID(request_id).version == 4
    assert httpbin[1:] == [request_id, "-", "-", "-"]
    assert (idgen["request_id"], idgen["trace_id"], site["trace_id"]) == (request_id, None, None)

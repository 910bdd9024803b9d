"""Access logs on a live stack, as Istio's "Accessing External Services" task reads them:
`localmesh logs idgen` (and `make logs`) show which cluster and route idgen's call to httpbin.org took."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime

import pytest
import requests
from proxy_testlib import ISTIO_LINE

from localmesh.stack.driver import LocalStack
from localmesh.stack.topology import ROOT

# What an Istio 1.31 sidecar logs for idgen's GET http://httpbin.org/uuid under each option.
EXPECTED = {
    "passthrough": {
        "code": "200",
        "details": "via_upstream",
        "cluster": "PassthroughCluster",
        "route": "allow_any",
        "received": "0",  # a GET has no body
    },
    "blackhole": {
        "code": "502",
        "details": "direct_response",
        "upstream": "-",
        "cluster": "-",
        "route": "block_all",
        "received": "0",
        "sent": "0",  # a direct response with an empty body
    },
    "serviceentry": {
        "code": "200",
        "details": "via_upstream",
        "cluster": "outbound|80||httpbin.org",
        "route": "default",
    },
}


def lines_of(output: str) -> list[dict[str, str]]:
    """The access log lines among a proxy's output."""
    return [m.groupdict() for m in map(ISTIO_LINE.fullmatch, output.splitlines()) if m]


def new_line(read, since: str, request: str) -> dict[str, str]:
    """The first access log line for `request` that started at `since` (UTC, the log's own format) or
    later. The log is flushed once a second, so poll a few seconds; an earlier request's line may be
    flushed late, hence the start time rather than a line count."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in lines_of(read()) if line["request"] == request and line["start"] >= since]
        if found or time.monotonic() > deadline:
            assert found, f"no access log line for {request!r}"
            return found[0]
        time.sleep(0.3)


def utc_now() -> str:
    """Now, as the access log writes START_TIME (millisecond precision, so a line at the same
    millisecond still sorts as not earlier)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.mark.parametrize("option", list(EXPECTED))
def test_localmesh_logs_idgen_names_the_cluster_and_route_of_each_option(stack: LocalStack, option: str):
    stack.apply(option)

    def read() -> str:
        return stack.localmesh("logs", "idgen").stdout

    since = utc_now()
    requests.get(f"{stack.gateway}/id", timeout=15)
    line = new_line(read, since, "GET /uuid HTTP/1.1")
    assert line["authority"] == "httpbin.org"
    for field, want in EXPECTED[option].items():
        assert line[field] == want, (field, line)
    if option != "blackhole":
        assert line["upstream"] == f"127.0.0.1:{stack.ports.httpbin}"  # the local stand-in


def test_make_logs_and_the_gateways_log(stack: LocalStack):
    stack.apply("passthrough")
    env = {**os.environ, "LOCALMESH_STATE": str(stack.state_dir)}

    def make_logs() -> str:
        done = subprocess.run(
            ["make", "-s", "logs"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    since = utc_now()
    requests.get(f"{stack.gateway}/id", timeout=15)
    # idgen's sidecar logs the inbound call from the gateway and idgen's outbound call.
    inbound = new_line(make_logs, since, "GET /id HTTP/1.1")
    assert inbound["cluster"] == f"inbound|{stack.ports.idgen}||" and inbound["route"] == "default"
    assert new_line(make_logs, since, "GET /uuid HTTP/1.1")["cluster"] == "PassthroughCluster"
    call = new_line(lambda: stack.localmesh("logs", "istio-ingressgateway").stdout, since, "GET /id HTTP/1.1")
    assert call["cluster"] == "outbound|80||idgen.recipes.svc.cluster.local"
    assert call["xff"] == "127.0.0.1"  # the gateway appends the client's address (use_remote_address)
    tail = stack.localmesh("logs", "idgen", "--tail", "1").stdout
    assert len(tail.splitlines()) == 1


def test_logs_of_the_app_and_what_has_no_log(stack: LocalStack, tmp_path):
    requests.get(f"{stack.gateway}/id", timeout=15)
    assert '"path":"/id"' in stack.localmesh("logs", "idgen", "-c", "app").stdout  # idgen's own log
    gateway_app = stack.localmesh("logs", "istio-ingressgateway", "-c", "app", check=False)
    assert gateway_app.returncode == 2 and "has only the istio-proxy container" in gateway_app.stderr
    env = {**os.environ, "LOCALMESH_STATE": str(tmp_path)}
    done = subprocess.run(
        ["make", "-s", "logs"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    assert done.returncode != 0 and "no log yet" in done.stderr and "make up" in done.stderr

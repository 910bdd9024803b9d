"""The whole local mesh, started with `localmesh up` on free ports: each egress option as
docs/istio-facts.md's table says, seen by the site, by idgen, at the sidecar, in the proxies' metrics
and in Prometheus."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from istio_labels import (
    EGRESS_SERIES,
    GATEWAY_SOURCE,
    GATEWAY_SOURCE_OWN,
    IDGEN_DESTINATION,
    IDGEN_EGRESS_SOURCE,
    ISTIO_LABELS,
    UNKNOWN_DESTINATION,
)

from localmesh.stack.driver import LocalStack, start_stack
from localmesh.stack.procs import pid_alive, port_in_use
from localmesh.stack.statefile import read_state
from localmesh.stack.topology import ROOT, VENV_BIN, Paths

RECIPE = {"title": "Tomato soup", "author": "tests", "ingredients": ["tomatoes", "salt"], "steps": "Simmer."}


EXTERNAL_DESTINATION = {
    **UNKNOWN_DESTINATION,
    "destination_service": "httpbin.org",
    "request_protocol": "http",
    "grpc_response_status": "",
    "response_flags": "-",
    "connection_security_policy": "unknown",
}


def series_line(labels: dict[str, str]) -> str:
    """The exposition line prefix of istio_requests_total with labels in Istio's order."""
    body = ",".join(f'{name}="{labels[name]}"' for name in ISTIO_LABELS)
    return f"istio_requests_total{{{body}}} "


def counter(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def through_sidecar(stack: LocalStack, url: str) -> requests.Response:
    """A request as idgen sends it: through its sidecar's outbound listener (HTTP_PROXY)."""
    proxy = f"http://127.0.0.1:{stack.ports.sidecar_outbound}"
    return requests.get(url, proxies={"http": proxy}, timeout=10)


def prometheus_value(stack: LocalStack, query: str) -> list[dict]:
    resp = requests.get(f"{stack.url('prometheus')}/api/v1/query", params={"query": query}, timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def wait_for_prometheus(stack: LocalStack, query: str, want: float, timeout: float = 30.0) -> list[dict]:
    """Poll until the query's single value reaches want (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = prometheus_value(stack, query)
        if result and float(result[0]["value"][1]) >= want:
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never reached {want} for {query}; last answer {result}")


@pytest.mark.parametrize("option", ["passthrough", "blackhole", "serviceentry"])
def test_option_end_to_end(stack: LocalStack, option: str) -> None:
    applied = stack.apply(option)
    assert "pushed to idgen" in applied and "pushed to istio-ingressgateway" in applied
    metrics_before = requests.get(f"{stack.sidecar_admin}/stats/prometheus", timeout=5).text
    labels = {**IDGEN_EGRESS_SOURCE, **EXTERNAL_DESTINATION, **EGRESS_SERIES[option]}
    before = counter(metrics_before, series_line(labels))

    created = requests.post(f"{stack.site}/api/recipes", json=RECIPE, timeout=15)
    via_gateway = requests.get(f"{stack.gateway}/id", timeout=10)
    sidecar = through_sidecar(stack, "http://httpbin.org/uuid")

    if option == "blackhole":
        assert created.status_code == 502
        assert created.json()["error"] == "egress_blocked"
        assert "egress policy" in created.json()["message"]
        assert via_gateway.status_code == 502
        body = via_gateway.json()
        assert body["error"] == "egress_blocked" and body["upstream"] == "httpbin.org"
        # What Istio's sidecar answers for BlackHoleCluster: a direct 502 with nothing in it.
        assert sidecar.status_code == 502
        assert sidecar.content == b""
        assert sidecar.headers["server"] == "envoy"
        assert requests.get(f"{stack.site}/api/recipes/{uuid.uuid4()}", timeout=5).status_code == 404
    else:
        assert created.status_code == 201, created.text
        recipe_id = created.json()["id"]
        assert uuid.UUID(recipe_id).version == 4
        assert (
            requests.get(f"{stack.site}/api/recipes/{recipe_id}", timeout=5).json()["title"]
            == RECIPE["title"]
        )
        assert via_gateway.status_code == 200 and uuid.UUID(via_gateway.json()["id"])
        assert sidecar.status_code == 200 and "uuid" in sidecar.json()

    # Three egress calls: the site's creation, the direct /id, and ours through the sidecar.
    metrics = requests.get(f"{stack.sidecar_admin}/stats/prometheus", timeout=5).text
    assert counter(metrics, series_line(labels)) == before + 3, (
        f"no series {series_line(labels)} in\n{metrics}"
    )

    if not stack.prometheus:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus); direct scrape checked")
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items() if v)
    result = wait_for_prometheus(stack, f"sum(istio_requests_total{{{selector}}})", before + 3)
    assert float(result[0]["value"][1]) == before + 3


def test_gateway_and_inbound_series_carry_the_exchanged_identities(stack: LocalStack) -> None:
    stack.apply("passthrough")
    assert requests.get(f"{stack.gateway}/id", timeout=10).status_code == 200
    inbound = requests.get(f"{stack.sidecar_admin}/stats/prometheus", timeout=5).text
    gateway = requests.get(f"{stack.gateway_admin}/stats/prometheus", timeout=5).text
    idgen_destination = {
        **IDGEN_DESTINATION,
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
    }
    # idgen's sidecar reports the call as its destination, knowing the gateway through metadata
    # exchange (the gateway's missing version label is "unknown" there).
    reported_by_sidecar = {
        "reporter": "destination",
        **GATEWAY_SOURCE,
        **idgen_destination,
        "connection_security_policy": "mutual_tls",
    }
    assert counter(inbound, series_line(reported_by_sidecar)) >= 1, inbound
    # The gateway reports the same call as its source; reporter=source has an unknown security policy.
    reported_by_gateway = {
        "reporter": "source",
        **GATEWAY_SOURCE_OWN,
        **idgen_destination,
        "connection_security_policy": "unknown",
    }
    assert counter(gateway, series_line(reported_by_gateway)) >= 1, gateway


def test_caller_without_a_proxy_is_unknown(stack: LocalStack) -> None:
    inbound = f"http://127.0.0.1:{stack.ports.sidecar_inbound}/healthz"
    assert requests.get(inbound, timeout=5).status_code == 200
    metrics = requests.get(f"{stack.sidecar_admin}/stats/prometheus", timeout=5).text
    unknown_source = [
        line
        for line in metrics.splitlines()
        if line.startswith('istio_requests_total{reporter="destination",source_workload="unknown",')
    ]
    assert unknown_source, metrics
    assert 'source_canonical_revision="latest"' in unknown_source[0]
    assert 'connection_security_policy="none"' in unknown_source[0]


KIALI_BY = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
    "source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,"
    "destination_service_name,destination_workload_namespace,destination_workload,"
    "destination_canonical_service,destination_canonical_revision,request_protocol,response_code,"
    "grpc_response_status,response_flags"
)


def test_kiali_graph_query_returns_the_egress_edge_of_each_option(stack: LocalStack) -> None:
    if not stack.prometheus:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    query = (
        f'sum(rate(istio_requests_total{{reporter="source",source_workload_namespace="recipes"}}[1m])) '
        f"by ({KIALI_BY}) > 0"
    )
    for option in ("passthrough", "blackhole", "serviceentry"):
        stack.apply(option)
        for _ in range(3):
            requests.get(f"{stack.gateway}/id", timeout=10)
        want = EGRESS_SERIES[option]
        deadline = time.monotonic() + 30
        edges: list[dict] = []
        while time.monotonic() < deadline:
            edges = [r["metric"] for r in prometheus_value(stack, query)]
            if any(all(e.get(k) == v for k, v in want.items()) for e in edges):
                break
            time.sleep(0.5)
        match = [e for e in edges if all(e.get(k) == v for k, v in want.items())]
        assert match, f"{option}: no Kiali edge with {want} in {edges}"
        edge = match[0]
        assert edge["source_workload"] == "idgen" and edge["destination_service"] == "httpbin.org"
        # Kiali drops series without canonical labels: they must be there.
        assert edge["source_canonical_service"] == "idgen" and edge["source_canonical_revision"] == "v1"
        assert edge["destination_canonical_revision"] == "latest"


def test_apply_rejects_an_invalid_manifest_and_keeps_the_running_config(stack: LocalStack, tmp_path) -> None:
    stack.apply("blackhole")
    bad = tmp_path / "serviceentry-typo.yaml"
    bad.write_text(
        (ROOT / "manifests/components/serviceentry-httpbin/serviceentry-httpbin.yaml")
        .read_text()
        .replace("protocol: HTTP", "protocol: HTTPX")
    )
    done = stack.localmesh("apply", "-f", str(bad), check=False)
    assert done.returncode == 2
    assert str(bad) in done.stderr or bad.name in done.stderr
    assert "ServiceEntry recipes/httpbin-ext" in done.stderr and "spec.ports[0].protocol" in done.stderr
    assert requests.get(f"{stack.gateway}/id", timeout=10).json()["error"] == "egress_blocked"


def test_status_names_the_applied_option(stack: LocalStack) -> None:
    stack.apply("serviceentry")
    out = stack.localmesh("status").stdout
    assert "option serviceentry" in out and "ready" in out
    for name in ("site", "gateway", "console"):
        assert f"{name}: http://127.0.0.1:{getattr(stack.ports, name)}" in out


def test_demo_passes_against_the_running_stack(stack: LocalStack, tmp_path: Path) -> None:
    cmd = [str(VENV_BIN / "python"), "-m", "localmesh.demo", "-n", "3", "--state-dir", str(stack.state_dir)]
    env = {**os.environ, "EGRESS_LAB_OUT": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for option in ("passthrough", "blackhole", "serviceentry"):
        assert f"Verdict: OK: {option}" in done.stdout
    assert "Site: 0 of 3 recipes created; failed: 3 x 502 egress_blocked" in done.stdout
    assert (tmp_path / "graph-blackhole.svg").exists()
    # The demo leaves a stack it did not start running.
    assert requests.get(f"{stack.site}/healthz", timeout=5).status_code == 200


# ---- lifecycle: a stack of its own, so these can break it ------------------------------------------


def test_taken_port_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cmd = [
            str(VENV_BIN / "python"),
            "-m",
            "localmesh",
            "--state-dir",
            str(tmp_path),
            "up",
            f"--port=site={port}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert f"port {port} (site) is already in use" in done.stderr
    assert "--port site=NNNN" in done.stderr and "LOCALMESH_PORT_SITE" in done.stderr
    assert read_state(Paths(tmp_path)) is None


def test_crash_is_restarted_and_down_leaves_nothing(tmp_path) -> None:
    stack = start_stack(tmp_path)
    try:
        state = read_state(Paths(tmp_path))
        assert state is not None and state.phase == "ready"
        old_idgen = state.children["idgen"]
        os.killpg(old_idgen, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = read_state(Paths(tmp_path))
            if state and state.children["idgen"] != old_idgen and state.phase == "ready":
                break
            time.sleep(0.2)
        assert state.children["idgen"] != old_idgen, "idgen was not restarted"
        assert requests.get(f"{stack.gateway}/id", timeout=10).status_code == 200
        log = (tmp_path / "logs" / "supervisor.log").read_text()
        assert "idgen exited with code" in log and "restarting it" in log
    finally:
        stack.localmesh("down", check=False)
    pids = [state.supervisor_pid, *state.children.values()]
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not [port for port in vars(stack.ports).values() if port_in_use(port)]


def test_interrupting_the_supervisor_stops_everything(tmp_path) -> None:
    """Ctrl-C (SIGINT) reaches the supervisor: it stops every child and frees every port."""
    stack = start_stack(tmp_path)
    state = read_state(Paths(tmp_path))
    try:
        os.kill(state.supervisor_pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stack.localmesh("down", check=False)
    assert not [pid for pid in state.children.values() if pid_alive(pid)]
    assert not [port for port in vars(stack.ports).values() if port_in_use(port)]


def test_up_twice_reports_the_running_stack(stack: LocalStack) -> None:
    again = stack.localmesh("up")
    assert "already running" in again.stderr
    assert f"site: http://127.0.0.1:{stack.ports.site}" in again.stdout


def test_state_file_is_json_with_every_child(stack: LocalStack) -> None:
    state = json.loads((stack.state_dir / "state.json").read_text())
    assert set(state["children"]) >= {"httpbin", "sidecar", "gateway", "idgen", "frontend", "console"}
    assert all(pid_alive(pid) for pid in state["children"].values())


def test_gateway_answer_has_one_service_time_and_its_own_server_header(stack: LocalStack) -> None:
    """Envoy's router replaces x-envoy-upstream-service-time, so the sidecar's never leaks through twice."""
    resp = requests.get(f"{stack.gateway}/id", timeout=10)
    assert resp.headers["server"] == "istio-envoy"
    assert resp.headers["x-envoy-upstream-service-time"].isdigit()  # two would read "9, 10"


def test_delete_removes_an_applied_service_entry_live(stack: LocalStack, tmp_path) -> None:
    """`localmesh delete -f` is kubectl delete -f: the entry goes and the proxies stop routing to it."""
    stack.apply("blackhole")
    entry = tmp_path / "se.yaml"
    entry.write_text(
        (ROOT / "manifests/components/serviceentry-httpbin/serviceentry-httpbin.yaml")
        .read_text()
        .replace("name: httpbin-ext", "name: httpbin-extra")
    )
    assert (
        "serviceentry.networking.istio.io/httpbin-extra created"
        in stack.localmesh("apply", "-f", str(entry)).stdout
    )
    assert requests.get(f"{stack.gateway}/id", timeout=10).status_code == 200
    deleted = stack.localmesh("delete", "-f", str(entry)).stdout
    assert (
        'serviceentry.networking.istio.io "httpbin-extra" deleted' in deleted and "pushed to idgen" in deleted
    )
    assert requests.get(f"{stack.gateway}/id", timeout=10).json()["error"] == "egress_blocked"
    again = stack.localmesh("delete", "-f", str(entry)).stdout
    assert "not found" in again


def test_offline_stack_never_resolves_a_host_outside_its_address_book(stack: LocalStack) -> None:
    """Passthrough to a host the local mesh does not know fails at once, before any DNS lookup."""
    stack.apply("passthrough")
    resp = through_sidecar(stack, "http://not-in-the-lab.invalid/")
    assert resp.status_code == 503
    assert b"localmesh runs offline" in resp.content and b"LOCALMESH_ONLINE=1" in resp.content

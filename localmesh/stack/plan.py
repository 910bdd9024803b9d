"""The stack's processes, in start order, with how each one starts and how to know it is ready;
the local Prometheus's configuration and rule files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from localmesh.stack import dataplane
from localmesh.stack.topology import (
    EXTERNAL_HOST,
    GATEWAY_WORKLOAD,
    HTTPBIN_BIN,
    LOOPBACK,
    ROOT,
    SIDECAR_WORKLOAD,
    VENV_BIN,
    Paths,
    Ports,
    online,
)

# Prometheus anchors a relabel regex at both ends, as egresswatch.exposition.ENVOY_ISTIO_NAME is matched.
ENVOY_ISTIO_NAME = "envoy_(istio_.*)"
# The alert and recording rules a cluster's Prometheus loads (scripts/cluster-up.sh); the local one
# loads every plain Prometheus rule file here too.
RULES_DIR = ROOT / "manifests" / "monitoring"


@dataclass
class ChildSpec:
    """One process of the stack: how to start it and how to know it is ready."""

    name: str
    cmd: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)  # what it listens on: free before it restarts


# Istio's demo profile sets meshConfig.accessLogFile: /dev/stdout: the proxies log each request in
# Istio's text format to their stdout, which the supervisor keeps in logs/<child>.log.
ACCESS_LOG = ("--access-log", "-")


def rule_files(folder: Path = RULES_DIR) -> list[str]:
    """The plain Prometheus rule files of `folder` (a top-level `groups:`, no Kubernetes `kind`), sorted.

    The folder also holds the PrometheusRule and kustomization that a cluster's operator reads; those
    are Kubernetes objects, which Prometheus itself cannot load, so they are left out."""
    found = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "groups" in doc and "kind" not in doc:
            found.append(str(path))
    return found


def prometheus_config(ports: Ports, rules: list[str] | None = None) -> str:
    """Prometheus scrapes both proxies every second, as the Istio addon scrapes Envoy's /stats/prometheus,
    and evaluates the egress rules (as written: a rule's `for:` holds locally too) every second."""
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files() if rules is None else rules,
            "scrape_configs": [
                {
                    "job_name": "envoy-stats",
                    "metrics_path": "/stats/prometheus",
                    # Real Envoy (`--dataplane envoy`) names the stats logger's metrics envoy_istio_*:
                    # take them back to Istio's names (docs/architecture.md says why).
                    "metric_relabel_configs": [
                        {
                            "source_labels": ["__name__"],
                            "regex": ENVOY_ISTIO_NAME,
                            "target_label": "__name__",
                            "replacement": "$1",
                        }
                    ],
                    "static_configs": [
                        {
                            "targets": [f"{LOOPBACK}:{ports.gateway_admin}"],
                            "labels": {"namespace": "istio-system", "pod": "istio-ingressgateway-local"},
                        },
                        {
                            "targets": [f"{LOOPBACK}:{ports.sidecar_admin}"],
                            "labels": {"namespace": "recipes", "pod": "idgen-local"},
                        },
                    ],
                }
            ],
        },
        indent=2,
    )


def python_specs(ports: Ports, paths: Paths) -> list[ChildSpec]:
    """The sidecar and the gateway as the local Python proxies (the default data plane)."""
    py = str(VENV_BIN / "python")
    lo = LOOPBACK
    # httpbin.org is the local stand-in unless the user asks for the real one (LOCALMESH_ONLINE=1).
    offline = [] if online() else ["--offline"]
    return [
        ChildSpec(
            "sidecar",
            [
                py,
                "-m",
                "localmesh.proxy",
                "--role",
                "sidecar",
                "--routes",
                str(paths.routes_file(SIDECAR_WORKLOAD)),
                "--admin",
                f"{lo}:{ports.sidecar_admin}",
                "--inbound",
                f"{lo}:{ports.sidecar_inbound}",
                "--app",
                f"{lo}:{ports.idgen}",
                "--outbound",
                f"{lo}:{ports.sidecar_outbound}",
                "--admin-token-file",
                str(paths.admin_token),
                *offline,
                *ACCESS_LOG,
            ],
            f"http://{lo}:{ports.sidecar_admin}/ready",
            ports=[ports.sidecar_admin, ports.sidecar_inbound, ports.sidecar_outbound],
        ),
        ChildSpec(
            "gateway",
            [
                py,
                "-m",
                "localmesh.proxy",
                "--role",
                "gateway",
                "--routes",
                str(paths.routes_file(GATEWAY_WORKLOAD)),
                "--admin",
                f"{lo}:{ports.gateway_admin}",
                "--listen",
                f"{lo}:{ports.gateway}",
                "--admin-token-file",
                str(paths.admin_token),
                *offline,
                *ACCESS_LOG,
            ],
            f"http://{lo}:{ports.gateway_admin}/ready",
            ports=[ports.gateway_admin, ports.gateway],
        ),
    ]


def envoy_specs(ports: Ports, paths: Paths) -> list[ChildSpec]:
    """The sidecar and the gateway as real Envoy (`--dataplane envoy`), named, listening and ready
    (on /ready of the admin port) as the Python proxies are; its config is in <state>/xds/<workload>/."""
    lo = LOOPBACK
    return [
        ChildSpec(
            "sidecar",
            dataplane.envoy_command(paths, ports, SIDECAR_WORKLOAD),
            f"http://{lo}:{ports.sidecar_admin}/ready",
            ports=[ports.sidecar_admin, ports.sidecar_inbound, ports.sidecar_outbound],
        ),
        ChildSpec(
            "gateway",
            dataplane.envoy_command(paths, ports, GATEWAY_WORKLOAD),
            f"http://{lo}:{ports.gateway_admin}/ready",
            ports=[ports.gateway_admin, ports.gateway],
        ),
    ]


def plan(
    ports: Ports, paths: Paths, prometheus: str | None, plane: str = dataplane.PYTHON
) -> list[ChildSpec]:
    """The stack's processes, in start order (proxies before idgen: holdApplicationUntilProxyStarts)."""
    py = str(VENV_BIN / "python")
    lo = LOOPBACK
    specs = [
        ChildSpec(
            "httpbin",
            [
                str(HTTPBIN_BIN / "gunicorn"),
                "--bind",
                f"{lo}:{ports.httpbin}",
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "8",
                "--no-control-socket",
                "httpbin:app",
            ],
            f"http://{lo}:{ports.httpbin}/get",
            ports=[ports.httpbin],
        ),
    ]
    specs += envoy_specs(ports, paths) if plane == dataplane.ENVOY else python_specs(ports, paths)
    specs += [
        ChildSpec(
            "idgen",
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                str(ROOT / "idgen" / "gunicorn.conf.py"),
                "idgen.app:create_app()",
            ],
            f"http://{lo}:{ports.idgen}/readyz",
            {
                "HOST": lo,
                "PORT": str(ports.idgen),
                "UPSTREAM_URL": f"http://{EXTERNAL_HOST}/uuid",
                # idgen reaches its sidecar's outbound listener the way requests honours a proxy;
                # on a cluster iptables does this instead, and idgen does not know the difference.
                "HTTP_PROXY": f"http://{lo}:{ports.sidecar_outbound}",
                "HTTPS_PROXY": f"http://{lo}:{ports.sidecar_outbound}",
                "NO_PROXY": "127.0.0.1,localhost",
            },
            ports=[ports.idgen],
        ),
        ChildSpec(
            "frontend",
            # The site's server settings live in frontend/gunicorn.conf.py, as for `make run-frontend`.
            [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "frontend" / "gunicorn.conf.py")],
            f"http://{lo}:{ports.site}/healthz",
            {
                "HOST": lo,
                "PORT": str(ports.site),
                "IDGEN_URL": f"http://{lo}:{ports.gateway}/id",
                "RECIPES_DB": str(paths.recipes_db),
            },
            ports=[ports.site],
        ),
        ChildSpec(
            "console",
            [
                py,
                "-m",
                "egresswatch",
                "console",
                "--port",
                str(ports.console),
                "--host",
                lo,
                *(
                    # Its Prometheus scrapes every second: a 10 s rate() shows a switch within seconds.
                    ["--prometheus", f"http://{lo}:{ports.prometheus}", "--chart-rate", "10s"]
                    if prometheus
                    else ["--proxies", f"{lo}:{ports.gateway_admin}", f"{lo}:{ports.sidecar_admin}"]
                ),
            ],
            f"http://{lo}:{ports.console}/healthz",
            # The console finds this stack's applied option (and its windows start) through its state.
            {"LOCALMESH_STATE": str(paths.state_dir)},
            ports=[ports.console],
        ),
    ]
    if prometheus:
        pdir = paths.prometheus_dir
        specs.append(
            ChildSpec(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={pdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={pdir / 'data'}",
                    f"--web.listen-address={lo}:{ports.prometheus}",
                    "--storage.tsdb.retention.time=2h",
                ],
                f"http://{lo}:{ports.prometheus}/-/ready",
                ports=[ports.prometheus],
            )
        )
    return specs


def find_prometheus(env: Mapping[str, str] = os.environ) -> str | None:
    """The prometheus binary (Debian's or Homebrew's package), unless LOCALMESH_PROMETHEUS=off."""
    if env.get("LOCALMESH_PROMETHEUS", "").lower() in ("off", "0", "no", "false"):
        return None
    return shutil.which("prometheus")

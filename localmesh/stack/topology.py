"""The local stack's topology: where things are (the repository, the virtualenvs, the state
folder and its files) and where they listen (ports, loopback addresses, the endpoints `up` prints,
the proxies' admin URLs), and the checks on ports before a start."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from localmesh.stack.procs import port_in_use

ROOT = Path(__file__).resolve().parent.parent.parent
VENV_BIN = Path(sys.executable).parent
HTTPBIN_BIN = Path(os.environ.get("HTTPBIN_VENV", ROOT / ".venv-httpbin")) / "bin"
LOOPBACK = "127.0.0.1"
EXTERNAL_HOST = "httpbin.org"
# One folder per egress option (`kubectl apply -k manifests/overlays/<option>`).
OVERLAYS_DIR = ROOT / "manifests" / "overlays"
IDGEN_SERVICE = "idgen.recipes.svc.cluster.local"


@dataclass
class Ports:
    """Every port the stack listens on (127.0.0.1). Defaults echo Istio's where Istio has one."""

    site: int = 8080
    gateway: int = 8000
    gateway_admin: int = 15000
    idgen: int = 18080
    sidecar_inbound: int = 15006
    sidecar_outbound: int = 15001
    sidecar_admin: int = 15090
    httpbin: int = 18000
    prometheus: int = 9090
    console: int = 20001  # egresswatch's live graph and report; Kiali's port

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, overrides: Mapping[str, int]) -> Ports:
        """A copy with some ports changed; an unknown name is an error that lists the known ones."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown port name(s) {', '.join(unknown)}; known: {', '.join(self.names())}")
        return Ports(**{**asdict(self), **overrides})


def ports_from_env(env: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Port overrides from LOCALMESH_PORT_<NAME> variables (e.g. LOCALMESH_PORT_SITE=9080)."""
    found = {}
    for name in Ports.names():
        value = env.get(f"LOCALMESH_PORT_{name.upper()}")
        if value:
            if not value.isdigit():
                raise ValueError(f"LOCALMESH_PORT_{name.upper()}={value!r} is not a port number")
            found[name] = int(value)
    return found


@dataclass
class Paths:
    """The stack's state folder: everything it writes lives here."""

    state_dir: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def applied_file(self) -> Path:
        """Which egress option is applied and since when (`Applied`)."""
        return self.state_dir / "applied.json"

    @property
    def config_file(self) -> Path:
        """The applied mesh config (the local stand-in for the cluster's API server)."""
        return self.state_dir / "cluster-state.json"

    @property
    def admin_token(self) -> Path:
        """The stack's credential for config pushes to the proxies' admin ports (mode 0600)."""
        return self.state_dir / "admin-token"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def routes_file(self, proxy: str) -> Path:
        return self.state_dir / "routes" / f"{proxy}.json"

    def xds_dir(self, proxy: str) -> Path:
        """Where an Envoy proxy's bootstrap and its xDS files live (`--dataplane envoy`)."""
        return self.state_dir / "xds" / proxy

    def bootstrap_file(self, proxy: str) -> Path:
        return self.xds_dir(proxy) / "bootstrap.json"

    @property
    def prometheus_dir(self) -> Path:
        return self.state_dir / "prometheus"

    @property
    def recipes_db(self) -> Path:
        return self.state_dir / "recipes.db"


def default_state_dir() -> Path:
    return Path(os.environ.get("LOCALMESH_STATE", ROOT / ".localmesh"))


def addresses(ports: Ports) -> dict[str, tuple[str, int]]:
    """The local stand-in for DNS and Kubernetes endpoints: host:port -> where it really listens.
    Online, httpbin.org is left to real DNS."""
    book = {f"{IDGEN_SERVICE}:80": (LOOPBACK, ports.sidecar_inbound)}
    if not online():
        book[f"{EXTERNAL_HOST}:80"] = (LOOPBACK, ports.httpbin)
    return book


def urls(ports: Ports, with_prometheus: bool) -> dict[str, str]:
    """What `up` prints: name -> URL a person can open."""
    shown = {
        "site": f"http://{LOOPBACK}:{ports.site}",
        "gateway": f"http://{LOOPBACK}:{ports.gateway}",
        "idgen": f"http://{LOOPBACK}:{ports.idgen}",
        "httpbin.org (local stand-in)": f"http://{LOOPBACK}:{ports.httpbin}",
        "gateway metrics": f"http://{LOOPBACK}:{ports.gateway_admin}/stats/prometheus",
        "idgen sidecar metrics": f"http://{LOOPBACK}:{ports.sidecar_admin}/stats/prometheus",
    }
    if with_prometheus:
        shown["prometheus"] = f"http://{LOOPBACK}:{ports.prometheus}"
    shown["console"] = f"http://{LOOPBACK}:{ports.console}"
    return shown


# The Deployment of manifests/base whose pods' sidecar the stack runs (its route table's key), and
# the ingress gateway's workload.
SIDECAR_WORKLOAD = "idgen"
GATEWAY_WORKLOAD = "istio-ingressgateway"
# The workload whose istio-proxy container each proxy child plays (`localmesh logs <workload>`).
PROXY_CHILDREN = {SIDECAR_WORKLOAD: "sidecar", GATEWAY_WORKLOAD: "gateway"}


def proxy_admins(ports: Ports) -> dict[str, str]:
    """Each proxy's admin URL, keyed by the route table it serves."""
    return {
        GATEWAY_WORKLOAD: f"http://{LOOPBACK}:{ports.gateway_admin}",
        SIDECAR_WORKLOAD: f"http://{LOOPBACK}:{ports.sidecar_admin}",
    }


def online() -> bool:
    """LOCALMESH_ONLINE=1: the proxies resolve and reach real hosts (httpbin.org itself, if mapped out)."""
    return os.environ.get("LOCALMESH_ONLINE", "").lower() in ("1", "yes", "true", "on")


def listening_ports(ports: Ports, with_prometheus: bool) -> dict[str, int]:
    """name -> port of every port the stack listens on (Prometheus's only when it runs)."""
    return {n: p for n, p in asdict(ports).items() if n != "prometheus" or with_prometheus}


def _move_hint(name: str) -> str:
    return (
        f"`.venv/bin/localmesh up --port {name}=NNNN`, or LOCALMESH_PORT_{name.upper()}=NNNN before `make up`"
    )


def duplicate_ports(ports: Ports, with_prometheus: bool) -> list[str]:
    """Ports given to two names or more, each with the way to move one."""
    names_of: dict[int, list[str]] = {}
    for name, port in listening_ports(ports, with_prometheus).items():
        names_of.setdefault(port, []).append(name)
    return [
        f"port {port} is given to both {' and '.join(names)}: each needs a port of its own; "
        f"move one, e.g. {_move_hint(names[-1])}"
        for port, names in names_of.items()
        if len(names) > 1
    ]


def taken_ports(ports: Ports, with_prometheus: bool) -> list[str]:
    """Ports that something else already holds, each with the way to move it."""
    return [
        f"port {port} ({name}) is already in use on {LOOPBACK}: stop what holds it "
        f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another: {_move_hint(name)}"
        for name, port in listening_ports(ports, with_prometheus).items()
        if port_in_use(port)
    ]


def egress_options(folder: Path = OVERLAYS_DIR) -> tuple[str, ...]:
    """The egress options in the workshop's order: the overlays in `folder`, each numbered by the
    first line of its kustomization.yaml ("# Option 1, passthrough: ...")."""
    numbered = []
    for kustomization in folder.glob("*/kustomization.yaml"):
        name = kustomization.parent.name
        first = kustomization.read_text(encoding="utf-8").partition("\n")[0]
        found = re.match(r"# Option (\d+), ([a-z0-9-]+):", first)
        if found is None or found.group(2) != name:
            raise ValueError(
                f"{kustomization}: the first line must be '# Option <number>, {name}: <what it does>'"
            )
        numbered.append((int(found.group(1)), name))
    return tuple(name for _, name in sorted(numbered))


OPTIONS = egress_options()

"""The local stack: which processes make up the mesh on one machine, and their supervision.

`plan()` says what to run (commands, environment, readiness URLs) from the ports and paths;
`Supervisor` starts the plan, watches it, restarts a crashed child a few times, and otherwise stops
everything loudly: the stack is either whole or gone, never half-alive. The supervisor writes only
its own state folder (`.localmesh/` by default).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from localmesh.procs import Child, StartError, log_tail, port_in_use, spawn, wait_http

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HTTPBIN_BIN = Path(os.environ.get("HTTPBIN_VENV", ROOT / ".venv-httpbin")) / "bin"
LOOPBACK = "127.0.0.1"
EXTERNAL_HOST = "httpbin.org"
IDGEN_SERVICE = "idgen.recipes.svc.cluster.local"

# A crashed child is restarted at most this many times within RESTART_WINDOW seconds; one more
# crash stops the whole stack, so a broken child cannot flap forever behind a "running" status.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


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
class ChildSpec:
    """One process of the stack: how to start it and how to know it is ready."""

    name: str
    cmd: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Paths:
    """The stack's state folder: everything it writes lives here."""

    state_dir: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def config_file(self) -> Path:
        """The applied mesh config (the local stand-in for the cluster's API server)."""
        return self.state_dir / "cluster-state.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def routes_file(self, proxy: str) -> Path:
        return self.state_dir / "routes" / f"{proxy}.json"

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


def proxy_admins(ports: Ports) -> dict[str, str]:
    """Each proxy's admin URL, keyed by the route table it serves."""
    return {
        "istio-ingressgateway": f"http://{LOOPBACK}:{ports.gateway_admin}",
        "idgen": f"http://{LOOPBACK}:{ports.sidecar_admin}",
    }


def prometheus_config(ports: Ports) -> str:
    """Prometheus scrapes both proxies every second, as the Istio addon scrapes Envoy's /stats/prometheus."""
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "envoy-stats",
                    "metrics_path": "/stats/prometheus",
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


def plan(ports: Ports, paths: Paths, prometheus: str | None) -> list[ChildSpec]:
    """The stack's processes, in start order (proxies before idgen: holdApplicationUntilProxyStarts)."""
    py = str(VENV_BIN / "python")
    lo = LOOPBACK
    # httpbin.org is the local stand-in unless the user asks for the real one (LOCALMESH_ONLINE=1).
    offline = [] if online() else ["--offline"]
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
        ),
        ChildSpec(
            "sidecar",
            [
                py,
                "-m",
                "localmesh.proxy",
                "--role",
                "sidecar",
                "--routes",
                str(paths.routes_file("idgen")),
                "--admin",
                f"{lo}:{ports.sidecar_admin}",
                "--inbound",
                f"{lo}:{ports.sidecar_inbound}",
                "--app",
                f"{lo}:{ports.idgen}",
                "--outbound",
                f"{lo}:{ports.sidecar_outbound}",
                *offline,
            ],
            f"http://{lo}:{ports.sidecar_admin}/ready",
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
                str(paths.routes_file("istio-ingressgateway")),
                "--admin",
                f"{lo}:{ports.gateway_admin}",
                "--listen",
                f"{lo}:{ports.gateway}",
                *offline,
            ],
            f"http://{lo}:{ports.gateway_admin}/ready",
        ),
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
                    ["--prometheus", f"http://{lo}:{ports.prometheus}"]
                    if prometheus
                    else ["--proxies", f"{lo}:{ports.gateway_admin}", f"{lo}:{ports.sidecar_admin}"]
                ),
            ],
            f"http://{lo}:{ports.console}/healthz",
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
            )
        )
    return specs


def online() -> bool:
    """LOCALMESH_ONLINE=1: the proxies resolve and reach real hosts (httpbin.org itself, if mapped out)."""
    return os.environ.get("LOCALMESH_ONLINE", "").lower() in ("1", "yes", "true", "on")


def find_prometheus(env: Mapping[str, str] = os.environ) -> str | None:
    """The prometheus binary (Debian's or Homebrew's package), unless LOCALMESH_PROMETHEUS=off."""
    if env.get("LOCALMESH_PROMETHEUS", "").lower() in ("off", "0", "no", "false"):
        return None
    return shutil.which("prometheus")


def taken_ports(ports: Ports, with_prometheus: bool) -> list[str]:
    """Ports that something else already holds, each with the way to move it."""
    problems = []
    for name, port in asdict(ports).items():
        if name == "prometheus" and not with_prometheus:
            continue
        if port_in_use(port):
            problems.append(
                f"port {port} ({name}) is already in use on {LOOPBACK}: stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another with "
                f"`--port {name}=NNNN` or LOCALMESH_PORT_{name.upper()}=NNNN"
            )
    return problems


@dataclass
class StackState:
    """What state.json says about a running stack; `status`, `down`, `apply` and the demo read it."""

    supervisor_pid: int
    phase: str  # "starting", "ready", "failed", "stopping"
    ports: Ports
    prometheus: bool
    children: dict[str, int] = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ports": asdict(self.ports)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        return cls(**{**raw, "ports": Ports(**raw["ports"])})

    def write(self, paths: Paths) -> None:
        tmp = paths.state_file.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(paths.state_file)  # atomic: readers never see half a file


def read_state(paths: Paths) -> StackState | None:
    try:
        return StackState.from_json(paths.state_file.read_text())
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    """True while pid runs. A child of ours that exited is reaped here, so it does not linger as
    a zombie that looks alive (the demo is the supervisor's parent when it started the stack)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    """Starts the plan, keeps it whole, and stops it on SIGTERM/SIGINT (Ctrl-C)."""

    def __init__(self, specs: list[ChildSpec], paths: Paths, state: StackState) -> None:
        self.specs = {s.name: s for s in specs}
        self.paths = paths
        self.state = state
        self.children: dict[str, Child] = {}
        self.restarts: dict[str, list[float]] = {name: [] for name in self.specs}
        self.stopping = False

    def _log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} localmesh: {message}", flush=True)

    def _start(self, name: str) -> Child:
        spec = self.specs[name]
        child = spawn(name, spec.cmd, self.paths.logs / f"{name}.log", spec.env, cwd=ROOT)
        self.children[name] = child
        return child

    def _publish(self, phase: str, message: str = "") -> None:
        self.state.phase = phase
        self.state.message = message
        self.state.children = {n: c.pid for n, c in self.children.items()}
        self.state.write(self.paths)

    def start_all(self, timeout: float = 30.0) -> None:
        """Start every child at once and wait for each to be ready; any failure stops them all."""
        for name in self.specs:
            self._start(name)
        self._publish("starting")
        for name, child in self.children.items():
            wait_http(child, self.specs[name].ready_url, timeout)
        self._publish("ready")
        self._log("all ready")

    def _handle_exit(self, name: str, child: Child) -> None:
        now = time.monotonic()
        recent = [t for t in self.restarts[name] if now - t < RESTART_WINDOW] + [now]
        self.restarts[name] = recent
        code = child.popen.returncode
        if len(recent) > MAX_RESTARTS:
            raise StartError(
                f"{name} crashed {len(recent)} times within {RESTART_WINDOW:.0f} s (last exit code "
                f"{code}); stopping the whole stack. Its log ({child.log}):\n{log_tail(child.log)}"
            )
        self._log(
            f"{name} exited with code {code}; restarting it (restart {len(recent)} of {MAX_RESTARTS} "
            f"allowed within {RESTART_WINDOW:.0f} s). Log tail:\n{log_tail(child.log, 5)}"
        )
        restarted = self._start(name)
        wait_http(restarted, self.specs[name].ready_url)
        self._publish("ready")

    def watch(self) -> None:
        """Until asked to stop: notice crashed children and restart or give up loudly."""
        while not self.stopping:
            for name, child in list(self.children.items()):
                if not self.stopping and not child.alive():
                    self._handle_exit(name, child)
            time.sleep(0.2)

    def stop_all(self) -> None:
        """Stop the children in reverse start order, each by its PID and process group."""
        for child in reversed(list(self.children.values())):
            child.stop()

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """The supervisor's life: start, watch, stop. Exit code 0 when stopped on request."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        code = 0
        try:
            self.start_all()
            self.watch()
            self._publish("stopping")
        except StartError as err:
            self._log(str(err))
            self._publish("failed", str(err))
            code = 1
        finally:
            self.stop_all()
            if code == 0:
                self.paths.state_file.unlink(missing_ok=True)
            self._log("stopped")
        return code

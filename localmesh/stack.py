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
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from localmesh.procs import Child, StartError, log_tail, port_in_use, spawn, wait_http, wait_ports_free

ROOT = Path(__file__).resolve().parent.parent
# The alert and recording rules a cluster's Prometheus loads (scripts/cluster-up.sh); the local one
# loads every plain Prometheus rule file here too.
RULES_DIR = ROOT / "manifests" / "monitoring"
# How long `up` waits, once every process answers, for Prometheus to have scraped each target.
SCRAPE_TIMEOUT = 30.0
VENV_BIN = Path(sys.executable).parent
HTTPBIN_BIN = Path(os.environ.get("HTTPBIN_VENV", ROOT / ".venv-httpbin")) / "bin"
LOOPBACK = "127.0.0.1"
EXTERNAL_HOST = "httpbin.org"
IDGEN_SERVICE = "idgen.recipes.svc.cluster.local"

# A crashed child is restarted at most this many times within RESTART_WINDOW seconds; one more
# crash stops the whole stack, so a broken child cannot flap forever behind a "running" status.
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
# Before a restart the old process group gets this long to go after SIGTERM (then SIGKILL), and its
# ports this long to be free: a gunicorn master killed outright leaves workers that hold the port,
# and a new master gives up after 5 bind attempts.
RESTART_GRACE = 5.0
PORT_WAIT = 15.0
READY_TIMEOUT = 30.0


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
    ports: list[int] = field(default_factory=list)  # what it listens on: free before it restarts


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


# Istio's demo profile sets meshConfig.accessLogFile: /dev/stdout: the proxies log each request in
# Istio's text format to their stdout, which the supervisor keeps in logs/<child>.log.
ACCESS_LOG = ("--access-log", "-")
# The workload whose istio-proxy container each proxy child plays (`localmesh logs <workload>`).
PROXY_CHILDREN = {"idgen": "sidecar", "istio-ingressgateway": "gateway"}


def proxy_admins(ports: Ports) -> dict[str, str]:
    """Each proxy's admin URL, keyed by the route table it serves."""
    return {
        "istio-ingressgateway": f"http://{LOOPBACK}:{ports.gateway_admin}",
        "idgen": f"http://{LOOPBACK}:{ports.sidecar_admin}",
    }


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
            ports=[ports.httpbin],
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
                str(paths.routes_file("istio-ingressgateway")),
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


def targets_not_scraped(prometheus: str) -> list[str]:
    """Prometheus's active targets that are not up or not scraped yet, each with its state ([] when
    all are); raises OSError/ValueError when Prometheus does not answer its /api/v1/targets."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=5) as resp:
        targets = json.loads(resp.read())["data"]["activeTargets"]
    if not targets:
        return ["no active target yet (service discovery has not run)"]
    return [
        f"{t['scrapeUrl']}: health {t['health']}" + (f" ({t['lastError']})" if t.get("lastError") else "")
        for t in targets
        if t["health"] != "up" or t["lastScrape"].startswith("0001-")
    ]


def wait_targets_scraped(prometheus: str, timeout: float) -> None:
    """Wait until every active target of Prometheus is up and scraped; StartError naming them if not."""
    deadline = time.monotonic() + timeout
    pending = ["Prometheus did not answer /api/v1/targets"]
    while time.monotonic() < deadline:
        try:
            pending = targets_not_scraped(prometheus)
        except (OSError, ValueError, KeyError) as err:
            pending = [f"Prometheus did not answer /api/v1/targets ({err})"]
        if not pending:
            return
        time.sleep(0.2)
    raise StartError(
        f"Prometheus ({prometheus}) had not scraped every target within {timeout:.0f} s:\n  "
        + "\n  ".join(pending)
        + f"\nIts targets page says more: {prometheus}/targets"
    )


def wait_scraped_since(prometheus: str, when: float, timeout: float) -> bool:
    """Wait until Prometheus holds a scrape of every target taken at `when` (Unix time) or later;
    False if it has none within timeout. After a switch of option, that scrape is the baseline that
    lets a window starting at the switch count the requests that follow."""
    deadline = time.monotonic() + timeout
    query = urllib.parse.urlencode({"query": "min(timestamp(up))"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as resp:
                result = json.loads(resp.read())["data"]["result"]
            if result and float(result[0]["value"][1]) >= when:
                return True
        except (OSError, ValueError, KeyError):
            pass  # not answering yet: try again until the deadline
        time.sleep(0.2)
    return False


def online() -> bool:
    """LOCALMESH_ONLINE=1: the proxies resolve and reach real hosts (httpbin.org itself, if mapped out)."""
    return os.environ.get("LOCALMESH_ONLINE", "").lower() in ("1", "yes", "true", "on")


def find_prometheus(env: Mapping[str, str] = os.environ) -> str | None:
    """The prometheus binary (Debian's or Homebrew's package), unless LOCALMESH_PROMETHEUS=off."""
    if env.get("LOCALMESH_PROMETHEUS", "").lower() in ("off", "0", "no", "false"):
        return None
    return shutil.which("prometheus")


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


@dataclass
class StackState:
    """What state.json says about a running stack; `status`, `down`, `apply` and the demo read it."""

    supervisor_pid: int
    phase: str  # "starting", "ready", "restarting" (a crashed child), "failed", "stopping"
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


@dataclass
class Applied:
    """The egress option in force and when it took effect (Unix time): the moment `up` started the
    proxies with it, or the moment the running proxies took the push of a change. Reports default to
    the traffic since then, so one step's numbers never mix with the step before."""

    option: str
    since: float

    def write(self, paths: Paths) -> None:
        tmp = paths.applied_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(paths.applied_file)


def read_applied(paths: Paths) -> Applied | None:
    try:
        return Applied(**json.loads(paths.applied_file.read_text()))
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
        if "prometheus" in self.specs:
            # Ready means queryable: Prometheus hands discovered targets to its scrapers only after
            # a few seconds (about 5 here), and traffic sent before the first scrape never shows in rate().
            base = self.specs["prometheus"].ready_url.removesuffix("/-/ready")
            wait_targets_scraped(base, SCRAPE_TIMEOUT)
        self._publish("ready")
        self._log("all ready")

    def _handle_exit(self, name: str, child: Child) -> None:
        now = time.monotonic()
        recent = [t for t in self.restarts[name] if now - t < RESTART_WINDOW] + [now]
        self.restarts[name] = recent
        code = child.exit_code()
        if len(recent) > MAX_RESTARTS:
            raise StartError(
                f"{name} crashed {len(recent)} times within {RESTART_WINDOW:.0f} s (last exit code "
                f"{code}); stopping the whole stack. Its log ({child.log}):\n{log_tail(child.log)}"
            )
        self._log(
            f"{name} exited with code {code}; restarting it (restart {len(recent)} of {MAX_RESTARTS} "
            f"allowed within {RESTART_WINDOW:.0f} s). Log tail:\n{log_tail(child.log, 5)}"
        )
        self._publish("restarting", f"restarting {name}")
        self._restart(name, child)

    def _restart(self, name: str, old: Child) -> None:
        """End what is left of the old process group, wait for its ports, start it again and wait
        until the new child itself is ready. A restart that fails counts as one more crash (the
        watch loop sees the child dead again): only the restart budget stops the stack."""
        spec = self.specs[name]
        old.stop(RESTART_GRACE)
        held = wait_ports_free(spec.ports, PORT_WAIT)
        if held:
            self._log(
                f"{name}: port(s) {', '.join(map(str, held))} still held by another process after "
                f"{PORT_WAIT:.0f} s (`ss -ltnp` shows which); starting it anyway"
            )
        restarted = self._start(name)
        try:
            wait_http(restarted, spec.ready_url, READY_TIMEOUT)
        except StartError as err:
            self._log(f"{name} did not come back: {err}")
            restarted.stop()
            return
        self._log(f"{name} restarted (pid {restarted.pid})")
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

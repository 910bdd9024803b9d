"""Benchmark 3, time to first result: `make demo` wall time, each data plane's start, and how fast
`localmesh apply` takes effect.

    python -m bench.startup [--flips 6] [--starts 5] [--skip-demo]

- `make demo` (setup already done) on free ports and its own state folder, so it never meets a stack
  that someone else runs. Its ratio divides its time by that of `localmesh up` + `localmesh down`
  alone, measured in the same run: the demo is that same start and stop plus three applies, their
  checks and the report, so the ratio says how many times the bare start and stop the whole demo costs.
- data plane start: from the same manifests, a gateway and idgen's sidecar of each data plane (the
  local Python proxies, then real Envoy through localmesh.pilot.xds), from nothing to the first 200
  answer through gateway -> sidecar -> app; both do the same steps (route tables, their config files,
  two processes, readiness) and stop at the same observable event, alternating, --starts times each.
  The ratio divides the local proxies' median by Envoy's.
- apply propagation: on a running stack, flip between passthrough and blackhole with the command line
  (`python -m localmesh apply -k manifests/overlays/<option>`) while polling GET /id through the
  gateway; propagation = from starting the command to the first answer showing the new behaviour
  (200 <-> 502 egress_blocked). Also in-process (push.apply: config, tables, push), which leaves
  out the interpreter's start. Baseline: the same command applying the overlay already in force.

Targets (never asserted): make demo < 30 s; apply propagation < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

from bench import results
from bench.parts import DATAPLANES, STARTERS, proxy_rig
from bench.stackrun import PY
from localmesh.stack import push
from localmesh.stack.driver import LocalStack, free_ports, local_stack
from localmesh.stack.topology import ROOT, Paths

TARGET_DEMO_S = 30.0
TARGET_APPLY_S = 1.0
EXPECTED = {"passthrough": 200, "blackhole": 502}


def time_demo(tmp: Path) -> tuple[float, int, str]:
    """`make demo` on free ports; (seconds, exit code, last lines)."""
    ports = free_ports()
    env = {**os.environ, "LOCALMESH_STATE": str(tmp / "demo-state"), "EGRESS_LAB_OUT": str(tmp / "demo-out")}
    env |= {f"LOCALMESH_PORT_{name.upper()}": str(port) for name, port in vars(ports).items()}
    start = time.perf_counter()
    done = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    lines = [
        ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip() and not ln.startswith("make")
    ]
    tail = "\n".join(lines[-4:])  # the verdicts; the line before names a temporary folder
    return elapsed, done.returncode, tail


def time_up_down(tmp: Path) -> float:
    start = time.perf_counter()
    with local_stack(tmp / "updown-state"):
        pass
    return time.perf_counter() - start


def time_dataplane_starts(tmp: Path, starts: int) -> dict[str, list[float]]:
    """Seconds from nothing to the first 200 through gateway -> sidecar -> app, per data plane."""
    took: dict[str, list[float]] = {dp: [] for dp in DATAPLANES}
    with proxy_rig(tmp / "starts", dataplanes=()) as rig, requests.Session() as session:
        upstream = urllib.parse.urlsplit(rig.upstream).port or 80
        for i in range(starts):
            # Alternate which data plane starts first, so that neither always meets a warmer cache.
            for dp in DATAPLANES if i % 2 == 0 else DATAPLANES[::-1]:
                start = time.perf_counter()
                with STARTERS[dp](tmp / "starts" / f"{dp}-{i}", "passthrough", upstream) as plane:
                    seen, _ = wait_for(session, f"{plane.gateway}/id", 200, start + 30)
                    took[dp].append(seen - start)
    return took


def apply_cmd(stack: LocalStack, option: str) -> list[str]:
    overlay = ROOT / "manifests" / "overlays" / option
    return [PY, "-m", "localmesh", "--state-dir", str(stack.state_dir), "apply", "-k", str(overlay)]


def wait_for(session: requests.Session, url: str, status: int, deadline: float) -> tuple[float, int]:
    """Poll url until it answers status; (time it did, polls made)."""
    polls = 0
    while time.perf_counter() < deadline:
        polls += 1
        if session.get(url, timeout=5).status_code == status:
            return time.perf_counter(), polls
    raise RuntimeError(f"{url} never answered {status}")


def flip_cli(stack: LocalStack, session: requests.Session, option: str) -> tuple[float, float, int]:
    """(propagation seconds, the command's own seconds, polls) for one apply through the CLI."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        apply_cmd(stack, option), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    seen, polls = wait_for(session, f"{stack.gateway}/id", EXPECTED[option], start + 30)
    out, _ = proc.communicate(timeout=60)
    ended = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"localmesh apply {option} failed: {out.decode(errors='replace')}")
    return seen - start, ended - start, polls


def flip_in_process(stack: LocalStack, session: requests.Session, option: str) -> float:
    start = time.perf_counter()
    push.apply(Paths(stack.state_dir), ROOT / "manifests" / "overlays" / option, None, stack.ports)
    seen, _ = wait_for(session, f"{stack.gateway}/id", EXPECTED[option], start + 30)
    return seen - start


def starts_table(took: dict[str, list[float]]) -> list[str]:
    envoy = statistics.median(took["envoy"])
    names = {"python": "local Python proxies", "envoy": "Envoy (localmesh.pilot.xds, file xDS)"}
    lines = [
        f"A gateway and idgen's sidecar started {len(took['envoy'])} times per data plane, alternating, "
        "from the same manifests; seconds from nothing to the first 200 answer through gateway -> "
        "sidecar -> app.",
        "",
        "| data plane | median s | max s | ratio to Envoy |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {names[dp]} | {statistics.median(took[dp]):.2f} | {max(took[dp]):.2f} "
        f"| {results.ratio(statistics.median(took[dp]), envoy)} |"
        for dp in DATAPLANES
    ]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=6, help="option changes to time (default 6)")
    parser.add_argument("--starts", type=int, default=5, help="starts of each data plane (default 5)")
    parser.add_argument("--skip-demo", action="store_true", help="no make demo, no data plane starts")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    head = results.header_lines("3. Time to first result")
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_demo:
            print("make demo ...", flush=True)
            demo_s, code, tail = time_demo(tmp)
            print("localmesh up + down (baseline) ...", flush=True)
            updown_s = time_up_down(tmp)
            lines += [
                "Ratio: `make demo`'s seconds over those of `localmesh up` + `localmesh down` alone, in "
                "this run. The demo is that same start and stop plus three applies, their checks and the "
                "report: the ratio is how many times the bare start and stop the whole demo takes.",
                "",
                "| what | seconds | ratio to up + down | target | verdict |",
                "|---|---:|---:|---|---|",
                f"| `localmesh up` + `localmesh down` (baseline) | {updown_s:.1f} | 1.00x | - | - |",
                f"| `make demo` (exit code {code}) | {demo_s:.1f} | {results.ratio(demo_s, updown_s)} "
                f"| < {TARGET_DEMO_S:.0f} s ({results.ratio(demo_s, TARGET_DEMO_S)} of it) "
                f"| {results.verdict(code == 0 and demo_s < TARGET_DEMO_S)} |",
                "",
                "`make demo` ended with:",
                "",
                *(f"    {line}" for line in tail.splitlines()),
                "",
            ]
            print("data plane starts ...", flush=True)
            lines += starts_table(time_dataplane_starts(tmp, args.starts))
        print("apply propagation ...", flush=True)
        with local_stack(tmp / "apply-state") as stack, requests.Session() as session:
            stack.apply("passthrough")
            wait_for(session, f"{stack.gateway}/id", 200, time.perf_counter() + 30)
            noop = [flip_cli(stack, session, "passthrough")[1] for _ in range(3)]
            cli, polls, in_process = [], [], []
            for i in range(args.flips):
                option = "blackhole" if i % 2 == 0 else "passthrough"
                seconds, _, n = flip_cli(stack, session, option)
                cli.append(seconds)
                polls.append(n)
            for i in range(args.flips):
                option = "blackhole" if i % 2 == 0 else "passthrough"
                in_process.append(flip_in_process(stack, session, option))
            stack.apply("passthrough")
    base = statistics.median(noop)
    lines += [
        f"{args.flips} flips between passthrough and blackhole each way; GET /id through the gateway polled "
        f"back to back meanwhile (median {statistics.median(polls):.0f} polls per flip).",
        "",
        "| what | median s | max s | ratio to the no-op apply | target | verdict |",
        "|---|---:|---:|---:|---|---|",
        f"| no-op `localmesh apply` (overlay already in force; baseline) | {base:.3f} | {max(noop):.3f} "
        f"| 1.00x | - | - |",
        f"| `localmesh apply` -> new behaviour seen (as a user sees it) | {statistics.median(cli):.3f} "
        f"| {max(cli):.3f} | {results.ratio(statistics.median(cli), base)} | < {TARGET_APPLY_S:g} s "
        f"| {results.verdict(max(cli) < TARGET_APPLY_S)} |",
        f"| push.apply in process (no interpreter start) -> seen | {statistics.median(in_process):.3f} "
        f"| {max(in_process):.3f} | {results.ratio(statistics.median(in_process), base)} | - | - |",
    ]
    text = [*head, *lines]
    print("\n".join(text))
    if not args.no_record:
        results.record("startup", text)
        print(f"\nwritten to {results.RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A short soak: Locust load on the local stack while every component is killed with kill -9, in turn.

    python -m bench.soak --seconds 60          # make bench-soak; figures into bench/RESULTS.md

The stack runs on free 127.0.0.1 ports in a folder of its own (localmesh.stack.driver); Locust runs headless
with loadtest/locustfile.py's users plus bench/soak_users.py's, which records every creation's outcome.
Spread over the run, the site's master, the gateway proxy, the sidecar proxy, idgen's gunicorn master
and the httpbin stand-in's master each get SIGKILL (the process alone: a master's workers are left to
the supervisor, as after a real crash). The soak waits for the supervisor to bring each one back on
the same ports, then stops Locust and compares what the site answered with what SQLite holds:
recipes created, lost (answered, not stored) and duplicated (stored twice, or one ID given twice)
must be 0 and 0. It also reads each proxy's memory before the load and after. Bounded: the load
stops after --seconds (or once the last component is back), the whole run within a few minutes.

Exit code 0 when nothing was lost or duplicated and every component came back; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import procstat, results
from localmesh.stack.driver import LocalStack, local_stack
from localmesh.stack.plan import plan
from localmesh.stack.procs import pid_alive
from localmesh.stack.statefile import read_state
from localmesh.stack.topology import ROOT, VENV_BIN, Paths

# What is killed, in order: the state file's child name -> what the table calls it.
VICTIMS = {
    "frontend": "site (functions-framework master)",
    "gateway": "gateway proxy",
    "sidecar": "sidecar proxy",
    "idgen": "idgen (gunicorn master)",
    "httpbin": "httpbin stand-in (gunicorn master)",
}
PROXIES = ("gateway", "sidecar")
RECOVERY_TIMEOUT = 90.0
LOCUST_STOP_TIMEOUT = 60.0


@dataclass
class Kill:
    name: str
    old_pid: int
    new_pid: int = 0
    back_after: float = 0.0  # seconds from SIGKILL to the supervisor's "ready" with a new child
    same_ports: bool = False
    answers: bool = False  # its readiness URL answers 2xx from the new child


@dataclass
class Tally:
    created: int  # answers 2xx (or the form's 303) with a recipe ID
    stored: int  # rows in the database
    lost: int  # answered with an ID, not in the database
    duplicated: int  # one ID answered twice, or one unique title stored twice
    failed: int  # creations without a 2xx answer (expected while a part is down)
    saved_unanswered: int  # stored although the client got no 2xx (an answer lost on the way)


def ready_urls(stack: LocalStack) -> dict[str, str]:
    """Each child's readiness URL, as the supervisor checks it."""
    return {spec.name: spec.ready_url for spec in plan(stack.ports, Paths(stack.state_dir), None)}


def answers_2xx(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def kill_and_wait(stack: LocalStack, name: str) -> Kill:
    """SIGKILL one child (the process alone) and wait until the supervisor has it ready again."""
    before = read_state(Paths(stack.state_dir))
    assert before is not None
    kill = Kill(name, before.children[name])
    os.kill(kill.old_pid, signal.SIGKILL)
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_TIMEOUT:
        state = read_state(Paths(stack.state_dir))
        if state is None or not pid_alive(state.supervisor_pid):
            break  # the stack stopped: recorded as not back
        if state.children.get(name) not in (None, kill.old_pid) and state.phase == "ready":
            kill.new_pid = state.children[name]
            kill.back_after = time.monotonic() - started
            kill.same_ports = state.ports == before.ports
            kill.answers = answers_2xx(ready_urls(stack)[name]) and pid_alive(kill.new_pid)
            break
        time.sleep(0.1)
    return kill


def start_locust(stack: LocalStack, workdir: Path, users: int, cap_seconds: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "GATEWAY_URL": stack.gateway,
        "EXPECT_EGRESS": "allowed",
        "THINK_TIME": "0.1,0.5",
        "SOAK_RECORD": str(workdir / "creations.jsonl"),
        "SOAK_RUN": workdir.name,
    }
    cmd = [
        str(VENV_BIN / "locust"),
        "-f",
        f"{ROOT / 'loadtest' / 'locustfile.py'},{ROOT / 'bench' / 'soak_users.py'}",
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{cap_seconds}s",  # a bound in case this script dies; normally stopped below
        "--host",
        stack.site,
        "--only-summary",
        "--csv",
        str(workdir / "locust"),
    ]
    with open(workdir / "locust.log", "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def stop_locust(locust: subprocess.Popen) -> None:
    """SIGTERM: Locust stops its users and writes its stats; SIGKILL only if it hangs."""
    if locust.poll() is None:
        locust.send_signal(signal.SIGTERM)
    try:
        locust.wait(LOCUST_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        locust.kill()
        locust.wait(10)


def tally(record: Path, db: Path) -> Tally:
    outcomes = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, title FROM recipes").fetchall()
    stored_ids = {row[0] for row in rows}
    titles = Counter(row[1] for row in rows)
    answered = Counter(o["id"] for o in outcomes if o["id"])
    unanswered_titles = {o["title"] for o in outcomes if o["title"] and not o["id"]}
    return Tally(
        created=sum(answered.values()),
        stored=len(rows),
        lost=sum(1 for recipe_id in answered if recipe_id not in stored_ids),
        duplicated=sum(n - 1 for n in answered.values() if n > 1)
        + sum(n - 1 for title, n in titles.items() if title.startswith("soak ") and n > 1),
        failed=sum(1 for o in outcomes if not o["id"]),
        saved_unanswered=sum(1 for title in unanswered_titles if titles[title]),
    )


def rss(pid: int) -> float:
    try:
        return procstat.rss_mb(pid)
    except (OSError, KeyError):
        return float("nan")


def soak(seconds: float, users: int, workdir: Path) -> tuple[list[str], bool]:
    """Run the soak; return the report's lines and whether it held (0 lost, 0 duplicated, all back)."""
    with local_stack(workdir / "state") as stack:
        stack.apply("passthrough")
        start_pids = stack.children()
        rss_start = {p: rss(start_pids[p]) for p in PROXIES}
        rss_before_kill: dict[str, float] = {}
        locust = start_locust(stack, workdir, users, int(seconds) + 600)
        kills: list[Kill] = []
        began = time.monotonic()
        try:
            slot = seconds / (len(VICTIMS) + 1)
            for i, name in enumerate(VICTIMS, start=1):
                time.sleep(max(0.0, began + i * slot - time.monotonic()))
                if name in PROXIES:
                    rss_before_kill[name] = rss(stack.children()[name])
                kills.append(kill_and_wait(stack, name))
                if not kills[-1].new_pid:
                    break  # the stack is gone: nothing more to learn
            time.sleep(max(0.0, began + seconds - time.monotonic()))
        finally:
            stop_locust(locust)
        loaded = time.monotonic() - began
        end_pids = stack.children()
        rss_end = {p: rss(end_pids[p]) for p in PROXIES if p in end_pids}
        counts = tally(workdir / "creations.jsonl", stack.state_dir / "recipes.db")
        state = read_state(Paths(stack.state_dir))
        still_up = state is not None and state.phase == "ready" and pid_alive(state.supervisor_pid)

    all_back = len(kills) == len(VICTIMS) and all(k.new_pid and k.same_ports and k.answers for k in kills)
    held = counts.lost == 0 and counts.duplicated == 0 and all_back and still_up and counts.created > 0
    lines = [
        f"{users} Locust users (loadtest/locustfile.py + bench/soak_users.py) for {loaded:.0f} s on the "
        f"local stack (passthrough); each component below got SIGKILL in turn, {slot:.0f} s apart.",
        "",
        "| component (kill -9) | pid before | pid after | back, ready, after s | same ports | answers 2xx |",
        "|---|---:|---:|---:|---|---|",
        *(
            f"| {VICTIMS[k.name]} | {k.old_pid} | {k.new_pid or '-'} | "
            f"{k.back_after:.1f} | {'yes' if k.same_ports else 'NO'} | {'yes' if k.answers else 'NO'} |"
            for k in kills
        ),
        "",
        "| recipes | count |",
        "|---|---:|",
        f"| created (the site answered 201, or 303 for the form) | {counts.created:,} |",
        f"| rows in SQLite | {counts.stored:,} |",
        f"| lost (answered, not stored) | {counts.lost} |",
        f"| duplicated (an ID answered twice, or a unique title stored twice) | {counts.duplicated} |",
        f"| creations without a 2xx answer (while a part was down) | {counts.failed:,} |",
        f"| of those, stored anyway (the answer was lost on the way) | {counts.saved_unanswered} |",
        "",
        "| proxy | RSS MB at start | RSS MB under load, before its kill | RSS MB at the end (restarted) |",
        "|---|---:|---:|---:|",
        *(
            f"| {p} | {rss_start[p]:.1f} | {rss_before_kill.get(p, float('nan')):.1f} | "
            f"{rss_end.get(p, float('nan')):.1f} |"
            for p in PROXIES
        ),
        "",
        f"Verdict: {'held' if held else 'DID NOT HOLD'}: {counts.lost} lost, {counts.duplicated} duplicated, "
        f"{sum(1 for k in kills if k.new_pid)} of {len(VICTIMS)} components back on the same ports, "
        f"stack {'still ready' if still_up else 'STOPPED'}.",
    ]
    return lines, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60; max 300)")
    parser.add_argument("--users", type=int, default=8, help="Locust users (default 8)")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 300 or not 0 < args.users <= 100:
        parser.error("--seconds must be in (0, 300] and --users in [1, 100]: the soak is bounded")
    workdir = Path(tempfile.mkdtemp(prefix="localmesh-soak-"))
    lines, held = soak(args.seconds, args.users, workdir)
    print("\n".join(lines))
    if held:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nlogs (the stack's, Locust's, every creation's outcome) kept in {workdir}")
    if not args.no_record:
        results.record(
            "soak", [*results.header_lines("4. Soak: kill -9 of each component under load"), *lines]
        )
        print(f"\nrecorded in {results.RESULTS}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 2, end to end: recipe creations per second through the whole chain, per egress option.

    python -m bench.chain [--seconds 5] [--rounds 3] [--connections 16] [--variant NAME:VAR=V,...]

POST /api/recipes on the site -> gateway -> idgen's sidecar (inbound) -> idgen -> idgen's sidecar
(outbound) -> the local httpbin, on a local stack started for the run as `make up` runs it (with
Prometheus scraping when it is installed), on free ports with its own state folder. Each option's
overlay is applied live, as `make demo` does; the rounds interleave the options so that other work
on the machine hits them alike, and figures are medians of the rounds.
Baseline, measured in the same run: the same apps wired directly (no gateway, no sidecar).

In blackhole every creation is refused (502 egress_blocked), so its figure is refusals per second.
Each process's CPU per request shows where the time goes. --variant starts extra stacks with other
settings (e.g. `--variant idgen-4x4:GUNICORN_WORKERS=4,GUNICORN_THREADS=4`) and measures them the same
way, for before/after comparisons of worker settings in one run.

Target (never asserted): >= 300 creations/s with p99 < 100 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, procstat, results
from bench.loadgen import Request, Result
from bench.stackrun import no_mesh
from localmesh.stack.driver import LocalStack, local_stack
from localmesh.stack.topology import OPTIONS, ROOT

TARGET_RATE = 300.0
TARGET_P99_MS = 100.0
BODY = json.dumps(
    {"title": "Bench soup", "author": "bench", "ingredients": ["water", "salt"], "steps": "Boil. Salt."}
).encode()
EXPECTED_STATUS = {"passthrough": 201, "blackhole": 502, "serviceentry": 201, "no mesh": 201}


@dataclass
class Series:
    """The rounds of one configuration."""

    loads: list[Result] = field(default_factory=list)
    cpu: Counter = field(default_factory=Counter)  # process -> CPU seconds over all rounds

    @property
    def requests(self) -> int:
        return sum(load.requests for load in self.loads)

    def statuses(self) -> Counter:
        total: Counter = Counter()
        for load in self.loads:
            total.update(load.statuses)
        return total

    def rate(self, status: int) -> float:
        """Answers with this status per second, median over the rounds."""
        return statistics.median(load.statuses[status] / load.seconds for load in self.loads)

    def p50(self) -> float:
        return statistics.median(load.p50_ms for load in self.loads)

    def p99(self) -> float:
        return statistics.median(load.p99_ms for load in self.loads)


def create_load(site: str, connections: int, seconds: float, python: bool) -> Result:
    req = Request(f"{site}/api/recipes", "POST", BODY, {"Content-Type": "application/json"})
    return loadgen.run(req, connections, seconds, count_statuses=True, force_python=python)


def measure(site: str, pids: dict[str, int], series: Series, args: argparse.Namespace) -> None:
    before = {name: procstat.tree_cpu_seconds(pid) for name, pid in pids.items()}
    series.loads.append(create_load(site, args.connections, args.seconds, args.python_client))
    for name, pid in pids.items():
        series.cpu[name] += procstat.tree_cpu_seconds(pid) - before[name]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    if not name or not env:
        raise argparse.ArgumentTypeError(f"expected NAME:VAR=VALUE[,VAR=VALUE], got {text!r}")
    return name, env


def run_all(args: argparse.Namespace, tmp: Path) -> dict[str, Series]:
    """Every configuration up at once (idle ones cost only memory), measured in interleaved rounds."""
    configs: dict[str, Series] = {}
    # (configuration, site URL, PIDs to charge CPU to, (stack, option) to apply first or None)
    plan: list[tuple[str, str, dict[str, int], tuple[LocalStack, str] | None]] = []
    with contextlib.ExitStack() as running:
        direct = running.enter_context(no_mesh(Path(tempfile.mkdtemp(dir=tmp))))
        plan.append(("no mesh", direct.site, direct.pids, None))
        stacks = [("", {})] + [(f", {name}", env) for name, env in args.variant]
        for suffix, env in stacks:
            print(f"starting a local stack{suffix or ''} {env or ''}".rstrip(), flush=True)
            stack = running.enter_context(local_stack(Path(tempfile.mkdtemp(dir=tmp)), env))
            pids = {n: pid for n, pid in stack.children().items() if n not in ("console", "prometheus")}
            for option in OPTIONS if not suffix else ("passthrough",):
                plan.append((f"{option}{suffix}", stack.site, pids, (stack, option)))
        for round_no in range(1, args.rounds + 1):
            for name, site, pids, target in plan:
                print(f"  round {round_no}: {name}", flush=True)
                if target is not None:
                    stack, option = target
                    stack.apply(option)
                create_load(site, 4, 1, args.python_client)  # warm up the pools (after a push)
                measure(site, pids, configs.setdefault(name, Series()), args)
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--python-client", action="store_true", help="the Python client even if wrk exists")
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        help="NAME:VAR=V,... extra stack settings",
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)

    head = results.header_lines("2. End to end: recipe creation")
    print(f"load generator: {loadgen.tool_name(args.python_client)}")
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp_name:
        configs = run_all(args, Path(tmp_name))
    text = [*head, f"- load generator: {loadgen.tool_name(args.python_client)}", "", *report(configs, args)]
    print("\n".join(text))
    if not args.no_record:
        results.record("chain", text)
        print(f"\nwritten to {results.RESULTS.relative_to(ROOT)}")
    return 0


def _expected(name: str) -> int:
    return EXPECTED_STATUS[name.split(",")[0]]


def report(configs: dict[str, Series], args: argparse.Namespace) -> list[str]:
    base = configs["no mesh"]
    base_rate, base_p99 = base.rate(201), base.p99()
    lines = [
        f"POST /api/recipes, {args.connections} connections, {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per configuration; medians of the rounds.",
        "",
        "| configuration | expected answer | answers/s | ratio to no mesh | p50 ms | p99 ms "
        "| p99 ratio | other answers |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, series in configs.items():
        want = _expected(name)
        rate = series.rate(want)
        others = {code: n for code, n in series.statuses().items() if code != want}
        what = "201 created" if want == 201 else "502 egress_blocked"
        lines.append(
            f"| {name} | {what} | {rate:,.0f} | {results.ratio(rate, base_rate)} | {series.p50():.1f} "
            f"| {series.p99():.1f} | {results.ratio(series.p99(), base_p99)} | {others or '-'} |"
        )
    names = sorted({proc for s in configs.values() for proc in s.cpu})
    lines += [
        "",
        "CPU milliseconds per request, per process (all its workers), over all rounds:",
        "",
        "| configuration | " + " | ".join(names) + " | total |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for name, series in configs.items():
        per = {proc: series.cpu[proc] / series.requests * 1000 if series.requests else 0.0 for proc in names}
        cells = " | ".join(f"{per[proc]:.2f}" if proc in series.cpu else "-" for proc in names)
        lines.append(f"| {name} | {cells} | {sum(per.values()):.2f} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for name in ("passthrough", "serviceentry"):
        series = configs[name]
        rate, p99 = series.rate(201), series.p99()
        ok = rate >= TARGET_RATE and p99 < TARGET_P99_MS
        lines.append(
            f"| {name}: >= {TARGET_RATE:.0f} creations/s, p99 < {TARGET_P99_MS:.0f} ms | {rate:,.0f}/s "
            f"({results.ratio(rate, TARGET_RATE)} of the target), p99 {p99:.1f} ms | {results.verdict(ok)} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())

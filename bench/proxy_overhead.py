"""Benchmark 1, proxy overhead: what the local mesh's proxies add to a request, and what they cost.

    python -m bench.proxy_overhead [--seconds 5] [--connections 32] [--rate 1000] [--profile]

Four paths to one trivial fast upstream (bench/fastupstream.py), each measured twice with the same
load generator (wrk when installed, else bench/loadgen.py's Python client):
  direct    client -> upstream                              (the baseline)
  outbound  client -> idgen's sidecar, outbound -> upstream (idgen calling httpbin.org)
  inbound   client -> idgen's sidecar, inbound -> app        (one hop in front of the app)
  gateway   client -> gateway -> sidecar inbound -> app     (the site calling idgen's /id)
First at a fixed concurrency as fast as they go (throughput, p50, p99), then paced at --rate requests/s
(the latency a proxy adds at that rate, and each proxy's CPU per 1000 requests). CPU comes from
/proc/<pid>/stat (user + system), memory from /proc/<pid>/status (VmRSS now, VmHWM peak).

Targets (half of Istio's published Envoy figures, never asserted anywhere):
https://istio.io/latest/docs/ops/deployment/performance-and-scalability/ gives 0.20 vCPU and 60 MB
per 1000 requests/s for Envoy (1 KB payloads); here: < 0.10 vCPU per 1000 req/s and < 30 MB resident,
>= 10,000 proxied req/s on one core, < 2 ms added p99 at 1,000 req/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, procstat, profile, results
from bench.loadgen import Request, Result
from bench.parts import Rig, proxy_rig
from localmesh.stack.topology import EXTERNAL_HOST, IDGEN_SERVICE, ROOT

TARGET_VCPU_PER_1000 = 0.10
TARGET_RSS_MB = 30.0
TARGET_ONE_CORE_RPS = 10_000
TARGET_ADDED_P99_MS = 2.0


@dataclass
class Leg:
    """One way through the rig: the request the load generator sends and the proxies it crosses."""

    name: str
    request: Request
    proxies: tuple[str, ...]  # which proxies the path crosses ("sidecar", "gateway")
    label: str


@dataclass
class Measured:
    load: Result
    cpu: dict[str, float]  # proxy -> CPU seconds used during the run
    wall: float = 0.0  # real seconds the run(s) took; 0: load.seconds

    def cpu_per_1000(self, proxy: str) -> float:
        return self.cpu[proxy] / self.load.requests * 1000 if self.load.requests else 0.0

    def utilisation(self, proxy: str) -> float:
        wall = self.wall or self.load.seconds
        return self.cpu[proxy] / wall if wall else 0.0


def merge(runs: list[Measured]) -> Measured:
    """Several rounds of one path as one: totals for counts and CPU, medians for rate and latency."""
    loads = [m.load for m in runs]
    seconds = sum(load.seconds for load in loads)
    requests = sum(load.requests for load in loads)
    # Scale the summed time so that requests / seconds is the median round's rate.
    rate = statistics.median(load.rps for load in loads)
    load = Result(
        loads[0].tool,
        requests,
        requests / rate if rate else seconds,
        statistics.median(load.p50_ms for load in loads),
        statistics.median(load.p99_ms for load in loads),
        max(load.max_ms for load in loads),
    )
    cpu = {proxy: sum(m.cpu[proxy] for m in runs) for proxy in runs[0].cpu}
    # CPU per request stays exact (totals); cores used is CPU over the real time of all rounds.
    return Measured(load, cpu, wall=seconds)


def paths(rig: Rig) -> list[Leg]:
    return [
        Leg("direct", Request(f"{rig.upstream}/uuid"), (), "client -> upstream (baseline)"),
        Leg(
            "outbound",
            Request(f"{rig.outbound}/uuid", headers={"Host": EXTERNAL_HOST}),
            ("sidecar",),
            "client -> sidecar outbound -> upstream",
        ),
        Leg(
            "inbound",
            Request(f"{rig.inbound}/id", headers={"Host": IDGEN_SERVICE}),
            ("sidecar",),
            "client -> sidecar inbound -> app",
        ),
        Leg(
            "gateway",
            Request(f"{rig.gateway}/id"),
            ("gateway", "sidecar"),
            "client -> gateway -> sidecar inbound -> app",
        ),
    ]


def measure(
    rig: Rig,
    path: Leg,
    connections: int,
    seconds: float,
    rate: float | None,
    python: bool,
) -> Measured:
    pids = {"sidecar": rig.sidecar.pid, "gateway": rig.gateway_child.pid}
    before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    load = loadgen.run(path.request, connections, seconds, rate=rate, force_python=python)
    after = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    if load.socket_errors or load.non2xx or not load.requests:
        raise RuntimeError(
            f"{path.name}: {load.requests} requests, {load.socket_errors} socket errors, "
            f"{load.non2xx} non-2xx answers: the rig is broken, figures would mean nothing"
        )
    return Measured(load, {name: after[name] - before[name] for name in pids})


def run_profiles(rig: Rig, connections: int, seconds: float, python: bool, out_dir: Path) -> list[str]:
    """py-spy on the sidecar (outbound path) and the gateway (gateway path) under saturation."""
    lines = []
    for proxy, path_name in (("sidecar", "outbound"), ("gateway", "gateway")):
        child = rig.sidecar if proxy == "sidecar" else rig.gateway_child
        path = next(p for p in paths(rig) if p.name == path_name)
        out = out_dir / f"profile-{proxy}.txt"
        sampler = profile.start(child.pid, seconds, out)
        loadgen.run(path.request, connections, seconds + 1, force_python=python)
        top = profile.finish(sampler, out)
        lines += [
            f"py-spy, {proxy} saturated on the {path_name} path (raw stacks: {out.relative_to(ROOT)}):",
            "",
        ]
        lines += ["| self time | frame |", "|---:|---|"] + [
            f"| {pct:.1f}% | `{frame}` |" for pct, frame in top
        ]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=32, help="fixed concurrency (default 32)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="paced rate for latency/CPU (default 1000)"
    )
    parser.add_argument("--paced-connections", type=int, default=10, help="connections of the paced run")
    parser.add_argument(
        "--python-client", action="store_true", help="use the Python client even if wrk exists"
    )
    parser.add_argument("--profile", action="store_true", help="also sample the proxies with py-spy")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)

    head = results.header_lines("1. Proxy overhead")
    print(f"load generator: {loadgen.tool_name(args.python_client)}")
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, proxy_rig(Path(tmp)) as rig:
        path_info = [(p.name, p.label, p.proxies) for p in paths(rig)]
        # Warm up every path (connection pools, first-request allocations) before measuring.
        for path in paths(rig):
            loadgen.run(path.request, 4, 1, force_python=args.python_client)
        # Rounds interleave the paths, so a burst of other work on the machine hits them all alike;
        # each figure is the median over the rounds.
        runs: dict[tuple[str, str], list[Measured]] = {}
        asked: dict[str, float] = {}
        for round_no in range(1, args.rounds + 1):
            for path in paths(rig):
                print(f"  round {round_no}: {path.name:9} fixed concurrency {args.connections}", flush=True)
                runs.setdefault(("saturated", path.name), []).append(
                    measure(rig, path, args.connections, args.seconds, None, args.python_client)
                )
            for path in paths(rig):
                print(f"  round {round_no}: {path.name:9} paced at {args.rate:g} req/s", flush=True)
                ask = asked.get(path.name, args.rate)
                done = measure(rig, path, args.paced_connections, args.seconds, ask, args.python_client)
                runs.setdefault(("paced", path.name), []).append(done)
                # wrk waits its delay after each answer, so the achieved rate falls short by the
                # latency; ask a little more in the next round to land on --rate.
                asked[path.name] = ask * min(1.5, max(0.8, args.rate / done.load.rps))
        saturated = {name: merge(ms) for (kind, name), ms in runs.items() if kind == "saturated"}
        paced = {name: merge(ms) for (kind, name), ms in runs.items() if kind == "paced"}
        memory = {
            name: (procstat.rss_mb(child.pid), procstat.peak_rss_mb(child.pid))
            for name, child in (("sidecar", rig.sidecar), ("gateway", rig.gateway_child))
        }
        profile_lines = []
        if args.profile:
            if profile.available():
                print("  profiling with py-spy ...", flush=True)
                profile_lines = run_profiles(
                    rig, args.connections, args.seconds, args.python_client, ROOT / "out"
                )
            else:
                profile_lines = [
                    "(py-spy is not installed: `make setup` installs it from requirements-dev.txt)"
                ]

    lines = report(path_info, saturated, paced, memory, args)
    text = [
        *head,
        f"- load generator: {loadgen.tool_name(args.python_client)}",
        "",
        *lines,
        "",
        *profile_lines,
    ]
    print("\n".join(text))
    if not args.no_record:
        results.record("proxy", text)
        print(f"\nwritten to {results.RESULTS.relative_to(ROOT)}")
    return 0


def report(
    path_info: list[tuple[str, str, tuple[str, ...]]],
    saturated: dict[str, Measured],
    paced: dict[str, Measured],
    memory: dict[str, tuple[float, float]],
    args: argparse.Namespace,
) -> list[str]:
    base_sat, base_paced = saturated["direct"].load, paced["direct"].load
    lines = [
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per path and load; medians of the rounds. "
        f"Fixed concurrency: {args.connections} connections; "
        f"paced: {args.paced_connections} connections at {args.rate:g} req/s in total.",
        "",
        "| path | req/s | ratio to direct | p50 ms | p99 ms | paced req/s | paced p50 ms | paced p99 ms "
        "| added p99 ms (paced) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, _ in path_info:
        s, p = saturated[name].load, paced[name].load
        added = "-" if name == "direct" else f"{p.p99_ms - base_paced.p99_ms:+.2f}"
        lines.append(
            f"| {name}: {label} | {s.rps:,.0f} | {results.ratio(s.rps, base_sat.rps)} | {s.p50_ms:.2f} "
            f"| {s.p99_ms:.2f} | {p.rps:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {added} |"
        )
    lines += [
        "",
        "Per proxy: CPU seconds per 1000 requests (= vCPU per 1000 req/s) in the paced run, its CPU use "
        "(cores) and proxied requests per CPU-second at fixed concurrency, memory after all runs.",
        "",
        "| path | proxy | CPU s / 1000 req (paced) | cores used (saturated) "
        "| req per proxy CPU-s (saturated) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, _, proxies in path_info:
        for proxy in proxies:
            s, p = saturated[name], paced[name]
            per_cpu_s = s.load.requests / s.cpu[proxy] if s.cpu[proxy] else 0.0
            lines.append(
                f"| {name} | {proxy} | {p.cpu_per_1000(proxy):.3f} | {s.utilisation(proxy):.2f} "
                f"| {per_cpu_s:,.0f} |"
            )
    lines += ["", "| proxy | VmRSS MB | VmHWM (peak) MB |", "|---|---:|---:|"]
    lines += [f"| {proxy} | {rss:.1f} | {peak:.1f} |" for proxy, (rss, peak) in memory.items()]

    out_sat, out_paced = saturated["outbound"], paced["outbound"]
    gw_paced = paced["gateway"]
    sidecar_cpu = max(paced["outbound"].cpu_per_1000("sidecar"), paced["inbound"].cpu_per_1000("sidecar"))
    sidecar_rss = memory["sidecar"][1]
    one_core = out_sat.load.requests / out_sat.cpu["sidecar"] if out_sat.cpu["sidecar"] else 0.0
    added = out_paced.load.p99_ms - base_paced.p99_ms
    added_gw = gw_paced.load.p99_ms - base_paced.p99_ms
    checks = [
        (
            f"sidecar CPU per 1000 req/s < {TARGET_VCPU_PER_1000} vCPU",
            f"{sidecar_cpu:.3f} vCPU ({results.ratio(sidecar_cpu, TARGET_VCPU_PER_1000)} of the target; "
            f"Envoy per Istio: 0.20)",
            sidecar_cpu < TARGET_VCPU_PER_1000,
        ),
        (
            f"sidecar resident memory < {TARGET_RSS_MB:.0f} MB",
            f"{sidecar_rss:.1f} MB peak ({results.ratio(sidecar_rss, TARGET_RSS_MB)} of the target; "
            "Envoy: 60)",
            sidecar_rss < TARGET_RSS_MB,
        ),
        (
            f"one proxy, one core >= {TARGET_ONE_CORE_RPS:,} req/s",
            f"{out_sat.load.rps:,.0f} req/s through the sidecar "
            f"using {out_sat.utilisation('sidecar'):.2f} cores; {one_core:,.0f} req per sidecar CPU-second "
            f"({results.ratio(out_sat.load.rps, TARGET_ONE_CORE_RPS)} of the target)",
            out_sat.load.rps >= TARGET_ONE_CORE_RPS and out_sat.utilisation("sidecar") <= 1.05,
        ),
        (
            f"added p99 at {args.rate:g} req/s < {TARGET_ADDED_P99_MS} ms",
            f"{added:+.2f} ms one hop (sidecar outbound; {out_paced.load.rps:,.0f} req/s achieved), "
            f"{added_gw:+.2f} ms two hops (gateway + sidecar)",
            added < TARGET_ADDED_P99_MS,
        ),
    ]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {results.verdict(ok)} |" for target, measured, ok in checks]
    return lines


if __name__ == "__main__":
    sys.exit(main())

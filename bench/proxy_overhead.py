"""Benchmark 1, proxy overhead: what the local mesh's proxies add to a request and what they cost,
side by side with real Envoy configured from the same route tables, in the same run.

    python -m bench.proxy_overhead [--seconds 3] [--rounds 3] [--connections 32] [--rate 1000] [--profile]

One trivial fast upstream (bench/fastupstream.py) plays both the app and httpbin.org. Each hop is
measured through both data planes (the local Python proxies, and Envoy as localmesh.pilot.xds
configures it, metrics on in both: Istio's metrics, from Envoy's stats access logger), with the same
load generator (wrk when installed, else bench/loadgen.py's Python client):
  direct    client -> upstream                          (the baseline)
  outbound  client -> idgen's sidecar, outbound -> upstream  (idgen calling httpbin.org)
  inbound   client -> idgen's sidecar, inbound -> app        (one hop in front of the app)
  gateway   client -> gateway -> sidecar inbound -> app      (the site calling idgen's /id)
First at a fixed concurrency as fast as they go (throughput, requests per proxy CPU-second), then
paced at --rate requests/s (the p99 a hop adds at that rate, each proxy's CPU per 1000 requests).
Each data plane works on one thread: the local proxies are one asyncio loop each, Envoy runs with
--concurrency 1. Rounds interleave every path, and the order of the two data planes alternates from
round to round, so a burst of other work on the machine hits both alike.
CPU comes from /proc/<pid>/stat (user + system, all threads), memory from /proc/<pid>/smaps_rollup
(private: what the process alone holds) and /proc/<pid>/status (VmRSS total, VmHWM peak).

Verdicts (never asserted; a FAIL is printed, and the exit code stays 0 whenever figures were
measured): for each hop, the local proxy against Envoy in the same run, at least 1.0x Envoy's
requests per CPU-second, at most 1.0x its CPU per 1000 requests and its private memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import loadgen, procstat, profile, results
from bench.loadgen import Request, Result
from bench.parts import DATAPLANES, ENVOY_CONCURRENCY, Proxies, Rig, proxy_rig
from egresswatch.exposition import parse_text
from localmesh.envoy.binary import EnvoyUnavailable
from localmesh.stack.procs import Child
from localmesh.stack.topology import EXTERNAL_HOST, IDGEN_SERVICE, ROOT

HOPS = ("outbound", "inbound", "gateway")
# The proxy each hop judges: the sidecar for its own two hops, the gateway for the gateway hop (its
# sidecar inbound is the inbound hop again, reported but not judged twice).
JUDGED = {"outbound": "sidecar", "inbound": "sidecar", "gateway": "gateway"}
# Istio's published sidecar figures and the conditions they hold under (Istio 1.24, "Sidecar and
# ztunnel resource usage" and "Latency for Istio 1.24"), from
# https://istio.io/latest/docs/ops/deployment/performance-and-scalability/
# (istio/istio.io content/en/docs/ops/deployment/performance-and-scalability/index.md).
ISTIO_PAGE = "https://istio.io/latest/docs/ops/deployment/performance-and-scalability/"
ISTIO_VCPU_PER_1000 = 0.20
ISTIO_MEMORY_MB = 60.0
ISTIO_CONDITIONS = (
    "Istio 1.24, one sidecar at 1000 HTTP/1.1 requests/s with 1 KB payloads, 2 Envoy worker threads, "
    "mutual TLS on, in a load-test mesh of 1000 services and 2000 pods on bare-metal machines"
)
# The probe's claim this benchmark checks: the local sidecar does about 2x Envoy's requests per
# CPU-second with metrics on. "About 2x" is read as within 20 % of 2x.
PROBE_RANGE = (1.6, 2.4)
LABELS = {
    "outbound": "client -> sidecar outbound -> upstream",
    "inbound": "client -> sidecar inbound -> app",
    "gateway": "client -> gateway -> sidecar inbound -> app",
}


@dataclass
class Leg:
    """One way through the rig: the request the load generator sends and the proxies it crosses."""

    hop: str  # "direct" or one of HOPS
    dataplane: str  # "python", "envoy", or "-" for direct
    request: Request
    proxies: dict[str, Child]  # role ("sidecar", "gateway") -> its process

    @property
    def key(self) -> tuple[str, str]:
        return self.hop, self.dataplane


@dataclass
class Measured:
    load: Result
    cpu: dict[str, float]  # proxy role -> CPU seconds used during the run
    wall: float = 0.0  # real seconds the run(s) took; 0: load.seconds

    def cpu_per_1000(self, proxy: str) -> float:
        return self.cpu[proxy] / self.load.requests * 1000 if self.load.requests else 0.0

    def per_cpu_second(self, proxy: str) -> float:
        return self.load.requests / self.cpu[proxy] if self.cpu[proxy] else 0.0

    def utilisation(self, proxy: str) -> float:
        wall = self.wall or self.load.seconds
        return self.cpu[proxy] / wall if wall else 0.0


@dataclass
class Memory:
    private_mb: float
    rss_mb: float
    peak_mb: float
    requests_counted: float  # the proxy's istio_requests_total, summed: its metrics were on


Figures = dict[tuple[str, str], Measured]  # (hop, data plane) -> its rounds merged


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


def hop_legs(plane: Proxies) -> list[Leg]:
    sidecar, gateway = plane.sidecar, plane.gateway_child
    name = plane.dataplane
    return [
        Leg(
            "outbound",
            name,
            Request(f"{plane.outbound}/uuid", headers={"Host": EXTERNAL_HOST}),
            {"sidecar": sidecar},
        ),
        Leg(
            "inbound",
            name,
            Request(f"{plane.inbound}/id", headers={"Host": IDGEN_SERVICE}),
            {"sidecar": sidecar},
        ),
        Leg(
            "gateway",
            name,
            Request(f"{plane.gateway}/id"),
            {"gateway": gateway, "sidecar": sidecar},
        ),
    ]


def paths(rig: Rig, round_no: int = 1) -> list[Leg]:
    """The baseline, then each hop through every data plane; the planes' order flips every round."""
    planes = list(rig.planes.values())
    if round_no % 2 == 0:
        planes.reverse()
    legs = [Leg("direct", "-", Request(f"{rig.upstream}/uuid"), {})]
    by_plane = [hop_legs(plane) for plane in planes]
    for i in range(len(HOPS)):
        legs += [legs_of_plane[i] for legs_of_plane in by_plane]
    return legs


def measure(leg: Leg, connections: int, seconds: float, rate: float | None, python: bool) -> Measured:
    before = {role: procstat.cpu_seconds(child.pid) for role, child in leg.proxies.items()}
    load = loadgen.run(leg.request, connections, seconds, rate=rate, force_python=python)
    after = {role: procstat.cpu_seconds(child.pid) for role, child in leg.proxies.items()}
    if load.socket_errors or load.non2xx or not load.requests:
        raise RuntimeError(
            f"{leg.hop} ({leg.dataplane}): {load.requests} requests, {load.socket_errors} socket errors, "
            f"{load.non2xx} non-2xx answers: the rig is broken, figures would mean nothing"
        )
    return Measured(load, {role: after[role] - before[role] for role in leg.proxies})


def requests_counted(admin: str) -> float:
    """istio_requests_total summed over a proxy's series (Envoy's stats logger names it
    envoy_istio_requests_total): non-zero means its metrics were on during the run."""
    text = requests.get(f"{admin}/stats/prometheus", timeout=10).text
    names = ("istio_requests_total", "envoy_istio_requests_total")
    return sum(parse_text(text, names).values())


def memory_of(plane: Proxies) -> dict[str, Memory]:
    found = {}
    for role, child, admin in (
        ("sidecar", plane.sidecar, plane.sidecar_admin),
        ("gateway", plane.gateway_child, plane.gateway_admin),
    ):
        pid = child.pid
        found[role] = Memory(
            procstat.private_mb(pid), procstat.rss_mb(pid), procstat.peak_rss_mb(pid), requests_counted(admin)
        )
    return found


def envoy_version(plane: Proxies) -> str:
    """The release Envoy reports: its /server_info version is "<commit>/<release>/<status>/..."."""
    full = str(requests.get(f"{plane.sidecar_admin}/server_info", timeout=10).json().get("version", "?"))
    parts = full.split("/")
    return parts[1] if len(parts) > 1 else full


def run_profiles(rig: Rig, connections: int, seconds: float, python: bool, out_dir: Path) -> list[str]:
    """py-spy on the local sidecar (outbound path) and gateway (gateway path) under saturation."""
    lines = []
    plane = rig.planes["python"]
    legs = {leg.hop: leg for leg in hop_legs(plane)}
    for proxy, hop in (("sidecar", "outbound"), ("gateway", "gateway")):
        child = legs[hop].proxies[proxy]
        out = out_dir / f"profile-{proxy}.txt"
        sampler = profile.start(child.pid, seconds, out)
        loadgen.run(legs[hop].request, connections, seconds + 1, force_python=python)
        top = profile.finish(sampler, out)
        lines += [
            f"py-spy, local {proxy} saturated on the {hop} path (raw stacks: {out.relative_to(ROOT)}):",
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
    parser.add_argument("--profile", action="store_true", help="also sample the local proxies with py-spy")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)

    head = results.header_lines("1. Proxy overhead, local proxies and Envoy side by side")
    print(f"load generator: {loadgen.tool_name(args.python_client)}")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp,
            proxy_rig(Path(tmp), dataplanes=DATAPLANES) as rig,
        ):
            saturated, paced, memory, version, profile_lines = run_rounds(rig, args)
    except EnvoyUnavailable as err:
        print(f"bench-proxy: cannot measure Envoy beside the local proxies: {err}", file=sys.stderr)
        return 2

    lines = report(saturated, paced, memory, version, args)
    tool = f"- load generator: {loadgen.tool_name(args.python_client)}"
    text = [*head, tool, "", *lines, "", *profile_lines]
    print("\n".join(text))
    if not args.no_record:
        results.record("proxy", text)
        print(f"\nwritten to {results.RESULTS.relative_to(ROOT)}")
    return 0


def run_rounds(
    rig: Rig, args: argparse.Namespace
) -> tuple[Figures, Figures, dict[str, dict[str, Memory]], str, list[str]]:
    # Warm up every path (connection pools, first-request allocations) before measuring.
    for leg in paths(rig):
        loadgen.run(leg.request, 4, min(1.0, args.seconds), force_python=args.python_client)
    runs: dict[tuple[str, str, str], list[Measured]] = {}
    asked: dict[tuple[str, str], float] = {}
    for round_no in range(1, args.rounds + 1):
        for leg in paths(rig, round_no):
            print(f"  round {round_no}: {leg.hop:9} {leg.dataplane:6} saturated", flush=True)
            runs.setdefault(("saturated", *leg.key), []).append(
                measure(leg, args.connections, args.seconds, None, args.python_client)
            )
        for leg in paths(rig, round_no):
            print(f"  round {round_no}: {leg.hop:9} {leg.dataplane:6} paced", flush=True)
            ask = asked.get(leg.key, args.rate)
            done = measure(leg, args.paced_connections, args.seconds, ask, args.python_client)
            runs.setdefault(("paced", *leg.key), []).append(done)
            # wrk waits its delay after each answer, so the achieved rate falls short by the
            # latency; ask a little more in the next round to land on --rate.
            asked[leg.key] = ask * min(1.5, max(0.8, args.rate / done.load.rps))
    saturated = {(hop, dp): merge(ms) for (kind, hop, dp), ms in runs.items() if kind == "saturated"}
    paced = {(hop, dp): merge(ms) for (kind, hop, dp), ms in runs.items() if kind == "paced"}
    memory = {name: memory_of(plane) for name, plane in rig.planes.items()}
    version = envoy_version(rig.planes["envoy"])
    profile_lines: list[str] = []
    if args.profile:
        if profile.available():
            print("  profiling with py-spy ...", flush=True)
            out = ROOT / "out"
            profile_lines = run_profiles(rig, args.connections, args.seconds, args.python_client, out)
        else:
            profile_lines = ["(py-spy is not installed: `make setup` installs it from requirements-dev.txt)"]
    return saturated, paced, memory, version, profile_lines


def passed(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    saturated: Figures,
    paced: Figures,
    memory: dict[str, dict[str, Memory]],
    version: str,
    args: argparse.Namespace,
) -> list[str]:
    base_sat, base_paced = saturated[("direct", "-")].load, paced[("direct", "-")].load
    planes = {"python": "local (Python)", "envoy": f"Envoy {version}"}
    lines = [
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per path and load; medians of the rounds. "
        f"Fixed concurrency: {args.connections} connections; "
        f"paced: {args.paced_connections} connections at {args.rate:g} req/s in total. "
        f"One worker per proxy: the local proxies run one asyncio loop, Envoy `--concurrency "
        f"{ENVOY_CONCURRENCY}`. Both data planes get the same route tables (passthrough) and export "
        "Istio's metrics (the memory table counts their istio_requests_total).",
        "",
        "| hop | data plane | req/s | ratio to direct | p50 ms | p99 ms | paced req/s | paced p99 ms "
        "| added p99 ms (paced) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| direct: client -> upstream (baseline) | - | {base_sat.rps:,.0f} | 1.00x | {base_sat.p50_ms:.2f} "
        f"| {base_sat.p99_ms:.2f} | {base_paced.rps:,.0f} | {base_paced.p99_ms:.2f} | - |",
    ]
    for hop in HOPS:
        for dp, plane_name in planes.items():
            s, p = saturated[(hop, dp)].load, paced[(hop, dp)].load
            lines.append(
                f"| {hop}: {LABELS[hop]} | {plane_name} | {s.rps:,.0f} "
                f"| {results.ratio(s.rps, base_sat.rps)} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
                f"| {p.rps:,.0f} | {p.p99_ms:.2f} "
                f"| {p.p99_ms - base_paced.p99_ms:+.2f} |"
            )
    lines += [
        "",
        "Per proxy: CPU seconds per 1000 requests (= vCPU per 1000 req/s) in the paced run; at fixed "
        "concurrency, its CPU use (cores) and the requests it carried per CPU-second it used (what one "
        "core would carry with the proxy as the bottleneck).",
        "",
        "| hop | proxy | data plane | CPU s / 1000 req (paced) | cores used (saturated) "
        "| req per proxy CPU-s (saturated) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for hop in HOPS:
        for proxy in saturated[(hop, "python")].cpu:
            for dp, plane_name in planes.items():
                s, p = saturated[(hop, dp)], paced[(hop, dp)]
                lines.append(
                    f"| {hop} | {proxy} | {plane_name} | {p.cpu_per_1000(proxy):.3f} "
                    f"| {s.utilisation(proxy):.2f} | {s.per_cpu_second(proxy):,.0f} |"
                )
    lines += [
        "",
        "Memory after all runs: private (Private_Clean + Private_Dirty, what the process alone holds: "
        "its heap and written pages), total resident (VmRSS, which also counts the executable's and "
        "libraries' pages shared with other processes) and its peak (VmHWM).",
        "",
        "| proxy | data plane | private MB | VmRSS MB | VmHWM (peak) MB | istio_requests_total counted |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for proxy in ("sidecar", "gateway"):
        for dp, plane_name in planes.items():
            m = memory[dp][proxy]
            lines.append(
                f"| {proxy} | {plane_name} | {m.private_mb:.1f} | {m.rss_mb:.1f} | {m.peak_mb:.1f} "
                f"| {m.requests_counted:,.0f} |"
            )
    lines += verdicts(saturated, paced, memory)
    lines += istio_context(paced, memory, version)
    return lines


def verdicts(saturated: Figures, paced: Figures, memory: dict[str, dict[str, Memory]]) -> list[str]:
    """Each hop's proxy, local against Envoy in this run: PASS or FAIL with the ratio."""
    lines = [
        "",
        "Verdicts, each hop's proxy (the sidecar for outbound and inbound, the gateway for the gateway "
        "hop), local over Envoy in this run:",
        "",
        "| hop | criterion | local | Envoy | local / Envoy | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for hop in HOPS:
        proxy = JUDGED[hop]
        local_s, envoy_s = saturated[(hop, "python")], saturated[(hop, "envoy")]
        local_p, envoy_p = paced[(hop, "python")], paced[(hop, "envoy")]
        local_m, envoy_m = memory["python"][proxy], memory["envoy"][proxy]
        rows = [
            (
                f"{proxy} requests per CPU-second (saturated) >= 1.0x Envoy's",
                local_s.per_cpu_second(proxy),
                envoy_s.per_cpu_second(proxy),
                ">=",
                "{:,.0f}",
            ),
            (
                f"{proxy} CPU s per 1000 requests (paced) <= 1.0x Envoy's",
                local_p.cpu_per_1000(proxy),
                envoy_p.cpu_per_1000(proxy),
                "<=",
                "{:.3f}",
            ),
            (
                f"{proxy} private memory <= 1.0x Envoy's",
                local_m.private_mb,
                envoy_m.private_mb,
                "<=",
                "{:.1f} MB",
            ),
        ]
        for criterion, local, envoy, way, fmt in rows:
            share = ratio_of(local, envoy)
            ok = bool(envoy) and (share >= 1.0 if way == ">=" else share <= 1.0)
            lines.append(
                f"| {hop} | {criterion} | {fmt.format(local)} | {fmt.format(envoy)} "
                f"| {results.ratio(local, envoy)} | {passed(ok)} |"
            )
    return lines + probe_claim(saturated, paced)


def probe_claim(saturated: Figures, paced: Figures) -> list[str]:
    """The probe's claim against this run: the sidecar's requests per CPU-second over Envoy's, at
    saturation and at the paced rate (there: Envoy's CPU per 1000 requests over the local one's)."""
    low, high = PROBE_RANGE
    found = []
    for hop in (hop for hop in HOPS if JUDGED[hop] == "sidecar"):
        local_s, envoy_s = saturated[(hop, "python")], saturated[(hop, "envoy")]
        local_p, envoy_p = paced[(hop, "python")], paced[(hop, "envoy")]
        found += [
            (
                f"{hop} saturated",
                ratio_of(local_s.per_cpu_second("sidecar"), envoy_s.per_cpu_second("sidecar")),
            ),
            (f"{hop} paced", ratio_of(envoy_p.cpu_per_1000("sidecar"), local_p.cpu_per_1000("sidecar"))),
        ]
    inside = [low <= value <= high for _, value in found]
    if all(inside):
        answer = "confirmed"
    elif any(inside):
        answer = "partly confirmed"
    else:
        answer = "refuted (lower)" if all(value < low for _, value in found) else "refuted"
    measured = ", ".join(f"{value:.2f}x ({what})" for what, value in found)
    return [
        "",
        f"The probe's claim, the local sidecar at about 2x Envoy's requests per CPU-second with metrics "
        f"on (read as {low:g}x to {high:g}x): **{answer}** by this run, which measured {measured}.",
    ]


def ratio_of(value: float, baseline: float) -> float:
    return value / baseline if baseline else 0.0


def istio_context(paced: Figures, memory: dict[str, dict[str, Memory]], version: str) -> list[str]:
    """Istio's published sidecar figures beside this run's, with both sets of conditions: context,
    not a verdict, since the conditions differ."""
    envoy_cpu = max(paced[(hop, "envoy")].cpu_per_1000("sidecar") for hop in ("outbound", "inbound"))
    local_cpu = max(paced[(hop, "python")].cpu_per_1000("sidecar") for hop in ("outbound", "inbound"))
    envoy_m, local_m = memory["envoy"]["sidecar"], memory["python"]["sidecar"]
    return [
        "",
        f"For context only, Istio's published sidecar figures ({ISTIO_PAGE}), under their conditions: "
        f"{ISTIO_CONDITIONS}. Here: Envoy {version} with {ENVOY_CONCURRENCY} worker, plain HTTP/1.1 over "
        "loopback (no TLS), 53-byte answers, two small route tables; the sidecar's costlier hop. "
        "No verdict is drawn from it: TLS, payload size and worker count all move these figures.",
        "",
        "| figure | Istio 1.24 sidecar (published) | Envoy sidecar here | local sidecar here |",
        "|---|---:|---:|---:|",
        f"| vCPU per 1000 req/s | {ISTIO_VCPU_PER_1000:.2f} | {envoy_cpu:.3f} | {local_cpu:.3f} |",
        f"| memory MB (Istio: per sidecar; here: VmRSS, private) | {ISTIO_MEMORY_MB:.0f} "
        f"| {envoy_m.rss_mb:.1f}, {envoy_m.private_mb:.1f} "
        f"| {local_m.rss_mb:.1f}, {local_m.private_mb:.1f} |",
    ]


if __name__ == "__main__":
    sys.exit(main())

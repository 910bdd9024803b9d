"""`make demo`: the three egress options, one after another, on the local mesh.

For each option: apply its overlay (pushed live, as istiod would), create N recipes through the
site over real HTTP, then print what the site saw, what the metrics say (from Prometheus when it
runs, else straight from the proxies, and it says which), and a verdict against the table of
docs/istio-facts.md ("The three egress options"). Exits 1 if any option behaves differently.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from egresswatch import api
from egresswatch.api import REQUESTS, EgressWatchError, SeriesKey, Snapshot, write_graph
from localmesh import cli
from localmesh.demopage import DemoPage, Step
from localmesh.expected import EGRESS_SELECTOR, EXPECTATIONS, Expectation
from localmesh.stack import dataplane
from localmesh.stack import push as control
from localmesh.stack.statefile import StackState
from localmesh.stack.topology import OPTIONS, ROOT, Paths, default_state_dir, proxy_admins, urls

PROMETHEUS_CATCH_UP = 15.0  # seconds to wait for Prometheus to scrape the step's last requests
# Generated pages and graphs; the Makefile exports EGRESS_LAB_OUT (default out), tests a temporary folder.
OUT = ROOT / os.environ.get("EGRESS_LAB_OUT", "out")


def shown(path: Path) -> Path:
    """A path as the user should read it: from the project's folder when it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


Series = frozenset[tuple[str, str]]


@dataclass
class SiteOutcome:
    """What the recipe site answered to the step's creations."""

    created: int = 0
    # (status, error code) -> count
    failures: Counter[tuple[int, str | None]] = field(default_factory=Counter)
    first_message: str = ""
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str | None] = field(default_factory=Counter)


def create_recipes(site: str, n: int, option: str) -> SiteOutcome:
    """POST n recipes to the site's JSON API, as n users pressing "Save" one after another."""
    outcome = SiteOutcome()
    with requests.Session() as session:
        for i in range(n):
            recipe = {
                "title": f"Demo soup {i + 1} ({option})",
                "author": "make demo",
                "ingredients": ["water", "salt"],
                "steps": "Boil the water. Add salt.",
            }
            resp = session.post(f"{site}/api/recipes", json=recipe, timeout=15)
            outcome.statuses[resp.status_code] += 1
            if resp.status_code == 201:
                outcome.created += 1
                continue
            try:
                body = resp.json()
            except ValueError:
                body = {"error": "not_json", "message": resp.text[:200]}
            outcome.errors[body.get("error")] += 1
            outcome.failures[(resp.status_code, body.get("error"))] += 1
            outcome.first_message = outcome.first_message or str(body.get("message", ""))
    return outcome


def _nonempty(snap: Snapshot) -> dict[str, dict[SeriesKey, float]]:
    """A snapshot's series per proxy, leaving out proxies with none (Prometheus lists no such target)."""
    return {proxy: series for proxy, series in snap.per_proxy.items() if series}


class Counters:
    """The proxies' Istio counters, read from Prometheus when it runs, else from the proxies."""

    def __init__(self, state: StackState) -> None:
        self.proxy_urls = [f"{admin}/stats/prometheus" for admin in proxy_admins(state.ports).values()]
        prom = urls(state.ports, state.prometheus).get("prometheus")
        self.prometheus = prom
        self.where = (
            f"Prometheus {prom}" if prom else "the proxies' /stats/prometheus (this stack runs no Prometheus)"
        )

    def now(self) -> Snapshot:
        """Counters as they are now; from Prometheus once it has scraped all the proxies have counted."""
        truth = api.snapshot(self.proxy_urls)
        if self.prometheus is None:
            return truth
        deadline = time.monotonic() + PROMETHEUS_CATCH_UP
        while time.monotonic() < deadline:
            seen = api.prometheus_snapshot(self.prometheus)
            if _nonempty(seen) == _nonempty(truth):
                return seen
            time.sleep(0.25)
        print(
            f"    (Prometheus had not scraped the latest counters after {PROMETHEUS_CATCH_UP:.0f} s; "
            f"these numbers come from the proxies directly)"
        )
        return truth

    def between(self, before: Snapshot, after: Snapshot) -> api.Source:
        """An egresswatch source for what happened between two snapshots."""
        return api.between(self.proxy_urls, before, after, self.where)


def egress_growth(before: Snapshot, after: Snapshot) -> dict[Series, float]:
    """Per idgen egress series of istio_requests_total, how much it grew between the snapshots."""
    old = before.samples()
    grown: dict[Series, float] = {}
    for (proxy, (metric, pairs)), value in after.samples().items():
        labels = dict(pairs)
        if metric == REQUESTS and all(labels.get(k) == v for k, v in EGRESS_SELECTOR.items()):
            diff = value - old.get((proxy, (metric, pairs)), 0.0)
            if diff > 0:
                grown[frozenset(pairs)] = grown.get(frozenset(pairs), 0.0) + diff
    return grown


def verdict(exp: Expectation, n: int, site: SiteOutcome, grown: Mapping[Series, float]) -> list[str]:
    """Every way this step differs from what Istio does (localmesh.expected); empty when it matches."""
    problems = []
    if site.statuses != Counter({exp.site_status: n}):
        problems.append(f"the site answered {dict(site.statuses)}, expected {exp.site_status} for all {n}")
    if exp.site_error and site.errors != Counter({exp.site_error: n}):
        problems.append(
            f"the site's error codes were {dict(site.errors)}, expected {exp.site_error!r} for all {n}"
        )
    matching = sum(
        v for s, v in grown.items() if all(dict(s).get(k) == want for k, want in exp.series.items())
    )
    total = sum(grown.values())
    if matching != n:
        wanted = ", ".join(f'{k}="{v}"' for k, v in exp.series.items())
        problems.append(f"{matching:.0f} of {n} requests landed in the expected series {{{wanted}}}")
    if total != matching:
        problems.append(f"{total - matching:.0f} requests landed in other egress series")
    return problems


def run_option(
    option: str, n: int, state: StackState, paths: Paths, counters: Counters, page: DemoPage | None = None
) -> bool:
    exp = EXPECTATIONS[option]
    number = OPTIONS.index(option) + 1
    print(f"\n=== Option {number}: {option}: {exp.summary}")
    overlay = ROOT / "manifests" / "overlays" / option
    print(f"$ .venv/bin/localmesh apply -k manifests/overlays/{option}")
    for line in control.apply(paths, kustomize=overlay, file=None, ports=state.ports):
        if "unchanged" not in line:
            print(f"    {line}")
    before = counters.now()
    site = create_recipes(urls(state.ports, state.prometheus)["site"], n, option)
    after = counters.now()
    failed = ", ".join(
        f"{count} x {status} {code}" for (status, code), count in sorted(site.failures.items())
    )
    print(f"Site: {site.created} of {n} recipes created" + (f"; failed: {failed}" if failed else ""))
    if site.first_message:
        print(f"    the site said: {site.first_message}")
    drawn, graph_error = None, ""
    try:
        table = api.report_table(counters.between(before, after), "recipes")
        print("Metrics (egresswatch report for this step):")
        print("    " + table.rstrip().replace("\n", "\n    "))
        graph = OUT / f"graph-{option}.svg"
        drawn = write_graph(
            counters.between(before, after), graph, title=f"recipes: option {number}, {option}"
        )
        print(f"    service graph (Kiali style): {shown(graph)} and .html")
    except EgressWatchError as err:
        graph_error = str(err)
        print(f"    egresswatch: {err}")
    grown = egress_growth(before, after)
    problems = verdict(exp, n, site, grown)
    if page is not None:
        page.add(
            Step(
                number=number,
                option=option,
                summary=exp.summary,
                applied=control.current_option(paths),
                requested=n,
                statuses=site.statuses,
                site_message=site.first_message,
                graph=drawn,
                graph_error=graph_error,
                series=grown,
                problems=problems,
            )
        )
    if problems:
        print(f"Verdict: {paint('MISMATCH')} with Istio for {option}: " + "; ".join(problems))
        return False
    series = ", ".join(f"{k}={v}" for k, v in exp.series.items() if k != "destination_service")
    print(f"Verdict: {paint('OK')}: {option} behaves as on a real mesh ({series}).")
    return True


def paint(word: str) -> str:
    """OK in green, anything else in red, on a terminal only and unless NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        return word
    return f"\033[{32 if word == 'OK' else 31}m{word}\033[0m"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localmesh.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "options",
        nargs="*",
        metavar="OPTION",
        help=f"which options to run, in order: {', '.join(OPTIONS)} (default: all three)",
    )
    parser.add_argument("-n", type=int, default=10, help="recipes to create per option (default 10)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running afterwards (it always stays up if it was already running)",
    )
    parser.add_argument(
        "--dataplane",
        choices=dataplane.DATAPLANES,
        default=None,
        help="the data plane of the stack it starts: python (default) or envoy (real Envoy); a running "
        "stack keeps its own",
    )
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    unknown = [o for o in args.options if o not in OPTIONS]
    if unknown:
        parser.error(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    args.options = args.options or list(OPTIONS)
    paths = Paths(args.state_dir or default_state_dir())
    running = cli.running_state(paths)
    clash = cli.other_dataplane(running, args.dataplane, "make demo") if running else None
    if clash:
        print(f"demo: {clash}", file=sys.stderr)
        return 1
    started_here = running is None
    if started_here:
        plane = ["--dataplane", args.dataplane] if args.dataplane else []
        print(f"Starting the local mesh (localmesh up{' '.join(['', *plane])}) ...")
        code = cli.main(["--state-dir", str(paths.state_dir), "up", *plane])
        if code != 0:
            return code
    state = cli.running_state(paths)
    if state is None or state.phase != "ready":
        print("demo: the local mesh is not ready; see `make status`", file=sys.stderr)
        return 1
    stop = started_here and not args.keep
    try:
        counters = Counters(state)
        page = DemoPage()
        results = {
            option: run_option(option, args.n, state, paths, counters, page) for option in args.options
        }
        print(f"\nOne page with every option: {shown(page.write(OUT / 'index.html'))}")
    except KeyboardInterrupt:
        left = "stopping the local mesh it started" if stop else "the local mesh keeps running (make down)"
        print(f"\ndemo: interrupted (Ctrl-C); {left}.", file=sys.stderr)
        return 130
    except control.PushError as err:  # a proxy did not take the step's config: nothing to judge
        print(f"demo: {err}", file=sys.stderr)
        return 1
    finally:
        if stop:
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["--state-dir", str(paths.state_dir), "down"])
    print()
    for option, ok in results.items():
        print(f"  {option:<13} {paint('OK' if ok else 'MISMATCH')}")
    if all(results.values()):
        print("All options behave as on a real Istio mesh (docs/istio-facts.md lists what was checked).")
        return 0
    print("Some options differ from Istio's behaviour (see above).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(cli.quiet_interrupts("demo", main))

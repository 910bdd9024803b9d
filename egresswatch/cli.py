"""`egresswatch` / `python -m egresswatch`: report, graph, console, suggest, lockdown-check.

Every command reads either a Prometheus (--prometheus URL, the default) or the proxies directly
(--proxies URL ...). Exit codes: 0 done (lockdown-check: safe), 1 lockdown-check: would break,
2 could not tell (unreachable source, empty window, namespace without traffic, bad flags).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence

from egresswatch import console, localstack, lockdown, render, report, suggest
from egresswatch.errors import EgressWatchError, UsageError
from egresswatch.graph import DEFAULT_GRAPH_TYPE, GRAPH_TYPES, build_graph
from egresswatch.promql import Window
from egresswatch.source import PrometheusSource, ProxiesSource, Source

VERSION = "0.1.0"
DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"
# Kiali's UI shows the last minute by default (config.go UIDefaults.MetricsPerRefresh "1m"); so do we,
# except on the local stack's own Prometheus, where the window starts when the applied option took effect.
DEFAULT_WINDOW = "1m"
# Without Prometheus the window is the wait between two scrapes: short, so the command answers quickly.
DEFAULT_PROXIES_WINDOW = "10s"
DEFAULT_NAMESPACE = "recipes"
DEFAULT_CONSOLE_PORT = 20001  # Kiali's port


def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("where the numbers come from")
    src.add_argument(
        "--prometheus",
        metavar="URL",
        default=os.environ.get("EGRESSWATCH_PROMETHEUS", DEFAULT_PROMETHEUS),
        help="Prometheus base URL (env EGRESSWATCH_PROMETHEUS; default %(default)s)",
    )
    src.add_argument(
        "--proxies",
        metavar="URL",
        nargs="+",
        help="read these proxies' /stats/prometheus instead of Prometheus (e.g. 127.0.0.1:15000 "
        "127.0.0.1:15090): two scrapes --window apart, or --since-start",
    )
    src.add_argument(
        "--since-start",
        action="store_true",
        help="with --proxies: one scrape, counting everything since each proxy started (no rates)",
    )
    when = src.add_mutually_exclusive_group()
    when.add_argument(
        "--window",
        default=os.environ.get("EGRESSWATCH_WINDOW"),
        help=f"look-back window, a Prometheus duration (env EGRESSWATCH_WINDOW; default: since the "
        f"local stack's option took effect when reading its Prometheus, else {DEFAULT_WINDOW}; "
        f"{DEFAULT_PROXIES_WINDOW} between the two scrapes with --proxies)",
    )
    when.add_argument(
        "--since",
        metavar="WHEN",
        help="the window starts at WHEN: 'applied' (when the local stack's egress option took effect), "
        "an ISO 8601 time (2026-01-31T10:00:00+00:00) or Unix seconds",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        default=os.environ.get("EGRESSWATCH_NAMESPACE", DEFAULT_NAMESPACE),
        help="source namespace (env EGRESSWATCH_NAMESPACE; default %(default)s)",
    )
    scope.add_argument("--all-namespaces", action="store_true", help="every source namespace")
    p.add_argument("--show-queries", action="store_true", help="print the PromQL (copy it into Prometheus)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egresswatch",
        description="What does the mesh send out, and can it be locked down? Reads Istio's standard metrics.",
    )
    parser.add_argument("--version", action="version", version=f"egresswatch {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("report", help="egress by source, host, cluster kind and response code")
    _common(p)
    p.add_argument("--json", action="store_true", help="JSON instead of tables")
    p.add_argument(
        "--all", action="store_true", help="every destination, not only egress (the full breakdown)"
    )

    p = sub.add_parser("graph", help="the service graph as SVG and a self-contained HTML page, Kiali style")
    _common(p)
    p.add_argument(
        "--out",
        default="out/graph.svg",
        help="SVG path; the page goes next to it as .html (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="also print the graph (nodes, edges) as JSON")
    p.add_argument(
        "--rates",
        choices=("kiali", "counts"),
        default="kiali",
        help="edge rates from Kiali's rate() query (default; falls back to counts when rate() sees "
        "nothing) or always count / window (sees short bursts too)",
    )
    _graph_type(p)

    p = sub.add_parser(
        "console", help="a live page with the graph and the report, refreshed every few seconds"
    )
    _common(p)
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("EGRESSWATCH_PORT", DEFAULT_CONSOLE_PORT)),
        help="port (env EGRESSWATCH_PORT; default %(default)s, Kiali's)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument(
        "--refresh", type=float, default=5.0, help="seconds between refreshes (default %(default)s)"
    )
    p.add_argument(
        "--chart-rate",
        default="30s",
        help="rate() window of the requests/s chart; at least 2 scrape intervals (default %(default)s)",
    )
    _graph_type(p, console=True)

    p = sub.add_parser("suggest", help="ServiceEntry YAML for every host seen through PassthroughCluster")
    _common(p)
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")

    p = sub.add_parser(
        "lockdown-check",
        help="would REGISTRY_ONLY have broken anything seen? exit 0 safe, 1 would break, 2 could not tell",
    )
    _common(p)
    p.add_argument(
        "--registered",
        metavar="HOST",
        action="append",
        default=[],
        help="a host that will have a ServiceEntry (counts as covered); repeatable",
    )
    p.add_argument("--json", action="store_true", help="JSON verdict")
    return parser


def _since(text: str, prometheus: str) -> Window:
    if text == "applied":
        found = localstack.applied(prometheus)
        if found is None:
            raise UsageError(
                f"--since applied needs the local stack running with Prometheus {prometheus} "
                f"(`make up`; $LOCALMESH_STATE names its state folder); or give --window or a time"
            )
        return Window.since(found.since, f"{localstack.option_name(found)} took effect")
    try:
        start = float(text)
    except ValueError:
        try:
            start = dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise UsageError(
                f"--since {text!r} is not 'applied', an ISO 8601 time (2026-01-31T10:00:00+00:00) "
                "or Unix seconds"
            ) from None
    if start > dt.datetime.now().timestamp():
        raise UsageError(f"--since {text!r} is in the future")
    return Window.since(start, text)


def window_of(args: argparse.Namespace) -> Window:
    """The Prometheus window: --window, --since, else since the local stack's option took effect (when
    --prometheus is the stack's own), else the last DEFAULT_WINDOW."""
    if args.window:
        return Window.parse(args.window)
    if args.since:
        return _since(args.since, args.prometheus)
    if localstack.applied(args.prometheus) is not None:
        return _since("applied", args.prometheus)
    return Window.parse(DEFAULT_WINDOW)


def _prometheus_source(args: argparse.Namespace) -> Source:
    return PrometheusSource(args.prometheus, window_of(args))


def make_source(args: argparse.Namespace) -> Source:
    if args.since_start and not args.proxies:
        raise UsageError("--since-start only applies with --proxies")
    if args.proxies:
        if args.since:
            raise UsageError("--since needs Prometheus: the proxies keep no history (use --window)")
        window = Window.parse(args.window or DEFAULT_PROXIES_WINDOW)
        method = "since-start" if args.since_start else "two-scrapes"
        return ProxiesSource(args.proxies, method=method, interval=window.seconds)
    return PrometheusSource(args.prometheus, window_of(args))


def _namespace(args: argparse.Namespace) -> str | None:
    return None if args.all_namespaces else args.namespace


def _print_queries(queries: Sequence[str], prefix: str = "") -> None:
    print(f"{prefix}PromQL (paste into Prometheus's /graph page):")
    for q in queries:
        print("\n".join(f"{prefix}  {line}" for line in q.splitlines()))
        print(prefix.rstrip())


def cmd_report(args: argparse.Namespace) -> int:
    rep = report.build_report(make_source(args), _namespace(args), egress_only=not args.all)
    if args.json:
        print(json.dumps(report.to_json(rep), indent=2))
    else:
        print(report.render_table(rep), end="")
        if args.show_queries:
            print()
            _print_queries(rep.queries)
    return 0


def _graph_type(p: argparse.ArgumentParser, console: bool = False) -> None:
    more = "; the page's ?graphType=workload|versionedApp picks one per view" if console else ""
    p.add_argument(
        "--graph-type",
        choices=GRAPH_TYPES,
        default=DEFAULT_GRAPH_TYPE,
        help="Kiali's graph type: versionedApp (default, as Kiali's UI opens: one node per app and "
        f"version) or workload (one node per workload){more}",
    )


def cmd_graph(args: argparse.Namespace) -> int:
    if args.all_namespaces:
        raise UsageError("graph draws one namespace, as Kiali's namespace graph does: pass --namespace")
    if args.since_start:
        raise UsageError(
            "the graph shows rates: use two scrapes (--proxies without --since-start) or Prometheus"
        )
    source = make_source(args)
    graph = build_graph(source, args.namespace, rates=args.rates, graph_type=args.graph_type)
    svg_path, html_path = render.write_graph(graph, args.out, subtitle=source.where())
    if args.json:
        print(json.dumps(graph.to_dict(), indent=2))
    else:
        print(
            f"Wrote {svg_path} and {html_path}: {len(graph.nodes)} nodes, {len(graph.edges)} edges "
            f"({source.where()})."
        )
        if args.show_queries:
            _print_queries(graph.queries)
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    if args.all_namespaces:
        raise UsageError("the console shows one namespace: pass --namespace")
    if args.since_start:
        raise UsageError("the console shows live rates: --since-start does not apply")
    prometheus = None
    if args.proxies:
        factory: Callable[[], Source] = console.ProxiesFactory(args.proxies)
        label = f"{len(args.proxies)} proxies' /stats/prometheus, between refreshes"
    else:
        window_of(args)  # a bad --window or --since ends here, before the page serves anything
        try:
            Window.parse(args.chart_rate)
        except UsageError:
            raise UsageError(f"--chart-rate {args.chart_rate!r} is not a duration like 10s or 30s") from None
        prometheus = args.prometheus.rstrip("/")
        # The window moves with every refresh: a switch of option starts a new one.
        factory = functools.partial(_prometheus_source, args)
        label = f"Prometheus {prometheus}"
    con = console.Console(
        factory,
        args.namespace,
        args.refresh,
        label,
        prometheus=prometheus,
        chart_rate=args.chart_rate,
        graph_type=args.graph_type,
    )
    with contextlib.suppress(KeyboardInterrupt):
        console.serve(con, args.host, args.port)
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    source = make_source(args)
    result = suggest.suggest(source, _namespace(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(suggest.render_yaml(result), end="")
        if args.show_queries:
            _print_queries(source.queries, prefix="# ")
    return 0


def cmd_lockdown(args: argparse.Namespace) -> int:
    source = make_source(args)
    verdict = lockdown.check(source, _namespace(args), args.registered)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        print(lockdown.render(verdict), end="")
        if args.show_queries:
            _print_queries(source.queries)
    return verdict.exit_code


COMMANDS = {
    "report": cmd_report,
    "graph": cmd_graph,
    "console": cmd_console,
    "suggest": cmd_suggest,
    "lockdown-check": cmd_lockdown,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so a closed pipe (`make report | head -1`) is caught below
        return code
    except EgressWatchError as err:
        if getattr(args, "json", False):
            print(
                json.dumps(
                    {"error": str(err), "kind": type(err).__name__, "exit_code": err.exit_code}, indent=2
                )
            )
        print(f"egresswatch {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"\negresswatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader has gone: drop what is still buffered, so the exit does not fail on it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

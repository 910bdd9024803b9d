"""egresswatch against the whole local mesh (`localmesh up`): the real gateway and sidecar, the real
recipe site and idgen, a real Prometheus scraping the proxies every second, the egresswatch CLI run as
a subprocess, and the stack's own console in headless Chromium (screenshot in a temporary folder).

Every step applies its egress option, sends traffic, and reads it back through a window that covers
that step's traffic and nothing earlier (see `Step`), so the steps do not depend on their order or
on other tests that share the session's stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import pytest
import requests
from ew_fakes import CHROMIUM, CHROMIUM_ARGS, ROOT
from playwright import sync_api

from egresswatch import api
from localmesh.stack.plan import find_prometheus
from localmesh.stack.procs import free_port

if TYPE_CHECKING:
    from localmesh.stack.driver import LocalStack

# Every test but the unreachable-Prometheus one needs the stack's Prometheus.
needs_prometheus = pytest.mark.skipif(
    find_prometheus() is None,
    reason="needs prometheus (Debian: apt-get install prometheus) and LOCALMESH_PROMETHEUS not off",
)

RECIPE = {"title": "Egress soup", "author": "egresswatch", "ingredients": ["water", "salt"], "steps": "Boil."}
# Kiali's edge colours as egresswatch draws them (PatternFly success green, danger red).
GREEN, RED = "#3e8635", "#c9190b"
SVG_NS = "{http://www.w3.org/2000/svg}"
# Kiali's versioned-app graph (its UI's default, and egresswatch's): app nodes vapp_<cluster>_<ns>_<workload>.
IDGEN_WL, IDGEN_SVC = "vapp_Kubernetes_recipes_idgen", "svc_Kubernetes_recipes_idgen"
GATEWAY_WL = "vapp_Kubernetes_istio-system_istio-ingressgateway"
WAIT = 45.0  # generous: other suites may load the 2-core machine


# ---- talking to the stack ------------------------------------------------------------------------------


def prom_query(stack: LocalStack, query: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{stack.url('prometheus')}/api/v1/query", params={"query": query}, timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def proxy_totals(stack: LocalStack) -> dict[str, float]:
    """instance (host:port) -> the sum of every istio_requests_total sample the proxy exports now."""
    totals = {}
    for admin in (stack.gateway_admin, stack.sidecar_admin):
        text = requests.get(f"{admin}/stats/prometheus", timeout=10).text
        totals[admin.removeprefix("http://")] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("istio_requests_total{")
        )
    return totals


def wait_scraped(stack: LocalStack, timeout: float = WAIT) -> float:
    """Poll until Prometheus's latest samples equal what both proxies export (every request sent so far
    is in Prometheus); return the wall-clock time at which that was true."""
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    want: dict[str, float] = {}
    while time.monotonic() < deadline:
        want = proxy_totals(stack)
        up = {r["metric"]["instance"] for r in prom_query(stack, "up == 1")}
        seen = {
            r["metric"]["instance"]: float(r["value"][1])
            for r in prom_query(stack, "sum by (instance) (istio_requests_total)")
        }
        if set(want) <= up and all(seen.get(i, 0.0) == v for i, v in want.items()):
            return time.time()
        time.sleep(0.3)
    raise AssertionError(f"Prometheus did not catch up with the proxies in {timeout:.0f} s: {seen} vs {want}")


def wait_sample_after(stack: LocalStack, when: float, timeout: float = WAIT) -> None:
    """Poll until Prometheus holds a scrape of both proxies taken at `when` or later."""
    deadline = time.monotonic() + timeout
    stamps: list[float] = []
    while time.monotonic() < deadline:
        stamps = [float(r["value"][1]) for r in prom_query(stack, "timestamp(up)")]
        if len(stamps) >= 2 and min(stamps) >= when:
            return
        time.sleep(0.3)
    raise AssertionError(f"no Prometheus scrape after {when:.1f} within {timeout:.0f} s (last: {stamps})")


class Step:
    """One step's traffic as a Prometheus window that holds it and nothing earlier.

    egresswatch counts with `(M unless M offset W) or increase(M[W])`, and increase() only looks at samples
    inside the window. So the window must start after Prometheus holds every earlier request (then each
    older series is flat inside it), and contain one scrape taken before this step's first request (then
    a series that existed before grows inside it). `__init__` makes both true: it waits until Prometheus
    has caught up (time Q), then until a scrape at Q + 3 s or later exists. `window()` is the time since
    Q + 0.3 s: it starts after the scrape that caught up, and leaves a command 2.7 s to send its queries
    before its window could miss the scrape before the traffic. So each command gets a fresh window().
    """

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.quiet_since = wait_scraped(stack)
        wait_sample_after(stack, self.quiet_since + 3)

    def window(self) -> str:
        """After the traffic, for each command: waits until Prometheus has all of it, names the window."""
        now = wait_scraped(self.stack)
        return f"{int((now - self.quiet_since - 0.3) * 1000)}ms"


def drive(stack: LocalStack, recipes: int = 0, ids: int = 0, direct: int = 0) -> list[int]:
    """Send traffic the three ways it reaches idgen; each request makes one call to httpbin.org.

    recipes: POST {site}/api/recipes (browser -> site -> gateway -> idgen); ids: GET {gateway}/id;
    direct: GET idgen's sidecar inbound port from a caller without a proxy (Kiali's "unknown" source).
    Returns the status codes."""
    codes = []
    for _ in range(recipes):
        codes.append(requests.post(f"{stack.site}/api/recipes", json=RECIPE, timeout=30).status_code)
    for _ in range(ids):
        codes.append(requests.get(f"{stack.gateway}/id", timeout=30).status_code)
    for _ in range(direct):
        inbound = f"http://127.0.0.1:{stack.ports.sidecar_inbound}/id"
        codes.append(requests.get(inbound, timeout=30).status_code)
    return codes


def egresswatch(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "egresswatch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)


def ew_json(*args: str) -> Any:
    done = egresswatch(*args, "--json")
    assert done.returncode == 0, f"egresswatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout)


def report_rows(stack: LocalStack, window: str) -> list[dict[str, Any]]:
    rep = ew_json(
        "report", "--prometheus", stack.url("prometheus"), "--namespace", "recipes", "--window", window
    )
    return rep["rows"]


def assert_counted(count: float, sent: int) -> None:
    """Prometheus's increase() extrapolates a series that existed before the window to the window's edges
    (promql/functions.go extrapolatedRate), so a count is the number sent or a little more, never less."""
    assert sent <= count < 2 * sent, f"counted {count}, sent {sent}"


def table_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def graph_json(stack: LocalStack, window: str, out: Path) -> dict[str, Any]:
    # --rates counts: a burst of a few requests can all land before a series' first scrape, which
    # Kiali's rate() does not see; counts / window shows every edge of the step.
    return ew_json(
        "graph",
        "--prometheus",
        stack.url("prometheus"),
        "--window",
        window,
        "--rates",
        "counts",
        "--out",
        str(out),
    )


def node_names(graph: dict[str, Any]) -> set[str]:
    return {n["name"] for n in graph["nodes"]}


def egress_edge(graph: dict[str, Any], target_name: str) -> dict[str, Any]:
    ids = {n["id"]: n["name"] for n in graph["nodes"]}
    found = [e for e in graph["edges"] if ids[e["source"]] == "idgen" and ids[e["target"]] == target_name]
    assert len(found) == 1, f"no single idgen -> {target_name} edge in {graph['edges']}"
    return found[0]


def svg_edge_colors(svg: str) -> dict[tuple[str, str], str]:
    """(source id, target id) -> the stroke colour of that edge's line, read from the SVG itself."""
    root = ElementTree.fromstring(svg)
    colors = {}
    for g in root.iter(f"{SVG_NS}g"):
        if g.get("class") == "edge":
            line = g.find(f"{SVG_NS}path")
            assert line is not None and line.get("stroke") == g.get("data-color")
            colors[(g.get("data-source", ""), g.get("data-target", ""))] = line.get("stroke", "")
    return colors


# ---- the three options ----------------------------------------------------------------------------------


@pytest.mark.prometheus
@needs_prometheus
def test_passthrough_report_graph_and_lockdown_check(stack: LocalStack, tmp_path: Path) -> None:
    stack.apply("passthrough")
    step = Step(stack)
    codes = drive(stack, recipes=2, ids=2, direct=1)
    assert codes == [201, 201, 200, 200, 200]
    prometheus = stack.url("prometheus")

    text = egresswatch(
        "report", "--prometheus", prometheus, "--namespace", "recipes", "--window", step.window()
    )
    assert text.returncode == 0, text.stderr
    row = ["idgen.recipes", "httpbin.org", "PassthroughCluster", "unknown", "200", "-"]
    assert [line[:6] for line in table_lines(text.stdout) if line[:1] == ["idgen.recipes"]] == [row]

    rows = report_rows(stack, step.window())
    assert [(r["kind"], r["destination_service"], r["response_code"]) for r in rows] == [
        ("PassthroughCluster", "httpbin.org", "200")
    ]
    assert rows[0]["destination_service_name"] == "PassthroughCluster"
    assert rows[0]["destination_service_namespace"] == "unknown"
    assert rows[0]["source_workload"] == "idgen" and rows[0]["egress"] is True
    assert_counted(rows[0]["count"], 5)

    graph = graph_json(stack, step.window(), tmp_path / "graph-passthrough.svg")
    assert node_names(graph) == {"unknown", "istio-ingressgateway", "idgen", "PassthroughCluster"}
    edge = egress_edge(graph, "PassthroughCluster")
    assert edge["healthStatus"] == "Healthy" and edge["errorPercent"] == 0
    colors = svg_edge_colors((tmp_path / "graph-passthrough.svg").read_text())
    assert colors[(IDGEN_WL, "svc_unknown_unknown_PassthroughCluster")] == GREEN
    assert colors[(GATEWAY_WL, IDGEN_SVC)] == GREEN
    assert (tmp_path / "graph-passthrough.html").exists()

    # Passthrough traffic in the window: REGISTRY_ONLY would block it (exit 1) ...
    check = egresswatch("lockdown-check", "--prometheus", prometheus, "--window", step.window())
    assert check.returncode == 1, check.stdout + check.stderr
    assert "WOULD BREAK" in check.stdout and "idgen.recipes -> httpbin.org" in check.stdout
    verdict = json.loads(
        egresswatch("lockdown-check", "--prometheus", prometheus, "--window", step.window(), "--json").stdout
    )
    assert [r["destination_service"] for r in verdict["would_break"]] == ["httpbin.org"]
    # ... unless the host is about to be registered (exit 0).
    covered = egresswatch(
        "lockdown-check", "--prometheus", prometheus, "--window", step.window(), "--registered", "httpbin.org"
    )
    assert covered.returncode == 0, covered.stdout + covered.stderr
    assert "SAFE" in covered.stdout


@pytest.mark.prometheus
@needs_prometheus
def test_blackhole_report_and_red_graph_edge(stack: LocalStack, tmp_path: Path) -> None:
    stack.apply("blackhole")
    step = Step(stack)
    codes = drive(stack, recipes=2, ids=2, direct=1)
    assert codes == [502] * 5  # the site and idgen pass on the sidecar's 502 as egress_blocked
    prometheus = stack.url("prometheus")

    text = egresswatch(
        "report", "--prometheus", prometheus, "--namespace", "recipes", "--window", step.window()
    )
    assert text.returncode == 0, text.stderr
    row = ["idgen.recipes", "httpbin.org", "BlackHoleCluster", "unknown", "502", "-"]
    assert [line[:6] for line in table_lines(text.stdout) if line[:1] == ["idgen.recipes"]] == [row]
    assert "BlackHoleCluster rows are calls the mesh blocked" in text.stdout

    rows = report_rows(stack, step.window())
    assert [(r["kind"], r["destination_service"], r["response_code"], r["response_flags"]) for r in rows] == [
        ("BlackHoleCluster", "httpbin.org", "502", "-")
    ]
    assert rows[0]["destination_service_name"] == "BlackHoleCluster"
    assert_counted(rows[0]["count"], 5)

    graph = graph_json(stack, step.window(), tmp_path / "graph-blackhole.svg")
    assert node_names(graph) == {"unknown", "istio-ingressgateway", "idgen", "BlackHoleCluster"}
    edge = egress_edge(graph, "BlackHoleCluster")
    assert edge["healthStatus"] == "Failure" and edge["errorPercent"] == 100
    colors = svg_edge_colors((tmp_path / "graph-blackhole.svg").read_text())
    assert colors[(IDGEN_WL, "svc_unknown_unknown_BlackHoleCluster")] == RED
    # The failure shows on the way in too: the gateway's and the unknown caller's requests got 502s.
    assert colors[(GATEWAY_WL, IDGEN_SVC)] == RED
    assert colors[("unknown_unknown_source", IDGEN_SVC)] == RED

    # Nothing went through PassthroughCluster: locking down breaks nothing more (exit 0), and the
    # check says what is blocked already.
    check = egresswatch("lockdown-check", "--prometheus", prometheus, "--window", step.window())
    assert check.returncode == 0, check.stdout + check.stderr
    assert "already blocked now (BlackHoleCluster): httpbin.org" in check.stdout


@pytest.mark.prometheus
@needs_prometheus
def test_serviceentry_report_and_proxies_mode_match_prometheus(stack: LocalStack, tmp_path: Path) -> None:
    stack.apply("serviceentry")
    proxies = [stack.gateway_admin, stack.sidecar_admin]
    step = Step(stack)
    baseline = api.snapshot(proxies)
    assert drive(stack, recipes=1, ids=3) == [201, 200, 200, 200]

    rows = report_rows(stack, step.window())
    assert [(r["kind"], r["destination_service"], r["response_code"]) for r in rows] == [
        ("ServiceEntry", "httpbin.org", "200")
    ]
    assert rows[0]["destination_service_name"] == "httpbin.org"
    assert rows[0]["destination_service_namespace"] == "recipes"
    assert_counted(rows[0]["count"], 4)

    # The proxies' own counters for the same step: exactly the 4 calls, on the same row.
    direct = api.breakdown(proxies, namespace="recipes", baseline=baseline)
    assert [(r["kind"], r["destination_service"], r["response_code"], r["count"]) for r in direct] == [
        ("ServiceEntry", "httpbin.org", "200", 4.0)
    ]

    graph = graph_json(stack, step.window(), tmp_path / "graph-serviceentry.svg")
    # Istio 1.31 names the ServiceEntry as the destination workload: idgen -> httpbin.org (service) ->
    # httpbin-ext, the ServiceEntry node, listing its host.
    assert node_names(graph) == {"istio-ingressgateway", "idgen", "httpbin.org", "httpbin-ext"}
    (entry,) = [n for n in graph["nodes"] if n["kind"] == "ServiceEntry"]
    assert (entry["name"], entry["namespace"], entry["hosts"]) == ("httpbin-ext", "recipes", ["httpbin.org"])
    assert [n["kind"] for n in graph["nodes"] if n["name"] == "httpbin.org"] == ["service"]
    assert egress_edge(graph, "httpbin.org")["healthStatus"] == "Healthy"

    # Everything since the stack started, both ways: the CLI's --proxies --since-start reads the
    # counters; Prometheus (fresh at `up`, so a 1h window holds its whole life) counts each series
    # whole. Same rows, same numbers.
    wait_scraped(stack)
    prom = ew_json(
        "report", "--prometheus", stack.url("prometheus"), "--window", "1h", "--all", "--all-namespaces"
    )
    since_start = ew_json("report", "--proxies", *proxies, "--since-start", "--all", "--all-namespaces")

    def counts(rep: dict[str, Any]) -> dict[tuple, float]:
        keys = ("source_workload", "destination_service", "destination_service_name", "response_code")
        return {tuple(r[k] for k in keys): r["count"] for r in rep["rows"]}

    assert counts(since_start) == counts(prom)
    assert ("idgen", "httpbin.org", "httpbin.org", "200") in counts(prom)


@pytest.fixture()
def suggested_entry_removed(stack: LocalStack, tmp_path: Path) -> Iterator[Path]:
    """Where the test writes the suggested ServiceEntry; afterwards `localmesh delete -f` removes it.

    `localmesh apply -k` prunes only resources labelled egress-lab/option-resource, so without the
    delete the suggested entry would outlive the test and unblock httpbin.org for later blackhole steps."""
    path = tmp_path / "suggested-serviceentry.yaml"
    yield path
    if path.exists():
        deleted = stack.localmesh("delete", "-f", str(path)).stdout
        assert 'serviceentry.networking.istio.io "httpbin-org-ext" deleted' in deleted
        stack.apply("passthrough")
        assert "option passthrough" in stack.localmesh("status").stdout


@pytest.mark.prometheus
@needs_prometheus
def test_suggested_service_entry_unblocks_idgen_under_registry_only(
    stack: LocalStack, suggested_entry_removed: Path
) -> None:
    prometheus = stack.url("prometheus")
    stack.apply("passthrough")
    step = Step(stack)
    assert drive(stack, ids=3) == [200] * 3

    suggestion = ew_json("suggest", "--prometheus", prometheus, "--window", step.window())
    assert [(s["host"], s["port"], s["namespace"], s["name"]) for s in suggestion["service_entries"]] == [
        ("httpbin.org", 80, "recipes", "httpbin-org-ext")
    ]
    yaml_text = egresswatch("suggest", "--prometheus", prometheus, "--window", step.window())
    assert yaml_text.returncode == 0, yaml_text.stderr
    assert "kind: ServiceEntry" in yaml_text.stdout and "  - httpbin.org\n" in yaml_text.stdout
    suggested_entry_removed.write_text(yaml_text.stdout)

    # Lock down without the entry: idgen's calls are blocked.
    stack.apply("blackhole")
    blocked = requests.get(f"{stack.gateway}/id", timeout=30)
    assert blocked.status_code == 502 and blocked.json()["error"] == "egress_blocked"

    # Apply the suggestion on top, as written: the Sidecar stays REGISTRY_ONLY, httpbin.org is registered.
    applied = stack.localmesh("apply", "-f", str(suggested_entry_removed)).stdout
    assert "serviceentry.networking.istio.io/httpbin-org-ext" in applied
    assert "REGISTRY_ONLY" in applied and "option serviceentry" in applied

    step = Step(stack)
    assert drive(stack, recipes=1, ids=2) == [201, 200, 200]
    rows = report_rows(stack, step.window())
    assert [(r["kind"], r["destination_service_name"], r["destination_service_namespace"]) for r in rows] == [
        ("ServiceEntry", "httpbin.org", "recipes")
    ]
    assert rows[0]["response_code"] == "200"
    assert_counted(rows[0]["count"], 3)

    # Only registered hosts in this window: locking down is safe (exit 0).
    check = egresswatch("lockdown-check", "--prometheus", prometheus, "--window", step.window())
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SAFE" in check.stdout


def test_lockdown_check_says_it_cannot_tell_without_prometheus() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    check = egresswatch("lockdown-check", "--prometheus", dead, "--window", "1m")
    assert check.returncode == 2
    assert f"Cannot reach Prometheus at {dead}" in check.stderr


# ---- the console the stack serves ---------------------------------------------------------------------


class SteadyTraffic:
    """Requests every few hundred ms until stopped, so Kiali's rate() (the console's) sees growth."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                drive(self.stack, ids=1, direct=1 if n % 3 == 0 else 0)
            except requests.RequestException as err:
                self.errors.append(str(err))
            n += 1
            self.stop.wait(0.3)

    def __enter__(self) -> SteadyTraffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def console_graph(base: str, want: set[str], timeout: float = WAIT) -> dict[str, Any]:
    """Poll the console's /api/graph until its nodes include `want` (it refreshes every few seconds)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        resp = requests.get(f"{base}/api/graph", timeout=10)
        last = resp.json()
        if resp.status_code == 200 and want <= node_names(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"the console never showed {sorted(want)} within {timeout:.0f} s; last: {last}")


@pytest.mark.prometheus
@pytest.mark.browser
@needs_prometheus
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_stack_console_in_headless_chromium(stack: LocalStack, tmp_path: Path) -> None:
    base = stack.url("console")
    want = {"unknown", "istio-ingressgateway", "idgen", "BlackHoleCluster"}
    stack.apply("blackhole")
    shot = tmp_path / "console-live.png"
    with SteadyTraffic(stack) as traffic:
        graph = console_graph(base, want)
        assert egress_edge(graph, "BlackHoleCluster")["healthStatus"] == "Failure"
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                # The page reloads itself (meta refresh), which can cut a read short: retry a few times.
                for attempt in range(5):
                    try:
                        page.goto(f"{base}/")
                        page.wait_for_selector(
                            "svg.egress-graph g.node[data-kind='BlackHoleCluster']", timeout=15000
                        )
                        names = set(
                            page.eval_on_selector_all(
                                "svg.egress-graph g.node", "els => els.map(e => e.dataset.name)"
                            )
                        )
                        health = page.get_attribute(
                            "svg.egress-graph g.edge[data-target='svc_unknown_unknown_BlackHoleCluster']",
                            "data-health",
                        )
                        title = page.title()
                        page.screenshot(path=str(shot), full_page=True)
                        break
                    except sync_api.Error:
                        if attempt == 4:
                            raise
            finally:
                browser.close()
    assert not traffic.errors, traffic.errors
    assert "egresswatch console" in title
    assert want <= names
    assert health == "Failure"
    assert shot.stat().st_size > 10_000

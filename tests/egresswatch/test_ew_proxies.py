"""Without Prometheus: egresswatch reads the proxies' /stats/prometheus itself (two scrapes, counters since
start, or since a snapshot the demo took), and gives the same rows and graph as from Prometheus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from ew_fakes import FakeProxy, ManualClock
from ewseries import SCENARIOS

from egresswatch import exposition
from egresswatch.cli import main
from egresswatch.errors import SourceUnreachable
from egresswatch.report import breakdown
from egresswatch.source import METRICS
from localmesh.stack.procs import free_port


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def proxies() -> Iterator[list[FakeProxy]]:
    """The passthrough option's two proxies, up for a minute (as a running mesh's are): every counter is
    already past 1, and grows on in real time between two scrapes."""
    scenario = SCENARIOS["passthrough"]()
    up_since = time.time() - 60
    started = [
        FakeProxy("gateway", scenario.gateway, started=up_since).start(),
        FakeProxy("sidecar", scenario.sidecar, started=up_since).start(),
    ]
    yield started
    for p in started:
        p.stop()


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture()
def scratch(clock: ManualClock) -> Iterator[FakeProxy]:
    """A proxy on the test's clock: its counters grow by exactly the time the test advances it."""
    proxy = FakeProxy("scratch", clock=clock).start()
    yield proxy
    proxy.stop()


def test_report_from_two_scrapes_has_the_same_rows_as_from_prometheus(capsys, proxies) -> None:
    # The shortest window egresswatch takes: the two scrapes are 1 s apart.
    rc, out, err = run(capsys, "report", "--proxies", *(p.url for p in proxies), "--window", "1s", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["source"]["kind"] == "proxies" and data["source"]["method"] == "two-scrapes"
    assert data["source"]["urls"] == [f"{p.url}/stats/prometheus" for p in proxies]
    assert data["source"]["interval_seconds"] > 0
    kinds = {(r["protocol"], r["host"], r["kind"], r["response_code"]) for r in data["rows"]}
    assert kinds == {
        ("http", "httpbin.org", "PassthroughCluster", "200"),
        ("tcp", "unknown", "PassthroughCluster", None),
    }
    http = next(r for r in data["rows"] if r["protocol"] == "http")
    assert http["rate"] == pytest.approx(http["count"] / data["source"]["interval_seconds"], rel=1e-3)
    assert all(p.scrapes >= 2 for p in proxies)


def test_since_start_counts_everything_and_has_no_rates(capsys, proxies) -> None:
    rc, out, _ = run(
        capsys,
        "report",
        "--proxies",
        *(p.url for p in proxies),
        "--since-start",
        "--json",
        "--all",
        "--all-namespaces",
    )
    data = json.loads(out)
    assert rc == 0 and data["source"]["method"] == "since-start" and "no rates" in data["source"]["note"]
    assert {r["source_workload"] for r in data["rows"]} == {"idgen", "istio-ingressgateway"}
    assert all(r["rate"] is None and r["count"] >= 1 for r in data["rows"])


def test_breakdown_since_a_snapshot_sees_only_the_traffic_after_it(
    scratch: FakeProxy, clock: ManualClock
) -> None:
    """The demo's pattern: snapshot, switch the option, make traffic, then ask what happened since."""
    scratch.switch(SCENARIOS["passthrough"]().sidecar)
    clock.advance(1.1)  # every passthrough counter passes 1 (they count 2 to 10 per second)
    scratch.switch(SCENARIOS["blackhole"]().sidecar)  # passthrough series stop growing, as after a push
    snapshot = exposition.scrape([scratch.url], METRICS)
    clock.advance(1.1)  # the blackhole option's traffic
    rows = breakdown([scratch.url], namespace="recipes", baseline=snapshot)
    assert rows, "no traffic seen since the snapshot"
    assert {r["destination_service_name"] for r in rows} == {"BlackHoleCluster"}
    assert {r["response_code"] for r in rows if r["protocol"] == "http"} == {"502"}


def test_graph_from_proxies(capsys, proxies, tmp_path) -> None:
    rc, out, err = run(
        capsys,
        "graph",
        "--proxies",
        *(p.url for p in proxies),
        "--window",
        "1s",
        "--out",
        str(tmp_path / "g.svg"),
        "--json",
    )
    assert rc == 0, err
    data = json.loads(out)
    kinds = {n["kind"] for n in data["nodes"]}
    assert data["graphType"] == "versionedApp" and kinds == {
        "unknown",
        "app",
        "service",
        "PassthroughCluster",
    }
    assert (tmp_path / "g.svg").exists() and (tmp_path / "g.html").exists()


def test_lockdown_and_suggest_from_proxies(capsys, proxies) -> None:
    urls = [p.url for p in proxies]
    rc, out, _ = run(capsys, "lockdown-check", "--proxies", *urls, "--since-start")
    assert rc == 1 and "httpbin.org" in out
    rc, out, _ = run(capsys, "suggest", "--proxies", *urls, "--since-start")
    assert rc == 0 and "- httpbin.org" in out


def test_unreachable_proxy_is_named(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rc, _, err = run(capsys, "report", "--proxies", url, "--since-start")
    assert rc == 2 and f"{url}/stats/prometheus" in err and "make up" in err
    with pytest.raises(SourceUnreachable):
        breakdown([url], proxy_method="since-start")


def test_api_snapshot_and_write_graph_for_one_demo_step(
    scratch: FakeProxy, clock: ManualClock, tmp_path
) -> None:
    from egresswatch import api

    scratch.switch(SCENARIOS["passthrough"]().sidecar)
    clock.advance(0.5)
    scratch.switch([])  # the previous step's traffic has ended: its counters stop
    snap = api.snapshot([scratch.url])
    scratch.switch(SCENARIOS["serviceentry"]().sidecar)
    clock.advance(1.1)  # this step's traffic: every serviceentry counter passes 1 (1 to 19 per second)
    graph = api.write_graph([scratch.url], tmp_path / "step.svg", baseline=snap)
    assert graph.rates == "counts"
    kinds = {n.kind for n in graph.nodes.values()}
    assert "ServiceEntry" in kinds and "PassthroughCluster" not in kinds
    assert (tmp_path / "step.svg").read_text().startswith("<svg")
    assert "ServiceEntry" in (tmp_path / "step.html").read_text()

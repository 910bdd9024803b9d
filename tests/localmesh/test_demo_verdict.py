"""The demo's verdict: it must say MISMATCH whenever a step differs from docs/istio-facts.md's table."""

from collections import Counter

from egresswatch.exposition import Snapshot
from localmesh.demo import SiteOutcome, egress_growth, verdict
from localmesh.expected import EGRESS_SELECTOR, EXPECTATIONS

PROXY = "http://127.0.0.1:15090/stats/prometheus"


def series(**labels: str) -> frozenset:
    return frozenset({**EGRESS_SELECTOR, **labels}.items())


def snapshot(values: dict[frozenset, float]) -> Snapshot:
    return Snapshot(0.0, {PROXY: {("istio_requests_total", tuple(sorted(k))): v for k, v in values.items()}})


def blackhole_series() -> frozenset:
    return series(**EXPECTATIONS["blackhole"].series)


def test_a_step_as_designed_has_no_problems():
    site = SiteOutcome(statuses=Counter({502: 3}), errors=Counter({"egress_blocked": 3}))
    assert verdict(EXPECTATIONS["blackhole"], 3, site, {blackhole_series(): 3.0}) == []


def test_wrong_site_answer_is_a_mismatch():
    site = SiteOutcome(created=3, statuses=Counter({201: 3}))
    problems = verdict(EXPECTATIONS["blackhole"], 3, site, {blackhole_series(): 3.0})
    assert any("the site answered {201: 3}" in p for p in problems)


def test_requests_in_the_wrong_series_are_a_mismatch():
    site = SiteOutcome(statuses=Counter({502: 3}), errors=Counter({"egress_blocked": 3}))
    passthrough = series(**EXPECTATIONS["passthrough"].series)
    problems = verdict(EXPECTATIONS["blackhole"], 3, site, {passthrough: 3.0})
    assert "0 of 3 requests landed in the expected series" in problems[0]
    assert "3 requests landed in other egress series" in problems[1]


def test_growth_counts_new_series_from_zero_and_ignores_other_workloads():
    before = snapshot({blackhole_series(): 5.0})
    other = frozenset({**dict(blackhole_series()), "source_workload": "frontend"}.items())
    after = snapshot({blackhole_series(): 7.0, series(**EXPECTATIONS["passthrough"].series): 2.0, other: 9.0})
    grown = egress_growth(before, after)
    assert grown == {blackhole_series(): 2.0, series(**EXPECTATIONS["passthrough"].series): 2.0}


def test_serviceentry_series_without_the_entry_endpoint_labels_is_a_mismatch():
    # Before Istio 1.30 the ServiceEntry's series had destination_workload="unknown"; 1.31 names the entry.
    site = SiteOutcome(created=3, statuses=Counter({201: 3}))
    expected = EXPECTATIONS["serviceentry"]
    assert expected.series["destination_workload"] == "httpbin-ext"
    assert verdict(expected, 3, site, {series(**expected.series): 3.0}) == []
    old = series(**{**expected.series, "destination_workload": "unknown", "destination_cluster": "unknown"})
    assert "0 of 3 requests landed in the expected series" in verdict(expected, 3, site, {old: 3.0})[0]

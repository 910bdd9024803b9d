"""docs/conformance.md's accepted differences are well formed: each row gives a reason, and its
scenario pattern names scenarios this suite runs (a row that matches none is a typo or a leftover)."""

from __future__ import annotations

import fnmatch

import test_framing
import test_http_answers as answers
import test_metrics
from diffing import accepted


def suite_scenarios() -> list[str]:
    names = [f"egress/{o}/{n}" for o in answers.OPTIONS for n in answers.EGRESS]
    names += [f"ingress/passthrough/{n}" for n in answers.INGRESS]
    names += [f"connect/{o}/{n}" for o in answers.OPTIONS for n in answers.TUNNELS]
    names += [f"framing/{n}" for n in test_framing.CORPUS]
    names += [f"metrics/{n}" for n in test_metrics.SCENARIOS]
    names += [f"histograms/{o}" for o in test_metrics.OPTIONS]
    names += ["exposition/sidecar", "exposition/gateway"]
    return names


def test_every_accepted_difference_has_a_reason_and_names_a_scenario() -> None:
    rows = accepted()
    assert rows, "docs/conformance.md lists no accepted difference: the table could not be read"
    scenarios = suite_scenarios()
    for row in rows:
        assert len(row.reason) > 20, f"{row.scenario} / {row.field}: the reason is too short to explain"
        assert any(fnmatch.fnmatchcase(s, row.scenario) for s in scenarios), (
            f"docs/conformance.md: {row.scenario!r} matches no scenario of tests/conformance"
        )

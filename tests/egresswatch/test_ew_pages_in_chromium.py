"""The pages a workshop leader shows, in headless Chromium (Debian's, driven by Playwright), on the whole
local mesh: the stack's console after a switch of option (alerts, the requests/s chart, a refresh that
updates the data in place and leaves an open PromQL panel open), the site's blocked-egress message, and
the demo's one page with the three options side by side.

The console and site screenshots are the README's (docs/images/). They go to a temporary folder; to
refresh the committed ones run:
    SCREENSHOTS_OUT=docs/images .venv/bin/pytest tests/egresswatch/test_ew_pages_in_chromium.py -k screenshots
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from ew_fakes import CHROMIUM, CHROMIUM_ARGS, ROOT
from playwright import sync_api
from test_ew_live_stack import WAIT, SteadyTraffic, needs_prometheus

from localmesh.stack.topology import VENV_BIN

if TYPE_CHECKING:
    from localmesh.stack.driver import LocalStack

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.browser,
    needs_prometheus,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]

# Every <svg> of a page: its own <title> first, and every legend inside the picture (not cut off).
SVG_PROBLEMS = """() => {
  const problems = [];
  const titles = [];
  for (const svg of document.querySelectorAll("svg")) {
    const first = svg.firstElementChild;
    const title = first && first.tagName.toLowerCase() === "title" ? first.textContent.trim() : "";
    if (!title) problems.push("an svg without its own <title>: " + svg.getAttribute("class"));
    titles.push(title);
    const box = svg.getBoundingClientRect();
    for (const legend of svg.querySelectorAll("g.legend")) {
      const b = legend.getBoundingClientRect();
      if (b.left < box.left || b.top < box.top || b.right > box.right + 0.5 || b.bottom > box.bottom + 0.5) {
        problems.push(`legend of "${title}" cut off: ${JSON.stringify(b)} in ${JSON.stringify(box)}`);
      }
    }
  }
  if (new Set(titles).size !== titles.length) problems.push("two svgs share a title: " + titles);
  return problems;
}"""


@pytest.fixture()
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: a temporary folder, unless SCREENSHOTS_OUT names one (docs/images)."""
    out = Path(os.environ.get("SCREENSHOTS_OUT") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture()
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_until(what: str, check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_screenshots_of_the_console_and_the_blocked_site(
    stack: LocalStack, browser: Any, shots: Path
) -> None:
    console = stack.url("console")
    # Some seconds of passthrough, then blackhole: the chart shows the switch, the alert fires.
    stack.apply("passthrough")
    with SteadyTraffic(stack) as traffic:
        time.sleep(8)
        stack.apply("blackhole")
        time.sleep(8)
        wait_until(
            "the console's chart with both clusters and EgressBlocked firing",
            lambda: (
                (live := requests.get(f"{console}/api/live", timeout=10).json()["html"])
                and 'data-name="BlackHoleCluster"' in live
                and 'data-name="PassthroughCluster"' in live
                and "data-alertname='EgressBlocked' data-state='firing'" in live
            ),
        )

        site = browser.new_page(viewport={"width": 1000, "height": 640})
        site.goto(f"{stack.site}/new")
        site.fill("#title", "Blocked soup")
        site.fill("#ingredients", "water\nsalt")
        site.click("button[type=submit]")
        problem = site.wait_for_selector("#problem", timeout=30000)
        assert problem.get_attribute("data-code") == "egress_blocked"
        assert "blocked" in problem.inner_text() and site.input_value("#title") == "Blocked soup"
        site.screenshot(path=str(shots / "site-blocked-egress.png"))  # the message and the kept input

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{console}/")
        page.wait_for_selector("svg.rate-chart g.series[data-name='BlackHoleCluster']", timeout=15000)
        page.wait_for_selector("svg.egress-graph g.node[data-kind='BlackHoleCluster']", timeout=15000)
        assert "option blackhole" in page.inner_text("#applied")
        assert page.locator("#alerts tr[data-alertname='EgressBlocked'][data-state='firing']").count() >= 1
        assert page.evaluate(SVG_PROBLEMS) == []
        page.screenshot(path=str(shots / "console.png"), full_page=True)

        # A refresh swaps the data in place: no reload (a mark on window survives), the PromQL panel
        # the reader opened stays open.
        page.click("#promql summary")
        page.evaluate("() => { window.stayed = true; }")
        before = int(page.evaluate("() => Number(document.body.dataset.refreshes || 0)"))
        page.wait_for_function(
            f"() => Number(document.body.dataset.refreshes || 0) >= {before + 2}", timeout=WAIT * 1000
        )
        assert page.evaluate("() => window.stayed === true")
        assert page.evaluate("() => document.getElementById('promql').open")
        assert "rate(istio_requests_total" in page.inner_text("#queries")
    assert not traffic.errors, traffic.errors
    for name in ("console.png", "site-blocked-egress.png"):
        assert (shots / name).stat().st_size > 10_000


def test_demo_page_shows_the_three_options_side_by_side(
    stack: LocalStack, browser: Any, tmp_path: Path
) -> None:
    cmd = [str(VENV_BIN / "python"), "-m", "localmesh.demo", "-n", "3", "--state-dir", str(stack.state_dir)]
    env = {**os.environ, "EGRESS_LAB_OUT": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"One page with every option: {tmp_path / 'index.html'}" in done.stdout
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((tmp_path / "index.html").as_uri())
    sections = page.eval_on_selector_all(
        "section.step", "els => els.map(e => [e.id, e.dataset.verdict, e.querySelectorAll('svg').length])"
    )
    assert sections == [[f"option-{o}", "ok", 1] for o in ("passthrough", "blackhole", "serviceentry")]
    blocked = page.inner_text("#option-blackhole")
    assert "REGISTRY_ONLY" in blocked and "3 × HTTP 502" in blocked and "BlackHoleCluster" in blocked
    assert "The site said:" in blocked
    assert "outbound|80||httpbin.org" in page.inner_text("#option-serviceentry")
    # Kiali's versioned-app graph, and the ServiceEntry node named after the entry with its host.
    graph_types = page.eval_on_selector_all("section.step svg", "els => els.map(e => e.dataset.graphType)")
    assert graph_types == ["versionedApp"] * 3
    entries = page.eval_on_selector_all(
        "#option-serviceentry svg g.node[data-kind='ServiceEntry']",
        "els => els.map(e => [e.dataset.name, e.dataset.hosts, e.querySelector('title').textContent])",
    )
    assert entries == [
        ["httpbin-ext", "httpbin.org", "ServiceEntry: httpbin-ext (recipes) hosts: httpbin.org"]
    ]
    assert page.evaluate(SVG_PROBLEMS) == []

"""The demo's one page (out/index.html): per egress option, the mesh setting, what the site answered,
the service graph, the idgen egress series that grew and the verdict, side by side."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from egresswatch.api import CSS, Graph, fmt_count, render_svg

# The labels that tell the options apart (the rest of Istio's label set is the same in all three).
SERIES_LABELS = (
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "response_code",
    "response_flags",
)
PAGE_CSS = """
.steps{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:1em}
h3{font-size:.95em;margin:1em 0 .4em}
.step{background:#fff;border:1px solid #d2d2d2;padding:.8em;min-width:0;overflow-x:auto}
.series{font-size:.75em}
.step h2{margin-top:0} .step svg{width:100%;height:auto}
.verdict.ok{background:#f3faf2;border:1px solid #3e8635;padding:.5em}
.verdict.mismatch{background:#fdf0ef;border:1px solid #c9190b;padding:.5em}
"""


@dataclass
class Step:
    """What one option's step did and saw."""

    number: int
    option: str
    summary: str  # the mesh setting in words
    applied: str  # how the local control plane describes the applied config
    requested: int
    statuses: Mapping[int, int]
    site_message: str
    graph: Graph | None
    graph_error: str
    series: Mapping[frozenset[tuple[str, str]], float]
    problems: list[str]


@dataclass
class DemoPage:
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(self.steps))
        return path


def _series_table(series: Mapping[frozenset[tuple[str, str]], float]) -> str:
    """One column per series, one row per label: narrow enough for a third of the page."""
    if not series:
        return "<p class='meta'>No idgen egress series grew.</p>"
    ordered = sorted(series.items(), key=lambda item: sorted(item[0]))
    rows = "".join(
        f"<tr><th>{escape(k)}</th>"
        + "".join(f"<td>{escape(dict(labels).get(k, ''))}</td>" for labels, _ in ordered)
        + "</tr>"
        for k in SERIES_LABELS
    )
    counts = "".join(f"<td class='num'>{fmt_count(count)}</td>" for _, count in ordered)
    return f"<table class='series'>{rows}<tr><th>requests</th>{counts}</tr></table>"


def _step_html(step: Step) -> str:
    answered = ", ".join(f"{count} × HTTP {status}" for status, count in sorted(step.statuses.items()))
    said = (
        f"<p>The site said: <q class='site-message'>{escape(step.site_message)}</q></p>"
        if step.site_message
        else ""
    )
    if step.graph is not None:
        title = f"Option {step.number}, {step.option}: service graph of namespace recipes"
        graph = f"<div class='graph'>{render_svg(step.graph, title)}</div>"
    else:
        graph = f"<div class='error'>{escape(step.graph_error or 'no graph')}</div>"
    ok = not step.problems
    mark = "ok" if ok else "mismatch"
    verdict = (
        f"OK: {step.option} behaves as on a real mesh." if ok else f"MISMATCH: {'; '.join(step.problems)}"
    )
    return (
        f"<section class='step' id='option-{escape(step.option)}' data-verdict='{mark}'>"
        f"<h2>Option {step.number}: {escape(step.option)}</h2>"
        f"<p><b>Mesh setting:</b> {escape(step.summary)}<br><small>{escape(step.applied)}</small></p>"
        f"<p><b>The site answered</b> {step.requested} recipe creations with {escape(answered)}.</p>{said}"
        f"<h3>Service graph</h3>{graph}"
        f"<h3>Egress series of idgen (istio_requests_total, reporter=source)</h3>{_series_table(step.series)}"
        f"<p class='verdict {mark}'><b>Verdict:</b> {escape(verdict)}</p></section>"
    )


def render(steps: list[Step]) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    title = "The egress lab: three options side by side"
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}{PAGE_CSS}</style></head><body><h1>{title}</h1>"
        f"<p class='meta'>make demo, {escape(now)}. Each step's numbers cover that step's requests only.</p>"
        f"<div class='steps'>{''.join(_step_html(s) for s in steps)}</div></body></html>\n"
    )

"""Requests/s by destination cluster over the last minutes: the query and a small server-side SVG chart.

One line per destination_service_name of the namespace's source-reported requests (PassthroughCluster,
BlackHoleCluster, a ServiceEntry host, ...), so the moment an egress option is switched shows as one
line falling and another rising. A dashed marker shows when the option in force took effect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape

from egresswatch import promql
from egresswatch.prom import PrometheusClient
from egresswatch.report import source_matchers

# Kiali's edge colours where they mean the same (PatternFly): blocked red, passthrough blue (Kiali's
# TCP/unknown blue), registered hosts and mesh services in the other PatternFly chart colours.
LINE_COLORS = {"BlackHoleCluster": "#c9190b", "PassthroughCluster": "#0066cc"}
PALETTE = ("#3e8635", "#6753ac", "#ec7a08", "#009596", "#8a8d90", "#f4c145")
WIDTH, PLOT_HEIGHT = 900, 200
LEFT, RIGHT, TOP, AXIS = 64, 24, 28, 34
CHAR = 7.0  # px per character of the 12 px legend text
LEGEND_ROW = 20
MIN_SPAN = 60.0  # seconds the chart spans at least


@dataclass
class Line:
    name: str
    points: list[tuple[float, float]]  # (Unix time, requests/s)


@dataclass
class Chart:
    lines: list[Line]
    start: float
    end: float
    step: float
    query: str


def chart_query(namespace: str, rate_window: str) -> str:
    sel = promql.selector(promql.REQUESTS, source_matchers(namespace))
    return f"sum by (destination_service_name) (rate({sel}[{rate_window}]))"


def fetch(
    client: PrometheusClient, namespace: str, rate_window: str, minutes: float = 5, now: float | None = None
) -> Chart:
    end = time.time() if now is None else now
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 150)  # at most ~150 points a line
    query = chart_query(namespace, rate_window)
    lines = [
        Line(labels.get("destination_service_name", "") or "(none)", values)
        for labels, values in client.query_range(query, start, end, step)
    ]
    # A young stack (Prometheus starts empty at `up`) has less history than the span: draw what exists,
    # at least a minute, rather than a flat line squeezed into the right edge.
    first = min((line.points[0][0] for line in lines if line.points), default=end)
    shown = max(start, min(first - step, end - MIN_SPAN))
    return Chart(sorted(lines, key=lambda line: line.name), shown, end, step, query)


def color_of(name: str, index: int) -> str:
    return LINE_COLORS.get(name) or PALETTE[index % len(PALETTE)]


def _nice_max(value: float) -> float:
    for top in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000):
        if value <= top:
            return float(top)
    return value


def _legend(names: list[str]) -> tuple[list[tuple[str, float, int]], int]:
    """Where each legend entry goes (name, x, row), wrapping to as many rows as the names need."""
    placed, x, row = [], float(LEFT), 0
    for name in names:
        width = 34 + len(name) * CHAR + 24
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, row = float(LEFT), row + 1
        placed.append((name, x, row))
        x += width
    return placed, row + 1


def render_svg(chart: Chart, marker: tuple[float, str] | None = None, title: str = "") -> str:
    """The chart as SVG: axes, one polyline per destination (broken where data is missing), the
    legend below (wrapped, never cut off) and, when given, a dashed marker at (time, label)."""
    title = title or "Requests/s by destination cluster"
    names = [line.name for line in chart.lines]
    legend, rows = _legend(names)
    height = TOP + PLOT_HEIGHT + AXIS + rows * LEGEND_ROW + 8
    top_value = _nice_max(max((v for line in chart.lines for _, v in line.points), default=0.0))
    span = max(chart.end - chart.start, 1.0)
    plot_w = WIDTH - LEFT - RIGHT

    def x_of(t: float) -> float:
        return LEFT + (t - chart.start) / span * plot_w

    def y_of(v: float) -> float:
        return TOP + PLOT_HEIGHT - min(v, top_value) / top_value * PLOT_HEIGHT

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rate-chart" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Verdana,Arial,Helvetica,sans-serif" font-size="12" '
        f'data-start="{chart.start:.3f}" data-end="{chart.end:.3f}">'
        f"<title>{escape(title)}</title>"
        f'<rect width="100%" height="100%" fill="#ffffff"/>'
    ]
    for i in range(5):  # horizontal grid lines and y labels
        value = top_value * i / 4
        y = y_of(value)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#d2d2d2"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#6a6e73">{value:g}</text>'
        )
    parts.append(
        f'<text x="14" y="{TOP + PLOT_HEIGHT / 2:.0f}" fill="#6a6e73" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + PLOT_HEIGHT / 2:.0f})">requests/s</text>'
    )
    for i in range(6):  # time labels every fifth of the span
        t = chart.start + span * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        parts.append(
            f'<text x="{x_of(t):.1f}" y="{TOP + PLOT_HEIGHT + 18}" text-anchor="{anchor}" fill="#6a6e73">'
            f"{time.strftime('%H:%M:%S', time.localtime(t))}</text>"
        )
    if marker and chart.start <= marker[0] <= chart.end:
        mx = x_of(marker[0])
        anchor = "end" if mx > LEFT + plot_w * 0.6 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(
            f'<g class="marker" data-time="{marker[0]:.3f}"><line x1="{mx:.1f}" y1="{TOP - 6}" x2="{mx:.1f}" '
            f'y2="{TOP + PLOT_HEIGHT}" stroke="#151515" stroke-dasharray="4 3"/>'
            f'<text x="{mx + dx:.1f}" y="{TOP - 10}" text-anchor="{anchor}" fill="#151515">'
            f"{escape(marker[1])}</text></g>"
        )
    for index, line in enumerate(chart.lines):
        color = color_of(line.name, index)
        runs: list[list[tuple[float, float]]] = []
        last_t = None
        for t, v in line.points:
            if last_t is None or t - last_t > chart.step * 1.5:
                runs.append([])
            runs[-1].append((t, v))
            last_t = t
        paths = "".join(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" '
            f'points="{" ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in run)}"/>'
            for run in runs
        )
        latest = line.points[-1][1] if line.points else 0.0
        parts.append(
            f'<g class="series" data-name="{escape(line.name)}" data-latest="{latest:.6g}" '
            f'data-color="{color}"><title>{escape(line.name)}: {latest:.3g} requests/s now</title>{paths}</g>'
        )
    legend_top = TOP + PLOT_HEIGHT + AXIS
    parts.append('<g class="legend">')
    for index, (name, x, row) in enumerate(legend):
        y = legend_top + row * LEGEND_ROW
        color = color_of(name, index)
        parts.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 28:.1f}" y2="{y:.1f}" stroke="{color}" '
            'stroke-width="3"/>'
            f'<text x="{x + 34:.1f}" y="{y + 4:.1f}">{escape(name)}</text>'
        )
    if not legend:
        parts.append(
            f'<text x="{LEFT}" y="{legend_top + 4}" fill="#6a6e73">no requests from the namespace in these '
            f"minutes</text>"
        )
    parts.append("</g></svg>")
    return "".join(parts)

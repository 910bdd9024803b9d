"""Draw the graph as SVG (hand-written, layered left to right) and the self-contained HTML pages.

Looks follow Kiali's Cytoscape styles (kiali/kiali frontend/src/components/CytoscapeGraph/graphs/
GraphStyles.ts): apps (the versioned-app graph's nodes) round rectangles, workloads ellipses, services
round triangles, ServiceEntries round tags, the unknown source an ellipse; edges are coloured by
health (Healthy: PF success green, Degraded: orange, Failure: PF danger red), TCP edges blue; labels
say requests/s and the error share ("0.5 rps" / "20% err"), bytes/s for TCP. Every node and edge
carries data-* attributes (id, kind, namespace, health, rate, a ServiceEntry's hosts) so tests and
scripts can read the picture back.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

from egresswatch.graph import DEGRADED, FAILURE, HEALTHY, VERSIONED_APP, WORKLOAD, Edge, Graph, Node
from egresswatch.report import Report, fmt_bytes, fmt_count, fmt_rate

# PatternFly 4 values of the colours Kiali names (EdgeColor = Success, EdgeColorFailure = Danger,
# EdgeColorTCPWithTraffic = Blue600); degraded is PatternFly orange, as Kiali's edge styles long used.
COLORS = {HEALTHY: "#3e8635", DEGRADED: "#ec7a08", FAILURE: "#c9190b", "tcp": "#004080", "NA": "#8a8d90"}
NODE_BORDER = "#8a8d90"
LAYER_GAP, ROW_GAP, MARGIN_X, MARGIN_Y, RADIUS = 230, 110, 90, 70, 18
LABEL_CHAR_WIDTH = 6.8  # px per character of an 11 px Verdana edge label (digits are ~7, letters less)
TYPE_ORDER = {"unknown": 0, "app": 1, "workload": 1, "service": 2}
GRAPH_TYPE_NAMES = {VERSIONED_APP: "versioned app graph", WORKLOAD: "workload graph"}


def edge_color(edge: Edge) -> str:
    return COLORS["tcp"] if edge.protocol == "tcp" else COLORS.get(edge.health, COLORS["NA"])


def _trim(text: str) -> str:
    """Kiali's trimFixed: drop trailing zeros and a trailing dot."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def edge_label(edge: Edge) -> list[str]:
    """GraphStyles.getEdgeLabel with units: rate to 2 decimals, then "N% err" when there are errors."""
    if edge.protocol == "tcp":
        rate = edge.rate
        return [
            f"{_trim(f'{rate:.2f}') if rate < 1 else f'{rate:.0f}'} B/s"
            if rate < 1024
            else f"{_trim(f'{rate / 1024:.2f}')} KiB/s"
        ]
    lines = [f"{_trim(f'{edge.rate:.2f}')} rps"]
    err = edge.error_percent
    if err > 0:
        lines.append(f"{_trim(f'{err:.1f}') if err < 1 else f'{err:.0f}'}% err")
    return lines


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """Layers by longest path from the roots (left to right), rows ordered by node type and name."""
    layer = {nid: 0 for nid in graph.nodes}
    for _ in range(len(graph.nodes)):  # Bellman-Ford style relaxation; bounded, so cycles cannot loop
        changed = False
        for e in graph.edges:
            if e.source != e.dest and layer[e.dest] < layer[e.source] + 1 <= len(graph.nodes):
                layer[e.dest] = layer[e.source] + 1
                changed = True
        if not changed:
            break
    columns: dict[int, list[Node]] = {}
    for nid, n in graph.nodes.items():
        columns.setdefault(layer[nid], []).append(n)
    tallest = max((len(c) for c in columns.values()), default=1)
    pos: dict[str, tuple[float, float]] = {}
    for col, nodes in columns.items():
        nodes.sort(key=lambda n: (TYPE_ORDER.get(n.node_type, 9), n.kind, n.name))
        top = MARGIN_Y + (tallest - len(nodes)) * ROW_GAP / 2
        for i, n in enumerate(nodes):
            pos[n.id] = (MARGIN_X + col * LAYER_GAP, top + i * ROW_GAP)
    return pos


def _shape(node: Node, x: float, y: float) -> str:
    stroke = COLORS[node.health] if node.health in (DEGRADED, FAILURE) else NODE_BORDER
    width = 3 if node.health in (DEGRADED, FAILURE) else 1.5
    style = f'fill="#ffffff" stroke="{stroke}" stroke-width="{width}"'
    r = RADIUS
    if node.kind == "ServiceEntry":  # round-tag
        pts = [
            (x - r, y - r * 0.8),
            (x + r * 0.4, y - r * 0.8),
            (x + r, y),
            (x + r * 0.4, y + r * 0.8),
            (x - r, y + r * 0.8),
        ]
        return f'<polygon class="node-shape" points="{_pts(pts)}" stroke-linejoin="round" {style}/>'
    if node.node_type == "service":  # round-triangle
        pts = [(x, y - r), (x + r * 1.05, y + r * 0.8), (x - r * 1.05, y + r * 0.8)]
        return f'<polygon class="node-shape" points="{_pts(pts)}" stroke-linejoin="round" {style}/>'
    if node.node_type == "app":  # round-rectangle
        return (
            f'<rect class="node-shape" x="{x - r:.1f}" y="{y - r * 0.8:.1f}" width="{2 * r}" '
            f'height="{r * 1.6:.1f}" rx="5" {style}/>'
        )
    dash = ' stroke-dasharray="4 3"' if node.node_type == "unknown" else ""
    return (
        f'<ellipse class="node-shape" cx="{x:.1f}" cy="{y:.1f}" rx="{r}" ry="{r * 0.85:.1f}" {style}{dash}/>'
    )


def _pts(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _node_svg(node: Node, x: float, y: float) -> str:
    second = f"({node.namespace})" if node.namespace else ""
    if node.node_type == "app" and node.version and node.version != "latest":
        second = f"{node.version} {second}"  # Kiali labels a versioned app node "app" and "version"
    hosts = f" hosts: {', '.join(sorted(node.hosts))}" if node.is_service_entry else ""
    attrs = (
        f'class="node" id="node-{escape(node.id)}" data-id="{escape(node.id)}" '
        f'data-name="{escape(node.name)}" '
        f'data-node-type="{node.node_type}" data-kind="{escape(node.kind)}" '
        f'data-namespace="{escape(node.namespace)}" data-health="{node.health}" '
        f'data-hosts="{escape(" ".join(sorted(node.hosts)) if node.is_service_entry else "")}"'
    )
    return (
        f"<g {attrs}><title>{escape(node.kind)}: {escape(node.name)} {escape(second)}{escape(hosts)}</title>"
        f"{_shape(node, x, y)}"
        f'<text class="node-label" x="{x:.1f}" y="{y + RADIUS + 16:.1f}" text-anchor="middle" font-size="13">'
        f'<tspan x="{x:.1f}">{escape(node.name)}</tspan>'
        f'<tspan x="{x:.1f}" dy="15" font-size="11" fill="#6a6e73">{escape(second)}</tspan></text></g>'
    )


def _edge_svg(
    edge: Edge, index: int, start: tuple[float, float], end: tuple[float, float], offset: float
) -> str:
    (x1, y1), (x2, y2) = start, end
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    nx, ny = -uy * offset, ux * offset  # parallel edges between one pair are pushed apart
    sx, sy = x1 + ux * (RADIUS + 4) + nx, y1 + uy * (RADIUS + 4) + ny
    ex, ey = x2 - ux * (RADIUS + 8) + nx, y2 - uy * (RADIUS + 8) + ny
    color = edge_color(edge)
    lines = edge_label(edge)
    # Labels sit above the line; the lower of two parallel edges gets its label below it. A sloped line
    # rises or falls across the label's width, so the label moves away by that much more (at most 40 px),
    # else the line runs through its first or last characters.
    half_width = max(len(t) for t in lines) * LABEL_CHAR_WIDTH / 2
    clear = min(40.0, abs(dy) / abs(dx) * half_width) if abs(dx) > 1 else 40.0
    mx, my = (sx + ex) / 2, (sy + ey) / 2 + (16 + clear if offset > 0 else -7 - 13 * (len(lines) - 1) - clear)
    label = "".join(
        f'<tspan x="{mx:.1f}" dy="{0 if i == 0 else 13}">{escape(t)}</tspan>' for i, t in enumerate(lines)
    )
    attrs = (
        f'class="edge" id="edge-{index}" data-source="{escape(edge.source)}" '
        f'data-target="{escape(edge.dest)}" '
        f'data-protocol="{edge.protocol}" data-health="{edge.health}" data-rate="{edge.rate:.6g}" '
        f'data-error-percent="{edge.error_percent:.3f}" data-color="{color}"'
    )
    return (
        f"<g {attrs}><title>{escape(edge.protocol)} {escape(', '.join(sorted(edge.hosts)))}</title>"
        f'<path class="edge-line" d="M{sx:.1f},{sy:.1f} L{ex:.1f},{ey:.1f}" '
        f'stroke="{color}" stroke-width="2" '
        f'fill="none" marker-end="url(#arrow-{color[1:]})"/>'
        f'<text class="edge-label" x="{mx:.1f}" y="{my:.1f}" text-anchor="middle" font-size="11" '
        f'paint-order="stroke" stroke="#ffffff" stroke-width="3" fill="#151515">{label}</text></g>'
    )


def _legend(x: float, y: float) -> str:
    items = [
        (COLORS[HEALTHY], "healthy (no 5xx)"),
        (COLORS[DEGRADED], "degraded (any 5xx)"),
        (COLORS[FAILURE], "failure (5xx >= 10%)"),
        (COLORS["tcp"], "TCP (bytes/s)"),
    ]
    parts = [f'<g class="legend" transform="translate({x:.0f},{y:.0f})" font-size="11">']
    for i, (color, text) in enumerate(items):
        lx = i * 160
        parts.append(
            f'<line x1="{lx}" y1="0" x2="{lx + 28}" y2="0" stroke="{color}" stroke-width="3"/>'
            f'<text x="{lx + 34}" y="4">{escape(text)}</text>'
        )
    # Two short lines rather than one long one: the narrowest graph (700 px) holds them whole.
    parts.append(
        '<text x="0" y="22" fill="#6a6e73">rectangle: app · ellipse: workload · triangle: service '
        "(PassthroughCluster, BlackHoleCluster: namespace unknown)</text>"
        '<text x="0" y="37" fill="#6a6e73">tag: ServiceEntry (its hosts on hover) · dashed: unknown source '
        "(outside the mesh)</text></g>"
    )
    return "".join(parts)


def render_svg(graph: Graph, title: str | None = None) -> str:
    """The graph as one SVG; `title` (default: namespace and window) is its own <title>."""
    title = title or (
        f"Service graph of namespace {graph.namespace} ({GRAPH_TYPE_NAMES[graph.graph_type]}), "
        f"window {graph.window}"
    )
    pos = layout(graph)
    width = max((x for x, _ in pos.values()), default=MARGIN_X) + MARGIN_X + 40
    height = max((y for _, y in pos.values()), default=MARGIN_Y) + MARGIN_Y + 75
    width = max(width, 700)
    markers = "".join(
        f'<marker id="arrow-{c[1:]}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
        for c in sorted(set(COLORS.values()))
    )
    pair_count: dict[frozenset[str], int] = {}
    for e in graph.edges:
        pair_count[frozenset((e.source, e.dest))] = pair_count.get(frozenset((e.source, e.dest)), 0) + 1
    seen: dict[frozenset[str], int] = {}
    edges = []
    for i, e in enumerate(graph.edges):
        pair = frozenset((e.source, e.dest))
        k = seen.get(pair, 0)
        seen[pair] = k + 1
        offset = 0.0 if pair_count[pair] == 1 else (k - (pair_count[pair] - 1) / 2) * 14
        edges.append(_edge_svg(e, i, pos[e.source], pos[e.dest], offset))
    nodes = [_node_svg(n, *pos[n.id]) for n in graph.nodes.values()]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="egress-graph" '
        f'width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Verdana,Arial,Helvetica,sans-serif" '
        f'data-namespace="{escape(graph.namespace)}" data-window="{escape(graph.window)}" '
        f'data-graph-type="{graph.graph_type}">'
        f"<title>{escape(title)}</title>"
        f'<rect width="100%" height="100%" fill="#ffffff"/><defs>{markers}</defs>'
        f'<g class="edges">{"".join(edges)}</g><g class="nodes">{"".join(nodes)}</g>'
        f"{_legend(20, height - 49)}</svg>\n"
    )


# ---- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font-family:Verdana,Arial,Helvetica,sans-serif;margin:1.5em;color:#151515;background:#f5f5f5}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#6a6e73;font-size:.85em;margin:0 0 1em}
.card{background:#fff;border:1px solid #d2d2d2;padding:.8em;overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;background:#fff}
th,td{border:1px solid #d2d2d2;padding:.25em .6em;text-align:left}
th{background:#f0f0f0} td.num{text-align:right}
.error{background:#fdf0ef;border:1px solid #c9190b;color:#7d1007;padding:.8em;white-space:pre-wrap}
.note{background:#fdf7e7;border:1px solid #f0ab00;padding:.5em .8em;margin:.4em 0}
pre{background:#fff;border:1px solid #d2d2d2;padding:.6em;font-size:.8em;overflow-x:auto}
"""


def _hosts_note(node: Node) -> str:
    """A ServiceEntry node's hosts, when its name is not its only host (httpbin-ext: httpbin.org)."""
    if not node.is_service_entry or sorted(node.hosts) == [node.name]:
        return ""
    return ": " + ", ".join(sorted(node.hosts))


def _edges_table(graph: Graph) -> str:
    rows = []
    for e in graph.edges:
        src, dst = graph.nodes[e.source], graph.nodes[e.dest]
        codes = ", ".join(
            f"{code or 'tcp'}: {fmt_rate(sum(f.values()))}/s" for code, f in sorted(e.responses.items())
        )
        rows.append(
            f"<tr class='edge-row' data-health='{e.health}'><td>{escape(src.name)}</td><td>{escape(dst.name)}"
            f" <small>({escape(dst.kind)}{escape(_hosts_note(dst))})</small></td><td>{e.protocol}</td>"
            f"<td class='num'>{escape(' / '.join(edge_label(e)))}</td><td>{escape(codes) or '-'}</td>"
            f"<td>{e.health if e.protocol != 'tcp' else '-'}</td></tr>"
        )
    return (
        "<table id='edges'><tr><th>from</th><th>to</th><th>protocol</th><th>rate</th><th>responses</th>"
        f"<th>health</th></tr>{''.join(rows)}</table>"
    )


def report_table_html(report: Report) -> str:
    rows = []
    for r in report.rows:
        host = "(hidden by TLS)" if r.host_hidden else r.host
        rows.append(
            f"<tr class='report-row' data-kind='{escape(r.kind)}'><td>{escape(r.source_workload)}."
            f"{escape(r.source_namespace)}</td><td>{escape(host)}</td><td>{escape(r.kind)}</td><td>{r.protocol}</td>"
            f"<td>{escape(r.response_code or '-')}</td><td>{escape(r.response_flags)}</td>"
            f"<td class='num'>{fmt_count(r.count)}</td><td class='num'>{fmt_rate(r.rate)}</td>"
            f"<td class='num'>{fmt_bytes(r.bytes_sent) if r.protocol == 'tcp' else ''}</td></tr>"
        )
    notes = "".join(f"<div class='note'>{escape(n)}</div>" for n in report.notes)
    return (
        "<table id='report'><tr><th>source</th><th>destination host</th><th>cluster</th><th>protocol</th>"
        "<th>code</th><th>flags</th><th>count</th><th>per s</th><th>bytes sent</th></tr>"
        f"{''.join(rows)}</table>{notes}"
    )


def render_sections(
    graph: Graph | None, report: Report | None, error: str | None = None, graph_title: str | None = None
) -> tuple[str, list[str]]:
    """The error, graph, edges and report sections as HTML, and the PromQL behind them."""
    parts = []
    if error:
        parts.append(f"<div class='error' id='error'>{escape(error)}</div>")
    queries: list[str] = []
    if graph is not None:
        parts.append(
            f"<h2>Service graph ({GRAPH_TYPE_NAMES[graph.graph_type]})</h2>"
            f"<div class='card' id='graph'>{render_svg(graph, graph_title)}</div>"
            f"<h2>Edges</h2>{_edges_table(graph)}"
        )
        parts += [f"<div class='note graph-note'>{escape(n)}</div>" for n in graph.notes]
        queries += graph.queries
    if report is not None:
        parts.append(f"<h2>Egress report</h2>{report_table_html(report)}")
        queries += [q for q in report.queries if q not in queries]
    return "".join(parts), queries


def queries_panel(queries: list[str]) -> str:
    """The PromQL, folded: a <details> the reader opens (its <pre id="queries"> can be updated in place)."""
    return (
        "<details id='promql'><summary>PromQL used</summary><pre id='queries'>"
        + escape("\n\n".join(queries))
        + "</pre></details>"
    )


def page_head(title: str, extra_head: str = "") -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{extra_head}<title>{escape(title)}"
        f"</title><style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
    )


def render_html(
    graph: Graph | None,
    report: Report | None = None,
    *,
    title: str = "egresswatch",
    refresh_seconds: int | None = None,
    error: str | None = None,
    subtitle: str = "",
) -> str:
    """A self-contained page: inline SVG, tables and queries, no external assets, no JavaScript."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    head = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    sections, queries = render_sections(graph, report, error)
    parts = [
        page_head(title, head),
        f"<p class='meta'>{escape(subtitle)} · generated {escape(now)}"
        f"{f' · refreshes every {refresh_seconds} s' if refresh_seconds else ''}</p>",
        sections,
    ]
    if queries:
        parts.append(queries_panel(queries))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_graph(
    graph: Graph, out: str | Path, *, title: str | None = None, subtitle: str = ""
) -> tuple[Path, Path]:
    """Write the SVG to `out` and the self-contained page next to it (same name, .html); return both paths."""
    svg_path = Path(out)
    html_path = svg_path.with_suffix(".html")
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(render_svg(graph))
    html_path.write_text(
        render_html(
            graph,
            title=title or f"egresswatch: service graph of namespace {graph.namespace}",
            subtitle=subtitle,
        )
    )
    return svg_path, html_path

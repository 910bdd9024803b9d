"""Units of the windows that start at a moment, the --since flag, and the requests/s chart's SVG."""

from __future__ import annotations

import time
from xml.etree import ElementTree

import pytest

from egresswatch import cli, timeseries
from egresswatch.errors import UsageError
from egresswatch.promql import Window, counts_query, eq, kiali_rate_query

SVG = "{http://www.w3.org/2000/svg}"


def test_a_window_since_a_moment_is_milliseconds_prometheus_accepts() -> None:
    w = Window.since(1000.0, "option blackhole took effect", now=1083.4126)
    assert (w.text, w.seconds, w.start) == ("83413ms", 83.413, 1000.0)
    assert w.describe().startswith("since option blackhole took effect at ") and w.describe().endswith(
        "(83 s)"
    )
    assert "offset 83413ms" in counts_query("m", [eq("a", "b")], ["a"], w)
    # Kiali's rate query takes whole seconds: never "0s", which Prometheus rejects.
    assert "[1s]" in kiali_rate_query("m", [], ["a"], Window.since(10.0, now=10.2))
    assert Window.parse("1m").describe() == "last 1m"


def parse(*argv: str):
    return cli.build_parser().parse_args(["report", *argv])


def test_since_takes_a_time_or_applied_and_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_STATE", "/nonexistent-localmesh-state")
    start = time.time() - 90
    assert abs(cli.window_of(parse("--since", str(start))).seconds - 90) < 5
    iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start))
    assert abs(cli.window_of(parse("--since", iso)).seconds - 90) < 5
    with pytest.raises(UsageError, match="is not 'applied', an ISO 8601 time"):
        cli.window_of(parse("--since", "last tuesday"))
    with pytest.raises(UsageError, match="in the future"):
        cli.window_of(parse("--since", str(time.time() + 3600)))
    with pytest.raises(UsageError, match="--since applied needs the local stack running"):
        cli.window_of(parse("--since", "applied"))
    # No stack runs: the default is Kiali's last minute.
    assert cli.window_of(parse()).text == "1m"
    with pytest.raises(SystemExit):  # one or the other
        parse("--window", "1m", "--since", "applied")


def test_chart_wraps_its_legend_and_marks_the_switch() -> None:
    names = ["BlackHoleCluster", "PassthroughCluster"] + [f"host-{i}.example.org" for i in range(12)]
    lines = [
        timeseries.Line(n, [(100.0 + t, float(i)) for t in range(0, 60, 2)]) for i, n in enumerate(names)
    ]
    chart = timeseries.Chart(lines, 100.0, 160.0, 2.0, "q")
    svg = timeseries.render_svg(chart, (130.0, "option blackhole applied"), "my chart")
    root = ElementTree.fromstring(svg)
    assert root[0].tag == f"{SVG}title" and root[0].text == "my chart"
    width, height = float(root.get("width")), float(root.get("height"))
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    texts = legend.findall(f"{SVG}text")
    assert [t.text for t in texts] == names
    for text in texts:  # every entry inside the picture, on as many rows as needed
        x, y = float(text.get("x")), float(text.get("y"))
        assert x + len(text.text) * timeseries.CHAR <= width and y <= height
    assert len({t.get("y") for t in texts}) > 1
    colors = {
        g.get("data-name"): g.get("data-color") for g in root.iter(f"{SVG}g") if g.get("class") == "series"
    }
    assert colors["BlackHoleCluster"] == "#c9190b" and colors["PassthroughCluster"] == "#0066cc"
    marker = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "marker")
    assert marker.get("data-time") == "130.000"

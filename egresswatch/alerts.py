"""Prometheus's active alerts (the egress rules of manifests/monitoring/), as the console lists them."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from egresswatch.prom import PrometheusClient


@dataclass
class Alert:
    name: str
    state: str  # "firing" or "pending" (its `for:` has not elapsed yet)
    severity: str
    labels: dict[str, str]
    summary: str
    active_at: str

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Alert:
        labels = dict(raw.get("labels", {}))
        return cls(
            labels.pop("alertname", "?"),
            raw.get("state", "?"),
            labels.pop("severity", ""),
            labels,
            raw.get("annotations", {}).get("summary", ""),
            raw.get("activeAt", ""),
        )


def active(client: PrometheusClient) -> list[Alert]:
    """Firing alerts first, then pending ones; by name and labels within each."""
    found = [Alert.of(a) for a in client.alerts()]
    return sorted(found, key=lambda a: (a.state != "firing", a.name, sorted(a.labels.items())))


def render_table(alerts: list[Alert]) -> str:
    if not alerts:
        return "<p id='alerts' class='meta'>No alert is firing or pending.</p>"
    rows = "".join(
        f"<tr class='alert-row {escape(a.state)}' data-alertname='{escape(a.name)}' "
        f"data-state='{escape(a.state)}'>"
        f"<td>{escape(a.name)}</td><td>{escape(a.state)}</td><td>{escape(a.severity)}</td>"
        f"<td>{escape(a.summary)}</td><td>{escape(a.active_at[:19].replace('T', ' '))} UTC</td></tr>"
        for a in alerts
    )
    return (
        "<table id='alerts'><tr><th>alert</th><th>state</th><th>severity</th><th>summary</th>"
        f"<th>active since</th></tr>{rows}</table>"
    )

"""A minimal client for Prometheus's HTTP API (GET /api/v1/query), with errors a user can act on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from egresswatch.errors import QueryError, SourceUnreachable, UsageError
from egresswatch.exposition import Snapshot, metrics_url

# What to do when Prometheus does not answer; shared by every command's error message.
UNREACHABLE_FIX = (
    "Locally, `make up` starts the mesh (with Prometheus when it is installed: "
    "apt-get install prometheus), and the make targets then find it, or read the proxies when it runs "
    "none; `make status` shows what runs. Or name a running Prometheus: PROMETHEUS=URL with make, "
    "--prometheus URL otherwise (on a cluster: "
    "`kubectl -n istio-system port-forward svc/prometheus 9090:9090`)."
)


@dataclass(frozen=True)
class PromSample:
    """One element of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Runs instant queries against one Prometheus base URL (e.g. http://127.0.0.1:9090)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--prometheus {url!r} is not an http(s) URL, e.g. http://127.0.0.1:9090")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _get(self, path: str, params: dict[str, str], what: str) -> dict[str, Any]:
        """GET one API endpoint; its `data`, or an error naming what went wrong and the fix."""
        endpoint = f"{self.url}{path}"
        try:
            resp = self.session.get(endpoint, params=params, timeout=self.timeout)
        except requests.ConnectionError as err:
            raise SourceUnreachable(
                f"Cannot reach Prometheus at {self.url} ({_reason(err)}). {UNREACHABLE_FIX}"
            ) from err
        except requests.Timeout as err:
            raise SourceUnreachable(
                f"Prometheus at {self.url} did not answer within {self.timeout:.0f} s. {UNREACHABLE_FIX}"
            ) from err
        try:
            body = resp.json()
        except ValueError as err:
            raise QueryError(
                f"{endpoint} answered HTTP {resp.status_code} with something that is not Prometheus's API "
                f"(no JSON). Is --prometheus {self.url} really a Prometheus server?"
            ) from err
        if body.get("status") != "success":
            query = params.get("query")
            raise QueryError(
                f"Prometheus at {self.url} rejected the {what} ({body.get('errorType', 'error')}: "
                f"{body.get('error', 'no message')})." + (f"\nQuery:\n{query}" if query else "")
            )
        data: dict[str, Any] = body.get("data", {})
        return data

    def query(self, promql: str) -> list[PromSample]:
        """Evaluate promql at the server's current time; return the instant vector."""
        data = self._get("/api/v1/query", {"query": promql}, "query")
        if data.get("resultType") != "vector":
            raise QueryError(
                f"Prometheus returned a {data.get('resultType')!r}, not a vector, for:\n{promql}"
            )
        return [PromSample(dict(r["metric"]), float(r["value"][1])) for r in data.get("result", [])]

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Evaluate promql every `step` s from start to end (Unix times): (labels, [(time, value)]) each."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = self._get("/api/v1/query_range", params, "query")
        return [
            (dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]])
            for r in data.get("result", [])
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active alerts (pending and firing), as GET /api/v1/alerts lists them."""
        return list(self._get("/api/v1/alerts", {}, "alerts request").get("alerts", []))


# Labels Prometheus adds at scrape time (target labels), not the proxies' own.
TARGET_LABELS = frozenset({"__name__", "instance", "job", "namespace", "pod"})


def snapshot(client: PrometheusClient, metrics: Sequence[str]) -> Snapshot:
    """The raw counters Prometheus holds now, shaped like a direct scrape of the same proxies.

    Keys are each target's metrics URL, so a Snapshot from here and one from `exposition.scrape`
    name the same series the same way (the demo compares the two to know Prometheus has caught up).
    """
    snap = Snapshot(taken_at=time.monotonic())
    for metric in metrics:
        for sample in client.query(metric):
            url = metrics_url(sample.labels.get("instance", "unknown"))
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in TARGET_LABELS))
            snap.per_proxy.setdefault(url, {})[(metric, labels)] = sample.value
    return snap


def _reason(err: Exception) -> str:
    """The innermost, shortest cause of a requests connection error (e.g. "Connection refused")."""
    text = str(err)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "Temporary failure in name resolution",
        "timed out",
    ):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200]

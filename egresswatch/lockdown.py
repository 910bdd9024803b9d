"""Would REGISTRY_ONLY have broken anything seen in the window? An answer a pipeline can gate on.

Under outboundTrafficPolicy REGISTRY_ONLY a sidecar sends every destination that is not in its
registry (no Kubernetes service, no ServiceEntry) to BlackHoleCluster. So the traffic that would
break is exactly what went through PassthroughCluster, unless the same host was also reached as a
registered ServiceEntry host in the window, or is named with --registered (a ServiceEntry about to
be applied). TLS/TCP passthrough with a hidden host always counts as breaking: nothing can cover it
without knowing the host. Exit codes: 0 safe, 1 would break, 2 could not tell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from egresswatch import classify
from egresswatch.report import Row, check_not_empty, collect, fmt_bytes, fmt_count
from egresswatch.source import Source
from egresswatch.suggest import split_host

SAFE, WOULD_BREAK, UNKNOWN = 0, 1, 2


@dataclass
class Verdict:
    exit_code: int
    where: str
    breaking: list[Row] = field(default_factory=list)
    covered: list[Row] = field(default_factory=list)
    already_blocked: list[Row] = field(default_factory=list)
    requests_seen: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "safe": self.exit_code == SAFE,
            "where": self.where,
            "requests_and_connections_seen": self.requests_seen,
            "would_break": [r.to_dict() for r in self.breaking],
            "covered_by_service_entry": [r.to_dict() for r in self.covered],
            "already_blocked": [r.to_dict() for r in self.already_blocked],
        }


def check(source: Source, namespace: str | None, registered: Iterable[str] = ()) -> Verdict:
    rows = collect(source, namespace)
    check_not_empty(source, namespace, rows)  # nothing seen: "could not tell", not "safe"
    extra = {h.lower() for h in registered}
    entries = {(r.source_namespace, split_host(r.host)[0]) for r in rows if r.kind == classify.SERVICE_ENTRY}
    verdict = Verdict(SAFE, source.where(), requests_seen=sum(r.count for r in rows))
    for r in rows:
        if r.kind == classify.BLACKHOLE:
            verdict.already_blocked.append(r)
        if r.kind != classify.PASSTHROUGH:
            continue
        host = split_host(r.host)[0]
        if not r.host_hidden and (host in extra or (r.source_namespace, host) in entries):
            verdict.covered.append(r)
        else:
            verdict.breaking.append(r)
    verdict.exit_code = WOULD_BREAK if verdict.breaking else SAFE
    return verdict


def render(v: Verdict) -> str:
    lines = [f"Lock-down check: would REGISTRY_ONLY break anything seen in {v.where}?"]
    if v.exit_code == SAFE:
        lines.append(
            f"SAFE: no traffic went through PassthroughCluster ({fmt_count(v.requests_seen)} requests and "
            "connections seen). Switching to REGISTRY_ONLY would not have blocked any of it."
        )
    else:
        lines.append(
            "WOULD BREAK: this traffic went through PassthroughCluster and has no ServiceEntry; "
            "REGISTRY_ONLY sends it to BlackHoleCluster (HTTP 502 from the sidecar, TCP closed):"
        )
        for r in v.breaking:
            what = "connections" if r.protocol == "tcp" else "requests"
            host = (
                'an unknown host (TLS passthrough hides it: destination_service="unknown")'
                if r.host_hidden
                else r.host
            )
            sent = f", {fmt_bytes(r.bytes_sent)} sent" if r.protocol == "tcp" else ""
            lines.append(
                f"  - {r.source_workload}.{r.source_namespace} -> {host}: {fmt_count(r.count)} {r.protocol} "
                f"{what}{sent}"
            )
        lines.append(
            "Fix: register the hosts first (`make suggest > se.yaml` writes the ServiceEntries; review "
            "it, then `make apply F=se.yaml`, or kubectl apply -f se.yaml on a cluster), then lock down."
        )
    for r in v.covered:
        lines.append(
            f"  covered: {r.host} from {r.source_workload}.{r.source_namespace} (a ServiceEntry serves it)"
        )
    if v.already_blocked:
        hosts = sorted({"(hidden host, TLS/TCP)" if r.host_hidden else r.host for r in v.already_blocked})
        lines.append(f"Note: already blocked now (BlackHoleCluster): {', '.join(hosts)}.")
    return "\n".join(lines) + "\n"

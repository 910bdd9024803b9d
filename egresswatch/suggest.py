"""ServiceEntry suggestions for every host the window saw going out through PassthroughCluster.

HTTP passthrough names its host (destination_service is the request's Host header), so a
ServiceEntry can be written: networking.istio.io/v1, the host, HTTP on the Host header's port
(80 when it names none), resolution DNS, location MESH_EXTERNAL, exportTo "." (only the caller's
namespace sees it), in the caller's namespace. TLS/TCP passthrough hides the host
(destination_service="unknown"): no entry can be derived, and `hidden` says what to do instead.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from egresswatch import classify
from egresswatch.report import Row, collect, fmt_count
from egresswatch.source import Source

HIDDEN_ADVICE = (
    "The host is not in the metrics: the sidecar passed an encrypted stream through without seeing its "
    "name. To find it: (1) send egress through an egress gateway, whose TLS passthrough route and metrics "
    "see the SNI; (2) turn on Envoy access logs (meshConfig.accessLogFile: /dev/stdout) and read "
    "%REQUESTED_SERVER_NAME% for PassthroughCluster entries; (3) check DNS queries from the pod (CoreDNS "
    "logs) or the application's logs and config (e.g. idgen's UPSTREAM_URL). Then register each host "
    "with a ServiceEntry whose port is {number: 443, name: tls, protocol: TLS}, resolution DNS, "
    "location MESH_EXTERNAL."
)


@dataclass
class Suggestion:
    host: str
    namespace: str
    port: int
    name: str
    requests: float
    callers: list[str]
    yaml: str


@dataclass
class HiddenHost:
    namespace: str
    workload: str
    connections: float
    bytes_sent: float
    advice: str = HIDDEN_ADVICE


@dataclass
class Suggestions:
    where: str
    service_entries: list[Suggestion] = field(default_factory=list)
    hidden: list[HiddenHost] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)  # passthrough hosts already registered in the window
    not_possible: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "service_entries": [s.__dict__ for s in self.service_entries],
            "hidden": [h.__dict__ for h in self.hidden],
            "covered": self.covered,
            "not_possible": self.not_possible,
        }


def split_host(host: str) -> tuple[str, int]:
    """ "httpbin.org:8080" -> ("httpbin.org", 8080); a bare name means HTTP's port 80."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and name and not name.endswith("]"):
        return name.lower(), int(port)
    return host.lower(), 80


def entry_name(host: str, port: int) -> str:
    """A DNS-1123 name for the ServiceEntry: httpbin.org -> httpbin-org-ext."""
    base = re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-")
    suffix = "-ext" if port == 80 else f"-{port}-ext"
    return (base[: 63 - len(suffix)].rstrip("-") or "host") + suffix


def service_entry_yaml(host: str, port: int, namespace: str, comment: str) -> str:
    port_name = "http" if port == 80 else f"http-{port}"
    return (
        f"# {comment}\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        "metadata:\n"
        f"  name: {entry_name(host, port)}\n"
        f"  namespace: {namespace}\n"
        "spec:\n"
        "  hosts:\n"
        f"  - {host}\n"
        "  exportTo:\n"
        '  - "."\n'
        "  ports:\n"
        f"  - number: {port}\n"
        f"    name: {port_name}\n"
        "    protocol: HTTP\n"
        "  resolution: DNS\n"
        "  location: MESH_EXTERNAL\n"
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def suggest_from_rows(rows: list[Row], where: str) -> Suggestions:
    out = Suggestions(where=where)
    registered = {
        (r.source_namespace, split_host(r.host)[0]) for r in rows if r.kind == classify.SERVICE_ENTRY
    }
    http: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        if r.kind != classify.PASSTHROUGH:
            continue
        if r.protocol == "tcp":
            if r.host_hidden:
                out.hidden.append(
                    HiddenHost(r.source_namespace, r.source_workload, r.count, r.bytes_sent or 0.0)
                )
            else:
                out.not_possible.append(
                    f"{r.host}: TCP through PassthroughCluster from {r.source_workload}."
                    f"{r.source_namespace}; the port is not in the metrics. {HIDDEN_ADVICE}"
                )
            continue
        name, port = split_host(r.host)
        if _is_ip(name):
            out.not_possible.append(
                f"{r.host}: HTTP to an IP address from {r.source_workload}.{r.source_namespace}; "
                "a ServiceEntry needs a host name: find the name the application meant "
                "(its config or logs) and register that."
            )
            continue
        if (r.source_namespace, name) in registered:
            out.covered.append(name)
            continue
        http.setdefault((r.source_namespace, name, port), []).append(r)
    for (namespace, host, port), group in sorted(http.items()):
        total = sum(r.count for r in group)
        callers = sorted({f"{r.source_workload}.{r.source_namespace}" for r in group})
        comment = (
            f"{host}: {fmt_count(total)} HTTP requests through PassthroughCluster from {', '.join(callers)} "
            f"({where})."
        )
        out.service_entries.append(
            Suggestion(
                host,
                namespace,
                port,
                entry_name(host, port),
                total,
                callers,
                service_entry_yaml(host, port, namespace, comment),
            )
        )
    out.covered = sorted(set(out.covered))
    return out


def suggest(source: Source, namespace: str | None) -> Suggestions:
    return suggest_from_rows(collect(source, namespace), source.where())


def render_yaml(s: Suggestions) -> str:
    """All suggestions as one multi-document YAML; what cannot be suggested stays in comments."""
    parts = [
        f"# egresswatch suggest: ServiceEntries for hosts reached through PassthroughCluster ({s.where}).\n"
        "# Review, then apply: kubectl apply -f FILE (cluster), or make apply F=FILE (local mesh, in\n"
        "# the bundle's folder). Under REGISTRY_ONLY these hosts then stay reachable.\n"
    ]
    if not s.service_entries:
        parts.append("# Nothing to register: no HTTP host went through PassthroughCluster in the window.\n")
    for entry in s.service_entries:
        parts.append("---\n" + entry.yaml)
    for host in s.covered:
        parts.append(f"# {host}: also seen through a ServiceEntry in the window: already registered.\n")
    for h in s.hidden:
        parts.append(
            f"# Hidden host: {fmt_count(h.connections)} TLS/TCP connections from {h.workload}.{h.namespace} "
            f'went through PassthroughCluster with destination_service="unknown".\n'
            + _comment_block(h.advice)
        )
    for text in s.not_possible:
        parts.append(_comment_block(text))
    return "".join(parts)


def _comment_block(text: str, width: int = 100) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return "".join(f"#   {x}\n" for x in lines)

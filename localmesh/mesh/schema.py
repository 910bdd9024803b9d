"""The typed, validated objects localmesh reads (IstioOperator meshConfig, Sidecar, ServiceEntry,
Gateway, VirtualService, Deployment, Service, Namespace, ServiceAccount), and one parser per kind.
Invalid input raises `ConfigError` naming file, resource and field; fields localmesh does not
implement, and fields no schema knows, become warnings (never silently ignored). Istio rules
implemented here cite the Istio source they follow.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from localmesh.mesh.load import (
    METADATA_FIELDS,
    ConfigError,
    Resource,
    check_string_map,
    describe_value,
    join_path,
)
from localmesh.mesh.names import (
    ALLOW_ANY,
    CLUSTER_DOMAIN,
    CLUSTER_ID,
    REGISTRY_ONLY,
    Workload,
    canonical_service,
    spiffe_principal,
)

ISTIO_NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
OUTBOUND_MODES = (REGISTRY_ONLY, ALLOW_ANY)
# Istio 1.31's third mesh-wide mode (istio/istio releasenotes/notes/allow-any-dynamic-dns.yaml):
# plain HTTP to unknown hosts goes through Envoy's dynamic forward proxy, cluster
# AllowAnyDynamicDNSCluster and route allow_any_dynamic_dns (pilot/pkg/networking/core/httproute.go
# buildCatchAllVirtualHost), so istio_stats names such a request by its Host in both
# destination_service and destination_service_name. The local proxies emulate neither the cluster
# nor those labels (nor the demo's report and alerts, which read PassthroughCluster), so it is refused.
ALLOW_ANY_DYNAMIC_DNS = "ALLOW_ANY_DYNAMIC_DNS"
# Port protocols localmesh accepts on ServiceEntry and Gateway ports (Istio parses them case-insensitively:
# pkg/config/protocol/instance.go Parse).
PORT_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "MONGO")
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")


@dataclass(frozen=True)
class MeshConfig:
    """The part of an IstioOperator localmesh uses: spec.meshConfig (the rest is install-time config)."""

    ref: str
    source: str
    outbound_mode: str | None  # None: not set here
    trust_domain: str | None


@dataclass(frozen=True)
class SidecarConfig:
    name: str
    namespace: str
    source: str
    selector: dict[str, str] | None  # workloadSelector.labels; None = the namespace-wide Sidecar
    outbound_mode: str | None  # None: outboundTrafficPolicy not set (the mesh config's applies)

    @property
    def ref(self) -> str:
        return f"Sidecar {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceEntryPort:
    number: int
    name: str
    protocol: str  # upper case, one of PORT_PROTOCOLS
    target_port: int | None = None


@dataclass(frozen=True)
class ServiceEntryEndpoint:
    address: str
    ports: dict[str, int] = field(default_factory=dict)  # port name -> endpoint port


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    namespace: str
    source: str
    hosts: tuple[str, ...]  # lower case
    ports: tuple[ServiceEntryPort, ...]
    resolution: str = "NONE"
    location: str = "MESH_EXTERNAL"
    export_to: tuple[str, ...] = ()  # empty: every namespace
    endpoints: tuple[ServiceEntryEndpoint, ...] = ()

    @property
    def ref(self) -> str:
        return f"ServiceEntry {self.namespace}/{self.name}"

    def visible_to(self, namespace: str) -> bool:
        return _exported_to(self.export_to, self.namespace, namespace)


def _exported_to(export_to: tuple[str, ...], own_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: empty or "*" = every namespace, "." = its own, "~" = none, else the names listed
    (pilot/pkg/model/push_context.go initServiceRegistry; meshConfig.defaultServiceExportTo default "*")."""
    if not export_to or "*" in export_to:
        return True
    if "~" in export_to:
        return False
    return any((e == "." and namespace == own_namespace) or e == namespace for e in export_to)


@dataclass(frozen=True)
class GatewayServer:
    port_number: int
    port_name: str
    protocol: str
    hosts: tuple[str, ...]  # as written: "host", "ns/host", "./host", "*/host"


@dataclass(frozen=True)
class Gateway:
    name: str
    namespace: str
    source: str
    selector: dict[str, str]
    servers: tuple[GatewayServer, ...]

    @property
    def ref(self) -> str:
        return f"Gateway {self.namespace}/{self.name}"

    def selects(self, labels: Mapping[str, str]) -> bool:
        """A Gateway applies to the gateway pods whose labels include its selector (empty: all)."""
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True)
class UriMatch:
    kind: str  # "exact", "prefix" or "regex" (regex is not implemented: never matches)
    value: str


@dataclass(frozen=True)
class HTTPRoute:
    """One http[] entry: any of `matches` (none = every request) -> the destination."""

    matches: tuple[UriMatch, ...]
    destination_host: str
    destination_port: int | None


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    source: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]  # as written ("mesh", "name", "ns/name")
    export_to: tuple[str, ...]
    http: tuple[HTTPRoute, ...]

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"

    def gateway_keys(self) -> tuple[str, ...]:
        """Its gateways as "namespace/name" (a short name means one in the VirtualService's namespace)."""
        return tuple(g if "/" in g else f"{self.namespace}/{g}" for g in self.gateways if g != "mesh")

    def visible_to(self, namespace: str) -> bool:
        return _exported_to(self.export_to, self.namespace, namespace)


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    source: str
    labels: dict[str, str]  # the pod template's labels
    service_account: str

    def workload(self, trust_domain: str = CLUSTER_DOMAIN) -> Workload:
        """The workload identity Istio's metrics report for this Deployment's pods."""
        service, revision = canonical_service(self.labels, self.name)
        return Workload(
            name=self.name,
            namespace=self.namespace,
            app=self.labels.get("app", ""),  # own labels: "" when absent (names.Workload)
            version=self.labels.get("version", ""),
            canonical_service=service,
            canonical_revision=revision,
            principal=spiffe_principal(self.namespace, self.service_account, trust_domain),
            cluster=CLUSTER_ID,
        )


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    app_protocol: str = ""

    @property
    def istio_protocol(self) -> str:
        """Istio's protocol selection: appProtocol, else the port name's prefix ("http", "http-web",
        "tcp-db"); unnamed ports are sniffed, which for localmesh means "as the request comes"."""
        hint = (self.app_protocol or self.name.split("-", 1)[0]).upper()
        return hint if hint in PORT_PROTOCOLS else ""


@dataclass(frozen=True)
class KubeService:
    name: str
    namespace: str
    source: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str]

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    @property
    def ref(self) -> str:
        return f"Service {self.namespace}/{self.name}"


class Reader:
    """Typed access to one resource's fields; every error and warning names file, resource and field."""

    def __init__(self, res: Resource, warnings: list[str]) -> None:
        self.res = res
        self.warnings = warnings

    def where(self, path: str) -> str:
        return f"{self.res.source}: {self.res.ref}: {path}"

    def fail(self, path: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.where(path)}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.where(path)}: {message}")

    def keys(
        self, obj: dict[str, Any], path: str, known: Iterable[str], unsupported: Mapping[str, str]
    ) -> None:
        """Warns about fields localmesh does not implement (with why) and fields the schema lacks."""
        known = set(known)
        for key in obj:
            sub = join_path(path, key)
            if key in unsupported:
                self.warn(sub, f"localmesh does not implement this; {unsupported[key]}")
            elif key not in known:
                self.warn(sub, "unknown field (not in the schema); ignored")

    def mapping(self, value: Any, path: str, required: bool = False) -> dict[str, Any]:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {describe_value(value)}")
        return value

    def seq(self, value: Any, path: str, required: bool = False) -> list[Any]:
        if value is None or value == []:
            if required:
                self.fail(
                    path, "required: at least one entry" if value == [] else "required field is missing"
                )
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {describe_value(value)}")
        return value

    def string(self, value: Any, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {describe_value(value)}")
        if required and not value:
            self.fail(path, "must not be empty")
        return value

    def strings(self, value: Any, path: str, required: bool = False) -> tuple[str, ...]:
        items = self.seq(value, path, required)
        return tuple(self.string(v, f"{path}[{i}]", required=True) or "" for i, v in enumerate(items))

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        check_string_map(value, path, lambda p, m: f"{self.where(p)}: {m}")
        return dict(value or {})

    def integer(
        self, value: Any, path: str, required: bool = False, lo: int = 1, hi: int = 65535
    ) -> int | None:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected an integer, got {describe_value(value)}")
        if not lo <= value <= hi:
            self.fail(path, f"{value} is out of range (expected {lo} to {hi})")
        return value

    def enum(self, value: Any, path: str, allowed: tuple[str, ...], ignore_case: bool = False) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        canonical = text.upper() if ignore_case else text
        if canonical not in allowed:
            self.fail(path, f"{text!r} is not one of {', '.join(allowed)}")
        return canonical


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\.?$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_api_version(r: Reader, allowed: tuple[str, ...]) -> None:
    if r.res.api_version not in allowed:
        r.fail("apiVersion", f"{r.res.api_version!r} is not one of {', '.join(allowed)}")


def check_metadata(r: Reader) -> None:
    for key in r.res.body["metadata"]:
        if key not in METADATA_FIELDS:
            r.warn(f"metadata.{key}", "unknown field (not in ObjectMeta); ignored")


def _check_top_level(r: Reader, extra: Iterable[str] = ()) -> dict[str, Any]:
    """The object's spec, after warning about top-level fields a CRD object does not have."""
    r.keys(r.res.body, "", ("apiVersion", "kind", "metadata", "spec", "status", *extra), {})
    return r.mapping(r.res.body.get("spec"), "spec", required=True)


def _outbound_mode(r: Reader, value: Any, path: str, sidecar: bool = False) -> str | None:
    """An outbound traffic policy mode, with a clear refusal of ALLOW_ANY_DYNAMIC_DNS."""
    if value == ALLOW_ANY_DYNAMIC_DNS:
        if sidecar:
            # Istio's own validation refuses it too (istio/istio pkg/config/validation/validation.go).
            r.fail(
                path,
                f"{value} is only valid in the mesh config, not in a Sidecar (Istio refuses it "
                "too); use ALLOW_ANY or REGISTRY_ONLY here",
            )
        r.fail(
            path,
            f"{value} (Istio 1.31's dynamic forward proxy for plain HTTP, reported under "
            "AllowAnyDynamicDNSCluster) is not supported by localmesh; use ALLOW_ANY, which sends "
            "unknown hosts to PassthroughCluster, or REGISTRY_ONLY",
        )
    return r.enum(value, path, OUTBOUND_MODES)


def _parse_istio_operator(r: Reader) -> MeshConfig:
    _check_api_version(r, ("install.istio.io/v1alpha1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    # Everything else in an IstioOperator (profile, components, values) is install-time config for
    # istioctl; localmesh has nothing to install, so it reads meshConfig only and says nothing about the rest.
    mesh = r.mapping(spec.get("meshConfig"), "spec.meshConfig")
    policy = r.mapping(mesh.get("outboundTrafficPolicy"), "spec.meshConfig.outboundTrafficPolicy")
    r.keys(policy, "spec.meshConfig.outboundTrafficPolicy", ("mode",), {"egressProxy": "ignored"})
    mode = _outbound_mode(r, policy.get("mode"), "spec.meshConfig.outboundTrafficPolicy.mode")
    trust_domain = r.string(mesh.get("trustDomain"), "spec.meshConfig.trustDomain")
    return MeshConfig(r.res.ref, r.res.source, mode, trust_domain or None)


def _parse_sidecar(r: Reader) -> SidecarConfig:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("workloadSelector", "outboundTrafficPolicy"),
        {
            "egress": "every ServiceEntry exported to this namespace stays visible (no host import lists)",
            "ingress": "the sidecar's inbound listener is the one `make up` starts",
            "inboundConnectionPool": "ignored",
        },
    )
    selector: dict[str, str] | None = None
    if "workloadSelector" in spec:
        ws = r.mapping(spec["workloadSelector"], "spec.workloadSelector", required=True)
        r.keys(ws, "spec.workloadSelector", ("labels",), {})
        selector = r.string_map(ws.get("labels"), "spec.workloadSelector.labels")
    mode: str | None = None
    if "outboundTrafficPolicy" in spec:
        policy = r.mapping(spec["outboundTrafficPolicy"], "spec.outboundTrafficPolicy", required=True)
        r.keys(policy, "spec.outboundTrafficPolicy", ("mode",), {"egressProxy": "ignored"})
        mode = _outbound_mode(r, policy.get("mode"), "spec.outboundTrafficPolicy.mode", sidecar=True)
        if mode is None:
            # The mode enum's zero value is REGISTRY_ONLY (istio/api networking/v1alpha3/sidecar.proto
            # OutboundTrafficPolicy.Mode), so a policy without a mode blocks unknown hosts.
            mode = REGISTRY_ONLY
            r.warn(
                "spec.outboundTrafficPolicy.mode",
                "not set: Istio reads that as REGISTRY_ONLY (the enum's default)",
            )
    elif "egress" not in spec and "ingress" not in spec:
        # Istio's validation (ValidateSidecar): "sidecar: empty configuration provided".
        r.fail("spec", "empty Sidecar: set outboundTrafficPolicy (or egress/ingress)")
    return SidecarConfig(r.res.name, r.res.namespace, r.res.source, selector, mode)


def _parse_service_entry(r: Reader) -> ServiceEntry:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("hosts", "ports", "resolution", "location", "exportTo", "endpoints"),
        {
            "addresses": "localmesh matches ServiceEntries by host name (requests reach it by host through "
            "HTTP_PROXY or CONNECT), so addresses are ignored",
            "workloadSelector": "use endpoints",
            "subjectAltNames": "localmesh does not originate TLS; ignored",
        },
    )
    hosts = r.strings(spec.get("hosts"), "spec.hosts", required=True)
    for i, host in enumerate(hosts):
        path = f"spec.hosts[{i}]"
        if host == "*":
            r.fail(path, "'*' is not allowed in a ServiceEntry (name the hosts, or use '*.domain')")
        if not (_is_ip(host) or _HOST_NAME.match(host.lower())):
            r.fail(path, f"{host!r} is not a valid host name (DNS name, optionally starting with '*.')")
    ports: list[ServiceEntryPort] = []
    names: set[str] = set()
    numbers: set[int] = set()
    for i, item in enumerate(r.seq(spec.get("ports"), "spec.ports", required=True)):
        path = f"spec.ports[{i}]"
        port = r.mapping(item, path, required=True)
        r.keys(port, path, ("number", "name", "protocol", "targetPort"), {})
        number = r.integer(port.get("number"), f"{path}.number", required=True) or 0
        name = r.string(port.get("name"), f"{path}.name", required=True) or ""
        protocol = r.enum(port.get("protocol"), f"{path}.protocol", PORT_PROTOCOLS, ignore_case=True)
        if protocol is None:
            r.fail(f"{path}.protocol", f"required field is missing (one of {', '.join(PORT_PROTOCOLS)})")
        target = r.integer(port.get("targetPort"), f"{path}.targetPort")
        if name in names:
            r.fail(f"{path}.name", f"port name {name!r} is used twice")
        if number in numbers:
            r.fail(f"{path}.number", f"port {number} is used twice")
        names.add(name)
        numbers.add(number)
        ports.append(ServiceEntryPort(number, name, protocol, target))
    resolution = r.enum(spec.get("resolution"), "spec.resolution", RESOLUTIONS) or "NONE"
    location = r.enum(spec.get("location"), "spec.location", LOCATIONS) or "MESH_EXTERNAL"
    export_to = _parse_export_to(r, spec.get("exportTo"))
    endpoints: list[ServiceEntryEndpoint] = []
    for i, item in enumerate(r.seq(spec.get("endpoints"), "spec.endpoints")):
        path = f"spec.endpoints[{i}]"
        ep = r.mapping(item, path, required=True)
        r.keys(
            ep,
            path,
            ("address", "ports", "labels"),
            {k: "ignored" for k in ("network", "locality", "weight", "serviceAccount")},
        )
        address = r.string(ep.get("address"), f"{path}.address", required=True) or ""
        ep_ports: dict[str, int] = {}
        for pname, pnum in r.mapping(ep.get("ports"), f"{path}.ports").items():
            ep_ports[str(pname)] = r.integer(pnum, f"{path}.ports.{pname}", required=True) or 0
            if pname not in names:
                r.warn(f"{path}.ports.{pname}", f"no port named {pname!r} in spec.ports; ignored")
        r.string_map(ep.get("labels"), f"{path}.labels")
        if resolution == "STATIC" and not _is_ip(address):
            r.fail(
                f"{path}.address", f"{address!r}: resolution STATIC needs IP addresses (use DNS for names)"
            )
        endpoints.append(ServiceEntryEndpoint(address, ep_ports))
    # Istio's ServiceEntry validation rules for resolution (pkg/config/validation ValidateServiceEntry).
    if resolution == "NONE" and endpoints:
        r.fail("spec.endpoints", "endpoints are not allowed with resolution NONE (use STATIC or DNS)")
    if resolution == "STATIC" and not endpoints:
        r.fail(
            "spec.endpoints",
            "resolution STATIC needs endpoints (localmesh does not implement workloadSelector)",
        )
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for i, host in enumerate(hosts):
            if host.startswith("*"):
                r.fail(
                    f"spec.hosts[{i}]",
                    f"wildcard host {host!r} needs resolution NONE, or endpoints, with {resolution}",
                )
    if len(endpoints) > 1:
        r.warn("spec.endpoints", "localmesh sends every request to the first endpoint (no load balancing)")
    return ServiceEntry(
        name=r.res.name,
        namespace=r.res.namespace,
        source=r.res.source,
        hosts=tuple(h.lower().rstrip(".") for h in hosts),
        ports=tuple(ports),
        resolution=resolution,
        location=location,
        export_to=export_to,
        endpoints=tuple(endpoints),
    )


def _parse_export_to(r: Reader, value: Any) -> tuple[str, ...]:
    export_to = r.strings(value, "spec.exportTo")
    for i, item in enumerate(export_to):
        if item not in (".", "*", "~") and not _DNS_LABEL.match(item):
            r.fail(f"spec.exportTo[{i}]", f"{item!r} is not '.', '*', '~' or a namespace name")
    if "~" in export_to and len(export_to) > 1:
        r.fail("spec.exportTo", "'~' (visible nowhere) cannot be combined with other entries")
    return export_to


def _parse_gateway(r: Reader) -> Gateway:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(spec, "spec", ("selector", "servers"), {})
    selector = r.string_map(spec.get("selector"), "spec.selector")
    servers: list[GatewayServer] = []
    for i, item in enumerate(r.seq(spec.get("servers"), "spec.servers", required=True)):
        path = f"spec.servers[{i}]"
        server = r.mapping(item, path, required=True)
        r.keys(
            server,
            path,
            ("port", "hosts", "name"),
            {
                "tls": "localmesh's gateway serves plain HTTP only",
                "bind": "ignored",
                "defaultEndpoint": "ignored",
            },
        )
        port = r.mapping(server.get("port"), f"{path}.port", required=True)
        r.keys(port, f"{path}.port", ("number", "name", "protocol", "targetPort"), {})
        number = r.integer(port.get("number"), f"{path}.port.number", required=True) or 0
        name = r.string(port.get("name"), f"{path}.port.name", required=True) or ""
        protocol = r.enum(port.get("protocol"), f"{path}.port.protocol", PORT_PROTOCOLS, ignore_case=True)
        if protocol is None:
            r.fail(f"{path}.port.protocol", f"required field is missing (one of {', '.join(PORT_PROTOCOLS)})")
        hosts = r.strings(server.get("hosts"), f"{path}.hosts", required=True)
        for j, host in enumerate(hosts):
            ns, _, dns = host.rpartition("/")
            if (ns and ns not in (".", "*") and not _DNS_LABEL.match(ns)) or not (
                dns == "*" or _HOST_NAME.match(dns.lower())
            ):
                r.fail(
                    f"{path}.hosts[{j}]",
                    f"{host!r} is not a host ('name', '*.domain', '*') or 'namespace/host'",
                )
        if protocol not in ("HTTP", "HTTP2"):
            r.warn(
                f"{path}.port.protocol",
                f"{protocol}: localmesh's gateway serves plain HTTP only; server ignored",
            )
        servers.append(GatewayServer(number, name, protocol, hosts))
    return Gateway(r.res.name, r.res.namespace, r.res.source, selector, tuple(servers))


_HTTP_ROUTE_UNSUPPORTED = dict.fromkeys(
    [
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirror",
        "mirrors",
        "mirrorPercentage",
        "mirrorPercent",
        "corsPolicy",
        "headers",
    ],
    "ignored",
)
_MATCH_UNSUPPORTED = dict.fromkeys(
    [
        "scheme",
        "method",
        "authority",
        "headers",
        "port",
        "sourceLabels",
        "gateways",
        "queryParams",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
    ],
    "localmesh ignores this condition, so the match is wider than on a cluster",
)


def _parse_virtual_service(r: Reader) -> VirtualService:
    _check_api_version(r, ISTIO_NETWORKING_VERSIONS)
    spec = _check_top_level(r)
    r.keys(
        spec,
        "spec",
        ("hosts", "gateways", "http", "exportTo"),
        {"tcp": "only http routes are implemented", "tls": "only http routes are implemented"},
    )
    hosts = r.strings(spec.get("hosts"), "spec.hosts", required=True)
    for i, host in enumerate(hosts):
        if not (host == "*" or _is_ip(host) or _HOST_NAME.match(host.lower())):
            r.fail(f"spec.hosts[{i}]", f"{host!r} is not a host ('name', '*.domain' or '*')")
    gateways = r.strings(spec.get("gateways"), "spec.gateways")
    if not gateways or "mesh" in gateways:
        r.warn(
            "spec.gateways",
            "localmesh applies VirtualServices at the ingress gateway only; the 'mesh' (sidecar) binding "
            + ("(the default when gateways is empty) " if not gateways else "")
            + "is ignored",
        )
    export_to = _parse_export_to(r, spec.get("exportTo"))
    routes: list[HTTPRoute] = []
    for i, item in enumerate(r.seq(spec.get("http"), "spec.http")):
        path = f"spec.http[{i}]"
        rule = r.mapping(item, path, required=True)
        r.keys(
            rule,
            path,
            ("name", "match", "route"),
            {
                **_HTTP_ROUTE_UNSUPPORTED,
                "redirect": "this rule is skipped",
                "directResponse": "this rule is skipped",
                "delegate": "this rule is skipped",
            },
        )
        matches: list[UriMatch] = []
        for j, m_item in enumerate(r.seq(rule.get("match"), f"{path}.match")):
            mpath = f"{path}.match[{j}]"
            m = r.mapping(m_item, mpath, required=True)
            r.keys(m, mpath, ("uri", "name"), {**_MATCH_UNSUPPORTED, "statPrefix": "ignored"})
            if "uri" not in m:
                matches.append(UriMatch("prefix", ""))  # no uri condition: every path
                continue
            uri = r.mapping(m["uri"], f"{mpath}.uri", required=True)
            kinds = [k for k in uri if k in ("exact", "prefix", "regex")]
            r.keys(uri, f"{mpath}.uri", ("exact", "prefix", "regex"), {})
            if len(kinds) != 1:
                r.fail(f"{mpath}.uri", "expected exactly one of exact, prefix, regex")
            value = r.string(uri[kinds[0]], f"{mpath}.uri.{kinds[0]}", required=kinds[0] != "prefix") or ""
            if kinds[0] == "regex":
                r.warn(
                    f"{mpath}.uri.regex",
                    "localmesh does not implement regex matches; this match never matches",
                )
            matches.append(UriMatch(kinds[0], value))
        dests = r.seq(rule.get("route"), f"{path}.route")
        if not dests:
            if not any(k in rule for k in ("redirect", "directResponse", "delegate")):
                r.fail(f"{path}.route", "required: at least one destination")
            continue
        chosen: tuple[int, str, int | None] | None = None
        for j, d_item in enumerate(dests):
            dpath = f"{path}.route[{j}]"
            d = r.mapping(d_item, dpath, required=True)
            r.keys(d, dpath, ("destination", "weight"), {"headers": "ignored"})
            dest = r.mapping(d.get("destination"), f"{dpath}.destination", required=True)
            r.keys(
                dest,
                f"{dpath}.destination",
                ("host", "port"),
                {"subset": "localmesh has no DestinationRules"},
            )
            host = r.string(dest.get("host"), f"{dpath}.destination.host", required=True) or ""
            port_spec = r.mapping(dest.get("port"), f"{dpath}.destination.port")
            r.keys(port_spec, f"{dpath}.destination.port", ("number",), {})
            number = r.integer(port_spec.get("number"), f"{dpath}.destination.port.number")
            weight = r.integer(d.get("weight"), f"{dpath}.weight", lo=0, hi=100)
            weight = 100 if weight is None and len(dests) == 1 else (weight or 0)
            if chosen is None or weight > chosen[0]:
                chosen = (weight, host.lower(), number)
        if len(dests) > 1:
            r.warn(
                f"{path}.route", "localmesh sends every request to the destination with the highest weight"
            )
        assert chosen is not None
        routes.append(HTTPRoute(tuple(matches), chosen[1], chosen[2]))
    return VirtualService(
        r.res.name,
        r.res.namespace,
        r.res.source,
        tuple(h.lower() for h in hosts),
        gateways,
        export_to,
        tuple(routes),
    )


def _parse_deployment(r: Reader) -> Deployment:
    _check_api_version(r, ("apps/v1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    template = r.mapping(spec.get("template"), "spec.template")
    meta = r.mapping(template.get("metadata"), "spec.template.metadata")
    labels = r.string_map(meta.get("labels"), "spec.template.metadata.labels")
    pod = r.mapping(template.get("spec"), "spec.template.spec")
    account = (
        r.string(pod.get("serviceAccountName"), "spec.template.spec.serviceAccountName")
        or r.string(pod.get("serviceAccount"), "spec.template.spec.serviceAccount")
        or "default"  # Kubernetes runs a pod without one as the namespace's "default" account
    )
    return Deployment(r.res.name, r.res.namespace, r.res.source, labels, account)


def _parse_service(r: Reader) -> KubeService:
    _check_api_version(r, ("v1",))
    spec = r.mapping(r.res.body.get("spec"), "spec")
    ports: list[ServicePort] = []
    for i, item in enumerate(r.seq(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        p = r.mapping(item, path, required=True)
        number = r.integer(p.get("port"), f"{path}.port", required=True) or 0
        target: Any = p.get("targetPort", number)
        if isinstance(target, str):
            r.string(target, f"{path}.targetPort", required=True)
        else:
            target = r.integer(target, f"{path}.targetPort", required=True)
        name = r.string(p.get("name"), f"{path}.name") or ""
        app_protocol = r.string(p.get("appProtocol"), f"{path}.appProtocol") or ""
        r.enum(p.get("protocol"), f"{path}.protocol", ("TCP", "UDP", "SCTP"))
        ports.append(ServicePort(number, target, name, app_protocol))
    selector = r.string_map(spec.get("selector"), "spec.selector")
    return KubeService(r.res.name, r.res.namespace, r.res.source, tuple(ports), selector)


# --------------------------------------------------------------------------------------------------
# The mesh state


def _parse_namespace(r: Reader) -> str:
    _check_api_version(r, ("v1",))
    return r.res.name


def _parse_service_account(r: Reader) -> tuple[str, str]:
    _check_api_version(r, ("v1",))
    return (r.res.namespace, r.res.name)


# Dispatch by API group and kind: a Gateway of gateway.networking.k8s.io or a Knative Service is another
# kind altogether ("not used"), while networking.istio.io/v2 is a wrong version of one localmesh reads.
PARSERS: dict[tuple[str, str], Any] = {
    ("install.istio.io", "IstioOperator"): _parse_istio_operator,
    ("networking.istio.io", "Sidecar"): _parse_sidecar,
    ("networking.istio.io", "ServiceEntry"): _parse_service_entry,
    ("networking.istio.io", "Gateway"): _parse_gateway,
    ("networking.istio.io", "VirtualService"): _parse_virtual_service,
    ("apps", "Deployment"): _parse_deployment,
    ("", "Service"): _parse_service,
    ("", "Namespace"): _parse_namespace,
    ("", "ServiceAccount"): _parse_service_account,
}

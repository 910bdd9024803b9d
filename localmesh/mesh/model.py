"""The mesh state: `parse(resources)` -> (`MeshState`, warnings), what istiod would know after these
resources were applied, and the questions the translation asks it (outbound policy, workloads).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localmesh.mesh.load import ConfigError, Resource
from localmesh.mesh.names import (
    ALLOW_ANY,
    CLUSTER_DOMAIN,
    GATEWAY_LABELS,
    ROOT_NAMESPACE,
    Workload,
    resolve_host,
)
from localmesh.mesh.schema import (
    PARSERS,
    Deployment,
    Gateway,
    KubeService,
    MeshConfig,
    Reader,
    ServiceEntry,
    SidecarConfig,
    VirtualService,
    check_metadata,
)


@dataclass(frozen=True)
class OutboundPolicy:
    mode: str  # ALLOW_ANY or REGISTRY_ONLY
    source: str  # what set it, for status output and config dumps


@dataclass(frozen=True)
class MeshState:
    """The validated mesh config: what istiod would know after these resources were applied."""

    mesh_mode: str = ALLOW_ANY
    mesh_mode_source: str = "Istio's default (meshConfig.outboundTrafficPolicy not set)"
    trust_domain: str = CLUSTER_DOMAIN
    sidecars: tuple[SidecarConfig, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    services: tuple[KubeService, ...] = ()
    namespaces: tuple[str, ...] = ()
    service_accounts: tuple[tuple[str, str], ...] = ()  # (namespace, name)

    def outbound_policy(self, namespace: str, labels: Mapping[str, str] | None = None) -> OutboundPolicy:
        """The outboundTrafficPolicy a sidecar in `namespace` with these pod labels gets.

        Istio's precedence (pilot/pkg/model/push_context.go getSidecarScope): a Sidecar in the workload's
        namespace whose workloadSelector matches, else the namespace's Sidecar without selector, else
        the Sidecar without selector in the root namespace (istio-system), else none. A chosen Sidecar
        without outboundTrafficPolicy inherits meshConfig's (pilot/pkg/model/sidecar.go
        ConvertToSidecarScope); with no Sidecar at all meshConfig applies; its default is ALLOW_ANY.
        """
        labels = labels or {}
        local = [s for s in self.sidecars if s.namespace == namespace]
        chosen = next(
            (
                s
                for s in local
                if s.selector is not None and all(labels.get(k) == v for k, v in s.selector.items())
            ),
            None,
        )
        if chosen is None:
            chosen = next((s for s in local if s.selector is None), None)
        if chosen is None:
            chosen = next(
                (s for s in self.sidecars if s.namespace == ROOT_NAMESPACE and s.selector is None), None
            )
        if chosen is None or chosen.outbound_mode is None:
            via = f" ({chosen.ref} sets no outboundTrafficPolicy)" if chosen else ""
            return OutboundPolicy(self.mesh_mode, self.mesh_mode_source + via)
        return OutboundPolicy(chosen.outbound_mode, f"{chosen.ref} ({chosen.source})")

    @property
    def outbound_mode(self) -> str:
        """The effective outbound policy mode for the mesh's (first) workload's pods; the mesh
        config's when no Deployment is applied."""
        if not self.deployments:
            return self.mesh_mode
        deployment = self.deployments[0]
        return self.outbound_policy(deployment.namespace, deployment.labels).mode

    def deployment(self, name: str, namespace: str | None = None) -> Deployment | None:
        candidates = [d for d in self.deployments if d.name == name]
        return next((d for d in candidates if namespace in (None, d.namespace)), None)

    def workload(self, name: str, namespace: str | None = None) -> Workload | None:
        deployment = self.deployment(name, namespace)
        return deployment.workload(self.trust_domain) if deployment else None

    def service(self, hostname: str) -> KubeService | None:
        return next((s for s in self.services if s.hostname == hostname), None)

    def gateway(self, key: str) -> Gateway | None:
        return next((g for g in self.gateways if f"{g.namespace}/{g.name}" == key), None)


def parse(resources: Iterable[Resource]) -> tuple[MeshState, list[str]]:
    """Validates resources into a MeshState. Raises ConfigError on invalid input; returns warnings
    for fields and kinds localmesh does not use, and for references that lead nowhere."""
    warnings: list[str] = []
    seen: dict[tuple[str, str, str], Resource] = {}
    found: dict[str, list[Any]] = {kind: [] for _, kind in PARSERS}
    for res in resources:
        if res.key in seen:
            raise ConfigError(f"{res.source}: {res.ref}: defined twice (also in {seen[res.key].source})")
        seen[res.key] = res
        r = Reader(res, warnings)
        parser = PARSERS.get((res.group, res.kind))
        if parser is None:
            warnings.append(f"{res.source}: {res.ref}: not used by localmesh ({res.api_version} {res.kind})")
            continue
        if res.group == "networking.istio.io":
            check_metadata(r)
        found[res.kind].append(parser(r))
    operators: list[MeshConfig] = found["IstioOperator"]

    mesh_mode, mesh_source, trust_domain = ALLOW_ANY, MeshState.mesh_mode_source, CLUSTER_DOMAIN
    with_mode = [op for op in operators if op.outbound_mode]
    if len(with_mode) > 1:
        warnings.append(
            f"{with_mode[-1].source}: {with_mode[-1].ref}: spec.meshConfig: several IstioOperators set "
            f"outboundTrafficPolicy ({', '.join(op.ref for op in with_mode)}); the last one applies"
        )
    if with_mode:
        op = with_mode[-1]
        mesh_mode = op.outbound_mode or ALLOW_ANY
        mesh_source = f"meshConfig of {op.ref} ({op.source})"
    for op in operators:
        trust_domain = op.trust_domain or trust_domain

    state = MeshState(
        mesh_mode=mesh_mode,
        mesh_mode_source=mesh_source,
        trust_domain=trust_domain,
        sidecars=tuple(found["Sidecar"]),
        service_entries=tuple(found["ServiceEntry"]),
        gateways=tuple(found["Gateway"]),
        virtual_services=tuple(found["VirtualService"]),
        deployments=tuple(found["Deployment"]),
        services=tuple(found["Service"]),
        namespaces=tuple(found["Namespace"]),
        service_accounts=tuple(found["ServiceAccount"]),
    )
    warnings.extend(_cross_check(state))
    return state, warnings


def _cross_check(state: MeshState) -> list[str]:
    """References between resources that lead nowhere: kubectl accepts them, the mesh then misbehaves."""
    out: list[str] = []
    by_namespace: dict[str, list[SidecarConfig]] = {}
    for s in state.sidecars:
        if s.selector is None:
            by_namespace.setdefault(s.namespace, []).append(s)
    for ns, items in by_namespace.items():
        if len(items) > 1:
            out.append(
                f"{items[1].source}: {items[1].ref}: namespace {ns} has more than one Sidecar without "
                f"workloadSelector ({', '.join(s.name for s in items)}); Istio's behaviour is undefined, "
                f"localmesh uses {items[0].ref}"
            )
    for gw in state.gateways:
        if not gw.selects(GATEWAY_LABELS):
            labels = ", ".join(f"{k}={v}" for k, v in GATEWAY_LABELS.items())
            out.append(
                f"{gw.source}: {gw.ref}: spec.selector: selects no gateway localmesh runs (its ingress "
                f"gateway is labelled {labels}); ignored"
            )
    for vs in state.virtual_services:
        for i, key in enumerate(vs.gateway_keys()):
            if state.gateway(key) is None:
                out.append(f"{vs.source}: {vs.ref}: spec.gateways[{i}]: no Gateway {key}; binding ignored")
        for i, route in enumerate(vs.http):
            host = resolve_host(route.destination_host, vs.namespace)
            svc = state.service(host)
            entry = next((e for e in state.service_entries if host in e.hosts), None)
            path = f"spec.http[{i}].route"
            if svc is None and entry is None:
                out.append(
                    f"{vs.source}: {vs.ref}: {path}: destination {host} is no Service or ServiceEntry host"
                )
            elif route.destination_port is None:
                count = len(svc.ports) if svc else len(entry.ports) if entry else 0
                if count != 1:
                    out.append(
                        f"{vs.source}: {vs.ref}: {path}: destination {host} has {count} ports; set one"
                    )
    known_accounts = set(state.service_accounts)
    for d in state.deployments:
        if d.service_account != "default" and (d.namespace, d.service_account) not in known_accounts:
            out.append(
                f"{d.source}: Deployment {d.namespace}/{d.name}: spec.template.spec.serviceAccountName: "
                f"no ServiceAccount {d.namespace}/{d.service_account} in this config"
            )
    return out


# --------------------------------------------------------------------------------------------------
# The local stand-in for the cluster's API server

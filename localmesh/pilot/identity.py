"""How a proxy names itself to Envoy and to its peers: the node ID pilot-agent gives Envoy and the
metadata-exchange header values (x-envoy-peer-metadata-id, x-envoy-peer-metadata).

Pure: the values are computed from a Workload. The bytes match istio/proxy
`extensions/common/metadata_object.cc` (convertWorkloadMetadataToStruct) serialized deterministically
as a `google.protobuf.Struct` and base64-encoded (`source/extensions/filters/http/peer_metadata/filter.cc`
MXPropagationMethod). The Python proxies compute the same values in localmesh/proxy/peer_metadata.py;
tests/localmesh/test_envoy_xds.py checks that both agree byte for byte.
"""

from __future__ import annotations

import base64

from localmesh.mesh.names import Workload

_OWNER_PREFIX = "kubernetes://apis/apps/v1/namespaces/"


def _known(value: str) -> bool:
    return bool(value) and value != "unknown"


def pod_name(workload: Workload) -> str:
    """The stand-in pod name of a local workload (one replica, no ReplicaSet hash to imitate)."""
    return f"{workload.name}-local"


def node_id(workload: Workload, kind: str, ip: str = "127.0.0.1") -> str:
    """pilot-agent's node ID: <type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local, type
    "sidecar" or "router" (istio/istio pkg/model/proxy.go, pilot-agent's ServiceNode)."""
    return f"{kind}~{ip}~{pod_name(workload)}.{workload.namespace}~{workload.namespace}.svc.cluster.local"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _struct(fields: dict[str, str | dict[str, str]]) -> bytes:
    """google.protobuf.Struct, deterministic (map keys sorted): string and nested struct values."""
    out = bytearray()
    for key in sorted(fields):
        value = fields[key]
        encoded = _field(5, _struct(dict(value))) if isinstance(value, dict) else _field(3, value.encode())
        out += _field(1, _field(1, key.encode()) + _field(2, encoded))
    return bytes(out)


def workload_metadata(workload: Workload) -> dict[str, str | dict[str, str]]:
    """The node metadata Istio exchanges (NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, LABELS, OWNER);
    unknown values are left out, as convertWorkloadMetadataToStruct does."""
    labels = {
        key: value
        for key, value in (
            ("service.istio.io/canonical-name", workload.canonical_service),
            ("service.istio.io/canonical-revision", workload.canonical_revision),
            ("app", workload.app),
            ("version", workload.version),
        )
        if _known(value)
    }
    fields: dict[str, str | dict[str, str]] = {"NAME": pod_name(workload), "LABELS": labels}
    if _known(workload.namespace):
        fields["NAMESPACE"] = workload.namespace
    if _known(workload.name):
        fields["WORKLOAD_NAME"] = workload.name
    if _known(workload.cluster):
        fields["CLUSTER_ID"] = workload.cluster
    if _known(workload.namespace) and _known(workload.name):
        fields["OWNER"] = f"{_OWNER_PREFIX}{workload.namespace}/deployments/{workload.name}"
    return fields


def peer_headers(workload: Workload, kind: str) -> dict[str, str]:
    """Istio's metadata-exchange pair for this proxy: x-envoy-peer-metadata-id and x-envoy-peer-metadata."""
    metadata = base64.b64encode(_struct(workload_metadata(workload))).decode()
    return {"x-envoy-peer-metadata-id": node_id(workload, kind), "x-envoy-peer-metadata": metadata}

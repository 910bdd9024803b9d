"""How a proxy names itself to Envoy and to its peers: the node ID pilot-agent gives Envoy and the
metadata-exchange header values (x-envoy-peer-metadata-id, x-envoy-peer-metadata).

Pure: the values are computed from a Workload, once for both data planes (the Envoy bootstrap and
routes, and the Python proxies, which decode a peer's values in localmesh/proxy/peer_metadata.py).
The bytes match istio/proxy `extensions/common/metadata_object.cc` (convertWorkloadMetadataToStruct)
serialized deterministically as a `google.protobuf.Struct` and base64-encoded
(`source/extensions/filters/http/peer_metadata/filter.cc` MXPropagationMethod).

The Struct is encoded by hand (no protobuf dependency): only string values and one nested struct
(LABELS) are needed, and deterministic serialization sorts map keys, so the bytes match Envoy's.
"""

from __future__ import annotations

import base64

from localmesh.mesh.names import Workload

# Field and label names from istio/proxy extensions/common/metadata_object.h.
NAME = "NAME"
NAMESPACE = "NAMESPACE"
WORKLOAD_NAME = "WORKLOAD_NAME"
CLUSTER_ID = "CLUSTER_ID"
LABELS = "LABELS"
OWNER = "OWNER"
LABEL_CANONICAL_NAME = "service.istio.io/canonical-name"
LABEL_CANONICAL_REVISION = "service.istio.io/canonical-revision"
LABEL_APP = "app"
LABEL_VERSION = "version"
_OWNER_PREFIX = "kubernetes://apis/apps/v1/namespaces/"

# A struct value is either a str or a nested struct (dict); that is all Istio puts in this header.
StructValue = str | dict[str, "StructValue"]


def _known(value: str) -> bool:
    return bool(value) and value != "unknown"


def pod_name(workload: Workload) -> str:
    """The stand-in pod name of a local workload (one replica, no ReplicaSet hash to imitate)."""
    return f"{workload.name}-local"


def node_id(workload: Workload, kind: str, ip: str = "127.0.0.1") -> str:
    """pilot-agent's node ID: <type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local, type
    "sidecar" or "router" (istio/istio pkg/model/proxy.go, pilot-agent's ServiceNode)."""
    return f"{kind}~{ip}~{pod_name(workload)}.{workload.namespace}~{workload.namespace}.svc.cluster.local"


# --- protobuf wire format for google.protobuf.Struct -------------------------------------------
# Struct { map<string, Value> fields = 1; }   map entry { string key = 1; Value value = 2; }
# Value { oneof kind { null_value = 1; number_value = 2; string_value = 3; bool_value = 4;
#                      struct_value = 5; list_value = 6; } }


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_struct(fields: dict[str, StructValue]) -> bytes:
    """Serialize a Struct the way protobuf's deterministic mode does (map keys sorted): string and
    nested struct values."""
    out = bytearray()
    for key in sorted(fields):
        value = fields[key]
        encoded = _field(5, encode_struct(value)) if isinstance(value, dict) else _field(3, value.encode())
        out += _field(1, _field(1, key.encode()) + _field(2, encoded))
    return bytes(out)


def workload_metadata(workload: Workload) -> dict[str, StructValue]:
    """The node metadata Istio exchanges (NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, LABELS, OWNER);
    unknown values are left out, as convertWorkloadMetadataToStruct does."""
    labels: dict[str, StructValue] = {
        key: value
        for key, value in (
            (LABEL_CANONICAL_NAME, workload.canonical_service),
            (LABEL_CANONICAL_REVISION, workload.canonical_revision),
            (LABEL_APP, workload.app),
            (LABEL_VERSION, workload.version),
        )
        if _known(value)
    }
    fields: dict[str, StructValue] = {NAME: pod_name(workload), LABELS: labels}
    if _known(workload.namespace):
        fields[NAMESPACE] = workload.namespace
    if _known(workload.name):
        fields[WORKLOAD_NAME] = workload.name
    if _known(workload.cluster):
        fields[CLUSTER_ID] = workload.cluster
    if _known(workload.namespace) and _known(workload.name):
        fields[OWNER] = f"{_OWNER_PREFIX}{workload.namespace}/deployments/{workload.name}"
    return fields


def peer_headers(workload: Workload, kind: str) -> dict[str, str]:
    """Istio's metadata-exchange pair for this proxy: x-envoy-peer-metadata-id and x-envoy-peer-metadata."""
    metadata = base64.b64encode(encode_struct(workload_metadata(workload))).decode()
    return {"x-envoy-peer-metadata-id": node_id(workload, kind), "x-envoy-peer-metadata": metadata}

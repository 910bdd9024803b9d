"""Istio's HTTP metadata exchange: who is the proxy on the other side of this request?

A calling proxy adds two request headers and the answering proxy adds the same two to its response:
- `x-envoy-peer-metadata-id`: the node ID, `router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` for a
  gateway, `sidecar~...` for a sidecar;
- `x-envoy-peer-metadata`: base64 of a serialized `google.protobuf.Struct` holding the node's
  workload metadata (NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, LABELS{...}, OWNER).
The receiving proxy reads them into the peer labels of its metrics and removes them, so the
application never sees them. Source: istio/proxy `source/extensions/filters/http/peer_metadata/filter.cc`
(MXMethod::lookup decodes base64 then `Struct::ParseFromString`; MXPropagationMethod::computeValue
serializes deterministically and base64-encodes) and `extensions/common/metadata_object.{h,cc}`
(`convertWorkloadMetadataToStruct` / `convertStructToWorkloadMetadata`: the field and label names).

This proxy's own values come from localmesh/pilot/identity.py (shared with the Envoy data plane);
this module decodes a peer's: the Struct is parsed by hand (no protobuf dependency), string and
nested struct values only, as Istio sends.

mTLS stand-in: in Istio the peer's *principal* (SPIFFE ID) comes from the mTLS certificate, not
from the metadata. The local mesh has no TLS, so a mesh proxy also sends its principal in
`x-localmesh-peer-principal` (request and response), which the receiving proxy strips like the
other two. A request carrying it is reported as `connection_security_policy="mutual_tls"`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

from localmesh.mesh.names import UNKNOWN, Workload
from localmesh.pilot import identity
from localmesh.pilot.identity import StructValue

HEADER_ID = b"x-envoy-peer-metadata-id"
HEADER_METADATA = b"x-envoy-peer-metadata"
HEADER_PRINCIPAL = b"x-localmesh-peer-principal"
HEADERS = frozenset((HEADER_ID, HEADER_METADATA, HEADER_PRINCIPAL))


class DecodeError(ValueError):
    """The bytes are not a protobuf Struct."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _length_delimited(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (field number, bytes) for each length-delimited field (wire type 2), the only kind a
    Struct's strings and nested structs use; fields of the other wire types are skipped."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise DecodeError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")


def decode_struct(data: bytes) -> dict[str, StructValue]:
    """Parse a Struct; string and struct values are kept, other kinds (numbers, lists...) are skipped."""
    out: dict[str, StructValue] = {}
    for number, entry in _length_delimited(data):
        if number != 1:
            continue
        key = ""
        value: StructValue | None = None
        for enumber, evalue in _length_delimited(entry):
            if enumber == 1:
                key = evalue.decode("utf-8", "replace")
            elif enumber == 2:
                for vnumber, vvalue in _length_delimited(evalue):
                    if vnumber == 3:
                        value = vvalue.decode("utf-8", "replace")
                    elif vnumber == 5:
                        value = decode_struct(vvalue)
        if value is not None:
            out[key] = value
    return out


# --- workload identity <-> header pair ---------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """This proxy's side of the exchange: the header values it sends, computed once."""

    workload: Workload
    id_value: bytes
    metadata_value: bytes
    principal_value: bytes

    @classmethod
    def of(cls, workload: Workload, kind: str) -> Identity:
        values = identity.peer_headers(workload, kind)
        return cls(
            workload,
            values[HEADER_ID.decode()].encode(),
            values[HEADER_METADATA.decode()].encode(),
            workload.principal.encode(),
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header pair (plus the mTLS stand-in when this proxy has a principal)."""
        out = [(HEADER_ID, self.id_value), (HEADER_METADATA, self.metadata_value)]
        if self.workload.principal not in ("", "unknown"):
            out.append((HEADER_PRINCIPAL, self.principal_value))
        return out


def workload_from_struct(fields: dict[str, StructValue], principal: str = "unknown") -> Workload:
    """convertStructToWorkloadMetadata, then istio_stats' defaults for what is missing."""

    def text(mapping: dict[str, StructValue], key: str, default: str = "unknown") -> str:
        value = mapping.get(key)
        return value if isinstance(value, str) and value else default

    labels = fields.get(identity.LABELS)
    labels = labels if isinstance(labels, dict) else {}
    return Workload(
        name=text(fields, identity.WORKLOAD_NAME),
        namespace=text(fields, identity.NAMESPACE),
        app=text(labels, identity.LABEL_APP),
        version=text(labels, identity.LABEL_VERSION),
        canonical_service=text(labels, identity.LABEL_CANONICAL_NAME),
        canonical_revision=text(labels, identity.LABEL_CANONICAL_REVISION, "latest"),
        principal=principal or "unknown",
        cluster=text(fields, identity.CLUSTER_ID),
    )


class PeerCache:
    """Decoded peers by header values, as Istio's MXMethod caches by peer ID: decode once per peer.

    Bounded: when full it is cleared (peers are few; a flood of distinct values must not grow memory).
    """

    def __init__(self, limit: int = 1024) -> None:
        self._cache: dict[tuple[bytes, bytes], Workload] = {}
        self._limit = limit

    def lookup(self, metadata: bytes | None, principal: bytes | None) -> Workload:
        """The peer's Workload; UNKNOWN when the metadata header is absent or undecodable."""
        if not metadata:
            return UNKNOWN
        key = (metadata, principal or b"")
        peer = self._cache.get(key)
        if peer is None:
            try:
                fields = decode_struct(base64.b64decode(metadata + b"=" * (-len(metadata) % 4)))
            except (binascii.Error, DecodeError, ValueError):
                return UNKNOWN
            peer = workload_from_struct(fields, (principal or b"").decode("utf-8", "replace"))
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = peer
        return peer

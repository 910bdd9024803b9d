"""Istio's HTTP metadata exchange headers: the protobuf Struct codec and the workload mapping."""

from __future__ import annotations

import base64
from dataclasses import replace

from localmesh.mesh.names import INGRESS_GATEWAY, UNKNOWN, Workload
from localmesh.pilot.identity import encode_struct, node_id, workload_metadata
from localmesh.proxy.peer_metadata import (
    HEADER_ID,
    HEADER_METADATA,
    HEADER_PRINCIPAL,
    Identity,
    PeerCache,
    decode_struct,
)

# An x-envoy-peer-metadata value sent by a real istio-proxy (Istio 1.2x sidecar of a Deployment
# "zta-demo-agent"), as published in a public test fixture.
REAL_HEADER = (
    "ChoKCkNMVVNURVJfSUQSDBoKS3ViZXJuZXRlcwqMAQoGTEFCRUxTEoEBKn8KFwoDYXBwEhAaDnp0YS1kZW1vLWFnZW50CjMKH3NlcnZp"
    "Y2UuaXN0aW8uaW8vY2Fub25pY2FsLW5hbWUSEBoOenRhLWRlbW8tYWdlbnQKLwojc2VydmljZS5pc3Rpby5pby9jYW5vbmljYWwtcmV2"
    "aXNpb24SCBoGbGF0ZXN0CikKBE5BTUUSIRofenRhLWRlbW8tYWdlbnQtNTVjOWM2ZDk1Ny1zNWZncwoaCglOQU1FU1BBQ0USDRoLenRh"
    "LXNpZGVjYXIKVgoFT1dORVISTRpLa3ViZXJuZXRlczovL2FwaXMvYXBwcy92MS9uYW1lc3BhY2VzL3p0YS1zaWRlY2FyL2RlcGxveW1l"
    "bnRzL3p0YS1kZW1vLWFnZW50CiEKDVdPUktMT0FEX05BTUUSEBoOenRhLWRlbW8tYWdlbnQ="
)

IDGEN = Workload(
    name="idgen",
    namespace="recipes",
    app="idgen",
    version="v1",
    canonical_service="idgen",
    canonical_revision="v1",
    principal="spiffe://cluster.local/ns/recipes/sa/idgen",
    cluster="Kubernetes",
)


def test_decodes_a_real_istio_proxy_header():
    fields = decode_struct(base64.b64decode(REAL_HEADER))
    assert fields == {
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {
            "app": "zta-demo-agent",
            "service.istio.io/canonical-name": "zta-demo-agent",
            "service.istio.io/canonical-revision": "latest",
        },
        "NAME": "zta-demo-agent-55c9c6d957-s5fgs",
        "NAMESPACE": "zta-sidecar",
        "OWNER": "kubernetes://apis/apps/v1/namespaces/zta-sidecar/deployments/zta-demo-agent",
        "WORKLOAD_NAME": "zta-demo-agent",
    }


def test_encoding_is_byte_identical_to_istio_proxys_deterministic_serialization():
    fields = decode_struct(base64.b64decode(REAL_HEADER))
    assert base64.b64encode(encode_struct(fields)).decode() == REAL_HEADER


def test_real_header_becomes_the_peer_labels_istio_stats_reports():
    peer = PeerCache().lookup(REAL_HEADER.encode(), None)
    assert peer == Workload(
        name="zta-demo-agent",
        namespace="zta-sidecar",
        app="zta-demo-agent",
        version="unknown",  # no version label: istio_stats reports "unknown"
        canonical_service="zta-demo-agent",
        canonical_revision="latest",
        principal="unknown",  # the principal comes from mTLS, not from the metadata
        cluster="Kubernetes",
    )


def test_gateway_identity_round_trips_and_names_the_node_like_istio():
    identity = Identity.of(INGRESS_GATEWAY, "router")
    assert identity.id_value == (
        b"router~127.0.0.1~istio-ingressgateway-local.istio-system~istio-system.svc.cluster.local"
    )
    fields = decode_struct(base64.b64decode(identity.metadata_value))
    assert fields["WORKLOAD_NAME"] == "istio-ingressgateway"
    assert fields["NAMESPACE"] == "istio-system"
    assert fields["CLUSTER_ID"] == "Kubernetes"
    assert "version" not in fields["LABELS"]  # the gateway has no version label
    peer = PeerCache().lookup(identity.metadata_value, identity.principal_value)
    # As a peer, the missing label is "unknown" (istio_stats); in its own series it stays "".
    assert (INGRESS_GATEWAY.version, peer.version) == ("", "unknown")
    assert peer == replace(INGRESS_GATEWAY, version="unknown")


def test_sidecar_identity_carries_app_version_and_canonical_labels():
    assert node_id(IDGEN, "sidecar") == "sidecar~127.0.0.1~idgen-local.recipes~recipes.svc.cluster.local"
    assert workload_metadata(IDGEN)["LABELS"] == {
        "app": "idgen",
        "version": "v1",
        "service.istio.io/canonical-name": "idgen",
        "service.istio.io/canonical-revision": "v1",
    }
    names = [name for name, _ in Identity.of(IDGEN, "sidecar").headers()]
    assert names == [HEADER_ID, HEADER_METADATA, HEADER_PRINCIPAL]


def test_absent_or_garbage_metadata_is_an_unknown_peer():
    cache = PeerCache()
    assert cache.lookup(None, None) is UNKNOWN
    assert cache.lookup(b"", None) is UNKNOWN
    assert cache.lookup(b"!!!not base64!!!", None) is UNKNOWN
    assert cache.lookup(base64.b64encode(b"\x0a\xff\xff\xff"), None) is UNKNOWN  # truncated protobuf


def test_unpadded_base64_is_accepted_as_envoy_decodes_without_padding():
    unpadded = REAL_HEADER.rstrip("=").encode()
    assert PeerCache().lookup(unpadded, None).name == "zta-demo-agent"


def test_peer_cache_is_bounded():
    cache = PeerCache(limit=4)
    for i in range(10):
        value = base64.b64encode(encode_struct({"WORKLOAD_NAME": f"w{i}", "LABELS": {}}))
        assert cache.lookup(value, None).name == f"w{i}"
    assert len(cache._cache) <= 4

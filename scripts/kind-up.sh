#!/usr/bin/env bash
# Creates (or reuses) the lab's kind cluster, with the ingress gateway's node port published on the host.
# Nothing else: scripts/cluster-up.sh installs Istio on it (and runs this first when the lab uses kind).
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Creates (or reuses) the kind cluster "$CLUSTER_NAME" from node image $KIND_NODE_IMAGE, with node port
$GATEWAY_NODE_PORT (the ingress gateway's port 80, set in manifests/istio/gateway-nodeport.yaml) published on
127.0.0.1:\$GATEWAY_PORT. Needs kind $KIND_MIN_VERSION or newer (pinned: $KIND_VERSION).

Environment:
  CLUSTER_NAME                 kind cluster name                  (default: egress-lab)
  GATEWAY_PORT                 host port of the ingress gateway   (default: 8000)
  KIND_EXPERIMENTAL_PROVIDER   docker (default) or podman: kind's own switch for its node's engine
EOF
}

no_arguments "$@"

require_tools kind "$ENGINE"

run "$ENGINE" info >/dev/null 2>&1 ||
	die "$ENGINE is installed but its engine does not answer (start it; \`$ENGINE info\` must work)"

# semver vX.Y.Z as one comparable number (empty when the text holds no version).
version_number() {
	[[ $1 =~ v([0-9]+)\.([0-9]+)\.([0-9]+) ]] || return 0
	printf '%d%04d%04d' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
}

# kind's v0.32.0 release notes: node images from that release on (Kubernetes 1.36 among them) ship a newer
# containerd, and `kind load` of an older kind fails against them. An older kind would create the cluster
# and then fail at cluster-deploy with a ctr error, so refuse it here, before anything is created.
kind_version=$(run kind version 2>/dev/null || true)
found=$(version_number "$kind_version")
if [[ -n $found ]]; then
	((found >= $(version_number "$KIND_MIN_VERSION"))) ||
		die "kind is older than $KIND_MIN_VERSION (it says: $kind_version): its \`kind load\` cannot load images into the pinned node image (kind $KIND_MIN_VERSION release notes), so cluster-deploy would fail. Get kind $KIND_VERSION: $(install_hint kind)"
	[[ $kind_version =~ (^|[[:space:]])$KIND_VERSION([[:space:]]|$) ]] ||
		warn "kind is not $KIND_VERSION (it says: $kind_version); the node image is pinned for $KIND_VERSION"
elif [[ $DRY_RUN != 1 ]]; then
	die "cannot read kind's version (\`kind version\` says: ${kind_version:-nothing}); kind $KIND_MIN_VERSION or newer is needed: $(install_hint kind)"
fi

if [[ $DRY_RUN != 1 ]] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
	log "kind cluster $CLUSTER_NAME exists; reusing it"
	exit 0
fi
# A port already taken on the host would make kind fail half-way with an engine error.
if (: </dev/tcp/127.0.0.1/"$GATEWAY_PORT") 2>/dev/null; then
	die "port $GATEWAY_PORT is in use on this machine (the local stack?); set GATEWAY_PORT to a free one"
fi
log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE, $ENGINE), gateway on 127.0.0.1:$GATEWAY_PORT"
run kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 120s --config=- <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  extraPortMappings:
  - containerPort: $GATEWAY_NODE_PORT
    hostPort: $GATEWAY_PORT
    listenAddress: 127.0.0.1
    protocol: TCP
EOF

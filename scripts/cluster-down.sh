#!/usr/bin/env bash
# Deletes the lab's kind cluster, and with it everything that ran in it.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Deletes the kind cluster "$CLUSTER_NAME" (Istio, addons, the demo). Only kind clusters: for another
cluster use scripts/cleanup.sh, which removes just the lab's resources.

Environment:
  CLUSTER_NAME   kind cluster name   (default: egress-lab)
  KUBE_CONTEXT   must be unset (or kind-\$CLUSTER_NAME): another context is refused
EOF
}

no_arguments "$@"

# KUBE_CONTEXT naming another cluster means the lab is not on kind: deleting a kind cluster that happens to
# share CLUSTER_NAME would not remove it.
((USE_KIND)) ||
	die "KUBE_CONTEXT=$KUBE_CONTEXT is not the lab's kind cluster, and this deletes only that; to remove the lab from $KUBE_CONTEXT run: make cluster-cleanup"
require_tools kind

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
	log "deleting kind cluster $CLUSTER_NAME"
	kind delete cluster --name "$CLUSTER_NAME"
else
	log "no kind cluster named $CLUSTER_NAME; nothing to do"
fi

#!/usr/bin/env bash
# Removes the lab's workload from the cluster (option resources, then manifests/base with its namespace);
# the cluster, Istio and the addons stay. scripts/cluster-down.sh removes the whole kind cluster.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Deletes the egress option resources (label $OPTION_LABEL) and manifests/base (namespace
$DEMO_NAMESPACE and everything in it) from context "$KUBE_CONTEXT". Safe to run twice.

Environment:
  KUBE_CONTEXT   kubectl context to act on   (default: kind-\$CLUSTER_NAME)
EOF
}

no_arguments "$@"

require_tools kubectl

log "deleting option resources ($OPTION_LABEL) in $DEMO_NAMESPACE"
kc -n "$DEMO_NAMESPACE" delete "$OPTION_KINDS" -l "$OPTION_LABEL" --ignore-not-found
log "deleting manifests/base (namespace $DEMO_NAMESPACE)"
kc delete -k "$ROOT/manifests/base" --ignore-not-found --wait=true
log "done; the cluster, Istio and the addons are still there (make cluster-down removes them)"

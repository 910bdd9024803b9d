#!/usr/bin/env bash
# Builds the idgen image, loads it into the kind cluster, and deploys manifests/base (namespace recipes,
# idgen, the gateway route). No egress option yet: the mesh-wide default applies until a demo step.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Builds $IDGEN_IMAGE from idgen/Dockerfile, loads it into kind cluster "$CLUSTER_NAME" and applies
manifests/base to context "$KUBE_CONTEXT", then waits for idgen (with its sidecar) to be ready.

Environment:
  CLUSTER_NAME   kind cluster name            (default: egress-lab)
  KUBE_CONTEXT   kubectl context to act on    (default: kind-\$CLUSTER_NAME)
  SKIP_BUILD=1   reuse an image already loaded (any cluster that pulls $IDGEN_IMAGE itself)
EOF
}

no_arguments "$@"

if [[ ${SKIP_BUILD:-} == 1 ]]; then
	require_tools kubectl
else
	require_tools docker kind kubectl
	[[ -f $ROOT/idgen/Dockerfile ]] || die "idgen/Dockerfile is missing"
	log "building $IDGEN_IMAGE"
	docker build -f "$ROOT/idgen/Dockerfile" -t "$IDGEN_IMAGE" "$ROOT"
	# kind nodes do not see the host's images: load it, and imagePullPolicy IfNotPresent uses it.
	log "loading $IDGEN_IMAGE into kind cluster $CLUSTER_NAME"
	kind load docker-image "$IDGEN_IMAGE" --name "$CLUSTER_NAME"
fi

log "deploying manifests/base to $KUBE_CONTEXT"
kc apply -k "$ROOT/manifests/base"
kc -n "$DEMO_NAMESPACE" rollout status deployment/idgen --timeout=180s

# Istio may inject its proxy as a native sidecar (an init container) or as a plain container.
containers=$(kc -n "$DEMO_NAMESPACE" get pods -l app=idgen \
	-o jsonpath='{.items[*].spec.initContainers[*].name} {.items[*].spec.containers[*].name}')
[[ " $containers " == *" istio-proxy "* ]] ||
	die "idgen runs without an istio-proxy sidecar (containers: $containers); is namespace $DEMO_NAMESPACE labelled istio-injection=enabled and Istio installed?"

log "idgen is running with its sidecar. Next: make demo-passthrough TARGET=cluster"

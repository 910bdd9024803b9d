#!/usr/bin/env bash
# Creates the lab's cluster: kind with the ingress gateway on a host port, Istio (demo profile) by
# istioctl, the Prometheus and Kiali addons, and the egress alert rules in that Prometheus.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Creates (or reuses) the kind cluster "$CLUSTER_NAME" and installs Istio $ISTIO_VERSION with its Prometheus
and Kiali addons. Versions are pinned in scripts/versions.env.

Environment:
  CLUSTER_NAME       kind cluster name                       (default: egress-lab)
  KUBE_CONTEXT       kubectl context to act on               (default: kind-\$CLUSTER_NAME)
  GATEWAY_PORT       host port of the ingress gateway        (default: 8000)
  GATEWAY_NODE_PORT  node port the host port maps to         (default: 30080)
  MESH_MODE          mesh-wide default egress policy: allow-any (Istio's default) or registry-only
                     (manifests/istio/mesh-<mode>.yaml; the demo steps override it per namespace)
  ISTIO_ADDONS       where the addon manifests come from     (default: Istio's $ISTIO_VERSION tag on GitHub;
                     a local istio-$ISTIO_VERSION/samples/addons works too)
EOF
}

no_arguments "$@"

MESH_MODE=${MESH_MODE:-allow-any}
MESH_FILE=$ROOT/manifests/istio/mesh-$MESH_MODE.yaml
ISTIO_ADDONS=${ISTIO_ADDONS:-https://raw.githubusercontent.com/istio/istio/$ISTIO_VERSION/samples/addons}
RULES_FILE=$ROOT/manifests/monitoring/egress-rules.yaml

require_tools kind kubectl istioctl docker curl jq
[[ -f $MESH_FILE ]] || die "MESH_MODE=$MESH_MODE: no such file $MESH_FILE (use allow-any or registry-only)"

docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (start Docker; \`docker info\` must work)"

# istioctl installs a control plane of its own version, so a different istioctl breaks the pin.
istioctl_version=$(istioctl version --remote=false 2>/dev/null || true)
[[ $istioctl_version == *"$ISTIO_VERSION"* ]] ||
	die "istioctl is not $ISTIO_VERSION (it says: ${istioctl_version:-nothing}). Get it: $(install_hint istioctl)"
kind_version=$(kind version 2>/dev/null || true)
[[ $kind_version == *"$KIND_VERSION"* ]] ||
	warn "kind is not $KIND_VERSION (it says: ${kind_version:-nothing}); the node image is pinned for $KIND_VERSION"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
	log "kind cluster $CLUSTER_NAME exists; reusing it"
else
	# A port already taken on the host would make kind fail half-way with a Docker error.
	if (: </dev/tcp/127.0.0.1/"$GATEWAY_PORT") 2>/dev/null; then
		die "port $GATEWAY_PORT is in use on this machine (the local stack?); set GATEWAY_PORT to a free one"
	fi
	log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE), gateway on 127.0.0.1:$GATEWAY_PORT"
	# The node port of the ingress gateway's port 80 is published on the host's GATEWAY_PORT.
	kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 120s --config=- <<EOF
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
fi

log "installing Istio $ISTIO_VERSION (demo profile, mesh default from ${MESH_FILE#"$ROOT"/})"
ictl install -y -f "$MESH_FILE"

# The demo profile's gateway Service is a LoadBalancer, which kind cannot provide; a NodePort on the port
# that kind publishes makes it reachable. Strategic merge keys Service ports by `port`, so only 80 changes.
log "exposing the ingress gateway's port 80 on node port $GATEWAY_NODE_PORT"
kc -n istio-system patch service istio-ingressgateway \
	-p "{\"spec\":{\"type\":\"NodePort\",\"ports\":[{\"port\":80,\"nodePort\":$GATEWAY_NODE_PORT}]}}"

log "installing the Prometheus and Kiali addons from $ISTIO_ADDONS"
# Istio's docs: if applying the addons fails (a CRD not yet established), apply them again.
retry "addons applied" kc apply -f "$ISTIO_ADDONS/prometheus.yaml" -f "$ISTIO_ADDONS/kiali.yaml"

# The addon's Prometheus loads /etc/config/rules (a key of its ConfigMap) and its config-reloader picks
# the change up without a restart.
log "loading the egress rules (${RULES_FILE#"$ROOT"/}) into the addon's Prometheus"
patch_file=$(mktemp)
trap 'rm -f "$patch_file"' EXIT
jq -n --rawfile rules "$RULES_FILE" '{data: {rules: $rules}}' >"$patch_file"
kc -n istio-system patch configmap prometheus --type merge --patch-file "$patch_file"

for deploy in istiod istio-ingressgateway prometheus kiali; do
	kc -n istio-system rollout status "deployment/$deploy" --timeout=300s
done

cat <<EOF

Cluster $CLUSTER_NAME is ready: Istio $ISTIO_VERSION, Prometheus, Kiali; gateway at $GATEWAY_URL.
Next: make cluster-deploy            (build idgen, load it into kind, deploy manifests/base)
      make demo-passthrough TARGET=cluster   (then demo-blackhole, demo-serviceentry)
      istioctl dashboard kiali --context $KUBE_CONTEXT
EOF

#!/usr/bin/env bash
# Installs Istio (demo profile) by istioctl on KUBE_CONTEXT, the Prometheus and Kiali addons, and the egress
# alert rules in that Prometheus. When the lab uses kind (KUBE_CONTEXT unset), scripts/kind-up.sh creates the
# cluster first; any other context is only installed on, never created.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Installs Istio $ISTIO_VERSION with its Prometheus and Kiali addons on context "$KUBE_CONTEXT". With KUBE_CONTEXT
unset, first creates (or reuses) the kind cluster "$CLUSTER_NAME" (scripts/kind-up.sh) and makes the ingress
gateway a NodePort that kind publishes; on any other context the gateway keeps the demo profile's
LoadBalancer. Versions are pinned in scripts/versions.env.

Environment:
  CLUSTER_NAME       kind cluster name                       (default: egress-lab)
  KUBE_CONTEXT       kubectl context to install on           (default: kind-\$CLUSTER_NAME, created by kind)
  GATEWAY_PORT       host port of the ingress gateway (kind) (default: 8000)
  MESH_MODE          mesh-wide default egress policy: allow-any (Istio's default) or registry-only
                     (manifests/istio/mesh-<mode>.yaml; the demo steps override it per namespace)
  ISTIO_ADDONS       where the addon manifests come from     (default: Istio's $ISTIO_VERSION tag on GitHub;
                     a local istio-$ISTIO_VERSION/samples/addons works too)
  DRY_RUN=1          print the commands, run none
EOF
}

no_arguments "$@"

MESH_MODE=${MESH_MODE:-allow-any}
MESH_FILE=$ROOT/manifests/istio/mesh-$MESH_MODE.yaml
ISTIO_ADDONS=${ISTIO_ADDONS:-https://raw.githubusercontent.com/istio/istio/$ISTIO_VERSION/samples/addons}
RULES_FILE=$ROOT/manifests/monitoring/egress-rules.yaml
GATEWAY_FILE=$ROOT/manifests/istio/gateway-nodeport.yaml

tools=(kubectl istioctl curl jq)
((USE_KIND)) && tools+=(kind "$ENGINE")
require_tools "${tools[@]}"
[[ -f $MESH_FILE ]] || die "MESH_MODE=$MESH_MODE: no such file $MESH_FILE (use allow-any or registry-only)"

# istioctl installs a control plane of its own version, so a different istioctl breaks the pin.
istioctl_version=$(run istioctl version --remote=false 2>/dev/null || true)
[[ $DRY_RUN == 1 || $istioctl_version == *"$ISTIO_VERSION"* ]] ||
	die "istioctl is not $ISTIO_VERSION (it says: ${istioctl_version:-nothing}). Get it: $(install_hint istioctl)"

install_files=(-f "$MESH_FILE")
if ((USE_KIND)); then
	"$ROOT/scripts/kind-up.sh"
	# kind has no load balancer: the gateway's Service is a NodePort from the start (set at install).
	install_files+=(-f "$GATEWAY_FILE")
else
	log "KUBE_CONTEXT=$KUBE_CONTEXT: installing on that cluster (no kind cluster is created)"
fi

log "installing Istio $ISTIO_VERSION (demo profile, mesh default from ${MESH_FILE#"$ROOT"/}) on $KUBE_CONTEXT"
ictl install -y "${install_files[@]}"

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

if ((USE_KIND)); then
	where="gateway at $GATEWAY_URL"
else
	where="gateway: the LoadBalancer address of kubectl --context $KUBE_CONTEXT -n istio-system get service istio-ingressgateway (set GATEWAY_URL to it)"
fi
cat <<EOF

$KUBE_CONTEXT is ready: Istio $ISTIO_VERSION, Prometheus, Kiali; $where.
Next: make cluster-deploy            (build idgen, load or push it, deploy manifests/base)
      make demo-passthrough TARGET=cluster   (then demo-blackhole, demo-serviceentry)
      istioctl dashboard kiali --context $KUBE_CONTEXT
EOF

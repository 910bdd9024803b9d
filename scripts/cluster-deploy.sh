#!/usr/bin/env bash
# Builds the idgen image, tags it by its content, loads it into kind (or pushes it to IMAGE's registry for
# any other cluster), and deploys manifests/base with that image (namespace recipes, idgen, the gateway
# route). No egress option yet: the mesh-wide default applies until a demo step.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Builds idgen/Dockerfile as $IDGEN_IMAGE, tags it <IMAGE>:${IDGEN_IMAGE##*:}-<first 12 hex digits of its image
ID>, so a changed idgen gets a new tag and Kubernetes rolls it out, then loads it into kind cluster
"$CLUSTER_NAME" (KUBE_CONTEXT unset) or pushes it (any other KUBE_CONTEXT), and applies manifests/base to
context "$KUBE_CONTEXT" with kustomize's images: set to that tag. Waits for idgen and its sidecar.

Environment:
  CLUSTER_NAME   kind cluster name            (default: egress-lab)
  KUBE_CONTEXT   kubectl context to act on    (default: kind-\$CLUSTER_NAME)
  IMAGE          the repository to tag (and, off kind, push) the image as, without a tag: one the cluster
                 pulls from, e.g. europe-docker.pkg.dev/PROJECT/REPO/idgen (default: ${IDGEN_IMAGE%:*};
                 localhost/${IDGEN_IMAGE%:*} with podman)
  SKIP_BUILD=1   build nothing: deploy IMAGE as given, with its tag or digest (default: $IDGEN_IMAGE)
  KIND_EXPERIMENTAL_PROVIDER   docker (default) or podman: the engine that builds and loads the image
  DRY_RUN=1      print the commands, run none
EOF
}

no_arguments "$@"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The part of an image reference after its last '/': a tag or digest lives there, a registry port does not.
last_part() { echo "${1##*/}"; }

if [[ ${SKIP_BUILD:-} == 1 ]]; then
	require_tools kubectl
	ref=${IMAGE:-$IDGEN_IMAGE}
	[[ $(last_part "$ref") == *[:@]* ]] ||
		die "IMAGE=$ref has no tag or digest: with SKIP_BUILD=1, name the image to run, e.g. IMAGE=$ref:${IDGEN_IMAGE##*:}"
else
	# podman names the images it builds localhost/<name>; the cluster must ask for that name.
	default_repo=${IDGEN_IMAGE%:*}
	[[ $ENGINE == podman ]] && default_repo=localhost/$default_repo
	repo=${IMAGE:-$default_repo}
	[[ $(last_part "$repo") != *[:@]* ]] ||
		die "IMAGE=$repo names a tag or digest: give the repository only (the tag is made from the image's content), or deploy it as is with SKIP_BUILD=1"
	if ((USE_KIND)); then
		require_tools "$ENGINE" kind kubectl
	else
		require_tools "$ENGINE" kubectl
	fi
	[[ -f $ROOT/idgen/Dockerfile ]] || die "idgen/Dockerfile is missing"
	log "building $IDGEN_IMAGE with $ENGINE"
	build=("$ENGINE" build)
	# Docker's BuildKit (buildx, the default builder since Engine 23) attaches a provenance attestation by
	# default; with the containerd image store, `docker save` (which `kind load docker-image` runs) leaves
	# it out, and ctr's import then fails ("content digest ... not found": kubernetes-sigs/kind#3795). The
	# legacy builder makes no attestation and does not know these flags.
	if [[ $ENGINE == docker ]] && run docker buildx version >/dev/null 2>&1; then
		build+=(--provenance=false --sbom=false)
	fi
	run "${build[@]}" -f "$ROOT/idgen/Dockerfile" -t "$IDGEN_IMAGE" "$ROOT"
	image_id=$(run "$ENGINE" image inspect --format '{{.Id}}' "$IDGEN_IMAGE")
	image_id=${image_id#sha256:}
	if [[ $DRY_RUN == 1 ]]; then
		image_id='<image-id>'
	elif [[ ! $image_id =~ ^[0-9a-f]{12} ]]; then
		die "cannot read the image ID of $IDGEN_IMAGE (\`$ENGINE image inspect\` says: ${image_id:-nothing})"
	fi
	ref=$repo:${IDGEN_IMAGE##*:}-${image_id:0:12}
	run "$ENGINE" tag "$IDGEN_IMAGE" "$ref"
	if ((USE_KIND)); then
		# kind nodes do not see the engine's images: load it (imagePullPolicy IfNotPresent then uses it).
		log "loading $ref into kind cluster $CLUSTER_NAME"
		if [[ $ENGINE == docker ]]; then
			run kind load docker-image "$ref" --name "$CLUSTER_NAME"
		else
			# `kind load docker-image` asks Docker itself; with podman, save an archive and load that.
			run podman save -o "$tmp/idgen.tar" "$ref"
			run kind load image-archive "$tmp/idgen.tar" --name "$CLUSTER_NAME"
		fi
	else
		log "pushing $ref (the cluster behind $KUBE_CONTEXT pulls it from there)"
		run "$ENGINE" push "$ref"
	fi
fi

# manifests/base names $IDGEN_IMAGE; kustomize's images: points it at the image just built (or given).
log "deploying manifests/base to $KUBE_CONTEXT with image $ref"
run kubectl kustomize "$ROOT/manifests/base" >"$tmp/base.yaml"
if [[ $(last_part "$ref") == *@* ]]; then
	new="  newName: ${ref%@*}"$'\n'"  digest: ${ref#*@}"
else
	new="  newName: ${ref%:*}"$'\n'"  newTag: ${ref##*:}"
fi
cat >"$tmp/kustomization.yaml" <<EOF
resources:
- base.yaml
images:
- name: ${IDGEN_IMAGE%:*}
$new
EOF
run kubectl kustomize "$tmp" >"$tmp/deploy.yaml"
kc apply -f "$tmp/deploy.yaml"
kc -n "$DEMO_NAMESPACE" rollout status deployment/idgen --timeout=180s

# Istio may inject its proxy as a native sidecar (an init container) or as a plain container.
containers=$(kc -n "$DEMO_NAMESPACE" get pods -l app=idgen \
	-o jsonpath='{.items[*].spec.initContainers[*].name} {.items[*].spec.containers[*].name}')
[[ $DRY_RUN == 1 || " $containers " == *" istio-proxy "* ]] ||
	die "idgen runs without an istio-proxy sidecar (containers: $containers); is namespace $DEMO_NAMESPACE labelled istio-injection=enabled and Istio installed?"

log "idgen ($ref) is running with its sidecar. Next: make demo-passthrough TARGET=cluster"

#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings below are used by the scripts that source this file
# Helpers shared by the cluster scripts. Sourced, never run: `source "${BASH_SOURCE[0]%/*}/lib.sh"`.
# Everything before require_tools uses bash builtins only, so a missing tool is reported by name
# instead of failing on a command that is not there.
set -euo pipefail

# The repository root, found without `dirname` (a builtin-only path, see above).
_lib_dir=${BASH_SOURCE[0]%/*}
[[ $_lib_dir == "${BASH_SOURCE[0]}" ]] && _lib_dir=.
ROOT=$(cd "$_lib_dir/.." && pwd)
export ROOT

# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"

# Settings (all overridable from the environment; docs/cluster.md has the table).
CLUSTER_NAME=${CLUSTER_NAME:-egress-lab}
# Every kubectl/istioctl call names its context, so a script never acts on whatever cluster happens to be
# current (a production one, say). Unset (or kind-$CLUSTER_NAME), it is the lab's kind cluster, which the
# scripts create and load images into; any other context is a cluster they only install on and deploy to.
if [[ -z ${KUBE_CONTEXT:-} || $KUBE_CONTEXT == "kind-$CLUSTER_NAME" ]]; then
	USE_KIND=1
else
	USE_KIND=0
fi
KUBE_CONTEXT=${KUBE_CONTEXT:-kind-${CLUSTER_NAME}}
GATEWAY_PORT=${GATEWAY_PORT:-8000}
# The kind node port of the gateway's port 80: manifests/istio/gateway-nodeport.yaml sets it on the Service,
# and kind publishes it on GATEWAY_PORT (tests check the two agree).
GATEWAY_NODE_PORT=30080
GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:${GATEWAY_PORT}}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
DEMO_NAMESPACE=recipes
OPTION_LABEL=egress-lab/option-resource=true
# The kinds that carry OPTION_LABEL (manifests/components/*): the only ones an option switch deletes.
OPTION_KINDS=sidecars.networking.istio.io,serviceentries.networking.istio.io
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VERIFY_RETRIES=${VERIFY_RETRIES:-7}
RETRY_DELAY_UNIT=${RETRY_DELAY_UNIT:-1}
# 1: print every command that would act on a cluster, an image or the network, and run none of them.
DRY_RUN=${DRY_RUN:-0}
# kind's own switch for running its nodes in podman instead of Docker; the scripts build and load images
# with the same engine.
KIND_PROVIDER=${KIND_EXPERIMENTAL_PROVIDER:-docker}

PROG=${0##*/}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

# Dry-run output goes to the script's stdout even from inside $(...), which captures only fd 1.
exec 3>&1

# run CMD [ARGS...]: runs it; with DRY_RUN=1 prints it, shell-quoted, and runs nothing (no output, success).
run() {
	if [[ $DRY_RUN == 1 ]]; then
		local arg line=+
		for arg; do
			# Quoted as a shell would need it: plain words as they are, anything else in single quotes.
			[[ -z $arg || $arg == *[!A-Za-z0-9_./:=@,+%-]* ]] && arg="'${arg//\'/\'\\\'\'}'"
			line+=" $arg"
		done
		printf '%s\n' "$line" >&3
		return 0
	fi
	"$@"
}

# kubectl and istioctl, always against KUBE_CONTEXT.
kc() { run kubectl --context "$KUBE_CONTEXT" "$@"; }
ictl() { run istioctl --context "$KUBE_CONTEXT" "$@"; }

# The container engine that builds and loads images: the one kind runs its nodes in.
case $KIND_PROVIDER in
docker | podman) ENGINE=$KIND_PROVIDER ;;
*) die "KIND_EXPERIMENTAL_PROVIDER=$KIND_PROVIDER is not supported here: use docker (the default) or podman" ;;
esac

# How to get each tool the scripts use.
install_hint() {
	case $1 in
	kind) echo "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (pinned: $KIND_VERSION; e.g. go install sigs.k8s.io/kind@$KIND_VERSION)" ;;
	istioctl) echo "curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh - && export PATH=\"\$PWD/istio-$ISTIO_VERSION/bin:\$PATH\"" ;;
	kubectl) echo "https://kubernetes.io/docs/tasks/tools/ (Debian/Ubuntu: the Kubernetes apt repository; macOS: brew install kubectl)" ;;
	docker) echo "https://docs.docker.com/engine/install/ (kind runs its node in Docker; the engine must be running)" ;;
	podman) echo "https://podman.io/docs/installation (KIND_EXPERIMENTAL_PROVIDER=podman runs kind's node in podman)" ;;
	curl) echo "apt-get install curl (macOS: preinstalled)" ;;
	jq) echo "apt-get install jq (macOS: brew install jq)" ;;
	gcloud) echo "https://cloud.google.com/sdk/docs/install (Debian/Ubuntu: apt-get install google-cloud-cli)" ;;
	*) echo "install $1 and put it on PATH" ;;
	esac
}

# require_tools TOOL...: names every missing tool at once, with how to get it, and exits 127.
require_tools() {
	local tool missing=()
	# A dry run runs none of them: it only prints the commands.
	[[ $DRY_RUN == 1 ]] && return 0
	for tool in "$@"; do
		command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
	done
	((${#missing[@]} == 0)) && return 0
	printf '%s: missing tools: %s\n' "$PROG" "${missing[*]}" >&2
	for tool in "${missing[@]}"; do
		printf '  %-9s %s\n' "$tool" "$(install_hint "$tool")" >&2
	done
	exit 127
}

# require_python: the report runs from the project's venv.
require_python() {
	[[ -x $PYTHON ]] || die "$PYTHON not found: run \`make setup\` first (or set PYTHON to a Python with the project installed)"
}

# retry DESCRIPTION CMD [ARGS...]: runs CMD until it succeeds, backing off exponentially between tries
# (2, 4, 8 ... seconds), VERIFY_RETRIES tries in all: 2 + 4 + ... + 2^(VERIFY_RETRIES-1) = 126 s of waiting
# by default (7 tries). The same scheme as Istio's doc tests (istio/istio.io tests/util/verify.sh,
# __verify_with_retry): config takes time to reach the proxies. Returns 1 after the last failed try; CMD's
# output of that try is on stderr. A dry run runs CMD once, to print its commands.
retry() {
	local what=$1 attempt=1 delay
	shift
	if [[ $DRY_RUN == 1 ]]; then
		"$@" || true
		printf '# (repeated with backoff until: %s; %s tries at most)\n' "$what" "$VERIFY_RETRIES" >&3
		return 0
	fi
	while true; do
		if "$@"; then
			return 0
		fi
		if ((attempt >= VERIFY_RETRIES)); then
			warn "gave up waiting for: $what ($attempt tries)"
			return 1
		fi
		delay=$(awk -v a="$attempt" -v u="$RETRY_DELAY_UNIT" 'BEGIN { print u * 2 ^ a }')
		log "not yet: $what (try $attempt of $VERIFY_RETRIES); retrying in ${delay}s"
		sleep "$delay"
		attempt=$((attempt + 1))
	done
}

# For scripts that take no arguments: --help prints the script's usage(), anything else is an error.
no_arguments() {
	case ${1:-} in
	-h | --help)
		usage
		exit 0
		;;
	"") ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

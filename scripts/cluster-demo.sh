#!/usr/bin/env bash
# One demo step on the cluster: switch the recipes namespace to an egress option, wait until the mesh
# behaves that way, drive traffic through the ingress gateway, then print the egress report and a verdict
# checked against the metric series docs/istio-facts.md gives for the option.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG passthrough|blackhole|serviceentry

  passthrough   ALLOW_ANY, no ServiceEntry: idgen reaches httpbin.org through PassthroughCluster (200)
  blackhole     REGISTRY_ONLY, no ServiceEntry: idgen's sidecar answers 502 (BlackHoleCluster)
  serviceentry  REGISTRY_ONLY + ServiceEntry httpbin-ext: httpbin.org is a registered host again (200)

Applies the option resources (label $OPTION_LABEL) of manifests/overlays/<option> to context
"$KUBE_CONTEXT" after deleting those the option lacks, waits for the behaviour (retry with backoff),
port-forwards Prometheus and waits for a scrape after the last wait request, sends DEMO_REQUESTS requests
to $GATEWAY_URL/id, prints the report (python -m egresswatch report) and the verdict. Exit status: 0 when
the verdict is PASS. idgen's Deployment is left as cluster-deploy made it (its image included).

Environment:
  KUBE_CONTEXT     kubectl context                    (default: kind-\$CLUSTER_NAME)
  GATEWAY_URL      the ingress gateway, from the host (default: http://127.0.0.1:\$GATEWAY_PORT)
  DEMO_REQUESTS    requests to drive                  (default: 20)
  PROMETHEUS_URL   use this Prometheus instead of port-forwarding the addon's
  PROMETHEUS_PORT  local port of that port-forward    (default: 19090)
  VERIFY_RETRIES   tries of each wait, backing off 2, 4, 8 ... s   (default: 7)
  PYTHON           Python with the project installed  (default: .venv/bin/python)
  DRY_RUN=1        print every command the step would run (kubectl, istioctl, curl, python), run none
EOF
}

case ${1:-} in
-h | --help)
	usage
	exit 0
	;;
passthrough | blackhole | serviceentry) OPTION=$1 ;;
*)
	usage >&2
	exit 2
	;;
esac

DEMO_REQUESTS=${DEMO_REQUESTS:-20}
OVERLAY=$ROOT/manifests/overlays/$OPTION
# The options in order, from manifests/overlays/ (each kustomization.yaml starts "# Option <n>, <name>:").
OPTIONS=$(sed -n 's/^# Option \([0-9]*\), \([a-z0-9-]*\):.*/\1 \2/p' "$ROOT"/manifests/overlays/*/kustomization.yaml |
	sort -n | cut -d' ' -f2 | tr '\n' ' ')

require_tools kubectl istioctl curl jq awk
[[ $DRY_RUN == 1 ]] || require_python

# The series each option must grow: docs/istio-facts.md's table (reporter="source", source_workload="idgen").
series() {
	local sel='reporter="source",source_workload="idgen",source_workload_namespace="recipes",destination_service="httpbin.org"'
	case $1 in
	passthrough) echo "$sel,destination_workload=\"unknown\",destination_service_name=\"PassthroughCluster\",response_code=\"200\"" ;;
	blackhole) echo "$sel,destination_workload=\"unknown\",destination_service_name=\"BlackHoleCluster\",response_code=\"502\",response_flags=\"-\"" ;;
	# Istio 1.30+: the DNS ServiceEntry's own endpoint is the destination workload.
	serviceentry) echo "$sel,destination_workload=\"httpbin-ext\",destination_service_name=\"httpbin.org\",destination_service_namespace=\"recipes\",response_code=\"200\"" ;;
	esac
}
expected_code() {
	case $1 in
	blackhole) echo 502 ;;
	*) echo 200 ;;
	esac
}
expectation() {
	case $1 in
	passthrough) echo "idgen's call to httpbin.org leaves through PassthroughCluster: /id answers 200" ;;
	blackhole) echo "idgen's sidecar blocks httpbin.org (BlackHoleCluster, 502): /id answers 502 egress_blocked" ;;
	serviceentry) echo "httpbin.org is registered by ServiceEntry httpbin-ext: /id answers 200" ;;
	esac
}

tmp=$(mktemp -d)
pf_pid=
cleanup() {
	# The port-forward is ours: stop it by its PID.
	if [[ -n $pf_pid ]]; then
		kill "$pf_pid" 2>/dev/null || true
		wait "$pf_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

log "step $OPTION: expect: $(expectation "$OPTION")"
kc -n "$DEMO_NAMESPACE" get deployment idgen >/dev/null ||
	die "idgen is not deployed in $KUBE_CONTEXT: run make cluster-deploy first"

# 1. Switch the option. `kubectl apply` does not prune: delete the option resources the new overlay
# lacks first, so no stale Sidecar or ServiceEntry survives the switch; a resource both options have (the
# Sidecar named default) is updated in place, so the namespace never falls back to the mesh default.
# Only the option resources are applied: the overlay's base would set idgen's image back to the one
# manifests/base names, not the one cluster-deploy built and deployed.
run kubectl kustomize "$OVERLAY" >"$tmp/overlay.yaml"
wanted=$(kc apply --dry-run=client -l "$OPTION_LABEL" -o name -f "$tmp/overlay.yaml")
present=$(kc -n "$DEMO_NAMESPACE" get "$OPTION_KINDS" -l "$OPTION_LABEL" -o name)
for resource in $present; do
	if ! grep -qxF "$resource" <<<"$wanted"; then
		log "removing $resource (not part of $OPTION)"
		kc -n "$DEMO_NAMESPACE" delete "$resource" --ignore-not-found
	fi
done
log "applying the option resources of manifests/overlays/$OPTION"
kc apply -l "$OPTION_LABEL" -f "$tmp/overlay.yaml"

# 2. Wait until the mesh behaves as the option says: idgen's answer through the gateway, and whether
# istiod has pushed a cluster for httpbin.org to idgen's sidecar (only the ServiceEntry makes one).
httpbin_clusters() {
	local pod
	pod=$(kc -n "$DEMO_NAMESPACE" get pods -l app=idgen -o jsonpath='{.items[0].metadata.name}')
	ictl proxy-config cluster "$pod.$DEMO_NAMESPACE" --fqdn httpbin.org -o json | jq length
}
behaves_as_option() {
	local code error clusters
	rm -f "$tmp/body"
	code=$(run curl -s -o "$tmp/body" -w '%{http_code}' --max-time 10 "$GATEWAY_URL/id" || true)
	error=$(jq -r '.error // empty' 2>/dev/null <"$tmp/body" || true)
	clusters=$(httpbin_clusters || echo "?")
	case $OPTION in
	passthrough) [[ $code == 200 && $clusters == 0 ]] && return 0 ;;
	blackhole) [[ $code == 502 && $error == egress_blocked ]] && return 0 ;;
	serviceentry) [[ $code == 200 && $clusters != 0 && $clusters != "?" ]] && return 0 ;;
	esac
	log "saw: /id -> ${code:-no answer}${error:+ ($error)}; httpbin.org clusters in idgen's sidecar: $clusters"
	return 1
}
retry "the mesh to behave as $OPTION" behaves_as_option ||
	die "the cluster does not behave as $OPTION; see the last 'saw:' line above"

# 3. Prometheus: the addon's, port-forwarded, unless PROMETHEUS_URL names another.
if [[ -n ${PROMETHEUS_URL:-} ]]; then
	PROM=$PROMETHEUS_URL
else
	PROM=http://127.0.0.1:$PROMETHEUS_PORT
	port_forward=(kubectl --context "$KUBE_CONTEXT" -n istio-system port-forward svc/prometheus "$PROMETHEUS_PORT:9090")
	if [[ $DRY_RUN == 1 ]]; then
		run "${port_forward[@]}"
	else
		# kubectl itself in the background (not a function, whose subshell's PID would be $!), so the
		# cleanup's kill reaches it; without fd 3, so it holds no pipe of ours open.
		"${port_forward[@]}" >"$tmp/port-forward.log" 2>&1 3>&- &
		pf_pid=$!
	fi
fi
retry "Prometheus at $PROM" run curl -fsS --max-time 5 -o /dev/null "$PROM/-/ready" ||
	die "Prometheus at $PROM does not answer ($(cat "$tmp/port-forward.log" 2>/dev/null || true))"

prom_query() {
	run curl -fsS --max-time 10 --get --data-urlencode "query=$1" "$PROM/api/v1/query"
}
prom_sum() {
	prom_query "sum(istio_requests_total{$1})" | jq -r '.data.result[0].value[1] // "0"'
}

# The wait's requests belong before the `before` snapshot: the first ones may have left under the previous
# option (istiod had not pushed yet), and if Prometheus (the addon scrapes every 15 s) has not seen them
# when `before` is taken, that option's series grows during the step and the verdict fails. So, once the
# mesh has converged, wait for a sample of idgen's sidecar newer than Prometheus's clock now, which is
# after the last wait request came back.
wait_for_scrape() {
	local since
	since=$(prom_query 'time()' | jq -r '.data.result[0] // empty')
	retry "a Prometheus scrape of idgen's sidecar after the last wait request" scraped_after "$since" ||
		die "Prometheus at $PROM has not scraped idgen's sidecar since the wait (is it scraping the recipes namespace?)"
}
scraped_after() {
	local last
	last=$(prom_query "max(timestamp(istio_requests_total{reporter=\"source\",source_workload=\"idgen\",source_workload_namespace=\"$DEMO_NAMESPACE\"}))" |
		jq -r '.data.result[0].value[1] // empty')
	[[ -n $last && -n $1 ]] && awk -v a="$last" -v b="$1" 'BEGIN { exit !(a > b) }' && return 0
	log "newest sample of idgen's sidecar in Prometheus: ${last:-none}; waiting for one after ${1:-?} (it scrapes every 15s)"
	return 1
}
wait_for_scrape
for option in $OPTIONS; do
	prom_sum "$(series "$option")" >"$tmp/before.$option"
done

# 4. Traffic through the gateway, as the recipe site sends it.
want=$(expected_code "$OPTION")
answered_as_expected=0
: >"$tmp/codes"
log "sending $DEMO_REQUESTS requests to $GATEWAY_URL/id"
for ((i = 1; i <= DEMO_REQUESTS; i++)); do
	code=$(run curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$GATEWAY_URL/id" || true)
	echo "$code" >>"$tmp/codes"
	if [[ $code == "$want" ]]; then
		answered_as_expected=$((answered_as_expected + 1))
	fi
done
log "answers: $(sort "$tmp/codes" | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')"

delta() {
	local now
	now=$(prom_sum "$(series "$1")")
	awk -v a="$now" -v b="$(cat "$tmp/before.$1")" 'BEGIN { print a - b }'
}
counted() {
	local d
	d=$(delta "$OPTION")
	if awk -v d="$d" -v n="$DEMO_REQUESTS" 'BEGIN { exit !(d >= n) }'; then
		return 0
	fi
	log "Prometheus counts $d of $DEMO_REQUESTS so far (it scrapes every 15s)"
	return 1
}
retry "Prometheus to count the $DEMO_REQUESTS requests" counted || true

# 5. The report, as the local demo prints it.
echo
report_rc=0
run "$PYTHON" -m egresswatch report --prometheus "$PROM" || report_rc=$?
((report_rc == 0)) || warn "the report failed (exit $report_rc)"

# 6. The verdict: the option's series grew by every request, the other options' series did not grow.
if [[ $DRY_RUN == 1 ]]; then
	for option in $OPTIONS; do
		prom_sum "$(series "$option")" >/dev/null
	done
	echo "DRY_RUN=1: nothing was run, so no verdict ($OPTION: $(expectation "$OPTION"))"
	exit 0
fi
echo
echo "Verdict for $OPTION (istio_requests_total, growth during this step):"
verdict=PASS
for option in $OPTIONS; do
	d=$(delta "$option")
	if [[ $option == "$OPTION" ]]; then
		mark="expected >= $DEMO_REQUESTS"
		awk -v d="$d" -v n="$DEMO_REQUESTS" 'BEGIN { exit !(d >= n) }' || verdict=FAIL
	else
		mark="expected 0"
		awk -v d="$d" 'BEGIN { exit !(d == 0) }' || verdict=FAIL
	fi
	printf '  %-12s %6s  (%s)  {%s}\n' "$option" "$d" "$mark" "$(series "$option")"
done
printf '  answers     %6s of %s were %s\n' "$answered_as_expected" "$DEMO_REQUESTS" "$want"
((answered_as_expected == DEMO_REQUESTS)) || verdict=FAIL
((report_rc == 0)) || verdict=FAIL
echo "VERDICT: $verdict ($OPTION: $(expectation "$OPTION"))"
[[ $verdict == PASS ]]

#!/usr/bin/env bash
# Deploys the recipe site (frontend/) as an HTTP Cloud Function (2nd gen) that calls idgen through the
# cluster's ingress gateway at IDGEN_URL.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: IDGEN_URL=http://<gateway address>/id $PROG [-h]

Runs gcloud functions deploy for frontend/ (entry point "recipes", runtime $GCF_RUNTIME, HTTP trigger).
The function runs in Google Cloud, so IDGEN_URL must be an address of the ingress gateway that Google
Cloud can reach (a GKE or other public cluster); a kind cluster on a laptop is not reachable from there.

Environment:
  IDGEN_URL          idgen's ID endpoint through the gateway (required)
  GCF_NAME           function name                (default: recipes)
  GCF_REGION         region                       (default: europe-west1)
  GCP_PROJECT        project                      (default: gcloud's configured project)
  GCF_PUBLIC=0       deploy without --allow-unauthenticated (default: the site is public)
  GCF_MAX_INSTANCES  instances at most            (default: 1: one SQLite file, one view of the recipes)
  GCF_SECRET         a Secret Manager secret to use as RECIPES_SECRET (the form's CSRF key), so every
                     instance accepts every other's forms (default: none; each instance makes its own).
                     The function's service account is granted roles/secretmanager.secretAccessor on it
                     first: without that, the deploy fails.
  GCF_SERVICE_ACCOUNT  the function's runtime service account (default: the project's default compute
                     service account, PROJECT_NUMBER-compute@developer.gserviceaccount.com, which 2nd gen
                     functions run as unless told otherwise)
  DRY_RUN=1          print the gcloud commands, run none
  RECIPES_DB         SQLite file in the function  (default: /tmp/recipes.db; /tmp is the only writable
                     place in a Cloud Function and is per instance: recipes do not outlive it)
frontend/DEPLOY.md says more about the function and its storage.
EOF
}

no_arguments "$@"

require_tools gcloud
if [[ -z ${IDGEN_URL:-} ]]; then
	usage >&2
	die "IDGEN_URL is required: the gateway's address as Google Cloud reaches it"
fi
[[ -f $ROOT/frontend/main.py ]] || die "frontend/main.py is missing"

args=(functions deploy "${GCF_NAME:-recipes}"
	--gen2
	--runtime="$GCF_RUNTIME"
	--region="${GCF_REGION:-europe-west1}"
	--source="$ROOT/frontend"
	--entry-point=recipes
	--trigger-http
	--max-instances="${GCF_MAX_INSTANCES:-1}"
	--set-env-vars="IDGEN_URL=$IDGEN_URL,RECIPES_DB=${RECIPES_DB:-/tmp/recipes.db}")
if [[ ${GCF_PUBLIC:-1} == 1 ]]; then
	args+=(--allow-unauthenticated)
else
	args+=(--no-allow-unauthenticated)
fi
if [[ -n ${GCF_SERVICE_ACCOUNT:-} ]]; then
	args+=(--service-account="$GCF_SERVICE_ACCOUNT")
fi
if [[ -n ${GCF_SECRET:-} ]]; then
	args+=(--set-secrets="RECIPES_SECRET=$GCF_SECRET:latest")
fi
if [[ -n ${GCP_PROJECT:-} ]]; then
	args+=(--project="$GCP_PROJECT")
fi

# --set-secrets needs the function's identity to read the secret: grant it before the deploy. Cloud Run
# functions (2nd gen) run as the default compute service account unless --service-account names one
# (Google Cloud docs, "Function identity").
if [[ -n ${GCF_SECRET:-} ]]; then
	project=${GCP_PROJECT:-$(run gcloud config get-value project 2>/dev/null || true)}
	[[ -n $project || $DRY_RUN == 1 ]] ||
		die "GCF_SECRET is set but no project is known: set GCP_PROJECT (or run gcloud config set project PROJECT)"
	account=${GCF_SERVICE_ACCOUNT:-}
	if [[ -z $account ]]; then
		number=$(run gcloud projects describe "$project" --format='value(projectNumber)')
		[[ -n $number || $DRY_RUN == 1 ]] || die "cannot read the project number of $project (gcloud projects describe)"
		account=${number:-PROJECT_NUMBER}-compute@developer.gserviceaccount.com
	fi
	log "granting roles/secretmanager.secretAccessor on secret $GCF_SECRET to $account"
	run gcloud secrets add-iam-policy-binding "$GCF_SECRET" --project="$project" \
		--member="serviceAccount:$account" --role=roles/secretmanager.secretAccessor
fi

log "gcloud ${args[*]}"
run gcloud "${args[@]}"

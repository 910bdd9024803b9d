#!/usr/bin/env bash
# Runs the recipe site (frontend/) on this machine against idgen in the cluster, through the ingress
# gateway: the design keeps the site outside the mesh, as a Cloud Function would be.
set -euo pipefail
# shellcheck source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"

usage() {
	cat <<EOF
Usage: $PROG [-h]

Serves the recipe site with functions-framework on http://\$HOST:\$PORT, with IDGEN_URL pointing at the
cluster's ingress gateway.

Environment:
  IDGEN_URL   idgen's ID endpoint           (default: $GATEWAY_URL/id)
  HOST, PORT  where the site listens        (default: 127.0.0.1, 8080)
  RECIPES_DB  the SQLite file of recipes    (default: the frontend's own, data/recipes.db)
  VENV_BIN    where functions-framework is  (default: .venv/bin)
EOF
}

no_arguments "$@"

VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
[[ -x $VENV_BIN/functions-framework ]] || die "$VENV_BIN/functions-framework not found: run \`make setup\` first"

export IDGEN_URL=${IDGEN_URL:-$GATEWAY_URL/id}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8080}
log "recipe site on http://$HOST:$PORT, IDGEN_URL=$IDGEN_URL"
cd "$ROOT"
exec "$VENV_BIN/functions-framework" --target=recipes --source=frontend/main.py --host="$HOST" --port="$PORT"

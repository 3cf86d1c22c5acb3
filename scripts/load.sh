#!/usr/bin/env bash
# HTTP load against a local rdev-api (`make run` in another shell), with a baseline in the
# same run: unauthenticated GET /healthz vs authenticated, rate-limited GET /v1/me.
# Needs wrk (apt-get install -y wrk). Targets loopback only; each run is bounded by -d.
#   scripts/load.sh [base-url] [seconds]
set -euo pipefail
BASE=${1:-http://127.0.0.1:8080}
SECS=${2:-10}
KEY_FILE=${ADMIN_KEY_FILE:-data/admin.key}
case "$BASE" in http://127.*|http://localhost*) ;; *) echo "load tests only target loopback" >&2; exit 2 ;; esac
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
KEY=$(cat "$KEY_FILE")
# A dedicated key with a limit high enough that the limiter decides but never refuses.
LOAD_KEY=$(curl -fsS -X POST "$BASE/v1/api-keys" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"name":"load","scopes":["projects:read"],"rate_limit_rps":100000}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
run() {
  local out
  out=$(wrk -t2 -c32 -d"${SECS}s" --latency "$@")
  echo "$out" | grep -E "Latency|50%|99%|Requests/sec" >&2
  echo "$out" | awk '/Requests\/sec/ {print $2}'
}
echo "== baseline: GET /healthz (no auth, no store)" >&2
BASELINE=$(run "$BASE/healthz")
echo "== GET /v1/me (auth through the key cache + rate-limit decision in the store)" >&2
AUTHED=$(run -H "Authorization: Bearer $LOAD_KEY" "$BASE/v1/me")
python3 -c "print(f'baseline {float($BASELINE):.0f} req/s, authenticated {float($AUTHED):.0f} req/s, ratio {float($AUTHED)/float($BASELINE):.2f}')"

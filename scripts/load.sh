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
run() { wrk -t2 -c32 -d"${SECS}s" "$@" | awk '/Requests\/sec/ {print $2} /Latency/ {print "latency", $2, $3, $4}'; }
echo "== baseline: GET /healthz (no auth, no store)"
BASELINE=$(run "$BASE/healthz" | tee /dev/stderr | awk 'NR==2')
echo "== GET /v1/me (auth through the key cache + rate-limit decision in SQLite)"
AUTHED=$(run -H "Authorization: Bearer $LOAD_KEY" "$BASE/v1/me" | tee /dev/stderr | awk 'NR==2')
python3 -c "print(f'ratio authenticated/baseline: {float($AUTHED)/float($BASELINE):.2f}')"

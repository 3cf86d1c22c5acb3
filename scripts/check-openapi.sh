#!/usr/bin/env bash
# Checks the OpenAPI document the server serves, as a user's tools see it (issue 12):
#   validate     openapi-spec-validator accepts GET /openapi.json;
#   generate     openapi-python-client generates a client without a warning, with one function
#                module per operationId (target/openapi-client);
#   walkthrough  scripts/openapi/walkthrough.py drives the main flow through that client alone;
#   fuzz         schemathesis runs every check over every operation, and finds nothing.
# It starts its own server (the built binary, SQLite and workspaces in a temporary directory,
# sandbox on), on a free port of 127.0.0.1, and stops it on exit. Tools come from a venv under
# target/ (pins in scripts/openapi/requirements.txt, installed on first run and when they change).
#   scripts/check-openapi.sh                      (run by `make test`)
#   OPENAPI_STEPS=validate,generate scripts/check-openapi.sh
# Settings: RDEV_BIN (target/debug/rdev-api), OPENAPI_VENV (target/venv-openapi),
# OPENAPI_FUZZ_EXAMPLES (100 per operation), OPENAPI_FUZZ_SEED, OPENAPI_FUZZ_WORKERS (1: with more, CPython 3.11's ast module can fail in hypothesis threads),
# OPENAPI_FUZZ_TIMEOUT (seconds for the whole fuzz step, 1800), OPENAPI_KEEP=1 keeps the temporary
# directory, OPENAPI_DOCUMENT=FILE checks that file instead of the served document (to try a change
# to the document against the running server before rebuilding). Reports and logs go to target/openapi-check/. Every step runs even when an earlier
# one failed (the walk-through and the fuzzer need the server, not the other steps); the exit code
# is 1 when any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${OPENAPI_VENV:-target/venv-openapi}
BIN=${RDEV_BIN:-target/debug/rdev-api}
STEPS=${OPENAPI_STEPS:-validate,generate,walkthrough,fuzz}
EXAMPLES=${OPENAPI_FUZZ_EXAMPLES:-100}
SEED=${OPENAPI_FUZZ_SEED:-12}
WORKERS=${OPENAPI_FUZZ_WORKERS:-1}
FUZZ_TIMEOUT=${OPENAPI_FUZZ_TIMEOUT:-1800}
# A submit may wait up to 60 s for its command (`?wait=`), so requests get more than that.
REQUEST_TIMEOUT=75
OUT=target/openapi-check
CLIENT_DIR=target/openapi-client
REQS=scripts/openapi/requirements.txt

say() { printf '\n== %s\n' "$*"; }
die() { printf 'check-openapi: %s\n' "$*" >&2; exit 1; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
for s in ${STEPS//,/ }; do
  case $s in validate|generate|walkthrough|fuzz) ;; *) die "unknown step '$s' in OPENAPI_STEPS (validate, generate, walkthrough, fuzz)";; esac
done

# One run at a time: runs share the venv, target/openapi-check and target/openapi-client.
command -v flock >/dev/null || die "flock (util-linux) not found"
mkdir -p target
exec 9>target/.openapi-check.lock
if ! flock -n 9; then
  echo "check-openapi: another run holds target/.openapi-check.lock; waiting up to ${OPENAPI_LOCK_WAIT:-1200} s" >&2
  flock -w "${OPENAPI_LOCK_WAIT:-1200}" 9 || die "another scripts/check-openapi.sh is still running"
fi

# --- tools -------------------------------------------------------------------------------------
[ -x "$BIN" ] || die "$BIN not found: build it with 'cargo build -p app --bin rdev-api' (or set RDEV_BIN)"
command -v python3 >/dev/null || die "python3 not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || die "could not create the venv $VENV (python3-venv missing?)"
fi
if ! cmp -s "$REQS" "$VENV/.openapi-requirements"; then
  say "installing the pinned tools into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS" || die "pip install -r $REQS failed"
  cp "$REQS" "$VENV/.openapi-requirements"
fi
PY=$VENV/bin/python
# The generator runs ruff (its dependency) on what it writes; it finds it on PATH.
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
export PATH="$VENV/bin:$PATH"

# --- server ------------------------------------------------------------------------------------
rm -rf "$OUT" && mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rdev-openapi.XXXXXX")
SERVER_PID=
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "check-openapi: the server did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [ -f "$TMP/server.log" ] && cp "$TMP/server.log" "$OUT/server.log" 2>/dev/null
  if [ "${OPENAPI_KEEP:-0}" = 1 ]; then echo "check-openapi: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
export DATABASE_URL=sqlite://$TMP/rdev.db
SERVER_ENV=(
  DATABASE_URL="$DATABASE_URL"
  WORKSPACES_DIR="$TMP/ws"
  BOOTSTRAP_ADMIN_KEY_FILE="$TMP/admin.key"
  LISTEN_ADDR="127.0.0.1:$PORT"
  # The fuzzer sends thousands of requests, some without a key (ignored_auth): no limit may bite.
  RATE_LIMIT_RPS=100000
  AUTH_FAILURE_RPS=100000
  AUTH_FAILURE_BURST=1000000
  # Webhook targets are pointed at loopback sinks (hooks.py, walkthrough.py); commands get no network.
  WEBHOOK_ALLOW_PRIVATE_TARGETS=true
  PROCESS_NETWORK=none
  SHUTDOWN_GRACE_SECONDS=2
  LOG_FORMAT=json
)
say "starting $BIN serve on $BASE (data in $TMP)"
env "${SERVER_ENV[@]}" "$BIN" serve >"$TMP/server.log" 2>&1 9>&- &
SERVER_PID=$!

server_failed() {
  echo "--- last lines of the server log ($OUT/server.log):" >&2
  tail -n 30 "$TMP/server.log" >&2 || true
  die "$1"
}
"$PY" - "$BASE" "$TMP/admin.key" "$SERVER_PID" <<'EOF' || server_failed "the server did not become ready (exited, or no /readyz and admin key within 60 s)"
import os, sys, time, urllib.request
base, key_file, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited")
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
            if r.status == 200 and os.path.exists(key_file) and os.path.getsize(key_file) > 0:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("not ready")
EOF
ADMIN_KEY_FILE=$TMP/admin.key
echo "ready; admin key in $ADMIN_KEY_FILE"

SPEC=$OUT/openapi.json
if [ -n "${OPENAPI_DOCUMENT:-}" ]; then
  cp "$OPENAPI_DOCUMENT" "$SPEC" || die "cannot read OPENAPI_DOCUMENT=$OPENAPI_DOCUMENT"
  echo "checking $OPENAPI_DOCUMENT, not the served document"
  FUZZ_SOURCE=("$SPEC" --url "$BASE")
else
  FUZZ_SOURCE=("$BASE/openapi.json")
fi
[ -n "${OPENAPI_DOCUMENT:-}" ] || "$PY" - "$BASE/openapi.json" "$SPEC" <<'EOF' || die "could not download $BASE/openapi.json"
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    body = r.read()
json.loads(body)
open(sys.argv[2], "wb").write(body)
EOF

# --- steps -------------------------------------------------------------------------------------
# Each step returns non-zero on failure; they are called outside `if` so that errexit is not
# silently off inside them, hence the explicit `|| return 1` on what must succeed.
declare -A RESULT TIME
run_step() {
  local name=$1 start rc
  want "$name" || { RESULT[$name]=skipped; return 0; }
  say "$name"
  start=$SECONDS
  set +e
  ( set -e; "step_$name" )
  rc=$?
  set -e
  # Interrupted (a tool that catches SIGINT exits 130 on its own): stop here, the trap cleans up.
  [ "$rc" != 130 ] || exit 130
  TIME[$name]=$((SECONDS - start))
  if [ "$rc" = 0 ]; then RESULT[$name]=passed; else RESULT[$name]=FAILED; fi
  echo "-- $name: ${RESULT[$name]} (${TIME[$name]} s)"
}

step_validate() {
  local log=$OUT/validator.log
  if "$VENV/bin/openapi-spec-validator" --validation-errors all "$SPEC" >"$log" 2>&1; then
    cat "$log"
    return 0
  fi
  # One line per error (the validator prints each as "FILE: Validation Error: [N] message", then
  # for schema errors the schema path and instance on the following lines).
  "$PY" - "$log" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
errors = re.findall(r"Validation Error: \[\d+\] ?(.*)", text)
for message in errors:
    print(f"  {message[:240]}")
if not errors:
    print(text[-3000:])
print(f"openapi-spec-validator rejects the document: {len(errors) or 'an'} error(s), full output in {sys.argv[1]}", file=sys.stderr)
EOF
  return 1
}

step_generate() {
  local log=$OUT/generator.log ok=0
  rm -rf "$CLIENT_DIR"
  if ! "$VENV/bin/openapi-python-client" generate --path "$SPEC" --meta setup \
      --config scripts/openapi/generator.yaml --output-path "$CLIENT_DIR" --overwrite >"$log" 2>&1; then
    cat "$log"; echo "openapi-python-client failed" >&2; return 1
  fi
  if grep -qi 'warning' "$log"; then
    cat "$log"
    echo "openapi-python-client warned (full output in $log): the client above lacks what it names" >&2
    ok=1
  fi
  "$PY" scripts/openapi/check_generated.py "$SPEC" "$CLIENT_DIR/rdev_api_client" || ok=1
  return $ok
}

step_walkthrough() {
  [ -d "$CLIENT_DIR/rdev_api_client" ] || { echo "no generated client in $CLIENT_DIR: run the generate step" >&2; return 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "./$CLIENT_DIR" \
    || { echo "pip could not install the generated client" >&2; return 1; }
  timeout --foreground 180 "$PY" scripts/openapi/walkthrough.py --base-url "$BASE" --admin-key-file "$ADMIN_KEY_FILE"
}

step_fuzz() {
  local created fuzz_key fuzz_id admin_id rc
  # The fuzzer gets an admin key of its own; the bootstrap key stays the walk-through's.
  created=$("$BIN" keys create --name openapi-fuzz --scope admin --json 2>>"$OUT/keys.log") \
    || { cat "$OUT/keys.log"; echo "rdev-api keys create failed" >&2; return 1; }
  fuzz_key=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$created")
  fuzz_id=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
  admin_id=$("$PY" - "$BASE" "$ADMIN_KEY_FILE" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/me", headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
with urllib.request.urlopen(req, timeout=10) as r:
    print(json.load(r)["id"])
EOF
  ) || { echo "GET /v1/me with the admin key failed" >&2; return 1; }
  echo "fuzzing with key $fuzz_id: $EXAMPLES examples per operation, seed $SEED, $WORKERS workers, at most $FUZZ_TIMEOUT s"
  set +e
  # --foreground keeps schemathesis in this process group, so Ctrl-C reaches it (and then the trap).
  RDEV_FUZZ_KEY=$fuzz_key RDEV_PROTECTED_KEY_IDS="$fuzz_id,$admin_id" SCHEMATHESIS_HOOKS=scripts/openapi/hooks.py \
    timeout --foreground --kill-after=10 "$FUZZ_TIMEOUT" "$VENV/bin/schemathesis" --config-file scripts/openapi/schemathesis.toml \
    run "${FUZZ_SOURCE[@]}" --checks all --max-examples "$EXAMPLES" --seed "$SEED" --workers "$WORKERS" \
    --request-timeout "$REQUEST_TIMEOUT" --generation-database none --no-color \
    --report junit,ndjson --report-dir "$OUT/schemathesis" >"$OUT/schemathesis.log" 2>&1
  rc=$?
  set -e
  [ "$rc" != 130 ] || return 130
  "$PY" scripts/openapi/fuzz_summary.py "$OUT/schemathesis.log" "$OUT/schemathesis" || true
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "schemathesis did not finish within $FUZZ_TIMEOUT s (OPENAPI_FUZZ_TIMEOUT)" >&2; return 1
  fi
  [ "$rc" = 0 ] || { echo "schemathesis found failures (exit $rc); full output in $OUT/schemathesis.log" >&2; return 1; }
}

run_step validate
run_step generate
run_step walkthrough
run_step fuzz

say "summary"
failed=0
for s in validate generate walkthrough fuzz; do
  printf '  %-12s %-8s %s\n' "$s" "${RESULT[$s]}" "${TIME[$s]:+${TIME[$s]} s}"
  [ "${RESULT[$s]}" = FAILED ] && failed=1
done
[ "$failed" = 0 ] || die "the OpenAPI document failed the checks above (logs in $OUT/)"
echo "OpenAPI checks passed: ${STEPS//,/, }"

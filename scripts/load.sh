#!/usr/bin/env bash
# `make load`: the end-to-end figures of docs/performance.md in one run, each beside its baseline
# from the same run (scripts/load.py). Builds the release binary and starts it the way `make run`
# does (SQLite + local processes, the sandbox on) on a fresh directory and a free loopback port,
# with limits raised so the limiter decides but never refuses; stops it at the end.
# LOAD_STORE=postgres instead starts a throwaway PostgreSQL from the machine's binaries (as the
# `postgres` user when run as root) and two replicas on it; figures that involve two replicas
# (reads served by both, output streamed from the other replica) are measured across them.
# Needs wrk (apt-get install -y wrk); oha (cargo install oha --locked) for the fixed-rate p99.
#   LOAD_SECONDS=10 LOAD_STREAMS=1000 LOAD_COMMANDS=1000 [LOAD_STORE=postgres] scripts/load.sh
# LOAD_PHASES picks phases (scripts/load.py), e.g. LOAD_PHASES=streams LOAD_STREAMS=9000;
# LOAD_BIN runs a binary built elsewhere (e.g. an older build, to compare) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
if [ -z "${LOAD_BIN:-}" ]; then
  # Both binaries, as `make run` builds them: the server starts sandboxes with rdev-sandbox.
  cargo build --release -p app --bin rdev-api -p adapters-process --bin rdev-sandbox
  LOAD_BIN="${CARGO_TARGET_DIR:-target}/release/rdev-api"
fi
dir=$(mktemp -d)
chmod 755 "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
pg_stop=true
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  $pg_stop
  rm -rf "$dir"
}
trap cleanup EXIT

start_replica() { # $1: database URL, $2: port, $3: name
  DATABASE_URL="$1" WORKSPACES_DIR="$dir/workspaces-$3" BOOTSTRAP_ADMIN_KEY_FILE="$dir/admin.key" \
    LISTEN_ADDR="127.0.0.1:$2" RATE_LIMIT_RPS=100000 MAX_STREAMS_PER_KEY=20000 CONCURRENT_COMMANDS=16 \
    RUST_LOG=warn "$LOAD_BIN" serve >"$dir/server-$3.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$dir/admin.key" ] && curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "replica $3 did not become ready:" >&2; cat "$dir/server-$3.log" >&2; exit 1
}

# Raised before the servers start: each stream holds two descriptors there, and one here.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
port=$(free_port)
if [ "${LOAD_STORE:-sqlite}" = postgres ]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || { echo "no PostgreSQL binaries: apt-get install -y postgresql" >&2; exit 1; }
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  mkdir "$dir/pg" && { [ "$(id -u)" != 0 ] || chown postgres "$dir/pg"; }
  pg_port=$(free_port)
  as_pg "$bin/initdb" -D "$dir/pg/data" -A trust -U postgres -E UTF8 --locale=C -N >/dev/null
  as_pg "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null
  pg_stop() { as_pg "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null || true; }
  pg_stop=pg_stop
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres rdev
  url="postgres://postgres@127.0.0.1:$pg_port/rdev"
  start_replica "$url" "$port" a
  port2=$(free_port)
  start_replica "$url" "$port2" b
  export BASE2="http://127.0.0.1:$port2" PID2=${pids[1]}
else
  start_replica "sqlite://$dir/rdev.db" "$port" a
fi
BASE="http://127.0.0.1:$port" KEY=$(cat "$dir/admin.key") PID=${pids[0]} STORE="${LOAD_STORE:-sqlite}" python3 scripts/load.py

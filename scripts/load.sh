#!/usr/bin/env bash
# `make load`: the end-to-end figures of docs/performance.md in one run, each beside its baseline
# from the same run (scripts/load.py). Builds the release binary and starts it the way `make run`
# does (SQLite + local processes, the sandbox on) on a fresh directory and a free loopback port,
# with limits raised so the limiter decides but never refuses; stops it at the end.
# Needs wrk (apt-get install -y wrk); oha (cargo install oha --locked) for the fixed-rate p99.
#   LOAD_SECONDS=10 LOAD_STREAMS=1000 LOAD_COMMANDS=1000 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -p app --bin rdev-api
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATABASE_URL="sqlite://$dir/rdev.db" WORKSPACES_DIR="$dir/workspaces" BOOTSTRAP_ADMIN_KEY_FILE="$dir/admin.key" \
  LISTEN_ADDR="127.0.0.1:$port" RATE_LIMIT_RPS=100000 MAX_STREAMS_PER_KEY=20000 CONCURRENT_COMMANDS=16 \
  RUST_LOG=warn ./target/release/rdev-api serve >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/admin.key" ] && curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
ulimit -n 65536 2>/dev/null || true
BASE="http://127.0.0.1:$port" KEY=$(cat "$dir/admin.key") PID=$server python3 scripts/load.py

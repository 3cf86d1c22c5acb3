#!/usr/bin/env bash
# `cargo test -p <crate>` for every crate of the workspace, each on its own: a crate's tests must
# pass with only the features its own Cargo.toml declares (a dev-dependency on itself with
# `testing` where it has one), not with what the rest of the workspace happens to enable.
# Runs them all (no fail-fast), prints each crate's time and outcome, then a summary; exits 1
# when any failed. Extra arguments go to every `cargo test` (e.g. `-- --test-threads=1`).
set -uo pipefail
cd "$(dirname "$0")/.."

crates=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    print(p["name"])
')
summary=()
failed=0
for crate in $crates; do
  started=$SECONDS
  echo "== cargo test -p $crate"
  if cargo test -p "$crate" --no-fail-fast "$@"; then outcome=ok; else outcome=FAILED; failed=1; fi
  line=$(printf '%-18s %-6s %4d s' "$crate" "$outcome" $((SECONDS - started)))
  echo "== $line"
  summary+=("$line")
done
echo "== per-crate tests"
printf '   %s\n' "${summary[@]}"
exit $failed

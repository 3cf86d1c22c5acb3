# rdev-api — the two commands are `make run` and `make test`.
SHELL := /bin/bash
DATA_DIR ?= data
ADMIN_KEY_FILE ?= $(DATA_DIR)/admin.key
LISTEN_ADDR ?= 127.0.0.1:8080

.PHONY: run test e2e build lint deny fmt hooks bench load load-postgres clean

## Build and start the service on SQLite + local processes; prints where the admin key is.
## `rdev-sandbox` is built beside the server, which then starts each command's sandbox with it.
run:
	cargo build --release -p app --bin rdev-api -p adapters-process --bin rdev-sandbox
	@mkdir -p -m 700 $(DATA_DIR)
	@echo "rdev-api: on first start the admin key is written to $(ADMIN_KEY_FILE)"
	DATABASE_URL=sqlite://$(DATA_DIR)/rdev.db \
	WORKSPACES_DIR=$(DATA_DIR)/workspaces \
	BOOTSTRAP_ADMIN_KEY_FILE=$(ADMIN_KEY_FILE) \
	LISTEN_ADDR=$(LISTEN_ADDR) \
	./target/release/rdev-api serve

## Every test of every crate (unit, property, contract, HTTP), each crate on its own with only
## the features its Cargo.toml declares (`scripts/test-crates.sh`, which prints each crate's
## time), the HTTP suites again with EXECUTOR=kube on kube-sim, the k8s manifests, then the
## OpenAPI document as a user's tools see it (validator, generated client, schemathesis with
## OPENAPI_FUZZ_EXAMPLES per operation).
OPENAPI_FUZZ_EXAMPLES ?= 100
test:
	scripts/test-crates.sh
	RDEV_TEST_EXECUTOR=kube cargo test -p app --no-fail-fast --test commands --test auth --test errors
	scripts/validate-k8s.sh
	OPENAPI_FUZZ_EXAMPLES=$(OPENAPI_FUZZ_EXAMPLES) scripts/check-openapi.sh

## The end-to-end suite (e2e/, see e2e/README.md): the real rdev-api and kube-sim binaries —
## three replicas on a throwaway PostgreSQL, a webhook receiver — under kill -9, SIGSTOP past the
## lease, a database restart and a webhook outage (E2E_COMMANDS commands), then the focused fault
## tests and the compose file's services; prints its figures. Builds the binaries first the way
## `cargo test -p app` and `cargo test -p kube-sim` do, so that after `make test` nothing is
## compiled twice.
E2E_COMMANDS ?= 5000
E2E_WEBHOOK_OUTAGE_SECONDS ?= 60
e2e:
	cargo test -p app --no-run
	cargo test -p kube-sim --no-run
	E2E_COMMANDS=$(E2E_COMMANDS) E2E_WEBHOOK_OUTAGE_SECONDS=$(E2E_WEBHOOK_OUTAGE_SECONDS) \
	cargo test -p e2e --no-fail-fast --test chaos --test faults --test compose -- --nocapture --test-threads=1

build:
	cargo build --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

## Licences, banned crates and sources of every dependency (needs `cargo install cargo-deny`);
## offline: advisories need the network and are left to a scheduled job. `cargo fetch` first,
## because cargo-deny reads the metadata of every platform's crates, which a build alone never
## downloads on a fresh machine.
deny:
	cargo fetch --locked
	cargo deny --offline check --hide-inclusion-graph licenses bans sources

fmt:
	cargo fmt --all

## Install the pre-commit hook (fmt + clippy) for this clone.
hooks:
	git config core.hooksPath .githooks
	@echo "pre-commit hook installed (.githooks/pre-commit)"

## Criterion benchmarks of the hot pure paths (ratios against baselines in the same run).
bench:
	cargo bench -p services --bench hot_paths

## The end-to-end figures, each beside its same-run baseline: starts its own release server like
## `make run` on a fresh directory (needs wrk; oha for the fixed-rate p99). docs/performance.md.
## `make load-postgres`: the same against two replicas on a throwaway PostgreSQL.
load:
	scripts/load.sh

load-postgres:
	LOAD_STORE=postgres scripts/load.sh

clean:
	cargo clean
	rm -rf $(DATA_DIR)

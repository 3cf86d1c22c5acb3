# rdev-api — the two commands are `make run` and `make test`.
SHELL := /bin/bash
DATA_DIR ?= data
ADMIN_KEY_FILE ?= $(DATA_DIR)/admin.key
LISTEN_ADDR ?= 127.0.0.1:8080

.PHONY: run test build lint fmt hooks bench load clean

## Build and start the service on SQLite + local processes; prints where the admin key is.
run:
	cargo build --release -p app
	@mkdir -p -m 700 $(DATA_DIR)
	@echo "rdev-api: on first start the admin key is written to $(ADMIN_KEY_FILE)"
	DATABASE_URL=sqlite://$(DATA_DIR)/rdev.db \
	WORKSPACES_DIR=$(DATA_DIR)/workspaces \
	BOOTSTRAP_ADMIN_KEY_FILE=$(ADMIN_KEY_FILE) \
	LISTEN_ADDR=$(LISTEN_ADDR) \
	./target/release/rdev-api serve

## Every test of the workspace (unit, property, contract, HTTP), the HTTP suites again with
## EXECUTOR=kube on kube-sim, the k8s manifests, then the OpenAPI document as a user's tools see it
## (validator, generated client, schemathesis with OPENAPI_FUZZ_EXAMPLES per operation).
OPENAPI_FUZZ_EXAMPLES ?= 100
test:
	cargo test --workspace --all-features --no-fail-fast
	RDEV_TEST_EXECUTOR=kube cargo test -p app --all-features --no-fail-fast --test commands --test auth --test errors
	scripts/validate-k8s.sh
	cargo build -p app --bin rdev-api
	OPENAPI_FUZZ_EXAMPLES=$(OPENAPI_FUZZ_EXAMPLES) scripts/check-openapi.sh

build:
	cargo build --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	cargo fmt --all

## Install the pre-commit hook (fmt + clippy) for this clone.
hooks:
	git config core.hooksPath .githooks
	@echo "pre-commit hook installed (.githooks/pre-commit)"

## Criterion benchmarks of the hot pure paths (ratios against baselines in the same run).
bench:
	cargo bench -p services --bench hot_paths

## HTTP load against a running `make run` (needs wrk): see docs/performance.md.
load:
	scripts/load.sh

clean:
	cargo clean
	rm -rf $(DATA_DIR)

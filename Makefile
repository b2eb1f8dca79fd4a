# pullsecret-injector — every target is listed by `make help`.
#
# Build outputs are cached in gitignored folders: target/ (cargo) and .cache/ (Go module
# and build caches, the control-plane binaries), so a warm `make test` stays fast.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export PATH := $(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)
# Two cores here: more parallel rustc jobs only add memory pressure.
CARGO_BUILD_JOBS ?= 2
export CARGO_BUILD_JOBS

BIN := target/release/pullsecret-injector
CONFIG ?= examples/config.yaml

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: tools
tools: ## Check that cargo (with rustfmt and clippy) is installed
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

.PHONY: build
build: tools ## Build the release binary (cargo build --release --locked), as the Dockerfile does
	cargo build --release --locked

.PHONY: certs
certs: ## Generate development certificates into certs/ (kept if present)
	certs/generate.sh

.PHONY: run
run: build certs ## Build and run the webhook locally with dev certs and examples/config.yaml
	$(BIN) serve --config $(CONFIG)

.PHONY: fmt
fmt: tools ## Format the code
	cargo fmt --all

.PHONY: lint
lint: tools ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

.PHONY: controlplane
controlplane: ## Build (or reuse) etcd, kube-apiserver, kube-controller-manager and helm from pinned Go modules
	tests/controlplane/build.sh

.PHONY: test
test: lint controlplane ## Lint, then unit, integration and end-to-end tests (real control plane)
	cargo test --locked --all-targets

.PHONY: clean
clean: ## Remove build outputs (keeps the Go and control-plane caches in .cache/)
	cargo clean

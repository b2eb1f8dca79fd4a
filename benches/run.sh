#!/usr/bin/env bash
# `make bench`: the benchmark suite of BENCHMARKS.md, end to end on a fresh clone.
#
#   1. release builds of the injector and the floor server (examples/floor_server.rs), and the
#      bench binaries (benches/core.rs, benches/apiserver.rs)
#   2. oha, pinned, into .cache/tools/ (gitignored): cargo install --locked --root
#   3. fixtures (benches/fixtures/generate.py) and an ECDSA P-256 certificate
#      (certs/generate.sh) into target/bench/
#   4. load on loopback, server on core 0 and oha on core 1 (benches/load.py)
#   5. criterion micro-benchmarks (benches/core.rs), pinned to core 0
#   6. pod-create latency through a real kube-apiserver (benches/apiserver.rs; needs
#      `make controlplane`, which `make bench` runs first)
#   7. target/bench/report.md (benches/report.py), printed, and target/bench/latency.png
#      (benches/plot.py, with the matplotlib of `make plot-tools`)
#
# BENCH_QUICK=1 runs every step with short durations and small counts, to check the pipeline.
# Figures from a quick run are not comparable to a full one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OHA_VERSION=1.16.0
OHA_ROOT=.cache/tools/oha-$OHA_VERSION
OHA=$OHA_ROOT/bin/oha
OUT=target/bench

for tool in taskset python3 openssl cargo; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
done
if (($(nproc) < 2)); then
    echo "bench: needs 2 cores (server on core 0, load on core 1); this machine has $(nproc)" >&2
    exit 1
fi

load_args=(--oha "$OHA")
creates=500
if [[ "${BENCH_QUICK:-}" == 1 ]]; then
    load_args+=(--duration 2 --throughput-duration 2 --million 20000)
    creates=30
fi

echo "== build (release)"
cargo build --release --locked --bin pullsecret-injector --example floor_server
cargo bench --locked --no-run --bench core --bench apiserver

if [[ ! -x "$OHA" ]]; then
    echo "== install oha $OHA_VERSION into $OHA_ROOT"
    cargo install --locked --root "$OHA_ROOT" oha --version "$OHA_VERSION"
fi
"$OHA" --version

echo "== fixtures and certificate"
mkdir -p "$OUT"
python3 benches/fixtures/generate.py "$OUT/fixtures"
certs/generate.sh "$OUT/certs"
rm -rf "$OUT/load.json" "$OUT/apiserver.json" "$OUT/report.md" target/criterion

echo "== machine: $(nproc) cores; $(uptime)"
echo "== load (benches/load.py)"
python3 benches/load.py "${load_args[@]}"

echo "== micro-benchmarks (benches/core.rs, core 0)"
if [[ "${BENCH_QUICK:-}" == 1 ]]; then
    taskset -c 0 cargo bench --locked --bench core -- --quick
else
    taskset -c 0 cargo bench --locked --bench core
fi

echo "== pod create through kube-apiserver (benches/apiserver.rs)"
BENCH_CREATES=$creates cargo bench --locked --bench apiserver

echo "== report; $(uptime)"
python3 benches/report.py
if [[ -x "${PLOT_PYTHON:-}" ]]; then
    "$PLOT_PYTHON" benches/plot.py latency "$OUT/load.json" "$OUT/latency.png"
else
    echo "bench: no plot (PLOT_PYTHON not set: run through make bench, which installs it)"
fi

#!/usr/bin/env bash
# `make peers`: the comparison of COMPARISON.md, end to end on a fresh clone.
#
#   1. the pinned control plane (tests/controlplane/build.sh; skipped when built)
#   2. the peers from pinned Go modules (tests/peers/build.sh; skipped when built):
#      Kyverno and imagepullsecret-patcher into .cache/peers/
#   3. the comparison against the control plane (benches/peers.rs): the race, latency and
#      cost, matching; three markdown tables, also in target/bench/peers.{md,json}
#   4. target/bench/race.png (benches/plot.py, with the matplotlib of `make plot-tools`)
#
# PEERS_RACE_RUNS, PEERS_CREATES, PEERS_CONCURRENCY and PEERS_PATCHER_ARRIVAL_MS override
# the sizes (100, 500, 8, 5000); PEERS_NO_WAIT=1 skips the wait (up to 20 min) for other
# benchmarks running on the machine; PEERS_BUILD_JOBS sets the Go build's -p (2) and
# PATCHER_GIT where the patcher's tag is fetched from (tests/peers/build.sh --help).
# Peer logs: target/peers-logs/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

tests/controlplane/build.sh
tests/peers/build.sh
echo "== comparison (benches/peers.rs) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench --locked --bench peers
if [[ -x "${PLOT_PYTHON:-}" ]]; then
    "$PLOT_PYTHON" benches/plot.py race target/bench/peers.json target/bench/race.png
else
    echo "peers: no plot (PLOT_PYTHON not set: run through make peers, which installs it)"
fi

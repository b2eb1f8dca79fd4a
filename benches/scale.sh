#!/usr/bin/env bash
# `make scale`: replication at scale (BENCHMARKS.md, "At scale"), end to end.
#
#   1. the release binary and the bench (benches/scale.rs)
#   2. per size in SCALE_SIZES (1000 5000 10000): a control plane of its own, the namespaces,
#      the floor, the injector (and at 5,000 a second start and a hand-over, at 10,000 a
#      source rotation): target/scale/scale-<size>.json
#   3. target/scale/report.md (benches/scale.py, printed) and target/scale/scale.png
#      (benches/plot.py, with the matplotlib of `make plot-tools`)
#
# FLOOR_CONCURRENCY (32) and ADMISSION_RATE (100 reviews/s) override the sizes of the run;
# SCALE_PHASES=handover,rotation runs those phases at every size; SCALE_REPLICATION_RATE=<qps>,<burst>
# sets the injector's replicationRateLimit (default: the binary's); SCALE_PIN=0 leaves every
# process on every core (default: the control plane on the last core, the rest on the others).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=target/scale
# A namespace per Secret watch and a few connections per size: well within the defaults,
# but the admission load, the injector and the bench hold sockets at once.
[[ $(ulimit -n) -ge 8192 ]] || ulimit -n 8192

echo "== build (release)"
cargo build --release --locked --bin pullsecret-injector
cargo bench --locked --no-run --bench scale

mkdir -p "$OUT"
rm -f "$OUT"/scale-*.json "$OUT"/report.md "$OUT"/scale.png
# As in a cluster, the webhook does not share the apiserver's CPUs: the bench and the injector
# run on all cores but the last, where scale.rs moves etcd and kube-apiserver (SCALE_PIN=0:
# everything shares every core).
pin=()
if [[ "${SCALE_PIN:-1}" == 1 ]] && (($(nproc) >= 2)); then
    export SCALE_CONTROL_PLANE_CPUS=$(($(nproc) - 1))
    pin=(taskset --cpu-list "0-$(($(nproc) - 2))")
fi
for size in ${SCALE_SIZES:-1000 5000 10000}; do
    echo "== $size namespaces; $(uptime)"
    SCALE_NAMESPACES=$size "${pin[@]}" cargo bench --locked --bench scale
done
echo "== report; $(uptime)"
python3 benches/scale.py
if [[ -x "${PLOT_PYTHON:-}" ]]; then
    "$PLOT_PYTHON" benches/plot.py scale "$OUT" "$OUT/scale.png"
else
    echo "scale: no plot (PLOT_PYTHON not set: run through make scale, which installs it)"
fi

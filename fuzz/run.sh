#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and reports executions per target.
#
#   fuzz/run.sh SECONDS [TARGET...]     (default: every target)
#
# Environment: CARGO_FUZZ (the cargo-fuzz binary), FUZZ_JOBS (targets at once, default 2),
# FUZZ_SANITIZER (address | none, default address).
#
# Seeds come from the repository's fixtures on every run (tests/fixtures: admission reviews,
# matching-cases.tsv images and patterns; examples/; fuzz/seeds/); what the fuzzer finds
# accumulates in fuzz/corpus/<target>/ (gitignored). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run: fix it, and keep the input in
# fuzz/regressions/<target>/, which every run replays and tests/fuzz_regressions.rs checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=..

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(image pattern config handler)
fi
cargo_fuzz=${CARGO_FUZZ:-cargo-fuzz}
jobs=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-address}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1   # cargo-fuzz's -Z flags on the stable toolchain

seed() {
    local target=$1 dir=corpus/$1 n=0
    mkdir -p "$dir"
    case $target in
    image | pattern)
        # matching-cases.tsv: image <TAB> pattern <TAB> expected ...
        while IFS=$'\t' read -r image pattern _; do
            [[ -z $image || $image == \#* ]] && continue
            n=$((n + 1))
            if [[ $target == image ]]; then
                printf '%s' "$image" >"$dir/seed-$n"
            else
                printf '%s\n%s' "$pattern" "$image" >"$dir/seed-$n"
            fi
        done <"$root/tests/fixtures/matching-cases.tsv"
        ;;
    config)
        cp "$root/examples/config.yaml" "$dir/seed-example"
        for f in seeds/config/*.yaml; do cp "$f" "$dir/seed-$(basename "$f" .yaml)"; done
        ;;
    handler)
        cp "$root/examples/admission-review.json" "$dir/seed-example"
        for f in "$root"/tests/fixtures/admission/*.json; do
            name=$(basename "$f" .json)
            cp "$f" "$dir/seed-$name"
            # The bare AdmissionRequests, wrapped as the apiserver sends them.
            if ! grep -q '"AdmissionReview"' "$f"; then
                { printf '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
                  cat "$f"
                  printf '}'; } >"$dir/seed-$name-wrapped"
            fi
        done
        ;;
    esac
}

options() {
    case $1 in
    config) echo "-max_len=8192 -dict=dicts/config.dict" ;;
    handler) echo "-max_len=16384 -dict=dicts/admission.dict" ;;
    *) echo "-max_len=512" ;;
    esac
}

echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)"
if [[ $# -eq 0 ]]; then
    "$cargo_fuzz" fuzz build -O --sanitizer "$sanitizer"
else
    for target in "${targets[@]}"; do
        "$cargo_fuzz" fuzz build -O --sanitizer "$sanitizer" "$target"
    done
fi

mkdir -p logs
run_one() {
    local target=$1
    seed "$target"
    mkdir -p "artifacts/$target"
    # shellcheck disable=SC2046
    # Inputs that once failed (fuzz/regressions/<target>/) are replayed first, as seeds.
    mkdir -p "regressions/$target"
    "target/$triple/release/$target" "corpus/$target" "regressions/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" $(options "$target") \
        >"logs/$target.log" 2>&1
}
export -f run_one seed options
export seconds triple root

started=$SECONDS
failed=()
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {} || echo {} >>logs/failed' || true
[[ -f logs/failed ]] && mapfile -t failed <logs/failed && rm -f logs/failed

printf '%-8s %12s %10s %8s %7s  %s\n' target executions "execs/s" corpus cov result
for target in "${targets[@]}"; do
    log=logs/$target.log
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n1; }
    result=ok
    [[ " ${failed[*]} " == *" $target "* ]] && result=FAILED
    printf '%-8s %12s %10s %8s %7s  %s\n' "$target" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$(find "corpus/$target" -type f | wc -l)" \
        "$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)" "$result"
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, $jobs at a time, $((SECONDS - started))s"
if [[ ${#failed[@]} -gt 0 ]]; then
    for target in "${failed[@]}"; do
        echo "---- fuzz/logs/$target.log (tail) ----"
        tail -n 40 "logs/$target.log"
        echo "crash inputs: $(ls "artifacts/$target" 2>/dev/null | tr '\n' ' ')"
    done
    echo "fuzz: failed: ${failed[*]}; reproduce with: $cargo_fuzz fuzz run ${failed[0]} fuzz/artifacts/${failed[0]}/<file>" >&2
    exit 1
fi

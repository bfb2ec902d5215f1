#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of what the web sends crawlq: one target
# per file in fuzz/fuzz_targets/, seeds in fuzz/corpus/<target>/seed-*.
#
#   scripts/fuzz.sh smoke [TARGET...]         build every target, run each for 20 s
#   scripts/fuzz.sh long [SECONDS] [TARGET...] run each for SECONDS (600)
#
# Targets run one after another, one libFuzzer process each (no -fork/-jobs), under
# nice 19. A crash fails the run; its input is in fuzz/artifacts/<target>/ and is
# replayed with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-…`.
# Logs: fuzz/logs/<target>.log. Needs `cargo install cargo-fuzz --locked`; RUSTC_BOOTSTRAP=1
# lets the stable toolchain take the -Z flags cargo fuzz passes. FUZZ_SANITIZER=none builds
# without AddressSanitizer (the default is address). Builds are optimised without debug
# assertions (cargo fuzz -O); FUZZ_DEBUG_ASSERTIONS=1 turns them and overflow checks on, at
# the cost of a second full build of every dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

mode=${1:-smoke}
shift || true
case "$mode" in
smoke) seconds=20 ;;
long)
    seconds=600
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then
        seconds=$1
        shift
    fi
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
flags=(--sanitizer "${FUZZ_SANITIZER:-address}")
if [[ ${FUZZ_DEBUG_ASSERTIONS:-0} == 1 ]]; then
    flags+=(--debug-assertions)
else
    flags+=(-O)
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    # Every [[bin]] of fuzz/Cargo.toml: a new target needs no change here.
    mapfile -t targets < <(cargo fuzz list)
fi

nice -n 19 cargo fuzz build "${flags[@]}"
mkdir -p fuzz/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/logs/$target.log"
    echo "== $target: $seconds s"
    # -timeout: one input taking 30 s is a hang worth a report (the machine is shared, so
    # not less); the default -max_len (4096, or the largest seed) keeps runs fast.
    if nice -n 19 cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    runs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" || echo "?")
    last=$(grep -E '^#[0-9]+\s' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || echo "no coverage line")
    # libFuzzer stops at the first crash, hang or leak and writes it out.
    crashes=$(grep -c 'Test unit written to' "$log" || true)
    echo "   $status: $runs runs, $last, corpus files $(ls "fuzz/corpus/$target" | wc -l), crashes $crashes"
    if [[ $status == FAILED ]]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/   /'
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]} (logs in fuzz/logs/)"
    exit 1
fi

#!/usr/bin/env bash
# Compression: space saved and hit cost per zstd level, side by side in one run.
# Uses the Lua 5.4 build the demo prepares (demo/run.sh), 33 real objects.
# Usage: bash benches/store/compression.sh [rounds]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-5}
build=$root/target/demo/build
[[ -f $build/lvm.o.thinlto.bc ]] || DEMO_WORK=$root/target/demo bash "$root/demo/run.sh" >/dev/null
L=$(bash "$root/scripts/build-release.sh")
cd "$build"
modules=$(ls *.o.thinlto.bc | sed 's/\.o\.thinlto\.bc$//')
run_all() { # run every backend through ltocache, sequentially, timing the whole phase
    local start end
    start=$(date +%s%N)
    for m in $modules; do
        "$L" clang-19 -O2 -c -fthinlto-index=$m.o.thinlto.bc -x ir $m.o -o $m.native.o
    done
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
}
raw_bytes=$(cat $(printf '%s.native.o ' $modules) 2>/dev/null | wc -c || echo 0)
echo "| compression | blob bytes | vs raw | warm phase (median of $rounds, ms) | per hit (ms) | vs off |"
echo "|---|---|---|---|---|---|"
base=""
for c in off zstd:1 zstd:3 zstd:9 zstd:19; do
    export LTOCACHE_DIR=$(mktemp -d) LTOCACHE_COMPRESSION=$c
    run_all >/dev/null                                   # cold: fills the cache
    bytes=$(find "$LTOCACHE_DIR/v1/blobs" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
    times=()
    for _ in $(seq "$rounds"); do times+=("$(run_all)"); done
    med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    [[ -z $base ]] && base=$med && base_bytes=$bytes
    n=$(echo $modules | wc -w)
    python3 -c "print(f'| $c | $bytes | {$bytes/$base_bytes:.2f} | {$med/1000:.1f} | {$med/1000/$n:.2f} | {$med/$base:.2f} |')"
    rm -rf "$LTOCACHE_DIR"
done

#!/usr/bin/env bash
# Kernel benchmark for ltocache (issue 5): Linux 7.2's CONFIG_LTO_CLANG_THIN_DIST emulated on
# Debian's linux-source-6.1, x86_64 tinyconfig + 64BIT + LTO_CLANG_THIN + IKCONFIG, LLVM=-19.
#
#   benches/kernel/run.sh                  install, build, backends scenarios (a)-(g), front-end overhead
#   benches/kernel/run.sh backends         only the backend scenarios
#   benches/kernel/run.sh frontend         only the front-end overhead
#
# Environment:
#   JOBS=2                 parallelism of make and of the backends
#   FRONTEND_MODE=subset   subset (touch kernel/*.c, make kernel/, REPS times each), full
#                          (make clean; make vmlinux, once each) or both
#   FRONTEND_DIRS=kernel   directories for the subset mode, comma-separated
#   REPS=3                 repetitions of the subset build
#   SKIP_APT=1             do not run apt-get (the tools are already there)
#
# Everything it builds lives in benches/kernel/work/ (git-ignored), kept between runs:
#   linux-source-6.1/      the tree for the backend scenarios
#   fe-plain/, fe-wrapped/ two trees for the front-end comparison
#   cache/, stats/         LTOCACHE_DIR and LTOCACHE_STATS_DIR (cleared at the start of a run)
#   logs/                  make output and one ltocache log per scenario
#   results-*.json         raw numbers
# Exit status: non-zero if any scenario has extra misses, a hit the ground truth says must miss,
# an object or stderr that differs from a fresh uncached backend, or a relink whose symbols differ.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work="$here/work"
jobs=${JOBS:-2}
what=${1:-all}
tarball=/usr/src/linux-source-6.1.tar.xz

need_pkgs=(linux-source-6.1 clang-19 lld-19 llvm-19 flex bison bc libelf-dev libssl-dev make python3 xz-utils
           cpio)
if [ "${SKIP_APT:-0}" != 1 ]; then
    missing=()
    for p in "${need_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
fi

echo "building ltocache"
ltocache=$(bash "$repo/scripts/build-release.sh")  # the static build README.md installs

mkdir -p "$work"
if [ ! -f "$work/linux-source-6.1/Makefile" ]; then
    echo "unpacking $tarball into $work"
    tar xf "$tarball" -C "$work"
fi

rc=0
if [ "$what" = all ] || [ "$what" = backends ]; then
    python3 "$here/bench.py" backends --work "$work" --ltocache "$ltocache" --jobs "$jobs" || rc=$?
fi
if [ "$what" = all ] || [ "$what" = frontend ]; then
    python3 "$here/bench.py" frontend --work "$work" --ltocache "$ltocache" --jobs "$jobs" \
        --tarball "$tarball" --mode "${FRONTEND_MODE:-subset}" --dirs "${FRONTEND_DIRS:-kernel}" \
        --reps "${REPS:-3}" || rc=$?
fi
exit $rc

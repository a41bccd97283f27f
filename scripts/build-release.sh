#!/usr/bin/env bash
# Builds the release ltocache as a static executable and prints its path.
#
# ltocache runs once per compile, so process start-up is a large part of a hit
# (docs/benchmarks.md, "Hit path"). Measured on the benchmark VM, CPU per hit:
# glibc dynamic 1.2 ms, glibc static 0.85 ms, musl static 0.69 ms — glibc's
# start-up issues dozens of `cpuid` instructions (cache-size detection), each a
# ~5 µs VM exit here; musl's issues none. So: musl when the target can be had
# (rustup + musl-gcc from Debian's musl-tools), else glibc static.
# Both builds are position-dependent (`-C relocation-model=static`): a static
# PIE relocates itself at every start, about 4,300 relocations touching a dozen
# pages; a minimal Rust program starts in 0.10 ms of CPU non-PIE against 0.18 ms
# as a PIE on the benchmark VM. `cargo rustc` passes the flags to the final
# crate and link only, so clap's proc-macro (a host artifact) still builds, and
# the dependencies' position-independent code links into it unchanged.
# Profile `dist` (Cargo.toml): the release profile with fat LTO and one
# codegen unit, for this binary only (the tests keep the faster thin-LTO
# release build). Every page of code a run touches is a page fault, ~2 µs on
# the benchmark VM, and fat LTO packs the hit path's code tighter: 94 faults
# per hit instead of 98, 34 per pass-through instead of 39, and ~10,000
# fewer instructions per hit (docs/benchmarks.md, "Session 6"). It costs
# build time: 3 minutes from scratch, dependencies included, on 2 busy cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# Precise invalidation's helpers (helper/, docs/precise-invalidation.md) go
# beside the binary, one per LLVM whose development files are installed,
# named ltocache-precise-<major>, each with its shim ltocache-precise-<major>.so
# (preloaded into cold compiles to record second keys as a by-product):
# ltocache picks the one mapping the same libLLVM as the job's compiler (a
# clang-19 job the 19 helper, a clang-23 job the 23 one). LLVM_CONFIG names one LLVM; by default Debian's llvm-config-19
# and the PyPI LLVM 23 of scripts/install-llvm23.sh ($LTOCACHE_LLVM23_DIR,
# default ~/.cache/ltocache-llvm23), each when present. Without any, ltocache
# runs with the first key only.
finish() {
    local dir configs config major
    dir="$(dirname "$1")"
    if [ -n "${LLVM_CONFIG:-}" ]; then
        configs=("$LLVM_CONFIG")
    else
        configs=(llvm-config-19 "${LTOCACHE_LLVM23_DIR:-$HOME/.cache/ltocache-llvm23}/bin/llvm-config")
    fi
    # An unversioned helper an older build left would be tried too.
    rm -f "$dir/ltocache-precise" "$dir/ltocache-precise.so"
    for config in "${configs[@]}"; do
        command -v "$config" >/dev/null 2>&1 || continue
        major="$("$config" --version | cut -d. -f1)"
        LLVM_CONFIG="$config" helper/build.sh "$dir/ltocache-precise-$major" >/dev/null ||
            echo "build-release.sh: the precise-mode helper for LLVM $major did not build; its compiler runs without it" >&2
    done
    echo "$1"
}
musl=x86_64-unknown-linux-musl
if [ "$(uname -m)" = x86_64 ] && [ "${LTOCACHE_BUILD_LIBC:-musl}" = musl ]; then
    if ! command -v musl-gcc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1 || true
    fi
    if command -v musl-gcc >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1 &&
        { rustup target list --installed | grep -qx "$musl" || rustup target add "$musl" >/dev/null 2>&1; }; then
        cargo rustc --profile dist --locked -q --target "$musl" --bin ltocache -- -C relocation-model=static
        finish "$PWD/target/$musl/dist/ltocache"
        exit 0
    fi
    echo "build-release.sh: musl target unavailable, building a static glibc executable" >&2
fi
cargo rustc --profile dist --locked -q --bin ltocache -- -C target-feature=+crt-static -C relocation-model=static
finish "$PWD/target/dist/ltocache"

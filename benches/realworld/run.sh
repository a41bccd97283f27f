#!/usr/bin/env bash
# Real-world benchmark of ltocache: distributed ThinLTO builds of zstd, Lua 5.4
# and libgit2 with clang-19 / ld.lld-19, in the scenarios described in
# docs/benchmarks.md. On a fresh Debian 12 machine it installs what it needs.
#
#   benches/realworld/run.sh [--corpus zstd|lua|libgit2]... [--quick] [--repeat N]
#                            [--skip-llvm-cache] [--no-docs] [--remote]
#
# Work files go to benches/realworld/work/ (git-ignored); front-end bitcode is
# kept there between runs. Results are printed and written into
# docs/benchmarks.md (unless --no-docs). Exits non-zero on any miss beyond the
# minimum, any object that differs from an uncached backend, or any ltocache error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK="$HERE/work"
CMDLINE="benches/realworld/run.sh${*:+ $*}"

DOCS="$ROOT/docs/benchmarks.md"
PASS=()
for a in "$@"; do
    if [ "$a" = "--no-docs" ]; then DOCS=""; else PASS+=("$a"); fi
done

say() { printf '[run.sh] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; exit 1; fi
}

# 1. Tools: clang-19, ld.lld-19, llvm-bcanalyzer-19, GNU time, python3, cmp.
missing=()
for tool in clang-19:clang-19 ld.lld-19:lld-19 llvm-bcanalyzer-19:llvm-19 /usr/bin/time:time python3:python3 cmp:diffutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (and clang-19 lld-19 llvm-19)"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y clang-19 lld-19 llvm-19 "${missing[@]}"
fi
command -v cargo >/dev/null || { say "cargo is required (Rust toolchain) to build ltocache"; exit 1; }

# 2. ltocache itself: the static release build README.md installs (a dynamic
# build spends ~1 ms more CPU per invocation in the loader).
say "building ltocache (scripts/build-release.sh)"
LTOCACHE=$(bash "$ROOT/scripts/build-release.sh")

# 3. The C corpora, from crates.io through a throwaway manifest.
mkdir -p "$WORK/fetch/src"
cat > "$WORK/fetch/Cargo.toml" <<'TOML'
[package]
name = "ltocache-realworld-corpora"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
zstd-sys = "=2.0.13"
lua-src = "=547.1.0"
libgit2-sys = "=0.17.0"

[workspace]
TOML
echo 'fn main() {}' > "$WORK/fetch/src/main.rs"
say "fetching the corpora (cargo fetch)"
(cd "$WORK/fetch" && cargo fetch --quiet)
CRATES=$(cd "$WORK/fetch" && cargo metadata --format-version 1 --offline 2>/dev/null | python3 -c '
import json, os, sys
want = {"zstd-sys", "lua-src", "libgit2-sys"}
pk = json.load(sys.stdin)["packages"]
print(json.dumps({p["name"]: os.path.dirname(p["manifest_path"]) for p in pk if p["name"] in want}))')

# 4. The benchmark.
say "running the benchmark"
# --remote: the remote tier's "second machine" benchmark (remote.py) instead.
SCRIPT=bench.py
for a in "$@"; do [ "$a" = "--remote" ] && SCRIPT=remote.py; done
exec python3 "$HERE/$SCRIPT" --ltocache "$LTOCACHE" --work "$WORK" --crates "$CRATES" \
    --command "$CMDLINE" ${DOCS:+--docs "$DOCS"} "${PASS[@]}"

#!/usr/bin/env bash
# The demo: builds Lua 5.4 (C sources from the `lua-src` crate) with distributed
# ThinLTO, running every backend through ltocache, twice; then prints the stats.
# The second build reruns the thin link (which rewrites every shard) and is
# served entirely from the cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
LTOCACHE=$(bash scripts/build-release.sh)
work=${DEMO_WORK:-$root/target/demo}
mkdir -p "$work"

# Fetch the real C sources from crates.io with a throwaway manifest.
fetch=$work/fetch
mkdir -p "$fetch/src"
cat >"$fetch/Cargo.toml" <<'TOML'
[package]
name = "ltocache-demo-fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
lua-src = "547"
TOML
echo 'fn main() {}' >"$fetch/src/main.rs"
(cd "$fetch" && cargo fetch -q)
src=$(cd "$fetch" && cargo metadata --format-version 1 -q |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print([p["manifest_path"] for p in m["packages"] if p["name"]=="lua-src"][0])')
lua=$(dirname "$src")/lua-5.4.7
[[ -d $lua ]] || lua=$(ls -d "$(dirname "$src")"/lua-5.4* | head -1)

build=$work/build
rm -rf "$build"
mkdir -p "$build"
cp "$lua"/*.c "$lua"/*.h "$root/demo/main.c" "$build/"
cd "$build"
export LTOCACHE_DIR=$work/cache
rm -rf "$LTOCACHE_DIR"

echo "== front ends: clang-19 -O2 -flto=thin (through ltocache: passed straight through)"
modules=$(ls *.c | sed 's/\.c$//')
printf '%s\n' $modules | xargs -P2 -I{} "$LTOCACHE" clang-19 -O2 -flto=thin -DLUA_USE_LINUX -c {}.c -o {}.o

backends() {
    # The thin link writes one index shard per module and rewrites all of them every time.
    clang-19 -fuse-ld=lld -flto=thin -Wl,--thinlto-index-only -o lua-demo $(printf '%s.o ' $modules) -lm
    rm -f *.native.o
    local start=$(date +%s.%N)
    printf '%s\n' $modules | xargs -P2 -I{} "$LTOCACHE" clang-19 -O2 -c -fthinlto-index={}.o.thinlto.bc -x ir {}.o -o {}.native.o
    local end=$(date +%s.%N)
    clang-19 -fuse-ld=lld -o lua-demo $(printf '%s.native.o ' $modules) -lm
    echo "   backends: $(python3 -c "print(f'{$end-$start:.2f}')") s; program says: $(./lua-demo)"
}

echo "== build 1: $(echo $modules | wc -w) backends, cold cache"
backends
sha1=$(cat *.native.o | sha256sum)
echo "== build 2: thin link again, same backends, warm cache"
backends
sha2=$(cat *.native.o | sha256sum)
[[ $sha1 == "$sha2" ]] && echo "   objects of build 2 are byte-identical to build 1"
echo
"$LTOCACHE" stats

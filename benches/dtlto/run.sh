#!/usr/bin/env bash
# DTLTO benchmark: lld 23's distributed ThinLTO on zstd, Lua and libgit2 with
# ltocache against its peers (docs/dtlto.md has the table and what it means).
#
#   benches/dtlto/run.sh [--corpus zstd|lua|libgit2]... [--repeat N] [--skip-probes]
#                        [--ltocache-old BIN] [--hardlink] [--ab N] [--work DIR]
#
# --ltocache-old runs a second ltocache binary as wrapper_old/distributor_old
# in the same run; --hardlink adds the distributor with serve_mode = hardlink;
# --ab N ends each corpus with N rounds of alternating warm links and timed
# distributor runs (the side-by-side figures); --work puts the corpora's
# build directories elsewhere (e.g. a tmpfs, see docs/dtlto.md).
#
# LLVM 23 comes from scripts/install-llvm23.sh (kept in a cache directory);
# the corpora from crates.io as in benches/realworld/run.sh. Work files go to
# benches/dtlto/work/ (git-ignored). Exits non-zero when a distributor link
# gives a program that differs from the plain distributor's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK="$HERE/work"
say() { printf '[dtlto run.sh] %s\n' "$*"; }

LLVM23_BIN=$(bash "$ROOT/scripts/install-llvm23.sh")
say "LLVM 23 in $LLVM23_BIN"
say "building ltocache (scripts/build-release.sh)"
LTOCACHE=$(bash "$ROOT/scripts/build-release.sh")

mkdir -p "$WORK/fetch/src"
cat > "$WORK/fetch/Cargo.toml" <<'TOML'
[package]
name = "ltocache-dtlto-corpora"
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

exec python3 "$HERE/dtlto_bench.py" --ltocache "$LTOCACHE" --llvm "$LLVM23_BIN" --work "$WORK" --crates "$CRATES" "$@"

#!/usr/bin/env bash
# Builds target/release/ltocache as a static executable. ltocache runs once per
# compile; without the dynamic loader a front-end pass-through costs ~0.6 ms less
# (measured: docs/benchmarks.md). `cargo rustc` passes the flag to the final link
# only, so clap's proc-macro (a host artifact) still builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --release --locked -q --bin ltocache -- -C target-feature=+crt-static
echo "$PWD/target/release/ltocache"

#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end suite against real clang-19/ld.lld-19.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --release --locked 2>&1

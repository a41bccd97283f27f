#!/usr/bin/env bash
# Builds ltocache-precise against an LLVM's development files and prints its
# path. Usage: helper/build.sh [OUTPUT] — LLVM_CONFIG picks the LLVM
# (default llvm-config-19; the PyPI LLVM 23 venv has bin/llvm-config). It
# must be the LLVM the compiler loads: ltocache checks at run time that both
# map the same libLLVM file, and keys on this binary's digest.
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
cxxflags="$("$llvm_config" --cxxflags | sed 's/-std=[^ ]*//; s/-fno-exceptions//')"
libdir="$("$llvm_config" --libdir)"
rpaths=(-Wl,-rpath,"$libdir")
# An LLVM built against libc++ (the PyPI wheels) needs the helper on the same
# C++ library, found at run time where that LLVM keeps it (not on the
# system's search path).
if [[ " $cxxflags " == *" -stdlib=libc++ "* ]]; then
    libcxx="$("$cxx" $cxxflags -print-file-name=libc++.so)"
    [[ $libcxx == /* ]] && rpaths+=(-Wl,-rpath,"$(cd "$(dirname "$libcxx")" && pwd)")
fi
mkdir -p "$(dirname "$out")"
# Linked against the shared libLLVM (the file clang loads), with its rpath,
# so that the helper maps exactly the library the compiler maps.
"$cxx" -O2 -std=c++17 $cxxflags -fexceptions \
    "$here/ltocache-precise.cpp" -o "$out.tmp.$$" \
    -L"$libdir" "${rpaths[@]}" -lLLVM-"$("$llvm_config" --version | cut -d. -f1)"
mv -f "$out.tmp.$$" "$out"
echo "$out"

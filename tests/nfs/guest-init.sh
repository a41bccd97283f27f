#!/bin/sh
# /init of the NFS test's guests (busybox). Brings up the network that qemu's
# user-mode stack gives (restrict=on: the guest reaches nothing but the ports
# the host forwards to 127.0.0.1), mounts the host's root read-only over
# NFSv4.2 as a toolchain to chroot into (real clang-19, bash, coreutils), mounts
# the shared cache export with the NFS version under test, runs the scenario
# and powers off. Everything it says goes to the serial console.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
stty -echo 2>/dev/null

role=$(sed -n 's/.*ltonfs.role=\([^ ]*\).*/\1/p' /proc/cmdline)
vers=$(sed -n 's/.*ltonfs.vers=\([^ ]*\).*/\1/p' /proc/cmdline)
clock=$(sed -n 's/.*ltonfs.clock=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() { echo "@@FAIL $*"; sync; poweroff -f; }

# The NFSv4 client id and the NLM caller name come from the host name: the
# server sees both guests as 127.0.0.1 (socat), so they must differ.
hostname "client$role"
depmod 2>/dev/null
for m in virtio_pci virtio_net nfsv4 nfsv3; do modprobe "$m" || fail "modprobe $m"; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
# Optional: this guest's clock set minutes off the server's (item 3).
if [ -n "$clock" ]; then date -s "@$(( $(date +%s) + clock ))" >/dev/null; fi

echo "@@BOOTED $(cut -d' ' -f1 /proc/uptime)"
srv=10.0.2.100
mkdir -p /host /root
mount -t nfs4 -o vers=4.2,ro,addr=$srv,clientaddr=10.0.2.15 $srv:/host /host || fail "mount toolchain"
# The chroot: a tmpfs root with the host's /usr and /etc bound in (Debian's
# /bin, /lib, /sbin are links into /usr). The host's own /proc, /dev, /tmp
# are mount points there, which its NFS export cannot stand in for.
mount -t tmpfs -o size=300m root /root || fail "tmpfs"
mkdir -p /root/usr /root/etc /root/proc /root/dev /root/sys /root/run /root/tmp /root/var/lib/nfs
for l in bin lib lib64 sbin; do ln -s usr/$l /root/$l; done
mount --bind /host/usr /root/usr
mount --bind /host/etc /root/etc
mount -t proc proc /root/proc
mount -t devtmpfs dev /root/dev
mount -t sysfs sys /root/sys
mkdir -p /root/tmp/share /root/tmp/local
# A local disk for the latency comparison: the virtio disk's ext4, else tmpfs.
if [ -b /dev/vda ]; then mount -t ext4 /dev/vda /root/tmp/local || fail "mount /dev/vda"; fi
echo "@@TOOLCHAIN $(cut -d' ' -f1 /proc/uptime)"
case "$vers" in
3)
    # NFSv3 locks go through NLM, which needs this host's rpc.statd (and its
    # rpcbind) as on any real client; both come from the host's toolchain.
    mkdir -p /root/var/lib/nfs/sm /root/var/lib/nfs/sm.bak
    chroot /root /usr/sbin/rpcbind -w || fail "rpcbind"
    chroot /root /usr/sbin/rpc.statd --no-notify -n "client$role" || fail "rpc.statd"
    ok=
    for _ in $(seq 1 50); do chroot /root /usr/sbin/rpcinfo -p 127.0.0.1 2>/dev/null | grep -q status && { ok=1; break; }; sleep 0.1; done
    [ -n "$ok" ] || fail "rpc.statd did not register"
    opts="vers=3,proto=tcp,port=2049,mountport=20048,mountproto=tcp,addr=$srv,mountaddr=$srv"
    # NFSv3 has no pseudo root: the export is named by its path on the server.
    path=$(sed -n 's/.*ltonfs.share=\([^ ]*\).*/\1/p' /proc/cmdline)
    mount -t nfs -o "$opts" "$srv:$path" /root/tmp/share || fail "mount share v3"
    ;;
*)
    mount -t nfs4 -o "vers=$vers,addr=$srv,clientaddr=10.0.2.15" $srv:/share /root/tmp/share || fail "mount share v$vers"
    ;;
esac
echo "@@MOUNTED $(cut -d' ' -f1 /proc/uptime) $(grep ' /root/tmp/share ' /proc/mounts)"
chroot /root /bin/bash /tmp/share/harness/scenario.sh "$role" "$vers"
echo "@@EXIT $?"
sync
poweroff -f

# Sourced by tests/nfs/run.sh inside `unshare --net --mount --pid --fork`:
# this shell is PID 1 of its own PID namespace, so every process it starts
# ends with it; the network namespace has only loopback, and mounts made here
# stay here. Arguments: RUN_DIR NFS_VERSION VMLINUZ INITRD.
run=$1 vers=$2 vmlinuz=$3 initrd=$4
mount --make-rprivate /
ip link set lo up
# glibc's getaddrinfo(AI_ADDRCONFIG), which ganesha uses for Bind_addr and
# to reach its statd, finds no IPv4 when the only address is 127.0.0.1 (it
# ignores exactly that one). A second loopback address makes it answer.
ip addr add 127.0.0.2/8 dev lo
# Private runtime directories for rpcbind, statd and ganesha.
mount -t tmpfs run /run
mount -t tmpfs nfs /var/lib/nfs
mkdir -p /run/ganesha /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/ganesha
# statd refuses to monitor (so NLM refuses every lock) a client whose name
# does not resolve; the guests' names resolve to loopback addresses here.
cp /etc/hosts /run/hosts
printf '127.0.0.3 clientA\n127.0.0.4 clientB\n' >>/run/hosts
mount --bind /run/hosts /etc/hosts

cat >"$run/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Bind_addr = 127.0.0.1;
    NFS_Port = 2049;
    MNT_Port = 20048;
    NLM_Port = 32803;
    Enable_RQUOTA = false;
    Protocols = 3, 4;
    # Both guests reach the server from 127.0.0.1 (socat): NLM must tell them apart by name.
    NSM_Use_Caller_Name = true;
}
NFSV4 {
    Graceless = true;
    # How long a dead client's NFSv4 state (its locks) outlives it; ganesha's
    # default is 60 s (measured: 64 s). LTONFS_LEASE shortens it for CI.
    Lease_Lifetime = ${LTONFS_LEASE:-20};
}
EXPORT {
    Export_Id = 1;
    Path = "/";
    Pseudo = "/host";
    Access_Type = RO;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
    FSAL { Name = VFS; }
}
EXPORT {
    Export_Id = 2;
    Path = "$run/share";
    Pseudo = "/share";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL { Name = VFS; }
}
LOG {
    Default_Log_Level = EVENT;
}
EOF

registered() { rpcinfo -p 127.0.0.1 2>/dev/null | grep -q "$1"; }
wait_for() {
    for _ in $(seq 1 100); do "$@" && return 0; sleep 0.1; done
    return 1
}
rpcbind -f -w &
wait_for registered portmapper || { echo "nfs test: rpcbind did not start" >&2; exit 1; }
# statd registers with rpcbind once, at start-up (it exits if rpcbind is not
# listening yet), and ganesha's NLM asks it to monitor every NFSv3 client: a
# missing statd makes every NFSv3 lock fail with ENOLCK.
rpc.statd -F --no-notify &
wait_for registered status || { echo "nfs test: rpc.statd did not register" >&2; exit 1; }
ganesha.nfsd -F -f "$run/ganesha.conf" -L "$run/ganesha.log" -p /run/ganesha/ganesha.pid -N NIV_EVENT &
wait_for eval '(: </dev/tcp/127.0.0.1/2049) 2>/dev/null' ||
    { echo "nfs test: ganesha did not start (see $run/ganesha.log)" >&2; exit 1; }
sleep 1
if grep -q 'nsm_connect' "$run/ganesha.log"; then
    echo "nfs test: ganesha cannot reach rpc.statd (see $run/ganesha.log)" >&2
    exit 1
fi

# One qemu per client. no_timer_check: on a loaded host, TCG can miss the
# kernel's boot-time timer IRQ check, which then panics ("IO-APIC + timer
# doesn't work!", seen here). guestfwd: the guest's 10.0.2.100:PORT is socat to
# 127.0.0.1:PORT (portmapper, NFS, mountd, NLM); restrict=on drops the rest.
declare -A qpid infd
fwd=
for p in 111 2049 20048 32803; do fwd+=",guestfwd=tcp:10.0.2.100:$p-cmd:socat - TCP:127.0.0.1:$p"; done
for g in A B; do
    mkfifo "$run/$g.in" "$run/$g.out"
    cat "$run/$g.out" >"$run/$g.log" &
    exec {fd}<>"$run/$g.in"
    infd[$g]=$fd
    exec {fo}<>"$run/$g.out" # keeps the reader's end from seeing EOF before qemu opens it
    qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -no-reboot -display none -monitor none \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 loglevel=4 panic=-1 no_timer_check ltonfs.role=$g ltonfs.vers=$vers ltonfs.share=$run/share" \
        -netdev "user,id=n0,restrict=on$fwd" -device virtio-net-pci,netdev=n0 \
        -drive "file=$run/$g.disk,format=raw,if=virtio" \
        -chardev "pipe,id=con,path=$run/$g" -serial chardev:con &
    qpid[$g]=$!
done

# Releases both guests from a barrier together (each prints `@@READY name`
# and reads a line); powers B off (SIGKILL to its qemu: no shutdown, no
# flush) two seconds after it says `@@KILLME`; gives up after 20 minutes.
released=() killat=
deadline=$(($(date +%s) + ${LTONFS_TIMEOUT:-1200}))
alive() { kill -0 "${qpid[$1]}" 2>/dev/null; }
last_ready() { tr -d '\r' <"$run/$1.log" | sed -n 's/.*@@READY \([a-z0-9]*\).*/\1/p' | tail -1; }
while alive A || alive B; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "nfs test: NFSv$vers run timed out" >&2
        for g in A B; do alive $g && kill -9 "${qpid[$g]}"; done
        exit 1
    fi
    if [ -z "$killat" ] && alive B && grep -q '@@KILLME' "$run/B.log"; then
        killat=$(($(date +%s) + 2))
    fi
    if [ -n "$killat" ] && [ "$(date +%s)" -ge "$killat" ] && alive B; then
        kill -9 "${qpid[B]}"
        wait "${qpid[B]}" 2>/dev/null || true
        echo "@@R killed_B $(date +%s)" >>"$run/host.log"
    fi
    names=() ok=1
    for g in A B; do
        alive $g || continue
        r=$(last_ready $g)
        [ -n "$r" ] || { ok=0; break; }
        names+=("$r")
    done
    if [ "$ok" = 1 ] && ((${#names[@]})); then
        first=${names[0]}
        for n in "${names[@]}"; do [ "$n" = "$first" ] || ok=0; done
        for r in "${released[@]}"; do [ "$r" = "$first" ] && ok=0; done
        if [ "$ok" = 1 ]; then
            released+=("$first")
            for g in A B; do alive $g && echo go >&"${infd[$g]}"; done
        fi
    fi
    sleep 0.2
done
sleep 0.5
exit 0

#!/bin/bash
# What each NFS client does, inside its chroot of the host's toolchain
# (tests/nfs/run.sh starts two guests, A and B, with this script).
#   /tmp/share   the shared export under test (NFSv4.2 or NFSv3), mounted with defaults
#   /tmp/local   this guest's own disk (ext4 on a virtio disk)
#   /tmp         tmpfs: HOME, build directories
# Results are `@@R <key> <value>` lines on the console; `@@READY <name>` waits
# for the host to release both guests together (it answers `go` on the console).
set -u
role=$1 vers=$2
H=/tmp/share/harness
export HOME=/tmp/home PATH=/usr/bin:/bin:/usr/sbin:/sbin LC_ALL=C
export LTOCACHE_DIR=/tmp/share/cache
unset LTOCACHE_STATS_DIR LTOCACHE_MAXSIZE LTOCACHE_LOGFILE
mkdir -p "$HOME"
MODULES=(blob hash main str util vec)
other=$([ "$role" = A ] && echo B || echo A)

R() { echo "@@R $*"; }
barrier() { R "t_$1" "$(cut -d' ' -f1 /proc/uptime)"; echo; echo "@@READY $1"; read -r _; }
lc() { "$H/ltocache" "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# A stats counter from `stats --json` ("-" when stats fails).
stat_of() {
    local j
    j=$(lc stats --json 2>/dev/null) || { echo -; return; }
    printf '%s' "$j" | tr ',{}' '\n\n\n' | sed -n "s/^ *\"$1\": *\([0-9-]*\).*/\1/p" | head -1
}
# One line of output per failed command, so the host log says what broke.
run() {
    local name=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    # On stderr (the console too): callers may send stdout to /dev/null.
    R "rc_$name" "$rc" >&2
    [ "$rc" = 0 ] || printf '%s\n' "$out" | head -5 | sed "s/^/@@E $name: /" >&2
    printf '%s\n' "$out"
}

# build NAME VARIANT FLAGS...: the six backends of the fixture through
# ltocache with real clang-19 in a fresh local build directory /tmp/NAME;
# reports NAME_mismatch (objects that differ from the ones clang-19 made on
# the host) and NAME_hits (hits in ltocache's log: misses are not logged,
# and the log does not depend on `stats`, which may fail).
build() {
    local name=$1 variant=$2; shift 2
    local dir=/tmp/$name
    rm -rf "$dir"; mkdir -p "$dir"
    cp "$H"/fixture/*.o "$H"/fixture/*.thinlto.bc "$H"/fixture/blob.bin "$dir"/
    local bad=0 m t0
    t0=$(now_ms)
    for m in "${MODULES[@]}"; do
        (cd "$dir" && LTOCACHE_LOGFILE=$dir.log lc clang-19 -O2 -c "-fthinlto-index=$m.o.thinlto.bc" "$@" \
            -x ir "$m.o" -o "$m.final_o") || echo "@@E build $variant $m: exit $?"
        cmp -s "$dir/$m.final_o" "$H/expected/$variant/$m.final_o" || bad=$((bad + 1))
    done
    R "${name}_ms" $(( $(now_ms) - t0 ))
    R "${name}_mismatch" "$bad"
    R "${name}_hits" "$(grep -c ' hit ' "$dir.log" 2>/dev/null || echo 0)"
    grep -v ' hit ' "$dir.log" 2>/dev/null | head -5 | sed "s/^/@@L $name: /"
}

# standin N SIZE: one backend of main.o through ltocache with a deterministic
# stand-in compiler (key computed over the real bitcode and shard; -mllvm
# option N makes N distinct keys) writing SIZE incompressible bytes.
standin() {
    (cd /tmp/sbuild && LTONFS_SIZE=$2 lc "$H/standin" -O2 -c -fthinlto-index=main.o.thinlto.bc \
        -mllvm "-ltonfs-variant=$1" -x ir main.o -o "s.$1.o")
}

R uname "$(uname -r)"
R mount "$(grep ' /tmp/share ' /proc/mounts | cut -d' ' -f3,4)"
R version "$(lc --version 2>&1 | head -1)"
mkdir -p /tmp/sbuild
cp "$H"/fixture/*.o "$H"/fixture/*.thinlto.bc "$H"/fixture/blob.bin /tmp/sbuild/

# 1. Both clients store the same six keys at the same moment.
barrier race
build race base
R race_stats_hits "$(stat_of hits)"
R race_stats_misses "$(stat_of misses)"

# 2. Each stores a variant of its own, then builds the other's: all hits.
barrier own
flags_A=(-ffunction-sections) flags_B=(-fdata-sections)
mine=flags_$role[@] theirs=flags_$other[@]
build own "$role" "${!mine}"
barrier cross
h0=$(stat_of hits)
build cross "$other" "${!theirs}"
h1=$(stat_of hits)
R cross_stats_hits "$([ "$h0" != - ] && [ "$h1" != - ] && echo $((h1 - h0)) || echo -)"

# 3. Every subcommand with default settings (only LTOCACHE_DIR set).
barrier subcommands
run version lc --version >/dev/null
run help lc --help >/dev/null
run config lc config
run stats lc stats
run stats_json lc stats --json >/dev/null
run explain lc explain /tmp/cross/main.final_o
run verify lc verify
run evict lc evict --older-than 7d
run cleanup lc cleanup
run zero_stats lc zero-stats
R after_zero_hits "$(stat_of hits)"

# 4. Both store 300 KiB incompressible outputs under a 2 MiB limit, then both
# run `cleanup` at once: one cleans, the other finds the lock taken.
barrier limit
for n in $(seq 1 12); do
    LTOCACHE_MAXSIZE=2M standin "$role$n" 307200 >/dev/null || echo "@@E standin $n"
done
R limit_log "$(grep -v cleanup: /tmp/standin.log | head -3 | tr '\n' '|')"
barrier cleanup
out=$(LTOCACHE_MAXSIZE=2M lc cleanup 2>&1); R rc_limit_cleanup $?
case "$out" in *"another cleanup is running"*) R cleanup_skipped 1 ;; *) R cleanup_skipped 0 ;; esac
printf '%s\n' "$out"
barrier measure
bytes=$(find "$LTOCACHE_DIR/v1/entries" "$LTOCACHE_DIR/v1/blobs" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
R limit_bytes "$bytes"
R limit_largest "$(find "$LTOCACHE_DIR/v1" -type f -printf '%s\n' | sort -n | tail -1)"

# 5. B is powered off in the middle of stores (the host kills its qemu two
# seconds after @@KILLME) while it holds the cleanup lock, as a cleaner that
# dies mid-cleanup would; A stores meanwhile, then checks the store and
# measures how long the dead client's lock keeps cleanups away.
barrier poweroff
if [ "$role" = B ]; then
    (n=0; while :; do n=$((n + 1)); LTOCACHE_MAXSIZE=2M standin "kill$n" 307200 >/dev/null; done) &
    sleep 3
    # flock(1) takes the same flock(2) lock ltocache's cleanup takes.
    exec flock -w 60 "$LTOCACHE_DIR/v1/cleanup.lock" -c 'echo; echo "@@KILLME"; sleep 1000'
fi
for n in $(seq 1 8); do LTOCACHE_MAXSIZE=2M standin "live$n" 307200 >/dev/null; done
barrier afterkill
run verify_after_kill lc verify
# NFSv4 ends a dead client's locks when its lease expires; NFSv3's NLM keeps
# them until that client reboots: there the wait is cut short.
cap=$([ "$vers" = 3 ] && echo 30000 || echo 240000)
t0=$(now_ms) released=0
while :; do
    out=$(LTOCACHE_MAXSIZE=2M lc cleanup 2>&1)
    case "$out" in *"another cleanup is running"*) ;; *) released=1; break ;; esac
    [ $(( $(now_ms) - t0 )) -gt "$cap" ] && break
    sleep 2
done
R lock_released "$released"
R lock_wait_ms $(( $(now_ms) - t0 ))
printf '%s\n' "$out" | tail -2
build final base
build again base
run stats_final lc stats

# 6. Hit latency on the share against this guest's local disk (ext4 on a
# virtio disk): one backend served 30 times after a warm-up; wall time of each
# hit, median and mean in microseconds. Under TCG everything is many times
# slower than on hardware: compare the rows, not the numbers with a host's.
hits_us() {
    local i t0 t1
    (cd /tmp/again && lc clang-19 -O2 -c -fthinlto-index=main.o.thinlto.bc -x ir main.o -o main.final_o) >/dev/null 2>&1
    for i in $(seq 1 30); do
        t0=$(date +%s%N)
        (cd /tmp/again && lc clang-19 -O2 -c -fthinlto-index=main.o.thinlto.bc -x ir main.o -o main.final_o)
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000 ))
    done | sort -n | awk '{ v[NR] = $1; s += $1 } END { printf "%d %d\n", v[int((NR + 1) / 2)], s / NR }'
}
R hit_us_nfs "$(hits_us)"
R hit_us_nfs_state_on_nfs "$(LTOCACHE_STATS_DIR=/tmp/share/state-$role hits_us)"
R hit_us_local "$(LTOCACHE_DIR=/tmp/local/cache hits_us)"
t0=$(date +%s%N)
for i in 1 2 3; do (cd /tmp/again && clang-19 -O2 -c -fthinlto-index=main.o.thinlto.bc -x ir main.o -o main.final_o); done
R compile_us $(( ($(date +%s%N) - t0) / 3000 ))

run clear lc clear
R after_clear_entries "$(find "$LTOCACHE_DIR/v1/entries" -type f 2>/dev/null | wc -l)"

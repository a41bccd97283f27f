#!/usr/bin/env python3
"""Two ltocache binaries side by side on Lua 5.4 built with distributed ThinLTO
(sources from the `lua-src` crate in ~/.cargo/registry): per binary, the wall
time of a hit (p50, p90), its own CPU per hit and per miss as it counts them
(`ltocache stats --json`), and the wall time of a front-end pass-through. The
binaries alternate command by command, each with its own cache and state
directory, so drift on a shared machine lands on both.

    benches/probes/ab_hit_miss.py OLD_BINARY NEW_BINARY [ROUNDS]

Uses /tmp/ltocache-abhm (rebuilt when missing)."""
import glob, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from abreport import print_table  # noqa: E402

bins = {"old": sys.argv[1], "new": sys.argv[2]}
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
W = "/tmp/ltocache-abhm"
B = f"{W}/build"
CC = "clang-19"


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


if not os.path.exists(f"{B}/lvm.o.thinlto.bc"):
    src = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/lua-src-*/lua-5.4*")))
    if not src:
        sys.exit("no lua-src sources in ~/.cargo/registry (cargo fetch a manifest depending on lua-src)")
    shutil.rmtree(W, ignore_errors=True)
    os.makedirs(B)
    for f in glob.glob(src[-1] + "/*.[ch]"):
        shutil.copy(f, B)
    for f in ("lua.c", "luac.c", "onelua.c"):
        if os.path.exists(f"{B}/{f}"):
            os.remove(f"{B}/{f}")
    objs = []
    for c in sorted(glob.glob(f"{B}/*.c")):
        o = os.path.basename(c)[:-2] + ".o"
        sh([CC, "-O2", "-flto=thin", "-c", os.path.basename(c), "-o", o], cwd=B)
        objs.append(o)
    sh([CC, "-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-shared", "-o", "liblua.so"] + objs, cwd=B)
mods = sorted(os.path.basename(p)[: -len(".o.thinlto.bc")] for p in glob.glob(f"{B}/*.o.thinlto.bc"))


def env(t, **extra):
    return dict(os.environ, LTOCACHE_DIR=f"{W}/{t}/cache", LTOCACHE_STATS_DIR=f"{W}/{t}/state",
                LTOCACHE_LOGFILE=f"{W}/{t}/log", **extra)


def backend(t, m):
    return [bins[t], CC, "-O2", "-fPIC", "-c", f"-fthinlto-index={m}.o.thinlto.bc", "-x", "ir", f"{m}.o",
            "-o", f"out-{t}/{m}.native.o"]


def stats(t):
    return json.loads(sh([bins[t], "stats", "--json"], env=env(t)).stdout)


for t in bins:
    shutil.rmtree(f"{W}/{t}", ignore_errors=True)
    os.makedirs(f"{B}/out-{t}", exist_ok=True)
    sh(backend(t, mods[0]), cwd=B, env=env(t))  # the compiler's identity, the driver's answer
    sh([bins[t], "zero-stats"], env=env(t))

# Misses: every module once per binary (recache: each one compiles and stores).
for i, m in enumerate(mods):
    for t in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
        sh(backend(t, m), cwd=B, env=env(t, LTOCACHE_RECACHE="1"))
miss = {t: stats(t) for t in bins}
for t in bins:
    sh([bins[t], "zero-stats"], env=env(t))

# Hits and pass-throughs, alternating.
fe = ["-c", "-O2", "-Wall", "-I", "include", "-D", "X=1", "lvm.c", "-o", "/dev/null"]
wall = {(t, k): [] for t in bins for k in ("hit", "pass")}
for r in range(rounds):
    for i, m in enumerate(mods):
        for t in (["old", "new"] if (i + r) % 2 == 0 else ["new", "old"]):
            t0 = time.perf_counter()
            sh(backend(t, m), cwd=B, env=env(t))
            wall[(t, "hit")].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([bins[t], "/bin/true"] + fe, cwd=B, env=env(t))
            wall[(t, "pass")].append(time.perf_counter() - t0)
hit = {t: stats(t) for t in bins}
print(f"Lua 5.4, {len(mods)} modules; misses: each module once per binary; hits: {rounds} rounds.")
print_table(bins, wall, hit, miss, compiler_share=True)

#!/usr/bin/env python3
"""Own CPU per cold miss of two ltocache binaries, side by side: the same
libgit2 modules, binaries alternating, each with its own cache and state
directory, each binary's CPU as it counts it (`ltocache stats --json`).

    benches/probes/ab_own_cpu.py OLD_BINARY NEW_BINARY [MODULES]

Runs on the libgit2 corpus that `benches/realworld/run.sh --corpus libgit2`
prepares; uses /tmp/ltocache-ab."""
import glob, json, os, shutil, subprocess, sys

W = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "realworld", "work", "libgit2")
bins = {"old": sys.argv[1], "new": sys.argv[2]}
n = int(sys.argv[3]) if len(sys.argv) > 3 else 70
S = "/tmp/ltocache-ab"
objs = sorted(p[len(W) + 5:-len(".thinlto.bc")] for p in glob.glob(W + "/lto/**/*.o.thinlto.bc", recursive=True))
if not objs:
    sys.exit("no libgit2 corpus: run benches/realworld/run.sh --corpus libgit2 first")
sample = objs[::max(1, len(objs) // n)][:n]


def env(t):
    return dict(os.environ, LTOCACHE_DIR=f"{S}/{t}/cache", LTOCACHE_STATS_DIR=f"{S}/{t}/state",
                LTOCACHE_LOGFILE=f"{S}/{t}/log")


def run(t, o):
    os.makedirs(os.path.dirname(f"{W}/out/ab/{t}/{o}"), exist_ok=True)
    subprocess.run([bins[t], "clang-19", "-O2", "-fPIC", "-c", f"-fthinlto-index=lto/{o}.thinlto.bc", "-x", "ir",
                    f"lto/{o}", "-o", f"out/ab/{t}/{o}"], cwd=W, env=env(t), check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


shutil.rmtree(S, ignore_errors=True)
for t in bins:  # the compiler's identity, then counters from zero
    run(t, objs[-1])
    subprocess.run([bins[t], "zero-stats"], env=env(t), check=True, stdout=subprocess.PIPE)
for i, o in enumerate(sample):
    for t in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
        run(t, o)
for t in bins:
    s = json.loads(subprocess.run([bins[t], "stats", "--json"], env=env(t), check=True,
                                  stdout=subprocess.PIPE).stdout)
    m, own, comp = s["misses"], s["own_cpu_seconds_on_misses"], s["compiler_cpu_seconds_on_misses"]
    print(f"{t}: {m} misses, own {own / m * 1e3:.3f} ms per miss, {100 * own / comp:.2f} % of the compiler's CPU")

#!/usr/bin/env python3
"""Cold misses in pairs, plain clang-19 against ltocache, alternating which runs
first, each side's CPU from RUSAGE_CHILDREN: the realworld benchmark's paired
measurement, optionally with both sides pinned to one CPU (`taskset -c CPU`),
to tell ltocache's own cost from where the scheduler puts clang.

    benches/probes/paired_pin.py LTOCACHE_BINARY [PAIRS] [CPU]

Runs on the libgit2 corpus that `benches/realworld/run.sh --corpus libgit2`
prepares; uses /tmp/ltocache-paired for its cache and state."""
import glob, os, resource, shutil, statistics, subprocess, sys, time

W = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "realworld", "work", "libgit2")
LT = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 30
pin = sys.argv[3] if len(sys.argv) > 3 else ""
S = "/tmp/ltocache-paired"
objs = sorted(p[len(W) + 5:-len(".thinlto.bc")] for p in glob.glob(W + "/lto/**/*.o.thinlto.bc", recursive=True))
if not objs:
    sys.exit("no libgit2 corpus: run benches/realworld/run.sh --corpus libgit2 first")
sample = objs[::max(1, len(objs) // n)][:n]
env = dict(os.environ, LTOCACHE_DIR=f"{S}/cache", LTOCACHE_STATS_DIR=f"{S}/state", LTOCACHE_LOGFILE=f"{S}/log")
pre = ["taskset", "-c", pin] if pin else []


def argv(o):
    os.makedirs(os.path.dirname(f"{W}/out/paired_pin/{o}"), exist_ok=True)
    return ["clang-19", "-O2", "-fPIC", "-c", f"-fthinlto-index=lto/{o}.thinlto.bc", "-x", "ir", f"lto/{o}",
            "-o", f"out/paired_pin/{o}"]


def measure(a, e):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(pre + a, cwd=W, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


shutil.rmtree(S, ignore_errors=True)
subprocess.run([LT] + argv(objs[-1]), cwd=W, env=env, check=True)  # the compiler's identity, once
deltas, plain, cached = [], 0.0, 0.0
for rep in range(2):
    shutil.rmtree(f"{S}/cache", ignore_errors=True)
    for i, o in enumerate(sample):
        if (i + rep) % 2 == 0:
            p = measure(argv(o), None)
            c = measure([LT] + argv(o), env)
        else:
            c = measure([LT] + argv(o), env)
            p = measure(argv(o), None)
        deltas.append((c - p) * 1000)
        plain, cached = plain + p, cached + c
print(f"pin={pin or 'none'} pairs={len(deltas)} plain {plain:.2f} s, ltocache {cached:.2f} s "
      f"({(cached / plain - 1) * 100:+.2f} %), median {statistics.median(deltas):+.2f} ms per miss")

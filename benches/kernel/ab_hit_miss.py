#!/usr/bin/env python3
"""Two ltocache binaries side by side on the kernel's backends (issue 11: the
hit path must not get slower than the noise): per binary, hit p50/p90 of the
whole process, its own CPU per hit and per miss as it counts them (`stats
--json`), and the wall time of a kbuild front-end compile passed through
(`ltocache /bin/true <that file's c_flags>`). The binaries alternate command by
command, each with its own cache and state directory, so drift on a shared
machine lands on both.

    ab_hit_miss.py OLD_BINARY NEW_BINARY KERNEL_ROOT [--rounds 3] [--sample 120] [--work DIR]

KERNEL_ROOT: a 6.1 tree after bench.py's thin link (verify_pass.py reads the
same). The tree is only read; objects go under --work. Misses: a sample of
the backends once per binary (LTOCACHE_RECACHE=1); hits: that sample
--rounds times.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BACKEND_FLAGS, CC  # noqa: E402
from verify_pass import backends  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "probes"))
from abreport import print_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("root")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=120)
    ap.add_argument("--work", default="/tmp/ltocache-kab")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    bins = {"old": os.path.abspath(a.old), "new": os.path.abspath(a.new)}
    shutil.rmtree(a.work, ignore_errors=True)
    items = backends(root)
    random.Random(1).shuffle(items)
    items = sorted(items[: a.sample])

    def env(t, **extra):
        e = dict(os.environ, LTOCACHE_DIR=f"{a.work}/{t}/cache", LTOCACHE_STATS_DIR=f"{a.work}/{t}/state", **extra)
        for k in ("LTOCACHE_VERIFY", "LTOCACHE_RECACHE"):
            if k not in extra:
                e.pop(k, None)
        return e

    def backend(t, obj, flags):
        o = f"{a.work}/{t}/out/{obj.replace('/', '_')}.native.o"
        return [bins[t], CC, *flags, *BACKEND_FLAGS, f"-fthinlto-index={obj}.thinlto.bc", "-c", "-o", o, obj]

    def sh(argv, e):
        p = subprocess.run(argv, cwd=root, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode:
            sys.exit(f"failed: {' '.join(argv[:3])}…: {p.stderr[-300:]!r}")

    def stats(t):
        p = subprocess.run([bins[t], "stats", "--json"], env=env(t), capture_output=True, text=True, check=True)
        return json.loads(p.stdout)

    for t in bins:
        os.makedirs(f"{a.work}/{t}/out")
        sh(backend(t, *items[0]), env(t))  # the compiler's identity, the driver's answer
        subprocess.run([bins[t], "zero-stats"], env=env(t), check=True, capture_output=True)
    for i, (obj, flags) in enumerate(items):
        for t in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
            sh(backend(t, obj, flags), env(t, LTOCACHE_RECACHE="1"))
    miss = {t: stats(t) for t in bins}
    for t in bins:
        subprocess.run([bins[t], "zero-stats"], env=env(t), check=True, capture_output=True)
    wall = {(t, k): [] for t in bins for k in ("hit", "pass")}
    for r in range(a.rounds):
        for i, (obj, flags) in enumerate(items):
            src = obj[:-2] + ".c"
            fe = [*flags, "-c", "-o", "/dev/null", src]
            for t in (["old", "new"] if (i + r) % 2 == 0 else ["new", "old"]):
                t0 = time.perf_counter()
                sh(backend(t, obj, flags), env(t))
                wall[(t, "hit")].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run([bins[t], "/bin/true", *fe], cwd=root, env=env(t))
                wall[(t, "pass")].append(time.perf_counter() - t0)
    hit = {t: stats(t) for t in bins}
    print(f"kernel tinyconfig, {len(items)} backends; misses: each once per binary; hits: {a.rounds} rounds.")
    print_table(bins, wall, hit, miss)


if __name__ == "__main__":
    main()

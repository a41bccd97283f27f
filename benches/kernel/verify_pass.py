#!/usr/bin/env python3
"""Sampled verification on a real kernel (issue 11, item 9): every backend of a
built tree once through ltocache into a fresh cache (cold), then again with
LTOCACHE_VERIFY=1 (every hit recompiled and compared byte for byte), and the
second pass's `ltocache stats --json` printed. stale_detected must be 0.

    verify_pass.py LTOCACHE_BIN KERNEL_ROOT [--jobs 2] [--work /tmp/kverify]

KERNEL_ROOT is a 6.1 tree after bench.py's thin link (X.o bitcode beside
X.o.thinlto.bc). The tree is only read: objects go under --work, so a tree
another run owns can be used. Backend command as bench.py builds it: the saved
c_flags of `.X.o.cmd` + BACKEND_FLAGS + -fthinlto-index=X.o.thinlto.bc.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BACKEND_FLAGS, CC  # noqa: E402  one definition of the backend command


def backends(root):
    """(object, c_flags) for every X.o that has an X.o.thinlto.bc and a kbuild command file."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".o.thinlto.bc"):
                continue
            obj = os.path.relpath(os.path.join(d, f[: -len(".thinlto.bc")]), root)
            od, ob = os.path.split(obj)
            cmd = os.path.join(root, od, f".{ob}.cmd")
            try:
                with open(os.path.join(root, obj), "rb") as fh:
                    if fh.read(4) != b"BC\xc0\xde":
                        continue
                with open(cmd) as fh:
                    line = fh.readline().rstrip("\n")
            except FileNotFoundError:
                continue
            argv = shlex.split(line.split(" := ", 1)[1])
            if argv[0] != CC or argv[-4:-1] != ["-c", "-o", obj]:
                sys.exit(f"{obj}: unexpected command in {cmd}")
            out.append((obj, argv[1:-4]))
    return sorted(out)


def run(items, root, outdir, env, jobs):
    def one(item):
        obj, flags = item
        o = os.path.join(outdir, obj.replace("/", "_") + ".native.o")
        argv = [env["LTOCACHE_BIN"], CC, *flags, *BACKEND_FLAGS, f"-fthinlto-index={obj}.thinlto.bc", "-c", "-o", o, obj]
        p = subprocess.run(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return obj, p.returncode, p.stderr
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(jobs) as ex:
        failed = [(o, rc, e[-300:]) for o, rc, e in ex.map(one, items) if rc != 0]
    return time.perf_counter() - t0, failed


def stats(env):
    p = subprocess.run([env["LTOCACHE_BIN"], "stats", "--json"], env=env, capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ltocache")
    ap.add_argument("root")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="/tmp/kverify")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    shutil.rmtree(a.work, ignore_errors=True)
    outdir = os.path.join(a.work, "out")
    os.makedirs(outdir)
    env = dict(os.environ, LTOCACHE_BIN=os.path.abspath(a.ltocache),
               LTOCACHE_DIR=os.path.join(a.work, "cache"), LTOCACHE_STATS_DIR=os.path.join(a.work, "stats"))
    env.pop("LTOCACHE_VERIFY", None)
    items = backends(root)
    print(f"{len(items)} backends, -j{a.jobs}", flush=True)
    wall, failed = run(items, root, outdir, env, a.jobs)
    cold = stats(env)
    print(f"cold pass: {wall:.1f} s, {len(failed)} failed", flush=True)
    subprocess.run([env["LTOCACHE_BIN"], "zero-stats"], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env["LTOCACHE_VERIFY"] = "1"
    wall2, failed2 = run(items, root, outdir, env, a.jobs)
    warm = stats(env)
    print(f"verify pass (LTOCACHE_VERIFY=1): {wall2:.1f} s, {len(failed2)} failed", flush=True)
    for f in failed + failed2:
        print("FAILED", *f)
    print(json.dumps({"backends": len(items), "cold": cold, "verify": warm}, indent=1))
    return 0 if not failed and not failed2 and warm.get("stale_detected", -1) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Whole-process latency of a hit and of a front-end pass-through, interleaved
with plain process spawns in one loop so the ratios are taken side by side.
Uses the Lua build the demo prepares (demo/run.sh).

Usage: python3 benches/hit_latency.py [runs] [module] [old-binary]

With an old binary (e.g. a release build of an earlier commit in its own
target directory), its hit and pass-through are timed in the same loop, each
against its own cache and state directory, so the two compare side by side.
"""
import os, subprocess, sys, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 400
module = sys.argv[2] if len(sys.argv) > 2 else "lvm"
build = os.path.join(root, "target/demo/build")
if not os.path.exists(os.path.join(build, f"{module}.o.thinlto.bc")):
    subprocess.run(["bash", os.path.join(root, "demo/run.sh")], check=True, stdout=subprocess.DEVNULL)
L = subprocess.run(["bash", os.path.join(root, "scripts/build-release.sh")], check=True,
                   capture_output=True, text=True).stdout.strip()
old = sys.argv[3] if len(sys.argv) > 3 else None
os.environ["LTOCACHE_DIR"] = os.path.join(root, "target/demo/cache")
os.chdir(build)
backend = ["clang-19", "-O2", "-c", f"-fthinlto-index={module}.o.thinlto.bc", "-x", "ir", f"{module}.o", "-o", f"{module}.native.o"]
hit = [L] + backend
subprocess.run(hit, check=True)  # make sure it is stored
fe = ["-c", "-O2", "-Wall", "-I", "include", "-D", "X=1", f"{module}.c", "-o", "/dev/null"]
cmds = {
    f"`ltocache clang-19 … {module}.o` (a hit)": hit,
    "`/bin/true` (what spawning anything costs here)": ["/bin/true"],
    "`ltocache /bin/true <front-end args>` (pass-through)": [L, "/bin/true"] + fe,
    "`env /bin/true <same args>` (any dynamic wrapper)": ["env", "/bin/true"] + fe,
}
envs = {}
if old:
    old_env = dict(os.environ, LTOCACHE_DIR=os.path.join(root, "target/demo/cache-old"))
    subprocess.run([old] + backend, check=True, env=old_env, stderr=subprocess.DEVNULL)
    cmds["old binary: a hit"] = [old] + backend
    cmds["old binary: pass-through"] = [old, "/bin/true"] + fe
    envs = {"old binary: a hit": old_env, "old binary: pass-through": old_env}
times = {k: [] for k in cmds}
for _ in range(runs):
    for k, c in cmds.items():
        t = time.perf_counter()
        subprocess.run(c, env=envs.get(k))
        times[k].append(time.perf_counter() - t)
print("| command | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|")
for k, v in times.items():
    v.sort()
    print(f"| {k} | {v[len(v)//2]*1e3:.2f} | {v[int(len(v)*.9)]*1e3:.2f} | {v[int(len(v)*.99)]*1e3:.2f} |")

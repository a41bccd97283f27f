#!/usr/bin/env python3
"""Load test: N concurrent ltocache invocations for a fixed time on a warm
cache whose size limit forces eviction while it runs, on the real Lua 5.4
corpus the demo prepares. Reports throughput, hit latency percentiles, errors.

Usage: python3 benches/store/load.py [--workers 16] [--seconds 300] [--limit-fraction 0.6]
"""
import argparse, json, os, random, subprocess, sys, tempfile, threading, time

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap = argparse.ArgumentParser()
ap.add_argument("--workers", type=int, default=16)
ap.add_argument("--seconds", type=float, default=300)
ap.add_argument("--limit-fraction", type=float, default=0.6,
                help="size limit as a fraction of the full working set (forces eviction)")
a = ap.parse_args()

build = os.path.join(root, "target/demo/build")
if not os.path.exists(os.path.join(build, "lvm.o.thinlto.bc")):
    subprocess.run(["bash", os.path.join(root, "demo/run.sh")], check=True, stdout=subprocess.DEVNULL)
L = subprocess.run(["bash", os.path.join(root, "scripts/build-release.sh")], check=True,
                   capture_output=True, text=True).stdout.strip()
modules = sorted(f[:-len(".o.thinlto.bc")] for f in os.listdir(build) if f.endswith(".o.thinlto.bc"))
variants = [[], ["-O1"], ["-fno-PIE"], ["-ffunction-sections"]]
cache = tempfile.mkdtemp(prefix="ltocache-load-")
out_dir = tempfile.mkdtemp(prefix="ltocache-load-out-")
env = dict(os.environ, LTOCACHE_DIR=cache, LTOCACHE_LOGFILE=os.path.join(cache, "log"))

def cmd(m, v, out):
    return [L, "clang-19", "-O2", "-c", f"-fthinlto-index={m}.o.thinlto.bc", *v, "-x", "ir", f"{m}.o", "-o", out]

# Warm the cache with half the working set; size the limit to a fraction of
# the whole, so the other half's misses store, overflow it and evict.
for v in variants[:2]:
    for m in modules:
        subprocess.run(cmd(m, v, os.path.join(out_dir, "warm.o")), cwd=build, env=env, check=True)
js = json.loads(subprocess.run([L, "stats", "--json"], env=env, capture_output=True, text=True).stdout)
limit = int(2 * js["cache_size_bytes"] * a.limit_fraction)
env["LTOCACHE_MAXSIZE"] = str(limit)
subprocess.run([L, "zero-stats"], env=env, check=True, stdout=subprocess.DEVNULL)
os.remove(env["LTOCACHE_LOGFILE"])

results = []  # (output path, seconds, returncode)
lock = threading.Lock()
deadline = time.monotonic() + a.seconds

def worker(w):
    rng = random.Random(w)
    n = 0
    while time.monotonic() < deadline:
        m, v = rng.choice(modules), rng.choice(variants)
        out = os.path.join(out_dir, f"w{w}.{n}.o")
        n += 1
        t = time.perf_counter()
        r = subprocess.run(cmd(m, v, out), cwd=build, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dt = time.perf_counter() - t
        with lock:
            results.append((out, dt, r.returncode))
        os.remove(out) if os.path.exists(out) else None

threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.workers)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - start

hits = set()
with open(env["LTOCACHE_LOGFILE"]) as f:
    for line in f:
        parts = line.split()
        if len(parts) >= 5 and parts[2] == "hit":
            hits.add(parts[4])
hit_lat = sorted(dt for out, dt, rc in results if out in hits)
fails = [r for r in results if r[2] != 0]
js = json.loads(subprocess.run([L, "stats", "--json"], env=env, capture_output=True, text=True).stdout)
pct = lambda xs, p: xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")
print(f"| workers | seconds | invocations | per second | hits | misses | hit p50 ms | hit p99 ms | failed | errors | cleanups | size / limit |")
print(f"|---|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {a.workers} | {elapsed:.0f} | {len(results)} | {len(results)/elapsed:.1f} | {js['hits']} | {js['misses']} | "
      f"{pct(hit_lat, .5):.2f} | {pct(hit_lat, .99):.2f} | {len(fails)} | {js['errors_total']} | {js['cleanups']} | "
      f"{js['cache_size_bytes']} / {limit} |")
v = subprocess.run([L, "verify"], env=env, capture_output=True, text=True)
print("verify:", v.stdout.strip().splitlines()[0], "(exit", v.returncode, ")")
sys.exit(1 if fails or js["errors_total"] or v.returncode else 0)

#!/usr/bin/env python3
"""Warm links only, many rounds, modes alternating (docs/benchmarks.md, "DTLTO warm
path, session 7"): the warm-link medians of run.sh --ab with more rounds and
fewer modes, to tell two binaries apart on a shared machine.

    benches/dtlto/warm_ab.py --work DIR [--corpus libgit2] [--rounds 25] NAME=MODE[:BINARY]...
    e.g. lldcache=lldcache old=distributor:/tmp/old/ltocache new=distributor:target/.../ltocache

MODE is one of dtlto_bench.py's (lldcache, distributor, wrapper, ...); each
NAME gets its own cache under DIR/caches-ab/NAME (warmed by two links first).
Needs run.sh's corpora fetched (benches/dtlto/work/fetch) and LLVM 23
(scripts/install-llvm23.sh). Prints, per NAME, the median warm link wall and
CPU (the link's process tree) with their ratios to the first NAME, and the
median distributor run (timed.py) for the modes that start one."""
import argparse, json, os, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dtlto_bench as d  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--work", required=True)
ap.add_argument("--corpus", default="libgit2")
ap.add_argument("--rounds", type=int, default=25)
ap.add_argument("variants", nargs="+")
a = ap.parse_args()
llvm = subprocess.run(["bash", os.path.join(d.ROOT, "scripts/install-llvm23.sh")], check=True,
                      stdout=subprocess.PIPE, text=True).stdout.strip()
meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--offline"], cwd=os.path.join(HERE, "work/fetch"),
                      check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
crates = {p["name"]: os.path.dirname(p["manifest_path"]) for p in json.loads(meta)["packages"]}
rw = d.load_realworld()
rw.CLANG = os.path.join(llvm, "clang")
rw.JOBS = d.JOBS
cls = rw.CORPORA[a.corpus]
corpus = cls(crates[cls.crate])
variants = []
for v in a.variants:
    name, spec = v.split("=", 1)
    mode, _, binary = spec.partition(":")
    variants.append((name, mode, binary or None))
build = rw.Build(corpus, a.work, variants[0][2] or "ltocache")
build.prepare()


def link(name, mode, binary, timing=None):
    linker = d.Linker(llvm, binary or "ltocache")
    outdir = os.path.join("out", name)
    os.makedirs(build.p(outdir), exist_ok=True)
    base = [linker.clang, *corpus.link_flags, "-O2", "-flto=thin", "-fuse-ld=lld", *build.lto_objs(),
            "-o", os.path.join(outdir, corpus.product), *corpus.libs]
    cache = os.path.join(a.work, "caches-ab", name)
    os.makedirs(cache, exist_ok=True)
    return linker.link(mode, base, cache, build.dir, timing)


for v in variants:
    link(*v)
    link(*v)
res = {v[0]: [] for v in variants}
timed = [v for v in variants if v[1] not in ("lldcache", "inproc")]
logs = {v[0]: os.path.join(a.work, "caches-ab", v[0] + ".timing") for v in timed}
for p in logs.values():
    if os.path.exists(p):
        os.unlink(p)
load0 = os.getloadavg()[0]
for _ in range(a.rounds):
    for v in variants:
        res[v[0]].append(link(*v))
for _ in range(a.rounds):
    for v in timed:
        link(*v, timing=logs[v[0]])
print(f"{a.corpus} in {a.work}: {a.rounds} alternating rounds, {time.strftime('%H:%M UTC', time.gmtime())}, "
      f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
ref_w = statistics.median(x[0] for x in res[variants[0][0]])
ref_c = statistics.median(x[1] for x in res[variants[0][0]])
for name, mode, _ in variants:
    w = statistics.median(x[0] for x in res[name])
    c = statistics.median(x[1] for x in res[name])
    line = f"{name:16} warm link wall {w * 1e3:7.1f} ms CPU {c * 1e3:6.1f} ms ({w / ref_w:.2f}x / {c / ref_c:.2f}x)"
    if name in logs:
        t = [tuple(map(float, l.split())) for l in open(logs[name])]
        line += (f"; distributor run wall {statistics.median(x[0] for x in t) * 1e3:6.1f} ms "
                 f"CPU {statistics.median(x[1] for x in t) * 1e3:5.1f} ms")
    print(line)

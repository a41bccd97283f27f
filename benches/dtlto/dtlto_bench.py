#!/usr/bin/env python3
"""DTLTO benchmark (driven by run.sh): lld 23 links zstd, Lua and libgit2 with
distributed ThinLTO in five ways, cold, warm and after a one-function change,
and the stale probes run on the test fixture. Standard library only; the
corpora and their front ends come from benches/realworld/bench.py.

Modes (all with clang 23's lld, 2 parallel backends):
  inproc       in-process ThinLTO with --thinlto-cache-dir (LLVM's own cache)
  lldcache     DTLTO with --thinlto-cache-dir: lld's cache; on a full hit lld
               does not start the distributor
  plain        DTLTO through plain_distributor.py, no cache
  wrapper      plain_distributor.py running `ltocache clang …` per job
  distributor  -fthinlto-distributor=ltocache
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLAIN = os.path.join(HERE, "plain_distributor.py")
TIMED = os.path.join(HERE, "timed.py")
MODES = ["inproc", "lldcache", "plain", "wrapper", "distributor"]
JOBS = 2


def load_realworld():
    spec = importlib.util.spec_from_file_location("rw_bench", os.path.join(ROOT, "benches/realworld/bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def log(msg):
    print(f"[dtlto {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Linker:
    def __init__(self, llvm_bin, ltocache):
        self.clang = os.path.join(llvm_bin, "clang")
        self.ltocache = ltocache

    def argv_env(self, mode, base, cache, timing_log=None):
        argv = list(base)
        env = dict(os.environ)
        env.pop("MAKEFLAGS", None)
        env.pop("MFLAGS", None)

        def distributor(prog):
            if timing_log:
                env["DTLTO_TIMING_LOG"] = timing_log
                return [f"-fthinlto-distributor={TIMED}", f"-Xthinlto-distributor={prog}"]
            return [f"-fthinlto-distributor={prog}"]

        if mode == "inproc":
            argv += [f"-Wl,--thinlto-cache-dir={cache}", f"-Wl,--thinlto-jobs={JOBS}"]
        elif mode == "lldcache":
            argv += distributor(PLAIN) + [f"-Wl,--thinlto-cache-dir={cache}"]
        elif mode == "plain":
            argv += distributor(PLAIN)
        elif mode == "wrapper":
            argv += distributor(PLAIN) + [f"-Wl,--thinlto-remote-compiler={self.ltocache}",
                                          f"-Wl,--thinlto-remote-compiler-prepend-arg={self.clang}"]
            env["LTOCACHE_DIR"] = cache
        elif mode == "distributor":
            argv += distributor(self.ltocache)
            env["LTOCACHE_DIR"] = cache
        else:
            raise ValueError(mode)
        for v in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_STATS_DIR"):
            env.pop(v, None)
        return argv, env

    def link(self, mode, base, cache, cwd, timing_log=None):
        """Runs one link; returns (wall s, CPU s of the whole process tree)."""
        argv, env = self.argv_env(mode, base, cache, timing_log)
        t0, c0 = time.perf_counter(), children_cpu()
        p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        c1 = children_cpu()
        if p.returncode != 0:
            raise RuntimeError(f"{mode} link failed ({p.returncode}): {' '.join(argv)}\n{p.stderr[-3000:]}")
        return time.perf_counter() - t0, c1 - c0


def children_cpu():
    """CPU seconds of every waited-for descendant, in microseconds' resolution
    (os.times() counts in 10 ms clock ticks)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sha(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ltocache_stats(ltocache, cache):
    p = subprocess.run([ltocache, "stats", "--json"], env=dict(os.environ, LTOCACHE_DIR=cache),
                       stdout=subprocess.PIPE, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def bench_corpus(rw, linker, corpus, work, repeat):
    b = rw.Build(corpus, work, linker.ltocache)
    fe = b.prepare()
    if fe:
        log(f"{corpus.name}: front ends took {fe:.1f} s")
    caches = b.p("caches")
    res = {"modules": len(b.objs), "modes": {}}
    products = {}

    def base(outdir):
        os.makedirs(b.p(outdir), exist_ok=True)
        return [linker.clang, *corpus.link_flags, "-O2", "-flto=thin", "-fuse-ld=lld", *b.lto_objs(),
                "-o", os.path.join(outdir, corpus.product), *corpus.libs]

    for mode in MODES:
        cache = os.path.join(caches, mode)
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        b.reset_lto_dir()
        outdir = os.path.join("out", mode)
        r = {}
        w, c = linker.link(mode, base(outdir), cache, b.dir)
        r["cold"] = (w, c)
        products[(mode, "cold")] = sha(b.p(outdir, corpus.product))
        log(f"{corpus.name} {mode}: cold {w:.2f} s wall, {c:.2f} s CPU")
        warm = [linker.link(mode, base(outdir), cache, b.dir) for _ in range(1 if mode == "plain" else repeat)]
        r["warm"] = (statistics.median(x[0] for x in warm), statistics.median(x[1] for x in warm))
        products[(mode, "warm")] = sha(b.p(outdir, corpus.product))
        log(f"{corpus.name} {mode}: warm {r['warm'][0]:.3f} s wall, {r['warm'][1]:.3f} s CPU (median of {len(warm)})")
        b.set_changed(True)
        w, c = linker.link(mode, base(outdir), cache, b.dir)
        r["change"] = (w, c)
        products[(mode, "change")] = sha(b.p(outdir, corpus.product))
        log(f"{corpus.name} {mode}: change {w:.2f} s wall, {c:.2f} s CPU")
        if mode in ("wrapper", "distributor"):
            s = ltocache_stats(linker.ltocache, cache)
            r["stats"] = {k: s.get(k) for k in ("hits", "misses", "uncacheable_total", "errors_total",
                                                 "own_cpu_seconds_on_hits", "own_cpu_seconds_on_misses")}
            r["stats"]["uncacheable"] = s.get("uncacheable")
        # The distributor's own run over the warm jobs (shim-timed), apart
        # from the rest of the link.
        if mode in ("wrapper", "distributor", "plain"):
            b.set_changed(False)
            linker.link(mode, base(outdir), cache, b.dir)  # warm again after the change
            tlog = os.path.join(caches, f"{mode}.timing")
            if os.path.exists(tlog):
                os.unlink(tlog)
            n = 1 if mode == "plain" else repeat
            for _ in range(n):
                linker.link(mode, base(outdir), cache, b.dir, timing_log=tlog)
            runs = [tuple(map(float, line.split())) for line in open(tlog)]
            r["dist_run_warm"] = (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs))
            log(f"{corpus.name} {mode}: distributor run (warm) {r['dist_run_warm'][0]:.3f} s wall, "
                f"{r['dist_run_warm'][1]:.3f} s CPU")
        b.set_changed(False)
        res["modes"][mode] = r

    # Every distributor link must give the plain distributor's program.
    stale = []
    for mode in ("lldcache", "wrapper", "distributor"):
        for state in ("cold", "warm", "change"):
            if products[(mode, state)] != products[("plain", state)]:
                stale.append(f"{mode}/{state}")
    res["differs_from_plain"] = stale
    res["inproc_equals_plain"] = products[("inproc", "cold")] == products[("plain", "cold")]
    return res


# ---------------------------------------------------------------- stale probes

FIXTURE = ["util", "vec", "str", "hash", "blob", "main"]


def stale_probes(linker, work):
    """The fixture of tests/: (1) without module hashes, an imported function's
    constant changes and the importers' shards do not; (2) the `.incbin` file
    changes and no bitcode does. A mode is stale when its link gives another
    program than the plain distributor's."""
    llvm = os.path.dirname(linker.clang)
    out = {}
    for probe in ("no_module_hash", "incbin"):
        d = os.path.join(work, "probe-" + probe)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "tests/fixture"), d)

        def frontend(m):
            if probe == "no_module_hash":
                subprocess.run([linker.clang, "-O2", "-emit-llvm", "-c", f"{m}.c", "-o", f"{m}.nosum.bc"], cwd=d,
                               check=True)
                subprocess.run([os.path.join(llvm, "opt"), "-module-summary", f"{m}.nosum.bc", "-o", f"{m}.o"],
                               cwd=d, check=True)
            else:
                subprocess.run([linker.clang, "-O2", "-flto=thin", "-c", f"{m}.c", "-o", f"{m}.o"], cwd=d, check=True)

        for m in FIXTURE:
            frontend(m)
        base = [linker.clang, "-O2", "-flto=thin", "-fuse-ld=lld", *[f"{m}.o" for m in FIXTURE], "-o", "prog"]
        modes = ["inproc", "lldcache", "wrapper", "distributor", "plain"]
        for mode in modes:
            cache = os.path.join(d, "cache-" + mode)
            os.makedirs(cache, exist_ok=True)
            linker.link(mode, base, cache, d)
        if probe == "no_module_hash":
            path = os.path.join(d, "hash.c")
            text = open(path).read()
            open(path, "w").write(text.replace("2166136261u", "2166136263u", 1))
            frontend("hash")
        else:
            open(os.path.join(d, "blob.bin"), "w").write("ltocache fixture data v2\n")
        results = {}
        for mode in reversed(modes):  # plain first: the reference
            cache = os.path.join(d, "cache-" + mode)
            linker.link(mode, base, cache, d)
            results[mode] = (sha(os.path.join(d, "prog")),
                             subprocess.run([os.path.join(d, "prog")], stdout=subprocess.PIPE, text=True).stdout)
        out[probe] = {m: ("stale" if results[m][0] != results["plain"][0] else "fresh") for m in modes if m != "plain"}
        out[probe]["_outputs"] = {m: results[m][1].strip() for m in modes}
        log(f"stale probe {probe}: {out[probe]}")
    return out


def fmt_table(results):
    lines = ["| corpus | mode | cold wall / CPU (s) | warm wall / CPU (s) | change wall / CPU (s) |",
             "|---|---|---|---|---|"]
    for name, r in results["corpora"].items():
        for mode in MODES:
            m = r["modes"][mode]
            cell = lambda k: f"{m[k][0]:.3f} / {m[k][1]:.3f}"
            lines.append(f"| {name} ({r['modules']}) | {mode} | {cell('cold')} | {cell('warm')} | {cell('change')} |")
    lines.append("")
    lines.append("| corpus | distributor run over the warm jobs | wall (s) | CPU (s) |")
    lines.append("|---|---|---|---|")
    for name, r in results["corpora"].items():
        for mode in ("plain", "wrapper", "distributor"):
            m = r["modes"][mode]
            lines.append(f"| {name} | {mode} | {m['dist_run_warm'][0]:.3f} | {m['dist_run_warm'][1]:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--llvm", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--crates", required=True)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-probes", action="store_true")
    a = ap.parse_args()

    rw = load_realworld()
    linker = Linker(a.llvm, a.ltocache)
    rw.CLANG = linker.clang
    rw.JOBS = JOBS
    crates = json.loads(a.crates)
    os.makedirs(a.work, exist_ok=True)
    version = subprocess.run([linker.clang, "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clang": version,
               "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                        text=True).stdout.strip(),
               "cpus": os.cpu_count(), "corpora": {}}
    # The plain distributor's fixed cost (Python start-up, no jobs).
    with tempfile.TemporaryDirectory() as t:
        jf = os.path.join(t, "empty.dist-file.json")
        open(jf, "w").write('{"common":{"linker_output":"x","args":["true"],"inputs":[]},"jobs":[]}')
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([PLAIN, jf], check=True)
            runs.append(time.perf_counter() - t0)
        results["plain_distributor_startup_s"] = statistics.median(runs)
    names = a.corpus or ["zstd", "lua", "libgit2"]
    for name in names:
        cls = rw.CORPORA[name]
        corpus = cls(crates[cls.crate])
        results["corpora"][name] = bench_corpus(rw, linker, corpus, a.work, a.repeat)
        with open(os.path.join(a.work, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    if not a.skip_probes:
        results["stale_probes"] = stale_probes(linker, a.work)
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(fmt_table(results))
    print(json.dumps({k: v for k, v in results.items() if k != "corpora"}, indent=1))
    bad = {n: r["differs_from_plain"] for n, r in results["corpora"].items() if r["differs_from_plain"]}
    if bad:
        print(f"links that differ from the plain distributor's: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()

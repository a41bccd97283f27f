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
With --ltocache-old, wrapper_old and distributor_old run another ltocache
binary the same ways (side by side in one run); with --hardlink,
distributor_hl is the distributor with `serve_mode = hardlink` (a user
setting: raw blobs, hits hard-linked, no new inode per object). --ab N ends
with N rounds of warm links alternating between the modes, and N timed runs
of each distributor over the warm jobs, for figures taken side by side.

The Python scripts (the plain distributor, the timing shim) run under this
interpreter's own executable, not through `#!/usr/bin/env python3`: a pyenv
shim there costs ~45 ms of CPU in child processes per start, which would
land on the plain distributor's and the shim's accounts.
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
PY = sys.executable


def load_realworld():
    spec = importlib.util.spec_from_file_location("rw_bench", os.path.join(ROOT, "benches/realworld/bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def log(msg):
    print(f"[dtlto {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Linker:
    def __init__(self, llvm_bin, ltocache, ltocache_old=None):
        self.clang = os.path.join(llvm_bin, "clang")
        self.ltocache = ltocache
        self.ltocache_old = ltocache_old

    def binary(self, mode):
        return self.ltocache_old if mode.endswith("_old") else self.ltocache

    def argv_env(self, mode, base, cache, timing_log=None):
        argv = list(base)
        env = dict(os.environ)
        env.pop("MAKEFLAGS", None)
        env.pop("MFLAGS", None)

        def distributor(prog):
            # prog: the distributor's command (a Python script runs under PY).
            prog = [PY, prog] if prog.endswith(".py") else [prog]
            if timing_log:
                env["DTLTO_TIMING_LOG"] = timing_log
                prog = [PY, TIMED, *prog]
            return [f"-fthinlto-distributor={prog[0]}", *[f"-Xthinlto-distributor={a}" for a in prog[1:]]]

        if mode == "inproc":
            argv += [f"-Wl,--thinlto-cache-dir={cache}", f"-Wl,--thinlto-jobs={JOBS}"]
        elif mode == "lldcache":
            argv += distributor(PLAIN) + [f"-Wl,--thinlto-cache-dir={cache}"]
        elif mode == "plain":
            argv += distributor(PLAIN)
        elif mode in ("wrapper", "wrapper_old"):
            argv += distributor(PLAIN) + [f"-Wl,--thinlto-remote-compiler={self.binary(mode)}",
                                          f"-Wl,--thinlto-remote-compiler-prepend-arg={self.clang}"]
            env["LTOCACHE_DIR"] = cache
        elif mode in ("distributor", "distributor_old", "distributor_hl"):
            argv += distributor(self.binary(mode))
            env["LTOCACHE_DIR"] = cache
        else:
            raise ValueError(mode)
        for v in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_STATS_DIR",
                  "LTOCACHE_SERVE_MODE", "LTOCACHE_COMPRESSION"):
            env.pop(v, None)
        if mode == "distributor_hl":
            env["LTOCACHE_SERVE_MODE"] = "hardlink"
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


def bench_corpus(rw, linker, corpus, work, repeat, modes, ab):
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

    for mode in modes:
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
        if linker.binary(mode) and mode not in ("inproc", "lldcache", "plain"):
            s = ltocache_stats(linker.binary(mode), cache)
            r["stats"] = {k: s.get(k) for k in ("hits", "misses", "uncacheable_total", "errors_total",
                                                 "own_cpu_seconds_on_hits", "own_cpu_seconds_on_misses")}
            r["stats"]["uncacheable"] = s.get("uncacheable")
        # The distributor's own run over the warm jobs (shim-timed), apart
        # from the rest of the link.
        if mode not in ("inproc", "lldcache"):
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

    if ab:
        res["ab"] = side_by_side(linker, b, base, caches, [m for m in modes if m not in ("plain", "inproc")], ab,
                                 products, corpus.product)
    # Every distributor link must give the plain distributor's program.
    stale = []
    for mode in [m for m in modes if m not in ("plain", "inproc")]:
        for state in ("cold", "warm", "change", "ab"):
            if (mode, state) in products and products[(mode, state)] != products[("plain", "warm" if state == "ab" else state)]:
                stale.append(f"{mode}/{state}")
    res["differs_from_plain"] = stale
    res["inproc_equals_plain"] = products[("inproc", "cold")] == products[("plain", "cold")]
    return res


def side_by_side(linker, b, base, caches, modes, rounds, products, product):
    """Warm links of every mode in alternation, `rounds` times, then the
    distributors' runs over the warm jobs, alternating too: medians, taken
    under the same load. Also the load average before and after."""
    out = {"load_before": os.getloadavg(), "warm": {}, "dist_run_warm": {}}
    links = {m: [] for m in modes}
    for _ in range(rounds):
        for m in modes:
            outdir = os.path.join("out", m)
            links[m].append(linker.link(m, base(outdir), os.path.join(caches, m), b.dir))
    for m in modes:
        outdir = os.path.join("out", m)
        products[(m, "ab")] = sha(b.p(outdir, product))
        out["warm"][m] = (statistics.median(x[0] for x in links[m]), statistics.median(x[1] for x in links[m]))
    timed = [m for m in modes if m != "lldcache"]
    logs = {m: os.path.join(caches, f"{m}.ab-timing") for m in timed}
    for p in logs.values():
        if os.path.exists(p):
            os.unlink(p)
    for _ in range(rounds):
        for m in timed:
            linker.link(m, base(os.path.join("out", m)), os.path.join(caches, m), b.dir, timing_log=logs[m])
    for m in timed:
        runs = [tuple(map(float, line.split())) for line in open(logs[m])]
        out["dist_run_warm"][m] = (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs))
    out["load_after"] = os.getloadavg()
    for m in modes:
        w = out["warm"][m]
        d = out["dist_run_warm"].get(m)
        log(f"side by side {m}: warm link {w[0]:.3f} s wall, {w[1]:.3f} s CPU"
            + (f"; distributor run {d[0]:.3f} s wall, {d[1]:.3f} s CPU" if d else ""))
    return out


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
        for mode in r["modes"]:
            m = r["modes"][mode]
            cell = lambda k: f"{m[k][0]:.3f} / {m[k][1]:.3f}"
            lines.append(f"| {name} ({r['modules']}) | {mode} | {cell('cold')} | {cell('warm')} | {cell('change')} |")
    lines.append("")
    lines.append("| corpus | distributor run over the warm jobs | wall (s) | CPU (s) |")
    lines.append("|---|---|---|---|")
    for name, r in results["corpora"].items():
        for mode, m in r["modes"].items():
            if "dist_run_warm" in m:
                lines.append(f"| {name} | {mode} | {m['dist_run_warm'][0]:.3f} | {m['dist_run_warm'][1]:.3f} |")
    for name, r in results["corpora"].items():
        if "ab" not in r:
            continue
        ab = r["ab"]
        lines.append("")
        lines.append(f"Side by side, {name}, medians (load average {ab['load_before'][0]:.1f} before, "
                     f"{ab['load_after'][0]:.1f} after):")
        lines.append("")
        lines.append("| mode | warm link wall / CPU (s) | distributor run wall / CPU (s) |")
        lines.append("|---|---|---|")
        for mode, w in ab["warm"].items():
            d = ab["dist_run_warm"].get(mode)
            lines.append(f"| {mode} | {w[0]:.3f} / {w[1]:.3f} | " + (f"{d[0]:.3f} / {d[1]:.3f} |" if d else "— |"))
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
    ap.add_argument("--ltocache-old", help="another ltocache binary, run as wrapper_old and distributor_old")
    ap.add_argument("--hardlink", action="store_true", help="also distributor_hl (serve_mode = hardlink)")
    ap.add_argument("--ab", type=int, default=0, help="rounds of alternating warm links and timed runs at the end")
    a = ap.parse_args()
    modes = list(MODES)
    if a.ltocache_old:
        modes[modes.index("wrapper") + 1:modes.index("wrapper") + 1] = ["wrapper_old"]
        modes.append("distributor_old")
    if a.hardlink:
        modes.append("distributor_hl")

    rw = load_realworld()
    linker = Linker(a.llvm, a.ltocache, a.ltocache_old)
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
            subprocess.run([PY, PLAIN, jf], check=True)
            runs.append(time.perf_counter() - t0)
        results["plain_distributor_startup_s"] = statistics.median(runs)
    names = a.corpus or ["zstd", "lua", "libgit2"]
    for name in names:
        cls = rw.CORPORA[name]
        corpus = cls(crates[cls.crate])
        results["corpora"][name] = bench_corpus(rw, linker, corpus, a.work, a.repeat, modes, a.ab)
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

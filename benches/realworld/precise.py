#!/usr/bin/env python3
"""Precise invalidation (issue 16) on the real-world corpora: figures, proof against clang's
-save-temps, and mutation runs. Reuses bench.py's corpora, front ends and backend commands.

  python3 benches/realworld/precise.py --ltocache L [--helper H] [--work benches/realworld/work]
      [--corpus lua] [--modes default,naming] [--parts figures,savetemps,mutations,debug]

L is a release build (scripts/build-release.sh); the helper defaults to ltocache-precise beside it.
Per corpus and naming mode (default naming, and the backends given
`-mllvm -use-source-filename-for-promoted-locals`), on one thin-linked tree:

- savetemps (item 4 proof): a cold pass through ltocache (precise mode, LTOCACHE_PRECISE_COLD=sync,
  LTOCACHE_PRECISE_DUMP) has the helper write every job's post-import module; a plain clang pass with
  `-save-temps=obj` writes clang's own X.3.import.bc; counts identical / different / skipped (with
  the refusal reasons from ltocache's log).
- figures (item 6): the cache is copied for the first key alone (LTOCACHE_PRECISE=0); bench.py's edit
  (an empty asm barrier in one function) is applied; then a precise pass, a first-key pass on the copy,
  a plain clang pass (every object of both compared with it), and a pass with LTOCACHE_VERIFY=1 on a
  second copy taken before the edit (every hit, first-key or second-key, compiled anyway and compared).
- mutations (item 4): each edit of MUTATIONS in turn on the base state: the edited module's front end,
  thin link, precise pass, plain clang pass, every object compared, LTOCACHE_VERIFY=1 pass on a copy
  of the cache taken before; then the module is restored.
- debug: the same with `-g` on front ends and backends (a tree of its own), edits that move lines.
- --rebuild-shim: every edited run also rebuilds a copy of the cache and outputs (taken before the
  edit) with LTOCACHE_PRECISE_REBUILD=shim: no helper request before the compiles, the shim asks with
  its digest in the backend and a second-key hit stops it; compiled, hits, CPU and stale objects
  beside the helper's pass.

Prints a table per part and writes everything to WORK/results-precise.json. Exit status 1 on any
stale object or any stale_detected."""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402

NAMING = ["-mllvm", "-use-source-filename-for-promoted-locals"]
REBUILD_SHIM = False
CRATE_DIRS = {"lua-src": "lua-src-547.1.0", "libgit2-sys": "libgit2-sys-0.17.0+1.8.1",
              "zstd-sys": "zstd-sys-2.0.13+zstd.1.5.6"}

# (what, file, old text, new text). new None: bench.py's edit (an empty asm barrier) at the top of the
# body of the function named by old.
MUTATIONS = {
    "lua": [
        ("body, static function (findindex)", "src/lua/ltable.c",
         "  i = ttisinteger(key) ? arrayindex(ivalue(key)) : 0;\n",
         "  i = ttisinteger(key) ? arrayindex(ivalue(key)) : 0;\n"
         "  if (l_unlikely(asize == 12345u)) luaG_runerror(L, \"ltocache edit\");\n"),
        ("body, exported function (luaS_hash)", "src/lua/lstring.c",
         "h ^= ((h<<5) + (h>>2) + cast_byte(str[l - 1]));", "h ^= ((h<<5) + (h>>3) + cast_byte(str[l - 1]));"),
        ("inline asm (luaH_getint)", "src/lua/ltable.c", "luaH_getint", None),
        ("attribute cold (luaH_getshortstr)", "src/lua/ltable.c",
         "const TValue *luaH_getshortstr (Table *t, TString *key) {",
         "__attribute__((cold)) const TValue *luaH_getshortstr (Table *t, TString *key) {"),
        ("read-only initialiser (luai_ctype_)", "src/lua/lctype.c",
         "  0x00,  0x08,  0x08,  0x08,  0x08,  0x08,  0x00,  0x00,\n",
         "  0x08,  0x08,  0x08,  0x08,  0x08,  0x08,  0x00,  0x00,\n"),
        ("read-only initialiser (luaT_typenames_)", "src/lua/ltm.c", '"no value",', '"no-value",'),
        ("linkage static->global (tablerehash)", "src/lua/lstring.c",
         "static void tablerehash (", "void tablerehash ("),
        ("linkage weak (luaS_hash)", "src/lua/lstring.c",
         "unsigned int luaS_hash (", "__attribute__((weak)) unsigned int luaS_hash ("),
    ],
    "libgit2": [
        ("body, exported function (git_str_rtrim)", "src/src/util/str.c",
         "\tif (buf->asize > buf->size)\n\t\tbuf->ptr[buf->size] = '\\0';\n}\n",
         "\tif (buf->asize > buf->size)\n\t\tbuf->ptr[buf->size] = '\\0';\n\telse if (buf->size == 12345)\n"
         "\t\tbuf->size--;\n}\n"),
        ("inline asm (git_str_clear)", "src/src/util/str.c", "git_str_clear", None),
        ("attribute cold (git_str_rtrim)", "src/src/util/str.c",
         "void git_str_rtrim(git_str *buf)\n{", "__attribute__((cold)) void git_str_rtrim(git_str *buf)\n{"),
        ("read-only initialiser (base64_encode)", "src/src/util/str.c",
         '"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"',
         '"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"'),
        ("linkage weak (git_str_rtrim)", "src/src/util/str.c",
         "void git_str_rtrim(git_str *buf)\n{", "__attribute__((weak)) void git_str_rtrim(git_str *buf)\n{"),
        ("linkage static->global (hex_encode)", "src/src/util/str.c",
         "static char hex_encode[]", "char hex_encode[]"),
    ],
    # zstd: figures and the save-temps proof only (bench.py's edit is its one mutation).
    "zstd": [],
}
# -g trees: lines moved above every function of the file, and an edit inside one body.
DEBUG_MUTATIONS = {
    "lua": [("-g: lines moved (ltable.c)", "src/lua/ltable.c", "#define ltable_c\n", "#define ltable_c\n\n\n"),
            ("-g: inline asm (luaH_getshortstr)", "src/lua/ltable.c", "luaH_getshortstr", None)],
    "libgit2": [("-g: lines moved (str.c)", "src/src/util/str.c", '#include "str.h"\n', '#include "str.h"\n\n\n'),
                ("-g: inline asm (git_str_rtrim)", "src/src/util/str.c", "git_str_rtrim", None)],
    "zstd": [],
}
FIGURE_EDIT = "bench.py's edit (empty asm barrier)"


def log(msg):
    bench.log(msg)


class Tree:
    """One corpus's bench.py build directory with precise-mode passes over it."""

    def __init__(self, corpus, work, ltocache, helper):
        self.b = bench.Build(corpus, work, ltocache)
        self.c = corpus
        self.ltocache = ltocache
        self.helper = helper
        self.b.prepare()
        self.b.reset_lto_dir()
        for d in ("p-cache", "p-today", "p-ref", "p-ref0", "p-verify", "p-st"):
            self.b.make_outdir(os.path.join("out", d), clean=True)

    def env(self, cache, **kw):
        e = {k: v for k, v in os.environ.items() if not k.startswith("LTOCACHE_")}
        e.update(LTOCACHE_DIR=cache, LTOCACHE_STATS_DIR=os.path.join(cache, "stats"),
                 LTOCACHE_LOGFILE=cache + ".log", LTOCACHE_PRECISE_HELPER=self.helper,
                 LTOCACHE_PRECISE_COLD="sync", LTOCACHE_PRECISE_IDLE="60")
        e.update(kw)
        return e

    def stats(self, env):
        return json.loads(bench.run([self.ltocache, "stats", "--json"], env=env).stdout)

    def run_pass(self, outdir, env, extra, label):
        jobs = [self.b.backend_argv(o, os.path.join("out", outdir), extra) for o in self.b.objs]
        if env is not None:
            jobs = [[self.ltocache, *j] for j in jobs]
        res = bench.run_jobs(jobs, cwd=self.b.dir, env=env)
        bad = [r for r in res["results"] if r[1] != 0]
        if bad:
            raise RuntimeError(f"{label}: {len(bad)} backend(s) failed, first:\n{' '.join(bad[0][0])}\n{bad[0][3]}")
        log(f"{self.c.name} {label}: wall {res['wall']:.2f} s, cpu {res['cpu']:.2f} s")
        return res

    def differ(self, a, b):
        return bench.compare_outputs(self.b.dir, self.b.objs, self.b.p("out", a), self.b.p("out", b))

    def copy_cache(self, src, dst):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.sock", "*.sock.lock"))
        if os.path.exists(src + ".log"):
            shutil.copyfile(src + ".log", dst + ".log")

    def mutate(self, m, on):
        """Puts the mutated (or the original) bitcode of m's module into lto/ and thin-links."""
        _what, path, old, new = m
        obj = bench.obj_of(path)
        if on:
            src = self.b.p(path)
            with open(src) as f:
                original = f.read()
            if new is None:
                edited = bench.apply_edit(original, old)
            else:
                if original.count(old) < 1:
                    raise RuntimeError(f"{path}: mutation anchor {old!r} missing")
                edited = original.replace(old, new, 1)
            try:
                with open(src, "w") as f:
                    f.write(edited)
                bench.run([bench.CLANG, *self.c.cflags, "-flto=thin", "-c", path, "-o", os.path.join("lto", obj)],
                          cwd=self.b.dir)
            finally:
                with open(src, "w") as f:
                    f.write(original)
        else:
            shutil.copyfile(self.b.p("bc", obj), self.b.p("lto", obj))
        self.b.thin_link()


def refusals(logfile):
    """Output -> refusal reason, from ltocache's log."""
    out = {}
    try:
        with open(logfile) as f:
            for line in f:
                i = line.find("precise: refused (")
                if i >= 0:
                    rest = line[i + len("precise: refused ("):].rstrip("\n")
                    code = rest.split(":", 1)[0]
                    out[os.path.normpath(rest.rsplit(") ", 1)[-1].rsplit(" ", 1)[-1])] = code
    except FileNotFoundError:
        pass
    return out


def delta(s1, s0, key):
    return s1.get(key, 0) - s0.get(key, 0)


def pdelta(s1, s0, key):
    return s1.get("precise", {}).get(key, 0) - s0.get("precise", {}).get(key, 0)


def savetemps(t, mode, extra, cache, env):
    """Cold precise pass dumping the helper's modules, then clang's -save-temps=obj; compared per module."""
    dump = t.b.p("dump-" + mode)
    shutil.rmtree(dump, ignore_errors=True)
    cold = t.run_pass("p-cache", dict(env, LTOCACHE_PRECISE_DUMP=dump), extra, f"{mode} cold (precise, dumping)")
    shutil.rmtree(t.b.p("out", "p-st"), ignore_errors=True)
    t.b.make_outdir(os.path.join("out", "p-st"))
    t.run_pass("p-st", None, extra + ["-save-temps=obj"], f"{mode} plain, -save-temps=obj")
    refused = refusals(cache + ".log")
    same, diff, skipped, reasons = 0, [], [], {}
    for o in t.b.objs:
        ours = os.path.join(dump, t.b.p("out", "p-cache", o).lstrip("/") + ".3.import.bc")
        base = t.b.p("out", "p-st", o)
        theirs = next((p for p in (base[:-2] + ".s.3.import.bc", base[:-2] + ".3.import.bc", base + ".3.import.bc") if os.path.exists(p)), None)
        if not os.path.exists(ours):
            why = refused.get(os.path.join("out", "p-cache", o), "no dump, no refusal logged")
            skipped.append(o)
            reasons[why] = reasons.get(why, 0) + 1
            continue
        if theirs is None:
            skipped.append(o)
            reasons["clang wrote no .3.import.bc"] = reasons.get("clang wrote no .3.import.bc", 0) + 1
            continue
        with open(ours, "rb") as f1, open(theirs, "rb") as f2:
            if f1.read() == f2.read():
                same += 1
            else:
                diff.append(o)
    shutil.rmtree(dump, ignore_errors=True)
    shutil.rmtree(t.b.p("out", "p-st"), ignore_errors=True)
    row = {"corpus": t.c.name, "mode": mode, "modules": len(t.b.objs), "identical": same, "different": diff,
           "skipped": len(skipped), "skip_reasons": reasons}
    log(f"{t.c.name} {mode} save-temps: {json.dumps(row)}")
    return cold, row


def edited_run(t, mode, extra, cache, env, what, apply, revert, today=None):
    """One edit on the base state: precise pass (and the first key alone on a copy), plain clang,
    every object compared; LTOCACHE_VERIFY=1 on a copy taken before the edit."""
    vcache = cache + "-verify"
    t.copy_cache(cache, vcache)
    senv = None
    if REBUILD_SHIM:
        scache = cache + "-shimr"
        t.copy_cache(cache, scache)
        # The outputs as the helper's pass has them: the jobs are rebuilds.
        shutil.rmtree(t.b.p("out", "p-shimr"), ignore_errors=True)
        shutil.copytree(t.b.p("out", "p-cache"), t.b.p("out", "p-shimr"))
        senv = dict(env, LTOCACHE_DIR=scache, LTOCACHE_STATS_DIR=os.path.join(scache, "stats"),
                    LTOCACHE_LOGFILE=scache + ".log", LTOCACHE_PRECISE_REBUILD="shim")
    venv = dict(env, LTOCACHE_DIR=vcache, LTOCACHE_STATS_DIR=os.path.join(vcache, "stats"),
                LTOCACHE_LOGFILE=vcache + ".log", LTOCACHE_VERIFY="1")
    tenv = None
    if today:
        t.copy_cache(cache, today)
        tenv = dict(env, LTOCACHE_DIR=today, LTOCACHE_STATS_DIR=os.path.join(today, "stats"),
                    LTOCACHE_LOGFILE=today + ".log", LTOCACHE_PRECISE="0")
    apply()
    s0 = t.stats(env)
    warm = t.run_pass("p-cache", env, extra, f"{mode} {what}: precise")
    s1 = t.stats(env)
    row = {"corpus": t.c.name, "mode": mode, "edit": what, "backends": len(t.b.objs),
           "first_key_misses": delta(s1, s0, "misses") + delta(s1, s0, "precise_hits"),
           "compiled": delta(s1, s0, "misses"), "precise_hits": delta(s1, s0, "precise_hits"),
           "refused": {k: pdelta(s1, s0, k) for k in s1.get("precise", {}) if k.startswith("refused.")
                       and pdelta(s1, s0, k)},
           "precise_cpu_s": warm["cpu"] + pdelta(s1, s0, "helper_cpu_ms") / 1e3, "precise_wall_s": warm["wall"],
           "errors": sum(s1["errors"].values()) - sum(s0["errors"].values())}
    if tenv:
        t0 = t.stats(tenv)
        plain = t.run_pass("p-today", tenv, extra, f"{mode} {what}: first key alone")
        t1 = t.stats(tenv)
        row.update(today_compiled=delta(t1, t0, "misses"), today_cpu_s=plain["cpu"], today_wall_s=plain["wall"])
    if senv:
        r0 = t.stats(senv)
        shimr = t.run_pass("p-shimr", senv, extra, f"{mode} {what}: precise, rebuild by the shim")
        r1 = t.stats(senv)
        row.update(shim_compiled=delta(r1, r0, "misses"), shim_precise_hits=delta(r1, r0, "precise_hits"),
                   shim_stopped=pdelta(r1, r0, "shim_stopped"), shim_cpu_s=shimr["cpu"],
                   shim_wall_s=shimr["wall"], shim_helper_requests=pdelta(r1, r0, "computed"))
    ref = t.run_pass("p-ref", None, extra, f"{mode} {what}: plain clang")
    row["plain_cpu_s"], row["plain_wall_s"] = ref["cpu"], ref["wall"]
    row["stale"] = t.differ("p-cache", "p-ref")
    if tenv:
        row["today_stale"] = t.differ("p-today", "p-ref")
    if senv:
        row["shim_stale"] = t.differ("p-shimr", "p-ref")
        shutil.rmtree(scache, ignore_errors=True)
    row["objects_changed"] = len(t.differ("p-ref", "p-ref0"))
    v0 = t.stats(venv)
    t.run_pass("p-verify", venv, extra, f"{mode} {what}: LTOCACHE_VERIFY=1")
    v1 = t.stats(venv)
    row.update(verified_hits=delta(v1, v0, "verified_hits"), precise_verified=pdelta(v1, v0, "verified"),
               stale_detected=delta(v1, v0, "stale_detected"), verify_misses=delta(v1, v0, "misses"))
    row["verify_stale"] = t.differ("p-verify", "p-ref")
    revert()
    shutil.rmtree(vcache, ignore_errors=True)
    if today:
        shutil.rmtree(today, ignore_errors=True)
    log(f"{t.c.name} {json.dumps(row)}")
    return row


def corpus_run(t, modes, parts, mutations, results):
    for mode in modes:
        extra = list(t.c.backend_flags_extra) + (NAMING if mode == "naming" else [])
        cache = t.b.p("p-cache-" + mode)
        shutil.rmtree(cache, ignore_errors=True)
        for suffix in (".log",):
            if os.path.exists(cache + suffix):
                os.unlink(cache + suffix)
        env = t.env(cache)
        t.b.reset_lto_dir()
        t.b.thin_link()
        t.run_pass("p-ref0", None, extra, f"{mode} base, plain clang")
        if "savetemps" in parts:
            cold, row = savetemps(t, mode, extra, cache, env)
            results["savetemps"].append(row)
        else:
            cold = t.run_pass("p-cache", env, extra, f"{mode} cold (precise)")
        s = t.stats(env)
        cold_stale = t.differ("p-cache", "p-ref0")
        results["cold"].append({"corpus": t.c.name, "mode": mode, "backends": len(t.b.objs), "cpu_s": cold["cpu"],
                                "wall_s": cold["wall"], "precise": s.get("precise", {}), "stale": cold_stale})
        if "figures" in parts:
            results["figures"].append(edited_run(
                t, mode, extra, cache, env, FIGURE_EDIT, lambda: (t.b.set_changed(True), t.b.thin_link()),
                lambda: (t.b.set_changed(False), t.b.thin_link()), today=t.b.p("p-cache-" + mode + "-today")))
        if "mutations" in parts:
            for m in mutations:
                results["mutations"].append(edited_run(t, mode, extra, cache, env, m[0],
                                                       lambda m=m: t.mutate(m, True), lambda m=m: t.mutate(m, False)))
        shutil.rmtree(cache, ignore_errors=True)


def crate_dirs():
    roots = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
    out = {}
    for crate, d in CRATE_DIRS.items():
        for r in roots:
            if os.path.isdir(os.path.join(r, d)):
                out[crate] = os.path.join(r, d)
    return out


def stale_count(results):
    n = 0
    for part in ("figures", "mutations"):
        for r in results[part]:
            n += len(r["stale"]) + len(r.get("today_stale", [])) + len(r.get("shim_stale", [])) + len(r["verify_stale"]) + r["stale_detected"]
    n += sum(len(r["stale"]) for r in results["cold"])
    return n


def print_tables(results):
    L = []
    w = L.append
    if results["savetemps"]:
        w("| corpus | naming | modules | identical | different | skipped (reasons) |")
        w("|---|---|---:|---:|---:|---|")
        for r in results["savetemps"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skip_reasons"].items())) or "–"
            w(f"| {r['corpus']} | {r['mode']} | {r['modules']} | {r['identical']} | {len(r['different'])} | "
              f"{r['skipped']} ({reasons}) |")
        w("")
    if results["figures"]:
        w("| corpus | naming | backends | compiled, first key alone | compiled, precise | precise hits | "
          "backend CPU s, first key / precise | wall s, first key / precise | objects changed | stale | "
          "VERIFY=1: verified (second-key) / stale_detected |")
        w("|---|---|---:|---:|---:|---:|---|---|---:|---:|---|")
        for r in results["figures"]:
            ratio = r["precise_cpu_s"] / r["today_cpu_s"] * 100 if r["today_cpu_s"] else float("nan")
            w(f"| {r['corpus']} | {r['mode']} | {r['backends']} | {r['today_compiled']} | **{r['compiled']}** | "
              f"{r['precise_hits']} | {r['today_cpu_s']:.2f} / **{r['precise_cpu_s']:.2f} ({ratio:.0f} %)** | "
              f"{r['today_wall_s']:.2f} / {r['precise_wall_s']:.2f} | {r['objects_changed']} | "
              f"{len(r['stale']) + len(r['today_stale'])} | {r['verified_hits']} ({r['precise_verified']}) / "
              f"{r['stale_detected']} |")
        w("")
    shim_rows = [r for part in ("figures", "mutations") for r in results[part] if "shim_cpu_s" in r]
    if shim_rows:
        w("| corpus | edit | naming | compiled, helper / shim | precise hits, helper / shim (stopped) | "
          "backend CPU s, helper / shim | stale (shim) |")
        w("|---|---|---|---|---|---|---:|")
        for r in shim_rows:
            ratio = r["shim_cpu_s"] / r["precise_cpu_s"] * 100 if r["precise_cpu_s"] else float("nan")
            w(f"| {r['corpus']} | {r['edit']} | {r['mode']} | {r['compiled']} / {r['shim_compiled']} | "
              f"{r['precise_hits']} / {r['shim_precise_hits']} ({r['shim_stopped']}) | "
              f"{r['precise_cpu_s']:.2f} / **{r['shim_cpu_s']:.2f} ({ratio:.0f} %)** | {len(r['shim_stale'])} |")
        w("")
    if results["mutations"]:
        w("| corpus | edit | naming | first-key misses | compiled | precise hits | objects changed | "
          "stale (of all objects) | VERIFY=1: verified (second-key) / stale_detected |")
        w("|---|---|---|---:|---:|---:|---:|---:|---|")
        for r in results["mutations"]:
            w(f"| {r['corpus']} | {r['edit']} | {r['mode']} | {r['first_key_misses']} | {r['compiled']} | "
              f"{r['precise_hits']} | {r['objects_changed']} | {len(r['stale'])} of {r['backends']} | "
              f"{r['verified_hits']} ({r['precise_verified']}) / {r['stale_detected']} |")
        w("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--helper")
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--crates", help="JSON map crate name -> source directory (default: ~/.cargo/registry)")
    ap.add_argument("--corpus", action="append", choices=sorted(bench.CORPORA))
    ap.add_argument("--modes", default="default,naming")
    ap.add_argument("--parts", default="savetemps,figures,mutations,debug")
    ap.add_argument("--out", help="results file (default WORK/results-precise.json)")
    ap.add_argument("--rebuild-shim", action="store_true", help="also rebuild with LTOCACHE_PRECISE_REBUILD=shim")
    ap.add_argument("--mutation", action="append", help="run only the mutations whose name contains this")
    a = ap.parse_args()
    global REBUILD_SHIM
    REBUILD_SHIM = a.rebuild_shim
    ltocache = os.path.abspath(a.ltocache)
    helper = os.path.abspath(a.helper or os.path.join(os.path.dirname(ltocache), "ltocache-precise"))
    crates = json.loads(a.crates) if a.crates else crate_dirs()
    parts = a.parts.split(",")
    # The real path: ltocache names the helper's dumps after its own (real) working directory.
    work = os.path.realpath(a.work)
    out = a.out or os.path.join(work, "results-precise.json")
    modes = a.modes.split(",")
    meta = bench.machine()
    repo = os.path.dirname(os.path.dirname(HERE))
    meta["commit"] = bench.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    meta["command"] = " ".join(["python3", "benches/realworld/precise.py", *sys.argv[1:]])
    results = {"meta": meta, "savetemps": [], "cold": [], "figures": [], "mutations": []}
    t_start = time.time()
    for name in a.corpus or ["lua", "libgit2", "zstd"]:
        cls = bench.CORPORA[name]
        corpus = cls(crates[cls.crate])
        corpus.backend_flags_extra = []
        main_parts = [p for p in parts if p != "debug"]
        if main_parts:
            t = Tree(corpus, work, ltocache, helper)
            muts = [m for m in MUTATIONS[name] if not a.mutation or any(x in m[0] for x in a.mutation)]
            corpus_run(t, modes, main_parts, muts, results)
        if "debug" in parts and DEBUG_MUTATIONS[name]:
            g = cls(crates[cls.crate])
            g.name = name + "-g"
            g.cflags = cls.cflags + ["-g"]
            g.backend_flags_extra = ["-g"]
            tg = Tree(g, work, ltocache, helper)
            corpus_run(tg, modes, ["mutations"], DEBUG_MUTATIONS[name], results)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    meta["minutes"] = (time.time() - t_start) / 60
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nMeasured {meta['date']}, load average at start {meta['load']}, commit {meta['commit']}, "
          f"{meta['minutes']:.1f} minutes; {meta['clang']}.\nCommand: {meta['command']}\n")
    print(print_tables(results))
    n = stale_count(results)
    print(f"stale objects or stale_detected: {n}")
    sys.exit(1 if n else 0)


if __name__ == "__main__":
    main()

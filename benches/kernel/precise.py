#!/usr/bin/env python3
"""Precise invalidation on the kernel (issue 16): backends compiled, objects really changed, backend
CPU and wall, precise mode against the first key alone, in one run, for edits of setup_arch()
(bench.py's edit), slob_free() and the mutations of EDITS, default naming and with
`-mllvm -use-source-filename-for-promoted-locals` on the backends.

  python3 benches/kernel/precise.py --work benches/kernel/work --ltocache L --helper H [--jobs 2]
      [--edits setup_arch,slob_free,...] [--modes default,naming] [--no-verify]

Reuses bench.py's tree and distributed flow (the tree must be unpacked: run.sh does that). Per
naming mode: one cold pass through ltocache (precise mode, LTOCACHE_PRECISE_COLD=sync so the second
keys exist when the edit comes). Then per edit, from the base state: copies of the cache for the
first key alone and for verification, the edit (only the edited object is rebuilt), the edited pass
with precise mode, the same with LTOCACHE_PRECISE=0 on the first copy, a plain clang pass whose
objects every served object is compared with, and a pass with LTOCACHE_VERIFY=1 on the second copy
(every hit, first-key or second-key, compiled anyway and compared: stale_detected must stay 0); then
the edit is undone. Exit status 1 on any stale object or stale_detected."""
import argparse, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

NAMING = ["-mllvm", "-use-source-filename-for-promoted-locals"]
EDITS = {
    "setup_arch": (bench.EDIT_FILE, bench.EDIT_OLD, bench.EDIT_NEW, "arch/x86/kernel/setup.o"),
    "slob_free": ("mm/slob.c", "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n",
                  "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n\tbarrier(); /* ltocache precise edit */\n",
                  "mm/slob.o"),
    # Mutations (issue 16 item 4): an attribute, linkage and the initialiser of an imported
    # read-only variable.
    "cold_attr": ("lib/refcount.c", "void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
                  "__cold void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
                  "lib/refcount.o"),
    "weak": ("lib/refcount.c", "void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
             "__weak void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
             "lib/refcount.o"),
    "rodata_init": ("lib/hexdump.c", 'const char hex_asc[] = "0123456789abcdef";',
                    'const char hex_asc[] = "0123456789abcdeF";', "lib/hexdump.o"),
}


def stats(env):
    out = subprocess.run([env["LTOCACHE_BIN"], "stats", "--json"], env=env, capture_output=True, text=True).stdout
    return json.loads(out)


def apply(tree, edit, on):
    """Applies (on) or undoes an edit. An edit's new text may contain its old one (slob_free's does):
    whether it is applied is decided by the new text alone."""
    path, old, new, _ = edit
    p = tree.path(path)
    text = open(p).read()
    if (new in text) == on:
        return
    a, b = (old, new) if on else (new, old)
    if a not in text:
        sys.exit(f"{path}: edit anchor missing")
    open(p, "w").write(text.replace(a, b, 1))


def compare_save_temps(tree, dist, jobs, extra, dump, mode):
    """The helper's post-import modules (dumped by the cold pass) against clang's own -save-temps=obj
    X.3.import.bc, module by module; counts identical / different / skipped with reasons."""
    bench.run_pass(dist, "ref", jobs, dict(os.environ), list(extra) + ["-save-temps=obj"])
    same, diff, reasons = 0, [], {}
    for m in dist.bitcode:
        nat = tree.path(dist.native(m, "cache"))
        ours = os.path.join(dump, os.path.realpath(nat).lstrip("/") + ".3.import.bc")
        # -save-temps=obj names the temps after the input, in the output's directory (the input's here).
        base = tree.path(m[:-2])
        theirs = base + ".s.3.import.bc"
        if not os.path.exists(ours):
            reasons["no helper module (refused: see ltocache's log)"] = \
                reasons.get("no helper module (refused: see ltocache's log)", 0) + 1
        elif not os.path.exists(theirs):
            reasons["clang wrote no .3.import.bc"] = reasons.get("clang wrote no .3.import.bc", 0) + 1
        elif open(ours, "rb").read() == open(theirs, "rb").read():
            same += 1
        else:
            diff.append(m)
        for suffix in (".s", ".s.0.preopt.bc", ".s.1.promote.bc", ".s.2.internalize.bc", ".s.3.import.bc",
                       ".s.4.opt.bc", ".s.5.precodegen.bc", ".s.resolution.txt"):
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass
    row = {"mode": mode, "modules": len(dist.bitcode), "identical": same, "different": diff, "skipped": reasons}
    bench.log("save-temps: " + json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--edits", default="setup_arch,slob_free,cold_attr,weak,rodata_init")
    ap.add_argument("--modes", default="default,naming")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--savetemps", action="store_true",
                    help="compare the helper's post-import module with clang's -save-temps=obj X.3.import.bc")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir, exist_ok=True)
    tree = bench.Tree(os.path.join(work, "linux-source-6.1"), logdir, a.jobs)
    tree.configure()
    tree.set_edit(False)
    for e in EDITS.values():
        apply(tree, e, False)
    bench.log("make vmlinux (base state)")
    tree.make("vmlinux", tag="precise-base")
    results, stale_total, savetemps = [], 0, []
    ignore = shutil.ignore_patterns("*.sock", "*.sock.lock")
    for mode in a.modes.split(","):
        extra = NAMING if mode == "naming" else []
        cache = os.path.join(work, f"precise-cache-{mode}")
        today = os.path.join(work, f"precise-cache-{mode}-today")
        verify = os.path.join(work, f"precise-cache-{mode}-verify")
        for d in (cache, today, verify):
            shutil.rmtree(d, ignore_errors=True)
        env = dict(os.environ, LTOCACHE_BIN=os.path.abspath(a.ltocache), LTOCACHE_DIR=cache,
                   LTOCACHE_STATS_DIR=os.path.join(cache, "stats"), LTOCACHE_PRECISE_HELPER=a.helper,
                   LTOCACHE_PRECISE_COLD="sync", LTOCACHE_PRECISE_IDLE="60")
        for k in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_PRECISE",
                  "LTOCACHE_VERIFY"):
            env.pop(k, None)
        env_today = dict(env, LTOCACHE_DIR=today, LTOCACHE_STATS_DIR=os.path.join(today, "stats"),
                         LTOCACHE_PRECISE="0")
        env_verify = dict(env, LTOCACHE_DIR=verify, LTOCACHE_STATS_DIR=os.path.join(verify, "stats"),
                          LTOCACHE_VERIFY="1")
        dist = bench.Dist(tree)
        dist.thin_link()
        dump = os.path.join(work, f"precise-dump-{mode}")
        shutil.rmtree(dump, ignore_errors=True)
        cold = bench.run_pass(dist, "cache", a.jobs, dict(env, LTOCACHE_PRECISE_DUMP=dump) if a.savetemps else env,
                              extra)
        s0 = stats(env)
        base_ref = bench.run_pass(dist, "ref", a.jobs, dict(os.environ), extra)
        base_sha = {m: bench.sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
        if a.savetemps:
            savetemps.append(compare_save_temps(tree, dist, a.jobs, extra, dump, mode))
            shutil.rmtree(dump, ignore_errors=True)
        cold_stale = [m for m in dist.bitcode if bench.sha(tree.path(dist.native(m, "cache"))) != base_sha[m]]
        stale_total += len(cold_stale)
        for name in [e for e in a.edits.split(",") if e]:
            edit = EDITS[name]
            for src, dst in ((cache, today), (cache, verify)):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, symlinks=True, ignore=ignore)
            s0, t0, v0 = stats(env), stats(env_today), stats(env_verify)
            apply(tree, edit, True)
            tree.make(edit[3], tag=f"precise-{name}-edit")
            dist = bench.Dist(tree)
            dist.thin_link()
            warm = bench.run_pass(dist, "cache", a.jobs, env, extra)
            s1 = stats(env)
            native = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            plain = bench.run_pass(dist, "cache", a.jobs, env_today, extra)
            t1 = stats(env_today)
            today_out = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            ref = bench.run_pass(dist, "ref", a.jobs, dict(os.environ), extra)
            ref_sha = {m: bench.sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
            stale = [m for m in dist.bitcode if native[m] != ref_sha[m]]
            today_stale = [m for m in dist.bitcode if today_out[m] != ref_sha[m]]
            changed = [m for m in dist.bitcode if base_sha.get(m) != ref_sha[m]]
            v1 = {}
            if not a.no_verify:
                bench.run_pass(dist, "cache", a.jobs, env_verify, extra)
                v1 = stats(env_verify)
            stale_total += len(stale) + len(today_stale) + v1.get("stale_detected", 0) - v0.get("stale_detected", 0)
            pc = lambda s, k: s.get("precise", {}).get(k, 0)
            row = {
                "mode": mode, "edit": name, "backends": len(dist.bitcode), "objects_changed": len(changed),
                "cold_cpu_s": cold["cpu"], "cold_compiler_cpu_s": s0["compiler_cpu_seconds_on_misses"],
                "first_key_misses": s1["misses"] - s0["misses"] + s1["precise_hits"] - s0["precise_hits"],
                "precise_compiled": s1["misses"] - s0["misses"],
                "precise_hits": s1["precise_hits"] - s0["precise_hits"],
                # The helper server is not our child: its CPU comes from its answers.
                "precise_backend_cpu_s": warm["cpu"] + (pc(s1, "helper_cpu_ms") - pc(s0, "helper_cpu_ms")) / 1e3,
                "precise_wall_s": warm["wall"],
                "today_compiled": t1["misses"] - t0["misses"],
                "today_backend_cpu_s": plain["cpu"], "today_wall_s": plain["wall"],
                "stale": stale, "today_stale": today_stale, "cold_stale": cold_stale,
                "refused": {k: pc(s1, k) - pc(s0, k) for k in s1.get("precise", {})
                            if k.startswith("refused.") and pc(s1, k) != pc(s0, k)},
                "verified_hits": v1.get("verified_hits", 0) - v0.get("verified_hits", 0),
                "precise_verified": pc(v1, "verified") - pc(v0, "verified"),
                "stale_detected": v1.get("stale_detected", 0) - v0.get("stale_detected", 0),
            }
            results.append(row)
            bench.log(json.dumps(row))
            apply(tree, edit, False)
            tree.make(edit[3], tag=f"precise-{name}-restore")
            for d in (today, verify):
                shutil.rmtree(d, ignore_errors=True)
        dist = bench.Dist(tree)
        dist.thin_link()
    with open(os.path.join(work, "results-precise.json"), "w") as f:
        json.dump({"edits": results, "savetemps": savetemps}, f, indent=1)
    for r in savetemps:
        print(f"save-temps {r['mode']}: {r['modules']} modules, {r['identical']} identical, "
              f"{len(r['different'])} different, skipped {r['skipped']}")
    print(f"{'mode':8} {'edit':11} {'fk miss':>7} {'compiled today':>14} {'compiled precise':>16} "
          f"{'precise hits':>12} {'CPU today s':>11} {'CPU precise s':>13} {'wall today s':>12} "
          f"{'wall precise s':>14} changed stale verified(2nd) stale_detected")
    for r in results:
        print(f"{r['mode']:8} {r['edit']:11} {r['first_key_misses']:>7} {r['today_compiled']:>14} "
              f"{r['precise_compiled']:>16} {r['precise_hits']:>12} {r['today_backend_cpu_s']:>11.2f} "
              f"{r['precise_backend_cpu_s']:>13.2f} {r['today_wall_s']:>12.2f} {r['precise_wall_s']:>14.2f} "
              f"{r['objects_changed']:>7} {len(r['stale']) + len(r['today_stale'])} "
              f"{r['verified_hits']}({r['precise_verified']}) {r['stale_detected']}")
    sys.exit(1 if stale_total else 0)


if __name__ == "__main__":
    main()

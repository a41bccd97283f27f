#!/usr/bin/env python3
"""Precise invalidation on the kernel (issue 16): backends compiled, objects really changed, backend
CPU and wall, precise mode against the first key alone, in one run, for an edit of setup_arch()
(bench.py's edit) and of slob_free(), default naming and with
`-mllvm -use-source-filename-for-promoted-locals` on the backends.

  python3 benches/kernel/precise.py --work benches/kernel/work --ltocache L --helper H [--jobs 2]

Reuses bench.py's tree and distributed flow (the tree must be unpacked: run.sh does that). Per
naming mode and edit: cold pass through ltocache (precise mode, LTOCACHE_PRECISE_COLD=sync so the
second keys exist when the edit comes), copy of the cache for the first key alone, the edit (only the
edited object is rebuilt), then the edited pass with precise mode, the same with LTOCACHE_PRECISE=0 on
the copy, and a plain clang pass whose objects every served object is compared with. Exit status 1 on
any stale object."""
import argparse, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

NAMING = ["-mllvm", "-use-source-filename-for-promoted-locals"]
EDITS = {
    "setup_arch": (bench.EDIT_FILE, bench.EDIT_OLD, bench.EDIT_NEW, "arch/x86/kernel/setup.o"),
    "slob_free": ("mm/slob.c", "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n",
                  "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n\tbarrier(); /* ltocache precise edit */\n",
                  "mm/slob.o"),
}


def stats(env):
    out = subprocess.run([env["LTOCACHE_BIN"], "stats", "--json"], env=env, capture_output=True, text=True).stdout
    return json.loads(out)


def apply(tree, edit, on):
    path, old, new, _ = edit
    p = tree.path(path)
    text = open(p).read()
    a, b = (old, new) if on else (new, old)
    if b in text:
        return
    if a not in text:
        sys.exit(f"{path}: edit anchor missing")
    open(p, "w").write(text.replace(a, b, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--edits", default="setup_arch,slob_free")
    ap.add_argument("--modes", default="default,naming")
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
    results, stale_total = [], 0
    for mode in a.modes.split(","):
        extra = NAMING if mode == "naming" else []
        for name in a.edits.split(","):
            edit = EDITS[name]
            cache = os.path.join(work, f"precise-cache-{mode}")
            today = os.path.join(work, f"precise-cache-{mode}-today")
            for d in (cache, today):
                shutil.rmtree(d, ignore_errors=True)
            env = dict(os.environ, LTOCACHE_BIN=os.path.abspath(a.ltocache), LTOCACHE_DIR=cache,
                       LTOCACHE_STATS_DIR=os.path.join(cache, "stats"), LTOCACHE_PRECISE_HELPER=a.helper,
                       LTOCACHE_PRECISE_COLD="sync", LTOCACHE_PRECISE_IDLE="60")
            for k in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_PRECISE"):
                env.pop(k, None)
            apply(tree, edit, False)
            tree.make(edit[3], tag=f"precise-{name}-base")
            dist = bench.Dist(tree)
            dist.thin_link()
            cold = bench.run_pass(dist, "cache", a.jobs, env, extra)
            s0 = stats(env)
            cold_sha = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            shutil.copytree(cache, today, symlinks=True, ignore=shutil.ignore_patterns("*.sock", "*.sock.lock"))
            env_today = dict(env, LTOCACHE_DIR=today, LTOCACHE_STATS_DIR=os.path.join(today, "stats"),
                             LTOCACHE_PRECISE="0")
            t0 = stats(env_today)
            apply(tree, edit, True)
            tree.make(edit[3], tag=f"precise-{name}-edit")
            dist = bench.Dist(tree)
            dist.thin_link()
            warm = bench.run_pass(dist, "cache", a.jobs, env, extra)
            s1 = stats(env)
            native = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            plain = bench.run_pass(dist, "cache", a.jobs, env_today, extra)
            t1 = stats(env_today)
            ref = bench.run_pass(dist, "ref", a.jobs, dict(os.environ), extra)
            ref_sha = {m: bench.sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
            stale = [m for m in dist.bitcode if native[m] != ref_sha[m]]
            stale_total += len(stale)
            changed = [m for m in dist.bitcode if cold_sha.get(m) != ref_sha[m]]
            # Objects that really changed: today's miss whose object differs from the cold pass's.
            row = {
                "mode": mode, "edit": name, "backends": len(dist.bitcode), "objects_changed": len(changed),
                "cold_cpu_s": cold["cpu"], "cold_compiler_cpu_s": s0["compiler_cpu_seconds_on_misses"],
                "cold_precise": s0.get("precise", {}),
                "precise_compiled": s1["misses"] - s0["misses"],
                "precise_hits": s1["precise_hits"] - s0["precise_hits"],
                # The helper server is not our child: its CPU comes from its answers.
                "precise_backend_cpu_s": warm["cpu"] + (s1.get("precise", {}).get("helper_cpu_ms", 0)
                                                         - s0.get("precise", {}).get("helper_cpu_ms", 0)) / 1e3,
                "precise_wall_s": warm["wall"],
                "today_compiled": t1["misses"] - t0["misses"],
                "today_backend_cpu_s": plain["cpu"], "today_wall_s": plain["wall"],
                "stale": stale, "precise_counters": s1.get("precise", {}),
            }
            results.append(row)
            bench.log(json.dumps(row))
            apply(tree, edit, False)
            tree.make(edit[3], tag=f"precise-{name}-restore")
    with open(os.path.join(work, "results-precise.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"{'mode':8} {'edit':11} {'compiled today':>15} {'compiled precise':>17} {'precise hits':>13} "
          f"{'CPU today s':>12} {'CPU precise s':>14} {'wall today s':>13} {'wall precise s':>15} changed stale")
    for r in results:
        print(f"{r['mode']:8} {r['edit']:11} {r['today_compiled']:>15} {r['precise_compiled']:>17} "
              f"{r['precise_hits']:>13} {r['today_backend_cpu_s']:>12.2f} {r['precise_backend_cpu_s']:>14.2f} "
              f"{r['today_wall_s']:>13.2f} {r['precise_wall_s']:>15.2f} {r['objects_changed']:>7} {len(r['stale'])}")
    sys.exit(1 if stale_total else 0)


if __name__ == "__main__":
    main()

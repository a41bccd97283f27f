#!/usr/bin/env python3
"""Cold-build cost of precise mode (issue 16, item 3): the same cold distributed-ThinLTO backend
phase run through ltocache with precise mode off (LTOCACHE_PRECISE=0) and in cold modes
(LTOCACHE_PRECISE_COLD: `auto` = unset, the default: the shim H.so beside the helper where it is
usable, else `background`; `shim`, `background`, `sync`, `skip`), side by side in one run, rounds
interleaved.

  python3 benches/precise/cold_cost.py --corpus DIR --ltocache L --helper H [--jobs 2] [--rounds 2]
      [--flags "-O2"] [--modes off,auto,background,sync] [--before DIR] [--preload-runs 40] [--warm-state]

DIR holds the thin-linked corpus: the bitcode objects and their `X.o.thinlto.bc` shards under
DIR/lto/ (as benches/realworld/bench.py leaves them; shards name modules relative to DIR). Each
pass starts from an empty cache and an empty output directory (every job is cold) and runs every
backend `clang-19 FLAGS -c -fthinlto-index=X.thinlto.bc -x ir X -o out/X` through ltocache, JOBS at
a time. CPU is everything the pass cost: this script makes itself the child subreaper, so the
detached background children and the helper server (both leave the job's process tree) are
reparented to it and reaped when they finish; the pass ends when the last of them has (helper idle
timeout 1 s), and RUSAGE_CHILDREN then holds all of it. Wall is the backend phase's (until the last
backend returns: what the build waits for); `drain` is how much longer the background work took.
With --warm-state each mode keeps its state directory (LTOCACHE_STATS_DIR: memos of the compiler's
identity, its cc1 lines, libLLVM, the helper's and the shim's checks) across passes, after one
uncounted warm-up pass per mode, and zeroes its statistics before each pass: a cold cache and cold
outputs on a host that has run ltocache before; without it every pass also pays those per-host
costs. A mode `M-before` runs mode M with DIR/ltocache and DIR/ltocache-precise-19 (an earlier build, to
compare a change side by side). Prints one JSON line per pass and a summary per mode (median over
rounds)."""
import argparse, ctypes, glob, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

PR_SET_CHILD_SUBREAPER = 36


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def reap_all():
    """Waits for every child, including orphans reparented to us."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def run_pass(a, mode, objs, work):
    ltocache, helper = a.ltocache, a.helper
    if mode.endswith("-before"):
        ltocache, helper = os.path.join(a.before, "ltocache"), os.path.join(a.before, "ltocache-precise-19")
    cache = tempfile.mkdtemp(prefix=f"cold-{mode}-", dir=work)
    out = os.path.join(cache, "out")
    state = os.path.join(work, f"state-{mode}") if a.warm_state else os.path.join(cache, "stats")
    env = dict(os.environ, LTOCACHE_DIR=os.path.join(cache, "cache"), LTOCACHE_STATS_DIR=state,
               LTOCACHE_PRECISE_HELPER=helper, LTOCACHE_PRECISE_IDLE="1")
    for k in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_PRECISE", "LTOCACHE_PRECISE_COLD",
              "LTOCACHE_PRECISE_SERVER", "LTOCACHE_PRECISE_SHIM"):
        env.pop(k, None)
    if mode == "off":
        env["LTOCACHE_PRECISE"] = "0"
    elif mode.removesuffix("-before") != "auto":
        env["LTOCACHE_PRECISE_COLD"] = mode.removesuffix("-before")
    for o in objs:
        os.makedirs(os.path.dirname(os.path.join(out, o)), exist_ok=True)

    def job(o):
        argv = [ltocache, "clang-19", *a.flags.split(), "-c", f"-fthinlto-index={o}.thinlto.bc", "-x", "ir", o,
                "-o", os.path.join(out, o)]
        p = subprocess.run(argv, cwd=a.corpus, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            sys.exit(f"{o}: {p.stderr.decode()}")

    if a.warm_state:
        subprocess.run([ltocache, "zero-stats"], env=env, stdout=subprocess.DEVNULL, check=True)
    reap_all()
    c0 = cpu_children()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(job, objs))
    wall = time.perf_counter() - t0
    reap_all()
    drained = time.perf_counter() - t0
    cpu = cpu_children() - c0
    st = json.loads(subprocess.run([ltocache, "stats", "--json"], env=env, capture_output=True, text=True).stdout)
    maps = len(glob.glob(os.path.join(cache, "cache", "v1", "precise", "*", "*")))
    row = {"mode": mode, "jobs": len(objs), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
           "drain_s": round(drained - wall, 3), "mappings": maps,
           "compiler_cpu_s": st.get("compiler_cpu_seconds_on_misses"), "precise": st.get("precise", {})}
    shutil.rmtree(cache, ignore_errors=True)
    return row


def preload_cost(a, objs, work):
    """What the shim costs inside the compiler, measured apart from ltocache: the corpus's largest
    backend run by clang-19 alone and with the shim preloaded and reporting (as ltocache runs it),
    interleaved, --preload-runs times each; the CPU difference per compile (loading the shim,
    the hook, hashing the module) and the shim's own count of its hashing."""
    shim = a.helper + ".so"
    if not os.path.isfile(shim):
        return None
    obj = max(objs, key=lambda o: os.path.getsize(os.path.join(a.corpus, o)))
    argv = ["clang-19", *a.flags.split(), "-c", f"-fthinlto-index={obj}.thinlto.bc", "-x", "ir", obj, "-o",
            os.path.join(work, "preload.o")]
    times = {"plain": [], "shim": []}
    hashing = []
    report = os.path.join(work, "preload.report")
    for _ in range(a.preload_runs):
        for kind in ("plain", "shim"):
            env = dict(os.environ)
            fds = ()
            if kind == "shim":
                f = open(report, "w")
                env.update(LD_PRELOAD=shim, LTOCACHE_SHIM_PRELOAD="-", LTOCACHE_SHIM_FD=str(f.fileno()))
                fds = (f.fileno(),)
            c0 = cpu_children()
            subprocess.run(argv, cwd=a.corpus, env=env, stdout=subprocess.DEVNULL, check=True, pass_fds=fds)
            times[kind].append(cpu_children() - c0)
            if kind == "shim":
                f.close()
                line = open(report).read().split()
                if line[:1] != ["ok"]:
                    sys.exit(f"the shim reported {line}")
                hashing.append(int(line[3]) / 1e6)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"module": obj, "runs": a.preload_runs, "plain_ms": round(med["plain"], 2), "shim_ms": round(med["shim"], 2),
            "per_compile_ms": round(med["shim"] - med["plain"], 2),
            "shim_hashing_ms": round(statistics.median(hashing), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flags", default="-O2")
    ap.add_argument("--modes", default="off,auto,background,sync")
    ap.add_argument("--before", help="directory of an earlier ltocache and ltocache-precise-19")
    ap.add_argument("--preload-runs", type=int, default=40,
                    help="runs of the largest backend with and without the shim preloaded (0: none)")
    ap.add_argument("--warm-state", action="store_true", help="keep each mode's state directory across passes")
    a = ap.parse_args()
    a.corpus, a.ltocache, a.helper = map(os.path.abspath, (a.corpus, a.ltocache, a.helper))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    objs = sorted(os.path.relpath(s[: -len(".thinlto.bc")], a.corpus)
                  for s in glob.glob(os.path.join(a.corpus, "lto", "**", "*.thinlto.bc"), recursive=True))
    if not objs:
        sys.exit(f"no shards under {a.corpus}/lto")
    work = tempfile.mkdtemp(prefix="ltocache-cold-cost-")
    rows = []
    print(json.dumps({"load": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}))
    if a.warm_state:
        for mode in a.modes.split(","):
            run_pass(a, mode, objs, work)
    for r in range(a.rounds):
        for mode in a.modes.split(","):
            row = run_pass(a, mode, objs, work)
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"load": os.getloadavg()}))
    # On a shared machine the compiler's own CPU varies by more than precise mode costs, so each
    # pass also gives precise mode's own CPU as counted by ltocache (the background children's
    # records, or the jobs' in sync mode; the helper server's from its answers) over the same
    # pass's compiler CPU.
    median = lambda mode, f: statistics.median(f(x) for x in rows if x["mode"] == mode)
    modes = a.modes.split(",")
    base = median("off", lambda x: x["cpu_s"]) if "off" in modes else None
    base_wall = median("off", lambda x: x["wall_s"]) if base else None
    # CPU besides the compiler: the pass's total minus what ltocache counted as the compiler's. The
    # shim's hashing runs inside the compiler's process, so the shim's own count (its reports) is
    # added back; so is the cost of preloading it, measured apart (below).
    besides = lambda x: x["cpu_s"] - (x["compiler_cpu_s"] or 0)
    shim_s = lambda x: x["precise"].get("shim_cpu_ms", 0) / 1e3
    base_besides = median("off", besides) if base else None
    base_compiler = median("off", lambda x: x["compiler_cpu_s"]) if base else None
    preload = preload_cost(a, objs, work) if a.preload_runs > 0 else None
    if preload:
        print(json.dumps({"preload": preload}))
    for mode in modes:
        cpu, wall = median(mode, lambda x: x["cpu_s"]), median(mode, lambda x: x["wall_s"])
        own = median(mode, lambda x: 100 * (x["precise"].get("cpu_ms", 0) + x["precise"].get("helper_cpu_ms", 0)
                                            + x["precise"].get("shim_cpu_ms", 0)) / 1e3 / x["compiler_cpu_s"])
        rel = f" ({100 * (cpu - base) / base:+.1f} %)" if base else ""
        relw = f" ({100 * (wall - base_wall) / base_wall:+.1f} %)" if base else ""
        extra = ""
        if base:
            # (Loading the shim beyond the hashing it counts is the preload line's difference.)
            b = median(mode, lambda x: besides(x) + shim_s(x))
            extra = (f", besides the compiler {b:.3f} s ({100 * (b - base_besides) / base_compiler:+.1f} % of the "
                     f"compiler's {base_compiler:.2f} s; the shim's hashing included)")
        print(f"{mode:>18}: cpu {cpu:.2f} s{rel}, wall -j{a.jobs} {wall:.2f} s{relw}, "
              f"precise mode's own CPU {own:.1f} % of the compiler's{extra}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

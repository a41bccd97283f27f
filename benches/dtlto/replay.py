#!/usr/bin/env python3
"""A warm job file replayed: ltocache's distributor alone, binaries side by
side (docs/benchmarks.md, "DTLTO warm path").

    # 1. capture: a distributor that keeps lld's job file and its shards in
    #    DIR, then runs the real distributor (give it as lld's distributor):
    #    -fthinlto-distributor=PY -Xthinlto-distributor=replay.py
    #    -Xthinlto-distributor=capture -Xthinlto-distributor=DIR
    #    -Xthinlto-distributor=/path/to/ltocache
    # 2. replay, alternating, N rounds; each NAME=CACHE:BINARY[:OPTION...]:
    replay.py replay DIR N old=/c/old:/tmp/old/ltocache new=/c/new:./ltocache new1=/c/new:./ltocache:--jobs=1

A replay puts the captured shards back (lld deletes them after the link),
removes the jobs' outputs before each run (as lld does after each link),
runs each binary on the job file from the link's directory, and prints the
median wall and CPU time (user, system) of the distributor process from
wait4. Warm the caches first (one replay each, or links).
"""
import json, os, shutil, statistics, sys, time


def capture(out, argv):
    job = argv[-1]
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    shutil.copy(job, os.path.join(out, "job.json"))
    with open(os.path.join(out, "name"), "w") as f:
        f.write(os.path.basename(job))
    with open(os.path.join(out, "cwd"), "w") as f:
        f.write(os.getcwd())
    for j in json.load(open(job))["jobs"]:
        for i in j["inputs"]:
            if i.endswith(".thinlto.bc"):
                shutil.copy(i, os.path.join(out, "shards", os.path.basename(i)))
    os.execv(argv[0], argv)


def replay(cap, rounds, variants):
    cwd = open(os.path.join(cap, "cwd")).read().strip()
    jobs = json.load(open(os.path.join(cap, "job.json")))["jobs"]
    os.chdir(cwd)
    for j in jobs:
        for i in j["inputs"]:
            if i.endswith(".thinlto.bc"):
                os.makedirs(os.path.dirname(i) or ".", exist_ok=True)
                shutil.copy2(os.path.join(cap, "shards", os.path.basename(i)), i)
    # lld's name for it (`OUT.PID.dist-file.json`): the distributor takes
    # the link's output and the linker's PID from it.
    name_file = os.path.join(cap, "name")
    name = open(name_file).read().strip() if os.path.exists(name_file) else "replay.1.dist-file.json"
    jf = os.path.join(cap, name)
    shutil.copy(os.path.join(cap, "job.json"), jf)
    parsed = []
    for v in variants:
        name, rest = v.split("=", 1)
        cache, binary, *opts = rest.split(":")
        parsed.append((name, cache, binary, opts))
    res = {p[0]: [] for p in parsed}
    out = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    outputs = [o for j in jobs for o in j["outputs"]]
    for _ in range(rounds):
        for name, cache, binary, opts in parsed:
            # lld deletes the objects after each link: a distributor never
            # finds last link's (keep them and every serve pays an unlink).
            for o in outputs:
                if os.path.exists(o):
                    os.unlink(o)
            env = dict(os.environ, LTOCACHE_DIR=cache)
            t0 = time.perf_counter()
            pid = os.posix_spawn(binary, [binary, *opts, jf], env, file_actions=out)
            _, status, ru = os.wait4(pid, 0)
            if status != 0:
                sys.exit(f"{name}: exit status {status}")
            res[name].append((time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime))
    print(f"load average {os.getloadavg()[0]:.1f}")
    for name, r in res.items():
        med = lambda k: statistics.median(x[k] for x in r) * 1000
        print(f"{name:12} wall {med(0):7.2f} ms  CPU {med(1):7.2f} ms  (user {med(2):6.2f}, system {med(3):6.2f})  "
              f"n={len(r)}")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 4 and sys.argv[1] == "replay":
        replay(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)

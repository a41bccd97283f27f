#!/usr/bin/env python3
"""Local hits of two ltocache binaries side by side: whole-process wall time
(p50, p90) and own CPU per hit as each binary counts it (`stats --json`).
The new binary runs twice: without a remote, and with `LTOCACHE_REMOTE`
naming a server that accepts connections and never answers, so that any
remote code on the way to a local hit would cost a timeout and show.

    benches/probes/ab_hit.py OLD_BINARY NEW_BINARY [MODULES] [ROUNDS]

Runs on the Lua corpus that `benches/realworld/run.sh --corpus lua` (or
`--remote`) prepares; uses /tmp/ltocache-ab-hit."""
import glob, json, os, shutil, socket, subprocess, sys, time

W = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "realworld", "work", "lua")
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 20
S = "/tmp/ltocache-ab-hit"
objs = sorted(p[len(W) + 5:-len(".thinlto.bc")] for p in glob.glob(W + "/lto/**/*.o.thinlto.bc", recursive=True))
if not objs:
    sys.exit("no Lua corpus: run benches/realworld/run.sh --corpus lua first")
sample = objs[::max(1, len(objs) // n)][:n]
hung = socket.socket()
hung.bind(("127.0.0.1", 0))
hung.listen(1024)
remote = f"http://127.0.0.1:{hung.getsockname()[1]}/c|name=hung|operation-timeout=1000"
variants = {"old": (sys.argv[1], ""), "new": (sys.argv[2], ""), "new, remote set": (sys.argv[2], remote)}


def env(t):
    e = {k: v for k, v in os.environ.items() if not k.startswith("LTOCACHE_")}
    d = t.replace(" ", "_").replace(",", "")
    e.update(LTOCACHE_DIR=f"{S}/{d}/cache", LTOCACHE_STATS_DIR=f"{S}/{d}/state", LTOCACHE_LOGFILE=f"{S}/{d}/log")
    if variants[t][1]:
        e["LTOCACHE_REMOTE"] = variants[t][1]
    return e


def run(t, o):
    out = f"out/ab-hit/{t.replace(' ', '_').replace(',', '')}/{o}"
    os.makedirs(os.path.dirname(f"{W}/{out}"), exist_ok=True)
    try:
        os.unlink(f"{W}/{out}")
    except FileNotFoundError:
        pass
    argv = [variants[t][0], "clang-19", "-O2", "-c", f"-fthinlto-index=lto/{o}.thinlto.bc", "-x", "ir", f"lto/{o}",
            "-o", out]
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=W, env=env(t), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


shutil.rmtree(S, ignore_errors=True)
for t in variants:  # store every sampled module, then counters from zero
    for o in sample:
        run(t, o)
    subprocess.run([variants[t][0], "zero-stats"], env=env(t), check=True, stdout=subprocess.DEVNULL)
walls = {t: [] for t in variants}
order = list(variants)
for r in range(rounds):
    for o in sample:
        order = order[1:] + order[:1]  # rotate who goes first
        for t in order:
            walls[t].append(run(t, o))
print("| binary | hits | wall p50 ms | wall p90 ms | own CPU per hit ms | remote counters |")
print("|---|---:|---:|---:|---:|---|")
for t in variants:
    s = json.loads(subprocess.run([variants[t][0], "stats", "--json"], env=env(t), check=True,
                                  stdout=subprocess.PIPE).stdout)
    w = sorted(walls[t])
    remotes = s.get("remotes", {})
    print(f"| {t} | {s['hits']} | {w[len(w) // 2] * 1e3:.2f} | {w[int(len(w) * .9)] * 1e3:.2f} | "
          f"{s['own_cpu_seconds_on_hits'] / s['hits'] * 1e3:.3f} | {remotes or 'none'} |")

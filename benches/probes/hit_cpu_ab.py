#!/usr/bin/env python3
"""CPU time (user + system, from wait4) of one hit and one front-end
pass-through for two ltocache binaries, alternating in one loop; plus the
system calls a hit makes (strace, the wrapper only). On the Lua build
that demo/run.sh prepares, each binary with its own cache.

    benches/probes/hit_cpu_ab.py OLD_BINARY NEW_BINARY [runs] [module]
"""
import os, re, subprocess, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
build = os.path.join(root, "target/demo/build")
bins = {"old": os.path.abspath(sys.argv[1]), "new": os.path.abspath(sys.argv[2])}
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 300
module = sys.argv[4] if len(sys.argv) > 4 else "lvm"
backend = ["clang-19", "-O2", "-c", f"-fthinlto-index={module}.o.thinlto.bc", "-x", "ir", f"{module}.o", "-o", f"{module}.native.o"]
fe = ["/bin/true", "-c", "-O2", "-I", "include", f"{module}.c", "-o", "/dev/null"]
env = {t: dict(os.environ, LTOCACHE_DIR=os.path.join(root, f"target/demo/cache-ab-{t}")) for t in bins}
for t, b in bins.items():
    subprocess.run([b] + backend, cwd=build, env=env[t], check=True, stderr=subprocess.DEVNULL)


def cpu(cmd, e):
    pid = os.fork()
    if pid == 0:
        os.chdir(build)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execve(cmd[0], cmd, e)
    _, status, ru = os.wait4(pid, 0)
    assert status == 0, cmd
    return ru.ru_utime + ru.ru_stime


res = {(t, k): [] for t in bins for k in ("hit", "pass")}
for i in range(runs):
    for t in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
        res[(t, "hit")].append(cpu([bins[t]] + backend, env[t]))
        res[(t, "pass")].append(cpu([bins[t]] + fe, env[t]))
print("| binary | hit CPU p50 ms | hit CPU mean ms | pass-through CPU p50 ms | system calls per hit |")
print("|---|---:|---:|---:|---:|")
for t in bins:
    h, p = sorted(res[(t, "hit")]), sorted(res[(t, "pass")])
    # Only the wrapper's own calls (no -f: a hit runs no clang): one line per call.
    trace = subprocess.run(["strace", "-o", "/dev/stdout", bins[t]] + backend, cwd=build, env=env[t],
                           capture_output=True, text=True).stdout
    calls = sum(1 for line in trace.splitlines() if line and not line.startswith("+++"))
    print(f"| {t} | {h[len(h)//2]*1e3:.3f} | {sum(h)/len(h)*1e3:.3f} | {p[len(p)//2]*1e3:.3f} | {calls} |")

#!/usr/bin/env python3
"""Cost of one post-import request to ltocache-precise: a process per request
(`--once`, libLLVM loaded every time) against one server for the whole build
(`--serve`, loaded once). Usage: helper_cost.py HELPER BUILD_DIR ROUNDS MODULE...
where BUILD_DIR holds MODULE.o and MODULE.o.thinlto.bc (x86-64, default PIE).
Prints wall and CPU per request for both modes (CPU of the helper process,
from its own answers for the server and from rusage for --once)."""
import os, resource, socket, subprocess, sys, tempfile, time

helper, build, rounds, modules = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def request(m):
    return (f"cwd\t{os.path.abspath(build)}\ninput\t{m}.o\nindex\t{m}.o.thinlto.bc\n"
            "triple\tx86_64-pc-linux-gnu\nreloc\tpic\ncpu\tx86-64\nolevel\t2\nend\n").encode()

def once():
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for m in modules:
            out = subprocess.run([helper, "--once"], input=request(m), capture_output=True).stdout
            assert out.startswith(b"ok "), out
    t = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return t, cpu

def served():
    d = tempfile.mkdtemp()
    sock = os.path.join(d, "h.sock")
    srv = subprocess.Popen([helper, "--serve", sock, "5"])
    while not os.path.exists(sock):
        time.sleep(0.001)
    cpu_ns = 0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for m in modules:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(request(m))
            out = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                out += b
            s.close()
            assert out.startswith(b"ok "), out
            cpu_ns += int(out.split()[3])
    t = time.perf_counter() - t0
    srv.terminate()
    return t, cpu_ns / 1e9

n = rounds * len(modules)
for name, (t, cpu) in (("once", once()), ("server", served())):
    print(f"{name:7s} {n} requests: wall {t * 1e3 / n:.2f} ms/request, helper CPU {cpu * 1e3 / n:.2f} ms/request")

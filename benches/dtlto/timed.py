#!/usr/bin/env python3
"""A distributor shim for the benchmark: runs the real distributor (its own
arguments, then lld's job file) and appends its wall time and CPU time (its
process tree's) to $DTLTO_TIMING_LOG, to tell a distributor's run over the
jobs apart from the rest of the link. The CPU time is the children's time
gained during the run: the shim's own start-up may have waited for children
already (a pyenv shim in front of python does, ~45 ms), which are not the
distributor's."""
import os
import resource
import subprocess
import sys
import time

def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


c0 = children_cpu()
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
cpu = children_cpu() - c0
with open(os.environ["DTLTO_TIMING_LOG"], "a") as f:
    f.write(f"{time.perf_counter() - t0:.6f} {cpu:.6f}\n")
sys.exit(rc)

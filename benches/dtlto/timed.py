#!/usr/bin/env python3
"""A distributor shim for the benchmark: runs the real distributor (its own
arguments, then lld's job file) and appends its wall time and CPU time (its
process tree's) to $DTLTO_TIMING_LOG, to tell a distributor's run over the
jobs apart from the rest of the link."""
import os
import resource
import subprocess
import sys
import time

t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = r.ru_utime + r.ru_stime
with open(os.environ["DTLTO_TIMING_LOG"], "a") as f:
    f.write(f"{time.perf_counter() - t0:.6f} {cpu:.6f}\n")
sys.exit(rc)

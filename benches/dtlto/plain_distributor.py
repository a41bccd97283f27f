#!/usr/bin/env python3
"""A DTLTO distributor without any cache: runs every job of lld's job file
on this machine, N at a time (--jobs=N, default the number of CPUs), and
fails when a job fails or leaves an output missing. The baseline the benchmark
compares ltocache against, and the plain distributor of the wrapper-mode tests.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def main(argv):
    jobs = os.cpu_count() or 1
    for a in argv[1:-1]:
        if a.startswith("--jobs="):
            jobs = int(a.split("=", 1)[1])
        else:
            sys.exit(f"plain_distributor: unknown option {a}")
    with open(argv[-1]) as f:
        spec = json.load(f)
    common = spec["common"]["args"]

    def run(job):
        return subprocess.run(common + job["args"], stdin=subprocess.DEVNULL).returncode

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run, spec["jobs"]))
    missing = [o for j in spec["jobs"] for o in j["outputs"] if not os.path.isfile(o)]
    if any(codes) or missing:
        sys.exit(f"plain_distributor: {sum(1 for c in codes if c)} jobs failed, missing {missing}")


if __name__ == "__main__":
    main(sys.argv)

#!/usr/bin/env python3
"""Kernel benchmark for ltocache: Linux 7.2's CONFIG_LTO_CLANG_THIN_DIST, emulated
on Debian's linux-source-6.1 (x86_64 tinyconfig + 64BIT + LTO_CLANG_THIN + IKCONFIG).

Called by run.sh, which installs the tools, builds ltocache and unpacks the tree.

  bench.py backends  scenarios (a)-(f): distributed backends with and without the cache,
                     ground-truth misses, cmp of every object, symbol check against kbuild's
                     own in-process vmlinux.o
  bench.py frontend  what CC="ltocache clang-19" adds to kbuild's front-end compiles

The emulation (see docs/kernel.md):
  1. `make LLVM=-19 vmlinux` builds the bitcode objects and, in-process, the reference vmlinux.o;
  2. the vmlinux.o link command from .vmlinux.o.cmd is rerun with --thinlto-index-only and the
     thin archives flattened (vmlinux.a members as plain objects, lib.a members between
     --start-lib/--end-lib), keeping `-mllvm -import-instr-limit=5`;
  3. one backend per bitcode object, from the kernel root:
       clang-19 <c_flags from .X.o.cmd> -x ir -fno-lto -Wno-unused-command-line-argument
                -fno-PIE -ffunction-sections -fdata-sections
                -fthinlto-index=X.o.thinlto.bc -c -o X.thinlto-native.o X.o
  4. ld.lld-19 -r of the native objects (+ the same objtool pass kbuild runs), symbols compared
     (name, type, size) with the in-process vmlinux.o.
"""

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

LLVM = "-19"
CC = "clang-19"
LD = "ld.lld-19"
AR = "llvm-ar-19"
NM = "llvm-nm-19"
DIS = "llvm-dis-19"

# Appended to the saved c_flags of every backend (BRIEF §1, §8).
BACKEND_FLAGS = ["-x", "ir", "-fno-lto", "-Wno-unused-command-line-argument",
                 "-fno-PIE", "-ffunction-sections", "-fdata-sections"]
# Scenario (f): a backend-only flag change. It adds .stack_sizes sections and no symbols.
FLAG_CHANGE = ["-fstack-size-section"]

BASE_CONFIG = [
    ["--enable", "64BIT"], ["--disable", "LTO_NONE"], ["--enable", "LTO_CLANG_THIN"],
    ["--enable", "IKCONFIG"], ["--disable", "LOCALVERSION_AUTO"],
]
BASE_LOCALVERSION = "-ltocache-a"
CHANGED_LOCALVERSION = "-ltocache-b"

# Scenario (d): one function, setup_arch(), in arch/x86/kernel/setup.c (97 importers).
EDIT_FILE = "arch/x86/kernel/setup.c"
EDIT_OLD = "\tbootloader_version |= boot_params.hdr.ext_loader_ver << 4;\n"
EDIT_NEW = "\tbootloader_version |= boot_params.hdr.ext_loader_ver << 5; /* ltocache bench edit */\n"


def log(msg):
    print(msg, flush=True)


def sh(argv, cwd, logfile=None, env=None, check=True):
    """Runs argv; output goes to logfile (appended) or is captured and returned."""
    if logfile:
        with open(logfile, "ab") as f:
            f.write(("\n$ " + " ".join(shlex.quote(a) for a in argv) + "\n").encode())
            f.flush()
            p = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        if check and p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(argv)} — see {logfile}")
        return p.returncode
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stderr}")
    return p.stdout


def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return "absent"


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- kernel tree


class Tree:
    def __init__(self, root, logdir, jobs):
        self.root = root
        self.logdir = logdir
        self.jobs = jobs

    def path(self, rel):
        return os.path.join(self.root, rel)

    def make(self, *targets, cc=None, tag="make"):
        argv = ["make", f"LLVM={LLVM}", f"-j{self.jobs}"]
        if cc:
            argv.append(f"CC={cc}")
        argv += list(targets)
        t0, c0 = time.perf_counter(), children_cpu()
        sh(argv, self.root, logfile=os.path.join(self.logdir, f"{tag}.log"))
        return time.perf_counter() - t0, children_cpu() - c0

    def config_value(self, name):
        with open(self.path(".config")) as f:
            for line in f:
                if line.startswith(f"CONFIG_{name}="):
                    return line.split("=", 1)[1].strip()
                if line.startswith(f"# CONFIG_{name} is not set"):
                    return "n"
        return None

    def scripts_config(self, *args):
        sh(["./scripts/config", *args], self.root)

    def configure(self):
        """tinyconfig + 64BIT + LTO_CLANG_THIN + IKCONFIG, LOCALVERSION at its base value."""
        ok = os.path.exists(self.path(".config")) and self.config_value("LTO_CLANG_THIN") == "y" \
            and self.config_value("IKCONFIG") == "y"
        if not ok:
            log(f"configuring {self.root}: tinyconfig + 64BIT + LTO_CLANG_THIN + IKCONFIG")
            self.make("tinyconfig", tag="config")
            for a in BASE_CONFIG:
                self.scripts_config(*a)
            self.scripts_config("--set-str", "LOCALVERSION", BASE_LOCALVERSION)
            self.make("olddefconfig", tag="config")
        self.set_localversion(BASE_LOCALVERSION)
        for name, want in [("64BIT", "y"), ("LTO_CLANG_THIN", "y"), ("IKCONFIG", "y")]:
            if self.config_value(name) != want:
                sys.exit(f"CONFIG_{name} is {self.config_value(name)}, expected {want}")

    def set_localversion(self, value):
        if self.config_value("LOCALVERSION") != f'"{value}"':
            self.scripts_config("--set-str", "LOCALVERSION", value)
            self.make("olddefconfig", tag="config")

    def set_edit(self, edited):
        p = self.path(EDIT_FILE)
        with open(p) as f:
            text = f.read()
        want_old, want_new = (EDIT_OLD, EDIT_NEW) if edited else (EDIT_NEW, EDIT_OLD)
        if want_new in text:
            return
        if want_old not in text:
            sys.exit(f"{EDIT_FILE}: the line to edit is not there")
        with open(p, "w") as f:  # new mtime: make rebuilds setup.o
            f.write(text.replace(want_old, want_new, 1))


# ----------------------------------------------------------- the distributed flow


class Dist:
    """The vmlinux.o link of a built 6.1 tree, turned into a distributed ThinLTO build."""

    def __init__(self, tree):
        self.tree = tree
        root = tree.root
        with open(os.path.join(root, ".vmlinux.o.cmd")) as f:
            line = f.readline()
        m = re.match(r"cmd_vmlinux\.o := (.*)$", line.rstrip("\n"))
        if not m:
            sys.exit("unexpected .vmlinux.o.cmd")
        link, _, post = m.group(1).partition(";")
        self.post_link = shlex.split(post)  # objtool ... --link vmlinux.o
        tokens = shlex.split(link)
        if tokens[0] != LD:
            sys.exit(f"vmlinux.o linked by {tokens[0]}, expected {LD}")
        tokens = tokens[1:]
        # Flatten the archives: whole-archive members become plain objects, the
        # libraries become --start-lib groups (lld names members of real archives
        # "vmlinux.a(foo.o at 1234)", which a backend cannot be told to build).
        head, objs, libs = [], [], []
        whole = False
        i = 0
        while i < len(tokens):
            t = tokens[i]
            i += 1
            if t == "--whole-archive":
                whole = True
            elif t == "--no-whole-archive":
                whole = False
            elif t in ("--start-group", "--end-group"):
                pass
            elif t == "-o":
                i += 1  # output replaced below
            elif t.endswith(".a"):
                members = sh([AR, "t", t], root).split()
                (objs if whole else libs).append(members)
            else:
                head.append(t)
        self.head = head
        self.objs = [m for ms in objs for m in ms]
        self.libs = [m for ms in libs for m in ms]
        self.members = self.objs + self.libs
        self.bitcode = [m for m in self.members if self.is_bitcode(m)]
        self.flags = {m: self.c_flags(m) for m in self.bitcode}

    def is_bitcode(self, rel):
        with open(self.tree.path(rel), "rb") as f:
            return f.read(4) == b"BC\xc0\xde"

    def c_flags(self, obj):
        """The front end's flags for obj: `.X.o.cmd` minus the compiler and `-c -o X.o X.c`."""
        d, b = os.path.split(obj)
        with open(self.tree.path(os.path.join(d, f".{b}.cmd"))) as f:
            line = f.readline().rstrip("\n")
        prefix = f"cmd_{obj} := "
        if not line.startswith(prefix):
            sys.exit(f"unexpected command file for {obj}")
        argv = shlex.split(line[len(prefix):])
        if argv[0] != CC:
            sys.exit(f"{obj}: built by {argv[0]}, expected {CC} (was the tree built with CC=ltocache?)")
        argv = argv[1:]
        # ... -c -o X.o X.c
        if len(argv) < 4 or argv[-4:-1] != ["-c", "-o", obj]:
            sys.exit(f"{obj}: cannot find '-c -o {obj} <source>' at the end of its command")
        return argv[:-4]

    def thin_link(self):
        argv = [LD, *self.head, "-o", "vmlinux.thinlink.o",
                "--thinlto-index-only=vmlinux.thinlto-index", "--thinlto-emit-imports-files",
                *self.objs, "--start-lib", *self.libs, "--end-lib"]
        t0 = time.perf_counter()
        sh(argv, self.tree.root)
        return time.perf_counter() - t0

    def backend_argv(self, obj, out, extra=()):
        return [*self.flags[obj], *BACKEND_FLAGS, *extra,
                f"-fthinlto-index={obj}.thinlto.bc", "-c", "-o", out, obj]

    @staticmethod
    def native(obj, kind):
        return obj[:-2] + (".thinlto-native.o" if kind == "cache" else ".ref-native.o")

    def final_link(self, kind, out):
        """ld.lld -r of the native objects, then kbuild's objtool pass. Returns an error or None."""
        nat = lambda m: self.native(m, kind) if m in self.flags else m
        head = []
        skip = False
        for t in self.head:  # thin-link-only options stay out of the relocatable link
            if skip:
                skip = False
                continue
            if t == "-mllvm":
                skip = True
                continue
            head.append(t)
        argv = [LD, *head, "-o", out, *[nat(m) for m in self.objs],
                "--start-lib", *[nat(m) for m in self.libs], "--end-lib"]
        p = subprocess.run(argv, cwd=self.tree.root, capture_output=True, text=True)
        if p.returncode != 0:
            return f"ld.lld -r failed: {p.stderr[:500]}"
        post = [out if t == "vmlinux.o" else t for t in self.post_link]
        if post:
            p = subprocess.run(post, cwd=self.tree.root, capture_output=True, text=True)
            if p.returncode != 0:
                return f"objtool failed: {p.stderr[:500]}"
        return None

    def symbols(self, rel):
        out = sh([NM, "-S", "--format=posix", rel], self.tree.root)
        rows = []
        for line in out.splitlines():
            parts = line.split()
            # name type [value [size]]
            name, typ = parts[0], parts[1]
            size = parts[3] if len(parts) > 3 else ""
            rows.append((name, typ, size))
        return sorted(rows)


# ------------------------------------------------------------------ one pass


def run_pass(dist, kind, jobs, env, extra=()):
    """One backend per bitcode object, `jobs` at a time. kind: 'ref' (plain clang) or 'cache'."""
    root = dist.tree.root
    items = []
    for m in dist.bitcode:
        out = dist.native(m, kind)
        argv = dist.backend_argv(m, out, extra)
        if kind == "cache":
            argv = [env["LTOCACHE_BIN"], CC, *argv]
        else:
            argv = [CC, *argv]
        items.append((m, out, argv))

    def one(item):
        m, out, argv = item
        s = time.perf_counter()
        p = subprocess.run(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return m, time.perf_counter() - s, p.returncode, p.stderr

    c0 = children_cpu()
    t0 = time.perf_counter()
    res = {}
    with cf.ThreadPoolExecutor(jobs) as ex:
        for m, dt, rc, err in ex.map(one, items):
            res[m] = {"seconds": dt, "rc": rc, "stderr": err}
    wall = time.perf_counter() - t0
    cpu = children_cpu() - c0
    failed = [m for m, r in res.items() if r["rc"] != 0]
    return {"wall": wall, "cpu": cpu, "per": res, "failed": failed}


class GroundTruth:
    """Which backends must miss: the ones whose input bitcode, shard, imported modules'
    bitcode, .incbin data or flags differ from every state the cache has seen."""

    def __init__(self, work):
        self.seen = {}  # obj -> set of signatures already compiled through the cache
        self.incbin_memo_path = os.path.join(work, "incbin-memo.json")
        try:
            with open(self.incbin_memo_path) as f:
                self.incbin_memo = json.load(f)
        except (FileNotFoundError, ValueError):
            self.incbin_memo = {}
        self.prev_ref = {}  # obj -> sha of the plain backend's object in the previous state
        self.last_detail = {}  # obj -> signature parts of the previous state

    def incbins(self, root, obj, obj_sha):
        if obj_sha not in self.incbin_memo:
            text = sh([DIS, obj, "-o", "-"], root)
            found = []
            for line in text.splitlines():
                if line.startswith("module asm"):
                    found += re.findall(r'\.incbin \\22([^\\]*)\\22', line)
            self.incbin_memo[obj_sha] = found
            with open(self.incbin_memo_path, "w") as f:
                json.dump(self.incbin_memo, f)
        return self.incbin_memo[obj_sha]

    def signatures(self, dist, extra):
        root = dist.tree.root
        hashes = {}

        def h(rel):
            if rel not in hashes:
                hashes[rel] = sha(os.path.join(root, rel))
            return hashes[rel]

        sigs, detail = {}, {}
        for m in dist.bitcode:
            imports = []
            try:
                with open(os.path.join(root, m + ".imports")) as f:
                    imports = [l.strip() for l in f if l.strip()]
            except FileNotFoundError:
                pass
            inc = self.incbins(root, m, h(m))
            parts = {
                "input": h(m),
                "shard": h(m + ".thinlto.bc"),
                "imports": [(i, h(i)) for i in imports],
                "incbin": [(p, h(p)) for p in inc],
                "flags": dist.backend_argv(m, "OUT", extra),
            }
            sigs[m] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
            detail[m] = parts
        return sigs, detail

    def required(self, sigs):
        return {m for m, s in sigs.items() if s not in self.seen.get(m, set())}

    def reasons(self, required, detail):
        """For each required miss, which parts differ from the previous state ('new' if unseen)."""
        out = {}
        for m in required:
            prev = self.last_detail.get(m)
            out[m] = ["new"] if prev is None else [k for k in detail[m] if prev[k] != detail[m][k]]
        return out

    def commit(self, sigs, detail):
        for m, s in sigs.items():
            self.seen.setdefault(m, set()).add(s)
        self.last_detail = detail


def hits_from_log(path):
    hits = set()
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[2] == "hit":
                    hits.add(parts[-1])
    except FileNotFoundError:
        pass
    return hits


def stats_json(env):
    out = subprocess.run([env["LTOCACHE_BIN"], "stats", "--json"], env=env, capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": out.stdout + out.stderr}


# ----------------------------------------------------------- scenarios (a)-(f)


def cmd_backends(a):
    work = os.path.abspath(a.work)
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir, exist_ok=True)
    tree = Tree(os.path.join(work, "linux-source-6.1"), logdir, a.jobs)
    ltocache = os.path.abspath(a.ltocache)
    cache_dir = os.path.join(work, "cache")
    stats_dir = os.path.join(work, "stats")
    env = dict(os.environ, LTOCACHE_BIN=ltocache, LTOCACHE_DIR=cache_dir, LTOCACHE_STATS_DIR=stats_dir)
    for k in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY"):
        env.pop(k, None)
    plain_env = dict(os.environ)

    # The base state: setup.c unedited, LOCALVERSION at its base value, everything built.
    tree.configure()
    tree.set_edit(False)
    tree.set_localversion(BASE_LOCALVERSION)
    log("make vmlinux (base state)")
    mk = tree.make("vmlinux", tag="make-base")
    log(f"  {mk[0]:.1f} s wall")

    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(stats_dir, ignore_errors=True)
    gt = GroundTruth(work)
    rows, problems, all_hit_latency = [], [], []
    nocache_ref = {}

    def scenario(label, desc, extra=(), no_cache_only=False, ref_symbols_from="vmlinux.o"):
        dist = Dist(tree)
        tl = dist.thin_link()
        sigs, detail = gt.signatures(dist, extra)
        required = gt.required(sigs)
        reasons = gt.reasons(required, detail)
        reason_counts = {}
        for rs in reasons.values():
            for r in rs:
                reason_counts[r] = reason_counts.get(r, 0) + 1

        log(f"({label}) {desc}: {len(dist.bitcode)} backends; thin link {tl:.2f} s")
        ref = run_pass(dist, "ref", a.jobs, plain_env, extra)
        if ref["failed"]:
            sys.exit(f"plain backends failed: {ref['failed'][:5]}")
        ref_sha = {m: sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
        changed_objs = [m for m in dist.bitcode if gt.prev_ref and gt.prev_ref.get(m) != ref_sha[m]]
        gt.prev_ref = ref_sha
        row = {
            "label": label, "desc": desc, "backends": len(dist.bitcode), "thin_link_s": tl,
            "nocache_wall": ref["wall"], "nocache_cpu": ref["cpu"],
            "objects_changed": len(changed_objs) if label != "a" else None,
        }
        if no_cache_only:
            row.update(wall=ref["wall"], cpu=ref["cpu"], hits=None, misses=None, required=None)
            nocache_ref.update(wall=ref["wall"], cpu=ref["cpu"])
            rows.append(row)
            log(f"    no cache: {ref['wall']:.1f} s wall, {ref['cpu']:.1f} s CPU")
            return dist

        logfile = os.path.join(logdir, f"ltocache-{label}.log")
        if os.path.exists(logfile):
            os.remove(logfile)
        penv = dict(env, LTOCACHE_LOGFILE=logfile)
        subprocess.run([ltocache, "zero-stats"], env=penv, capture_output=True)
        cached = run_pass(dist, "cache", a.jobs, penv, extra)
        st = stats_json(penv)
        hits_logged = hits_from_log(logfile)
        hits = {m for m in dist.bitcode if dist.native(m, "cache") in hits_logged}
        if len(hits) != st.get("hits"):
            problems.append(f"({label}) log shows {len(hits)} hits, stats {st.get('hits')}")
        not_served = set(dist.bitcode) - hits
        extra_misses = sorted(not_served - required)
        missing_misses = sorted(required & hits)
        cmp_hit = [m for m in dist.bitcode
                   if sha(tree.path(dist.native(m, "cache"))) != ref_sha[m] and m in hits]
        cmp_miss = [m for m in dist.bitcode
                    if sha(tree.path(dist.native(m, "cache"))) != ref_sha[m] and m not in hits]
        stderr_diff = [m for m in dist.bitcode if cached["per"][m]["stderr"] != ref["per"][m]["stderr"]]
        hit_lat = [cached["per"][m]["seconds"] for m in hits]
        all_hit_latency.extend(hit_lat)
        miss_lat = [cached["per"][m]["seconds"] for m in not_served]

        err = dist.final_link("cache", "vmlinux.dist.o")
        sym = "links; symbols match"
        if err:
            sym = err
            problems.append(f"({label}) final link: {err}")
        else:
            ours, theirs = dist.symbols("vmlinux.dist.o"), dist.symbols(ref_symbols_from)
            if ours != theirs:
                a_only = sorted(set(ours) - set(theirs))[:5]
                b_only = sorted(set(theirs) - set(ours))[:5]
                sym = f"symbols differ ({len(ours)} vs {len(theirs)}): +{a_only} -{b_only}"
                problems.append(f"({label}) {sym}")
            else:
                sym = f"links; {len(ours)} symbols match"

        if cached["failed"]:
            problems.append(f"({label}) wrapped backends failed: {cached['failed'][:5]}")
        if extra_misses:
            problems.append(f"({label}) {len(extra_misses)} extra misses: {extra_misses[:10]}")
        if missing_misses:
            problems.append(f"({label}) {len(missing_misses)} hits where the ground truth needs a miss: "
                            f"{missing_misses[:10]}")
        if cmp_hit or cmp_miss:
            problems.append(f"({label}) objects differ from a fresh uncached run: hits {cmp_hit[:5]} "
                            f"misses {cmp_miss[:5]}")
        if stderr_diff:
            problems.append(f"({label}) stderr differs from the plain backend: {stderr_diff[:5]}")
        if st.get("uncacheable_total"):
            problems.append(f"({label}) uncacheable: {st.get('uncacheable')}")
        if st.get("errors"):
            problems.append(f"({label}) errors: {st.get('errors')}")

        gt.commit(sigs, detail)
        row.update(
            wall=cached["wall"], cpu=cached["cpu"], hits=len(hits), misses=len(not_served),
            required=len(required), extra=len(extra_misses), missing=len(missing_misses),
            cmp_diff=len(cmp_hit) + len(cmp_miss), stderr_diff=len(stderr_diff), symbols=sym,
            hit_p50_ms=pct(hit_lat, 50) * 1000 if hit_lat else None,
            hit_p90_ms=pct(hit_lat, 90) * 1000 if hit_lat else None,
            miss_p50_ms=pct(miss_lat, 50) * 1000 if miss_lat else None,
            stats={k: st.get(k) for k in ("hits", "misses", "uncacheable", "uncacheable_total", "errors",
                                          "compile_failed", "stores", "bytes_served", "bytes_hashed",
                                          "backend_seconds_saved", "backend_seconds_on_misses",
                                          "cache_entries", "cache_size_bytes")},
            required_sample=sorted(required)[:8],
            reason_counts=reason_counts,
            reasons={m: reasons[m] for m in sorted(reasons)[:20]} if len(reasons) <= 20 else None,
        )
        rows.append(row)
        log(f"    cache: {len(hits)} hits, {len(not_served)} misses (ground truth needs {len(required)}), "
            f"{cached['wall']:.1f} s wall, {cached['cpu']:.1f} s CPU; no cache {ref['wall']:.1f} s; "
            f"cmp diffs {row['cmp_diff']}; {sym}")
        log(f"    why the ground truth needs misses (parts changed): {reason_counts}")
        if len(reasons) <= 10:
            for m in sorted(reasons):
                log(f"      {m}: {', '.join(reasons[m])}")
        if st.get("uncacheable") or st.get("errors"):
            log(f"    stats: uncacheable {st.get('uncacheable')} errors {st.get('errors')}")
        return dist

    scenario("a", "no cache (plain clang-19)", no_cache_only=True)
    scenario("b", "cold cache")
    scenario("c", "warm, no change (thin link rerun: same shards, new mtimes)")

    tree.set_edit(True)
    log("make vmlinux (setup_arch edited)")
    tree.make("vmlinux", tag="make-d")
    scenario("d", "one function changed: setup_arch() in arch/x86/kernel/setup.c")

    before = sha(tree.path("kernel/config_data.gz"))
    tree.set_localversion(CHANGED_LOCALVERSION)
    log(f"make vmlinux (CONFIG_LOCALVERSION={CHANGED_LOCALVERSION})")
    tree.make("vmlinux", tag="make-e")
    if sha(tree.path("kernel/config_data.gz")) == before:
        problems.append("(e) kernel/config_data.gz did not change")
    d = scenario("e", f'.config change: CONFIG_LOCALVERSION="{CHANGED_LOCALVERSION}" (kernel/config_data.gz)')
    e_row = rows[-1]
    configs_missed = "kernel/configs.o" in set(d.bitcode) and e_row["hits"] is not None and \
        "kernel/configs.thinlto-native.o" not in hits_from_log(os.path.join(logdir, "ltocache-e.log"))
    e_row["configs_o_missed"] = configs_missed
    if (e_row.get("reasons") or {}).get("kernel/configs.o") != ["incbin"]:
        problems.append(f"(e) expected kernel/configs.o to need a miss for its .incbin data alone, got "
                        f"{(e_row.get('reasons') or {}).get('kernel/configs.o')}")
    if not configs_missed:
        problems.append("(e) kernel/configs.o was served from the cache after its .incbin data changed")

    scenario("f", "backend flag change: + " + " ".join(FLAG_CHANGE), extra=FLAG_CHANGE)
    scenario("g", "flag change reverted (entries from (e) still cached)")

    # Leave the tree in its base state for the next run.
    tree.set_edit(False)
    tree.set_localversion(BASE_LOCALVERSION)

    final_stats = stats_json(env)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "ltocache": sh([ltocache, "--version"], work).strip(),
        "clang": sh([CC, "--version"], work).splitlines()[0],
        "jobs": a.jobs,
        "rows": rows,
        "hit_latency_ms": {"p50": pct(all_hit_latency, 50) * 1000, "p90": pct(all_hit_latency, 90) * 1000,
                           "n": len(all_hit_latency)},
        "cache_size_bytes": final_stats.get("cache_size_bytes"),
        "cache_entries": final_stats.get("cache_entries"),
        "problems": problems,
    }
    out = os.path.join(work, "results-backends.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print_backend_table(result)
    log(f"(raw results: {out})")
    if problems:
        log("PROBLEMS:")
        for p in problems:
            log("  " + p)
        return 1
    return 0


def fmt(v, spec="{:.1f}"):
    return "–" if v is None else spec.format(v)


def print_backend_table(r):
    rows = r["rows"]
    base = next(x for x in rows if x["label"] == "a")
    log("")
    log(f"Kernel 6.1 tinyconfig (x86_64, 64BIT, LTO_CLANG_THIN, IKCONFIG), distributed backends, "
        f"-j{r['jobs']}; {r['clang']}; {r['ltocache']}")
    log("")
    log("| scenario | backends | hits | misses | ground-truth misses (parts changed) | extra | objects changed | "
        "wall s | CPU s | no-cache wall s (same state) | speed-up (wall) | CPU vs no cache | cmp diffs |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        speed = x["nocache_wall"] / x["wall"] if x["wall"] else None
        cpu_ratio = x["cpu"] / x["nocache_cpu"] if x["nocache_cpu"] else None
        why = ", ".join(f"{k} {v}" for k, v in sorted((x.get("reason_counts") or {}).items()))
        log(f"| ({x['label']}) {x['desc']} | {x['backends']} | {fmt(x['hits'], '{}')} | "
            f"{fmt(x['misses'], '{}')} | {fmt(x['required'], '{}')}{f' ({why})' if why else ''} | "
            f"{fmt(x.get('extra'), '{}')} | "
            f"{fmt(x['objects_changed'], '{}')} | {x['wall']:.2f} | {x['cpu']:.2f} | {x['nocache_wall']:.2f} | "
            f"{fmt(speed, '{:.1f}×')} | {fmt(cpu_ratio, '{:.1%}')} | {fmt(x.get('cmp_diff'), '{}')} |")
    log("")
    b = next(x for x in rows if x["label"] == "b")
    log(f"Miss overhead (b vs a): wall {b['wall'] / base['wall'] - 1:+.1%}, CPU {b['cpu'] / base['cpu'] - 1:+.1%}")
    h = r["hit_latency_ms"]
    log(f"Hit latency (all {h['n']} hits, -j{r['jobs']}, wrapper process start to exit): "
        f"p50 {h['p50']:.1f} ms, p90 {h['p90']:.1f} ms")
    per = "; ".join(f"({x['label']}) {x['hit_p50_ms']:.1f}/{x['hit_p90_ms']:.1f}" for x in rows
                    if x.get("hit_p50_ms") is not None)
    log(f"Hit latency p50/p90 ms per scenario: {per}")
    for x in rows:
        if x.get("symbols"):
            log(f"({x['label']}) final ld.lld -r: {x['symbols']}")
    log(f"Cache after the run: {r['cache_entries']} entries, {r['cache_size_bytes']} bytes")


# ------------------------------------------------------------ front-end overhead


def cmd_frontend(a):
    """CC="ltocache clang-19" vs CC=clang-19 on kbuild's front-end compiles.

    Two trees (so switching CC never forces rebuilds of the other), built alternately:
    - subset: touch every .c under the chosen directories, `make <dirs>` (-jN), `reps` times each;
    - full:   `make clean; make vmlinux`, once each (includes kbuild's in-process vmlinux.o link).
    Plus a per-exec micro-benchmark with /bin/true as the "compiler".
    """
    work = os.path.abspath(a.work)
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir, exist_ok=True)
    ltocache = os.path.abspath(a.ltocache)
    trees = {}
    for variant in ("plain", "wrapped"):
        root = os.path.join(work, f"fe-{variant}", "linux-source-6.1")
        if not os.path.exists(os.path.join(root, "Makefile")):
            os.makedirs(os.path.dirname(root), exist_ok=True)
            log(f"unpacking {root}")
            sh(["tar", "xf", a.tarball, "-C", os.path.dirname(root)], work)
        t = Tree(root, logdir, a.jobs)
        t.configure()
        trees[variant] = t
    fe_cache = os.path.join(work, "fe-cache")
    fe_stats = os.path.join(work, "fe-stats")
    env = dict(os.environ, LTOCACHE_DIR=fe_cache, LTOCACHE_STATS_DIR=fe_stats)
    for k in ("LTOCACHE_DISABLE", "LTOCACHE_LOGFILE"):
        env.pop(k, None)
    os.environ.update(LTOCACHE_DIR=fe_cache, LTOCACHE_STATS_DIR=fe_stats)
    cc = {"plain": CC, "wrapped": f"{ltocache} {CC}"}

    subprocess.run([ltocache, "zero-stats"], env=env, capture_output=True)
    dirs = a.dirs.split(",")
    results = {"subset": {"plain": [], "wrapped": []}, "full": {}}

    if a.mode in ("full", "both"):
        # make clean; make vmlinux in each tree. This also brings both trees up to date.
        for v in ("plain", "wrapped"):
            t = trees[v]
            t.make("clean", cc=cc[v], tag=f"fe-{v}-clean")
            before = passthrough(ltocache, env) if v == "wrapped" else 0
            log(f"full build, fe-{v}")
            w, c = t.make("vmlinux", cc=cc[v], tag=f"fe-{v}-full")
            compiles = passthrough(ltocache, env) - before if v == "wrapped" else None
            results["full"][v] = {"wall": w, "cpu": c, "compiles": compiles}
            log(f"  full {v}: {w:.1f} s wall, {c:.1f} s CPU"
                + (f", {compiles} wrapper invocations" if compiles is not None else ""))
    else:
        # Bring both trees up to date (a CC change rebuilds everything once).
        for v, t in trees.items():
            log(f"bringing fe-{v} up to date")
            t.make("vmlinux", cc=cc[v], tag=f"fe-{v}-initial")

    def touch_sources(t):
        n = 0
        now = time.time()
        for d in dirs:
            for dp, _, files in os.walk(t.path(d)):
                for fn in files:
                    if fn.endswith(".c"):
                        os.utime(os.path.join(dp, fn), (now, now))
                        n += 1
        return n

    if a.mode in ("subset", "both"):
        targets = [d.rstrip("/") + "/" for d in dirs]
        for rep in range(a.reps):
            order = ("plain", "wrapped") if rep % 2 == 0 else ("wrapped", "plain")
            for v in order:
                t = trees[v]
                before = passthrough(ltocache, env) if v == "wrapped" else 0
                n = touch_sources(t)
                time.sleep(1.1)  # past the mtime granularity of make
                w, c = t.make(*targets, cc=cc[v], tag=f"fe-{v}-subset")
                compiles = passthrough(ltocache, env) - before if v == "wrapped" else None
                results["subset"][v].append({"wall": w, "cpu": c, "touched": n, "compiles": compiles})
                log(f"  subset rep {rep} {v}: {w:.1f} s wall, {c:.1f} s CPU"
                    + (f", {compiles} wrapper invocations" if compiles is not None else ""))

    # Per-exec cost: the wrapper in front of /bin/true with a real kernel command line,
    # against /bin/true alone and against `env true` (the floor for any exec'ing wrapper).
    with open(os.path.join(trees["plain"].root, "kernel/.fork.o.cmd")) as f:
        line = f.readline().rstrip("\n")
    kargs = shlex.split(line.split(" := ", 1)[1])[1:]
    true = shutil.which("true")
    variants = {"true": [true], "env true": [shutil.which("env"), "true"], "ltocache true": [ltocache, "true"]}
    n = a.micro_n
    samples = {k: {"wall": [], "cpu": []} for k in variants}

    def loop(argv):
        c0, t0 = children_cpu(), time.perf_counter()
        for _ in range(n):
            subprocess.run(argv, env=env, cwd=trees["plain"].root)
        return (time.perf_counter() - t0) / n, (children_cpu() - c0) / n

    loop(variants["ltocache true"] + kargs)  # warm up
    for _ in range(a.micro_rounds):  # interleaved rounds; medians
        for k, v in variants.items():
            w, c = loop(v + kargs)
            samples[k]["wall"].append(w)
            samples[k]["cpu"].append(c)
    med = {k: {m: statistics.median(x[m]) * 1000 for m in ("wall", "cpu")} for k, x in samples.items()}
    results["micro"] = {"n": n, "rounds": a.micro_rounds, "argc": len(kargs), "ms": med,
                        "overhead_ms": {m: med["ltocache true"][m] - med["true"][m] for m in ("wall", "cpu")},
                        "env_overhead_ms": {m: med["env true"][m] - med["true"][m] for m in ("wall", "cpu")}}
    st = stats_json(dict(env, LTOCACHE_BIN=ltocache))
    results["stats"] = {k: st.get(k) for k in ("hits", "misses", "uncacheable", "errors")}
    results["dirs"] = dirs
    results["jobs"] = a.jobs
    out = os.path.join(work, "results-frontend.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print_frontend_table(results)
    log(f"(raw results: {out})")
    return 0


def passthrough(ltocache, env):
    st = stats_json(dict(env, LTOCACHE_BIN=ltocache))
    return (st.get("uncacheable") or {}).get("not_backend", 0)


def print_frontend_table(r):
    log("")
    log(f"Front-end compiles, CC=clang-19 vs CC=\"ltocache clang-19\", -j{r['jobs']}")
    log("")
    if r["subset"]["plain"] or r["full"]:
        log("| build | wrapper invocations | plain wall s | wrapped wall s | wall overhead | plain CPU s | "
            "wrapped CPU s | CPU overhead |")
        log("|---|---|---|---|---|---|---|---|")
    sub = r["subset"]
    if sub["plain"]:
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        pw, ww = med(sub["plain"], "wall"), med(sub["wrapped"], "wall")
        pc, wc = med(sub["plain"], "cpu"), med(sub["wrapped"], "cpu")
        comp = sub["wrapped"][0]["compiles"]
        log(f"| touch *.c in {','.join(r['dirs'])}; make those dirs (median of {len(sub['plain'])}) | {comp} | "
            f"{pw:.1f} | {ww:.1f} | {ww / pw - 1:+.2%} | {pc:.1f} | {wc:.1f} | {wc / pc - 1:+.2%} |")
        all_w = " ".join(f"{p['wall']:.1f}/{w['wall']:.1f}" for p, w in zip(sub["plain"], sub["wrapped"]))
        all_c = " ".join(f"{p['cpu']:.1f}/{w['cpu']:.1f}" for p, w in zip(sub["plain"], sub["wrapped"]))
        log(f"|  (every rep, plain/wrapped) | | wall {all_w} | | | CPU {all_c} | | |")
    full = r["full"]
    if full:
        p, w = full["plain"], full["wrapped"]
        log(f"| make clean; make vmlinux | {w['compiles']} | {p['wall']:.1f} | {w['wall']:.1f} | "
            f"{w['wall'] / p['wall'] - 1:+.2%} | {p['cpu']:.1f} | {w['cpu']:.1f} | {w['cpu'] / p['cpu'] - 1:+.2%} |")
    m = r["micro"]
    log("")
    log(f"Per exec ({m['rounds']} interleaved rounds of {m['n']} runs, {m['argc']} kernel arguments, "
        f"/bin/true as the compiler; medians, ms):")
    for k, v in m["ms"].items():
        log(f"  {k:<14} wall {v['wall']:.3f}  CPU {v['cpu']:.3f}")
    o, e = m["overhead_ms"], m["env_overhead_ms"]
    log(f"  ltocache adds wall {o['wall']:.3f} ms, CPU {o['cpu']:.3f} ms per compile "
        f"(an `env` exec adds wall {e['wall']:.3f}, CPU {e['cpu']:.3f})")
    if full and full["wrapped"]["compiles"]:
        p, w = full["plain"], full["wrapped"]
        cost = o["cpu"] / 1000 * w["compiles"]
        log(f"Estimate for the full build: {w['compiles']} wrapper invocations × {o['cpu']:.3f} ms CPU = "
            f"{cost:.2f} s of {p['cpu']:.0f} s CPU ({cost / p['cpu']:.2%})")
    log(f"ltocache stats on the front-end trees: {r['stats']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["backends", "frontend"])
    p.add_argument("--work", required=True)
    p.add_argument("--ltocache", required=True)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--tarball", default="/usr/src/linux-source-6.1.tar.xz")
    p.add_argument("--mode", choices=["subset", "full", "both", "micro"], default="subset")
    p.add_argument("--dirs", default="kernel")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--micro-n", type=int, default=300)
    p.add_argument("--micro-rounds", type=int, default=5)
    a = p.parse_args()
    sys.exit(cmd_backends(a) if a.command == "backends" else cmd_frontend(a))


if __name__ == "__main__":
    main()

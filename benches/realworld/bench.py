#!/usr/bin/env python3
"""Real-world benchmark of ltocache on distributed ThinLTO builds of zstd, Lua
and libgit2 (C sources from the crates zstd-sys, lua-src and libgit2-sys).

Driven by run.sh, which installs the toolchain, builds ltocache and fetches
the crates. Standard library only. See docs/benchmarks.md for what each
scenario means and how the figures are computed.
"""

import argparse
import copy
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CLANG = "clang-19"
LLD = shutil.which("ld.lld-19") or "ld.lld-19"
BCANALYZER = "llvm-bcanalyzer-19"
JOBS = 2
# The edit applied for the incremental scenarios: a compiler barrier at the
# top of one function body. It changes the function's IR (and its module's
# hash) without changing what the function computes.
EDIT_TEXT = '__asm__ __volatile__("" ::: "memory"); /* ltocache benchmark edit */'


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(argv, cwd=None, env=None, check=True, capture=True):
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(argv)}\n{p.stdout or ''}{p.stderr or ''}")
    return p


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(q / 100 * len(v)))
    return v[k - 1]


# ---------------------------------------------------------------- corpora

class Corpus:
    name = ""
    crate = ""
    product = ""          # the final link's output
    link_flags = []       # ["-shared"] or []
    libs = []
    cflags = []           # front-end flags (with -flto=thin added)
    backend_flags = []    # codegen flags repeated on the backend command
    change = ("", "")     # (source path relative to the corpus dir, function)
    subset = ""           # one sentence for the docs

    def __init__(self, crate_dir):
        self.crate_dir = crate_dir

    def setup(self, cdir):
        """Copies sources into cdir/src and writes generated files; returns the source list."""
        raise NotImplementedError

    def check(self, cdir, outdir):
        """Links and runs a check program against the final link in outdir; returns a short detail string."""
        raise NotImplementedError


def sync_tree(src, dst, keep=lambda rel: True):
    """Makes dst a copy of the files under src accepted by keep (rewriting only what differs)."""
    wanted = set()
    for root, _dirs, files in os.walk(src):
        for f in files:
            s = os.path.join(root, f)
            rel = os.path.relpath(s, src)
            if not keep(rel):
                continue
            wanted.add(rel)
            d = os.path.join(dst, rel)
            with open(s, "rb") as fh:
                data = fh.read()
            try:
                with open(d, "rb") as fh:
                    if fh.read() == data:
                        continue
            except FileNotFoundError:
                pass
            os.makedirs(os.path.dirname(d), exist_ok=True)
            with open(d, "wb") as fh:
                fh.write(data)
    for root, _dirs, files in os.walk(dst):
        for f in files:
            p = os.path.join(root, f)
            if os.path.relpath(p, dst) not in wanted:
                os.unlink(p)


def write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)


def c_files(cdir, rel_dir, exclude=()):
    d = os.path.join(cdir, rel_dir)
    return sorted(os.path.join(rel_dir, f) for f in os.listdir(d) if f.endswith(".c") and f not in exclude)


class Zstd(Corpus):
    name = "zstd"
    crate = "zstd-sys"
    product = "libzstd.so"
    link_flags = ["-shared"]
    libs = ["-lpthread"]
    cflags = ["-O2", "-fPIC", "-pthread", "-DZSTD_MULTITHREAD", "-DZSTD_DISABLE_ASM", "-DXXH_NAMESPACE=ZSTD_",
              "-Isrc/lib", "-Isrc/lib/common"]
    backend_flags = ["-O2", "-fPIC"]
    change = ("src/lib/compress/hist.c", "HIST_count_simple")
    subset = ("zstd/lib common/, compress/, decompress/ and dictBuilder/ (no legacy formats, no deprecated "
              "zbuff, the x86-64 Huffman assembly disabled with ZSTD_DISABLE_ASM), multithreading on; "
              "linked as libzstd.so")

    def setup(self, cdir):
        lib = os.path.join(self.crate_dir, "zstd", "lib")
        keep_dirs = ("common", "compress", "decompress", "dictBuilder")
        sync_tree(lib, os.path.join(cdir, "src", "lib"),
                  keep=lambda rel: rel.endswith(".h") or rel.split(os.sep)[0] in keep_dirs)
        srcs = []
        for d in keep_dirs:
            srcs += c_files(cdir, os.path.join("src", "lib", d))
        return srcs

    def check(self, cdir, outdir):
        exe = os.path.join(outdir, "zstd_check")
        run([CLANG, "-O1", "-Isrc/lib", os.path.join(HERE, "zstd_check.c"), "-L" + outdir, "-lzstd", "-o", exe],
            cwd=cdir)
        p = run([exe], cwd=cdir, env=dict(os.environ, LD_LIBRARY_PATH=os.path.join(cdir, outdir)), check=False)
        if p.returncode != 0 or not re.fullmatch(r"zstd \S+ ok\n", p.stdout):
            raise RuntimeError(f"zstd check failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p.stdout.strip()


LUA_EXPECTED = "\n".join("\t".join(x) for x in [
    ("fib", "6765"), ("sorted", "1,2,3,4,5,6,7,8,9,10"), ("gsub", "hell0 w0rld"), ("format", " 3.14|ff|x"),
    ("coroutine", "1", "4", "9"), ("arith", "3", "1", "1024.0", "integer", "float"), ("utf8", "6"),
    ("gmatch", "THE QUICK BROWN FOX"), ("pcall", "false", "42"), ("meta", "42"), ("loop", "300000"),
    ("table", "500500", "500"), ("rep", "ab-ab-ab"),
]) + "\n"


class Lua(Corpus):
    name = "lua"
    crate = "lua-src"
    product = "lua_bench"
    link_flags = []
    libs = ["-lm"]
    cflags = ["-O2", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX", "-Isrc/lua"]
    backend_flags = ["-O2"]
    change = ("src/lua/ltable.c", "luaH_getshortstr")
    subset = ("every file of lua-5.4.7 as shipped by lua-src (the whole core and standard library) plus a "
              "30-line host program (benches/realworld/lua_main.c, since lua-src omits lua.c); linked as an "
              "executable that runs benches/realworld/check.lua")

    def setup(self, cdir):
        sync_tree(os.path.join(self.crate_dir, "lua-5.4.7"), os.path.join(cdir, "src", "lua"))
        with open(os.path.join(HERE, "lua_main.c")) as f:
            write_if_changed(os.path.join(cdir, "src", "host", "lua_main.c"), f.read())
        return c_files(cdir, os.path.join("src", "lua")) + ["src/host/lua_main.c"]

    def check(self, cdir, outdir):
        p = run([os.path.join(outdir, self.product), os.path.join(HERE, "check.lua")], cwd=cdir, check=False)
        if p.returncode != 0 or p.stdout != LUA_EXPECTED:
            raise RuntimeError(f"lua check failed ({p.returncode}):\n{p.stdout}{p.stderr}\nexpected:\n{LUA_EXPECTED}")
        return "check.lua output as expected"


GIT2_FEATURES = """#ifndef INCLUDE_features_h__
#define INCLUDE_features_h__
/* Written by benches/realworld/bench.py: no HTTPS, no SSH, bundled everything. */
#define GIT_THREADS 1
#define GIT_ARCH_64 1
#define GIT_USE_NSEC 1
#define GIT_USE_STAT_MTIM 1
#define GIT_USE_FUTIMENS 1
#define GIT_REGEX_BUILTIN 1
#define GIT_QSORT_GNU
#define GIT_HTTPPARSER_BUILTIN 1
#define GIT_SHA1_COLLISIONDETECT 1
#define GIT_SHA256_BUILTIN 1
#define GIT_RAND_GETENTROPY 1
#define GIT_RAND_GETLOADAVG 1
#define GIT_IO_POLL 1
#define GIT_IO_SELECT 1
#endif
"""


class Libgit2(Corpus):
    name = "libgit2"
    crate = "libgit2-sys"
    product = "libgit2.so"
    link_flags = ["-shared"]
    libs = ["-lpthread"]
    cflags = ["-O2", "-fPIC", "-pthread", "-fvisibility=hidden", "-D_GNU_SOURCE", "-D_FILE_OFFSET_BITS=64",
              "-Igen", "-Isrc/include", "-Isrc/src/libgit2", "-Isrc/src/util",
              "-Isrc/deps/llhttp", "-Isrc/deps/xdiff", "-Isrc/deps/pcre", "-Isrc/deps/zlib",
              # bundled PCRE
              "-DHAVE_STDINT_H=1", "-DHAVE_MEMMOVE=1", "-DNO_RECURSE=1", "-DNEWLINE=10",
              "-DPOSIX_MALLOC_THRESHOLD=10", "-DLINK_SIZE=2", "-DPARENS_NEST_LIMIT=250",
              "-DMATCH_LIMIT=10000000", "-DMATCH_LIMIT_RECURSION=MATCH_LIMIT", "-DMAX_NAME_SIZE=32",
              "-DMAX_NAME_COUNT=10000",
              # bundled zlib
              "-DNO_VIZ", "-DSTDC", "-DNO_GZIP", "-DHAVE_SYS_TYPES_H", "-DHAVE_STDDEF_H",
              # SHA-1 collision detection
              "-DSHA1DC_NO_STANDARD_INCLUDES=1", "-DSHA1DC_CUSTOM_INCLUDE_SHA1_C=\"common.h\"",
              "-DSHA1DC_CUSTOM_INCLUDE_UBC_CHECK_C=\"common.h\""]
    backend_flags = ["-O2", "-fPIC"]
    change = ("src/src/util/str.c", "git_str_rtrim")
    subset = ("libgit2 1.8.1: src/libgit2 (with transports/ and streams/), src/util (unix, std allocators, "
              "SHA-1 collision detection, builtin SHA-256) and the bundled llhttp, xdiff, PCRE and zlib; "
              "no HTTPS, no SSH, no NTLM/GSSAPI (those files compile to stubs); linked as libgit2.so")

    def setup(self, cdir):
        base = os.path.join(self.crate_dir, "libgit2")
        for sub in ("include", "src/libgit2", "src/util", "deps/llhttp", "deps/xdiff", "deps/pcre", "deps/zlib"):
            sync_tree(os.path.join(base, sub), os.path.join(cdir, "src", sub))
        write_if_changed(os.path.join(cdir, "gen", "git2_features.h"), GIT2_FEATURES)
        srcs = []
        for d in ("src/libgit2", "src/libgit2/transports", "src/libgit2/streams", "src/util", "src/util/unix"):
            srcs += c_files(cdir, os.path.join("src", d))
        srcs += ["src/src/util/allocators/failalloc.c", "src/src/util/allocators/stdalloc.c",
                 "src/src/util/hash/collisiondetect.c", "src/src/util/hash/sha1dc/sha1.c",
                 "src/src/util/hash/sha1dc/ubc_check.c", "src/src/util/hash/builtin.c",
                 "src/src/util/hash/rfc6234/sha224-256.c"]
        for d in ("llhttp", "xdiff", "zlib"):
            srcs += c_files(cdir, os.path.join("src", "deps", d))
        # pcre_printint.c is #included by pcre_compile.c, and pcre_jit_compile.c
        # is empty without SUPPORT_JIT; the rest is PCRE's 8-bit library.
        srcs += c_files(cdir, os.path.join("src", "deps", "pcre"), exclude=("pcre_printint.c",))
        return srcs

    def check(self, cdir, outdir):
        exe = os.path.join(outdir, "libgit2_check")
        run([CLANG, "-O1", "-Isrc/include", os.path.join(HERE, "libgit2_check.c"), "-L" + outdir, "-lgit2",
             "-o", exe], cwd=cdir)
        repo = os.path.join(cdir, outdir, "check-repo")
        shutil.rmtree(repo, ignore_errors=True)
        p = run([exe, repo], cwd=cdir, env=dict(os.environ, LD_LIBRARY_PATH=os.path.join(cdir, outdir)),
                check=False)

        def git_hash(kind, body):
            return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()
        blob = git_hash("blob", b"hello\n")
        tree = git_hash("tree", b"100644 hello.txt\0" + bytes.fromhex(blob))
        sig = "A U Thor <author@example.com> 1700000000 +0000"
        commit = git_hash("commit", f"tree {tree}\nauthor {sig}\ncommitter {sig}\n\nbenchmark commit\n".encode())
        expected = f"blob {blob}\ntree {tree}\ncommit {commit}\nmessage benchmark commit\n"
        if p.returncode != 0 or p.stdout != expected:
            raise RuntimeError(f"libgit2 check failed ({p.returncode}):\n{p.stdout}{p.stderr}\nexpected:\n{expected}")
        # The loose objects must inflate with Python's zlib too.
        obj = os.path.join(repo, ".git", "objects", commit[:2], commit[2:])
        with open(obj, "rb") as f:
            zlib.decompress(f.read())
        shutil.rmtree(repo, ignore_errors=True)
        return f"commit {commit[:12]} as expected"


CORPORA = {"zstd": Zstd, "lua": Lua, "libgit2": Libgit2}


# ---------------------------------------------------------------- the build

def obj_of(src):
    return src[:-2] + ".o"


def apply_edit(text, func):
    """Inserts EDIT_TEXT after the opening brace of func's definition (which must be unique)."""
    pat = re.compile(r"^[A-Za-z_][^;{}()\n]*\b" + re.escape(func) +
                     r"\s*\((?:[^;{}()]|\([^()]*\))*\)\s*\{", re.M)
    matches = list(pat.finditer(text))
    if len(matches) != 1:
        raise RuntimeError(f"expected one definition of {func}, found {len(matches)}")
    m = matches[0]
    return text[:m.end()] + " " + EDIT_TEXT + text[m.end():]


class Build:
    """One corpus's work directory: pristine bitcode in bc/ (plus the edited
    module in mod/), the build directory lto/ that every link uses, and the
    backend outputs under out/<name>/."""

    def __init__(self, corpus, work, ltocache):
        self.c = corpus
        self.dir = os.path.join(work, corpus.name)
        self.ltocache = ltocache
        os.makedirs(self.dir, exist_ok=True)
        self.sources = corpus.setup(self.dir)
        self.objs = [obj_of(s) for s in self.sources]
        self.changed_obj = obj_of(corpus.change[0])

    def p(self, *parts):
        return os.path.join(self.dir, *parts)

    # -- front ends, cached between runs
    def prepare(self):
        stamp = hashlib.sha256()
        stamp.update(run([CLANG, "--version"]).stdout.encode())
        stamp.update(json.dumps([self.c.cflags, self.sources, self.c.change, EDIT_TEXT]).encode())
        for top in ("src", "gen"):
            for root, dirs, files in os.walk(self.p(top)):
                dirs.sort()
                for f in sorted(files):
                    path = os.path.join(root, f)
                    stamp.update(os.path.relpath(path, self.dir).encode() + b"\0")
                    with open(path, "rb") as fh:
                        stamp.update(hashlib.sha256(fh.read()).digest())
        stamp = stamp.hexdigest()
        stamp_file = self.p("prep.stamp")
        have = all(os.path.exists(self.p("bc", o)) for o in self.objs) and os.path.exists(self.p("mod", self.changed_obj))
        if have and os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
            log(f"{self.c.name}: front ends up to date ({len(self.objs)} bitcode files)")
            return 0.0
        if os.path.exists(stamp_file):
            os.unlink(stamp_file)
        shutil.rmtree(self.p("bc"), ignore_errors=True)
        shutil.rmtree(self.p("mod"), ignore_errors=True)
        log(f"{self.c.name}: compiling {len(self.sources)} front ends (-flto=thin, {JOBS} jobs)")
        jobs = []
        for s, o in zip(self.sources, self.objs):
            os.makedirs(os.path.dirname(self.p("bc", o)), exist_ok=True)
            jobs.append([CLANG, *self.c.cflags, "-flto=thin", "-c", s, "-o", os.path.join("bc", o)])
        t0 = time.perf_counter()
        res = run_jobs(jobs, cwd=self.dir)
        bad = [r for r in res["results"] if r[1] != 0]
        if bad:
            raise RuntimeError("front-end compile failed:\n" + "\n".join(f"{' '.join(j)}\n{e}" for j, _, _, e in bad[:5]))
        # The edited module, compiled from the same path so nothing but the function differs.
        src = self.p(self.c.change[0])
        with open(src) as f:
            original = f.read()
        try:
            with open(src, "w") as f:
                f.write(apply_edit(original, self.c.change[1]))
            os.makedirs(os.path.dirname(self.p("mod", self.changed_obj)), exist_ok=True)
            run([CLANG, *self.c.cflags, "-flto=thin", "-c", self.c.change[0], "-o", os.path.join("mod", self.changed_obj)],
                cwd=self.dir)
        finally:
            with open(src, "w") as f:
                f.write(original)
        with open(stamp_file, "w") as f:
            f.write(stamp)
        return time.perf_counter() - t0

    def reset_lto_dir(self):
        shutil.rmtree(self.p("lto"), ignore_errors=True)
        shutil.copytree(self.p("bc"), self.p("lto"))

    def set_changed(self, changed):
        """Puts the edited (or the original) bitcode of the changed module into lto/, as an edit plus a rebuild would."""
        src = self.p("mod" if changed else "bc", self.changed_obj)
        dst = self.p("lto", self.changed_obj)
        tmp = dst + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    def lto_objs(self):
        return [os.path.join("lto", o) for o in self.objs]

    def thin_link(self):
        for o in self.objs:
            for suffix in (".thinlto.bc",):
                try:
                    os.unlink(self.p("lto", o + suffix))
                except FileNotFoundError:
                    pass
        argv = [CLANG, "-fuse-ld=lld", f"--ld-path={LLD}", "-flto=thin", "-O2", *self.c.link_flags,
                "-Wl,--thinlto-index-only", *self.lto_objs(), "-o", os.path.join("lto", self.c.product), *self.c.libs]
        t0 = time.perf_counter()
        run(argv, cwd=self.dir)
        return time.perf_counter() - t0, argv

    def backend_argv(self, obj, outdir, extra=()):
        lto = os.path.join("lto", obj)
        return [CLANG, *self.c.backend_flags, *extra, "-c", f"-fthinlto-index={lto}.thinlto.bc", "-x", "ir", lto,
                "-o", os.path.join(outdir, obj)]

    def make_outdir(self, outdir, clean=False):
        if clean:
            shutil.rmtree(self.p(outdir), ignore_errors=True)
        for o in self.objs:
            os.makedirs(os.path.dirname(self.p(outdir, o)), exist_ok=True)

    def final_link(self, outdir):
        argv = [CLANG, "-fuse-ld=lld", f"--ld-path={LLD}", *self.c.link_flags,
                *[os.path.join(outdir, o) for o in self.objs], "-o", os.path.join(outdir, self.c.product), *self.c.libs]
        t0 = time.perf_counter()
        run(argv, cwd=self.dir)
        return time.perf_counter() - t0

    def inprocess_link(self, outdir, cache_dir):
        """LLVM's own ThinLTO cache: an ordinary (not index-only) link with --thinlto-cache-dir."""
        os.makedirs(self.p(outdir), exist_ok=True)
        argv = [CLANG, "-fuse-ld=lld", f"--ld-path={LLD}", "-flto=thin", "-O2", *self.c.link_flags,
                f"-Wl,--thinlto-cache-dir={cache_dir}", f"-Wl,--thinlto-jobs={JOBS}", *self.lto_objs(),
                "-o", os.path.join(outdir, self.c.product), *self.c.libs]
        t0, c0 = time.perf_counter(), os.times()
        run(argv, cwd=self.dir)
        c1 = os.times()
        return time.perf_counter() - t0, (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system), argv

    # -- what each backend reads, for the ground truth
    def snapshot(self):
        """Digests of every module's bitcode and shard, and each shard's module table."""
        snap = {"bitcode": {}, "shard": {}, "table": {}}
        for o in self.objs:
            lto = os.path.join("lto", o)
            snap["bitcode"][lto] = sha256_file(self.p(lto))
            snap["shard"][lto] = sha256_file(self.p(lto + ".thinlto.bc"))
        tables = module_tables(self.dir, [os.path.join("lto", o) + ".thinlto.bc" for o in self.objs])
        for o in self.objs:
            lto = os.path.join("lto", o)
            snap["table"][lto] = tables[lto + ".thinlto.bc"]
        return snap


def module_tables(cwd, shards):
    """Reads MODULE_STRTAB_BLOCK ENTRY records with llvm-bcanalyzer-19 -dump, in parallel."""
    entry = re.compile(r"<ENTRY\b.*record string = '(.*)'$")

    def one(shard):
        out = run([BCANALYZER, "-dump", shard], cwd=cwd).stdout
        mods, inside = [], False
        for line in out.splitlines():
            s = line.strip()
            if s.startswith("<MODULE_STRTAB_BLOCK"):
                inside = True
            elif s.startswith("</MODULE_STRTAB_BLOCK"):
                inside = False
            elif inside:
                m = entry.search(s)
                if m:
                    mods.append(os.path.normpath(m.group(1)))
        return shard, mods
    with concurrent.futures.ThreadPoolExecutor(JOBS) as ex:
        return dict(ex.map(one, shards))


def ground_truth(base, now, flags_changed=False):
    """Modules whose backend inputs differ between two snapshots: own bitcode, shard, or any module in its table."""
    must = set()
    for m in now["bitcode"]:
        if flags_changed or base["bitcode"][m] != now["bitcode"][m] or base["shard"][m] != now["shard"][m]:
            must.add(m)
            continue
        for imp in set(base["table"][m]) | set(now["table"][m]):
            if imp not in now["bitcode"] or base["bitcode"].get(imp) != now["bitcode"].get(imp):
                must.add(m)
                break
    return must


# ---------------------------------------------------------------- running backends

def run_jobs(jobs, cwd, env=None, parallel=JOBS):
    """Runs argv lists `parallel` at a time, the way `make -j2` does: posix_spawn
    (vfork + exec in glibc) from this one thread, stdout to /dev/null, stderr to
    a file per job, reaped with wait(). Returns wall time, the children's CPU
    time (user + sys) and, per job, (argv, exit code, seconds, stderr).

    Until 2026-11-23 this was subprocess.run from a thread pool: measured with
    210 `/bin/true` jobs it took 90-110 ms, half of a warm libgit2 build, so the
    driver rather than the cache set the warm ratio. A real build tool spawns
    the way this does."""
    env = dict(os.environ if env is None else env)
    errdir = tempfile.mkdtemp(prefix="ltocache-jobs-")
    results = [None] * len(jobs)
    running = {}
    pending = list(enumerate(jobs))[::-1]
    old_cwd = os.getcwd()
    c0, w0 = os.times(), time.perf_counter()
    try:
        # posix_spawn has no working-directory action before Python 3.13: the
        # children inherit ours, and nothing else runs in this process meanwhile.
        os.chdir(cwd)
        while pending or running:
            while pending and len(running) < parallel:
                i, argv = pending.pop()
                err = os.path.join(errdir, str(i))
                actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                           (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
                pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
                running[pid] = (i, argv, time.perf_counter())
            pid, status = os.wait()
            if pid not in running:
                continue
            i, argv, t0 = running.pop(pid)
            results[i] = [argv, os.waitstatus_to_exitcode(status), time.perf_counter() - t0, None]
    finally:
        os.chdir(old_cwd)
    w1, c1 = time.perf_counter(), os.times()
    for i, r in enumerate(results):
        with open(os.path.join(errdir, str(i)), "rb") as f:
            r[3] = f.read().decode(errors="replace")
    shutil.rmtree(errdir, ignore_errors=True)
    return {"wall": w1 - w0, "cpu": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
            "results": results}


class Tool:
    """ltocache with its own cache dir, stats dir and log file."""

    def __init__(self, binary, cache_dir, stats_dir, logfile):
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LTOCACHE_")}
        self.env.update(LTOCACHE_DIR=cache_dir, LTOCACHE_STATS_DIR=stats_dir, LTOCACHE_LOGFILE=logfile)
        self.logfile = logfile
        os.makedirs(cache_dir, exist_ok=True)
        os.makedirs(stats_dir, exist_ok=True)

    def wrap(self, argv):
        return [self.binary, *argv]

    def zero(self):
        run([self.binary, "zero-stats"], env=self.env)
        open(self.logfile, "w").close()

    def stats(self):
        return json.loads(run([self.binary, "stats", "--json"], env=self.env).stdout)

    def hit_outputs(self):
        """Outputs the log says were served from the cache."""
        hits = set()
        pat = re.compile(r"\] hit [0-9a-f]+ (.+)$")
        with open(self.logfile) as f:
            for line in f:
                m = pat.search(line.rstrip("\n"))
                if m:
                    hits.add(os.path.normpath(m.group(1)))
        return hits


def compare_outputs(bdir, objs, got_dir, ref_dir):
    """Byte-for-byte comparison with cmp; returns the objects that differ."""
    differ = []
    for o in objs:
        r = subprocess.run(["cmp", "-s", os.path.join(got_dir, o), os.path.join(ref_dir, o)], cwd=bdir)
        if r.returncode != 0:
            differ.append(o)
    return differ


def max_rss_kib(argv, cwd, env):
    fd = os.path.join(cwd, "time.out")
    run(["/usr/bin/time", "-f", "%M", "-o", fd, *argv], cwd=cwd, env=env)
    with open(fd) as f:
        return int(f.read().strip().splitlines()[-1])


def elide_objects(argv):
    """The command with its list of bitcode objects shown as <objects>."""
    out = []
    for a in argv:
        if a.startswith("lto/") and a.endswith(".o"):
            if not out or out[-1] != "<objects>":
                out.append("<objects>")
        else:
            out.append(a)
    return " ".join(out)


def cpu_wall(argv, cwd, env):
    """Wall, user and system seconds of one command, from /usr/bin/time."""
    out = os.path.join(cwd, "time.out")
    run(["/usr/bin/time", "-f", "%e %U %S", "-o", out, *argv], cwd=cwd, env=env)
    with open(out) as f:
        e, u, s = f.read().strip().splitlines()[-1].split()
    return {"wall": float(e), "cpu": float(u) + float(s)}


def ccache_version():
    exe = shutil.which("ccache")
    if not exe:
        return None, "no ccache on PATH"
    out = run([exe, "--version"], check=False).stdout
    m = re.search(r"ccache version (\d+)\.(\d+)", out)
    if not m:
        return None, "cannot read ccache's version"
    v = (int(m.group(1)), int(m.group(2)))
    if v < (4, 13):
        return None, f"ccache {v[0]}.{v[1]} < 4.13 does not cache -fthinlto-index backends"
    return exe, f"ccache {v[0]}.{v[1]}"


# ---------------------------------------------------------------- one corpus

def bench_corpus(corpus, work, ltocache, args, failures):
    b = Build(corpus, work, ltocache)
    name = corpus.name
    R = {"name": name, "modules": len(b.objs), "subset": corpus.subset, "change": corpus.change,
         "scenarios": {}, "cflags": corpus.cflags, "backend_flags": corpus.backend_flags}
    R["prep_seconds"] = b.prepare()
    b.reset_lto_dir()
    n = len(b.objs)

    def fail(msg):
        failures.append(f"{name}: {msg}")
        log(f"FAIL {name}: {msg}")

    def jobs_for(outdir, wrap=None, extra=(), objs=None):
        js = [b.backend_argv(o, outdir, extra) for o in (objs if objs is not None else b.objs)]
        return [wrap(j) for j in js] if wrap else js

    def run_backends(label, jobs, tool=None):
        res = run_jobs(jobs, cwd=b.dir, env=tool.env if tool else None)
        bad = [r for r in res["results"] if r[1] != 0]
        if bad:
            raise RuntimeError(f"{label}: {len(bad)} backend(s) failed, first:\n{' '.join(bad[0][0])}\n{bad[0][3]}")
        noisy = [r for r in res["results"] if r[3].strip()]
        if noisy:
            log(f"{label}: {len(noisy)} backend(s) wrote to stderr, first: {noisy[0][3].strip()[:200]}")
        log(f"{label}: wall {res['wall']:.2f} s, cpu {res['cpu']:.2f} s")
        return res

    def record(key, res, tool=None, must=None, extra=None):
        s = {"wall": res["wall"], "cpu": res["cpu"]}
        if tool is not None:
            st = tool.stats()
            s.update(hits=st["hits"], misses=st["misses"], uncacheable=st["uncacheable_total"],
                     errors=sum(st["errors"].values()), errors_detail=st["errors"],
                     uncacheable_detail=st["uncacheable"], stores=st["stores"],
                     bytes_hashed=st["bytes_hashed"], cache_size=st["cache_size_bytes"],
                     cache_entries=st["cache_entries"], compile_failed=st["compile_failed"],
                     own_cpu_hits=st["own_cpu_seconds_on_hits"], own_cpu_misses=st["own_cpu_seconds_on_misses"],
                     compiler_cpu_misses=st["compiler_cpu_seconds_on_misses"])
            if s["errors"] or s["uncacheable"] or s["compile_failed"]:
                fail(f"{key}: ltocache stats report errors={st['errors']} uncacheable={st['uncacheable']} "
                     f"compile_failed={st['compile_failed']}")
            if s["hits"] + s["misses"] != len(res["results"]):
                fail(f"{key}: stats count {s['hits']} hits + {s['misses']} misses for {len(res['results'])} backends")
        if extra:
            s.update(extra)
        R["scenarios"][key] = s
        return s

    R["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    R["commands"] = {
        "front end": " ".join([CLANG, *corpus.cflags, "-flto=thin", "-c", b.sources[0], "-o", os.path.join("lto", b.objs[0])]),
        "backend": " ".join(["ltocache", *b.backend_argv(b.objs[0], os.path.join("out", "cache"))]),
    }
    t_thin, thin_argv = b.thin_link()
    R["thin_link_seconds"] = t_thin
    R["commands"]["thin link"] = elide_objects(thin_argv)
    R["commands"]["final link"] = " ".join([CLANG, "-fuse-ld=lld", f"--ld-path={LLD}", *corpus.link_flags, "<objects>",
                                            "-o", os.path.join("out", "cache", corpus.product), *corpus.libs])
    base = b.snapshot()
    tables = base["table"]
    importers = sorted(m for m, t in tables.items()
                       if m != os.path.join("lto", b.changed_obj) and os.path.join("lto", b.changed_obj) in t)
    R["changed_module_importers"] = len(importers)
    log(f"{name}: {n} modules; {b.changed_obj} is in {len(importers)} other shards' module tables")
    if not importers:
        fail(f"the changed module {b.changed_obj} is imported by no other module: pick another function")
    R["module_table_sizes"] = {"mean": statistics.mean(len(t) for t in tables.values()),
                               "max": max(len(t) for t in tables.values())}

    # This host's stats database is kept for the whole corpus (it is per host,
    # not per cache). Its first use hashes the compiler and the LLVM libraries
    # it loads; that one-time cost is measured here, on a scratch cache, so
    # that it does not land in one of the (b) runs.
    for d in ("cache", "stats"):
        shutil.rmtree(b.p(d), ignore_errors=True)
    first = b.objs[0]
    prime = Tool(ltocache, b.p("cache", "prime"), b.p("stats"), b.p("ltocache.log"))
    b.make_outdir(os.path.join("out", "prime"), clean=True)
    R["first_use"] = {"module": first,
                      "ltocache": cpu_wall(prime.wrap(b.backend_argv(first, os.path.join("out", "prime"))), b.dir, prime.env),
                      "ltocache_second_miss": cpu_wall(prime.wrap(b.backend_argv(first, os.path.join("out", "prime"))),
                                                       b.dir, dict(prime.env, LTOCACHE_RECACHE="1")),
                      "plain": cpu_wall(b.backend_argv(first, os.path.join("out", "prime")), b.dir, None)}
    shutil.rmtree(b.p("cache", "prime"), ignore_errors=True)

    # (a) no cache and (b) cold cache, interleaved `repeat` times; each run
    # starts from a fresh copy of the bitcode, as after a clean front-end build.
    a_runs, b_runs = [], []
    tool = None
    for i in range(args.repeat):
        b.reset_lto_dir()
        b.thin_link()
        b.make_outdir(os.path.join("out", "a"), clean=True)
        res = run_backends(f"{name} (a) no cache #{i + 1}", jobs_for(os.path.join("out", "a")))
        a_runs.append(res)
        if i == 0:
            R["backend_seconds"] = sorted(r[2] for r in res["results"])
        b.reset_lto_dir()
        b.thin_link()
        shutil.rmtree(b.p("cache", "ltocache"), ignore_errors=True)
        tool = Tool(ltocache, b.p("cache", "ltocache"), b.p("stats"), b.p("ltocache.log"))
        tool.zero()
        b.make_outdir(os.path.join("out", "cache"), clean=True)
        res = run_backends(f"{name} (b) cold cache #{i + 1}", jobs_for(os.path.join("out", "cache"), tool.wrap), tool)
        b_runs.append((res, tool.stats()))
        differ = compare_outputs(b.dir, b.objs, b.p("out", "cache"), b.p("out", "a"))
        if differ:
            fail(f"(b) cold: {len(differ)} objects differ from the uncached run, e.g. {differ[0]}")
    mean = lambda xs: sum(xs) / len(xs)
    R["scenarios"]["a"] = {"wall": mean([r["wall"] for r in a_runs]), "cpu": mean([r["cpu"] for r in a_runs]),
                           "walls": [r["wall"] for r in a_runs], "cpus": [r["cpu"] for r in a_runs]}
    last_b = b_runs[-1]
    record("b", {"wall": mean([r["wall"] for r, _ in b_runs]), "cpu": mean([r["cpu"] for r, _ in b_runs]),
                 "results": last_b[0]["results"]}, tool,
           extra={"walls": [r["wall"] for r, _ in b_runs], "cpus": [r["cpu"] for r, _ in b_runs]})
    if R["scenarios"]["b"]["hits"] != 0:
        fail(f"(b) cold cache had {R['scenarios']['b']['hits']} hits")
    R["paired_miss"] = paired_miss_overhead(b, tool, args.paired)
    pm = R["paired_miss"]
    log(f"{name}: paired cold misses on {pm['modules']} modules: CPU {pm['plain_cpu']:.2f} s plain, "
        f"{pm['ltocache_cpu']:.2f} s through ltocache ({(pm['ltocache_cpu'] / pm['plain_cpu'] - 1) * 100:+.1f} %)")
    R["final_link_seconds"] = b.final_link(os.path.join("out", "a"))
    R["check"] = corpus.check(b.dir, os.path.join("out", "a"))
    log(f"{name}: final link {R['final_link_seconds']:.2f} s; check: {R['check']}")

    # (c) warm cache, nothing changed.
    b.thin_link()
    tool.zero()
    res = run_backends(f"{name} (c) warm", jobs_for(os.path.join("out", "cache"), tool.wrap), tool)
    s = record("c", res, tool, extra={"minimum_misses": 0})
    served = tool.hit_outputs()
    s["served"] = len(served)
    if s["misses"] != 0:
        fail(f"(c) warm: {s['misses']} misses where nothing changed")
    differ = compare_outputs(b.dir, b.objs, b.p("out", "cache"), b.p("out", "a"))
    s["differing"] = len(differ)
    if differ:
        fail(f"(c) warm: {len(differ)} served objects differ from the uncached run, e.g. {differ[0]}")
    b.final_link(os.path.join("out", "cache"))
    corpus.check(b.dir, os.path.join("out", "cache"))

    # (v) warm again with LTOCACHE_VERIFY=1 (issue 11): every hit is compiled
    # anyway and compared byte for byte; a stale hit is counted as stale_detected.
    b.thin_link()
    tool.zero()
    verifying = copy.copy(tool)
    verifying.env = dict(tool.env, LTOCACHE_VERIFY="1")
    res = run_backends(f"{name} (v) warm, LTOCACHE_VERIFY=1", jobs_for(os.path.join("out", "cache"), tool.wrap),
                       verifying)
    st = tool.stats()
    R["verify"] = {"wall": res["wall"], "cpu": res["cpu"], "hits": st["hits"], "misses": st["misses"],
                   "verified_hits": st.get("verified_hits", 0), "stale_detected": st.get("stale_detected", 0)}
    log(f"{name}: (v) {R['verify']['verified_hits']} hits verified, stale_detected = {R['verify']['stale_detected']}")
    if R["verify"]["stale_detected"]:
        fail(f"(v) verify: {R['verify']['stale_detected']} stale hits detected")
    if R["verify"]["verified_hits"] != n:
        fail(f"(v) verify: {R['verify']['verified_hits']} of {n} hits verified")

    # Per-invocation hit latency: each warm hit timed alone, after a fresh thin link.
    rounds = max(1, min(args.max_rounds, math.ceil(args.latency_samples / n)))
    lat, floor = [], []
    for _ in range(rounds):
        b.thin_link()
        tool.zero()
        for argv in jobs_for(os.path.join("out", "cache"), tool.wrap):
            t0 = time.perf_counter_ns()
            subprocess.run(argv, cwd=b.dir, env=tool.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            # The cost of starting any process from this loop, measured alongside.
            t0 = time.perf_counter_ns()
            subprocess.run(["/bin/true"], cwd=b.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            floor.append((time.perf_counter_ns() - t0) / 1e6)
        st = tool.stats()
        if st["misses"] or st["hits"] != n:
            fail(f"latency loop: {st['hits']} hits, {st['misses']} misses for {n} backends")
    R["hit_latency_ms"] = {"samples": len(lat), "p50": percentile(lat, 50), "p90": percentile(lat, 90),
                           "p99": percentile(lat, 99), "max": max(lat), "spawn_true_p50": percentile(floor, 50)}
    log(f"{name}: hit latency p50 {R['hit_latency_ms']['p50']:.2f} ms p90 {R['hit_latency_ms']['p90']:.2f} "
        f"p99 {R['hit_latency_ms']['p99']:.2f} ms over {len(lat)} hits (/bin/true spawn p50 {percentile(floor, 50):.2f} ms)")

    # Peak memory of one invocation: a hit and a miss (LTOCACHE_RECACHE=1) of the largest module.
    biggest = max(b.objs, key=lambda o: os.path.getsize(b.p("lto", o)))
    argv = tool.wrap(b.backend_argv(biggest, os.path.join("out", "cache")))
    R["max_rss_kib"] = {"module": biggest, "hit": max_rss_kib(argv, b.dir, tool.env),
                        "miss_incl_clang": max_rss_kib(argv, b.dir, dict(tool.env, LTOCACHE_RECACHE="1")),
                        "plain_clang": max_rss_kib(b.backend_argv(biggest, os.path.join("out", "a")), b.dir, None)}

    # (d) incremental: one function body changed in an imported module.
    b.set_changed(True)
    b.thin_link()
    snap_d = b.snapshot()
    must = ground_truth(base, snap_d)
    shards_changed = sum(1 for m in base["shard"] if base["shard"][m] != snap_d["shard"][m])
    tool.zero()
    res = run_backends(f"{name} (d) incremental", jobs_for(os.path.join("out", "cache"), tool.wrap), tool)
    s = record("d", res, tool, extra={"minimum_misses": len(must), "shards_changed": shards_changed})
    check_misses(s, tool, b, must, "d", fail)
    b.make_outdir(os.path.join("out", "ref_d"), clean=True)
    ref = run_backends(f"{name} (d) reference, no cache", jobs_for(os.path.join("out", "ref_d")))
    R["scenarios"]["d_nocache"] = {"wall": ref["wall"], "cpu": ref["cpu"]}
    differ = compare_outputs(b.dir, b.objs, b.p("out", "cache"), b.p("out", "ref_d"))
    s["differing"] = len(differ)
    if differ:
        fail(f"(d) incremental: {len(differ)} objects differ from a fresh uncached run, e.g. {differ[0]}")
    s["objects_changed"] = len(compare_outputs(b.dir, b.objs, b.p("out", "ref_d"), b.p("out", "a")))
    b.final_link(os.path.join("out", "cache"))
    corpus.check(b.dir, os.path.join("out", "cache"))

    # (e) a changed backend flag, everything else as in the base state: all must miss.
    b.set_changed(False)
    b.thin_link()
    snap_e = b.snapshot()
    if snap_e["shard"] != base["shard"] or snap_e["bitcode"] != base["bitcode"]:
        fail("restoring the original module did not restore the original shards")
    tool.zero()
    extra = ["-mllvm", "-inline-threshold=300"]
    R["flag_change"] = " ".join(extra)
    res = run_backends(f"{name} (e) flag change", jobs_for(os.path.join("out", "cache"), tool.wrap, extra), tool)
    s = record("e", res, tool, extra={"minimum_misses": n})
    served = check_misses(s, tool, b, set(os.path.join("lto", o) for o in b.objs), "e", fail)
    if served:
        objs = [o for o in b.objs if os.path.join("out", "cache", o) in served]
        b.make_outdir(os.path.join("out", "ref_e"), clean=True)
        run_backends(f"{name} (e) reference for served objects", jobs_for(os.path.join("out", "ref_e"), None, extra, objs))
        differ = compare_outputs(b.dir, objs, b.p("out", "cache"), b.p("out", "ref_e"))
        s["differing"] = len(differ)
        if differ:
            fail(f"(e) flag change: {len(differ)} served objects differ from a fresh run")
    else:
        s["differing"] = 0
    b.final_link(os.path.join("out", "cache"))
    corpus.check(b.dir, os.path.join("out", "cache"))

    # (f) LLVM's in-process ThinLTO cache: cold, warm, then the same one-function change.
    if not args.skip_llvm_cache:
        llvm_cache = b.p("cache", "llvm")
        shutil.rmtree(llvm_cache, ignore_errors=True)
        os.makedirs(llvm_cache)
        count = lambda: len([f for f in os.listdir(llvm_cache) if f.startswith("llvmcache-")])
        fo = os.path.join("out", "f")
        for key, changed in (("f_cold", False), ("f_warm", False), ("f_incr", True)):
            b.set_changed(changed)
            before = count()
            wall, cpu, argv = b.inprocess_link(fo, llvm_cache)
            R["scenarios"][key] = {"wall": wall, "cpu": cpu, "llvm_cache_new_entries": count() - before,
                                   "cache_size": sum(os.path.getsize(os.path.join(llvm_cache, f)) for f in os.listdir(llvm_cache))}
            corpus.check(b.dir, fo)
            log(f"{name} ({key}) LLVM in-process link: wall {wall:.2f} s, cpu {cpu:.2f} s, "
                f"{count() - before} new cache entries")
        R["commands"]["(f) in-process link"] = elide_objects(argv)
        b.set_changed(False)

    # (g) ccache >= 4.13, when present.
    exe, why = ccache_version()
    R["ccache"] = why
    if exe is None:
        log(f"{name} (g) ccache: skipped ({why})")
    else:
        cenv = dict(os.environ, CCACHE_DIR=b.p("cache", "ccache"), CCACHE_NOHASHDIR="1")
        shutil.rmtree(b.p("cache", "ccache"), ignore_errors=True)
        for key, changed in (("g_cold", False), ("g_warm", False), ("g_incr", True)):
            b.set_changed(changed)
            b.thin_link()
            run([exe, "--zero-stats"], env=cenv)
            res = run_jobs(jobs_for(os.path.join("out", "cache"), lambda a: [exe, *a]), cwd=b.dir, env=cenv)
            st = run([exe, "--print-stats"], env=cenv).stdout
            kv = dict(line.split("\t", 1) for line in st.splitlines() if "\t" in line)
            hits = int(kv.get("direct_cache_hit", 0)) + int(kv.get("preprocessed_cache_hit", 0))
            R["scenarios"][key] = {"wall": res["wall"], "cpu": res["cpu"], "hits": hits,
                                   "misses": int(kv.get("cache_miss", 0))}
            log(f"{name} ({key}) ccache: wall {res['wall']:.2f} s, {hits} hits")
        b.set_changed(False)
    return R


def paired_miss_overhead(b, tool, count):
    """Cold-miss overhead measured pairwise, one process at a time: for a sample
    of modules, plain clang and ltocache on a fresh cache directory (every
    module a distinct key, so every invocation is a cold miss) run back to back,
    alternating which goes first, so load drifts cancel out."""
    import resource
    step = max(1, len(b.objs) // count)
    sample = b.objs[::step][:count]
    scratch = b.p("cache", "paired")
    out = os.path.join("out", "paired")
    b.make_outdir(out, clean=True)

    def measure(argv, env):
        r0, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        run(argv, cwd=b.dir, env=env)
        w1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        return w1 - w0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    env = dict(tool.env, LTOCACHE_DIR=scratch)
    pw = pc = lw = lc = 0.0
    deltas = []
    shutil.rmtree(scratch, ignore_errors=True)
    for i, o in enumerate(sample):
        argv = b.backend_argv(o, out)
        if i % 2 == 0:
            p, l = measure(argv, None), measure(tool.wrap(argv), env)
        else:
            l, p = measure(tool.wrap(argv), env), measure(argv, None)
        pw, pc, lw, lc = pw + p[0], pc + p[1], lw + l[0], lc + l[1]
        deltas.append(l[1] - p[1])
    shutil.rmtree(scratch, ignore_errors=True)
    return {"modules": len(sample), "plain_wall": pw, "plain_cpu": pc, "ltocache_wall": lw, "ltocache_cpu": lc,
            "median_cpu_delta_ms": statistics.median(deltas) * 1000}


def check_misses(s, tool, b, must, label, fail):
    """Holds the misses against the ground truth; returns the outputs that were served."""
    served = tool.hit_outputs()
    if len(served) != s["hits"]:
        fail(f"({label}): the log names {len(served)} hits, the stats count {s['hits']}")
    outs = {os.path.join("lto", o): os.path.join("out", "cache", o) for o in b.objs}
    missed = {m for m, out in outs.items() if out not in served}
    beyond = missed - must
    stale = must - missed
    s["misses_beyond_minimum"] = len(beyond)
    s["hits_on_changed_inputs"] = len(stale)
    if beyond:
        fail(f"({label}): {len(beyond)} misses beyond the minimum, e.g. {sorted(beyond)[0]}")
    if stale:
        log(f"WARNING ({label}): {len(stale)} modules whose inputs changed were served from the cache, "
            f"e.g. {sorted(stale)[0]} (the byte comparison decides whether that was stale)")
    return served


# ---------------------------------------------------------------- report

def machine():
    model = "?"
    mem = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return {"nproc": os.cpu_count(), "cpu": model, "memory": mem,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": os.uname().release, "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "clang": run([CLANG, "--version"]).stdout.splitlines()[0]}


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report(results, meta):
    L = []
    w = L.append
    m = meta["machine"]
    w(f"Measured {m['date']} on {m['nproc']} × {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']} "
      f"(load average at start: {m['load']}); {m['clang']}; ltocache {meta['commit']}.")
    w("")
    w("Command:")
    w("")
    w("```")
    w(meta["command"])
    w("```")
    w("")
    names = {"a": "(a) no cache, plain clang-19", "b": "(b) cold cache", "c": "(c) warm, no change",
             "d": "(d) one function changed", "d_nocache": "(d′) same change, no cache",
             "e": "(e) backend flag changed", "f_cold": "(f) LLVM cache, cold link",
             "f_warm": "(f) LLVM cache, warm link", "f_incr": "(f) LLVM cache, one function changed",
             "g_cold": "(g) ccache cold", "g_warm": "(g) ccache warm", "g_incr": "(g) ccache, one function changed"}
    for r in results:
        sc = r["scenarios"]
        a = sc["a"]
        w(f"### {r['name']}: {r['modules']} modules")
        w("")
        w(f"Built: {r['subset']}. Changed function for (d) and (f): `{r['change'][1]}` in `{r['change'][0]}` "
          f"(its module is in {r['changed_module_importers']} other shards' module tables; shards list "
          f"{r['module_table_sizes']['mean']:.1f} modules on average, {r['module_table_sizes']['max']} at most). "
          f"Thin link {r['thin_link_seconds']:.2f} s, final link {r['final_link_seconds']:.2f} s; "
          f"check: {r['check']}.")
        w("")
        w("| scenario | wall s | CPU s | hits | misses (minimum) | bytes hashed | cache size after |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for key in ("a", "b", "c", "d", "d_nocache", "e", "f_cold", "f_warm", "f_incr", "g_cold", "g_warm", "g_incr"):
            if key not in sc:
                continue
            s = sc[key]
            wall = f"{s['wall']:.2f}"
            cpu = f"{s['cpu']:.2f}"
            if len(s.get("walls", [])) > 1:
                wall += " (" + ", ".join(f"{x:.2f}" for x in s["walls"]) + ")"
                cpu += " (" + ", ".join(f"{x:.2f}" for x in s["cpus"]) + ")"
            hits = str(s["hits"]) if "hits" in s else "–"
            if key.startswith("f_"):
                hits = "–"
                misses = f"{s['llvm_cache_new_entries']} new entries"
            elif "misses" in s:
                misses = str(s["misses"]) + (f" ({s['minimum_misses']})" if "minimum_misses" in s else "")
            else:
                misses = "–"
            w(f"| {names[key]} | {wall} | {cpu} | {hits} | {misses} | {fmt_bytes(s.get('bytes_hashed'))} | "
              f"{fmt_bytes(s.get('cache_size'))} |")
        if "g_cold" not in sc:
            w(f"| (g) ccache | skipped: {r['ccache']} | | | | | |")
        w("")
        b, c, d = sc["b"], sc["c"], sc["d"]
        lat = r["hit_latency_ms"]
        rss = r["max_rss_kib"]
        bt = r["backend_seconds"]
        w(f"- Ratios: (b)/(a) wall {b['wall'] / a['wall']:.3f}, CPU {b['cpu'] / a['cpu']:.3f}; "
          f"(a)/(c) wall {a['wall'] / c['wall']:.1f}×, CPU {a['cpu'] / c['cpu']:.1f}×; "
          f"(a)/(d) wall {a['wall'] / d['wall']:.1f}×, CPU {a['cpu'] / d['cpu']:.1f}×.")
        if "verify" in r:
            v = r["verify"]
            w(f"- (v) warm with `LTOCACHE_VERIFY=1`: {v['verified_hits']} hits recompiled and compared byte for byte, "
              f"**stale_detected = {v['stale_detected']}**; wall {v['wall']:.2f} s, CPU {v['cpu']:.2f} s.")
        if "g_cold" in sc:
            g0, g1, g2 = sc["g_cold"], sc["g_warm"], sc["g_incr"]
            w(f"- (g) {r['ccache']} on the same backends: cold/(a) wall {g0['wall'] / a['wall']:.3f}, CPU "
              f"{g0['cpu'] / a['cpu']:.3f}; (a)/(warm) wall {a['wall'] / g1['wall']:.1f}× (ltocache: "
              f"{a['wall'] / c['wall']:.1f}×); one function changed: {g2['misses']} misses, {g2['hits']} hits "
              f"(ltocache: {d['misses']} misses, minimum {d['minimum_misses']}).")
        w(f"- (d): {d['shards_changed']} shards changed, {d['minimum_misses']} modules' inputs changed (the minimum), "
          f"{d['misses']} misses, {d['misses_beyond_minimum']} beyond the minimum; {d['objects_changed']} objects "
          f"really differ from the unchanged build; {d['differing']} of {r['modules']} objects differ from a fresh "
          f"uncached run. (c): {c['differing']} differing. (e): {sc['e']['misses']} of {r['modules']} missed.")
        w(f"- Warm-hit latency of one whole ltocache process, {lat['samples']} hits run one at a time: "
          f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms "
          f"(spawning /bin/true from the same loop: {lat['spawn_true_p50']:.2f} ms). Uncached backends: median "
          f"{statistics.median(bt) * 1000:.0f} ms, p90 {percentile(bt, 90) * 1000:.0f} ms, max {max(bt) * 1000:.0f} ms "
          f"(under 2 jobs).")
        pm = r["paired_miss"]
        w(f"- Cold misses measured in pairs, one process at a time ({pm['modules']} modules, plain clang and ltocache "
          f"on a fresh cache, back to back): CPU {pm['plain_cpu']:.2f} s plain, {pm['ltocache_cpu']:.2f} s through "
          f"ltocache ({(pm['ltocache_cpu'] / pm['plain_cpu'] - 1) * 100:+.1f} %, median {pm['median_cpu_delta_ms']:+.1f} ms "
          f"per miss); wall {pm['plain_wall']:.2f} s against {pm['ltocache_wall']:.2f} s "
          f"({(pm['ltocache_wall'] / pm['plain_wall'] - 1) * 100:+.1f} %).")
        w(f"- ltocache's own CPU time (its process; the clang child excluded; counted by ltocache with getrusage and "
          f"reported by `ltocache stats`): (b) {b['own_cpu_misses'] * 1e3 / max(1, b['misses']):.2f} ms per miss, "
          f"{own_share(b) * 100:.2f} % of the compiler's CPU on the same misses; (c) "
          f"{c['own_cpu_hits'] * 1e3 / max(1, c['hits']):.2f} ms per hit.")
        fu = r["first_use"]
        w(f"- First use of ltocache with this compiler on a host (empty stats database; hashes clang and its LLVM "
          f"libraries once): {fu['ltocache']['wall']:.2f} s wall, {fu['ltocache']['cpu']:.2f} s CPU for `{fu['module']}`, "
          f"against {fu['ltocache_second_miss']['wall']:.2f} s / {fu['ltocache_second_miss']['cpu']:.2f} s for the next miss "
          f"and {fu['plain']['wall']:.2f} s / {fu['plain']['cpu']:.2f} s for plain clang. Not part of (b).")
        w(f"- Max RSS for `{rss['module']}`: hit {rss['hit'] / 1024:.1f} MiB; miss {rss['miss_incl_clang'] / 1024:.1f} MiB "
          f"(includes the clang child); plain clang {rss['plain_clang'] / 1024:.1f} MiB.")
        w(f"- Load average when this corpus started: {r['load_at_start']}.")
        w("- Commands (paths relative to `benches/realworld/work/" + r["name"] + "`):")
        for k, v in r["commands"].items():
            w(f"  - {k}: `{v}`")
        t = r["targets"]
        w(f"- Targets: warm rebuild ≥100× faster than (a): {t['warm_100x']}; cold overhead ≤1 %: {t['cold_own']} "
          f"by ltocache's own CPU, {t['cold_1pct']} in the parallel build, {t['cold_paired_1pct']} in the paired measurement; "
          f"hit p50 ≤1.5 ms: {t['p50']}.")
        w("")
    w("### Targets")
    w("")
    w("| corpus | (a)/(c) wall | ≥100× | own CPU on (b) misses | ≤1 % | (b)/(a) − 1 wall (CPU) | ≤1 % | paired misses − 1 CPU (wall) | ≤1 % | hit p50 ms | ≤1.5 ms |")
    w("|---|---:|---|---:|---|---:|---|---:|---|---:|---|")
    for r in results:
        sc = r["scenarios"]
        t = r["targets"]
        pm = r["paired_miss"]
        w(f"| {r['name']} | {sc['a']['wall'] / sc['c']['wall']:.1f}× | {t['warm_100x']} | "
          f"{own_share(sc['b']) * 100:.2f} % | {t['cold_own']} | "
          f"{(sc['b']['wall'] / sc['a']['wall'] - 1) * 100:+.1f} % ({(sc['b']['cpu'] / sc['a']['cpu'] - 1) * 100:+.1f} %) | "
          f"{t['cold_1pct']} | {(pm['ltocache_cpu'] / pm['plain_cpu'] - 1) * 100:+.1f} % "
          f"({(pm['ltocache_wall'] / pm['plain_wall'] - 1) * 100:+.1f} %) | {t['cold_paired_1pct']} | "
          f"{r['hit_latency_ms']['p50']:.2f} | {t['p50']} |")
    w("")
    return "\n".join(L)


def own_share(s):
    """ltocache's own CPU on misses as a share of the compiler's CPU on them."""
    return s["own_cpu_misses"] / s["compiler_cpu_misses"] if s.get("compiler_cpu_misses") else float("nan")


def targets(r):
    sc = r["scenarios"]
    a, b, c = sc["a"], sc["b"], sc["c"]
    yn = lambda x: "met" if x else "**not met**"
    return {"warm_100x": yn(a["wall"] / c["wall"] >= 100),
            "cold_1pct": yn(b["wall"] / a["wall"] - 1 <= 0.01),
            "cold_own": yn(own_share(b) <= 0.01),
            "cold_paired_1pct": yn(r["paired_miss"]["ltocache_cpu"] / r["paired_miss"]["plain_cpu"] - 1 <= 0.01
                                   and r["paired_miss"]["ltocache_wall"] / r["paired_miss"]["plain_wall"] - 1 <= 0.01),
            "p50": yn(r["hit_latency_ms"]["p50"] <= 1.5)}


BEGIN = "<!-- BEGIN GENERATED RESULTS (benches/realworld/run.sh) -->"
END = "<!-- END GENERATED RESULTS -->"


def write_docs(path, text):
    block = f"{BEGIN}\n{text}\n{END}"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--crates", required=True, help="JSON map crate name -> source directory")
    ap.add_argument("--docs", help="write the results into this markdown file")
    ap.add_argument("--command", default="", help="the command line to print in the report")
    ap.add_argument("--corpus", action="append", choices=sorted(CORPORA), help="repeatable; default: all")
    ap.add_argument("--quick", action="store_true", help="one (a)/(b) pair, fewer latency samples, no LLVM warm link")
    ap.add_argument("--repeat", type=int, default=None, help="(a)/(b) pairs to interleave (default 2, 1 with --quick)")
    ap.add_argument("--skip-llvm-cache", action="store_true")
    args = ap.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 2)
    args.latency_samples = 100 if args.quick else 300
    args.max_rounds = 3 if args.quick else 8
    args.paired = 10 if args.quick else 30
    crates = json.loads(args.crates)
    corpora = args.corpus or ["zstd", "lua", "libgit2"]
    meta = {"machine": machine(), "command": args.command}
    repo = os.path.dirname(os.path.dirname(HERE))
    rev = run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    dirty = run(["git", "-C", repo, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], check=False).stdout.strip()
    meta["commit"] = rev + (" with uncommitted changes under src/" if dirty else "")
    failures, results = [], []
    t0 = time.perf_counter()
    for name in corpora:
        corpus = CORPORA[name](crates[CORPORA[name].crate])
        r = bench_corpus(corpus, args.work, args.ltocache, args, failures)
        r["targets"] = targets(r)
        results.append(r)
        with open(os.path.join(args.work, f"results-{name}.json"), "w") as f:
            json.dump(r, f, indent=1)
    meta["seconds"] = time.perf_counter() - t0
    text = report(results, meta)
    text += f"\nWhole run: {meta['seconds'] / 60:.1f} minutes. " + \
        (f"**{len(failures)} check(s) failed:** " + "; ".join(failures) if failures else
         "Every check passed: no miss beyond the minimum, no differing byte, no ltocache error.") + "\n"
    print()
    print(text)
    if args.docs:
        write_docs(args.docs, text)
        log(f"results written into {args.docs}")
    if failures:
        log(f"{len(failures)} failure(s):")
        for f in failures:
            print("  " + f)
        sys.exit(1)


if __name__ == "__main__":
    main()

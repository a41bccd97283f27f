#!/usr/bin/env python3
"""Precise invalidation on the kernel (issue 16): backends compiled, objects really changed, backend
CPU and wall, precise mode against the first key alone, in one run, for edits of setup_arch()
(bench.py's edit), slob_free() and the mutations of EDITS, default naming and with
`-mllvm -use-source-filename-for-promoted-locals` on the backends.

  python3 benches/kernel/precise.py --work benches/kernel/work --ltocache L --helper H [--jobs 2]
      [--edits setup_arch,slob_free,...] [--modes default,naming] [--no-verify]

Reuses bench.py's tree and distributed flow (the tree must be unpacked: run.sh does that). Per
naming mode: one cold pass through ltocache (precise mode, LTOCACHE_PRECISE_COLD=sync so the second
keys exist when the edit comes). Then per edit, from the base state: copies of the cache for the
first key alone and for verification, the edit (only the edited object is rebuilt), the edited pass
with precise mode, the same with LTOCACHE_PRECISE=0 on the first copy, a plain clang pass whose
objects every served object is compared with, and a pass with LTOCACHE_VERIFY=1 on the second copy
(every hit, first-key or second-key, compiled anyway and compared: stale_detected must stay 0); then
the edit is undone (an edit naming another as its starting state runs right after it, from the state
that one left, and both are undone after). Exit status 1 on any stale object or stale_detected.

--debug runs on a tree of its own, WORK/linux-source-6.1-g (copied from WORK/linux-source-6.1, which
must exist), configured with CONFIG_DEBUG_INFO=y (DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT: plain -g for
clang, DWARF 5, whose DIFile records carry the source file's MD5; --debug dwarf4: DEBUG_INFO_DWARF4,
-g -gdwarf-4, no checksums, in WORK/linux-source-6.1-gdwarf4), so the front ends and the backends (whose flags are the front ends' own) carry -g; it checks
that every backend's command line has -g and every object of the cold pass has .debug_info and
.debug_line, and runs DEBUG_EDITS: lines moved above imported definitions, an edit inside an
imported (inlined) body, inline asm. Caches, logs and results are named apart (-g)."""
import argparse, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

NAMING = ["-mllvm", "-use-source-filename-for-promoted-locals"]
EDITS = {
    "setup_arch": (bench.EDIT_FILE, bench.EDIT_OLD, bench.EDIT_NEW, "arch/x86/kernel/setup.o"),
    "slob_free": ("mm/slob.c", "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n",
                  "\tif (unlikely(ZERO_OR_NULL_PTR(block)))\n\t\treturn;\n\tbarrier(); /* ltocache precise edit */\n",
                  "mm/slob.o"),
    # Mutations (issue 16 item 4): an attribute, linkage and the initialiser of an imported
    # read-only variable.
    "cold_attr": ("lib/refcount.c", "void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
                  "__cold void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
                  "lib/refcount.o"),
    "weak": ("lib/refcount.c", "void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
             "__weak void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)\n{",
             "lib/refcount.o"),
    "rodata_init": ("lib/hexdump.c", 'const char hex_asc[] = "0123456789abcdef";',
                    'const char hex_asc[] = "0123456789abcdeF";', "lib/hexdump.o"),
    # Inline asm in a small imported helper that its 17 importers inline: __fdget() gets an asm
    # statement, then (from that state) only the statement's string changes, a real instruction so
    # that the objects change: the summary (instruction count, flags) stays the same, only the
    # post-import module's asm string differs.
    "asm_nop": ("fs/file.c", "unsigned long __fdget(unsigned int fd)\n{\n\treturn __fget_light(fd, FMODE_PATH);",
                "unsigned long __fdget(unsigned int fd)\n{\n\tasm volatile(\"nop\" ::: \"memory\"); /* ltocache */ "
                "return __fget_light(fd, FMODE_PATH);", "fs/file.o"),
    "asm_pause": ("fs/file.c", '\tasm volatile("nop" ::: "memory"); /* ltocache */ ',
                  '\tasm volatile("pause" ::: "memory"); /* ltocache */ ', "fs/file.o", "asm_nop"),
}
# -g mutations (--debug), with the -g tree's own runs of setup_arch and the asm edits. Lines moved:
# blank lines after the includes (headers' lines stay), so every line of the file's own definitions
# moves: their debug locations change, and so do WARN()'s __bug_table line numbers.
DEBUG_EDITS = {
    "g_lines_setup": ("arch/x86/kernel/setup.c", " * parts of early kernel initialization.\n */\n",
                      " * parts of early kernel initialization.\n */\n\n\n\n", "arch/x86/kernel/setup.o"),
    "g_lines_refcount": ("lib/refcount.c", "\n#define REFCOUNT_WARN(str)", "\n\n\n\n#define REFCOUNT_WARN(str)",
                         "lib/refcount.o"),
    # An edit inside an imported body that its importers inline, lines kept.
    "g_body_fdget": ("fs/file.c", "\treturn __fget_light(fd, FMODE_PATH);\n}\nEXPORT_SYMBOL(__fdget);",
                     "\treturn __fget_light(fd, FMODE_PATH | FMODE_READ);\n}\nEXPORT_SYMBOL(__fdget);", "fs/file.o"),
}
EDITS.update(DEBUG_EDITS)
DEFAULT_EDITS = "setup_arch,slob_free,cold_attr,weak,rodata_init,asm_nop,asm_pause"
DEBUG_DEFAULT_EDITS = "setup_arch,g_lines_setup,g_lines_refcount,g_body_fdget,asm_nop,asm_pause"


def after(edit):
    """The edit whose state this one starts from (None: the base state)."""
    return edit[4] if len(edit) > 4 else None


def sections(path):
    """Names and sizes of an ELF64 little-endian object's sections."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    hdr = lambda i: struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    stroff = hdr(shstrndx)[4]
    out = {}
    for i in range(shnum):
        name, _, _, _, _, size = hdr(i)
        out[data[stroff + name:data.index(b"\0", stroff + name)].decode()] = size
    return out


def check_debug(dist, also=None):
    """-g (and `also`) on every backend's command line and debug info in every object of the last cache
    pass."""
    no_g = [m for m in dist.bitcode if "-g" not in dist.flags[m] or (also and also not in dist.flags[m])]
    secs = {m: sections(dist.tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
    # Objects with no code or data (lib members the thin link leaves out, files empty in tinyconfig)
    # have no compile unit to describe.
    empty = [m for m, s in secs.items()
             if not any(v for k, v in s.items() if not k.startswith((".strtab", ".symtab", ".comment", ".note",
                                                                    ".llvm_addrsig")) and k)]
    no_info = [m for m, s in secs.items() if m not in empty and not {".debug_info", ".debug_line"} <= set(s)]
    row = {"backends": len(dist.bitcode), "without_g": no_g, "without_debug_info": no_info, "empty": empty,
           "debug_info_bytes": sum(s.get(".debug_info", 0) for s in secs.values())}
    bench.log("debug check: " + json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in row.items()}))
    if no_g or no_info:
        sys.exit(f"-g tree: {len(no_g)} backends without -g, {len(no_info)} objects without debug info "
                 f"(first: {(no_g + no_info)[0]})")
    return row


def stats(env):
    out = subprocess.run([env["LTOCACHE_BIN"], "stats", "--json"], env=env, capture_output=True, text=True).stdout
    return json.loads(out)


def apply(tree, edit, on):
    """Applies (on) or undoes an edit. An edit's new text may contain its old one (slob_free's does):
    whether it is applied is decided by the new text alone."""
    path, old, new = edit[:3]
    p = tree.path(path)
    text = open(p).read()
    if (new in text) == on:
        return
    a, b = (old, new) if on else (new, old)
    if a not in text:
        sys.exit(f"{path}: edit anchor missing")
    open(p, "w").write(text.replace(a, b, 1))


def compare_save_temps(tree, dist, jobs, extra, dump, mode):
    """The helper's post-import modules (dumped by the cold pass) against clang's own -save-temps=obj
    X.3.import.bc, module by module; counts identical / different / skipped with reasons."""
    bench.run_pass(dist, "ref", jobs, dict(os.environ), list(extra) + ["-save-temps=obj"])
    same, diff, reasons = 0, [], {}
    for m in dist.bitcode:
        nat = tree.path(dist.native(m, "cache"))
        ours = os.path.join(dump, os.path.realpath(nat).lstrip("/") + ".3.import.bc")
        # -save-temps=obj names the temps after the input, in the output's directory (the input's here).
        base = tree.path(m[:-2])
        theirs = base + ".s.3.import.bc"
        if not os.path.exists(ours):
            reasons["no helper module (refused: see ltocache's log)"] = \
                reasons.get("no helper module (refused: see ltocache's log)", 0) + 1
        elif not os.path.exists(theirs):
            reasons["clang wrote no .3.import.bc"] = reasons.get("clang wrote no .3.import.bc", 0) + 1
        elif open(ours, "rb").read() == open(theirs, "rb").read():
            same += 1
        else:
            diff.append(m)
        for suffix in (".s", ".s.0.preopt.bc", ".s.1.promote.bc", ".s.2.internalize.bc", ".s.3.import.bc",
                       ".s.4.opt.bc", ".s.5.precodegen.bc", ".s.resolution.txt"):
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass
    row = {"mode": mode, "modules": len(dist.bitcode), "identical": same, "different": diff, "skipped": reasons}
    bench.log("save-temps: " + json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--edits", default=None,
                    help=f"default {DEFAULT_EDITS}; with --debug {DEBUG_DEFAULT_EDITS}")
    ap.add_argument("--debug", nargs="?", const="default", choices=["default", "dwarf4"],
                    help="the CONFIG_DEBUG_INFO=y tree and DEBUG_EDITS; dwarf4: CONFIG_DEBUG_INFO_DWARF4 "
                         "(-gdwarf-4) in a tree of its own, WORK/linux-source-6.1-gdwarf4")
    ap.add_argument("--modes", default="default,naming")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--savetemps", action="store_true",
                    help="compare the helper's post-import module with clang's -save-temps=obj X.3.import.bc")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir, exist_ok=True)
    g = {None: "", "default": "-g", "dwarf4": "-gdwarf4"}[a.debug]
    choice = {"default": "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "dwarf4": "DEBUG_INFO_DWARF4"}.get(a.debug)
    if a.edits is None:
        a.edits = DEBUG_DEFAULT_EDITS if a.debug else DEFAULT_EDITS
    root = os.path.join(work, "linux-source-6.1" + g)
    if a.debug and not os.path.exists(os.path.join(root, "Makefile")):
        # A copy keeps the configured tree and its host tools; DEBUG_INFO rebuilds every object.
        bench.log(f"copying {work}/linux-source-6.1 to {root}")
        subprocess.run(["cp", "-a", os.path.join(work, "linux-source-6.1"), root], check=True)
    tree = bench.Tree(root, logdir, a.jobs)
    tree.configure()
    if a.debug and tree.config_value(choice) != "y":
        bench.log(f"configuring {root}: CONFIG_DEBUG_INFO=y, CONFIG_{choice}=y")
        tree.scripts_config("--disable", "DEBUG_INFO_NONE", "--enable", choice)
        tree.make("olddefconfig", tag="config" + g)
        if tree.config_value("DEBUG_INFO") != "y" or tree.config_value(choice) != "y":
            sys.exit(f"CONFIG_DEBUG_INFO / CONFIG_{choice} did not stay set")
    tree.set_edit(False)
    for e in reversed(list(EDITS.values())):  # a chained edit is undone before the one it starts from
        apply(tree, e, False)
    bench.log("make vmlinux (base state)")
    tree.make("vmlinux", tag=f"precise{g}-base")
    results, stale_total, savetemps, debug_checks = [], 0, [], []
    ignore = shutil.ignore_patterns("*.sock", "*.sock.lock")
    for mode in a.modes.split(","):
        extra = NAMING if mode == "naming" else []
        cache = os.path.join(work, f"precise-cache{g}-{mode}")
        today = os.path.join(work, f"precise-cache{g}-{mode}-today")
        verify = os.path.join(work, f"precise-cache{g}-{mode}-verify")
        for d in (cache, today, verify):
            shutil.rmtree(d, ignore_errors=True)
        env = dict(os.environ, LTOCACHE_BIN=os.path.abspath(a.ltocache), LTOCACHE_DIR=cache,
                   LTOCACHE_STATS_DIR=os.path.join(cache, "stats"), LTOCACHE_PRECISE_HELPER=a.helper,
                   LTOCACHE_PRECISE_COLD="sync", LTOCACHE_PRECISE_IDLE="60")
        for k in ("LTOCACHE_DISABLE", "LTOCACHE_RECACHE", "LTOCACHE_READONLY", "LTOCACHE_PRECISE",
                  "LTOCACHE_VERIFY"):
            env.pop(k, None)
        env_today = dict(env, LTOCACHE_DIR=today, LTOCACHE_STATS_DIR=os.path.join(today, "stats"),
                         LTOCACHE_PRECISE="0")
        env_verify = dict(env, LTOCACHE_DIR=verify, LTOCACHE_STATS_DIR=os.path.join(verify, "stats"),
                          LTOCACHE_VERIFY="1")
        dist = bench.Dist(tree)
        dist.thin_link()
        dump = os.path.join(work, f"precise-dump{g}-{mode}")
        shutil.rmtree(dump, ignore_errors=True)
        cold = bench.run_pass(dist, "cache", a.jobs, dict(env, LTOCACHE_PRECISE_DUMP=dump) if a.savetemps else env,
                              extra)
        s_cold = stats(env)  # s0 is taken again before every edit
        base_ref = bench.run_pass(dist, "ref", a.jobs, dict(os.environ), extra)
        base_sha = {m: bench.sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
        if a.savetemps:
            savetemps.append(compare_save_temps(tree, dist, a.jobs, extra, dump, mode))
            shutil.rmtree(dump, ignore_errors=True)
        cold_stale = [m for m in dist.bitcode if bench.sha(tree.path(dist.native(m, "cache"))) != base_sha[m]]
        stale_total += len(cold_stale)
        if a.debug:
            debug_checks.append(dict(check_debug(dist, "-gdwarf-4" if a.debug == "dwarf4" else None), mode=mode))
        names = [e for e in a.edits.split(",") if e]
        for i, n in enumerate(names):
            if after(EDITS[n]) and (i == 0 or names[i - 1] != after(EDITS[n])):
                sys.exit(f"edit {n} starts from {after(EDITS[n])}'s state: list it right after that one")
        prev_sha, chain = base_sha, []  # the plain objects of the state an edit starts from
        for i, name in enumerate(names):
            edit = EDITS[name]
            for src, dst in ((cache, today), (cache, verify)):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, symlinks=True, ignore=ignore)
            s0, t0, v0 = stats(env), stats(env_today), stats(env_verify)
            apply(tree, edit, True)
            tree.make(edit[3], tag=f"precise{g}-{name}-edit")
            dist = bench.Dist(tree)
            dist.thin_link()
            warm = bench.run_pass(dist, "cache", a.jobs, env, extra)
            s1 = stats(env)
            native = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            plain = bench.run_pass(dist, "cache", a.jobs, env_today, extra)
            t1 = stats(env_today)
            today_out = {m: bench.sha(tree.path(dist.native(m, "cache"))) for m in dist.bitcode}
            ref = bench.run_pass(dist, "ref", a.jobs, dict(os.environ), extra)
            ref_sha = {m: bench.sha(tree.path(dist.native(m, "ref"))) for m in dist.bitcode}
            stale = [m for m in dist.bitcode if native[m] != ref_sha[m]]
            today_stale = [m for m in dist.bitcode if today_out[m] != ref_sha[m]]
            changed = [m for m in dist.bitcode if prev_sha.get(m) != ref_sha[m]]
            v1 = {}
            if not a.no_verify:
                bench.run_pass(dist, "cache", a.jobs, env_verify, extra)
                v1 = stats(env_verify)
            stale_total += len(stale) + len(today_stale) + v1.get("stale_detected", 0) - v0.get("stale_detected", 0)
            pc = lambda s, k: s.get("precise", {}).get(k, 0)
            row = {
                "mode": mode, "edit": name, "debug": a.debug, "from": after(edit) or "base",
                "backends": len(dist.bitcode), "objects_changed": len(changed),
                "cold_cpu_s": cold["cpu"], "cold_compiler_cpu_s": s_cold["compiler_cpu_seconds_on_misses"],
                "first_key_misses": s1["misses"] - s0["misses"] + s1["precise_hits"] - s0["precise_hits"],
                "precise_compiled": s1["misses"] - s0["misses"],
                "precise_hits": s1["precise_hits"] - s0["precise_hits"],
                # The helper server is not our child: its CPU comes from its answers.
                "precise_backend_cpu_s": warm["cpu"] + (pc(s1, "helper_cpu_ms") - pc(s0, "helper_cpu_ms")) / 1e3,
                "precise_helper_cpu_s": (pc(s1, "helper_cpu_ms") - pc(s0, "helper_cpu_ms")) / 1e3,
                "precise_wall_s": warm["wall"],
                "today_compiled": t1["misses"] - t0["misses"],
                "today_backend_cpu_s": plain["cpu"], "today_wall_s": plain["wall"],
                "stale": stale, "today_stale": today_stale, "cold_stale": cold_stale,
                "refused": {k: pc(s1, k) - pc(s0, k) for k in s1.get("precise", {})
                            if k.startswith("refused.") and pc(s1, k) != pc(s0, k)},
                "verified_hits": v1.get("verified_hits", 0) - v0.get("verified_hits", 0),
                "precise_verified": pc(v1, "verified") - pc(v0, "verified"),
                "stale_detected": v1.get("stale_detected", 0) - v0.get("stale_detected", 0),
            }
            results.append(row)
            bench.log(json.dumps(row))
            for d in (today, verify):
                shutil.rmtree(d, ignore_errors=True)
            chain.append(edit)
            if i + 1 < len(names) and after(EDITS[names[i + 1]]) == name:
                prev_sha = ref_sha  # the next edit starts from this state
                continue
            for e in reversed(chain):
                apply(tree, e, False)
            for obj in dict.fromkeys(e[3] for e in chain):
                tree.make(obj, tag=f"precise{g}-{name}-restore")
            prev_sha, chain = base_sha, []
        dist = bench.Dist(tree)
        dist.thin_link()
    with open(os.path.join(work, f"results-precise{g}.json"), "w") as f:
        json.dump({"edits": results, "savetemps": savetemps, "debug_checks": debug_checks}, f, indent=1)
    for r in savetemps:
        print(f"save-temps {r['mode']}: {r['modules']} modules, {r['identical']} identical, "
              f"{len(r['different'])} different, skipped {r['skipped']}")
    print(f"{'mode':8} {'edit':16} {'fk miss':>7} {'compiled today':>14} {'compiled precise':>16} "
          f"{'precise hits':>12} {'CPU today s':>11} {'CPU precise s':>13} {'wall today s':>12} "
          f"{'wall precise s':>14} changed stale verified(2nd) stale_detected")
    for r in results:
        print(f"{r['mode']:8} {r['edit']:16} {r['first_key_misses']:>7} {r['today_compiled']:>14} "
              f"{r['precise_compiled']:>16} {r['precise_hits']:>12} {r['today_backend_cpu_s']:>11.2f} "
              f"{r['precise_backend_cpu_s']:>13.2f} {r['today_wall_s']:>12.2f} {r['precise_wall_s']:>14.2f} "
              f"{r['objects_changed']:>7} {len(r['stale']) + len(r['today_stale'])} "
              f"{r['verified_hits']}({r['precise_verified']}) {r['stale_detected']}")
    sys.exit(1 if stale_total else 0)


if __name__ == "__main__":
    main()

//! Precise mode's shim (helper/ltocache-precise-shim.cpp, preloaded into
//! clang-19's backend): the compile is unchanged by it, its post-import
//! digest is the helper's, and a cold build through ltocache records second
//! keys with it, so the first edit after a cold build is served precisely.
//! A shim that cannot be used leaves the compile alone.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use util::precise::{helper19, shim_of, Project, NAMING, PROJECT};
use util::{ok, CLANG};

fn shim() -> PathBuf {
    shim_of(&helper19())
}

/// A project whose cold jobs run under the default cold policy.
fn project(cflags: &[&str], bflags: &[&str]) -> Project {
    Project::new(cflags, bflags)
}

/// Runs one backend of `p` through ltocache with the default cold policy
/// (or `cold`) and `env`; returns its stderr.
fn backend(p: &Project, m: &str, env: &[(&str, &str)]) -> Vec<u8> {
    let mut c = p.ltocache();
    c.env_remove("LTOCACHE_PRECISE_COLD");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.arg(&p.clang).args(p.backend_args(m, &format!("{m}.native.o"))).output().unwrap();
    assert!(out.status.success(), "{m}: {}", String::from_utf8_lossy(&out.stderr));
    out.stderr
}

fn build(p: &Project, env: &[(&str, &str)]) {
    for m in &p.modules {
        let stderr = backend(p, m, env);
        assert!(stderr.is_empty(), "{m}: {}", String::from_utf8_lossy(&stderr));
    }
}

fn maps(p: &Project) -> usize {
    util::files_under(&p.cache.join("v1/precise")).len()
}

#[test]
fn shim_leaves_objects_unchanged_and_its_digest_and_module_are_the_helpers_and_clangs() {
    let cases = util::precise::Cases::new();
    let compared: usize = cases.list().into_iter().map(|(b, extra)| b.compare_shim(&shim(), &helper19(), extra)).sum();
    assert_eq!(compared, util::precise::Cases::modules());
}

#[test]
fn a_cold_build_records_second_keys_with_the_shim_and_the_first_edit_is_served() {
    for (bflags, expect) in [(&[][..], &["table"][..]), (NAMING, &["table", "step"])] {
        let p = project(&[], bflags);
        build(&p, &[]);
        // lib imports nothing (no second key needed); the other three
        // recorded theirs from the shim, none in the background.
        assert_eq!(p.stat("shim_computed"), 3, "{}", p.stats_json());
        assert_eq!(p.stat("skipped_no_imports"), 1, "{}", p.stats_json());
        assert_eq!(p.stat("background"), 0, "{}", p.stats_json());
        assert_eq!(p.stat("computed"), 0, "no helper request in a cold build: {}", p.stats_json());
        assert_eq!(maps(&p), 3);
        p.assert_fresh("cold build with the shim");
        // The first edit after the cold build: served by the second key the
        // shim recorded, found by the helper's.
        p.edit("lib", "return x * 7;", "return x * 9;");
        let mut served = Vec::new();
        for m in PROJECT {
            let hits = p.stat("precise_hits");
            backend(&p, m, &[]);
            if p.stat("precise_hits") > hits {
                served.push(*m);
            }
        }
        // (With the naming option main, which imports lib_step through
        // step, may be served too: its post-import module is unchanged.)
        assert!(expect.iter().all(|m| served.contains(m)), "{bflags:?}: {served:?}");
        assert!(!served.contains(&"lib"), "{bflags:?}: {served:?}");
        if bflags.is_empty() {
            assert_eq!(served, expect);
        }
        p.assert_fresh(&format!("first edit after a cold build {bflags:?}"));
    }
}

#[test]
fn verification_finds_the_shims_second_key_hits_clean() {
    let p = project(&[], &[]);
    build(&p, &[]);
    p.edit("lib", "return x * 7;", "return x * 9;");
    build(&p, &[("LTOCACHE_VERIFY", "1")]);
    assert_eq!(p.stat("verified"), 1, "{}", p.stats_json());
    assert_eq!(p.stat("stale_detected"), 0);
    p.assert_fresh("verified");
}

#[test]
fn explicit_policies_still_work_and_background_is_the_fallback_without_a_shim() {
    // background: the old way, no shim.
    let p = project(&[], &[]);
    build(&p, &[("LTOCACHE_PRECISE_COLD", "background")]);
    assert_eq!(p.stat("shim_armed"), 0);
    assert_eq!(p.stat("background"), 3, "{}", p.stats_json());
    // No shim beside the helper (LTOCACHE_PRECISE_SHIM=0): the default
    // falls back to background; `shim` computes nothing.
    let p = project(&[], &[]);
    build(&p, &[("LTOCACHE_PRECISE_SHIM", "0")]);
    assert_eq!((p.stat("shim_armed"), p.stat("background")), (0, 3), "{}", p.stats_json());
    let p = project(&[], &[]);
    build(&p, &[("LTOCACHE_PRECISE_SHIM", "0"), ("LTOCACHE_PRECISE_COLD", "shim")]);
    assert_eq!((p.stat("shim_armed"), p.stat("background"), maps(&p)), (0, 0, 0), "{}", p.stats_json());
    // skip: nothing.
    let p = project(&[], &[]);
    build(&p, &[("LTOCACHE_PRECISE_COLD", "skip")]);
    assert_eq!((p.stat("shim_armed"), maps(&p)), (0, 0));
    // Precise mode off: no shim either.
    let p = project(&[], &[]);
    build(&p, &[("LTOCACHE_PRECISE", "0")]);
    assert_eq!((p.stat("shim_armed"), maps(&p)), (0, 0));
}

/// A shared library that is not the shim (no thinBackend of its own).
fn foreign_so(dir: &Path) -> PathBuf {
    let src = dir.join("other.c");
    std::fs::write(&src, "int ltocache_test_other(void) { return 1; }\n").unwrap();
    let so = dir.join("other.so");
    ok(Command::new(CLANG).args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src));
    so
}

#[test]
fn a_shim_that_cannot_be_used_leaves_the_compile_untouched() {
    let t = tempfile::tempdir().unwrap();
    let garbage = t.path().join("garbage.so");
    std::fs::write(&garbage, "not an ELF file\n").unwrap();
    let missing = t.path().join("missing.so");
    for (what, path) in [("not loadable", garbage), ("no thinBackend", foreign_so(t.path())), ("absent", missing)] {
        let p = project(&[], &[]);
        let env = [("LTOCACHE_PRECISE_SHIM", path.to_str().unwrap()), ("LTOCACHE_PRECISE_COLD", "shim")];
        // build() asserts every compile's stderr is empty: the loader's
        // complaint about a bad preload never reaches the build.
        build(&p, &env);
        assert_eq!(p.stat("shim_armed"), 0, "{what}: {}", p.stats_json());
        assert_eq!(maps(&p), 0, "{what}: no second key");
        assert_eq!(p.stat("shim_unusable"), 3, "{what}: counted: {}", p.stats_json());
        p.assert_fresh(what);
    }
}

#[test]
fn where_cc1_would_run_in_a_process_of_its_own_the_shim_is_not_added() {
    let p = project(&[], &[]);
    build(&p, &[("CLANG_SPAWN_CC1", "1")]);
    assert_eq!(p.stat("shim_armed"), 0);
    assert_eq!(p.stat("shim_unsafe_env"), 3, "{}", p.stats_json());
    // The default then falls back to the background helper.
    assert_eq!(p.stat("background"), 3, "{}", p.stats_json());
    p.assert_fresh("CLANG_SPAWN_CC1");
}

/// A preload of the user's own that logs each process it is loaded into.
fn user_preload(dir: &Path) -> PathBuf {
    let src = dir.join("user.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* Every preload is mapped before any constructor runs: whether the shim is
   in this process too can be read from its maps. */
__attribute__((constructor)) static void logged(void) {
    const char *log = getenv("USER_PRELOAD_LOG");
    if (!log) return;
    int shim = 0;
    char line[4096];
    FILE *m = fopen("/proc/self/maps", "r");
    while (m && fgets(line, sizeof line, m))
        if (strstr(line, "ltocache-precise-19.so")) shim = 1;
    if (m) fclose(m);
    FILE *f = fopen(log, "a");
    if (f) { fprintf(f, shim ? "loaded with the shim\n" : "loaded\n"); fclose(f); }
}
"#,
    )
    .unwrap();
    let so = dir.join("user.so");
    ok(Command::new(CLANG).args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src));
    so
}

#[test]
fn the_users_ld_preload_is_kept_with_the_shim() {
    let t = tempfile::tempdir().unwrap();
    let user = user_preload(t.path());
    let log = t.path().join("user.log");
    let p = project(&[], &[]);
    build(&p, &[("LD_PRELOAD", user.to_str().unwrap()), ("USER_PRELOAD_LOG", log.to_str().unwrap())]);
    assert_eq!(p.stat("shim_computed"), 3, "{}", p.stats_json());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The three shimmed compiles loaded the user's library beside the shim
    // (ltocache itself, clang -### and lib's compile load it alone).
    let with_shim = text.lines().filter(|l| *l == "loaded with the shim").count();
    assert_eq!(with_shim, 3, "{text}");
    p.assert_fresh("user's LD_PRELOAD");
}

#[test]
fn the_shims_settings_do_not_reach_the_compilers_children() {
    // Not clang: what the shim does at load, in any process it is preloaded
    // into, with the environment ltocache gives it. The program's children
    // must see the user's LD_PRELOAD, none of the shim's variables and not
    // its report descriptor.
    let t = tempfile::tempdir().unwrap();
    let user = user_preload(t.path());
    let report = std::fs::File::create(t.path().join("report")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&report);
    let env = ltocache::backend::precise::shim_environment(&shim(), fd, Some(user.as_os_str()), None);
    let mut cmd = Command::new("/bin/sh");
    ltocache::exec::Extra { env, inherit_fd: Some(fd) }.apply(&mut cmd);
    let script = format!("env; echo FD; ls -l /proc/self/fd; echo SH; readlink /proc/$$/fd/{fd}");
    let out = ok(cmd.args(["-c", &script]));
    let text = String::from_utf8_lossy(&out.stdout);
    let (env_text, rest) = text.split_once("\nFD\n").unwrap();
    assert!(!env_text.contains("LTOCACHE_SHIM"), "{env_text}");
    let preload: Vec<&str> = env_text.lines().filter(|l| l.starts_with("LD_PRELOAD=")).collect();
    assert_eq!(preload, vec![format!("LD_PRELOAD={}", user.display())], "{env_text}");
    let (fds, sh) = rest.split_once("SH\n").unwrap();
    let name = t.path().join("report").display().to_string();
    assert!(!fds.contains(&name), "the report descriptor reached a child: {fds}");
    // The process the shim was loaded into still has it (for its report)...
    assert!(sh.contains(&name), "{sh}");
    // ...and a process with no use for it wrote nothing on it.
    drop(report);
    assert_eq!(std::fs::read(t.path().join("report")).unwrap(), b"");
}

/// Files in the project's directory named after `m.native.o` but not it:
/// clang's temporary outputs (`m.native-XXXXXXXX.o.tmp`).
fn temporaries(p: &Project, m: &str) -> Vec<String> {
    let name = format!("{m}.native.o");
    std::fs::read_dir(&p.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{m}.native")) && *n != name)
        .collect()
}

#[test]
fn a_rebuild_asked_by_the_shim_is_stopped_on_a_second_key_hit() {
    // LTOCACHE_PRECISE_REBUILD=shim: no helper request before a rebuild's
    // compile; the shim asks with its digest after the import, and a hit
    // serves the object and stops the backend.
    // (Whatever the cold policy: `sync` asks the helper only for cold jobs.)
    let rebuild = [("LTOCACHE_PRECISE_REBUILD", "shim"), ("LTOCACHE_PRECISE_COLD", "sync")];
    for (bflags, expect) in [(&[][..], &["table"][..]), (NAMING, &["table", "step"])] {
        let p = project(&[], bflags);
        build(&p, &[]);
        for (n, (from, to)) in
            [("return x * 7;", "return x * 9;"), ("return x * 9;", "return x * 11;")].iter().enumerate()
        {
            p.edit("lib", from, to);
            let mut served = Vec::new();
            for m in PROJECT {
                let hits = p.stat("precise_hits");
                let stderr = backend(&p, m, &rebuild);
                assert!(stderr.is_empty(), "{m}: {}", String::from_utf8_lossy(&stderr));
                if p.stat("precise_hits") > hits {
                    served.push(*m);
                }
                assert!(temporaries(&p, m).is_empty(), "{m}: {:?}", temporaries(&p, m));
            }
            assert!(expect.iter().all(|m| served.contains(m)), "{bflags:?} edit {n}: {served:?}");
            assert!(!served.contains(&"lib"));
            assert_eq!(p.stat("shim_stopped"), p.stat("precise_hits"), "{}", p.stats_json());
            assert_eq!(p.stat("computed"), 0, "no helper request: {}", p.stats_json());
            p.assert_fresh(&format!("{bflags:?} edit {n}"));
        }
        // The first key was recorded too: the same build again hits on it.
        let hits = p.stat("hits");
        build(&p, &rebuild);
        assert_eq!(p.stat("hits"), hits + PROJECT.len() as i64);
        // Without a usable shim such a rebuild asks the helper before
        // compiling, as by default. (Its keys name the helper alone, so the
        // edit after the first one is served.)
        let noshim = [rebuild[0], rebuild[1], ("LTOCACHE_PRECISE_SHIM", "0")];
        let stopped = p.stat("shim_stopped");
        p.edit("lib", "return x * 11;", "return x * 13;");
        build(&p, &noshim);
        assert_eq!(p.stat("computed"), 3, "the helper was asked: {}", p.stats_json());
        let hits = p.stat("precise_hits");
        p.edit("lib", "return x * 13;", "return x * 15;");
        build(&p, &noshim);
        assert!(p.stat("precise_hits") > hits, "{}", p.stats_json());
        assert_eq!(p.stat("shim_stopped"), stopped);
        p.assert_fresh("rebuild by the shim, without one");
    }
}

#[test]
fn a_cold_compile_asks_too_and_is_served_where_a_mapping_exists() {
    // Outputs removed (a clean checkout, a new build directory): every job
    // is cold, and its shim's question is a lookup that costs nothing.
    let p = project(&[], &[]);
    build(&p, &[]);
    for m in PROJECT {
        std::fs::remove_file(p.dir.join(format!("{m}.native.o"))).unwrap();
    }
    p.edit("lib", "return x * 7;", "return x * 9;");
    build(&p, &[]);
    assert_eq!(p.stat("precise_hits"), 1, "{}", p.stats_json());
    assert_eq!(p.stat("shim_stopped"), 1);
    assert!(temporaries(&p, "table").is_empty());
    p.assert_fresh("cold, served by the shim's question");
}

/// clang-19 running `m`'s backend of `p` into `out` with the shim asking on
/// a socket; `talk` gets the test's end once the question came.
fn asked_compile(p: &Project, m: &str, out: &str, talk: impl FnOnce(std::os::unix::net::UnixStream, &str)) {
    use std::io::BufRead;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    let mut env = ltocache::backend::precise::shim_environment(&shim(), fd, None, None);
    env.push(("LTOCACHE_SHIM_ASK".into(), "1".into()));
    let mut cmd = p.clang();
    ltocache::exec::Extra { env, inherit_fd: Some(fd) }.apply(&mut cmd);
    let child = cmd.args(p.backend_args(m, out)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(theirs);
    let mut line = String::new();
    std::io::BufReader::new(ours.try_clone().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ok "), "{line:?}");
    talk(ours, &line);
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success() && done.stderr.is_empty(), "{}", String::from_utf8_lossy(&done.stderr));
}

#[test]
fn a_question_nobody_answers_leaves_the_compile_to_finish() {
    // What the compile does when ltocache dies mid-protocol: its end of the
    // socket closes, and the backend goes on and writes its own object. If
    // ltocache had served the object first, clang's rename replaces it with
    // the same bytes; make sees a whole object either way (and ltocache's
    // own exit status, a failure it reports).
    let p = project(&[], &[]);
    ok(p.clang().args(p.backend_args("table", "plain.o")));
    let plain = std::fs::read(p.dir.join("plain.o")).unwrap();
    asked_compile(&p, "table", "table.native.o", |ours, _| drop(ours));
    assert!(p.object("table") == plain);
    std::fs::write(p.dir.join("table.native.o"), &plain).unwrap();
    asked_compile(&p, "table", "table.native.o", |ours, _| {
        std::fs::write(p.dir.join("table.native.o"), &plain).unwrap();
        drop(ours);
    });
    assert!(p.object("table") == plain);
    // "Go on" is the same.
    asked_compile(&p, "table", "table.native.o", |mut ours, _| {
        std::io::Write::write_all(&mut ours, b"g").unwrap();
    });
    assert!(p.object("table") == plain);
    assert!(temporaries(&p, "table").is_empty());
}

#[test]
fn stopping_removes_clangs_temporary_output_and_leaves_what_was_served() {
    let p = project(&[], &[]);
    ok(p.clang().args(p.backend_args("table", "plain.o")));
    let plain = std::fs::read(p.dir.join("plain.o")).unwrap();
    asked_compile(&p, "table", "table.native.o", |mut ours, _| {
        // While the backend waits, its temporary output exists beside the output.
        assert_eq!(temporaries(&p, "table").len(), 1, "{:?}", temporaries(&p, "table"));
        std::fs::write(p.dir.join("table.native.o"), &plain).unwrap();
        std::io::Write::write_all(&mut ours, b"s").unwrap();
    });
    assert!(temporaries(&p, "table").is_empty(), "{:?}", temporaries(&p, "table"));
    assert!(p.object("table") == plain);
}

#[test]
fn a_stopped_backend_really_stops_the_served_object_is_what_the_build_keeps() {
    // Proof that the backend stops (and does not finish and write its own
    // object): the mapping of table's second key is pointed at another
    // module's entry, as a wrong second key would; with the stop, the
    // output is that entry's object, which the backend would have replaced.
    let p = project(&[], &[]);
    build(&p, &[]);
    let before: Vec<Vec<u8>> = PROJECT.iter().map(|m| p.object(m)).collect();
    let saved = p.dir.join("cache-saved");
    ok(Command::new("cp").arg("-a").arg(&p.cache).arg(&saved));
    p.edit("lib", "return x * 7;", "return x * 9;");
    let rebuild = [("LTOCACHE_PRECISE_REBUILD", "shim")];
    backend(&p, "table", &rebuild);
    assert_eq!(p.stat("shim_stopped"), 1, "{}", p.stats_json());
    let explain = ok(p.ltocache().args(["explain", "table.native.o"]));
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    let key = text.split("second key ").nth(1).and_then(|t| t.get(..64)).unwrap_or_else(|| panic!("{text}"));
    let mut second = [0u8; 32];
    for (i, b) in second.iter_mut().enumerate() {
        *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap();
    }
    // Back to the cache before the rebuild, with the wrong mapping planted.
    std::fs::remove_dir_all(&p.cache).unwrap();
    ok(Command::new("cp").arg("-a").arg(&saved).arg(&p.cache));
    let store = ltocache::store::LocalStore::new(&p.cache);
    let right = store.get_precise_map(&second).expect("the shim recorded table's second key in the cold build");
    let wrong = util::precise::another_mapping(&p.cache, &store, &right);
    store.put_precise_map(&second, &wrong).unwrap();
    backend(&p, "table", &rebuild);
    let served = p.object("table");
    let table = PROJECT.iter().position(|m| *m == "table").unwrap();
    assert!(served != before[table], "table's own object: the backend did not stop");
    assert!(
        before.iter().enumerate().any(|(i, o)| i != table && *o == served),
        "the output is the planted entry's object"
    );
    assert!(temporaries(&p, "table").is_empty(), "{:?}", temporaries(&p, "table"));
}

#[test]
fn a_cold_compile_that_prints_a_warning_records_no_second_key() {
    // The assembler's `.warning` in module-level asm: the backend prints it
    // at codegen, after the shim reported. Diagnostics may name what the
    // post-import module does not hold (module paths), so a compile that
    // printed anything maps no second key; the others still do.
    let p = project(&[], &[]);
    p.edit("table", "int use_table", "__asm__(\".warning \\\"ltocache test warning\\\"\");\nint use_table");
    let mut printed = Vec::new();
    for m in PROJECT {
        if String::from_utf8_lossy(&backend(&p, m, &[])).contains("ltocache test warning") {
            printed.push(*m);
        }
    }
    // table prints it, and main, which imports use_table, does too.
    assert!(printed.contains(&"table") && !printed.contains(&"step"), "{printed:?}");
    assert_eq!(p.stat("refused.stderr"), printed.len() as i64, "{}", p.stats_json());
    // Of the three importers (lib imports nothing), only the silent ones map.
    assert_eq!(maps(&p), 3 - printed.len(), "{printed:?}: {}", p.stats_json());
    p.assert_fresh("cold build with a warning");
}

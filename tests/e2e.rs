//! End-to-end behaviour with the real clang-19 and ld.lld on a fixture of six C
//! modules with cross-module inlining and an `.incbin`. Each test names the
//! behaviour it pins down.

mod util;

use std::process::Command;
use util::{ok, Fixture, CLANG, MODULES};

const EXPECTED_RUN: &str = "sum=1009 max=2000 len=4 hash=37942aa6 blob=";

#[test]
fn miss_then_hit_is_byte_identical_with_identical_stderr() {
    let f = Fixture::new();
    // `-I inc` is unused for IR input: clang warns, and the hit must replay it.
    let extra = ["-I", "inc"];
    let first = f.cached_backend("main", &extra);
    assert!(first.status.success());
    let miss_obj = f.read("main.final_o");
    assert!(String::from_utf8_lossy(&first.stderr).contains("argument unused"), "expected a warning");
    std::fs::remove_file(f.path("main.final_o")).unwrap();

    let second = f.cached_backend("main", &extra);
    assert!(second.status.success());
    assert_eq!(f.read("main.final_o"), miss_obj, "hit must give the same bytes");
    assert_eq!(second.stderr, first.stderr, "hit must replay stderr byte for byte");
    assert_eq!(miss_obj, f.fresh_object("main", &extra), "and the same bytes as clang alone");
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    assert!(f.stat("backend_seconds_saved") == 0 || f.stats_json().contains("backend_seconds_saved"));
}

#[test]
fn second_build_is_all_hits_and_the_program_runs() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    let first = f.link_and_run();
    assert!(first.starts_with(EXPECTED_RUN), "unexpected output {first}");
    let objects: Vec<Vec<u8>> = MODULES.iter().map(|m| f.read(&format!("{m}.final_o"))).collect();
    for m in MODULES {
        std::fs::remove_file(f.path(&format!("{m}.final_o"))).unwrap();
    }
    // The thin link rewrites every shard (new mtimes, same bytes): all hits.
    f.thin_link();
    f.cached_backends(&[]);
    assert_eq!(f.stat("hits"), MODULES.len() as i64);
    assert_eq!(f.stat("misses"), MODULES.len() as i64);
    for (m, obj) in MODULES.iter().zip(&objects) {
        assert_eq!(&f.read(&format!("{m}.final_o")), obj, "{m} differs on a hit");
    }
    assert_eq!(f.link_and_run(), first, "the program built from cached objects behaves the same");
}

/// Changes a module's function body, rebuilds it and thin-links again; then
/// checks that exactly the modules listing it in their shard miss, and that
/// every object (hit or miss) equals what clang alone produces now.
fn changed_import_misses_its_importers(f: &Fixture) {
    f.cached_backends(&[]);
    let importers = f.importers_of("hash");
    assert!(importers.len() >= 3, "fixture should import hash.o widely: {importers:?}");
    let shards_before: Vec<Vec<u8>> = MODULES.iter().map(|m| f.read(&format!("{m}.o.thinlto.bc"))).collect();

    f.edit("hash.c", "2166136261u", "2166136263u");
    f.frontend("hash");
    f.thin_link();
    let (hits0, misses0) = (f.stat("hits"), f.stat("misses"));
    f.cached_backends(&[]);
    let misses = f.stat("misses") - misses0;
    let hits = f.stat("hits") - hits0;
    assert_eq!(misses, importers.len() as i64, "exactly the importers of hash.o ({importers:?}) must miss");
    assert_eq!(hits, (MODULES.len() - importers.len()) as i64);
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]), "{m}: served object is stale");
    }
    if f.without_module_hash {
        // The point of this variant: with no module hash, a body change that
        // leaves the summary alone leaves importers' shards byte-identical.
        let unchanged = MODULES
            .iter()
            .zip(&shards_before)
            .filter(|(m, before)| **m != "hash" && &&f.read(&format!("{m}.o.thinlto.bc")) == before)
            .count();
        assert!(unchanged >= 2, "expected importers' shards to stay byte-identical without module hashes");
    }
}

#[test]
fn changed_function_in_imported_module_misses_for_importers_only() {
    changed_import_misses_its_importers(&Fixture::new());
}

#[test]
fn changed_import_without_module_hash_still_misses() {
    changed_import_misses_its_importers(&Fixture::without_module_hash());
}

#[test]
fn changing_any_argument_misses() {
    let f = Fixture::new();
    let variants: &[&[&str]] = &[
        &[],
        &["-O1"],
        &["-march=skylake"],
        &["-mavx2"],
        &["-ffunction-sections"],
        &["-fdata-sections"],
        &["-mcmodel=large"],
        &["-fno-PIE"],
        &["-g"],
        &["-mllvm", "-inline-threshold=5"],
        &["--target=x86_64-unknown-linux-gnu"],
        &["-Wno-unused-command-line-argument"],
    ];
    for (i, v) in variants.iter().enumerate() {
        let out = f.cached_backend("vec", v);
        assert!(out.status.success(), "{v:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(f.stat("misses"), i as i64 + 1, "{v:?} did not miss");
    }
    // And each of them hits when repeated.
    for v in variants {
        f.cached_backend("vec", v);
    }
    assert_eq!(f.stat("hits"), variants.len() as i64);
}

#[test]
fn changing_incbin_data_misses() {
    let f = Fixture::new();
    f.cached_backend("blob", &[]);
    let before = f.read("blob.final_o");
    f.write("blob.bin", "ltocache fixture data v2\n");
    f.thin_link();
    f.cached_backend("blob", &[]);
    assert_eq!(f.stat("misses"), 2, "a changed .incbin file must miss");
    let after = f.read("blob.final_o");
    assert_ne!(before, after);
    assert_eq!(after, f.fresh_object("blob", &[]));
}

#[test]
fn unresolvable_incbin_is_uncacheable_and_clang_decides() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("blob.bin")).unwrap();
    let out = f.cached_backend("blob", &[]);
    assert!(!out.status.success(), "clang itself fails without blob.bin");
    assert_eq!(f.stat("unresolved_asm_include"), 1);
    assert_eq!(f.stat("misses") + f.stat("hits"), 0);
}

#[test]
fn changing_a_flag_named_file_misses() {
    let f = Fixture::new();
    f.write("ignore.txt", "fun:vec_sum\n");
    let flags = ["-fsanitize-ignorelist=ignore.txt"];
    f.cached_backend("vec", &flags);
    f.cached_backend("vec", &flags);
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    f.write("ignore.txt", "fun:vec_max\n");
    f.cached_backend("vec", &flags);
    assert_eq!(f.stat("misses"), 2, "a changed ignore list must miss");
}

#[test]
fn changing_the_compiler_misses() {
    // A copy of clang's driver with one extra trailing byte still runs (and
    // still loads the same libraries via $ORIGIN/../lib) but is another binary.
    let f = Fixture::new();
    let real = std::fs::canonicalize(which(CLANG)).unwrap();
    let root = f.dir.join("toolchain");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::os::unix::fs::symlink(real.parent().unwrap().parent().unwrap().join("lib"), root.join("lib")).unwrap();
    let copy = root.join("bin/clang");
    std::fs::copy(&real, &copy).unwrap();
    let run = |f: &Fixture| {
        let mut c = f.ltocache();
        c.arg(&copy).args(f.backend_args("vec", "vec.final_o", &[]));
        ok(&mut c);
    };
    run(&f);
    run(&f);
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    let mut data = std::fs::read(&copy).unwrap();
    data.push(0);
    std::fs::write(&copy, data).unwrap();
    run(&f);
    assert_eq!(f.stat("misses"), 2, "a changed compiler binary must miss");
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not in PATH"))
}

#[test]
fn failing_compile_is_not_cached_and_passes_status_and_stderr_through() {
    let f = Fixture::new();
    let extra = ["-Werror=unused-command-line-argument", "-I", "inc"];
    let direct =
        Command::new(CLANG).current_dir(&f.dir).args(f.backend_args("vec", "vec.final_o", &extra)).output().unwrap();
    assert!(!direct.status.success());
    for _ in 0..2 {
        let out = f.cached_backend("vec", &extra);
        assert_eq!(out.status.code(), direct.status.code());
        assert_eq!(out.stderr, direct.stderr);
    }
    assert_eq!(f.stat("compile_failed"), 2);
    assert_eq!(f.stat("hits"), 0);
    assert!(f.entry_files().is_empty(), "a failed compile must not be stored");
}

#[test]
fn front_end_compiles_pass_through_untouched() {
    let f = Fixture::new();
    ok(f.ltocache().args([CLANG, "-O2", "-c", "util.c", "-o", "util.wrapped.o"]));
    ok(Command::new(CLANG).current_dir(&f.dir).args(["-O2", "-c", "util.c", "-o", "util.direct.o"]));
    assert_eq!(f.read("util.wrapped.o"), f.read("util.direct.o"));
    f.write("bad.c", "int x = ;\n");
    let wrapped = f.ltocache().args([CLANG, "-c", "bad.c", "-o", "bad.o"]).output().unwrap();
    let direct = Command::new(CLANG).current_dir(&f.dir).args(["-c", "bad.c", "-o", "bad.o"]).output().unwrap();
    assert_eq!(wrapped.status.code(), direct.status.code());
    assert_eq!(wrapped.stderr, direct.stderr);
    assert_eq!(f.stat("not_backend"), 2);
    assert!(f.entry_files().is_empty());
}

#[test]
fn response_files_are_expanded() {
    let f = Fixture::new();
    f.cached_backend("str", &[]);
    f.write("args.rsp", &f.backend_args("str", "str.final_o", &[]).join(" "));
    ok(f.ltocache().args([CLANG, "@args.rsp"]));
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1), "same command via @file must hit");
}

#[test]
fn eight_concurrent_processes_on_one_key_leave_one_valid_entry() {
    let f = Fixture::new();
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut c = f.ltocache();
            c.arg(CLANG).args(f.backend_args("main", &format!("main.{i}.final_o"), &[]));
            c.spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let expected = f.fresh_object("main", &[]);
    for i in 0..8 {
        assert_eq!(f.read(&format!("main.{i}.final_o")), expected);
    }
    let entries = f.entry_files();
    assert_eq!(entries.len(), 1, "one key, one entry: {entries:?}");
    let entry = ltocache::store::Entry::decode(&std::fs::read(&entries[0]).unwrap()).expect("entry verifies");
    assert!(f.blob_files().is_empty(), "a small object lives in its entry");
    assert_eq!(entry.outputs[0].digest, *blake3::hash(&expected).as_bytes());
    assert_eq!(entry.outputs[0].stored, ltocache::store::Stored::Inline(expected));
    assert_eq!(f.stat("hits") + f.stat("misses"), 8);
    assert!(files_in_tmp(&f).is_empty(), "no temp file may be left behind");
}

fn files_in_tmp(f: &Fixture) -> Vec<std::path::PathBuf> {
    util::files_under(&f.cache.join("v1/tmp"))
}

#[test]
fn inline_output_that_does_not_match_its_digest_is_never_served() {
    use ltocache::store::{Entry, Stored};
    let f = Fixture::new();
    f.cached_backend("vec", &[]);
    let good = f.read("vec.final_o");
    let path = f.entry_files().pop().unwrap();
    let mut entry = Entry::decode(&std::fs::read(&path).unwrap()).unwrap();
    let Stored::Inline(bytes) = &mut entry.outputs[0].stored else { panic!("expected an inline object: {entry:?}") };
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    // A well-formed entry (valid checksum) whose object bytes are wrong, as a
    // bug or a tampering writer would leave it.
    std::fs::write(&path, entry.encode()).unwrap();
    let out = String::from_utf8(f.ltocache().arg("verify").output().unwrap().stdout).unwrap();
    assert!(out.contains("corrupt entry"), "verify must see it: {out}");

    f.cached_backend("vec", &[]);
    assert_eq!(f.read("vec.final_o"), good, "wrong inline bytes must never be served");
    assert_eq!(f.stat("corrupt_blob"), 1);
    assert_eq!(f.stat("misses"), 2);
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 1);
    assert_eq!(f.read("vec.final_o"), good);
}

#[test]
fn corrupted_blob_is_detected_and_rebuilt() {
    let f = Fixture::new();
    f.use_blob_files();
    f.cached_backend("vec", &[]);
    let good = f.read("vec.final_o");
    let blob = f.blob_files().pop().unwrap();
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();

    f.cached_backend("vec", &[]);
    assert_eq!(f.read("vec.final_o"), good, "a corrupt blob must never be served");
    assert_eq!(f.stat("corrupt_blob"), 1);
    assert_eq!(f.stat("misses"), 2);
    // It was stored again and now verifies.
    assert_eq!(std::fs::read(&blob).unwrap(), good);
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 1);
}

#[test]
fn corrupt_entry_is_removed_and_treated_as_miss() {
    let f = Fixture::new();
    f.cached_backend("vec", &[]);
    let entry = f.entry_files().pop().unwrap();
    let data = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &data[..data.len() / 2]).unwrap(); // as if a writer died mid-write without rename
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("corrupt_entry"), 1);
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &[]));
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 1);
}

#[test]
fn build_succeeds_when_the_cache_directory_is_unusable() {
    let f = Fixture::new();
    f.write("not-a-dir", "file");
    let mut c = f.ltocache();
    c.env("LTOCACHE_DIR", f.path("not-a-dir/cache")).arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "the cache's trouble must not show in the build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &[]));
}

#[test]
fn corrupt_stats_database_is_rebuilt() {
    let f = Fixture::new();
    f.cached_backend("vec", &[]);
    // Compiles only append to the journal; `stats` folds it into the database.
    assert_eq!(f.stat("misses"), 1);
    let db = f.state_dir().join("stats.sqlite3");
    assert!(db.exists());
    std::fs::write(&db, vec![0x42u8; 16384]).unwrap();
    let out = f.cached_backend("vec", &[]);
    assert!(out.status.success());
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &[]));
    assert_eq!(f.stat("hits"), 1, "the rebuilt database counts from zero");
}

#[test]
fn corrupt_shard_runs_clang_and_counts_it() {
    let f = Fixture::new();
    let mut shard = f.read("vec.o.thinlto.bc");
    shard.truncate(shard.len() / 2);
    std::fs::write(f.path("vec.o.thinlto.bc"), &shard).unwrap();
    let direct = Command::new(CLANG).current_dir(&f.dir).args(f.backend_args("vec", "x.o", &[])).output().unwrap();
    let out = f.cached_backend("vec", &[]);
    assert_eq!(out.status.code(), direct.status.code());
    assert_eq!(f.stat("bad_shard"), 1);
}

#[test]
fn missing_imported_module_is_uncacheable() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("util.o")).unwrap();
    let out = f.cached_backend("vec", &[]);
    let direct = Command::new(CLANG).current_dir(&f.dir).args(f.backend_args("vec", "x.o", &[])).output().unwrap();
    assert_eq!(out.status.code(), direct.status.code());
    assert_eq!(f.stat("unreadable_input"), 1);
    assert!(f.entry_files().is_empty());
}

#[test]
fn disable_readonly_and_recache_settings() {
    let f = Fixture::new();
    let mut c = f.ltocache();
    c.env("LTOCACHE_READONLY", "1").arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    ok(&mut c);
    assert!(f.entry_files().is_empty(), "read-only must not store");
    f.cached_backend("vec", &[]);
    let mut c = f.ltocache();
    c.env("LTOCACHE_RECACHE", "1").arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    ok(&mut c);
    assert_eq!(f.stat("hits"), 0, "recache must not serve");
    let mut c = f.ltocache();
    c.env("LTOCACHE_DISABLE", "1").arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    ok(&mut c);
    assert_eq!((f.stat("hits"), f.stat("misses")), (0, 3), "disabled compiles are not counted");
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 1);
}

#[test]
fn subcommands_answer_bad_input_with_one_line_and_nonzero_exit() {
    let f = Fixture::new();
    let out = f.ltocache().args(["stats", "--bogus"]).output().unwrap();
    assert!(!out.status.success());
    f.write("cachecfg", "");
    std::fs::create_dir_all(&f.cache).unwrap();
    std::fs::write(f.cache.join("ltocache.conf"), "no_such_setting = 1\n").unwrap();
    let out = f.ltocache().arg("config").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("no_such_setting"));
    std::fs::write(f.cache.join("ltocache.conf"), "readonly = true\n").unwrap();
    let out = String::from_utf8(ok(f.ltocache().arg("config")).stdout).unwrap();
    assert!(out.lines().any(|l| l.starts_with("readonly") && l.contains("true") && l.contains("ltocache.conf")));
}

#[test]
fn stats_zero_and_clear() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    let human = String::from_utf8(ok(f.ltocache().arg("stats")).stdout).unwrap();
    assert!(human.contains("Hit rate"), "{human}");
    assert!(f.stat("cache_entries") == MODULES.len() as i64);
    ok(f.ltocache().arg("zero-stats"));
    assert_eq!(f.stat("misses"), 0);
    ok(f.ltocache().arg("clear"));
    assert_eq!(f.stat("cache_entries"), 0);
    assert!(f.entry_files().is_empty() && f.blob_files().is_empty());
    let v = String::from_utf8(ok(f.ltocache().arg("--version")).stdout).unwrap();
    assert!(v.starts_with("ltocache "));
}

/// `stats` reports what the cache itself cost: its own CPU per hit and per
/// miss, the compiler's CPU on misses, and the one-time hashing of clang
/// apart (paid by the first compile on a host, not by the next ones).
#[test]
fn stats_report_the_cache_own_cpu_time_apart_from_hashing_the_compiler() {
    let f = Fixture::new();
    let secs = |json: &str, name: &str| -> f64 {
        let pat = format!("\"{name}\": ");
        let i = json.find(&pat).unwrap_or_else(|| panic!("{name} missing in {json}")) + pat.len();
        let rest = &json[i..];
        rest[..rest.find([',', '\n']).unwrap()].parse().unwrap()
    };
    f.cached_backend("vec", &[]);
    let first = f.stats_json();
    let identity = secs(&first, "own_cpu_seconds_hashing_compiler");
    assert!(identity > 0.0, "the first compile hashed clang: {first}");
    assert!(secs(&first, "compiler_cpu_seconds_on_misses") > 0.0, "{first}");
    let own_first = secs(&first, "own_cpu_seconds_on_misses");
    assert!(own_first > 0.0 && own_first < identity, "per-miss cost excludes hashing clang: {first}");

    f.cached_backend("vec", &["-O1"]);
    f.cached_backend("vec", &["-O1"]);
    let after = f.stats_json();
    assert_eq!(secs(&after, "own_cpu_seconds_hashing_compiler"), identity, "clang is hashed once: {after}");
    assert!(secs(&after, "own_cpu_seconds_on_misses") > own_first, "{after}");
    assert!(secs(&after, "own_cpu_seconds_on_hits") > 0.0, "{after}");
}

/// A build that runs ltocache with stderr closed (`2>&-`): the first file
/// ltocache opens must not become its "stderr", or the compiler's replayed
/// warning would be written into it (here: the digest memo table). std's
/// start-up opens /dev/null on a closed standard descriptor; this holds any
/// change of the entry point to that.
#[test]
fn closed_stderr_does_not_capture_a_cache_file() {
    use std::os::unix::process::CommandExt;
    let f = Fixture::new();
    let run = || {
        let mut c = f.ltocache();
        // An argument the backend does not use: clang warns about it on stderr.
        c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &["-L/nonexistent-dir"]));
        // SAFETY: close() in the child before exec touches no shared state.
        unsafe {
            c.pre_exec(|| {
                libc::close(2);
                Ok(())
            });
        }
        assert!(c.status().unwrap().success());
    };
    run();
    run();
    assert_eq!(f.stat("misses"), 1);
    assert_eq!(f.stat("hits"), 1);
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &["-L/nonexistent-dir"]));
    let state = f.state_dir();
    for file in [state.join("memo.v1")].into_iter().chain(f.entry_files()) {
        let data = std::fs::read(&file).unwrap();
        // The entry holds the warning once, as stderr to replay; nothing else may.
        let n = data.windows(8).filter(|w| w == b"warning:").count();
        assert!(n <= usize::from(file.starts_with(f.cache.join("v1"))), "the warning went into {}", file.display());
    }
    ok(f.ltocache().arg("verify"));
}

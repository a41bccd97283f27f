//! Relocatable keys (two checkouts share hits) and `ltocache explain`.

mod util;

use util::{ok, Fixture, CLANG, MODULES};

#[test]
fn second_checkout_with_relative_paths_hits() {
    let a = Fixture::new();
    let b = Fixture::sharing_cache_with(&a);
    assert_ne!(a.dir, b.dir);
    a.cached_backends(&[]);
    b.cached_backends(&[]);
    assert_eq!(b.stat("hits"), MODULES.len() as i64, "the second checkout must hit");
    for m in MODULES {
        assert_eq!(b.read(&format!("{m}.final_o")), b.fresh_object(m, &[]), "{m}: served object differs");
    }
}

#[test]
fn second_checkout_with_absolute_paths_hits() {
    let a = Fixture::new();
    let b = Fixture::sharing_cache_with(&a);
    for f in [&a, &b] {
        f.thin_link_absolute();
        for m in MODULES {
            let mut c = f.ltocache();
            c.arg(CLANG).args(f.backend_args_absolute(m, &[]));
            ok(&mut c);
        }
    }
    // The shards name modules by absolute path, so their bytes differ between checkouts...
    assert_ne!(a.read("main.o.thinlto.bc"), b.read("main.o.thinlto.bc"));
    // ...yet every backend of the second checkout hits, with the right bytes.
    assert_eq!(b.stat("hits"), MODULES.len() as i64);
    for m in MODULES {
        let fresh = {
            let out = b.path(&format!("{m}.fresh_o")).display().to_string();
            let mut args = b.backend_args_absolute(m, &[]);
            *args.last_mut().unwrap() = out.clone();
            ok(std::process::Command::new(CLANG).current_dir(&b.dir).args(&args));
            std::fs::read(out).unwrap()
        };
        assert_eq!(b.read(&format!("{m}.final_o")), fresh, "{m}: served object differs");
    }
}

#[test]
fn genuinely_different_input_in_second_checkout_misses() {
    let a = Fixture::new();
    a.cached_backends(&[]);
    let b = Fixture::sharing_cache_with(&a);
    b.edit("util.c", "16777619u", "16777617u");
    b.frontend("util");
    b.thin_link();
    let importers = b.importers_of("util");
    let misses0 = b.stat("misses");
    b.cached_backends(&[]);
    assert_eq!(b.stat("misses") - misses0, importers.len() as i64);
    for m in MODULES {
        assert_eq!(b.read(&format!("{m}.final_o")), b.fresh_object(m, &[]));
    }
}

#[test]
fn base_dir_makes_absolute_flag_paths_relocatable() {
    let a = Fixture::new();
    let b = Fixture::sharing_cache_with(&a);
    let run = |f: &Fixture, base: bool| {
        let inc = format!("-I{}/include", f.dir.display());
        let mut c = f.ltocache();
        if base {
            c.env("LTOCACHE_BASE_DIR", &f.dir);
        }
        // Quiet: a warning naming the absolute path would (rightly) keep the
        // entries apart (tests/keyhonest.rs, stderr_naming_a_relocated_path_...).
        c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[&inc, "-Wno-unused-command-line-argument"]));
        ok(&mut c);
    };
    run(&a, false);
    run(&b, false);
    assert_eq!(b.stat("hits"), 0, "without base_dir the absolute -I path differs");
    run(&a, true);
    run(&b, true);
    assert_eq!(b.stat("hits"), 1, "with base_dir both checkouts hash -Iinclude");
}

fn explain(f: &Fixture, output: &str) -> String {
    String::from_utf8(ok(f.ltocache().args(["explain", output])).stdout).unwrap()
}

#[test]
fn explain_names_each_cause_of_a_miss() {
    let f = Fixture::new();
    f.cached_backend("str", &[]);

    // An imported module's body.
    f.edit("hash.c", "2166136261u", "2166136263u");
    f.frontend("hash");
    f.thin_link();
    f.cached_backend("str", &[]);
    let e = explain(&f, "str.final_o");
    assert!(e.contains("imported module hash.o"), "{e}");
    assert!(!e.contains("an argument"), "{e}");

    // An argument.
    f.cached_backend("str", &["-O1"]);
    let e = explain(&f, "str.final_o");
    assert!(e.contains("an argument") && e.contains("-O1"), "{e}");
    assert!(!e.contains("imported module"), "{e}");

    // The input bitcode.
    f.edit("str.c", "while (s[n]) n++;", "while (s[n] && n < 1000) n++;");
    f.frontend("str");
    f.thin_link();
    f.cached_backend("str", &["-O1"]);
    let e = explain(&f, "str.final_o");
    assert!(e.contains("the input bitcode"), "{e}");

    // The shard alone: a thin link with another import threshold.
    let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.o")).collect();
    ok(std::process::Command::new(CLANG)
        .current_dir(&f.dir)
        .args([
            "-fuse-ld=lld",
            "-flto=thin",
            "-Wl,--thinlto-index-only",
            "-Wl,-mllvm,-import-instr-limit=0",
            "-o",
            "prog",
        ])
        .args(&objs));
    f.cached_backend("str", &["-O1"]);
    let e = explain(&f, "str.final_o");
    assert!(e.contains("index shard"), "{e}");
    assert!(!e.contains("input bitcode"), "{e}");
}

#[test]
fn explain_names_a_changed_compiler() {
    let f = Fixture::new();
    let real = std::fs::canonicalize("/usr/lib/llvm-19/bin/clang").unwrap();
    let root = f.dir.join("toolchain");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::os::unix::fs::symlink(real.parent().unwrap().parent().unwrap().join("lib"), root.join("lib")).unwrap();
    let copy = root.join("bin/clang-19");
    std::fs::copy(&real, &copy).unwrap();
    let run = || {
        let mut c = f.ltocache();
        c.arg(&copy).args(f.backend_args("vec", "vec.final_o", &[]));
        ok(&mut c);
    };
    run();
    let mut data = std::fs::read(&copy).unwrap();
    data.extend_from_slice(b"\0changed");
    std::fs::write(&copy, data).unwrap();
    run();
    let e = explain(&f, "vec.final_o");
    assert!(e.contains("the compiler"), "{e}");
    assert_eq!(f.stat("misses"), 2);
}

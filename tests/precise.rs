//! Precise invalidation (issue 16) with the real clang-19 and the helper
//! built from helper/ against Debian's libLLVM-19: the helper's post-import
//! module equals clang's own `-save-temps=obj` `X.3.import.bc`; mutation runs
//! compare every served object with a fresh backend; every refusal is counted
//! and leaves the first key alone.

mod util;

use std::process::Command;
use util::precise::{helper19 as helper, Project, NAMING, PROJECT};
use util::{ok, stat_of, Fixture, CLANG};

/// Builds, applies one edit, rebuilds; every object must equal a fresh
/// backend's. Returns the precise hits of the rebuild per module.
fn mutation(cflags: &[&str], bflags: &[&str], edit: (&str, &str, &str)) -> Vec<(String, bool)> {
    let p = Project::new(cflags, bflags);
    p.build();
    p.assert_fresh("cold build");
    // A rebuild with nothing changed hits on the first key only.
    p.thin_link();
    p.build();
    assert_eq!(p.stat("precise_hits"), 0);
    let before = p.stat("precise_hits");
    p.edit(edit.0, edit.1, edit.2);
    let mut served = Vec::new();
    for m in PROJECT {
        let hits = p.stat("precise_hits");
        p.backend(m);
        served.push((m.to_string(), p.stat("precise_hits") > hits));
    }
    p.assert_fresh(&format!("{edit:?} {cflags:?} {bflags:?}"));
    assert!(p.stat("precise_hits") >= before);
    served
}

fn served(v: &[(String, bool)], m: &str) -> bool {
    v.iter().any(|(n, s)| n == m && *s)
}

#[test]
fn helper_post_import_module_equals_clangs_save_temps_for_every_module() {
    let cases = util::precise::Cases::new();
    let compared: usize = cases.list().into_iter().map(|(b, extra)| b.compare_with_save_temps(&helper(), extra)).sum();
    assert_eq!(compared, util::precise::Cases::modules());
}

#[test]
fn unimported_body_edit_is_served_by_the_post_import_key() {
    let edit = ("lib", "return x * 7;", "return x * 9;");
    // Default naming: `table` imports only lib_lookup and lib_table (no
    // promoted local), so its post-import module is unchanged; `step`
    // references promoted statics named after lib.o's hash: recompiled.
    let v = mutation(&[], &[], edit);
    assert!(served(&v, "table"), "{v:?}");
    assert!(!served(&v, "step") && !served(&v, "lib"), "{v:?}");
    // Naming promoted locals after the source file: `step` is served too.
    let v = mutation(&[], NAMING, edit);
    assert!(served(&v, "table") && served(&v, "step"), "{v:?}");
    assert!(!served(&v, "lib"), "{v:?}");
}

#[test]
fn edits_that_reach_importers_are_never_served() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("imported body", "return lib_table[i & 3];", "return lib_table[i & 1];", "table"),
        (
            "inline asm",
            "int lib_lookup(int i) { return",
            "int lib_lookup(int i) { __asm__ volatile(\"nop\"); return",
            "table",
        ),
        ("attributes", "int lib_lookup(int i)", "__attribute__((cold)) int lib_lookup(int i)", "table"),
        ("read-only initialiser", "{10, 20, 30, 40}", "{10, 20, 31, 40}", "table"),
        ("linkage", "int lib_lookup(int i)", "__attribute__((weak)) int lib_lookup(int i)", "table"),
    ];
    // An edit whose effect the front end's inlining hides (lib_inner is
    // inlined into lib_step): it may be served, and must be fresh.
    for bflags in [&[][..], NAMING] {
        mutation(&[], bflags, ("lib", "static int lib_inner", "int lib_inner"));
    }
    for (what, from, to, importer) in cases {
        for bflags in [&[][..], NAMING] {
            let v = mutation(&[], bflags, ("lib", from, to));
            assert!(!served(&v, importer), "{what} {bflags:?}: {importer} was served: {v:?}");
        }
    }
}

#[test]
fn debug_info_edits_are_exact() {
    // Line numbers of imported functions are in the importers' debug info.
    for bflags in [&["-g"][..], &["-g", "-mllvm", "-use-source-filename-for-promoted-locals"]] {
        let v = mutation(&["-g"], bflags, ("lib", "const int lib_table", "\n\nconst int lib_table"));
        assert!(!served(&v, "table"), "{bflags:?}: {v:?}");
        // An edit below every imported function moves no imported line.
        mutation(&["-g"], bflags, ("lib", "return x * 7;", "return x * 9;"));
    }
}

#[test]
fn a_precise_hit_records_the_first_key_and_explain_says_why() {
    let p = Project::new(&[], &[]);
    p.build();
    p.edit("lib", "return x * 7;", "return x * 9;");
    p.build();
    assert_eq!(p.stat("precise_hits"), 1, "{}", p.stats_json());
    let hits = p.stat("hits");
    let explain = ok(p.ltocache().args(["explain", "table.native.o"]));
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("served because its post-import module was unchanged"), "{text}");
    // The same build again: every job hits on its first key now.
    p.thin_link();
    p.build();
    assert_eq!(p.stat("hits"), hits + PROJECT.len() as i64);
    assert_eq!(p.stat("precise_hits"), 1);
    p.assert_fresh("after the precise hit");
}

#[test]
fn cold_compiles_compute_nothing_before_compiling_and_record_in_the_background() {
    let p = Project::new(&[], &[]);
    let run = |m: &str, cold: &str| {
        let out = p
            .ltocache()
            .env("LTOCACHE_PRECISE_COLD", cold)
            .arg(CLANG)
            .args(p.backend_args(m, &format!("{m}.native.o")))
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    for m in PROJECT {
        run(m, "skip");
    }
    assert_eq!(p.stat("computed"), 0);
    assert!(!p.stats_json().contains("\"computed\""), "a cold build with skip computes no second key");
    // Background: after the compile, in a child; the mapping appears. (The
    // objects go too: a job whose output exists was compiled before, and
    // computes its second key before compiling.)
    std::fs::remove_dir_all(&p.cache).unwrap();
    for m in PROJECT {
        std::fs::remove_file(p.dir.join(format!("{m}.native.o"))).unwrap();
    }
    for m in PROJECT {
        run(m, "background");
    }
    let maps = || util::files_under(&p.cache.join("v1/precise")).len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // lib imports nothing and needs none; the other three import from lib.
    while maps() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(maps() >= 3, "background mappings: {}", maps());
    // lib's shard lists lib alone: nothing is forked for it. The children
    // count what they computed and cost in records of their own.
    assert_eq!(p.stat("skipped_no_imports"), 1, "{}", p.stats_json());
    assert_eq!(p.stat("background"), 3, "{}", p.stats_json());
    while p.stat("background_computed") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(p.stat("background_computed"), 3, "{}", p.stats_json());
    assert!(p.stat("helper_cpu_ms") + p.stat("cpu_ms") > 0, "{}", p.stats_json());
    // They asked a server of their own (it runs at idle priority); the
    // foreground jobs of the rebuild below ask another one.
    let servers =
        |suffix: &str| util::files_under(&p.cache).iter().filter(|f| f.to_string_lossy().ends_with(suffix)).count();
    assert_eq!((servers("-idle.sock.lock"), servers(".sock.lock")), (1, 1), "{:?}", util::files_under(&p.cache));
    p.edit("lib", "return x * 7;", "return x * 9;");
    for m in PROJECT {
        run(m, "background");
    }
    assert_eq!(servers(".sock.lock") - servers("-idle.sock.lock"), 1, "the rebuild's jobs asked a normal server");
    assert_eq!(p.stat("precise_hits"), 1);
    p.assert_fresh("background");
}

#[test]
fn unvetted_inputs_refuse_and_keep_the_first_key() {
    let cases: &[(&[&str], &str)] =
        // -fembed-bitcode embeds the command line with the role-marked paths:
        // since issue 11 the whole command is refused before the first key.
        &[(&["-mllvm", "-unroll-threshold=100"], "refused.mllvm_option"), (&["-fembed-bitcode"], "unsupported_option")];
    for (flags, code) in cases {
        let p = Project::new(&[], flags);
        p.build();
        p.edit("lib", "return x * 7;", "return x * 9;");
        p.build();
        let json = p.stats_json();
        assert_eq!(stat_of(&json, "precise_hits"), 0, "{flags:?}: {json}");
        assert!(stat_of(&json, code) > 0, "{flags:?} must count {code}: {json}");
        p.assert_fresh(&format!("{flags:?}"));
    }
}

#[test]
fn precise_mode_off_mismatched_or_broken_helpers_change_nothing() {
    let p = Project::new(&[], &[]);
    let fake = p.dir.join("fake-helper");
    let run_all = |env: &[(&str, &str)]| {
        for m in PROJECT {
            let mut c = p.ltocache();
            for (k, v) in env {
                c.env(k, v);
            }
            let out = c.arg(CLANG).args(p.backend_args(m, &format!("{m}.native.o"))).output().unwrap();
            assert!(out.status.success());
        }
    };
    run_all(&[]);
    // Off: no second key at all.
    let computed = p.stat("computed");
    p.edit("lib", "return x * 7;", "return x * 9;");
    run_all(&[("LTOCACHE_PRECISE", "0")]);
    assert_eq!(p.stat("precise_hits"), 0);
    assert_eq!(p.stat("computed"), computed, "LTOCACHE_PRECISE=0 computes nothing");
    // A helper mapping another libLLVM.
    std::fs::write(&fake, "#!/bin/sh\necho 'ltocache-precise 1 LLVM 99.0.0 /nonexistent/libLLVM.so.99'\n").unwrap();
    ok(Command::new("chmod").arg("755").arg(&fake));
    p.edit("lib", "return x * 9;", "return x * 11;");
    run_all(&[("LTOCACHE_PRECISE_HELPER", fake.to_str().unwrap())]);
    assert!(p.stat("refused.llvm_mismatch") > 0, "{}", p.stats_json());
    // A helper that answers nonsense (the right version line, then garbage).
    let real = String::from_utf8(ok(Command::new(helper()).arg("--version")).stdout).unwrap();
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{}'; else echo garbage; fi\n", real.trim()),
    )
    .unwrap();
    p.edit("lib", "return x * 11;", "return x * 13;");
    run_all(&[("LTOCACHE_PRECISE_HELPER", fake.to_str().unwrap()), ("LTOCACHE_PRECISE_SERVER", "0")]);
    assert!(p.stat("refused.helper_error") > 0, "{}", p.stats_json());
    assert_eq!(p.stat("precise_hits"), 0);
    p.assert_fresh("fake helpers");
}

#[test]
fn empty_and_unvetted_indexes_refuse() {
    use ltocache::backend::precise::shard_without_hashes;
    assert_eq!(shard_without_hashes(&[]).unwrap_err().code, "empty_index");
    let f = Fixture::new();
    let shard = f.read("main.o.thinlto.bc");
    let a = shard_without_hashes(&shard).unwrap();
    // The shard of another thin link after an edit that changes only a
    // module hash (a body nobody imports) has the same digest.
    f.edit("util.c", "return v * UTIL_SCALE;", "return v * UTIL_SCALE + 1;");
    f.frontend("util");
    f.thin_link();
    let shard2 = f.read("main.o.thinlto.bc");
    assert_ne!(shard, shard2, "the module hash changed");
    assert_eq!(shard_without_hashes(&shard2).unwrap(), a);
}

#[test]
fn the_cc1_line_does_not_depend_on_what_its_memo_leaves_out() {
    let p = Project::new(&[], &[]);
    let cc1 = |extra: &[&str]| -> String {
        let mut args = p.backend_args("table", "table.native.o");
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = ok(Command::new(CLANG).current_dir(&p.dir).args(&args).arg("-###"));
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with(" \"")).collect::<Vec<_>>().join("\n")
    };
    let base = cc1(&[]);
    let with = cc1(&[
        "-DKBUILD_MODNAME=\"table\"",
        "-D",
        "X",
        "-Iinclude",
        "-I",
        "arch/x86/include",
        "-UY",
        "-Wp,-MMD,./.table.o.d",
    ]);
    assert_eq!(base, with, "a flag the cc1 memo leaves out changed the cc1 line");
}

/// The second key named in `explain`'s "served because" line.
fn served_second_key(p: &Project, m: &str) -> [u8; 32] {
    let explain = ok(p.ltocache().args(["explain", &format!("{m}.native.o")]));
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    let hex = text.split("second key ").nth(1).and_then(|t| t.get(..64)).unwrap_or_else(|| panic!("{text}"));
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn verify_compiles_second_key_hits_too_and_catches_a_wrong_mapping() {
    let p = Project::new(&[], &[]);
    let run = |m: &str, verify: &str| {
        let out = p
            .ltocache()
            .env("LTOCACHE_VERIFY", verify)
            .arg(CLANG)
            .args(p.backend_args(m, &format!("{m}.native.o")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    p.build();
    p.edit("lib", "return x * 7;", "return x * 9;");
    for m in PROJECT {
        run(m, "1");
    }
    // table's post-import module is unchanged: its second key maps to an
    // entry, which verification compiles anyway and finds equal.
    assert_eq!(p.stat("verified"), 1, "{}", p.stats_json());
    assert_eq!(p.stat("verified_hits"), 1);
    assert_eq!(p.stat("stale_detected"), 0);
    assert_eq!(p.stat("precise_hits"), 0, "a verified hit is served from the fresh compile");
    p.assert_fresh("verified second-key hit");

    // A wrong mapping (as a bug in the second key would make): table's
    // second key now names step's entry. Verification must catch it.
    p.edit("lib", "return x * 9;", "return x * 11;");
    let others = |verify: &str| {
        for m in PROJECT.iter().filter(|m| **m != "table") {
            run(m, verify);
        }
    };
    run("table", "0");
    assert_eq!(p.stat("precise_hits"), 1, "{}", p.stats_json());
    others("0");
    let second = served_second_key(&p, "table");
    let store = ltocache::store::LocalStore::new(&p.cache);
    let right = store.get_precise_map(&second).unwrap();
    let wrong = util::precise::another_mapping(&p.cache, &store, &right);
    store.put_precise_map(&second, &wrong).unwrap();
    p.edit("lib", "return x * 11;", "return x * 13;");
    run("table", "1");
    assert_eq!(p.stat("stale_detected"), 1, "{}", p.stats_json());
    others("0");
    p.assert_fresh("stale second-key hit caught by verification");
    // The fresh result was stored under the first key and the mapping
    // repaired: served again without verification, it is right.
    p.edit("lib", "return x * 13;", "return x * 15;");
    let hits = p.stat("precise_hits");
    run("table", "0");
    assert_eq!(p.stat("precise_hits"), hits + 1, "{}", p.stats_json());
    others("0");
    p.assert_fresh("after the repaired mapping");
}

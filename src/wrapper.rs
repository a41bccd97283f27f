//! One wrapped compile, start to finish:
//!
//! 1. [`crate::args`]: is this a cacheable backend? If not, count why and `exec` the compiler.
//! 2. [`crate::compiler`] + [`crate::key`]: the key over everything the backend reads.
//! 3. [`crate::store`]: look the key up; on a hit, serve the object and replay stderr.
//! 4. On a miss, run the compiler ([`crate::exec`]); store its outputs only if it
//!    succeeded and no input changed while it ran.
//! 5. [`crate::journal`]: one appended record with what was counted. No
//!    database is opened on the way: memos are in [`crate::memo`].
//!
//! The rule throughout: the cache may make a compile faster, never different
//! and never failed. Any internal problem is logged, counted, and answered by
//! running the real compiler.

use crate::args::{self, BackendInvocation, NotCacheable};
use crate::config::Config;
use crate::digest::FileHasher;
use crate::exec;
use crate::key::{self, KeyError};
use crate::log::Logger;
use crate::memo::MemoTable;
use crate::stats::{Batch, Db};
use crate::store::{Entry, LocalStore, Lookup, Served, Store};
use crate::util::hex;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

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
                let _ = crate::stats::count_passthrough(&config.stats_db_path());
            }
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
    let getenv = |v: &str| std::env::var(v).ok();
    let analysed = crate::driver::refuse_env(&getenv)
        .and_then(|()| args::expand_response_files_tracked(&sargs))
        .and_then(|(expanded, read)| {
            let mut inv = args::analyze(&compiler, &expanded)?;
            inv.read_files = read;
            Ok(inv)
        });
    match analysed {
        Err(reason) => uncacheable(&config, &log, &compiler, &args, &reason),
        Ok(inv) => cached_compile(&config, &log, inv, &args),
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

/// Appends one invocation's record to this host's journal (a failure is
/// logged only) and folds the journal into the database when it has grown
/// long, so that it stays bounded even if nobody runs `stats`.
fn record(config: &Config, log: &Logger, batch: &mut Batch) {
    batch.at_ns = crate::util::now_ns();
    // What the cache itself cost, in CPU time (the compiler child excluded):
    // the figure the cold-overhead target is about, free of the wall-clock
    // noise of a shared machine.
    // The one-time hashing of the compiler is counted apart (and not here).
    let identity = batch.counters.get("cpu_ns.compiler_identity").copied().unwrap_or(0);
    let own = crate::util::cpu_ns(libc::RUSAGE_SELF) - identity;
    if batch.counters.contains_key("hits") {
        batch.add("cpu_ns.own_hits", own);
    } else if batch.counters.contains_key("misses") {
        batch.add("cpu_ns.own_misses", own);
    }
    let dir = config.state_dir();
    match crate::journal::append(&dir, batch) {
        Ok(len) if len > crate::journal::FOLD_AT => {
            let folded =
                Db::open(&config.stats_db_path()).and_then(|mut db| crate::journal::fold(&dir, &mut db, false));
            if let Err(e) = folded {
                log.log(&format!("folding the journal failed: {e:#}"));
            }
        }
        Ok(_) => {}
        Err(e) => log.log(&format!("stats journal not written: {e:#}")),
    }
}

/// Records what was counted so far and runs the real compiler in our place.
fn fall_back(config: &Config, log: &Logger, batch: &mut Batch, inv: &BackendInvocation, args: &[OsString]) -> ! {
    record(config, log, batch);
    exec::exec_compiler(&inv.compiler, args)
}

fn cached_compile(config: &Config, log: &Logger, inv: BackendInvocation, args: &[OsString]) -> ! {
    config.apply_umask();
    let state_dir = config.state_dir();
    let memo = MemoTable::open(&state_dir).map_err(|e| log.log(&format!("memo table unavailable: {e:#}"))).ok();
    let mut batch = Batch::default();

    // Resolve the compiler once; if we cannot, exec reports the error as a shell would.
    let program = match crate::compiler::resolve(&inv.compiler) {
        Ok(p) => p,
        Err(e) => {
            log.log(&format!("{e:#}"));
            batch.add("errors.compiler_not_found", 1);
            fall_back(config, log, &mut batch, &inv, args);
        }
    };

    // The output must be a regular file or absent: a device (`-o /dev/null`)
    // would be replaced on a hit, and its "contents" are not the object.
    let output_before = match std::fs::symlink_metadata(&inv.output) {
        Ok(m) if !m.is_file() => {
            let reason =
                NotCacheable::UnsupportedOption(format!("output {} is not a regular file", inv.output.display()));
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            fall_back(config, log, &mut batch, &inv, args);
        }
        Ok(m) => Some(crate::util::FileStamp::of(&m)),
        Err(_) => None,
    };

    // Phase 1: the key.
    let mut hasher = FileHasher::new(memo.as_ref());
    let cpu_before = crate::util::cpu_ns(libc::RUSAGE_SELF);
    let getenv = |v: &str| std::env::var(v).ok();
    let mut compile_args = args.to_vec();
    let mut inv = inv;
    let key = crate::compiler::identity(&program, Some(&state_dir), &config.compiler_check.value)
        .map_err(|e| match e.downcast_ref::<crate::compiler::ScriptCompiler>() {
            Some(s) => KeyError::NotCacheable(NotCacheable::UnsupportedOption(s.to_string())),
            None => KeyError::Internal(e),
        })
        .and_then(|(id, computed)| {
            if computed {
                // Hashing clang and its libraries once per host: reported apart
                // from the per-compile cost in `stats`.
                batch.add("cpu_ns.compiler_identity", crate::util::cpu_ns(libc::RUSAGE_SELF) - cpu_before);
            }
            // What the driver reads besides argv (driver.rs).
            let mut asked = crate::driver::Asked::default();
            let configs = crate::driver::loaded_configs(
                &program,
                &inv.compiler,
                &id,
                &inv.expanded,
                Some(&state_dir),
                &getenv,
                &mut asked,
            );
            batch.add("driver_probes", asked.probes);
            inv = crate::driver::with_configs(inv.clone(), &configs.map_err(KeyError::NotCacheable)?)
                .map_err(KeyError::NotCacheable)?;
            crate::driver::prepare(&mut inv, &mut compile_args, &getenv)?;
            let before_relocation = inv.hashed_args.clone();
            if let (Some(base), Ok(cwd)) = (&config.base_dir.value, std::env::current_dir()) {
                args::relocate_args(&mut inv.hashed_args, base, &cwd);
            }
            key::compute(&inv, &id, &mut hasher, &getenv).map(|mut k| {
                // An argument base_dir rewrote names this checkout's path.
                let relocated = before_relocation.iter().zip(&inv.hashed_args).filter(|(a, b)| a != b);
                k.unkeyed_paths.extend(relocated.map(|(a, _)| a.clone()));
                k
            })
        });
    let inv = &inv;
    let args = &compile_args[..];
    let mut key = match key {
        Ok(k) => k,
        Err(KeyError::NotCacheable(reason)) => {
            log.log(&format!("uncacheable ({reason}): {}", inv.output.display()));
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            fall_back(config, log, &mut batch, inv, args);
        }
        Err(KeyError::Internal(e)) => {
            log.log(&format!("error computing key, running the compiler: {e:#}"));
            batch.add("errors.key", 1);
            fall_back(config, log, &mut batch, inv, args);
        }
    };
    batch.add("bytes_hashed", hasher.bytes_hashed as i64);
    let store = config.store();
    let fields_text = || key.fields.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect::<String>();
    let output_name = absolute(&inv.output);

    // Phase 2: lookup.
    if !config.recache.value {
        // Stderr that names unkeyed paths is stored under a second key that
        // covers them (key::path_keyed); it is looked up after the first.
        let looked = match store.get_entry_and_last_use(&key.digest) {
            Ok((Lookup::Miss, first)) => match store.get_entry_and_last_use(&key::path_keyed(&key)) {
                Ok((Lookup::Hit(e), used)) => {
                    key.digest = key::path_keyed(&key);
                    Ok((Lookup::Hit(e), used))
                }
                _ => Ok((Lookup::Miss, first)),
            },
            other => other,
        };
        match looked {
            Ok((Lookup::Hit(entry), _)) if crate::verify::selected(config.verify.value, &key.digest) => {
                verified_hit(config, log, &store, &entry, inv, &program, args, &key, batch, output_name);
            }
            Ok((Lookup::Hit(entry), last_use)) => match serve(&store, config, &entry, &inv.output) {
                Ok(Some(bytes)) => {
                    let _ = std::io::stderr().write_all(&entry.stderr);
                    log.log(&format!("hit {} {}", hex(&key.digest[..8]), inv.output.display()));
                    batch.add("hits", 1);
                    batch.add("bytes_served", bytes as i64);
                    batch.add("ns_saved", entry.duration_ns as i64);
                    if !config.readonly.value {
                        // Fails harmlessly on a read-only store.
                        store.touch_entry(&key.digest, last_use);
                    }
                    batch.last_compile = Some((output_name, key.digest, "hit".into(), fields_text()));
                    record(config, log, &mut batch);
                    exec::exit_now(0);
                }
                Ok(None) => {
                    log.log(&format!("entry {} has a missing or corrupt output: miss", hex(&key.digest[..8])));
                    batch.add("errors.corrupt_blob", 1);
                }
                Err(e) => {
                    log.log(&format!("serving {} failed, compiling instead: {e:#}", inv.output.display()));
                    batch.add("errors.serve", 1);
                }
            },
            Ok((Lookup::Miss, _)) => {}
            Ok((Lookup::Corrupt(why), _)) => {
                log.log(&format!("corrupt entry {} removed: {why}", hex(&key.digest[..8])));
                batch.add("errors.corrupt_entry", 1);
            }
            Err(e) => {
                log.log(&format!("lookup failed: {e:#}"));
                batch.add("errors.lookup", 1);
            }
        }
    }

    // Phase 3: compile.
    let finished = match exec::run_captured(&program, &inv.compiler, args) {
        Ok(f) => f,
        Err(e) => {
            log.log(&format!("could not run the compiler: {e:#}"));
            batch.add("errors.spawn", 1);
            fall_back(config, log, &mut batch, inv, args);
        }
    };
    let _ = std::io::stdout().write_all(&finished.stdout);
    let _ = std::io::stderr().write_all(&finished.stderr);
    if !finished.status.success() {
        batch.add("compile_failed", 1);
        batch.last_compile = Some((output_name, key.digest, "failed".into(), fields_text()));
        record(config, log, &mut batch);
        exec::exit_like(finished.status);
    }
    batch.add("misses", 1);
    batch.add("ns_compiled", finished.duration.as_nanos() as i64);
    batch.add("cpu_ns.compiler_misses", finished.cpu_ns);
    batch.last_compile = Some((output_name, key.digest, "miss".into(), fields_text()));

    // Phase 4: store. A store we cannot write to (read-only mount, foreign
    // permissions) still served hits above; here it is read-only.
    if config.readonly.value || !store.writable() {
        batch.add("readonly_misses", 1);
    } else if let Some(changed) = hasher.unchanged_since_hashing() {
        log.log(&format!("{} changed during the compile: not stored", changed.display()));
        batch.add("uncacheable.input_changed_during_compile", 1);
    } else if !finished.stdout.is_empty() {
        // A hit replays stderr only; a compile that printed to stdout is not stored.
        batch.add("uncacheable.wrote_stdout", 1);
    } else if !written_by_compile(&inv.output, output_before) {
        // The object at -o is not one this compile wrote (e.g. a cc1 option
        // suppressed the object): storing it would serve a stale file.
        log.log(&format!("{} was not written by the compile: not stored", inv.output.display()));
        batch.add("uncacheable.output_not_written", 1);
    } else {
        // Another command with this key would replay this command's paths:
        // such stderr is stored under the key that also covers them.
        if key::stderr_names_a_path(&finished.stderr, &key.unkeyed_paths) {
            batch.add("stores_path_keyed", 1);
            key.digest = key::path_keyed(&key);
        }
        match store_outputs(&store, inv, &key.digest, &finished) {
            Ok((entry_size, blobs)) => {
                batch.add("stores", 1);
                let added: u64 = entry_size + blobs.iter().map(|b| b.1).sum::<u64>();
                maybe_cleanup(config, log, &store, &mut batch, added, 1 + blobs.len() as u64);
                batch.stored_entry = Some((key.digest, entry_size, finished.duration.as_nanos() as u64));
                batch.stored_blobs = blobs;
            }
            Err(e) => {
                log.log(&format!("storing {} failed: {e:#}", inv.output.display()));
                batch.add("errors.store", 1);
            }
        }
    }
    record(config, log, &mut batch);
    exec::exit_like(finished.status)
}

/// A hit chosen for verification (`LTOCACHE_VERIFY`): compiled anyway and
/// compared; the fresh result is what the build gets either way, and on a
/// mismatch it also replaces the stale entry.
#[allow(clippy::too_many_arguments)]
fn verified_hit(
    config: &Config,
    log: &Logger,
    store: &LocalStore,
    entry: &Entry,
    inv: &BackendInvocation,
    program: &Path,
    args: &[OsString],
    key: &key::Key,
    mut batch: Batch,
    output_name: String,
) -> ! {
    let fields: String = key.fields.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
    match crate::verify::verify_hit(store, entry, inv, program, args, &fields, &config.state_dir()) {
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
                    hex(&key.digest[..8]),
                    inv.output.display()
                ));
                batch.add("stale_detected", 1);
                if v.finished.status.success() && v.finished.stdout.is_empty() && !config.readonly.value {
                    if let Err(e) = store_outputs(store, inv, &key.digest, &v.finished) {
                        log.log(&format!("replacing the stale entry failed: {e:#}"));
                    }
                }
            }
            batch.last_compile = Some((output_name, key.digest, "verified".into(), fields));
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

/// After a store: add it to this host's line of the shared size ledger and,
/// if the ledger's total says the store is over its limits (or it was never
/// scanned), run a cleanup. One cleaner at a time; a compile that finds the
/// lock taken carries on.
fn maybe_cleanup(config: &Config, log: &Logger, store: &LocalStore, batch: &mut Batch, bytes: u64, files: u64) {
    use crate::store::cleanup::ledger;
    let state_dir = config.state_dir();
    let host = crate::util::hostname();
    let limits = config.limits();
    let scan = ledger::scan(store);
    let over = match scan {
        None => true,
        Some(scan) => {
            // This host's additions since that scan, this store included
            // (atomic across this host's parallel compiles).
            let mine = ledger::add_mine(&state_dir, store, host, scan.generation, bytes, files)
                .unwrap_or(ledger::Record { generation: scan.generation, bytes, files });
            let (ob, of) = ledger::others(store, scan.generation, host);
            let (total_bytes, total_files) = (scan.bytes + mine.bytes + ob, scan.files + mine.files + of);
            (limits.max_size > 0 && total_bytes > limits.max_size)
                || (limits.max_files > 0 && total_files > limits.max_files)
        }
    };
    if !over {
        return;
    }
    match crate::store::cleanup::cleanup(store, &limits) {
        Ok(r) if r.skipped => {}
        Ok(r) => {
            log.log(&format!(
                "cleanup: {} -> {} bytes, removed {} entries, {} blobs, {} temp files",
                r.bytes_before, r.bytes_after, r.removed_entries, r.removed_blobs, r.removed_temp
            ));
            batch.add("cleanups", 1);
            batch.add("evicted_entries", r.removed_entries as i64);
            let _ = ledger::add_mine(&state_dir, store, host, r.generation, 0, 0);
        }
        Err(e) => {
            log.log(&format!("cleanup failed: {e:#}"));
            batch.add("errors.cleanup", 1);
        }
    }
}

/// True when `output` is a regular file that the compile created or replaced.
fn written_by_compile(output: &Path, before: Option<crate::util::FileStamp>) -> bool {
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.is_file() => before != Some(crate::util::FileStamp::of(&m)),
        _ => false,
    }
}

/// Serves every output of a hit. `Ok(None)` means an output was unavailable.
fn serve(store: &LocalStore, config: &Config, entry: &Entry, output: &Path) -> anyhow::Result<Option<u64>> {
    let mut total = 0;
    for o in &entry.outputs {
        anyhow::ensure!(o.kind == 0, "entry has an output kind this version cannot restore");
        match store.serve_output(o, output, config.serve_mode.value)? {
            Served::Written(n) => total += n,
            Served::Unavailable(_) => return Ok(None),
        }
    }
    Ok(Some(total))
}

type StoredBlobs = Vec<([u8; 32], u64)>;

fn store_outputs(
    store: &LocalStore,
    inv: &BackendInvocation,
    key: &[u8; 32],
    finished: &exec::Finished,
) -> anyhow::Result<(u64, StoredBlobs)> {
    use anyhow::Context;
    let data = crate::util::read_file(&inv.output).with_context(|| format!("reading {}", inv.output.display()))?;
    let (output, written) = store.put_output(0, &data)?;
    let blobs = if written > 0 { vec![(output.digest, written)] } else { Vec::new() };
    let entry = Entry {
        key: *key,
        duration_ns: finished.duration.as_nanos() as u64,
        created_unix: (crate::util::now_ns() / 1_000_000_000) as u64,
        outputs: vec![output],
        stderr: finished.stderr.clone(),
    };
    let entry_size = store.put_entry(&entry)?;
    Ok((entry_size, blobs))
}

fn absolute(p: &Path) -> String {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    abs.to_string_lossy().into_owned()
}

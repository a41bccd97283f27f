//! One backend job, step by step, for whoever drives it: the wrapper (one job
//! per process, falling back by `exec`) and any driver that runs many jobs in
//! one process. Each step counts what it did in the job's [`Batch`]; a step
//! that returns [`Fallback`] has already counted and logged why, and the
//! caller must run the job's command plainly — the compile never fails
//! because of the cache.
//!
//! The order of the steps is the order of docs/ARCHITECTURE.md:
//! [`prepare`] (compiler, output check, key) → [`serve_hit`] → the caller
//! runs the compiler → [`finish_compile`] (count, store, cleanup) →
//! [`record`] (journal). After both tiers miss, [`precise`] tries the second
//! key, a step of the same job (its own folder: the helper, the shim, cc1
//! lines, the key over the post-import module).

pub mod precise;

use crate::config::Config;
use crate::exec::Finished;
use crate::key::args::{BackendInvocation, NotCacheable};
use crate::key::digest::FileHasher;
use crate::key::memo::MemoTable;
use crate::key::{self, Key, KeyError};
use crate::state::log::Logger;
use crate::state::stats::{Batch, Db};
use crate::store::remote::Tier;
use crate::store::{Entry, LocalStore, Lookup, Store};
use crate::util::{hex, FileStamp};
use std::path::{Path, PathBuf};

/// What every job of one process shares: settings, log, this host's state
/// directory and memo table, the local store.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub log: &'a Logger,
    pub state_dir: PathBuf,
    pub memo: Option<MemoTable>,
    pub store: LocalStore,
    /// The remotes, built at the first local miss (see [`remote_tier`]).
    pub remote: std::sync::OnceLock<Tier>,
    /// Compiler identities already known to this process: a driver keying
    /// hundreds of jobs for one compiler reads its memo once, not per job.
    /// A mutex: the distributor keys and serves jobs on several threads.
    identities: std::sync::Mutex<Vec<(PathBuf, [u8; 32])>>,
    /// The driver's configuration files, asked once per question and process.
    driver_answers: crate::key::driver::Answers,
}

impl<'a> Ctx<'a> {
    pub fn new(config: &'a Config, log: &'a Logger) -> Ctx<'a> {
        config.apply_umask();
        for w in &config.warnings {
            log.log(w);
        }
        let state_dir = config.state_dir();
        let memo = MemoTable::open(&state_dir).map_err(|e| log.log(&format!("memo table unavailable: {e:#}"))).ok();
        Ctx {
            config,
            log,
            state_dir,
            memo,
            store: config.store(),
            remote: Default::default(),
            identities: Default::default(),
            driver_answers: Default::default(),
        }
    }
}

/// Run the job's command plainly: the reason is already counted in its batch.
#[derive(Debug)]
pub struct Fallback;

/// A job whose key is known.
pub struct Keyed<'c> {
    /// The resolved compiler binary.
    pub program: PathBuf,
    pub key: Key,
    /// The files the key covered, with their stamps, for the after-compile check.
    pub hasher: FileHasher<'c>,
    /// The output's stamp before the compile (None: absent), to tell whether
    /// the compile wrote it.
    output_before: Option<FileStamp>,
    /// The output's absolute path, as `explain` records it.
    pub output_name: String,
    /// The second key, when precise mode computed one (crate::backend::precise).
    pub precise: std::cell::RefCell<Option<crate::backend::precise::Second>>,
    /// Whether the second key was already looked up (verification looks first).
    pub precise_looked: std::cell::Cell<bool>,
    /// Whether a cold compile runs with precise mode's shim.
    pub precise_shim: std::cell::RefCell<crate::backend::precise::ShimState<'c>>,
    /// The invocation as the driver sees it: configuration files' flags in
    /// front of argv (driver.rs), `base_dir` applied.
    pub inv: BackendInvocation,
    /// The key this output's last `explain` record is a hit under, when the
    /// caller knows it (crate::distributor): a hit under it again records
    /// nothing new.
    pub recorded_hit: Option<[u8; 32]>,
}

impl Keyed<'_> {
    /// Whether the output existed before this job: it was compiled before.
    pub fn output_existed(&self) -> bool {
        self.output_before.is_some()
    }

    /// The key's fields as text, one `name\tvalue` per line (for `explain`).
    pub fn fields_text(&self) -> String {
        self.key.fields.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
    }
}

/// Resolves the compiler, checks the output path and computes the key.
pub fn prepare<'c>(ctx: &'c Ctx, inv: &BackendInvocation, batch: &mut Batch) -> Result<Keyed<'c>, Fallback> {
    prepare_with(ctx, inv, batch, FileHasher::new(ctx.memo.as_ref()))
}

/// [`prepare`] with the caller's hasher (one that has already read the shard,
/// or shares digests across a process's jobs: crate::distributor).
pub fn prepare_with<'c>(
    ctx: &'c Ctx,
    inv: &BackendInvocation,
    batch: &mut Batch,
    mut hasher: FileHasher<'c>,
) -> Result<Keyed<'c>, Fallback> {
    let log = ctx.log;
    let program = match crate::key::compiler::resolve(&inv.compiler) {
        Ok(p) => p,
        Err(e) => {
            log.log(&format!("{e:#}"));
            batch.add("errors.compiler_not_found", 1);
            return Err(Fallback);
        }
    };

    // The output must be a regular file or absent: a device (`-o /dev/null`)
    // would be replaced on a hit, and its "contents" are not the object.
    let output_before = match std::fs::symlink_metadata(&inv.output) {
        Ok(m) if !m.is_file() => {
            let reason =
                NotCacheable::UnsupportedOption(format!("output {} is not a regular file", inv.output.display()));
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            return Err(Fallback);
        }
        Ok(m) => Some(FileStamp::of(&m)),
        Err(_) => None,
    };

    let getenv = |v: &str| crate::util::env(v);
    let mut effective = None;
    // One identity per compiler and process (a distributor runs many jobs).
    let known =
        ctx.identities.lock().ok().and_then(|ids| ids.iter().find(|(p, _)| *p == program).map(|(_, id)| (*id, false)));
    // This thread's time (a distributor prepares jobs on several threads),
    // only when the identity may have to be computed.
    let cpu_before = if known.is_none() { crate::util::cpu_ns(libc::RUSAGE_THREAD) } else { 0 };
    let identity = match known {
        Some(k) => Ok(k),
        None => crate::key::compiler::identity(&program, Some(&ctx.state_dir), &ctx.config.compiler_check.value)
            .inspect(|(id, _)| {
                if let Ok(mut ids) = ctx.identities.lock() {
                    ids.push((program.clone(), *id));
                }
            }),
    };
    let key = identity
        .map_err(|e| match e.downcast_ref::<crate::key::compiler::ScriptCompiler>() {
            Some(s) => KeyError::NotCacheable(NotCacheable::UnsupportedOption(s.to_string())),
            None => KeyError::Internal(e),
        })
        .and_then(|(id, computed)| {
            if computed {
                // Hashing clang and its libraries once per host: reported apart
                // from the per-compile cost in `stats`.
                batch.add("cpu_ns.compiler_identity", crate::util::cpu_ns(libc::RUSAGE_THREAD) - cpu_before);
            }
            // What the driver reads besides argv (driver.rs): its
            // configuration files' flags go through the same analysis.
            let mut asked = crate::key::driver::Asked::default();
            let configs = crate::key::driver::loaded_configs(
                &program,
                &inv.compiler,
                &id,
                &inv.expanded,
                Some(&ctx.state_dir),
                &getenv,
                &mut asked,
                Some(&ctx.driver_answers),
            );
            batch.add("driver_probes", asked.probes);
            let mut eff = crate::key::driver::effective(inv, &configs.map_err(KeyError::NotCacheable)?)
                .map_err(KeyError::NotCacheable)?;
            if let (Some(base), Some(cwd)) = (&ctx.config.base_dir.value, crate::util::cwd()) {
                crate::key::args::relocate_args(&mut eff.hashed_args, base, cwd);
            }
            let k = key::compute(&eff, &id, &mut hasher, &getenv).map(|mut k| {
                // Every argument base_dir rewrote names this checkout by
                // containing base_dir, and clang may print it otherwise than
                // it was given (`-I/b/inc` as `'-I /b/inc'`): stderr naming
                // base_dir at all names a path the key does not cover.
                if let Some(base) = ctx.config.base_dir.value.as_deref().and_then(crate::key::args::base_prefix) {
                    k.unkeyed_paths.push(base);
                }
                k
            });
            effective = Some(eff);
            k
        });
    let key = match key {
        Ok(k) => k,
        Err(KeyError::NotCacheable(reason)) => {
            log.log(&format!("uncacheable ({reason}): {}", inv.output.display()));
            batch.add(&format!("uncacheable.{}", reason.code()), 1);
            return Err(Fallback);
        }
        Err(KeyError::Internal(e)) => {
            log.log(&format!("error computing key, running the compiler: {e:#}"));
            batch.add("errors.key", 1);
            return Err(Fallback);
        }
    };
    batch.add("bytes_hashed", hasher.bytes_hashed as i64);
    let inv = effective.expect("the key was computed from the effective invocation");
    let output_name = absolute(&inv.output);
    Ok(Keyed {
        program,
        key,
        hasher,
        output_before,
        output_name,
        precise: Default::default(),
        precise_looked: Default::default(),
        precise_shim: Default::default(),
        inv,
        recorded_hit: None,
    })
}

/// Looks the key up in the local store and, on a hit, puts every output in
/// place. Returns the stderr to replay when the job was served; `None` means
/// compile (what went wrong, if anything, is counted).
pub fn serve_hit(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) -> Option<Vec<u8>> {
    let (config, log, store) = (ctx.config, ctx.log, &ctx.store);
    if config.recache.value {
        return None;
    }
    if config.remote_only.value {
        return serve_remote(ctx, inv, job, batch);
    }
    let (found, looked) = local_lookup(store, &job.key);
    let digest = &found;
    match looked {
        Ok((Lookup::Hit(entry), last_use)) => match serve(store, config, &entry, &inv.output) {
            Ok(Some(bytes)) => {
                log.log(&format!("hit {} {}", hex(&digest[..8]), inv.output.display()));
                batch.add("hits", 1);
                batch.add("bytes_served", bytes as i64);
                batch.add("ns_saved", entry.duration_ns as i64);
                if !config.readonly.value {
                    // Fails harmlessly on a read-only store.
                    store.touch_entry(digest, last_use);
                }
                if config.reshare.value {
                    if let Some(tier) = remote_tier(ctx) {
                        tier.put(&entry, &inv.output, log, batch);
                    }
                }
                if job.recorded_hit != Some(*digest) {
                    batch.last_compile = Some((job.output_name.clone(), *digest, "hit".into(), job.fields_text()));
                }
                return Some(entry.stderr);
            }
            Ok(None) => {
                log.log(&format!("entry {} has a missing or corrupt output: miss", hex(&digest[..8])));
                batch.add("errors.corrupt_blob", 1);
            }
            Err(e) => {
                log.log(&format!("serving {} failed, compiling instead: {e:#}", inv.output.display()));
                batch.add("errors.serve", 1);
            }
        },
        Ok((Lookup::Miss, _)) => {}
        Ok((Lookup::Corrupt(why), _)) => {
            log.log(&format!("corrupt entry {} removed: {why}", hex(&digest[..8])));
            batch.add("errors.corrupt_entry", 1);
        }
        Err(e) => {
            log.log(&format!("lookup failed: {e:#}"));
            batch.add("errors.lookup", 1);
        }
    }
    // Then the remote tier; then, local only, the second key (crate::backend::precise).
    serve_remote(ctx, inv, job, batch).or_else(|| crate::backend::precise::try_serve(ctx, inv, job, batch))
}

/// The local lookup under the key, then (on a miss) under its path-keyed
/// twin, which holds entries whose stderr names unkeyed paths
/// ([`key::path_keyed`]). Returns the digest the answer is for.
pub fn local_lookup(
    store: &LocalStore,
    key: &Key,
) -> ([u8; 32], anyhow::Result<(Lookup, Option<std::time::SystemTime>)>) {
    match store.get_entry_and_last_use(&key.digest) {
        Ok((Lookup::Miss, first)) => {
            let twin = key::path_keyed(key);
            match store.get_entry_and_last_use(&twin) {
                Ok((Lookup::Hit(e), used)) => (twin, Ok((Lookup::Hit(e), used))),
                _ => (key.digest, Ok((Lookup::Miss, first))),
            }
        }
        other => (key.digest, other),
    }
}

/// Replaces the entry under `digest` with a fresh result (a verified hit
/// that was stale).
pub fn replace_entry(ctx: &Ctx, inv: &BackendInvocation, digest: &[u8; 32], finished: &Finished) -> anyhow::Result<()> {
    store_outputs(&ctx.store, inv, digest, finished).map(|_| ())
}

/// The remote tier, built at its first use: no URL is parsed before a local
/// miss. `None` without remotes.
fn remote_tier<'c>(ctx: &'c Ctx) -> Option<&'c Tier> {
    (!ctx.config.remote_storage.value.is_empty()).then(|| ctx.remote.get_or_init(|| ctx.config.remote_tier()))
}

/// After a local miss: each remote in turn (store/remote/mod.rs).
fn serve_remote(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) -> Option<Vec<u8>> {
    let hit = remote_tier(ctx)?.serve_hit(&ctx.store, &job.key.digest, &inv.output, ctx.log, batch)?;
    if let Some(bytes) = hit.stored_locally {
        maybe_cleanup(ctx, batch, bytes, 1);
    }
    batch.last_compile = Some((job.output_name.clone(), job.key.digest, "remote hit".into(), job.fields_text()));
    Some(hit.stderr)
}

/// After the compiler ran with its output captured (the caller has printed
/// it): counts the outcome and stores the outputs when the compile succeeded,
/// printed nothing to stdout, wrote its object, and no input changed while it
/// ran.
pub fn finish_compile(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, finished: &Finished, batch: &mut Batch) {
    let (config, log, store) = (ctx.config, ctx.log, &ctx.store);
    // Stderr naming a path the key does not cover is stored under the key
    // that also covers them: another command would replay this one's paths.
    let path_keyed = key::stderr_names_a_path(&finished.stderr, &job.key.unkeyed_paths);
    let digest = if path_keyed { key::path_keyed(&job.key) } else { job.key.digest };
    if !finished.status.success() {
        batch.add("compile_failed", 1);
        batch.last_compile = Some((job.output_name.clone(), digest, "failed".into(), job.fields_text()));
        return;
    }
    batch.add("misses", 1);
    batch.add("ns_compiled", finished.duration.as_nanos() as i64);
    batch.add("cpu_ns.compiler_misses", finished.cpu_ns);
    batch.last_compile = Some((job.output_name.clone(), digest, "miss".into(), job.fields_text()));

    // A store we cannot write to (read-only mount, foreign permissions) still
    // served hits; here it is read-only.
    if config.readonly.value || (!config.remote_only.value && !store.writable()) {
        batch.add("readonly_misses", 1);
    } else if let Some(changed) = job.hasher.unchanged_since_hashing() {
        log.log(&format!("{} changed during the compile: not stored", changed.display()));
        batch.add("uncacheable.input_changed_during_compile", 1);
    } else if !finished.stdout.is_empty() {
        // A hit replays stderr only; a compile that printed to stdout is not stored.
        batch.add("uncacheable.wrote_stdout", 1);
    } else if !written_by_compile(&inv.output, job.output_before) {
        // The object at -o is not one this compile wrote (e.g. a cc1 option
        // suppressed the object): storing it would serve a stale file.
        log.log(&format!("{} was not written by the compile: not stored", inv.output.display()));
        batch.add("uncacheable.output_not_written", 1);
    } else if config.remote_only.value {
        if let Some(tier) = remote_tier(ctx) {
            let entry = tier.entry_for(&digest, finished.duration.as_nanos() as u64, &finished.stderr, &inv.output);
            match entry {
                Ok(entry) => tier.put(&entry, &inv.output, log, batch),
                Err(e) => {
                    log.log(&format!("packing {} for the remotes failed: {e:#}", inv.output.display()));
                    batch.add("errors.remote_pack", 1);
                }
            }
        }
    } else {
        match store_outputs(store, inv, &digest, finished) {
            Ok((entry_size, blobs, entry)) => {
                batch.add("stores", 1);
                if path_keyed {
                    batch.add("stores_path_keyed", 1);
                }
                let added: u64 = entry_size + blobs.iter().map(|b| b.1).sum::<u64>();
                maybe_cleanup(ctx, batch, added, 1 + blobs.len() as u64);
                batch.stored_entry = Some((digest, entry_size, finished.duration.as_nanos() as u64));
                batch.stored_blobs = blobs;
                // After the local store: the object is in place for the build.
                if let Some(tier) = remote_tier(ctx) {
                    tier.put(&entry, &inv.output, log, batch);
                }
                crate::backend::precise::after_store(ctx, inv, job, &finished.stderr, batch);
            }
            Err(e) => {
                log.log(&format!("storing {} failed: {e:#}", inv.output.display()));
                batch.add("errors.store", 1);
            }
        }
    }
}

/// Appends one job's record to this host's journal (a failure is logged
/// only) and folds the journal into the database when it has grown long, so
/// that it stays bounded even if nobody runs `stats`. `own_cpu_ns` is what
/// the cache itself cost for this job in CPU time (the compiler excluded):
/// the figure the cold-overhead target is about, free of the wall-clock noise
/// of a shared machine.
pub fn record(config: &Config, log: &Logger, batch: &mut Batch, own_cpu_ns: i64) {
    record_many(config, log, &mut [(batch, own_cpu_ns)]);
}

/// [`record`] for many jobs of one process, in one journal write. Jobs that
/// only add to counters (a hit with nothing new for `explain`) go in as one
/// record: the fold then runs one UPSERT per counter, not one per counter
/// and job. Returns whether the journal took the records.
pub fn record_many(config: &Config, log: &Logger, jobs: &mut [(&mut Batch, i64)]) -> bool {
    for (batch, own_cpu_ns) in jobs.iter_mut() {
        close_batch(config, batch, *own_cpu_ns);
    }
    let mut sums = Batch::default();
    let mut batches: Vec<&Batch> = Vec::new();
    for (b, _) in jobs.iter() {
        if b.stored_entry.is_none() && b.stored_blobs.is_empty() && b.last_compile.is_none() {
            sums.at_ns = sums.at_ns.max(b.at_ns);
            for (name, n) in &b.counters {
                sums.add(name, *n);
            }
        } else {
            batches.push(b);
        }
    }
    if !sums.counters.is_empty() {
        batches.push(&sums);
    }
    let dir = config.state_dir();
    match crate::state::journal::append_many(&dir, &batches) {
        Ok(len) if len > crate::state::journal::FOLD_AT => {
            let folded =
                Db::open(&config.stats_db_path()).and_then(|mut db| crate::state::journal::fold(&dir, &mut db, false));
            if let Err(e) = folded {
                log.log(&format!("folding the journal failed: {e:#}"));
            }
            true
        }
        Ok(_) => true,
        Err(e) => {
            log.log(&format!("stats journal not written: {e:#}"));
            false
        }
    }
}

/// The counters every job's record ends with.
fn close_batch(config: &Config, batch: &mut Batch, own_cpu_ns: i64) {
    batch.at_ns = crate::util::now_ns();
    // The one-time hashing of the compiler is counted apart (and not here).
    let identity = batch.counters.get("cpu_ns.compiler_identity").copied().unwrap_or(0);
    let own = own_cpu_ns - identity;
    if batch.counters.contains_key("hits") {
        batch.add("cpu_ns.own_hits", own);
    } else if batch.counters.contains_key("misses") {
        batch.add("cpu_ns.own_misses", own);
    }
    if let Some(counter) = config.state().counter {
        batch.add(counter, 1);
    }
}

/// After a store: add it to this host's line of the shared size ledger and,
/// if the ledger's total says the store is over its limits (or it was never
/// scanned), run a cleanup. One cleaner at a time; a compile that finds the
/// lock taken carries on.
fn maybe_cleanup(ctx: &Ctx, batch: &mut Batch, bytes: u64, files: u64) {
    use crate::store::cleanup::ledger;
    let (config, log, store, state_dir) = (ctx.config, ctx.log, &ctx.store, &ctx.state_dir);
    let host = crate::util::hostname();
    let limits = config.limits();
    let scan = ledger::scan(store);
    let over = match scan {
        None => true,
        Some(scan) => {
            // This host's additions since that scan, this store included
            // (atomic across this host's parallel compiles).
            let mine = ledger::add_mine(state_dir, store, host, scan.generation, bytes, files)
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
            let _ = ledger::add_mine(state_dir, store, host, r.generation, 0, 0);
        }
        Err(e) => {
            log.log(&format!("cleanup failed: {e:#}"));
            batch.add("errors.cleanup", 1);
        }
    }
}

/// Adds what another step stored (an entry precise mode recorded) to the
/// size ledger, cleaning up when over the limits.
pub(crate) fn account_store(ctx: &Ctx, batch: &mut Batch, bytes: u64, files: u64) {
    maybe_cleanup(ctx, batch, bytes, files);
}

/// True when `output` is a regular file that the compile created or replaced.
fn written_by_compile(output: &Path, before: Option<FileStamp>) -> bool {
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.is_file() => before != Some(FileStamp::of(&m)),
        _ => false,
    }
}

/// Serves every output of a hit. `Ok(None)` means an output was unavailable.
fn serve(store: &LocalStore, config: &Config, entry: &Entry, output: &Path) -> anyhow::Result<Option<u64>> {
    crate::store::serve_entry(store, config.serve_mode.value, entry, output)
}

type StoredBlobs = Vec<([u8; 32], u64)>;

fn store_outputs(
    store: &LocalStore,
    inv: &BackendInvocation,
    key: &[u8; 32],
    finished: &Finished,
) -> anyhow::Result<(u64, StoredBlobs, Entry)> {
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
    Ok((entry_size, blobs, entry))
}

fn absolute(p: &Path) -> String {
    let abs = if p.is_absolute() { p.to_path_buf() } else { crate::util::cwd().unwrap_or(Path::new("")).join(p) };
    abs.to_string_lossy().into_owned()
}

//! Precise invalidation: a second key over the backend's post-import module,
//! tried only when the first key misses (docs/precise-invalidation.md).
//!
//! The first key hashes every imported module whole, so an edit reruns every
//! importer. The second key replaces the imported modules (and the module
//! hashes the shard carries for them) by the module the backend holds right
//! after importing — computed by the helper `ltocache-precise`, which runs
//! LLVM's own `lto::thinBackend` up to its post-import hook with the
//! configuration read from clang's own cc1 command line (`clang -###`). Every
//! other field of the first key stays: the input's own bitcode, the rest of
//! the shard (summaries, flags, module ids), arguments, compiler, files named
//! by flags, `.incbin` data.
//!
//! A hit on the second key serves the object of the entry it maps to and
//! stores that entry under the first key too. Anything not vetted refuses
//! (first key only, counted as `precise.refused.*`): cc1 options not on
//! [`CC1_VETTED`], `-mllvm` options not on [`MLLVM_VETTED`], index features
//! (type ids, CFI, MemProf, parameter accesses), skipped or empty indexes,
//! a compiler without a helper built against the libLLVM it maps (one
//! helper per LLVM, [`helper_for`] picks by the libLLVM file), any helper
//! error.
//!
//! Cost: the second key is computed only on a first-key miss of an output
//! that already exists (it was compiled before), or — for a cold compile,
//! `LTOCACHE_PRECISE_COLD=background` — after the compile in a detached
//! child at idle priority, so the cold build's jobs do not wait for it.

mod cc1;
mod helper;
mod key;
mod shim;
pub use cc1::*;
pub use helper::*;
pub use key::*;
pub use shim::{
    answer as shim_answer, compile as compile_with_shim, must_rerun as shim_must_rerun,
    question_fd as shim_question_fd, release as release_shim, served as served_by_shim, shim_environment,
    spawn as shim_spawn, ShimState, Spawn as ShimSpawn,
};
use shim::{shim_for, Shim};

use crate::backend::{Ctx, Keyed};
use crate::key::args::BackendInvocation;
use crate::key::bitcode::{self, Record, Visit, Visitor};
use crate::state::stats::Batch;
use crate::store::{Lookup, Store};
use crate::util::{hex, unhex};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The helper's file name, looked for beside the `ltocache` executable.
pub const HELPER_NAME: &str = "ltocache-precise";

/// Bump when the second key's composition changes.
const PRECISE_KEY_VERSION: &str = "ltocache-precise-key-v1";

/// `-mllvm` options tested to be safe (tests/precise.rs): those the helper
/// applies before the post-import hook the way clang does, and those that
/// only act later (their value is in the first key's arguments anyway). The
/// helper holds the same list.
pub const MLLVM_VETTED: &[&str] =
    &["-use-source-filename-for-promoted-locals", "-import-instr-limit", "-inline-threshold"];

/// cc1 options (name up to `=`) reviewed against clang's IR path
/// (`CodeGenAction::ExecuteAction` → `EmitBackendOutput` →
/// `runThinLTOBackend`): none of them changes the module before the
/// post-import hook except those the request carries (`-triple`,
/// `-mrelocation-model`, `-target-cpu`, `-target-feature`, `-mcmodel=`,
/// `-O`, `-mllvm`). The rest configure the optimiser, code generation or
/// diagnostics, which act after the hook on what the key already holds (the
/// driver's arguments, the compiler). Anything else refuses: for example
/// `-fembed-bitcode=` and `-mlink-bitcode-file` change the module before
/// the backend runs, `-save-temps`, `-opt-record-file` write files.
pub const CC1_VETTED: &[&str] = &[
    "-cc1",
    "-triple",
    "-emit-obj",
    "-fthinlto-index",
    "-disable-free",
    "-clear-ast-before-backend",
    "-disable-llvm-verifier",
    "-discard-value-names",
    "-main-file-name",
    "-mrelocation-model",
    "-pic-level",
    "-pic-is-pie",
    "-mframe-pointer",
    "-fmath-errno",
    "-ffp-contract",
    "-fno-rounding-math",
    "-mconstructor-aliases",
    "-funwind-tables",
    "-target-cpu",
    "-tune-cpu",
    "-target-feature",
    "-mcmodel",
    "-debug-info-kind",
    "-dwarf-version",
    "-debugger-tuning",
    "-fdebug-compilation-dir",
    "-fcoverage-compilation-dir",
    "-ffunction-sections",
    "-fdata-sections",
    "-resource-dir",
    "-ferror-limit",
    "-fgnuc-version",
    "-fskip-odr-check-in-gmf",
    "-vectorize-loops",
    "-vectorize-slp",
    "-mllvm",
    "-faddrsig",
    "-D",
    "-o",
    "-x",
    "-O0",
    "-O1",
    "-O2",
    "-O3",
    "-Os",
    "-Oz",
    "-Wno-unused-command-line-argument",
    "-fno-signed-char",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
    "-mstack-alignment",
    "-fcf-protection",
    "-mfunction-return",
    "-mindirect-branch-cs-prefix",
    "-fno-jump-tables",
    "-fno-delete-null-pointer-checks",
    "-fwrapv",
    "-fno-strict-overflow",
    "-relaxed-aliasing",
    "-fno-builtin",
    "-ffreestanding",
    "-mskip-rax-setup",
    "-mregparm",
    "-fno-PIE",
    "-fno-common",
    "-fno-dwarf-directory-asm",
    "-mdisable-tail-calls",
    "-fpatchable-function-entry",
    "-fpatchable-function-entry-offset",
    "-mfentry",
    "-mrecord-mcount",
    "-mnop-mcount",
    "-mstack-protector-guard",
    "-mstack-protector-guard-reg",
    "-mstack-protector-guard-symbol",
    "-stack-protector",
    "-stack-protector-buffer-size",
    "-fzero-call-used-regs",
    "-fsplit-stack",
    "-mtune",
    "-fdebug-prefix-map",
    "-ffile-prefix-map",
    "-fmacro-prefix-map",
    "-fcoverage-prefix-map",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fstrict-flex-arrays",
    "-fno-threadsafe-statics",
    "-mrelax-all",
    "-fno-verbose-asm",
    "-fexperimental-assignment-tracking",
    "-funique-section-names",
    "-fno-unique-section-names",
    "-std",
    "-w",
    "-Werror",
    "-Wall",
    "-Wextra",
    "-fcolor-diagnostics",
    "-fdiagnostics-color",
    "-fmessage-length",
    // Seen on the kernel's backends (tinyconfig, x86-64): code generation,
    // target and front-end options with no effect before the hook.
    "-disable-red-zone",
    "-falign-loops",
    "-fno-signed-wchar",
    "-fwchar-type",
    "-fsplit-lto-unit",
    "-ftrivial-auto-var-init",
    "-fvisibility",
    "-fwarn-stack-size",
    "-nobuiltininc",
    "-nostdsysteminc",
    // What the driver adds for -fPIC (zstd's and libgit2's backends): a
    // language option read by the front end's code generation
    // (CodeGenModule's dso_local decisions), which does not run for IR
    // input; the module before the hook is clang's (tests/precise.rs,
    // benches/realworld/precise.py compare it with -save-temps).
    "-fhalf-no-semantic-interposition",
    // clang 23 passes this on every x86-64 backend (19 defined a macro
    // instead): whether the assembler writes `.cfi_*` directives
    // (TargetMachine's MC options), code generation only.
    "-fdwarf2-cfi-asm",
    // What lld's DTLTO passes clang 23's backends at -O2 and above: turns on
    // the optimiser's LoopInterchange pass (PipelineTuningOptions), which
    // runs after the hook on the module it hashed.
    "-floop-interchange",
];

/// Prefixes of vetted cc1 option families: warnings (diagnostics only) and
/// `-fno-builtin-<name>` (the optimiser's library info, after the hook).
const CC1_VETTED_PREFIXES: &[&str] = &["-W", "-fno-builtin-"];

/// Separate-value cc1 options among the vetted ones: their next token is a
/// value, not an input.
const CC1_SEPARATE: &[&str] = &[
    "-triple",
    "-main-file-name",
    "-mrelocation-model",
    "-pic-level",
    "-target-cpu",
    "-tune-cpu",
    "-target-feature",
    "-resource-dir",
    "-ferror-limit",
    "-mllvm",
    "-D",
    "-o",
    "-x",
    "-stack-protector",
    "-stack-protector-buffer-size",
    "-mregparm",
    "-mstack-protector-guard-reg",
    "-mstack-protector-guard",
    "-fmessage-length",
];

/// Whether `LTOCACHE_PRECISE=0` turned precise mode off.
fn switched_off() -> bool {
    crate::util::env_os("LTOCACHE_PRECISE").is_some_and(|v| v == "0")
}

/// The helpers that may serve a compiler whose libLLVM has major version
/// `major`, in the order they are tried: `LTOCACHE_PRECISE_HELPER` (a
/// `:`-separated list), else beside the executable `ltocache-precise-<major>`
/// (what scripts/build-release.sh builds, one per LLVM found) and then
/// `ltocache-precise`. Each is still checked against the compiler's libLLVM
/// ([`helper_for`]); the names only save starting the ones that cannot match.
pub fn helper_candidates(major: Option<u32>) -> Vec<PathBuf> {
    if switched_off() {
        return Vec::new();
    }
    if let Some(list) = crate::util::env_os("LTOCACHE_PRECISE_HELPER") {
        return std::env::split_paths(&list).filter(|p| p.is_file()).collect();
    }
    let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = major.map(|m| format!("{HELPER_NAME}-{m}")).into_iter().collect();
    names.push(HELPER_NAME.to_string());
    names.into_iter().map(|n| dir.join(n)).filter(|p| p.is_file()).collect()
}

/// The major version in a libLLVM file name: `libLLVM.so.23.1` (LLVM's own
/// builds, the PyPI wheels, Debian's realpath), `libLLVM-19.so`.
pub fn llvm_major(lib: &Path) -> Option<u32> {
    let name = lib.file_name()?.to_str()?;
    let rest = name.strip_prefix("libLLVM.so.").or_else(|| name.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// When the second key of a cold compile (its output did not exist) is
/// computed (`LTOCACHE_PRECISE_COLD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cold {
    /// Not at all: the first edit after a cold build gains nothing.
    Skip,
    /// Before the compile, like a rebuild's.
    Sync,
    /// After the compile, in a detached child at idle priority.
    Background,
    /// During the compile, by the shim (shim.rs); nothing without one.
    Shim,
    /// The default: the shim where there is a usable one, else background.
    Auto,
}

fn cold_policy() -> Cold {
    match crate::util::env("LTOCACHE_PRECISE_COLD").as_deref() {
        Some("skip") | Some("0") => Cold::Skip,
        Some("sync") | Some("1") => Cold::Sync,
        Some("background") => Cold::Background,
        Some("shim") => Cold::Shim,
        _ => Cold::Auto,
    }
}

/// `LTOCACHE_PRECISE_REBUILD=shim`: a rebuild's job (its output exists)
/// does not ask the helper before compiling; its compile runs with the
/// shim, which asks ltocache with the post-import digest in the backend and
/// stops it when the second key hits (shim.rs). The default (`helper`) asks
/// the helper first. Jobs chosen for verification always ask the helper.
fn rebuild_by_shim() -> bool {
    crate::util::env("LTOCACHE_PRECISE_REBUILD").as_deref() == Some("shim")
}

/// Why the second key was not computed (a stats counter each).
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

fn refuse<T>(code: &'static str, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { code, detail: detail.into() })
}

/// The second key of one job.
#[derive(Clone, Debug)]
pub struct Second {
    pub digest: [u8; 32],
    /// CPU time the helper spent on the request.
    pub helper_cpu_ns: i64,
    /// The helper that answered (logged: which LLVM's helper served a job).
    pub helper: PathBuf,
}

// ---------------------------------------------------------------------------
// Mapping second key → first key of the entry that holds the object.

/// Read by descriptor beneath the cache directory (a symlink, FIFO or giant
/// planted at a map's name in a shared cache is no map): see store/local.rs.
fn read_map(ctx: &Ctx, second: &[u8; 32]) -> Option<[u8; 32]> {
    ctx.store.get_precise_map(second)
}

fn write_map(ctx: &Ctx, second: &[u8; 32], first: &[u8; 32]) -> Result<()> {
    ctx.store.put_precise_map(second, first)
}

// ---------------------------------------------------------------------------
// The hooks backend.rs calls.

fn count_refusal(ctx: &Ctx, inv: &BackendInvocation, batch: &mut Batch, r: &Refusal) {
    ctx.log.log(&format!("precise: refused ({}: {}) {}", r.code, r.detail, inv.output.display()));
    batch.add(&format!("precise.refused.{}", r.code), 1);
}

/// Computes the second key (when this output was compiled before, or the
/// cold policy says so) and finds the entry it maps to, without serving it.
/// The second key stays in the job either way.
fn lookup(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
    for_verify: bool,
) -> Option<(Second, [u8; 32], crate::store::Entry)> {
    job.precise_looked.set(true);
    if !job.output_existed() && cold_policy() != Cold::Sync {
        // A cold compile: nothing is computed before it (see after_store).
        return None;
    }
    if !has_candidates(ctx, job) {
        return None;
    }
    if imports_nothing(job) {
        batch.add("precise.skipped_no_imports", 1);
        return None;
    }
    if job.output_existed() && rebuild_by_shim() && !for_verify && shim::will_ask(ctx, inv, job) {
        // The compile asks with the shim's digest instead (shim.rs).
        return None;
    }
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    let second = helper_for(ctx, job, &mut hasher).and_then(|h| compute(ctx, inv, job, &h, &mut hasher));
    batch.add(
        "cpu_ns.precise",
        crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - cpu0,
    );
    let second = match second {
        Ok(s) => s,
        Err(r) => {
            count_refusal(ctx, inv, batch, &r);
            return None;
        }
    };
    batch.add("precise.computed", 1);
    batch.add("cpu_ns.precise_helper", second.helper_cpu_ns);
    // The helper read the files after the first key hashed them: had one
    // changed meanwhile, the two keys would describe different inputs.
    if job.hasher.unchanged_since_hashing().is_some() || hasher.unchanged_since_hashing().is_some() {
        count_refusal(ctx, inv, batch, &Refusal { code: "input_changed", detail: "input changed".into() });
        return None;
    }
    *job.precise.borrow_mut() = Some(second.clone());
    let target = read_map(ctx, &second.digest)?;
    match ctx.store.get_entry_and_last_use(&target) {
        Ok((Lookup::Hit(e), _)) => Some((second, target, e)),
        _ => {
            batch.add("precise.dangling", 1);
            None
        }
    }
}

/// `LTOCACHE_VERIFY` for the second key: the entry a second-key hit would
/// serve, so that the caller compiles anyway and compares (verify.rs), as it
/// does for first-key hits. A stale result is then stored under the first
/// key and [`remap_after_stale`] points the mapping at it.
pub fn verify_candidate(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
) -> Option<crate::store::Entry> {
    let (_, _, entry) = lookup(ctx, inv, job, batch, true)?;
    batch.add("precise.verified", 1);
    Some(entry)
}

/// After a verified second-key hit was stale and the fresh result stored
/// under the first key: the mapping now names that entry.
pub fn remap_after_stale(ctx: &Ctx, job: &Keyed) {
    if let Some(second) = job.precise.borrow().as_ref() {
        ctx.log.log("precise: a verified second-key hit was stale; mapping replaced");
        let _ = write_map(ctx, &second.digest, &job.key.digest);
    }
}

/// After the first key missed: computes the second key (when this output
/// was compiled before, or the cold policy says so) and serves its entry.
/// Returns the stderr to replay on a hit; on a miss, keeps the second key in
/// the job for [`after_store`].
pub fn try_serve(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) -> Option<Vec<u8>> {
    if job.precise_looked.get() {
        // Already looked up (by verify_candidate) and nothing was served.
        return None;
    }
    let (second, target, entry) = lookup(ctx, inv, job, batch, false)?;
    serve_second(ctx, inv, job, batch, &second, &target, &entry).then_some(entry.stderr)
}

/// Serves the entry a second key maps to at the job's output and counts
/// the hit; false (counted) when it could not be served.
fn serve_second(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
    second: &Second,
    target: &[u8; 32],
    entry: &crate::store::Entry,
) -> bool {
    match crate::store::serve_entry(&ctx.store, ctx.config.serve_mode.value, entry, &inv.output) {
        Ok(Some(bytes)) => {
            ctx.log.log(&format!(
                "precise hit {} {} (helper {})",
                hex(&second.digest[..8]),
                inv.output.display(),
                second.helper.display()
            ));
            batch.add("hits", 1);
            batch.add("precise_hits", 1);
            batch.add("bytes_served", bytes as i64);
            batch.add("ns_saved", entry.duration_ns as i64);
            let fields = format!(
                "{}served-because\tsecond key {}, object of entry {}\n",
                job.fields_text(),
                hex(&second.digest),
                hex(target)
            );
            batch.last_compile = Some((job.output_name.clone(), job.key.digest, "precise-hit".into(), fields));
            // Record the first key too: the next identical build hits at once.
            if !ctx.config.readonly.value && ctx.store.writable() {
                let mine = crate::store::Entry { key: job.key.digest, ..entry.clone() };
                match ctx.store.put_entry(&mine) {
                    Ok(size) => {
                        batch.add("precise.recorded_first_key", 1);
                        crate::backend::account_store(ctx, batch, size, 1);
                    }
                    Err(e) => ctx.log.log(&format!("precise: recording the first key failed: {e:#}")),
                }
            }
            true
        }
        _ => {
            batch.add("errors.serve", 1);
            false
        }
    }
}

/// After a cold job's first key missed (wrapper and distributor): whether
/// its compile runs with the shim, which then records the second key as a
/// by-product (shim.rs).
/// `ask`: the caller answers the shim's question while the compile runs
/// ([`compile_with_shim`]: the wrapper), so a second-key hit stops it.
pub fn arm_shim<'c>(ctx: &'c Ctx, inv: &BackendInvocation, job: &Keyed<'c>, batch: &mut Batch, ask: bool) {
    shim::arm(ctx, inv, job, batch, ask)
}

/// After the outputs were stored under the first key (`stderr`: the
/// compile's): records the second key → first key mapping. A cold compile
/// that ran with the shim has its second key from the shim's report; one
/// that did not (no usable shim, or `LTOCACHE_PRECISE_COLD=background`)
/// computes it now, in a detached child at idle priority (the job does not
/// wait for it).
pub fn after_store(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, stderr: &[u8], batch: &mut Batch) {
    // A compile that printed anything records no second key, whichever way
    // it was computed: its diagnostics may depend on what the post-import
    // module does not hold (module paths), and a precise hit would replay
    // them for another command. Its entry may also live under the path-keyed
    // key (backend::finish_compile), which the mapping would not name.
    if !stderr.is_empty()
        && (job.precise.borrow().is_some() || matches!(*job.precise_shim.borrow(), ShimState::Armed(_)))
    {
        batch.add("precise.refused.stderr", 1);
        *job.precise.borrow_mut() = None;
        release_shim(job);
        return;
    }
    if let Some(second) = job.precise.borrow().as_ref() {
        match write_map(ctx, &second.digest, &job.key.digest) {
            Ok(()) => batch.add("precise.stored", 1),
            Err(e) => ctx.log.log(&format!("precise: mapping not stored: {e:#}")),
        }
        return;
    }
    if shim::record(ctx, inv, job, batch) {
        return;
    }
    let fallback = match cold_policy() {
        Cold::Background => true,
        Cold::Auto => matches!(*job.precise_shim.borrow(), ShimState::NotTried | ShimState::Unavailable),
        _ => false,
    };
    if job.output_existed() || !fallback || !has_candidates(ctx, job) {
        return;
    }
    if imports_nothing(job) {
        batch.add("precise.skipped_no_imports", 1);
        return;
    }
    // fork() copies only the calling thread: in a process running several
    // jobs at once (the DTLTO distributor) a lock held by another thread
    // would stay locked in the child forever. Only single-threaded callers
    // compute in the background.
    if !single_threaded() {
        batch.add("precise.background_skipped_threads", 1);
        return;
    }
    // The helper is chosen here (memo reads): a job whose compiler has no
    // matching helper is counted and forks nothing.
    let parent_cpu = || crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let cpu0 = parent_cpu();
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    let helper = match helper_for(ctx, job, &mut hasher) {
        Ok(h) => h,
        Err(r) => return count_refusal(ctx, inv, batch, &r),
    };
    batch.add("precise.background", 1);
    // SAFETY: this process is single-threaded here; the child only computes,
    // writes one file and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        // The parent (or a failed fork: nothing happens): its share of the
        // cost is the helper's choice (an `ldd` the first time) and the fork.
        batch.add("cpu_ns.precise", parent_cpu() - cpu0);
        return;
    }
    // The child: off the build's output pipes and its CPU.
    unsafe {
        // Other descriptors stay: the state directory may be one of them.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::setsid();
        // The system call itself: musl's sched_setscheduler() is a stub that
        // returns ENOSYS, and its sched_param has extra fields (zeroed here).
        let param: libc::sched_param = std::mem::zeroed();
        libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_IDLE, &param as *const libc::sched_param);
    }
    IN_BACKGROUND.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut own = crate::state::stats::Batch::default();
    match compute(ctx, inv, job, &helper, &mut hasher) {
        // The object was compiled from the files the first key hashed; the
        // second key describes them only if none changed since.
        Ok(second) if job.hasher.unchanged_since_hashing().is_none() && hasher.unchanged_since_hashing().is_none() => {
            own.add("precise.background_computed", 1);
            own.add("cpu_ns.precise_helper", second.helper_cpu_ns);
            if write_map(ctx, &second.digest, &job.key.digest).is_ok() {
                own.add("precise.stored", 1);
            }
        }
        Ok(_) => own.add("precise.refused.input_changed", 1),
        Err(r) => own.add(&format!("precise.refused.{}", r.code), 1),
    }
    // What the background cost is counted too (`stats`: precise cpu_ms),
    // in a record of its own (the job's batch is the parent's to write).
    own.add(
        "cpu_ns.precise",
        crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - cpu0,
    );
    own.at_ns = crate::util::now_ns();
    let _ = crate::state::journal::append_many(&ctx.config.state_dir(), &[&own]);
    crate::exec::exit_now(0);
}

/// True when the shard lists no module but the input. Then everything the
/// post-import module is made of is already in the first key — the input's
/// bitcode and the shard (summaries, flags, its one module hash, which is
/// the input's own) — so a second key could only hit where the first one
/// does: it is not computed (on the kernel's tinyconfig a fifth of the
/// backends, on Lua 4 of 33).
fn imports_nothing(job: &Keyed) -> bool {
    job.key.fields.iter().filter(|(k, _)| k.starts_with("module[")).all(|(_, v)| v == "input")
}

/// True when this process has one thread (field 20 of /proc/self/stat).
fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
    rest.split_whitespace().nth(17) == Some("1")
}

/// The precise-mode counters for `stats` (without their `precise.` prefix),
/// with its CPU time in milliseconds.
pub fn counters(all: &std::collections::BTreeMap<String, i64>) -> std::collections::BTreeMap<String, i64> {
    let mut out: std::collections::BTreeMap<String, i64> =
        all.iter().filter_map(|(k, v)| k.strip_prefix("precise.").map(|k| (k.to_string(), *v))).collect();
    if let Some(ns) = all.get("cpu_ns.precise") {
        out.insert("cpu_ms".into(), ns / 1_000_000);
    }
    if let Some(ns) = all.get("cpu_ns.precise_helper") {
        out.insert("helper_cpu_ms".into(), ns / 1_000_000);
    }
    // Inside the compiler's CPU (the shim hashes in its process).
    if let Some(ns) = all.get("cpu_ns.precise_shim") {
        out.insert("shim_cpu_ms".into(), ns / 1_000_000);
    }
    out
}

/// What `explain` says of an object served by the second key.
pub fn explain_line(outcome: &str, fields: &str) -> Option<String> {
    if outcome != "precise-hit" {
        return None;
    }
    let detail = fields.lines().find_map(|l| l.strip_prefix("served-because\t")).unwrap_or("");
    Some(format!("served because its post-import module was unchanged: {detail}"))
}

/// Whether precise mode could run at all (for `stats`): a helper of any
/// LLVM version is there.
pub fn enabled() -> bool {
    if !helper_candidates(None).is_empty() {
        return true;
    }
    let dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let helpers = dir.and_then(|d| std::fs::read_dir(d).ok()).into_iter().flatten().flatten();
    !switched_off()
        && helpers.into_iter().any(|e| {
            e.file_name().to_str().and_then(|n| n.strip_prefix(HELPER_NAME)).is_some_and(|rest| {
                rest.strip_prefix('-').is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wedged_helper_server_costs_one_timeout_then_is_skipped() {
        // A server that accepts and never answers (stopped, or stuck) must
        // not cost every backend of a build its timeout.
        let d = tempfile::tempdir().unwrap();
        let helper = Helper {
            path: PathBuf::from("/nonexistent/ltocache-precise"),
            identity: [5; 32],
            key_identity: [5; 32],
            shim: None,
            shim_problem: None,
        };
        let dir = d.path().join("precise");
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join(format!("h-{}.sock", &hex(&helper.identity)[..16]));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let held = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            drop(conn);
        });
        let t = Instant::now();
        assert!(ask_within(d.path(), &helper, "x", Duration::from_millis(300)).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        let t = Instant::now();
        let e = ask_within(d.path(), &helper, "x", Duration::from_millis(300)).unwrap_err();
        assert!(format!("{e:#}").contains("marked down"), "{e:#}");
        assert!(t.elapsed() < Duration::from_millis(100), "skipped, not waited for");
        held.join().unwrap();
    }

    #[test]
    fn cc1_memo_leaves_out_macros_includes_and_dependency_files() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = v(&["-O2", "-DX=1", "-D", "Y", "-Iinc", "-I", "inc2", "-Uz", "-Wp,-MMD,a/.b.o.d", "-Wp,-MD,x,y", "-g"]);
        assert_eq!(cc1_memo_args(&a), vec!["-O2", "-Wp,-MD,x,y", "-g"]);
    }

    #[test]
    fn llvm_major_is_read_from_the_library_name() {
        assert_eq!(llvm_major(Path::new("/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1")), Some(19));
        assert_eq!(llvm_major(Path::new("/venv/lib/libLLVM.so.23.1")), Some(23));
        assert_eq!(llvm_major(Path::new("/usr/lib/libLLVM-19.so")), Some(19));
        assert_eq!(llvm_major(Path::new("/usr/lib/libLLVM.so")), None);
        assert_eq!(llvm_major(Path::new("/usr/lib/libclang.so.19")), None);
    }

    #[test]
    fn thread_count_is_read() {
        let one = single_threaded();
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(!single_threaded(), "a second thread is running");
        t.join().unwrap();
        let _ = one;
    }

    #[test]
    fn job_lines_split_like_the_driver_quotes_them() {
        let l = r#" "/usr/bin/clang" "-cc1" "-D" "A=\"b c\"" "x\\y""#;
        assert_eq!(split_job_line(l).unwrap(), vec!["/usr/bin/clang", "-cc1", "-D", "A=\"b c\"", "x\\y"]);
        assert!(split_job_line(" \"unterminated").is_none());
    }

    fn cc1(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["-cc1", "-triple", "x86_64-pc-linux-gnu", "-emit-obj", "-fthinlto-index=a.bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["-mrelocation-model", "pic", "-O2", "-x", "ir", "a.o"].iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn cc1_lines_are_read_and_unvetted_options_refused() {
        let c = parse_cc1(&cc1(&["-target-feature", "+avx2", "-mcmodel=large"])).unwrap();
        assert_eq!((c.triple.as_str(), c.reloc.as_str(), c.olevel.as_str()), ("x86_64-pc-linux-gnu", "pic", "2"));
        assert_eq!((c.features.clone(), c.cmodel.as_str()), (vec!["+avx2".to_string()], "large"));
        for bad in [
            &["-fembed-bitcode=all"][..],
            &["-mlink-bitcode-file", "x.bc"],
            &["-mllvm", "-lto-embed-bitcode=optimized"],
        ] {
            assert!(parse_cc1(&cc1(bad)).is_err(), "{bad:?} must refuse");
        }
        assert_eq!(parse_cc1(&cc1(&["-mllvm", "-inline-threshold=5"])).unwrap().mllvm, vec!["-inline-threshold=5"]);
        assert!(parse_cc1(&cc1(&["-fhalf-no-semantic-interposition"])).is_ok(), "-fPIC's cc1 option is vetted");
    }

    #[test]
    fn second_key_ignores_imported_fingerprints_and_keeps_the_rest() {
        let f = |m: &str, a: &str| -> Vec<(String, String)> {
            vec![
                ("shard".into(), "s1".into()),
                ("input".into(), "in".into()),
                ("module[0]".into(), "input".into()),
                ("module[1]".into(), format!("{m} b.o")),
                ("arg[0]".into(), a.into()),
            ]
        };
        let k = |m, a, p: u8| second_key(&f(m, a), &[1; 32], &[2; 32], &[p; 32]);
        assert_eq!(k("aa", "-O2", 3), k("bb", "-O2", 3), "an imported module's digest is not in the key");
        assert_ne!(k("aa", "-O2", 3), k("aa", "-O1", 3), "arguments are");
        assert_ne!(k("aa", "-O2", 3), k("aa", "-O2", 4), "the post-import module is");
        assert_ne!(second_key(&f("aa", "-O2"), &[9; 32], &[2; 32], &[3; 32]), k("aa", "-O2", 3), "the helper is");
    }
}

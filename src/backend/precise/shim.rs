//! The shim `ltocache-precise-<major>.so` (helper/ltocache-precise-shim.cpp):
//! preloaded into a cold compile, it hashes the post-import module inside
//! the real backend and reports the digest on a pipe, so a cold build
//! records its second keys without running the import a second time.
//!
//! It is used only when it was checked against the job's compiler (its
//! report names the libLLVM that defines the real `lto::thinBackend`, which
//! must be the one the compiler maps), only where the environment lets it
//! run in the process that runs the backend, and a compile that fails with
//! it (or whose stderr shows the loader refusing it) is run again without
//! it: the compile never depends on the shim.

use super::*;
use crate::exec::{Dialog, Extra, Finished};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A shim checked against a compiler.
#[derive(Clone, Debug)]
pub struct Shim {
    pub path: PathBuf,
    /// blake3 of the shim's file and its check line: in the key, with the
    /// helper's identity (their digests are the same code's).
    pub identity: [u8; 32],
}

/// Where the shim for the helper at `helper` is: `LTOCACHE_PRECISE_SHIM`
/// (empty or `0`: none), else beside the helper as `<helper>.so` (what
/// helper/build.sh and scripts/build-release.sh make).
pub fn shim_path(helper: &Path) -> Option<PathBuf> {
    if let Some(v) = crate::util::env_os("LTOCACHE_PRECISE_SHIM") {
        return (!v.is_empty() && v != "0").then(|| PathBuf::from(v));
    }
    let mut p = helper.as_os_str().to_owned();
    p.push(".so");
    let p = PathBuf::from(p);
    p.is_file().then_some(p)
}

/// The shim usable with the job's compiler (whose libLLVM is `lib`), next
/// to `helper`: `Ok(None)` when there is none, `Err(why)` when there is one
/// that cannot be used. The check (the compiler run once with the shim,
/// `--version`) is memoised per shim digest and path and compiler identity.
pub(super) fn shim_for(
    ctx: &Ctx,
    job: &Keyed,
    helper: &Path,
    lib: &Path,
    hasher: &mut crate::key::digest::FileHasher,
) -> Result<Option<Shim>, String> {
    let Some(path) = shim_path(helper) else { return Ok(None) };
    let digest = hasher.hash(&path, false).map_err(|e| format!("hashing the shim: {e:#}"))?.digest;
    let real = std::fs::canonicalize(&job.program).unwrap_or_else(|_| job.program.clone());
    let compiler = job.key.fields.iter().find(|(k, _)| k == "compiler").map(|(_, v)| v.as_str()).unwrap_or("");
    let tag = blake3::hash(
        format!("shim-v1\0{}\0{}\0{compiler}\0{}", hex(&digest), path.display(), real.display()).as_bytes(),
    );
    let line = memoised(ctx, format!("shim-{}", &hex(tag.as_bytes())[..32]), || check(&job.program, &path));
    let Some(line) = line.strip_prefix("ok ").map(str::trim) else {
        return Err(format!("{}: {}", path.display(), line.trim()));
    };
    let maps = line.rsplit(' ').next().map(PathBuf::from);
    if maps.as_deref() != Some(lib) {
        return Err(format!("{} binds to {}, the compiler maps {}", path.display(), line, lib.display()));
    }
    let mut h = blake3::Hasher::new();
    h.update(b"shim\0");
    h.update(&digest);
    h.update(line.as_bytes());
    Ok(Some(Shim { path, identity: *h.finalize().as_bytes() }))
}

/// A connected pair of Unix stream sockets, both close-on-exec: (ours,
/// the compile's). A socket, not a pipe: the shim may wait for an answer.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What is in the pipe now (the writer has gone), at most 4 KiB.
fn read_now(fd: &OwnedFd) -> String {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl and read on a descriptor we own, into our buffer.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 4096 {
        // SAFETY: as above.
        let n = unsafe { libc::read(raw, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        } else {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The environment that preloads `shim` and has it report on `fd`: the
/// user's `LD_PRELOAD` (`user`) is kept (ours is appended) and handed to the
/// shim, which puts it back, so the compiler's own children see the user's.
pub fn shim_environment(
    shim: &Path,
    fd: i32,
    user: Option<&std::ffi::OsStr>,
    dump: Option<&Path>,
) -> Vec<(OsString, OsString)> {
    let mut preload = OsString::new();
    let mut saved = OsString::from(if user.is_some() { "+" } else { "-" });
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        preload.push(u);
        preload.push(":");
        saved.push(u);
    }
    preload.push(shim);
    let mut env = vec![
        ("LD_PRELOAD".into(), preload),
        ("LTOCACHE_SHIM_PRELOAD".into(), saved),
        ("LTOCACHE_SHIM_FD".into(), fd.to_string().into()),
    ];
    if let Some(d) = dump {
        env.push(("LTOCACHE_SHIM_DUMP".into(), d.into()));
    }
    env
}

/// Runs the compiler once with the shim (`--version`, the shim reporting
/// what it binds to): "ok <line>", or "no: why". The user's LD_PRELOAD is
/// left out (the verdict is memoised for every environment).
fn check(program: &Path, shim: &Path) -> String {
    let run = || -> Result<String, String> {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut cmd = Command::new(program);
        let mut env = shim_environment(shim, w.as_raw_fd(), None, None);
        env.push(("LTOCACHE_SHIM_CHECK".into(), "1".into()));
        Extra { env, inherit_fd: Some(w.as_raw_fd()) }.apply(&mut cmd);
        let out = cmd
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("running the compiler: {e}"))?;
        drop(w);
        let line = read_now(&r);
        if !out.status.success() || !out.stderr.is_empty() {
            return Err(format!(
                "the compiler with the shim exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        line.trim().strip_prefix("shim ").map(|l| l.to_string()).ok_or_else(|| {
            if line.is_empty() {
                "the shim did not report (not loaded)".to_string()
            } else {
                line.trim().to_string()
            }
        })
    };
    match run() {
        Ok(line) => format!("ok {line}\n"),
        Err(why) => format!("no: {}\n", why.replace('\n', " ")),
    }
}

/// Why the shim must not be added to this job's environment, if it must
/// not: where clang would run the backend in another process than the
/// driver's (the shim leaves the environment at load, so that process
/// would run without it), or where the preload list cannot name it.
pub fn unsafe_env(inv: &BackendInvocation, shim: &Path) -> Option<String> {
    if crate::util::env_os("CLANG_SPAWN_CC1").is_some_and(|v| !v.is_empty() && v != "0") {
        return Some("CLANG_SPAWN_CC1 is set (cc1 in a process of its own)".into());
    }
    if inv.expanded.iter().chain(&inv.hashed_args).any(|a| a == "-fno-integrated-cc1") {
        return Some("-fno-integrated-cc1".into());
    }
    let Some(s) = shim.to_str() else { return Some("the shim's path is not UTF-8".into()) };
    if s.contains([':', ' ']) || !shim.is_absolute() {
        return Some(format!("the shim's path {s:?} cannot be in LD_PRELOAD"));
    }
    None
}

/// What a cold job's compile does with the shim.
#[derive(Default)]
pub enum ShimState<'c> {
    /// Not considered (a rebuild, precise mode off, no helper).
    #[default]
    NotTried,
    /// To be run with it.
    Armed(Box<Armed<'c>>),
    /// Decided against: refused for a reason the helper would refuse too,
    /// or the compile was run again without it.
    Refused,
    /// No usable shim, or an environment that does not let it run: the
    /// default cold policy falls back to the background helper.
    Unavailable,
    /// The shim asked, the second key hit: the object was served and the
    /// compile stopped. Holds the entry's stderr, to replay, and our end of
    /// the socket (the answer is still to be sent on it).
    Served(Vec<u8>, Option<OwnedFd>),
}

pub struct Armed<'c> {
    shim: Shim,
    /// The key's identity: the helper's and the shim's.
    key_identity: [u8; 32],
    helper: PathBuf,
    shard: [u8; 32],
    /// Tracks the shard this read, for the after-compile check.
    hasher: crate::key::digest::FileHasher<'c>,
    dump: Option<PathBuf>,
    /// Our end of the socket, once the compile was spawned.
    report: Option<OwnedFd>,
    cpu_ns: i64,
    /// The shim asks before going on (wrapper only: it answers while the
    /// compile runs), so a second-key hit stops the backend.
    ask: bool,
    /// The shim's line when it asked (read from the socket by then).
    line: Option<String>,
}

/// Whether a rebuild's job under `LTOCACHE_PRECISE_REBUILD=shim` will run
/// with a shim that asks (so the helper need not be asked before): a usable
/// shim, an environment that lets it run, a store the job can record in.
pub(super) fn will_ask(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed) -> bool {
    if ctx.config.readonly.value || ctx.config.remote_only.value || !ctx.store.writable() {
        return false;
    }
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    helper_for(ctx, job, &mut hasher).is_ok_and(|h| h.shim.as_ref().is_some_and(|s| unsafe_env(inv, &s.path).is_none()))
}

/// For a cold compile under the default cold policy (and a rebuild's with
/// `LTOCACHE_PRECISE_REBUILD=shim`, when `ask`): decides whether it runs
/// with the shim (after the first key missed). Every refusal the helper's
/// path makes is made here, before the compile (cc1 and `-mllvm` options,
/// the shard's index features), and counted. With `ask` the shim asks with
/// its digest before going on.
pub(super) fn arm<'c>(ctx: &'c Ctx, inv: &BackendInvocation, job: &Keyed<'c>, batch: &mut Batch, ask: bool) {
    let wanted =
        if job.output_existed() { ask && rebuild_by_shim() } else { matches!(cold_policy(), Cold::Auto | Cold::Shim) };
    if !wanted
        || job.precise.borrow().is_some()
        || ctx.config.readonly.value
        || ctx.config.remote_only.value
        || !ctx.store.writable()
        || !has_candidates(ctx, job)
    {
        return;
    }
    if imports_nothing(job) {
        // (A rebuild's lookup counted it already.)
        if !job.output_existed() {
            batch.add("precise.skipped_no_imports", 1);
        }
        *job.precise_shim.borrow_mut() = ShimState::Refused;
        return;
    }
    let cpu = || crate::util::cpu_ns(libc::RUSAGE_THREAD) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let cpu0 = cpu();
    let mut state = decide(ctx, inv, job, batch);
    let spent = cpu() - cpu0;
    if let ShimState::Armed(a) = &mut state {
        batch.add("precise.shim_armed", 1);
        a.cpu_ns = spent;
        // A job chosen for verification is compiled and compared, and
        // LTOCACHE_RECACHE serves nothing: neither is stopped by a hit.
        a.ask = ask && !ctx.config.recache.value && !crate::verify::selected(ctx.config.verify.value, &job.key.digest);
    } else {
        batch.add("cpu_ns.precise", spent);
    }
    *job.precise_shim.borrow_mut() = state;
}

fn decide<'c>(ctx: &'c Ctx, inv: &BackendInvocation, job: &Keyed<'c>, batch: &mut Batch) -> ShimState<'c> {
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    let helper = match helper_for(ctx, job, &mut hasher) {
        Ok(h) => h,
        Err(r) => {
            count_refusal(ctx, inv, batch, &r);
            return ShimState::Refused;
        }
    };
    let Some(shim) = helper.shim.clone() else {
        if let Some(why) = &helper.shim_problem {
            ctx.log.log(&format!("precise: shim not used: {why}"));
            batch.add("precise.shim_unusable", 1);
        }
        return ShimState::Unavailable;
    };
    if let Some(why) = unsafe_env(inv, &shim.path) {
        ctx.log.log(&format!("precise: shim not used ({why}): {}", inv.output.display()));
        batch.add("precise.shim_unsafe_env", 1);
        return ShimState::Unavailable;
    }
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            count_refusal(ctx, inv, batch, &Refusal { code: "helper_error", detail: format!("cwd: {e}") });
            return ShimState::Refused;
        }
    };
    // The same vetting as the helper's request: the cc1 line's options and
    // -mllvm options, then the shard's records.
    if let Err(r) = cc1_line(ctx, inv, job, &cwd).and_then(|l| parse_cc1(&l)) {
        count_refusal(ctx, inv, batch, &r);
        return ShimState::Refused;
    }
    let shard = match hasher.read_tracked(&inv.shard) {
        Ok(b) => shard_without_hashes(&b),
        Err(e) => Err(Refusal { code: "helper_error", detail: format!("reading the shard: {e:#}") }),
    };
    let shard = match shard {
        Ok(s) => s,
        Err(r) => {
            count_refusal(ctx, inv, batch, &r);
            return ShimState::Refused;
        }
    };
    ShimState::Armed(Box::new(Armed {
        shim,
        key_identity: helper.key_identity,
        helper: helper.path,
        shard,
        hasher,
        dump: dump_path(&cwd, inv),
        report: None,
        cpu_ns: 0,
        ask: false,
        line: None,
    }))
}

/// What an armed job's spawn adds; keep it until the spawn returned (it
/// holds the pipe's write end, closed when it is dropped).
pub struct Spawn {
    pub extra: Extra,
    _write: OwnedFd,
}

/// The environment and descriptor for an armed job's compile (None: run it
/// as it is). A pipe per spawn, so a driver with hundreds of cold jobs
/// holds descriptors only for those running.
pub fn spawn(job: &Keyed) -> Option<Spawn> {
    let mut state = job.precise_shim.borrow_mut();
    let ShimState::Armed(a) = &mut *state else { return None };
    let Ok((r, w)) = pipe() else {
        *state = ShimState::Refused;
        return None;
    };
    let user = std::env::var_os("LD_PRELOAD");
    let mut env = shim_environment(&a.shim.path, w.as_raw_fd(), user.as_deref(), a.dump.as_deref());
    if a.ask {
        env.push(("LTOCACHE_SHIM_ASK".into(), "1".into()));
    }
    a.report = Some(r);
    Some(Spawn { extra: Extra { env, inherit_fd: Some(w.as_raw_fd()) }, _write: w })
}

/// After a compile that ran with the shim: true when it must run again
/// without it (it failed, or the loader could not preload the shim and
/// said so on stderr) — the build must get what the compiler alone does.
pub fn must_rerun(job: &Keyed, finished: &Finished, batch: &mut Batch) -> bool {
    let mut state = job.precise_shim.borrow_mut();
    let ShimState::Armed(a) = &*state else { return false };
    if a.report.is_none() {
        return false;
    }
    let loader = loader_refused(&finished.stderr);
    if finished.status.success() && !loader {
        return false;
    }
    batch.add("precise.shim_rerun", 1);
    *state = ShimState::Refused;
    true
}

/// Whether ld.so said it could not preload a library (it then goes on
/// without it, and its line would be stored as the compile's stderr).
fn loader_refused(stderr: &[u8]) -> bool {
    const SAID: &[u8] = b"cannot be preloaded (cannot";
    stderr.windows(SAID.len()).any(|w| w == SAID)
}

/// Drops what a finished job still holds of its shim — our end of the
/// socket and the hasher. The distributor keeps its jobs until the link
/// ends: one descriptor per cold job would run out (EMFILE) on a large link.
pub fn release(job: &Keyed) {
    let mut state = job.precise_shim.borrow_mut();
    match &mut *state {
        ShimState::Armed(_) => *state = ShimState::Refused,
        ShimState::Served(_, socket) => *socket = None,
        _ => {}
    }
}

/// Runs a wrapped job's compile, with the shim when it is armed (and again
/// without it when [`must_rerun`] says so), answering the shim's question.
pub fn compile(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
    mut run: impl FnMut(Option<&Extra>, Option<&mut Dialog>) -> anyhow::Result<Finished>,
) -> anyhow::Result<Finished> {
    let Some(s) = spawn(job) else { return run(None, None) };
    let ours = question_fd(job);
    let first = {
        let mut answer = |line: &str, stderr: &[u8]| answer(ctx, inv, job, batch, line, stderr);
        let mut dialog = ours.map(|fd| Dialog { fd, answer: &mut answer });
        run(Some(&s.extra), dialog.as_mut())
    };
    drop(s);
    if served(job).is_some() {
        // Stopped after the object was served: whatever the compile's end.
        return first;
    }
    match first {
        Ok(f) if !must_rerun(job, &f, batch) => Ok(f),
        Ok(_) => run(None, None),
        Err(_) => {
            batch.add("precise.shim_rerun", 1);
            *job.precise_shim.borrow_mut() = ShimState::Refused;
            run(None, None)
        }
    }
}

/// Our end of the socket of an armed job whose shim asks (after [`spawn`]).
pub fn question_fd(job: &Keyed) -> Option<std::os::fd::RawFd> {
    match &*job.precise_shim.borrow() {
        ShimState::Armed(a) if a.ask => a.report.as_ref().map(|fd| fd.as_raw_fd()),
        _ => None,
    }
}

/// The stderr to replay when the shim's question was answered by serving
/// the object (the compile stopped); None otherwise.
pub fn served(job: &Keyed) -> Option<Vec<u8>> {
    match &*job.precise_shim.borrow() {
        ShimState::Served(stderr, _) => Some(stderr.clone()),
        _ => None,
    }
}

/// The shim's question, in the backend after the import: its digest. The
/// second key is computed and kept for the store; when it maps to an entry,
/// and the compile has written nothing to stderr so far, the entry's object
/// is served at the output path (atomically) before answering `s` (stop).
/// Anything else answers `g` (go on).
pub fn answer(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch, line: &str, stderr: &[u8]) -> u8 {
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_THREAD);
    if let ShimState::Armed(a) = &mut *job.precise_shim.borrow_mut() {
        a.line = Some(line.to_string());
    }
    let verdict = (|| {
        let state = job.precise_shim.borrow();
        let ShimState::Armed(a) = &*state else { return b'g' };
        if !stderr.is_empty() {
            return b'g';
        }
        let Ok((post_import, hash_ns)) = parse_answer(line) else { return b'g' };
        if job.hasher.unchanged_since_hashing().is_some() || a.hasher.unchanged_since_hashing().is_some() {
            return b'g';
        }
        let second = Second {
            digest: second_key(&job.key.fields, &a.key_identity, &a.shard, &post_import),
            helper_cpu_ns: 0,
            helper: a.helper.clone(),
        };
        batch.add("precise.shim_computed", 1);
        batch.add("precise.shim_asked", 1);
        batch.add("cpu_ns.precise_shim", hash_ns);
        batch.add("cpu_ns.precise", a.cpu_ns);
        *job.precise.borrow_mut() = Some(second.clone());
        let Some(target) = read_map(ctx, &second.digest) else { return b'g' };
        let entry = match ctx.store.get_entry_and_last_use(&target) {
            Ok((Lookup::Hit(e), _)) => e,
            _ => {
                batch.add("precise.dangling", 1);
                return b'g';
            }
        };
        drop(state);
        if !serve_second(ctx, inv, job, batch, &second, &target, &entry) {
            return b'g';
        }
        batch.add("precise.shim_stopped", 1);
        let mut state = job.precise_shim.borrow_mut();
        let socket = match &mut *state {
            ShimState::Armed(a) => a.report.take(),
            _ => None,
        };
        *state = ShimState::Served(entry.stderr, socket);
        b's'
    })();
    batch.add("cpu_ns.precise", crate::util::cpu_ns(libc::RUSAGE_THREAD) - cpu0);
    verdict
}

/// After the outputs were stored under the first key: the second key from
/// the shim's report, recorded. False when the job did not run with it.
pub(super) fn record(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) -> bool {
    if !matches!(*job.precise_shim.borrow(), ShimState::Armed(_)) {
        return false;
    }
    let ShimState::Armed(a) = std::mem::replace(&mut *job.precise_shim.borrow_mut(), ShimState::Refused) else {
        return false;
    };
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_THREAD);
    let result = (|| {
        let Some(fd) = &a.report else { return refuse("shim_no_report", "not run with the shim") };
        let answer = a.line.clone().unwrap_or_else(|| read_now(fd));
        // (A compile that printed anything never gets here: after_store.)
        if answer.is_empty() {
            return refuse("shim_no_report", "the shim did not report");
        }
        let (post_import, hash_ns) = match parse_answer(&answer) {
            Err(Refusal { code: "helper_refused", detail }) => return refuse("shim_refused", detail),
            other => other?,
        };
        if job.hasher.unchanged_since_hashing().is_some() || a.hasher.unchanged_since_hashing().is_some() {
            return refuse("input_changed", "input changed");
        }
        Ok((second_key(&job.key.fields, &a.key_identity, &a.shard, &post_import), hash_ns))
    })();
    match result {
        Ok((second, hash_ns)) => {
            batch.add("precise.shim_computed", 1);
            batch.add("cpu_ns.precise_shim", hash_ns);
            match write_map(ctx, &second, &job.key.digest) {
                Ok(()) => batch.add("precise.stored", 1),
                Err(e) => ctx.log.log(&format!("precise: mapping not stored: {e:#}")),
            }
            ctx.log.log(&format!(
                "precise: second key {} recorded by the shim {} (helper {}) {}",
                hex(&second[..8]),
                a.shim.path.display(),
                a.helper.display(),
                inv.output.display()
            ));
        }
        Err(r) => count_refusal(ctx, inv, batch, &r),
    }
    batch.add("cpu_ns.precise", a.cpu_ns + crate::util::cpu_ns(libc::RUSAGE_THREAD) - cpu0);
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_loaders_refusal_is_recognised() {
        let said = b"ERROR: ld.so: object '/x/ltocache-precise-19.so' from LD_PRELOAD cannot be preloaded \
                     (cannot open shared object file): ignored.\n";
        assert!(super::loader_refused(said));
        assert!(!super::loader_refused(b"warning: something else\n"));
        assert!(!super::loader_refused(b""));
    }
}

//! The helper `ltocache-precise`: found beside the executable (one per
//! LLVM), checked against the libLLVM the compiler maps, asked through its
//! server or a process of its own.

use super::*;

// The helper.

/// A helper found and checked against the compiler.
pub struct Helper {
    pub path: PathBuf,
    /// blake3 of the helper binary and its version line (names its server).
    pub identity: [u8; 32],
    /// What the second key holds of who computed it: the helper's identity
    /// and, when there is a usable shim beside it, the shim's — the two
    /// compute the same digest with the same code (precise-common.h), so a
    /// key the shim recorded is found by the helper's on a rebuild.
    pub key_identity: [u8; 32],
    /// The shim beside the helper, checked against the compiler.
    pub shim: Option<Shim>,
    /// Why the shim beside the helper cannot be used, if there is one.
    pub shim_problem: Option<String>,
}

/// The libLLVM file a program maps, from `ldd`.
pub(super) fn libllvm_of(program: &Path) -> Option<PathBuf> {
    let out = Command::new("ldd").arg(program).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("libLLVM"))?;
    let path = line.split("=>").nth(1)?.trim().split(" (").next()?.trim();
    std::fs::canonicalize(path).ok()
}

/// A small verdict memoised in the state directory under `name`.
pub(super) fn memoised(ctx: &Ctx, name: String, compute: impl FnOnce() -> String) -> String {
    let memo = ctx.state_dir.join("precise").join(name);
    if let Ok(v) = std::fs::read_to_string(&memo) {
        return v;
    }
    // The parallel jobs at a build's start would each run the check (`ldd`,
    // a helper or a compiler): one does while the others wait a little.
    let _lock = lock_file_within(&memo.with_extension("lock"), FOREGROUND_LOCK_WAIT);
    if let Ok(v) = std::fs::read_to_string(&memo) {
        return v;
    }
    let v = compute();
    let dir = memo.parent().unwrap_or(Path::new("."));
    let _ = crate::util::write_atomic(dir, &memo, v.as_bytes());
    v
}

/// The libLLVM file (realpath) the job's compiler maps, memoised per
/// compiler identity and real path (the wheels find theirs relative to the
/// executable, so a copy elsewhere may map another).
pub(super) fn compiler_libllvm(ctx: &Ctx, job: &Keyed) -> Option<PathBuf> {
    let real = std::fs::canonicalize(&job.program).unwrap_or_else(|_| job.program.clone());
    let compiler = job.key.fields.iter().find(|(k, _)| k == "compiler").map(|(_, v)| v.as_str()).unwrap_or("");
    let tag = blake3::hash(format!("llvm-v1\0{compiler}\0{}", real.display()).as_bytes());
    let v = memoised(ctx, format!("llvm-{}", &hex(tag.as_bytes())[..32]), || match libllvm_of(&real) {
        Some(l) => format!("lib {}\n", l.display()),
        None => "none\n".into(),
    });
    v.strip_prefix("lib ").map(|l| PathBuf::from(l.trim_end_matches('\n')))
}

/// Whether a job's compiler has a helper to try at all (cheap: a memo read
/// and a stat per candidate), so jobs without one pay nothing more.
pub(super) fn has_candidates(ctx: &Ctx, job: &Keyed) -> bool {
    if switched_off() {
        return false;
    }
    let major = if crate::util::env_os("LTOCACHE_PRECISE_HELPER").is_some() {
        None
    } else {
        compiler_libllvm(ctx, job).as_deref().and_then(llvm_major)
    };
    !helper_candidates(major).is_empty()
}

/// Finds the helper that maps the same libLLVM file as the job's compiler:
/// a clang-19 job gets a helper built against libLLVM-19, a clang-23 job one
/// built against LLVM 23's, and a job whose compiler maps none no helper.
/// A helper's version line is memoised per (helper digest, path).
pub(super) fn helper_for(
    ctx: &Ctx,
    job: &Keyed,
    hasher: &mut crate::key::digest::FileHasher,
) -> Result<Helper, Refusal> {
    let lib = compiler_libllvm(ctx, job);
    let candidates = helper_candidates(lib.as_deref().and_then(llvm_major));
    if candidates.is_empty() {
        return refuse("no_helper", "no helper");
    }
    let Some(lib) = lib else { return refuse("llvm_mismatch", "the compiler maps no libLLVM") };
    let mut why = Vec::new();
    for path in candidates {
        let digest = match hasher.hash(&path, false) {
            Ok(h) => h.digest,
            Err(e) => return refuse("helper_error", format!("hashing the helper: {e:#}")),
        };
        let tag = blake3::hash(format!("helper-v1\0{}\0{}", hex(&digest), path.display()).as_bytes());
        let line = memoised(ctx, format!("helper-{}", &hex(tag.as_bytes())[..32]), || version_line(&path));
        let Some(line) = line.strip_prefix("ok ").map(str::trim) else {
            why.push(format!("{}: {}", path.display(), line.trim()));
            continue;
        };
        let maps = line.rsplit(' ').next().map(PathBuf::from);
        if maps.as_deref() != Some(lib.as_path()) {
            why.push(format!("{} maps {}", path.display(), maps.unwrap_or_default().display()));
            continue;
        }
        let mut h = blake3::Hasher::new();
        h.update(&digest);
        h.update(line.as_bytes());
        let identity = *h.finalize().as_bytes();
        let (shim, shim_problem) = match shim_for(ctx, job, &path, &lib, hasher) {
            Ok(s) => (s, None),
            Err(why) => (None, Some(why)),
        };
        let key_identity = match &shim {
            Some(s) => {
                let mut h = blake3::Hasher::new();
                h.update(b"helper+shim\0");
                h.update(&identity);
                h.update(&s.identity);
                *h.finalize().as_bytes()
            }
            None => identity,
        };
        return Ok(Helper { path, identity, key_identity, shim, shim_problem });
    }
    refuse("llvm_mismatch", format!("the compiler maps {}; {}", lib.display(), why.join("; ")))
}

/// "ok <version line>" (protocol, LLVM version, the libLLVM it maps), or why not.
pub(super) fn version_line(helper: &Path) -> String {
    match Command::new(helper).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) if o.status.success() => format!("ok {}\n", String::from_utf8_lossy(&o.stdout).trim()),
        _ => "no: the helper does not run\n".into(),
    }
}

pub(super) fn request_text(cwd: &Path, inv: &BackendInvocation, cc1: &Cc1, dump: Option<&Path>) -> String {
    let mut r = String::new();
    let mut put = |k: &str, v: &str| {
        r.push_str(k);
        r.push('\t');
        r.push_str(v);
        r.push('\n');
    };
    put("cwd", &cwd.to_string_lossy());
    put("input", &inv.input.to_string_lossy());
    // The index as the job names it (the memoised cc1 line may be another
    // job's with the same flags).
    put("index", &inv.shard.to_string_lossy());
    put("triple", &cc1.triple);
    put("reloc", &cc1.reloc);
    if !cc1.cmodel.is_empty() {
        put("cmodel", &cc1.cmodel);
    }
    put("cpu", &cc1.cpu);
    for f in &cc1.features {
        put("feature", f);
    }
    put("olevel", &cc1.olevel);
    for o in &cc1.mllvm {
        put("mllvm", o);
    }
    if let Some(d) = dump {
        put("dump", &d.to_string_lossy());
    }
    r.push_str("end\n");
    r
}

pub(super) fn idle_seconds() -> u64 {
    crate::util::env("LTOCACHE_PRECISE_IDLE").and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(30)
}

/// Sends a request to the helper: to its server (started when absent) or,
/// with `LTOCACHE_PRECISE_SERVER=0`, to a process of its own.
pub fn ask(state_dir: &Path, helper: &Helper, request: &str) -> Result<String> {
    ask_within(state_dir, helper, request, Duration::from_secs(20))
}

pub(super) fn ask_within(state_dir: &Path, helper: &Helper, request: &str, answer_within: Duration) -> Result<String> {
    let server = !crate::util::env_os("LTOCACHE_PRECISE_SERVER").is_some_and(|v| v == "0");
    // The state directory may be named through one of our descriptors
    // (/proc/self/fd/N): the server is another process, so it gets the
    // directory's real path.
    let dir = state_dir.join("precise");
    let _ = std::fs::create_dir_all(&dir);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    // Background children have a server of their own: started by one of
    // them it runs at idle priority (inherited, and an unprivileged process
    // cannot leave SCHED_IDLE), and a foreground job must never queue behind
    // idle-priority work while the build keeps the CPU busy.
    let background = IN_BACKGROUND.load(std::sync::atomic::Ordering::Relaxed);
    let name = format!("h-{}{}", &hex(&helper.identity)[..16], if background { "-idle" } else { "" });
    let sock = dir.join(format!("{name}.sock"));
    // sun_path holds 108 bytes; a deeper state directory asks a process.
    if !server || sock.as_os_str().len() >= 100 {
        return ask_once(&helper.path, request);
    }
    // A server that did not start or did not answer in time is skipped by
    // this user's compiles for a while (as a remote that is down): one
    // timeout, not one per backend of the build.
    let down = dir.join(format!("{name}.down"));
    if std::fs::metadata(&down).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e < DOWN_FOR)) {
        bail!("the helper server is marked down (it timed out less than {}s ago)", DOWN_FOR.as_secs());
    }
    let mark_down = |e: anyhow::Error| {
        let _ = std::fs::write(&down, b"");
        e
    };
    // The children of a cold build queue up together: one starts the
    // server while the others wait (each start loads libLLVM, ~12 ms of CPU,
    // before the loser sees the server's lock taken and leaves).
    let starting = if background { lock_file(&dir.join(format!("{name}.start")), true) } else { None };
    let mut stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(_) => {
            start_server(&helper.path, &sock)?;
            // An idle-priority server may wait long for the CPU; waiting
            // costs a background child nothing.
            let deadline = Instant::now() + Duration::from_secs(if background { 60 } else { 3 });
            let mut tries = 0u32;
            loop {
                match UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(mark_down(anyhow::anyhow!("helper server did not start: {e}")))
                    }
                    Err(_) => {
                        tries += 1;
                        // A server leaving on idle holds the lock until it has
                        // unlinked its socket, so the one we started may have
                        // given way to it: start another now and then.
                        if tries % 100 == 0 {
                            start_server(&helper.path, &sock)?;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        }
    };
    drop(starting);
    // The state directory may be shared with a group: a socket there could
    // be someone else's server answering forged digests. Only a server
    // running as this user is asked.
    if !peer_is_me(&stream) {
        bail!("the helper socket {} is served by another user", sock.display());
    }
    stream.set_read_timeout(Some(if background {
        answer_within.max(Duration::from_secs(120))
    } else {
        answer_within
    }))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    if let Err(e) = stream.read_to_string(&mut answer) {
        let timed_out = matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
        let e = anyhow::Error::new(e).context("reading the helper's answer");
        return Err(if timed_out { mark_down(e) } else { e });
    }
    Ok(answer)
}

/// How long a helper server that timed out is skipped.
pub(super) const DOWN_FOR: Duration = Duration::from_secs(60);

pub(super) fn peer_is_me(stream: &UnixStream) -> bool {
    use std::os::unix::io::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    rc == 0 && cred.uid == unsafe { libc::geteuid() }
}

pub(super) fn ask_once(helper: &Path, request: &str) -> Result<String> {
    let mut child = Command::new(helper)
        .arg("--once")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the helper")?;
    child.stdin.take().context("helper stdin")?.write_all(request.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a helper server for this host's state directory, detached: its
/// own session, stdio on /dev/null and no other descriptor of ours (a build
/// tool waiting for its job's pipes or jobserver must not wait for it).
pub(super) fn start_server(helper: &Path, sock: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(sock.parent().unwrap_or(Path::new("."))).context("creating the helper's directory")?;
    let mut cmd = Command::new(helper);
    cmd.arg("--serve").arg(sock).arg(idle_seconds().to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.spawn().context("starting the helper server")?;
    Ok(())
}

/// Parses the helper's answer into the post-import digest and the CPU time
/// the helper spent on it (a server's is not ours to measure).
pub(super) fn parse_answer(answer: &str) -> Result<([u8; 32], i64), Refusal> {
    let line = answer.trim();
    if let Some(rest) = line.strip_prefix("ok ") {
        let mut parts = rest.split(' ');
        let hexd = parts.next().unwrap_or("");
        let cpu = parts.nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if let Some(d) = unhex(hexd).and_then(|v| <[u8; 32]>::try_from(v).ok()) {
            return Ok((d, cpu));
        }
    }
    if let Some(why) = line.strip_prefix("refuse ") {
        return refuse("helper_refused", why.to_string());
    }
    refuse("helper_error", format!("unexpected answer {line:?}"))
}

/// Computes the second key of a job with the helper [`helper_for`] chose,
/// or why not.
pub fn compute(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    helper: &Helper,
    hasher: &mut crate::key::digest::FileHasher,
) -> Result<Second, Refusal> {
    let shard_bytes = match hasher.read_tracked(&inv.shard) {
        Ok(b) => b,
        Err(e) => return refuse("helper_error", format!("reading the shard: {e:#}")),
    };
    let shard = shard_without_hashes(&shard_bytes)?;
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return refuse("helper_error", format!("cwd: {e}")),
    };
    let cc1 = parse_cc1(&cc1_line(ctx, inv, job, &cwd)?)?;
    // The real path: the socket's name is handed to the helper server, a
    // process of its own, where this one's /proc/self/fd means nothing.
    let dump = dump_path(&cwd, inv);
    let answer = match ask(&ctx.config.state().real, helper, &request_text(&cwd, inv, &cc1, dump.as_deref())) {
        Ok(a) => a,
        Err(e) => return refuse("helper_error", format!("{e:#}")),
    };
    let (post_import, helper_cpu_ns) = parse_answer(&answer)?;
    Ok(Second {
        digest: second_key(&job.key.fields, &helper.key_identity, &shard, &post_import),
        helper_cpu_ns,
        helper: helper.path.clone(),
    })
}

/// `LTOCACHE_PRECISE_DUMP=DIR` (benchmarks: benches/realworld/precise.py):
/// the helper also writes each job's post-import module, as `-save-temps=obj`
/// writes `X.3.import.bc`, to `DIR/<output path>.3.import.bc`, so that the
/// module the real jobs hashed can be compared with clang's own.
pub(super) fn dump_path(cwd: &Path, inv: &BackendInvocation) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LTOCACHE_PRECISE_DUMP").filter(|d| !d.is_empty())?);
    let out = cwd.join(&inv.output);
    let rel = out.strip_prefix("/").unwrap_or(&out);
    let mut name = dir.join(rel).into_os_string();
    name.push(".3.import.bc");
    let name = PathBuf::from(name);
    std::fs::create_dir_all(name.parent()?).ok()?;
    Some(name)
}

/// Asks `helper` (a process of its own) for the post-import module of the
/// job `inv` run in `cwd` with the cc1 line `cc1_args`, and has it written to
/// `dump` the way clang's `-save-temps=obj` writes `X.3.import.bc` — for the
/// test that holds the two byte for byte. Returns the helper's answer.
pub fn dump_post_import(
    helper: &Path,
    cwd: &Path,
    inv: &BackendInvocation,
    cc1_args: &[String],
    dump: &Path,
) -> Result<String> {
    let cc1 = parse_cc1(cc1_args).map_err(|r| anyhow::anyhow!("{}: {}", r.code, r.detail))?;
    ask_once(helper, &request_text(cwd, inv, &cc1, Some(dump)))
}

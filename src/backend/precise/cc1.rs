//! clang's cc1 command line for a job (`clang -###`, memoised), read and
//! vetted: what the helper's request carries, and the refusal of anything
//! not reviewed.

use super::*;

// clang's cc1 command line.

/// What the helper needs from the cc1 line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cc1 {
    pub triple: String,
    pub reloc: String,
    pub cmodel: String,
    pub cpu: String,
    pub features: Vec<String>,
    pub olevel: String,
    pub mllvm: Vec<String>,
    pub index: String,
}

/// Splits one `-###` job line (`"a" "b\"c"`) into its arguments.
pub fn split_job_line(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => continue,
            '"' => {
                let mut tok = String::new();
                loop {
                    match chars.next()? {
                        '\\' => tok.push(chars.next()?),
                        '"' => break,
                        c => tok.push(c),
                    }
                }
                out.push(tok);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads the cc1 line, refusing any option not on [`CC1_VETTED`].
pub fn parse_cc1(args: &[String]) -> Result<Cc1, Refusal> {
    let mut c = Cc1::default();
    let mut inputs = 0;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if !a.starts_with('-') {
            inputs += 1;
            continue;
        }
        let name = a.split_once('=').map(|(n, _)| n).unwrap_or(a);
        let name = if a.starts_with("-D") { "-D" } else { name };
        if !CC1_VETTED.contains(&name) && !CC1_VETTED_PREFIXES.iter().any(|p| a.starts_with(p)) {
            return refuse("cc1_option", a.to_string());
        }
        let value = if CC1_SEPARATE.contains(&name) && name == a {
            let Some(v) = args.get(i) else { return refuse("cc1_option", format!("{a} without a value")) };
            i += 1;
            v.clone()
        } else {
            a.split_once('=').map(|(_, v)| v.to_string()).unwrap_or_default()
        };
        match name {
            "-triple" => c.triple = value,
            "-mrelocation-model" => c.reloc = value,
            "-mcmodel" => c.cmodel = value,
            "-target-cpu" => c.cpu = value,
            "-target-feature" => c.features.push(value),
            "-fthinlto-index" => c.index = value,
            "-O0" | "-O1" | "-O2" | "-O3" | "-Os" | "-Oz" => c.olevel = a[2..].to_string(),
            "-x" if value != "ir" => return refuse("cc1_option", format!("-x {value}")),
            "-mllvm" => {
                let opt = value.split_once('=').map(|(n, _)| n).unwrap_or(&value);
                if !MLLVM_VETTED.contains(&opt) {
                    return refuse("mllvm_option", value);
                }
                c.mllvm.push(value);
            }
            _ => {}
        }
    }
    if inputs != 1 || c.triple.is_empty() || c.reloc.is_empty() || c.index.is_empty() {
        return refuse("cc1_option", "unexpected cc1 line");
    }
    if c.olevel.is_empty() {
        // cc1 without -O is -O0.
        c.olevel = "0".into();
    }
    Ok(c)
}

/// The arguments of the job with the input, shard and output paths back in
/// place of their role markers.
pub(super) fn real_args(inv: &BackendInvocation) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    inv.hashed_args
        .iter()
        .map(|a| match a.as_str() {
            "<input>" => s(&inv.input),
            "<output>" => s(&inv.output),
            "-o<output>" => format!("-o{}", s(&inv.output)),
            "-fthinlto-index=<shard>" => format!("-fthinlto-index={}", s(&inv.shard)),
            _ => a.clone(),
        })
        .collect()
}

/// The arguments the cc1 memo is keyed on: all but preprocessor macros and
/// include directories (`-D`, `-U`, `-I`, joined or separate) and
/// dependency-file requests (`-Wp,-MMD,<file>`, `-Wp,-MD,<file>`), which
/// differ per file in kernel builds and which the driver does not turn into
/// any of the cc1 options we read or vet for IR input (tests/precise.rs
/// checks that the cc1 line is the same without them).
pub fn cc1_memo_args(args: &[String]) -> Vec<&str> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if matches!(a, "-D" | "-U" | "-I") {
            i += 1;
            continue;
        }
        if a.starts_with("-D") || a.starts_with("-U") || a.starts_with("-I") {
            continue;
        }
        if let Some(file) = a.strip_prefix("-Wp,-MMD,").or_else(|| a.strip_prefix("-Wp,-MD,")) {
            if !file.contains(',') {
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// clang's cc1 line for this job (`clang -###`), memoised per host by
/// everything it depends on: compiler identity and name, the environment
/// fields, the arguments but for [`cc1_memo_args`]'s, the working directory.
pub(super) fn cc1_line(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, cwd: &Path) -> Result<Vec<String>, Refusal> {
    let mut h = blake3::Hasher::new();
    h.update(b"cc1-v1\0");
    h.update(cwd.as_os_str().as_bytes());
    for a in cc1_memo_args(&inv.hashed_args) {
        h.update(&(a.len() as u64).to_le_bytes());
        h.update(a.as_bytes());
    }
    for (k, v) in &job.key.fields {
        if k == "compiler" || k == "compiler-name" || k.starts_with("env:") {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    // The paths of the input, shard and output are left out (the first key
    // has role markers there), so jobs with the same flags share one `-###`:
    // what we read from the line (target, relocation and code model, CPU,
    // features, -O, -mllvm, which options appear) does not name them. Their
    // extensions stay: the driver picks an input's type by its extension.
    for p in [&inv.input, &inv.shard, &inv.output] {
        h.update(p.extension().map(|e| e.as_bytes()).unwrap_or(b""));
        h.update(b"\0");
    }
    let memo = ctx.state_dir.join("precise").join(format!("cc1-{}", &hex(h.finalize().as_bytes())[..32]));
    let read_memo = || {
        let text = std::fs::read(&memo).ok()?;
        let body = text.strip_prefix(b"cc1\0")?;
        Some(
            body.split(|&b| b == 0)
                .filter(|t| !t.is_empty())
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
        )
    };
    if let Some(args) = read_memo() {
        return Ok(args);
    }
    // One `clang -###` per memo: the background children of a cold build,
    // which queue up at idle priority, wait for the first to write it
    // instead of each running the driver (18 ms of CPU each for clang-19).
    // A job in the foreground waits a little (the parallel jobs at the
    // start of a build would each run the driver), never long: an
    // idle-priority holder may not run while the build keeps the CPU busy.
    // Held until this returns.
    let lock = memo.with_extension("lock");
    let _lock = if IN_BACKGROUND.load(std::sync::atomic::Ordering::Relaxed) {
        lock_file(&lock, true)
    } else {
        lock_file_within(&lock, FOREGROUND_LOCK_WAIT)
    };
    if let Some(args) = read_memo() {
        return Ok(args);
    }
    let mut cmd = Command::new(&job.program);
    std::os::unix::process::CommandExt::arg0(&mut cmd, &inv.compiler);
    let out =
        cmd.args(real_args(inv)).arg("-###").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => return refuse("driver", format!("-### exited with {}", o.status)),
        Err(e) => return refuse("driver", format!("-###: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let jobs: Vec<&str> = text.lines().filter(|l| l.starts_with(" \"")).collect();
    if jobs.len() != 1 {
        return refuse("driver", format!("{} jobs in -###", jobs.len()));
    }
    let Some(args) = split_job_line(jobs[0]) else { return refuse("driver", "cannot read the -### line") };
    if args.get(1).map(String::as_str) != Some("-cc1") {
        return refuse("driver", "the -### job is not cc1");
    }
    let args: Vec<String> = args[1..].to_vec();
    let mut body = b"cc1\0".to_vec();
    for a in &args {
        body.extend_from_slice(a.as_bytes());
        body.push(0);
    }
    let dir = memo.parent().unwrap_or(Path::new("."));
    let _ = crate::util::write_atomic(dir, &memo, &body);
    Ok(args)
}

/// Set in the background child: it may wait for locks.
pub(super) static IN_BACKGROUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An exclusive `flock` on `path` (created), released when the file is
/// dropped: waited for when `wait`, else taken only if free. None when it
/// is not had (the caller goes on unlocked: at worst it repeats work
/// another process is doing).
/// How long a job in the foreground waits for another process computing a
/// memo it needs (`clang -###`, the helper's and the shim's checks take
/// 10-40 ms): past it, it computes the memo itself.
pub(super) const FOREGROUND_LOCK_WAIT: Duration = Duration::from_millis(500);

/// [`lock_file`], waiting at most `max` for it (`beneath::lock_within`, the
/// project's bounded wait, on one open of the file).
pub(super) fn lock_file_within(path: &Path, max: Duration) -> Option<std::fs::File> {
    let _ = std::fs::create_dir_all(path.parent()?);
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    crate::cachedir::beneath::lock_within(&f, true, max).ok()?;
    Some(f)
}

pub(super) fn lock_file(path: &Path, wait: bool) -> Option<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let _ = std::fs::create_dir_all(path.parent()?);
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(f.as_raw_fd(), op) } == 0).then_some(f)
}

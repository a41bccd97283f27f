//! Running the real compiler: by `exec` when the cache has nothing to do with
//! the command (identical stdio, exit status and signals, no lingering parent),
//! or as a child whose stderr we capture to store and replay.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Replaces this process with the compiler. Only returns by exiting 127 when
/// the compiler cannot be started, as a shell would.
pub fn exec_compiler(compiler: &str, args: &[OsString]) -> ! {
    let program = crate::compiler::resolve(compiler).unwrap_or_else(|_| compiler.into());
    let err = Command::new(&program).arg0(compiler).args(args).exec();
    eprintln!("ltocache: cannot run {compiler}: {err}");
    std::process::exit(127)
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
    /// The compiler's CPU time (user + system).
    pub cpu_ns: i64,
}

/// Runs the compiler with stdin inherited and stdout and stderr captured
/// (both are printed by the caller; stdout output makes the result uncacheable).
pub fn run_captured(program: &Path, arg0: &str, args: &[OsString]) -> Result<Finished> {
    let start = Instant::now();
    let children_before = crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut child = Command::new(program)
        .arg0(arg0)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Read stdout on a thread so neither pipe can fill up and stall clang.
    let out_pipe = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = out_pipe {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_end(&mut stderr).context("reading the compiler's stderr")?;
    }
    let stdout = out_thread.join().unwrap_or_default();
    let status = child.wait().context("waiting for the compiler")?;
    let cpu_ns = crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - children_before;
    Ok(Finished { status, stdout, stderr, duration: start.elapsed(), cpu_ns })
}

/// Exits the way the compiler did: same code, or the same signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(sig) = status.signal() {
        // SAFETY: restoring the default disposition and raising a signal on
        // ourselves has no memory-safety preconditions.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(1)
}

//! Running the real compiler: by `exec` when the cache has nothing to do with
//! the command (identical stdio, exit status and signals, no lingering parent),
//! or as a child whose stderr we capture to store and replay.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Replaces this process with the compiler. Only returns by exiting 127 when
/// the compiler cannot be started, as a shell would.
pub fn exec_compiler(compiler: &str, args: &[OsString]) -> ! {
    // Never exec the bare name: when PATH holds no compiler but ltocache
    // itself (a masquerade symlink `clang-77 -> ltocache` and no real
    // clang-77), `execvp` would find the symlink and loop forever.
    let program = match crate::key::compiler::resolve(compiler) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ltocache: cannot run {compiler}: {e:#}");
            std::process::exit(127)
        }
    };
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

/// What a compile gets besides its arguments (precise mode's shim,
/// crate::backend::precise::shim): environment variables, and one descriptor of ours
/// it inherits (every other one is close-on-exec).
#[derive(Default)]
pub struct Extra {
    pub env: Vec<(OsString, OsString)>,
    pub inherit_fd: Option<std::os::fd::RawFd>,
}

impl Extra {
    /// Applies itself to a command about to be spawned.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(fd) = self.inherit_fd {
            // SAFETY: fcntl is async-signal-safe; the descriptor is ours and
            // open until the spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
}

/// Runs the compiler with stdin inherited and stdout and stderr captured
/// (both are printed by the caller; stdout output makes the result uncacheable).
pub fn run_captured(program: &Path, arg0: &str, args: &[OsString]) -> Result<Finished> {
    run_captured_with(program, arg0, args, None, None)
}

/// One question a running compile may ask on a socket of ours (precise
/// mode's shim): a line, answered with one byte by `answer`, which is given
/// the line and the compile's stderr so far (everything it wrote before
/// asking: read before `answer` is called).
pub struct Dialog<'a> {
    pub fd: std::os::fd::RawFd,
    pub answer: &'a mut dyn FnMut(&str, &[u8]) -> u8,
}

/// [`run_captured`] with what [`Extra`] adds, and a [`Dialog`].
pub fn run_captured_with(
    program: &Path,
    arg0: &str,
    args: &[OsString],
    extra: Option<&Extra>,
    dialog: Option<&mut Dialog>,
) -> Result<Finished> {
    let start = Instant::now();
    keep_spawn_memory_mapped();
    let children_before = crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut cmd = Command::new(program);
    if let Some(extra) = extra {
        extra.apply(&mut cmd);
    }
    let mut child = cmd
        .arg0(arg0)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Drain both pipes from this thread with poll(), so neither can fill up
    // and stall clang (a reader thread cost ~70 µs of CPU per miss).
    let (stdout, stderr) = match drain(child.stdout.take(), child.stderr.take(), dialog) {
        Ok(out) => out,
        Err(e) => {
            // The caller runs the compile again: this one must not go on
            // beside it (or stay blocked on its shim's question).
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("reading the compiler's output");
        }
    };
    let status = child.wait().context("waiting for the compiler")?;
    let cpu_ns = crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - children_before;
    Ok(Finished { status, stdout, stderr, duration: start.elapsed(), cpu_ns })
}

/// musl's `posix_spawn` file actions (the two `dup2`s that connect the
/// pipes) are `malloc`'d in the C library's allocator. If they are its only
/// blocks of their size, freeing them after the spawn unmaps their page, and
/// an unmap after the child ran costs an interrupt to the CPU it ran on (see
/// [`crate::codec`]). One block of the same size class (an action is 40
/// bytes), allocated first and never freed, keeps that page mapped. Costs
/// nothing but 48 bytes; with another allocator it is merely unneeded.
fn keep_spawn_memory_mapped() {
    #[cfg(target_env = "musl")]
    {
        static PINNED: std::sync::Once = std::sync::Once::new();
        // SAFETY: malloc of a small size; the block is deliberately never
        // freed (black_box: an unused allocation would be optimised away).
        PINNED.call_once(|| unsafe {
            std::hint::black_box(libc::malloc(40));
        });
    }
}

/// A shim's question, once `question` holds a whole line (the wrapper's
/// [`drain`] and the distributor's pool): reads what the compile wrote to
/// stderr before asking (it is in the pipe `err_fd` by now) into `stderr`,
/// has `answer` decide on the line and that stderr, and sends its byte on
/// `socket` (MSG_NOSIGNAL: a peer gone is an error, not SIGPIPE). True when
/// the question was answered and is over.
pub fn answer_when_asked(
    question: &[u8],
    err_fd: std::os::fd::RawFd,
    stderr: &mut Vec<u8>,
    chunk: &mut [u8],
    socket: std::os::fd::RawFd,
    answer: impl FnOnce(&str, &[u8]) -> u8,
) -> bool {
    let Some(end) = question.iter().position(|&b| b == b'\n') else { return false };
    read_available(err_fd, stderr, chunk);
    let byte = answer(&String::from_utf8_lossy(&question[..end]), stderr);
    // SAFETY: one byte from our stack to a socket the caller holds open.
    unsafe { libc::send(socket, &byte as *const u8 as *const libc::c_void, 1, libc::MSG_NOSIGNAL) };
    true
}

/// Reads both pipes to their ends, whichever has data first, and answers the
/// dialog's one question when it comes.
fn drain(
    out: Option<ChildStdout>,
    err: Option<ChildStderr>,
    mut dialog: Option<&mut Dialog>,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    let mut bufs = (Vec::new(), Vec::new());
    // (fd, open) per pipe; the ChildStdout/ChildStderr values keep them open
    // until this function returns. The third is the dialog's socket.
    let mut fds = [
        out.as_ref().map_or(-1, |p| p.as_raw_fd()),
        err.as_ref().map_or(-1, |p| p.as_raw_fd()),
        dialog.as_ref().map_or(-1, |d| d.fd),
    ];
    let mut question = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while fds[..2].iter().any(|&fd| fd >= 0) {
        let mut pfds: Vec<libc::pollfd> =
            fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: pfds is a valid array of pollfd of the given length; a
        // negative fd is ignored by poll.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, p) in pfds.iter().enumerate() {
            if fds[i] < 0 || p.revents == 0 {
                continue;
            }
            // Readable, hung up or in error: a read returns data, 0 at the end, or the error.
            // SAFETY: reading into our own buffer from a pipe fd we hold open.
            let got = unsafe { libc::read(fds[i], chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
            match got {
                0 => fds[i] = -1,
                n if n > 0 && i == 2 => {
                    question.extend_from_slice(&chunk[..n as usize]);
                    // (fds[2] is open only with a dialog.)
                    let Some(d) = dialog.as_mut() else { continue };
                    if answer_when_asked(&question, fds[1], &mut bufs.1, &mut chunk, fds[2], |l, e| (d.answer)(l, e)) {
                        fds[2] = -1;
                    }
                }
                n if n > 0 => {
                    let buf = if i == 0 { &mut bufs.0 } else { &mut bufs.1 };
                    buf.extend_from_slice(&chunk[..n as usize]);
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if i == 2 {
                        fds[2] = -1;
                    } else if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
    drop((out, err));
    Ok(bufs)
}

/// Reads what a pipe holds now, without waiting.
pub(crate) fn read_available(fd: i32, buf: &mut Vec<u8>, chunk: &mut [u8]) {
    if fd < 0 {
        return;
    }
    loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd of ours; zero timeout.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
            return;
        }
        // SAFETY: reading into our buffer from a pipe we hold open.
        let got = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
        if got <= 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..got as usize]);
    }
}

/// Ends a wrapped compile with `code`: stdout flushed, then `_exit`.
///
/// Not `std::process::exit`: its clean-up unmaps the main thread's signal
/// stack, and after a miss an unmap costs an interrupt to the CPU the
/// compiler's `vfork` child ran on (see [`crate::codec`]). Nothing else is
/// left to do at that point: every file ltocache wrote is closed.
pub fn exit_now(code: i32) -> ! {
    flush_stdout();
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

fn flush_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Exits the way the compiler did: same code, or the same signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        exit_now(code);
    }
    if let Some(sig) = status.signal() {
        // The compiler's last stdout line may still be in our buffer.
        flush_stdout();
        // SAFETY: restoring the default disposition and raising a signal on
        // ourselves has no memory-safety preconditions.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        exit_now(128 + sig);
    }
    exit_now(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pipes_are_drained_whole_even_past_their_buffers() {
        // 300 KiB to each stream, interleaved: more than a pipe holds, so a
        // reader that waited on one stream while the other filled would hang.
        let script = "i=0; while [ $i -lt 300 ]; do head -c 1024 /dev/zero | tr '\\0' o; \
                      head -c 1024 /dev/zero | tr '\\0' e >&2; i=$((i+1)); done; exit 3";
        let args: Vec<OsString> = vec!["-c".into(), script.into()];
        let f = run_captured(Path::new("/bin/sh"), "sh", &args).unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, vec![b'o'; 300 * 1024]);
        assert_eq!(f.stderr, vec![b'e'; 300 * 1024]);
    }
}

//! Several compilers at once, each with its stdout and stderr captured, all
//! drained from this one thread with poll() (as `exec::run_captured` does for
//! one), and each reaped with wait4 so its own CPU time is known.

use crate::exec::Finished;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

struct Running {
    /// Caller's token for the job.
    tag: usize,
    pid: libc::pid_t,
    /// stdout, stderr; None once at its end.
    pipes: [Option<OwnedFd>; 2],
    out: [Vec<u8>; 2],
    start: Instant,
    /// The socket a child may ask one question on (precise mode's shim),
    /// until it is answered, and what came of the question so far.
    ask: Option<std::os::fd::RawFd>,
    question: Vec<u8>,
}

#[derive(Default)]
pub struct Pool {
    running: Vec<Running>,
}

impl Pool {
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts `program` (called `arg0`) with stdin from /dev/null: parallel
    /// jobs cannot share a terminal's input, and a backend reads none.
    #[cfg(test)]
    pub fn spawn(&mut self, tag: usize, program: &Path, arg0: &str, args: &[OsString]) -> std::io::Result<()> {
        self.spawn_with(tag, program, arg0, args, None, None)
    }

    /// [`Pool::spawn`] with what `extra` adds (precise mode's shim), and a
    /// socket the child may ask one question on ([`Pool::wait_some`]).
    pub fn spawn_with(
        &mut self,
        tag: usize,
        program: &Path,
        arg0: &str,
        args: &[OsString],
        extra: Option<&crate::exec::Extra>,
        ask: Option<std::os::fd::RawFd>,
    ) -> std::io::Result<()> {
        let mut cmd = Command::new(program);
        if let Some(extra) = extra {
            extra.apply(&mut cmd);
        }
        let mut child =
            cmd.arg0(arg0).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let out: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
        let err: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
        // The child is reaped by wait4 below, not by std (dropping a Child
        // neither waits for it nor kills it).
        self.running.push(Running {
            tag,
            pid: child.id() as libc::pid_t,
            pipes: [out, err],
            out: [Vec::new(), Vec::new()],
            start: Instant::now(),
            ask,
            question: Vec::new(),
        });
        Ok(())
    }

    /// Waits until at least one child has finished, or `extra_fd` (make's
    /// jobserver) is readable, and returns the finished ones with their tags.
    /// Returns at once with nothing when no child runs. A child's question
    /// is answered meanwhile with the byte `answer` gives for its tag, the
    /// line and its stderr so far (read before: written before it asked).
    pub fn wait_some(
        &mut self,
        extra_fd: Option<i32>,
        answer: &mut dyn FnMut(usize, &str, &[u8]) -> u8,
    ) -> Vec<(usize, Finished)> {
        let mut done = Vec::new();
        if self.running.is_empty() {
            return done;
        }
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let mut pfds: Vec<libc::pollfd> = Vec::new();
            let mut owners: Vec<(usize, usize)> = Vec::new();
            for (ri, r) in self.running.iter().enumerate() {
                for (pi, p) in r.pipes.iter().enumerate() {
                    if let Some(fd) = p {
                        pfds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                        owners.push((ri, pi));
                    }
                }
                if let Some(fd) = r.ask {
                    pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
                    owners.push((ri, 2));
                }
            }
            // A child that closed both pipes has ended (or will in a moment).
            if let Some(ri) = self.running.iter().position(|r| r.pipes.iter().all(Option::is_none)) {
                let r = self.running.swap_remove(ri);
                done.push((r.tag, reap(r)));
                return done;
            }
            let extra = extra_fd.map(|fd| {
                pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
                pfds.len() - 1
            });
            // SAFETY: pfds is a valid array of the given length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Not expected; read what is there on the next round rather
                // than spin (poll fails only for bad arguments).
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            for (i, &(ri, pi)) in owners.iter().enumerate() {
                if pfds[i].revents == 0 {
                    continue;
                }
                let r = &mut self.running[ri];
                if pi == 2 {
                    let Some(fd) = r.ask else { continue };
                    // SAFETY: reading into our buffer from a socket the caller holds open.
                    let got = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
                    if got <= 0 {
                        r.ask = None;
                        continue;
                    }
                    r.question.extend_from_slice(&chunk[..got as usize]);
                    let err = r.pipes[1].as_ref().map_or(-1, |p| p.as_raw_fd());
                    let tag = r.tag;
                    let ask = |l: &str, e: &[u8]| answer(tag, l, e);
                    if crate::exec::answer_when_asked(&r.question, err, &mut r.out[1], &mut chunk, fd, ask) {
                        r.ask = None;
                    }
                    continue;
                }
                let fd = r.pipes[pi].as_ref().unwrap().as_raw_fd();
                // SAFETY: reading into our buffer from a pipe we hold open.
                let got = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
                if got > 0 {
                    r.out[pi].extend_from_slice(&chunk[..got as usize]);
                } else if got == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    r.pipes[pi] = None;
                }
            }
            if extra.is_some_and(|i| pfds[i].revents != 0) {
                return done;
            }
        }
    }
}

/// Waits for the child and takes its exit status and resource usage.
fn reap(r: Running) -> Finished {
    let mut status: libc::c_int = 0;
    // SAFETY: wait4 writes one rusage struct into memory we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child.
        let got = unsafe { libc::wait4(r.pid, &mut status, 0, &mut ru) };
        if got == r.pid {
            break;
        }
        if got < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Reaped by someone else (cannot happen in this process): report
            // it as failed so the job's output is checked, not trusted.
            status = 1 << 8;
            break;
        }
    }
    let tv = |t: libc::timeval| t.tv_sec * 1_000_000_000 + t.tv_usec * 1_000;
    let [stdout, stderr] = r.out;
    Finished {
        status: ExitStatus::from_raw(status),
        stdout,
        stderr,
        duration: r.start.elapsed(),
        cpu_ns: tv(ru.ru_utime) + tv(ru.ru_stime),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_children_in_parallel_and_reports_each_one() {
        let mut pool = Pool::default();
        let sh = Path::new("/bin/sh");
        for (tag, script) in [(7usize, "echo out7; echo err7 >&2; exit 3"), (9, "head -c 200000 /dev/zero >&2")] {
            pool.spawn(tag, sh, "sh", &["-c".into(), script.into()]).unwrap();
        }
        let mut got = Vec::new();
        while !pool.is_empty() {
            got.extend(pool.wait_some(None, &mut |_, _, _| b'g'));
        }
        got.sort_by_key(|g| g.0);
        assert_eq!(got[0].0, 7);
        assert_eq!(got[0].1.status.code(), Some(3));
        assert_eq!(got[0].1.stdout, b"out7\n");
        assert_eq!(got[0].1.stderr, b"err7\n");
        assert_eq!(got[1].1.status.code(), Some(0));
        assert_eq!(got[1].1.stderr.len(), 200000);
    }

    #[test]
    fn cpu_time_is_each_childs_own() {
        let mut pool = Pool::default();
        let sh = Path::new("/bin/sh");
        // One child burns CPU, the other sleeps: the sleeper's figure stays small.
        pool.spawn(1, sh, "sh", &["-c".into(), "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done".into()]).unwrap();
        pool.spawn(2, sh, "sh", &["-c".into(), "sleep 0.2".into()]).unwrap();
        let mut got = Vec::new();
        while !pool.is_empty() {
            got.extend(pool.wait_some(None, &mut |_, _, _| b'g'));
        }
        got.sort_by_key(|g| g.0);
        assert!(got[0].1.cpu_ns > 4 * got[1].1.cpu_ns, "{} vs {}", got[0].1.cpu_ns, got[1].1.cpu_ns);
    }
}

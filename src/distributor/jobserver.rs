//! How many backends may run at once: GNU make's jobserver when the link runs
//! under `make -jN` (so a link does not multiply make's limit by the number
//! of CPUs), else `--jobs=N`, else the number of CPUs.
//!
//! Jobserver protocol: every client holds one implicit token; each further
//! parallel job takes one byte from the jobserver and gives it back when the
//! job ends. MAKEFLAGS names the jobserver as `--jobserver-auth=R,W` (inherited
//! pipe descriptors; `--jobserver-fds=` before make 4.2) or
//! `--jobserver-auth=fifo:PATH` (make 4.4).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub enum Limit {
    /// A fixed number of parallel jobs.
    Fixed(usize),
    /// Tokens from make's jobserver.
    Jobserver(Jobserver),
}

pub struct Jobserver {
    /// Our own non-blocking descriptor for reading tokens: a blocking read
    /// could wait while our children's pipes fill up.
    read: OwnedFd,
    /// Where tokens go back (the inherited descriptor, or our own on the fifo).
    write: WriteEnd,
    /// The token bytes we hold beyond the implicit one, to give back exactly.
    held: Vec<u8>,
}

enum WriteEnd {
    /// make's descriptor: not ours to close.
    Inherited(i32),
    Owned(OwnedFd),
}

impl Limit {
    /// From MAKEFLAGS (when it names a usable jobserver), else `jobs`, else
    /// the number of CPUs. The string says which, for the log.
    pub fn choose(makeflags: Option<&str>, jobs: Option<usize>) -> (Limit, String) {
        if let Some(flags) = makeflags {
            match Jobserver::from_makeflags(flags) {
                Some(Ok(js)) => return (Limit::Jobserver(js), "make's jobserver".into()),
                Some(Err(e)) => {
                    // make says there is a jobserver but we cannot reach it
                    // (a recipe without '+', closed descriptors): carry on
                    // with the other limits rather than fail the link.
                    let n = jobs.unwrap_or_else(cpus);
                    return (Limit::Fixed(n), format!("{n} jobs (jobserver unusable: {e})"));
                }
                None => {}
            }
        }
        match jobs {
            Some(n) => (Limit::Fixed(n.max(1)), format!("{n} jobs (--jobs)")),
            None => {
                let n = cpus();
                (Limit::Fixed(n), format!("{n} jobs (CPUs)"))
            }
        }
    }

    /// The jobserver's read descriptor, to poll for a token when a job waits.
    pub fn poll_fd(&self) -> Option<i32> {
        match self {
            Limit::Jobserver(js) => Some(js.read.as_raw_fd()),
            Limit::Fixed(_) => None,
        }
    }

    /// May one more job start, with `running` jobs running now? Takes a
    /// jobserver token when needed (never blocks).
    pub fn try_start(&mut self, running: usize) -> bool {
        match self {
            Limit::Fixed(n) => running < *n,
            Limit::Jobserver(js) => running == 0 || js.try_acquire(running),
        }
    }

    /// A job ended, leaving `running` jobs running.
    pub fn finished(&mut self, running: usize) {
        if let Limit::Jobserver(js) = self {
            // The implicit token covers one job; every other running job
            // holds a byte.
            while js.held.len() > running.saturating_sub(1) {
                js.release_one();
            }
        }
    }
}

impl Jobserver {
    /// `None`: MAKEFLAGS names no jobserver.
    fn from_makeflags(flags: &str) -> Option<std::io::Result<Jobserver>> {
        // The last one wins, as in make (a sub-make's flags come last).
        let auth = flags
            .split_ascii_whitespace()
            .filter_map(|w| w.strip_prefix("--jobserver-auth=").or_else(|| w.strip_prefix("--jobserver-fds=")))
            .next_back()?;
        Some(Self::open(auth))
    }

    fn open(auth: &str) -> std::io::Result<Jobserver> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("jobserver {auth:?}"));
        if let Some(path) = auth.strip_prefix("fifo:") {
            let read = open_path(path, libc::O_RDONLY | libc::O_NONBLOCK)?;
            let write = open_path(path, libc::O_WRONLY)?;
            return Ok(Jobserver { read, write: WriteEnd::Owned(write), held: Vec::new() });
        }
        let (r, w) = auth.split_once(',').ok_or_else(bad)?;
        let (r, w): (i32, i32) = (r.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
        if r < 0 || w < 0 {
            return Err(bad());
        }
        for fd in [r, w] {
            // SAFETY: F_GETFD only queries the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // A descriptor of our own on the same pipe, so that O_NONBLOCK does
        // not change make's (file status flags belong to the open file
        // description, which make and its other children share).
        let read = open_path(&format!("/proc/self/fd/{r}"), libc::O_RDONLY | libc::O_NONBLOCK)?;
        Ok(Jobserver { read, write: WriteEnd::Inherited(w), held: Vec::new() })
    }

    fn try_acquire(&mut self, running: usize) -> bool {
        if self.held.len() >= running {
            // Already hold a token for this slot (returned lazily).
            return true;
        }
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into our buffer from our own descriptor.
        let n = unsafe { libc::read(self.read.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 1) };
        if n == 1 {
            self.held.push(b[0]);
            true
        } else {
            false
        }
    }

    fn release_one(&mut self) {
        let Some(b) = self.held.pop() else { return };
        let fd = match &self.write {
            WriteEnd::Inherited(fd) => *fd,
            WriteEnd::Owned(fd) => fd.as_raw_fd(),
        };
        loop {
            // SAFETY: writing one byte from our buffer.
            let n = unsafe { libc::write(fd, [b].as_ptr() as *const libc::c_void, 1) };
            if n == 1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

impl Drop for Jobserver {
    /// Every token goes back, whatever happened: a lost token shrinks make's
    /// parallelism for the rest of the build.
    fn drop(&mut self) {
        while !self.held.is_empty() {
            self.release_one();
        }
    }
}

fn open_path(path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the descriptor returned is ours.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe_with_tokens(n: usize) -> (i32, i32) {
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two descriptors into our array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        for _ in 0..n {
            // SAFETY: one byte from a static buffer.
            assert_eq!(unsafe { libc::write(fds[1], b"+".as_ptr() as *const libc::c_void, 1) }, 1);
        }
        (fds[0], fds[1])
    }

    fn pending(fd: i32) -> i32 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n
    }

    #[test]
    fn pipe_jobserver_limits_and_gives_every_token_back() {
        let (r, w) = pipe_with_tokens(2);
        let (mut limit, how) = Limit::choose(Some(&format!("-j3 --jobserver-auth={r},{w}")), Some(8));
        assert_eq!(how, "make's jobserver");
        // The implicit token, then the two in the pipe, then no more.
        assert!(limit.try_start(0));
        assert!(limit.try_start(1));
        assert!(limit.try_start(2));
        assert!(!limit.try_start(3), "a fourth job without a token");
        assert_eq!(pending(r), 0);
        limit.finished(2);
        assert_eq!(pending(r), 1);
        drop(limit);
        assert_eq!(pending(r), 2, "all tokens returned");
        // make's descriptor keeps blocking mode.
        // SAFETY: F_GETFL queries flags.
        assert_eq!(unsafe { libc::fcntl(r, libc::F_GETFL) } & libc::O_NONBLOCK, 0);
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }

    #[test]
    fn fifo_jobserver_and_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("js");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Hold the fifo open for both ends as make does, with one token.
        let keep = open_path(fifo.to_str().unwrap(), libc::O_RDWR).unwrap();
        // SAFETY: one byte.
        unsafe { libc::write(keep.as_raw_fd(), b"+".as_ptr() as *const libc::c_void, 1) };
        let (mut limit, how) = Limit::choose(Some(&format!("-j2 --jobserver-auth=fifo:{}", fifo.display())), None);
        assert_eq!(how, "make's jobserver");
        assert!(limit.try_start(0) && limit.try_start(1) && !limit.try_start(2));
        drop(limit);
        assert_eq!(pending(keep.as_raw_fd()), 1);

        // Closed descriptors: the other limits apply.
        let (limit, how) = Limit::choose(Some("--jobserver-auth=900,901"), Some(3));
        assert!(matches!(limit, Limit::Fixed(3)), "{how}");
        let (limit, _) = Limit::choose(Some("-k"), Some(5));
        assert!(matches!(limit, Limit::Fixed(5)));
        let (limit, _) = Limit::choose(None, None);
        assert!(matches!(limit, Limit::Fixed(n) if n == cpus()));
    }
}

//! Every file ltocache opens inside the cache directory or its state
//! directory goes through here: by descriptor, beneath a directory opened
//! once, never through a symlink, never blocking, and only regular files of a
//! sane size are read.
//!
//! Why one module: a shared cache directory is writable by every member of
//! its group, and anything opened there by a predictable name may be a
//! symlink (to the victim's `~/.bashrc`), a FIFO (a hang), a directory or a
//! sparse terabyte (docs/store.md, "Threat model"). Checking at each call
//! site missed some; here every path is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6+), or, where
//! that system call is missing or filtered, by a walk of `openat(...,
//! O_NOFOLLOW)` one component at a time. Directory operations (unlink,
//! rename, mkdir, utimens) act on a name inside a directory opened the same
//! way, so a directory swapped for a symlink between two calls is refused,
//! not followed.
//!
//! Paths given here are relative and made of plain names: no `..`, no `.`,
//! no empty component, nothing absolute.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// The largest entry, record or memo read into memory: inline outputs are
/// capped at 64 MiB (`Config::store`), plus stderr and the header.
pub const READ_CAP: u64 = 80 << 20;
/// The largest blob mapped and hashed: no object is this big, and hashing a
/// planted sparse file of this size takes about a second.
pub const BLOB_CAP: u64 = 4 << 30;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// 0: not tried yet, 1: openat2 works, 2: use the walk.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// An open directory (the cache directory, the state directory, or one
/// beneath them) that relative paths are resolved under.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// True for errors that mean "something that is not ours is at this path":
/// a symlink (`ELOOP`), a non-directory in the middle (`ENOTDIR`), an escape
/// (`EXDEV`), or a file we refused after opening it (`InvalidData`).
pub fn is_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV) | Some(libc::EISDIR))
        || e.kind() == io::ErrorKind::InvalidData
}

/// True for errors that mean the file went away: deleted (`ENOENT`), or
/// deleted by another NFS client after we looked it up (`ESTALE`). A miss,
/// never an error.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE))
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The plain names of a relative path, or an error for anything else.
fn names(rel: &Path) -> io::Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a plain relative path: {}", rel.display()),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    }
    Ok(out)
}

fn retry<T: PartialOrd + From<i8>>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= T::from(0) {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn openat(dirfd: RawFd, name: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a NUL-terminated name we own; openat returns a new descriptor or -1.
    let fd = retry(|| unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: a descriptor we just opened and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` beneath `dirfd` without following any symlink. `walk` forces
/// the fallback (for tests); otherwise openat2 is tried first.
fn open_beneath(dirfd: RawFd, rel: &Path, flags: libc::c_int, mode: libc::mode_t, walk: bool) -> io::Result<OwnedFd> {
    let parts = names(rel)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if !walk && OPENAT2.load(Ordering::Relaxed) != 2 {
        let c = cstr(rel.as_os_str().as_bytes())?;
        let how = OpenHow {
            flags: flags as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 { mode as u64 } else { 0 },
            resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 reads the NUL-terminated path and the open_how struct we own.
        let r = retry(|| unsafe {
            libc::syscall(libc::SYS_openat2, dirfd, c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
        });
        match r {
            Ok(fd) => {
                OPENAT2.store(1, Ordering::Relaxed);
                // SAFETY: a descriptor we just opened and nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            // Missing (kernel < 5.6) or filtered by a seccomp profile: walk.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
                    && OPENAT2.load(Ordering::Relaxed) == 0 =>
            {
                OPENAT2.store(2, Ordering::Relaxed);
            }
            // RESOLVE_BENEATH reports a concurrent rename with EAGAIN: the walk decides.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    let (last, dirs) = parts.split_last().expect("names() is never empty");
    let mut cur: Option<OwnedFd> = None;
    for d in dirs {
        let at = cur.as_ref().map_or(dirfd, |f| f.as_raw_fd());
        cur = Some(openat(at, d, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?);
    }
    openat(cur.as_ref().map_or(dirfd, |f| f.as_raw_fd()), last, flags, mode)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat writes one stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    retry(|| unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn is_reg(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// What [`Dir::stat`] says of a name.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    pub fn of_raw(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn modified(&self) -> std::time::SystemTime {
        if self.mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH
        }
    }
}

impl Dir {
    /// Opens a directory named by the user (the cache directory, a state
    /// directory): the path is followed as given, symlinks included — it is
    /// theirs to name. What lies beneath is never followed.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = openat(libc::AT_FDCWD, path.as_os_str().as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// [`Dir::open_root`], creating the directory (and its parents) when missing.
    pub fn create_root(path: &Path) -> io::Result<Dir> {
        match Dir::open_root(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path)?;
                Dir::open_root(path)
            }
            r => r,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` under this directory, for messages.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `/proc/self/fd/N`: a path that names this very directory, for APIs
    /// that take paths (SQLite), so they cannot be redirected either.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Owner, mode and identity of the directory itself.
    pub fn stat_self(&self) -> io::Result<Stat> {
        fstat(self.fd.as_raw_fd()).map(|s| Stat::of_raw(&s))
    }

    /// Opens `rel` (O_NOFOLLOW, O_NONBLOCK, O_CLOEXEC added).
    pub fn open(&self, rel: impl AsRef<Path>, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let fd = open_beneath(self.fd.as_raw_fd(), rel.as_ref(), flags | libc::O_NONBLOCK, mode, false)?;
        Ok(File::from(fd))
    }

    /// Opens `rel` and checks with `fstat` that it is a regular file of at most
    /// `cap` bytes; anything else is refused ([`is_refused`]) before a byte is
    /// read. Returns the file and its size.
    pub fn open_regular(
        &self,
        rel: impl AsRef<Path>,
        flags: libc::c_int,
        mode: libc::mode_t,
        cap: u64,
    ) -> io::Result<(File, libc::stat)> {
        let f = self.open(rel, flags, mode)?;
        let st = check_regular(&f, cap)?;
        Ok((f, st))
    }

    /// [`Dir::open_regular`] with `O_CREAT`, creating missing parent
    /// directories beneath this one when the open says they are missing.
    pub fn open_creating(
        &self,
        rel: impl AsRef<Path>,
        flags: libc::c_int,
        mode: libc::mode_t,
        cap: u64,
    ) -> io::Result<(File, libc::stat)> {
        let rel = rel.as_ref();
        match self.open_regular(rel, flags | libc::O_CREAT, mode, cap) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    self.create_dirs(parent)?;
                }
                self.open_regular(rel, flags | libc::O_CREAT, mode, cap)
            }
            r => r,
        }
    }

    /// The whole of a regular file of at most `cap` bytes.
    pub fn read(&self, rel: impl AsRef<Path>, cap: u64) -> io::Result<Vec<u8>> {
        let (f, st) = self.open_regular(rel, libc::O_RDONLY, 0, cap)?;
        crate::util::read_sized(&f, st.st_size as u64)
    }

    /// A directory beneath this one.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> io::Result<Dir> {
        let rel = rel.as_ref();
        let fd = open_beneath(self.fd.as_raw_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, false)?;
        Ok(Dir { fd, path: self.path.join(rel) })
    }

    /// The directory holding `rel` (opened as O_PATH: enough for the `*at`
    /// calls) and `rel`'s last name.
    fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<(Option<OwnedFd>, &'a [u8])> {
        let parts = names(rel)?;
        let last = *parts.last().expect("names() is never empty");
        match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            None => Ok((None, last)),
            Some(p) => {
                Ok((Some(open_beneath(self.fd.as_raw_fd(), p, libc::O_PATH | libc::O_DIRECTORY, 0, false)?), last))
            }
        }
    }

    fn at(&self, parent: &Option<OwnedFd>) -> RawFd {
        parent.as_ref().map_or(self.fd.as_raw_fd(), |f| f.as_raw_fd())
    }

    /// Creates `rel` and its missing parents beneath this directory (mode
    /// 0777 less the umask; a setgid parent passes its group on).
    pub fn create_dirs(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let parts = names(rel)?;
        let mut cur: Option<OwnedFd> = None;
        for d in parts {
            let at = cur.as_ref().map_or(self.fd.as_raw_fd(), |f| f.as_raw_fd());
            let c = cstr(d)?;
            // SAFETY: mkdirat reads the NUL-terminated name we own.
            match retry(|| unsafe { libc::mkdirat(at, c.as_ptr(), 0o777) }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            cur = Some(openat(at, d, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?);
        }
        Ok(())
    }

    /// Removes the file (or symlink, FIFO, ...) `rel` itself; never what it points to.
    pub fn unlink(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel.as_ref())?;
        let c = cstr(name)?;
        // SAFETY: unlinkat reads the NUL-terminated name we own.
        retry(|| unsafe { libc::unlinkat(self.at(&parent), c.as_ptr(), 0) }).map(drop)
    }

    /// Renames `from` to `to`, both beneath this directory; neither is followed.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (pf, nf) = self.parent_of(from.as_ref())?;
        let (pt, nt) = self.parent_of(to.as_ref())?;
        let (cf, ct) = (cstr(nf)?, cstr(nt)?);
        // SAFETY: renameat reads the two NUL-terminated names we own.
        retry(|| unsafe { libc::renameat(self.at(&pf), cf.as_ptr(), self.at(&pt), ct.as_ptr()) }).map(drop)
    }

    /// Sets `rel`'s times to "now" by the file's own clock (the server's on
    /// NFS); a symlink there is refused, not followed.
    pub fn touch(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel.as_ref())?;
        let c = cstr(name)?;
        // SAFETY: NUL-terminated name we own; NULL times means "now".
        retry(|| unsafe { libc::utimensat(self.at(&parent), c.as_ptr(), std::ptr::null(), libc::AT_SYMLINK_NOFOLLOW) })
            .map(drop)
    }

    /// `lstat` of `rel`: what is there, not what it points to.
    pub fn stat(&self, rel: impl AsRef<Path>) -> io::Result<Stat> {
        let (parent, name) = self.parent_of(rel.as_ref())?;
        let c = cstr(name)?;
        // SAFETY: fstatat writes one stat struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        retry(|| unsafe { libc::fstatat(self.at(&parent), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(Stat::of_raw(&st))
    }

    /// The names in the directory `rel` (`None`: this one).
    pub fn names(&self, rel: Option<&Path>) -> io::Result<Vec<Vec<u8>>> {
        match rel {
            None => crate::util::dir_names_fd(self.fd.as_raw_fd()),
            Some(r) => crate::util::dir_names_fd(self.subdir(r)?.fd.as_raw_fd()),
        }
    }

    /// Writes `data` to `dest` atomically: a new file in `tmp` (a directory
    /// beneath this one), then rename. Both directories are created when
    /// missing. A directory planted at `dest` is moved into `tmp` first
    /// (renaming a file over a directory fails), to be swept by cleanup.
    pub fn write_atomic(&self, tmp: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let t = tmp.join(crate::util::temp_name(""));
        let (mut f, _) = self.open_creating(&t, libc::O_WRONLY | libc::O_EXCL, 0o666, u64::MAX)?;
        let result = f.write_all(data).and_then(|()| self.rename_into_place(tmp, &t, dest));
        if result.is_err() {
            let _ = self.unlink(&t);
        }
        result
    }

    /// Renames `from` to `dest`, creating `dest`'s directory when missing and
    /// moving a directory found at `dest` into `tmp`.
    pub fn rename_into_place(&self, tmp: &Path, from: &Path, dest: &Path) -> io::Result<()> {
        for _ in 0..3 {
            match self.rename(from, dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                        self.create_dirs(parent)?;
                    }
                }
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
                {
                    self.rename(dest, tmp.join(crate::util::temp_name("").replace(".tmp", ".junk")))?;
                }
                Err(e) => return Err(e),
            }
        }
        self.rename(from, dest)
    }

    /// Removes `rel` whatever it is: a file or symlink is unlinked, a
    /// directory emptied by descriptor first (never through a symlink) and
    /// removed. At most `depth` levels deep: nothing ltocache makes nests
    /// further, and a planted tree must not exhaust descriptors.
    pub fn remove_tree(&self, rel: impl AsRef<Path>, depth: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        match self.unlink(rel) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
            r => return r,
        }
        if depth == 0 {
            return Err(io::Error::other("directory nested too deep"));
        }
        let sub = self.subdir(rel)?;
        for name in sub.names(None)? {
            let name = PathBuf::from(std::ffi::OsStr::from_bytes(&name));
            match sub.remove_tree(&name, depth - 1) {
                Err(e) if !is_gone(&e) => return Err(e),
                _ => {}
            }
        }
        let (parent, name) = self.parent_of(rel)?;
        let c = cstr(name)?;
        // SAFETY: unlinkat reads the NUL-terminated name we own.
        retry(|| unsafe { libc::unlinkat(self.at(&parent), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }
}

/// Opens `name` (one plain name) in `dir`, a directory already checked
/// (the state directory, by its `/proc/self/fd` path): the name itself is
/// not followed, the open does not block, and only a regular file of at
/// most `cap` bytes is returned. A missing `dir` is created when `flags`
/// has `O_CREAT`.
///
/// A `/proc/self/fd/N` path (what [`Dir::proc_path`] gives) is opened as
/// `openat(N, name)`: the same directory, without walking procfs and its
/// magic link on every open (the memos, the journal and the counters are
/// opened this way on every compile).
pub fn open_in(dir: &Path, name: &str, flags: libc::c_int, mode: libc::mode_t, cap: u64) -> io::Result<File> {
    open_in_stat(dir, name, flags, mode, cap).map(|(f, _)| f)
}

/// [`open_in`], with the `fstat` it checked the file by (callers need the
/// size or identity; a second `fstat` would only repeat it).
pub fn open_in_stat(
    dir: &Path,
    name: &str,
    flags: libc::c_int,
    mode: libc::mode_t,
    cap: u64,
) -> io::Result<(File, libc::stat)> {
    if let Some(fd) = proc_fd(dir) {
        let f = File::from(openat(fd, name.as_bytes(), flags | libc::O_NOFOLLOW | libc::O_NONBLOCK, mode)?);
        let st = check_regular(&f, cap)?;
        return Ok((f, st));
    }
    let path = dir.join(name);
    let open = || crate::util::open_raw(&path, flags | libc::O_NOFOLLOW | libc::O_NONBLOCK, mode);
    let f = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && flags & libc::O_CREAT != 0 => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        r => r?,
    };
    let st = check_regular(&f, cap)?;
    Ok((f, st))
}

/// `lstat` of `name` in `dir` ([`open_in`]'s kind of directory path).
pub fn stat_in(dir: &Path, name: &str) -> io::Result<Stat> {
    let (at, c) = match proc_fd(dir) {
        Some(fd) => (fd, cstr(name.as_bytes())?),
        None => (libc::AT_FDCWD, cstr(dir.join(name).as_os_str().as_bytes())?),
    };
    // SAFETY: fstatat reads the NUL-terminated name and writes one stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    retry(|| unsafe { libc::fstatat(at, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(Stat::of_raw(&st))
}

/// N of a `/proc/self/fd/N` path. Opening relative to descriptor N is what
/// the kernel does with the path anyway (the magic link is N's directory),
/// and fails the same way when N is not open.
fn proc_fd(dir: &Path) -> Option<RawFd> {
    let n = dir.as_os_str().as_bytes().strip_prefix(b"/proc/self/fd/")?;
    if n.is_empty() || n.len() > 9 || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// `fstat`: a regular file of at most `cap` bytes, or refused.
fn check_regular(f: &File, cap: u64) -> io::Result<libc::stat> {
    let st = fstat(f.as_raw_fd())?;
    if !is_reg(&st) {
        return Err(refused("not a regular file"));
    }
    if st.st_size as u64 > cap {
        return Err(refused("larger than any file ltocache writes"));
    }
    Ok(st)
}

pub fn fstat_file(f: &File) -> io::Result<libc::stat> {
    fstat(f.as_raw_fd())
}

/// Takes a `flock` (exclusive or shared), waiting at most `within`: a holder
/// that stopped (or a lock never released by a dead NFS client) costs a
/// bounded wait and an error, never a hang. Any other failure (no lock
/// support on this filesystem) is returned as is.
///
/// On NFS the lock is a POSIX lock: exclusive needs a descriptor open for
/// writing, shared one open for reading — the callers open accordingly.
pub fn lock_within(f: &File, exclusive: bool, within: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        let r = if exclusive { f.try_lock() } else { f.try_lock_shared() };
        match r {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("lock still held after {within:?}")));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// "Now" by the clock that stamps files in `dir` — the server's, on a network
/// filesystem: the mtime of a file just created in `tmp` (beneath `dir`),
/// which is then removed. `None` when no file can be created there.
pub fn fs_now_ns(dir: &Dir, tmp: &Path) -> Option<i64> {
    let rel = tmp.join(crate::util::temp_name("clock."));
    let (f, st) = dir.open_creating(&rel, libc::O_WRONLY | libc::O_EXCL, 0o600, 0).ok()?;
    drop(f);
    let _ = dir.unlink(&rel);
    Some(Stat::of_raw(&st).mtime_ns)
}

/// Whether a directory's `fstat` makes it private to this user: owned by us,
/// no access for group or others.
pub fn private_to_me(st: &Stat) -> bool {
    // SAFETY: geteuid has no preconditions.
    st.is_dir() && st.uid == unsafe { libc::geteuid() } && st.mode & 0o077 == 0
}

/// Used by tests: whether `dir`'s own `fstat` says it is a directory.
pub fn fd_is_dir(f: &File) -> bool {
    fstat(f.as_raw_fd()).map(|s| is_dir(&s)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn both(f: impl Fn(bool)) {
        f(false);
        f(true);
    }

    #[test]
    fn symlinks_anywhere_are_refused_by_openat2_and_by_the_walk() {
        both(|walk| {
            let d = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("secret"), b"x").unwrap();
            std::fs::create_dir(d.path().join("a")).unwrap();
            std::fs::write(d.path().join("a/f"), b"ok").unwrap();
            symlink(outside.path(), d.path().join("link")).unwrap();
            symlink(outside.path().join("secret"), d.path().join("a/s")).unwrap();
            let root = Dir::open_root(d.path()).unwrap();
            let fd = root.fd.as_raw_fd();
            let o = |p: &str| open_beneath(fd, Path::new(p), libc::O_RDONLY, 0, walk);
            assert!(o("a/f").is_ok());
            for bad in ["link/secret", "a/s"] {
                let e = o(bad).unwrap_err();
                assert!(is_refused(&e), "{bad} walk={walk}: {e}");
            }
            for bad in ["../x", "a/../f", "/etc/passwd", ""] {
                assert_eq!(o(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad}");
            }
            // Creating through a symlinked directory is refused too.
            let e = open_beneath(fd, Path::new("link/new"), libc::O_WRONLY | libc::O_CREAT, 0o600, walk).unwrap_err();
            assert!(is_refused(&e));
            assert!(!outside.path().join("new").exists());
        });
    }

    #[test]
    fn fifos_directories_and_huge_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let root = Dir::open_root(d.path()).unwrap();
        let fifo = CString::new(d.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let big = File::create(d.path().join("big")).unwrap();
        big.set_len(1 << 40).unwrap();
        for (name, flags) in
            [("fifo", libc::O_RDONLY), ("fifo", libc::O_RDWR), ("dir", libc::O_RDONLY), ("big", libc::O_RDONLY)]
        {
            let e = root.open_regular(name, flags, 0, READ_CAP).unwrap_err();
            assert!(is_refused(&e), "{name}: {e}");
        }
        assert!(root.read("big", READ_CAP).is_err());
    }

    #[test]
    fn directory_operations_act_on_names_not_targets() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"keep").unwrap();
        let root = Dir::open_root(d.path()).unwrap();
        root.create_dirs("v1/entries/ab").unwrap();
        symlink(outside.path(), d.path().join("v1/entries/zz")).unwrap();
        // Unlink, rename, touch and stat through the symlinked directory: refused.
        assert!(is_refused(&root.unlink("v1/entries/zz/keep").unwrap_err()));
        assert!(is_refused(&root.touch("v1/entries/zz/keep").unwrap_err()));
        assert!(is_refused(&root.stat("v1/entries/zz/keep").unwrap_err()));
        assert!(root.names(Some(Path::new("v1/entries/zz"))).is_err());
        // The symlink itself is a name we can remove, and remove_tree never follows it.
        root.remove_tree("v1", 8).unwrap();
        assert!(!d.path().join("v1").exists());
        assert_eq!(std::fs::read(outside.path().join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn atomic_writes_move_a_planted_directory_aside() {
        let d = tempfile::tempdir().unwrap();
        let root = Dir::open_root(d.path()).unwrap();
        std::fs::create_dir_all(d.path().join("e/x/inner")).unwrap();
        root.write_atomic(Path::new("tmp"), Path::new("e/x"), b"entry").unwrap();
        assert_eq!(std::fs::read(d.path().join("e/x")).unwrap(), b"entry");
        let junk: Vec<_> = root.names(Some(Path::new("tmp"))).unwrap();
        assert_eq!(junk.len(), 1);
        assert!(String::from_utf8_lossy(&junk[0]).ends_with(".junk"));
        // Missing directories are created, beneath only.
        root.write_atomic(Path::new("tmp"), Path::new("a/b/c"), b"deep").unwrap();
        assert_eq!(std::fs::read(d.path().join("a/b/c")).unwrap(), b"deep");
    }
}

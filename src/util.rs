//! Small helpers that know nothing about ltocache: hex, clocks, host name,
//! file identity, atomic file writes, mapping files.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Opens `path` with `flags` (O_CLOEXEC added) by the `openat` system call
/// itself. Why not `File::open`: musl's `open` follows every `O_CLOEXEC` open
/// with an `fcntl(F_SETFD)` for kernels older than 2.6.23 — one system call
/// more per file, and a hit opens half a dozen. For the files of every
/// invocation; the rest of the code uses std.
pub fn open_raw(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    loop {
        // SAFETY: a NUL-terminated path we own; openat returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd >= 0 {
            // SAFETY: a descriptor we just opened and nothing else owns.
            return Ok(unsafe { File::from_raw_fd(fd as libc::c_int) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads up to `size` bytes from the start of `file` with `pread`: the size
/// comes from a `stat` the caller already made, so no size probe and no
/// end-of-file read (three system calls fewer than `read_to_end`). Shorter
/// when the file ended earlier; a caller that must see the whole file checks
/// its stamp afterwards.
pub fn read_sized(file: &File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; size as usize];
    let mut done = 0;
    while done < data.len() {
        match file.read_at(&mut data[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(done);
    Ok(data)
}

/// [`open_raw`] with `O_CREAT` in `flags`, creating the file's directory
/// only when the open says it is missing: the directory is there on every
/// call but the first, so checking for it first would cost a system call
/// each time.
pub fn open_creating_dir(path: &Path, flags: libc::c_int, mode: libc::c_uint) -> std::io::Result<File> {
    match open_raw(path, flags, mode) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
            open_raw(path, flags, mode)
        }
        r => r,
    }
}

/// The names in a directory (without `.` and `..`), read with `getdents64`
/// into a buffer of our own. `std::fs::read_dir` goes through the C
/// library's `opendir`, whose `malloc`'d buffer is mapped and unmapped, and
/// after a compile an unmap is dear (see [`crate::codec`]).
pub fn dir_names(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let dir = open_raw(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    dir_names_fd(dir.as_raw_fd())
}

/// [`dir_names`] of a directory already open (read from its start).
pub fn dir_names_fd(fd: std::os::fd::RawFd) -> std::io::Result<Vec<Vec<u8>>> {
    // SAFETY: lseek on a descriptor the caller owns: a reused one lists from the start.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    // u64s, so that the records (8-byte aligned by the kernel) are aligned in memory too.
    let mut buf = vec![0u64; 512];
    let mut names = Vec::new();
    loop {
        // SAFETY: the buffer is ours and its length in bytes is passed.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len() * 8) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(names);
        }
        // SAFETY: the kernel wrote `n` bytes of the buffer.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
        let mut at = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while at + 19 <= bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen < 19 || at + reclen > bytes.len() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad directory record"));
            }
            let name = &bytes[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
            at += reclen;
        }
    }
}

/// The whole of a file that is replaced by rename, never rewritten in place
/// (entries, memos, ledger records, outputs): open, fstat, pread.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = open_raw(path, libc::O_RDONLY, 0)?;
    let size = f.metadata()?.len();
    read_sized(&f, size)
}

/// `CLOCK_REALTIME_COARSE`: the clock the kernel stamps files with (at tick
/// resolution; a vDSO call, no system call).
pub fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

pub fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
        let name = if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        };
        // The name becomes a path component: keep it to safe characters.
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        if clean.is_empty() || clean == "." || clean == ".." {
            "localhost".into()
        } else {
            clean
        }
    })
}

/// What identifies one version of a file without reading it: the digest memo
/// and the "changed during the compile" check compare these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    pub fn of_path(path: &Path) -> std::io::Result<FileStamp> {
        Ok(FileStamp::of(&std::fs::metadata(path)?))
    }
}

/// A unique name for a temporary file: host, pid and a per-process counter,
/// so that processes on different hosts sharing a directory never collide.
pub fn temp_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = now_ns() as u64 & 0xffff_ffff;
    format!("{prefix}{}.{}.{n}.{nanos:x}.tmp", hostname(), std::process::id())
}

/// Writes `data` to `dest` atomically: a temp file in `tmp_dir` (same
/// filesystem), then rename. Readers see the old file or the new, never part.
/// Returns without error when another writer renamed the same content first.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(temp_name(""));
    let result = (|| -> Result<()> {
        let mut f = open_creating_dir(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        // No fsync: a killed process cannot lose page-cache data, and after a
        // power loss every reader verifies checksums (entries) and digests
        // (blobs) before use, so a torn file is a miss, never a wrong object.
        // An fsync per store would cost more than the whole cold-cache budget.
        rename_into_place(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames `tmp` to `dest`, creating `dest`'s directory when missing.
pub fn rename_into_place(tmp: &Path, dest: &Path) -> Result<()> {
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::rename(tmp, dest).with_context(|| format!("renaming to {}", dest.display()))
        }
        Err(e) => Err(e).with_context(|| format!("renaming to {}", dest.display())),
    }
}

/// A read-only view of a whole file: mapped when it has bytes, empty otherwise.
pub enum Mapped {
    Map(memmap2::Mmap),
    Empty,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

/// Maps `file` read-only.
pub fn map_file(file: &File, len: u64) -> std::io::Result<Mapped> {
    if len == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the mapping is read-only and private to this process. Files we
    // map are either cache blobs, which are never modified in place (they are
    // replaced by rename), or build inputs; if a build edits an input in place
    // while we hash it, the bytes we see may be torn, which the stamp check
    // after the compile detects (the entry is then not stored).
    unsafe { memmap2::MmapOptions::new().len(len as usize).map(file) }.map(Mapped::Map)
}

/// The directory part of a path, `.` for a bare file name.
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The working directory, asked once per process: ltocache never changes
/// it, and a distributor would otherwise ask several times per job.
pub fn cwd() -> Option<&'static Path> {
    static CWD: OnceLock<Option<PathBuf>> = OnceLock::new();
    CWD.get_or_init(|| std::env::current_dir().ok()).as_deref()
}

/// CPU time (user + system) of this process (`libc::RUSAGE_SELF`), of this
/// thread (`libc::RUSAGE_THREAD`) or of its waited-for children
/// (`libc::RUSAGE_CHILDREN`), in nanoseconds.
pub fn cpu_ns(who: libc::c_int) -> i64 {
    // SAFETY: getrusage writes one rusage struct into memory we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec * 1_000_000_000 + t.tv_usec * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The process environment, split once into `(name, value)` byte slices of
/// the `environ` strings, in their order.
///
/// Why: a wrapped compile asks for some forty variables (settings, the
/// driver's refused variables, the loader's, the key's), and each
/// `std::env::var` takes the environment lock, copies the name into a
/// `CString` and `strncmp`s its way through the whole environment — about
/// 1,500 instructions apiece, 4 % of a hit. Here a lookup compares lengths
/// first and bytes only where they match, with no allocation; a sorted
/// index measured worse (sorting 40 names cost more than all the lookups).
/// ltocache never changes its own environment, so the `environ` strings
/// stay valid and unchanged for the life of the process.
fn env_index() -> &'static [(u32, &'static [u8], &'static [u8])] {
    static INDEX: OnceLock<Vec<(u32, &'static [u8], &'static [u8])>> = OnceLock::new();
    INDEX.get_or_init(|| {
        extern "C" {
            static environ: *const *const libc::c_char;
        }
        let mut out = Vec::with_capacity(64);
        // SAFETY: `environ` is a NULL-terminated array of NUL-terminated
        // strings owned by the C runtime; nothing in this process calls
        // setenv/putenv, so they live, unchanged, until exit.
        unsafe {
            let mut p = environ;
            while !p.is_null() && !(*p).is_null() {
                let s = std::ffi::CStr::from_ptr(*p).to_bytes();
                if let Some(eq) = s.iter().position(|&b| b == b'=') {
                    out.push((env_tag(&s[..eq]), &s[..eq], &s[eq + 1..]));
                }
                p = p.add(1);
            }
        }
        out
    })
}

/// Length, first and last byte of a name: most lookups are decided by
/// comparing this one word per variable.
fn env_tag(name: &[u8]) -> u32 {
    let (first, last) = (name.first().copied().unwrap_or(0), name.last().copied().unwrap_or(0));
    (name.len().min(0xffff) as u32) << 16 | (first as u32) << 8 | last as u32
}

/// `std::env::var_os` from the index ([`env_index`]): the first entry of
/// that name, as getenv(3) answers.
pub fn env_os(name: &str) -> Option<&'static std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let (name, tag) = (name.as_bytes(), env_tag(name.as_bytes()));
    env_index().iter().find(|(t, k, _)| *t == tag && *k == name).map(|(_, _, v)| std::ffi::OsStr::from_bytes(v))
}

/// `std::env::var(name).ok()` from the index: `None` when unset or not UTF-8.
pub fn env(name: &str) -> Option<String> {
    env_os(name).and_then(|v| v.to_str()).map(str::to_string)
}

/// A boolean setting as ccache spells them (config files, `LTOCACHE_*`
/// variables, remote attributes).
pub fn parse_bool(s: &str) -> anyhow::Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => anyhow::bail!("expected a boolean (1/0, true/false, yes/no), got {other:?}"),
    }
}

/// Parses `500M`, `20G`, `1.5GiB`, `4096` (K, M, G, T are powers of 1024).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => anyhow::bail!("invalid size {s:?}: use a number with K, M, G or T"),
    };
    let bytes = n * mult as f64;
    // `as u64` would saturate silently.
    if !(bytes < u64::MAX as f64) {
        anyhow::bail!("size {s:?} is too large");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_index_answers_as_std_env_does() {
        let mut n = 0;
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            assert_eq!(env_os(k), Some(v.as_os_str()), "{k}");
            assert_eq!(env(k), std::env::var(k).ok(), "{k}");
            n += 1;
        }
        assert!(n > 0, "a test process has some environment");
        for missing in ["LTOCACHE_NO_SUCH_VARIABLE_SET", "", "=", "\u{7f}"] {
            assert_eq!(env_os(missing), std::env::var_os(missing).as_deref(), "{missing:?}");
        }
        // Prefixes of a real name are other names.
        if let Some((k, _)) = std::env::vars().next() {
            for cut in 0..k.len() {
                assert_eq!(env(&k[..cut]), std::env::var(&k[..cut]).ok(), "{:?}", &k[..cut]);
            }
        }
    }

    #[test]
    fn dir_names_lists_every_entry_even_past_one_buffer() {
        let d = tempfile::tempdir().unwrap();
        assert!(dir_names(d.path()).unwrap().is_empty());
        // Long names, so the listing takes several getdents64 calls of 4 KiB.
        let mut want: Vec<Vec<u8>> = (0..300).map(|i| format!("host.{i:04}.{}", "x".repeat(60)).into_bytes()).collect();
        for n in &want {
            std::fs::write(d.path().join(std::str::from_utf8(n).unwrap()), b"").unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        want.push(b"sub".to_vec());
        let mut got = dir_names(d.path()).unwrap();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(dir_names(&d.path().join("missing")).is_err());
        assert!(dir_names(&d.path().join("sub").join("..").join("host.0000.x")).is_err(), "not a directory");
    }

    #[test]
    fn raw_open_and_sized_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut f = open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666).unwrap();
        f.write_all(b"twelve bytes").unwrap();
        let again = open_raw(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        // SAFETY: fcntl reads the descriptor's flags.
        let fd_flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETFD) };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "not inherited by the compiler");
        assert_eq!(read_file(&p).unwrap(), b"twelve bytes");
        let r = open_raw(&p, libc::O_RDONLY, 0).unwrap();
        assert_eq!(read_sized(&r, 6).unwrap(), b"twelve");
        assert_eq!(read_sized(&r, 100).unwrap(), b"twelve bytes", "a shorter file reads short");
        assert_eq!(
            open_raw(&d.path().join("none"), libc::O_RDONLY, 0).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff").unwrap(), vec![0, 0xab, 0xff]);
        assert!(unhex("0g").is_none());
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("sub/dest");
        write_atomic(d.path(), &dest, b"one").unwrap();
        write_atomic(d.path(), &dest, b"two!").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two!");
        // No temp file is left behind.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(left.len(), 1);
    }
}

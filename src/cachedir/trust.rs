//! Whom a cache directory, its `ltocache.conf` and the state directory are
//! trusted by — the rules of docs/store.md, "Threat model".
//!
//! * **The cache directory** is refused (compiles pass straight through,
//!   counted) when another user owns it and everyone may write it, or when
//!   it sits in a sticky world-writable directory (`/tmp`) under another
//!   user's name: whoever made it decides what this user's objects are.
//!   `LTOCACHE_TRUSTED_DIR` naming it overrides. Root is trusted.
//! * **`ltocache.conf`** inside it may not redirect where this user writes
//!   or relax safety unless it is owned by this user or root and writable by
//!   no one else (ssh's StrictModes rule): otherwise the keys of
//!   [`needs_trusted_file`] are ignored with a warning. A file that is not a
//!   regular file of sane size is ignored whole (a FIFO there hung every
//!   compile, front ends included).
//! * **The state directory** (journal, memos, stats database, pass-through
//!   count, ledger lock) is private to one user on one host: a directory of
//!   theirs, mode 0700, checked by `fstat` on the descriptor every file in
//!   it is then opened through. By default `<cache>/hosts/<host>/u<uid>`;
//!   on a network filesystem local disk instead (`$XDG_STATE_HOME`, or
//!   `~/.local/state`), since nothing there is for other hosts and SQLite's
//!   and `flock`'s NFS behaviour are best avoided; anything that fails the
//!   check falls back to that private directory too, counted.

use crate::cachedir::beneath::{private_to_me, Dir, Stat};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The environment the checks read (injected, for tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub home: Option<String>,
    pub xdg_state_home: Option<String>,
    /// `LTOCACHE_TRUSTED_DIR`: a cache directory to use even though the rules refuse it.
    pub trusted_dir: Option<String>,
    /// `LTOCACHE_TEST_FS_TYPE` (tests only): the `statfs` type to assume
    /// for the cache directory, so the network-filesystem paths run without
    /// a network filesystem. Hex, e.g. `6969` for NFS.
    pub fs_type_override: Option<i64>,
}

impl Env {
    pub fn from(getenv: &dyn Fn(&str) -> Option<String>) -> Env {
        let nonempty = |k: &str| getenv(k).filter(|v| !v.is_empty());
        Env {
            home: nonempty("HOME"),
            xdg_state_home: nonempty("XDG_STATE_HOME"),
            trusted_dir: nonempty("LTOCACHE_TRUSTED_DIR"),
            fs_type_override: nonempty("LTOCACHE_TEST_FS_TYPE")
                .and_then(|v| i64::from_str_radix(v.trim_start_matches("0x"), 16).ok()),
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The cache directory as found at load time.
pub struct CacheDir {
    /// Opened, when it exists and is a directory.
    pub dir: Option<Dir>,
    pub refused: Option<String>,
}

/// Opens the cache directory and applies the ownership rules above.
pub fn check_cache_dir(path: &Path, env: &Env) -> CacheDir {
    let dir = match Dir::open_root(path) {
        Ok(d) => d,
        // Not there yet: it will be created by (and belong to) this user.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheDir { dir: None, refused: None },
        Err(e) => return CacheDir { dir: None, refused: Some(format!("cannot open it: {e}")) },
    };
    let refused = match dir.stat_self() {
        Ok(st) => refusal(path, &st, env),
        Err(e) => Some(format!("cannot stat it: {e}")),
    };
    CacheDir { dir: Some(dir), refused }
}

fn refusal(path: &Path, st: &Stat, env: &Env) -> Option<String> {
    if st.uid == euid() || st.uid == 0 {
        return None;
    }
    if env.trusted_dir.as_deref().is_some_and(|t| Path::new(t) == path) {
        return None;
    }
    if st.mode & 0o002 != 0 {
        return Some(format!(
            "{} belongs to uid {} and everyone may write to it (set LTOCACHE_TRUSTED_DIR to it to use it anyway)",
            path.display(),
            st.uid
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(meta) = std::fs::metadata(parent) {
        use std::os::unix::fs::PermissionsExt;
        let m = meta.permissions().mode();
        if m & 0o1000 != 0 && m & 0o002 != 0 {
            return Some(format!(
                "{} belongs to uid {} and sits in the sticky world-writable {}: anyone could have made it \
                 (set LTOCACHE_TRUSTED_DIR to it to use it anyway)",
                path.display(),
                st.uid,
                parent.display()
            ));
        }
    }
    None
}

/// The largest `ltocache.conf` read.
const CONF_CAP: u64 = 64 << 10;

/// The text of `ltocache.conf` (`None`: absent) and whether it is trusted
/// (`Err(why not)`). An error when something other than a regular file of
/// sane size is there.
pub fn read_conf(dir: &Dir) -> std::io::Result<Option<(String, Result<(), String>)>> {
    let (f, st) = match dir.open_regular(crate::cachedir::layout::CONFIG_FILE_NAME, libc::O_RDONLY, 0, CONF_CAP) {
        Ok(x) => x,
        Err(e) if crate::cachedir::beneath::is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let data = crate::util::read_sized(&f, st.st_size as u64)?;
    let text =
        String::from_utf8(data).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    let trusted = if st.st_uid != euid() && st.st_uid != 0 {
        Err(format!("the file belongs to uid {}", st.st_uid))
    } else if st.st_mode & 0o022 != 0 {
        Err(format!("the file is writable by others (mode {:o})", st.st_mode & 0o777))
    } else {
        Ok(())
    };
    Ok(Some((text, trusted)))
}

/// Keys an untrusted `ltocache.conf` may not set: they name where this user
/// writes (`logfile`, `stats_dir`), make their files writable by others
/// (`umask`), change which paths their keys hash (`base_dir`), make their
/// outputs share an inode with the cache (`serve_mode = hardlink`), or send
/// their objects elsewhere (`remote_storage`).
pub fn needs_trusted_file(key: &str, value: &str) -> bool {
    match key {
        "logfile" | "stats_dir" | "umask" | "base_dir" | "remote_storage" => true,
        "serve_mode" => value.trim() == "hardlink",
        _ => false,
    }
}

/// Why hard links may not be served from this cache: it is writable by
/// group or others, so someone else could change a blob — and with it every
/// output already linked to it.
pub fn hardlink_refusal(dir: Option<&Dir>) -> Option<String> {
    let dir = dir?;
    for st in [dir.stat_self().ok(), dir.stat(crate::cachedir::layout::LAYOUT_DIR).ok()].into_iter().flatten() {
        if st.mode & 0o022 != 0 {
            return Some(format!("the cache is writable by group or others (mode {:o})", st.mode & 0o7777));
        }
    }
    None
}

/// statfs `f_type`s of network filesystems (timestamps from the server;
/// locks and SQLite best avoided): NFS, SMB, CIFS, SMB2, AFS, Ceph, 9p,
/// Lustre, GlusterFS/sshfs through FUSE are not told apart from other FUSE.
pub const NETWORK_FS: &[i64] =
    &[0x6969, 0x517B, 0xFF534D42, 0xFE534D42, 0x5346414F, 0x00C36400, 0x01021997, 0x0BD00BD0];

/// The filesystem type of an open directory (or the test override).
pub fn fs_type(dir: &Dir, env: &Env) -> Option<i64> {
    if let Some(t) = env.fs_type_override {
        return Some(t);
    }
    // SAFETY: fstatfs writes one statfs struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Where this process keeps its state.
#[derive(Debug)]
pub struct State {
    /// Opened and checked; `None` when no private directory could be had
    /// (then files in it are not written: counters are lost, compiles go on).
    pub dir: Option<Dir>,
    /// The path to open files by: the checked descriptor's `/proc/self/fd/N`.
    pub path: PathBuf,
    /// The directory's real path, for people.
    pub real: PathBuf,
    /// Why there (for `ltocache config`).
    pub why: String,
    /// A counter a compile adds when this is a fallback from where it should be.
    pub counter: Option<&'static str>,
}

impl State {
    fn at(dir: Dir, why: String, counter: Option<&'static str>) -> State {
        let real = dir.path().to_path_buf();
        let path = if Path::new("/proc/self/fd").is_dir() { dir.proc_path() } else { real.clone() };
        State { dir: Some(dir), path, real, why, counter }
    }
}

/// Decides the state directory (see the module doc). `stats_dir` is the
/// setting (already only from a trusted origin).
///
/// `opened` is the cache directory as [`check_cache_dir`] opened it, when it
/// did: the state directory is then found beneath that very descriptor
/// (one open of the cache directory per process, not one per use).
pub fn choose_state(
    cache: &Path,
    opened: Option<&Dir>,
    stats_dir: Option<&Path>,
    cache_refused: bool,
    env: &Env,
) -> State {
    let problem;
    if let Some(d) = stats_dir {
        match own_dir(d) {
            Ok(dir) => return State::at(dir, "stats_dir".into(), None),
            Err(e) => problem = format!("stats_dir {} refused: {e}", d.display()),
        }
    } else if cache_refused {
        problem = "the cache directory is refused".to_string();
    } else {
        let mut created = None;
        let cdir = match opened {
            Some(d) => Ok(d),
            None => Dir::create_root(cache).map(|d| &*created.insert(d)),
        };
        match cdir {
            Ok(cdir) => {
                if fs_type(&cdir, env).is_some_and(|t| NETWORK_FS.contains(&t)) {
                    return private(cache, env, "the cache is on a network filesystem: state on local disk", None);
                }
                let rel = crate::cachedir::layout::shared_state_rel(crate::util::hostname(), euid());
                match shared_user_dir(&cdir, &rel).and_then(writable) {
                    Ok(dir) => return State::at(dir, "per user, in the cache directory".into(), None),
                    // Read-only cache: expected, not counted.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EROFS)
                            || e.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        return private(cache, env, &format!("{} not writable ({e})", cdir.join(&rel).display()), None)
                    }
                    Err(e) => problem = format!("{} refused: {e}", cdir.join(&rel).display()),
                }
            }
            Err(e) => problem = format!("cannot open the cache directory: {e}"),
        }
    }
    let why: String = problem;
    private(cache, env, &why, Some("errors.state_dir_fallback"))
}

/// `<cache>/hosts/<host>/u<uid>`: created mode 0700 when missing; used only
/// when `fstat` says it is ours and private. The walk to it follows no symlink.
fn shared_user_dir(cdir: &Dir, rel: &Path) -> std::io::Result<Dir> {
    let dir = match cdir.subdir(rel) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = rel.parent().expect("three components");
            cdir.create_dirs(parent)?;
            mkdir_private(cdir, rel)?;
            cdir.subdir(rel)?
        }
        Err(e) => return Err(e),
    };
    check_private(dir)
}

fn mkdir_private(cdir: &Dir, rel: &Path) -> std::io::Result<()> {
    let parent = cdir.subdir(rel.parent().expect("has a parent"))?;
    let name = std::ffi::CString::new(rel.file_name().expect("has a name").as_bytes()).expect("no NUL");
    // SAFETY: mkdirat reads the NUL-terminated name we own.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(())
}

/// The directory, unless its filesystem is mounted read-only.
fn writable(dir: Dir) -> std::io::Result<Dir> {
    // SAFETY: fstatvfs writes one statvfs struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) } == 0 && st.f_flag & libc::ST_RDONLY != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EROFS));
    }
    Ok(dir)
}

fn check_private(dir: Dir) -> std::io::Result<Dir> {
    let st = dir.stat_self()?;
    if !private_to_me(&st) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a directory of uid {} with mode 0700 (uid {}, mode {:o})", euid(), st.uid, st.mode & 0o7777),
        ));
    }
    Ok(dir)
}

/// A directory the user named (stats_dir): theirs and writable by no one else.
fn own_dir(path: &Path) -> std::io::Result<Dir> {
    let dir = match Dir::open_root(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
            Dir::open_root(path)?
        }
        r => r?,
    };
    let st = dir.stat_self()?;
    if st.uid != euid() || st.mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not a directory of uid {} writable by no one else (uid {}, mode {:o})",
                euid(),
                st.uid,
                st.mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// This user's private state for `cache` on local disk:
/// `$XDG_STATE_HOME/ltocache/<hash of the cache path>/<host>` (or under
/// `~/.local/state`), every level created mode 0700.
pub fn private_dir_path(cache: &Path, env: &Env) -> Option<PathBuf> {
    let base = env
        .xdg_state_home
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| env.home.as_ref().map(|h| Path::new(h).join(".local/state")))?;
    let name = blake3::hash(cache.as_os_str().as_bytes());
    Some(base.join("ltocache").join(crate::util::hex(&name.as_bytes()[..8])).join(crate::util::hostname()))
}

fn private(cache: &Path, env: &Env, why: &str, counter: Option<&'static str>) -> State {
    let Some(path) = private_dir_path(cache, env) else {
        return State {
            dir: None,
            path: PathBuf::from("/nonexistent"),
            real: PathBuf::new(),
            why: format!("{why}; no HOME for a private one"),
            counter,
        };
    };
    let opened = (|| {
        use std::os::unix::fs::DirBuilderExt;
        if Dir::open_root(&path).is_err() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        }
        check_private(Dir::open_root(&path)?)
    })();
    let why = if why.is_empty() { "private".to_string() } else { format!("private fallback: {why}") };
    match opened {
        Ok(dir) => State::at(dir, why, counter),
        Err(e) => {
            State { dir: None, path: path.clone(), real: path, why: format!("{why}; and it is unusable: {e}"), counter }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env(home: &Path) -> Env {
        Env { home: Some(home.display().to_string()), ..Env::default() }
    }

    #[test]
    fn state_is_per_user_private_and_a_planted_one_falls_back() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        let home = d.path().join("home");
        let s = choose_state(&cache, None, None, false, &env(&home));
        assert!(s.real.ends_with(format!("hosts/{}/u{}", crate::util::hostname(), euid())), "{:?}", s.real);
        assert_eq!(std::fs::metadata(&s.real).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(s.counter.is_none());
        // Files opened by the /proc path land in the checked directory.
        std::fs::write(s.path.join("x"), b"1").unwrap();
        assert!(s.real.join("x").exists());
        // Someone loosened it: not used, the private fallback is, counted.
        std::fs::set_permissions(&s.real, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s2 = choose_state(&cache, None, None, false, &env(&home));
        assert!(s2.real.starts_with(home.join(".local/state/ltocache")), "{:?}", s2.real);
        assert_eq!(s2.counter, Some("errors.state_dir_fallback"));
        assert!(s2.why.contains("0700"), "{}", s2.why);
        // A symlink there is refused, not followed.
        std::fs::remove_dir_all(&s.real).unwrap();
        std::os::unix::fs::symlink(&home, &s.real).unwrap();
        let s3 = choose_state(&cache, None, None, false, &env(&home));
        assert_eq!(s3.counter, Some("errors.state_dir_fallback"));
    }

    #[test]
    fn a_network_cache_keeps_state_on_local_disk_uncounted() {
        // The statfs answer is overridden (LTOCACHE_TEST_FS_TYPE): these
        // kernels have no NFS client. The real thing runs in the NFS harness.
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        let e = Env {
            fs_type_override: Some(0x6969),
            xdg_state_home: Some(d.path().join("xdg").display().to_string()),
            ..env(&d.path().join("home"))
        };
        let s = choose_state(&cache, None, None, false, &e);
        assert!(s.real.starts_with(d.path().join("xdg/ltocache")), "{:?}", s.real);
        assert!(s.why.contains("network"), "{}", s.why);
        assert!(s.counter.is_none());
        assert!(!cache.join("hosts").exists(), "nothing of this host's on the share");
    }

    #[test]
    fn untrusted_keys_and_directories() {
        assert!(needs_trusted_file("logfile", "/x") && needs_trusted_file("umask", "000"));
        assert!(needs_trusted_file("serve_mode", "hardlink") && !needs_trusted_file("serve_mode", "copy"));
        assert!(!needs_trusted_file("max_size", "1G"));
        let d = tempfile::tempdir().unwrap();
        let st = |uid: u32, mode: u32| Stat { mode: libc::S_IFDIR | mode, uid, size: 0, mtime_ns: 0, dev: 0, ino: 0 };
        let p = d.path().join("c");
        let e = Env::default();
        assert!(refusal(&p, &st(euid(), 0o777), &e).is_none(), "ours");
        assert!(refusal(&p, &st(0, 0o777), &e).is_none(), "root's");
        assert!(refusal(&p, &st(4242, 0o2775), &e).is_none(), "a team's group-writable cache");
        assert!(refusal(&p, &st(4242, 0o777), &e).is_some(), "another's, writable by all");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(refusal(&p, &st(4242, 0o755), &e).unwrap().contains("sticky"), "another's, in a /tmp");
        let trusting = Env { trusted_dir: Some(p.display().to_string()), ..Env::default() };
        assert!(refusal(&p, &st(4242, 0o777), &trusting).is_none());
    }
}

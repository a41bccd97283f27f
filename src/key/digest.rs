//! File digests with a memo, so a warm build hashes each file once rather
//! than once per importer.
//!
//! The memo ([`crate::key::memo`]) for a file is keyed by (device, inode) and
//! trusted only when size, mtime and ctime all match *and* the file was last
//! changed more than a margin before it was hashed. Without that margin, a
//! file rewritten within the same timestamp tick as our hash (same size, same
//! mtime) would keep its old digest: the "racy git" problem.
//!
//! The margin is the filesystem's timestamp granularity, with room to spare
//! ([`racy_margin_ns`]). Local filesystems with nanosecond timestamps take
//! them from this kernel's coarse clock (`CLOCK_REALTIME_COARSE`, one tick:
//! 4 ms at HZ=250), and the hashing time `h` is read from that same clock
//! just before the file is read. The clock never goes back, so a write that
//! starts after `h` is stamped `h` or later: a file whose stamp is more than
//! a tick older than `h` cannot change again without its stamp moving. That
//! holds however far the coarse clock lags real time (it stands still while
//! the CPU that advances it stalls, e.g. a preempted virtual CPU), because
//! both sides of the comparison lag together; kernels with multigrain
//! timestamps (6.13+) stamp a change after a `stat` finer still, never
//! earlier. [`local_margin_ns`] is eight ticks, at least 10 ms: room for the
//! reading of `h` and the write racing on two CPUs. Network filesystems,
//! whose timestamps come from the server's clock, FAT's 2 s ticks and ext4
//! with 128-byte inodes (whole seconds) get [`RACY_NS`]. Filesystems whose
//! files can change without their stamps moving (/proc, sysfs, FUSE,
//! anything unknown) are never memoised. A margin that is too long only
//! costs rehashing; one too short would serve a stale object, so unknown
//! means long. What no stamp can catch: the system clock stepped back by
//! more than the margin.
//!
//! On a network filesystem the stamps are the server's, so `h` is too: the
//! stamp of a file just created beside the hashed one, as an offset to this
//! host's clock measured once per device and invocation ([`FileHasher`]'s
//! `now_for`). A client clock minutes off the server's then neither trusts a
//! fresh file too early nor a settled one never. Where no file can be
//! created there, nothing on that device is memoised.

use crate::key::memo::{FileMemo, MemoTable};
use crate::key::shard::{self, AsmRef};
use crate::util::FileStamp;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The margin for filesystems not known to have fine local timestamps. Two
/// seconds: FAT's granularity, and modest clock skew against an NFS server.
pub const RACY_NS: i64 = 2_000_000_000;
/// The margin for local filesystems with nanosecond timestamps: eight ticks of
/// the kernel's coarse clock, at least 10 ms (at most 1 s, should the kernel
/// report something odd).
pub fn local_margin_ns() -> i64 {
    static MARGIN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MARGIN.get_or_init(|| {
        let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_getres writes one timespec we own.
        let tick = if unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut res) } == 0 {
            res.tv_sec * 1_000_000_000 + res.tv_nsec
        } else {
            10_000_000 // one jiffy at HZ=100, the coarsest Linux configures
        };
        (8 * tick).clamp(10_000_000, 1_000_000_000)
    })
}

/// Filesystems (statfs `f_type`) whose timestamps come from this kernel's
/// clock with sub-second resolution.
const FINE_LOCAL_FS: &[i64] = &[
    0xEF53,     // ext2/3/4 (whole seconds with 128-byte inodes: caught by the stamp check below)
    0x58465342, // xfs
    0x9123683E, // btrfs
    0x01021994, // tmpfs
    0xF2F52010, // f2fs
    0x2FC12FC1, // zfs
    0xCA451A4E, // bcachefs
    0x794C7630, // overlayfs
];

/// Network filesystems whose timestamps are the server's (statfs `f_type`):
/// memoised with the long margin.
const NETWORK_FS: &[i64] = &[
    0x6969,     // NFS
    0x517B,     // SMB
    0xFF534D42, // CIFS
    0xFE534D42, // SMB2
];

/// How long before hashing a file with `stamp` on the filesystem of `file`
/// must last have changed for its memo to be trusted; `None`: never memoise.
/// Only filesystems whose timestamps move with every change are memoised:
/// on /proc, sysfs, debugfs, FUSE or anything unknown a file can change
/// without its stamp moving, so it is hashed every time.
pub fn racy_margin_ns(fs_type: Option<i64>, stamp: &FileStamp) -> Option<i64> {
    let fine_stamps = stamp.mtime_ns % 1_000_000_000 != 0 || stamp.ctime_ns % 1_000_000_000 != 0;
    match fs_type? {
        t if FINE_LOCAL_FS.contains(&t) && fine_stamps => Some(local_margin_ns()),
        t if FINE_LOCAL_FS.contains(&t) || NETWORK_FS.contains(&t) => Some(RACY_NS),
        _ => None,
    }
}

/// This host's coarse clock (skewed in tests, to play a client whose clock is off).
fn local_clock_ns() -> i64 {
    #[cfg(test)]
    return crate::util::coarse_now_ns() + tests::SKEW_NS.with(|s| s.get());
    #[cfg(not(test))]
    crate::util::coarse_now_ns()
}

fn fs_type(file: &File) -> Option<i64> {
    #[cfg(test)]
    if let Some(t) = tests::FS_TYPE.with(|t| t.get()) {
        return Some(t);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes one statfs struct into memory we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0).then_some(st.f_type as i64)
}

#[derive(Clone, Debug)]
pub struct Hashed {
    pub stamp: FileStamp,
    pub digest: [u8; 32],
    /// Files the module's assembly pulls in; `None` unless asked for.
    pub asm: Option<Vec<AsmRef>>,
}

/// Digests shared by every job one process keys (the distributor: a link's
/// jobs import the same modules, each once per importer). A file in here was
/// stamped and hashed (or memo-verified) by an earlier job of this run; a
/// later job takes its digest with that stamp, which goes into its `seen`
/// like its own, so the after-compile check still re-stats it. Also the
/// filesystem type per device, asked once per run instead of once per job.
#[derive(Default)]
pub struct SharedDigests {
    digests: std::sync::Mutex<PathMap<Hashed>>,
    fs_types: std::sync::Mutex<HashMap<u64, Option<i64>>>,
}

/// A map keyed by a path's bytes, with a cheap hash. `PathBuf`'s own `Hash`
/// walks the path's components and std's SipHash is built against
/// adversarial keys: 6.5 M of the 135 M instructions of a warm libgit2
/// link's distributor run (210 jobs, ~20 modules each, each looked up twice
/// per job), 1.4 M with this map.
/// Paths here come from the build's own command lines; two spellings of one
/// file (`a//b`, `a/b`) are two keys, which only costs a second lookup in
/// the memo.
type PathMap<V> = HashMap<Box<[u8]>, V, std::hash::BuildHasherDefault<PathHasher>>;

fn path_key(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

/// rustc's FxHash step over 8-byte words (a rotate, a xor and a multiply
/// per word), then a finalising mix: hashbrown picks buckets from the low
/// bits, which a multiply alone leaves weak.
#[derive(Default)]
struct PathHasher(u64);

impl std::hash::Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        // splitmix64's finaliser.
        let mut h = self.0;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

/// Hashes files for one invocation, consulting and feeding the memo.
pub struct FileHasher<'a> {
    memo: Option<&'a MemoTable>,
    shared: Option<&'a SharedDigests>,
    /// A shard its caller read with [`FileHasher::read_tracked`] and parsed
    /// (the distributor, to cross-check it), kept for the key: one read and
    /// one parse per job.
    parsed: Option<(PathBuf, shard::Shard)>,
    pub bytes_hashed: u64,
    /// Every file the key covered, with the stamp it had: checked again after
    /// the compile so an input edited meanwhile is not stored under the old key.
    pub seen: Vec<(PathBuf, FileStamp)>,
    /// Files already hashed by this invocation (an input is also a module).
    done: PathMap<Hashed>,
    /// Filesystem type per device, asked once per device.
    fs_types: HashMap<u64, Option<i64>>,
    /// Network filesystems: the server's clock minus ours, per device.
    server_offsets: HashMap<u64, Option<i64>>,
}

impl<'a> FileHasher<'a> {
    pub fn new(memo: Option<&'a MemoTable>) -> Self {
        FileHasher {
            memo,
            shared: None,
            parsed: None,
            bytes_hashed: 0,
            seen: Vec::new(),
            done: PathMap::default(),
            fs_types: HashMap::new(),
            server_offsets: HashMap::new(),
        }
    }

    /// A hasher that takes and gives digests through `shared` (see [`SharedDigests`]).
    pub fn with_shared(memo: Option<&'a MemoTable>, shared: &'a SharedDigests) -> Self {
        let fs_types = shared.fs_types.lock().map(|t| t.clone()).unwrap_or_default();
        FileHasher { shared: Some(shared), fs_types, ..FileHasher::new(memo) }
    }

    /// Digest of `path` (and its assembly references when `want_asm`).
    pub fn hash(&mut self, path: &Path, want_asm: bool) -> Result<Hashed> {
        let key = path_key(path);
        if let Some(h) = self.done.get(key) {
            if h.asm.is_some() || !want_asm {
                return Ok(h.clone());
            }
        }
        let from_shared = self.shared.and_then(|s| {
            let map = s.digests.lock().unwrap_or_else(|p| p.into_inner());
            map.get(key).filter(|h| h.asm.is_some() || !want_asm).cloned()
        });
        if let Some(h) = from_shared {
            self.seen.push((path.to_path_buf(), h.stamp));
            self.done.insert(key.into(), h.clone());
            return Ok(h);
        }
        let h = self.hash_uncached(path, want_asm)?;
        self.done.insert(key.into(), h.clone());
        if let Some(s) = self.shared {
            s.digests.lock().unwrap_or_else(|p| p.into_inner()).insert(key.into(), h.clone());
        }
        Ok(h)
    }

    /// The filesystem type of `file`'s device `dev`, asked once per device
    /// (and per run, when the digests are shared).
    fn fs_type_of(&mut self, dev: u64, file: &File) -> Option<i64> {
        if let Some(t) = self.fs_types.get(&dev) {
            return *t;
        }
        let t = fs_type(file);
        self.fs_types.insert(dev, t);
        if let Some(s) = self.shared {
            if let Ok(mut shared) = s.fs_types.lock() {
                shared.insert(dev, t);
            }
        }
        t
    }

    /// Reads a whole small file (the shard), recording its stamp like a hashed one.
    pub fn read_tracked(&mut self, path: &Path) -> Result<Vec<u8>> {
        let (file, stamp) = open_stamped(path)?;
        self.seen.push((path.to_path_buf(), stamp));
        self.fs_type_of(stamp.dev, &file);
        read_unchanged(path, file, stamp)
    }

    /// Keeps `shard`, parsed from what [`FileHasher::read_tracked`] read of `path`.
    pub fn keep_shard(&mut self, path: &Path, shard: shard::Shard) {
        self.parsed = Some((path.to_path_buf(), shard));
    }

    /// The shard kept for `path`, if any.
    pub fn take_shard(&mut self, path: &Path) -> Option<shard::Shard> {
        self.parsed.take_if(|(p, _)| p == path).map(|(_, s)| s)
    }

    /// The memoised digest for a file with this stamp, if trusted.
    fn memoised(&self, stamp: &FileStamp, want_asm: bool) -> Option<Hashed> {
        // An empty file costs nothing to hash, and a /proc-like one (size 0,
        // contents nonetheless) must reach the check in `read_unchanged`.
        if stamp.size == 0 {
            return None;
        }
        let margin = racy_margin_ns(*self.fs_types.get(&stamp.dev)?, stamp)?;
        match self.memo?.lookup(stamp).filter(|m| trusted(m, margin))? {
            m if !want_asm => Some(Hashed { stamp: *stamp, digest: m.digest, asm: None }),
            FileMemo { digest, asm: Some(a), .. } => Some(Hashed { stamp: *stamp, digest, asm: Some(decode_asm(&a)) }),
            _ => None,
        }
    }

    fn hash_uncached(&mut self, path: &Path, want_asm: bool) -> Result<Hashed> {
        // On a local filesystem (known from a file already opened on the same
        // device) a `stat` of the path gives the exact stamp, so a memo hit
        // costs two system calls instead of five (open, fstat, pread, close,
        // and musl's fcntl for O_CLOEXEC). A module table lists up to hundreds
        // of modules. On NFS only an open revalidates the attributes
        // (close-to-open consistency), so there the file is always opened.
        // (The `stat` also keeps us from opening what is not a regular file:
        // opening a FIFO, even without blocking, and closing it again makes
        // its writer die of SIGPIPE, and the compiler then waits forever.)
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                bail!("{} is not a regular file", path.display());
            }
            let stamp = FileStamp::of(&meta);
            if self.fs_types.get(&stamp.dev).copied().flatten().is_some_and(|t| FINE_LOCAL_FS.contains(&t)) {
                if let Some(h) = self.memoised(&stamp, want_asm) {
                    self.seen.push((path.to_path_buf(), stamp));
                    return Ok(h);
                }
            }
        }
        let (file, stamp) = open_stamped(path)?;
        self.seen.push((path.to_path_buf(), stamp));
        let fs = self.fs_type_of(stamp.dev, &file);
        let margin = racy_margin_ns(fs, &stamp);
        if let Some(h) = self.memoised(&stamp, want_asm) {
            return Ok(h);
        }
        // Hashing time and file stamps from the same clock (see the module doc).
        let now = self.now_for(fs, stamp.dev, path);
        let margin = margin.filter(|_| now.is_some());
        let now = now.unwrap_or_else(local_clock_ns);
        // A file that will be memoised: hash it under its bucket's lock, so
        // that a backend started alongside (make -j) waits and then uses our
        // memo instead of hashing the same import too.
        let _lock = match self.memo {
            Some(table) if margin.is_some_and(|m| now - stamp.ctime_ns.max(stamp.mtime_ns) > m) => {
                table.lock_bucket(&stamp)
            }
            _ => None,
        };
        if _lock.is_some() {
            if let Some(h) = self.memoised(&stamp, want_asm) {
                return Ok(h);
            }
        }

        let started = now;
        let data = read_unchanged(path, file, stamp)?;
        let digest = *blake3::hash(&data).as_bytes();
        self.bytes_hashed += data.len() as u64;
        let asm =
            if want_asm { Some(shard::asm_refs(&data).with_context(|| path.display().to_string())?) } else { None };
        let memo = FileMemo { stamp, hashed_ns: started, digest, asm: asm.as_deref().map(encode_asm) };
        // A memo that is not trusted now never will be (nothing in it
        // changes): the file is hashed again until it has settled.
        if let (Some(table), Some(true)) = (self.memo, margin.map(|m| trusted(&memo, m))) {
            table.insert(&memo);
        }
        Ok(Hashed { stamp, digest, asm })
    }

    /// "Now" by the clock that stamps files on device `dev`: this kernel's
    /// coarse clock, or on a network filesystem the server's (`None` when it
    /// cannot be read: then nothing there is memoised).
    fn now_for(&mut self, fs: Option<i64>, dev: u64, path: &Path) -> Option<i64> {
        if !fs.is_some_and(|t| NETWORK_FS.contains(&t)) {
            return Some(local_clock_ns());
        }
        let offset = *self.server_offsets.entry(dev).or_insert_with(|| {
            let dir = crate::cachedir::beneath::Dir::open_root(&crate::util::parent_dir(path)).ok()?;
            let server = crate::cachedir::beneath::fs_now_ns(&dir, Path::new(""))?;
            // Read after the file was stamped: the offset errs low, so the
            // hashing time does too (a later `h` could trust a racy file).
            Some(server - local_clock_ns())
        });
        offset.map(|o| local_clock_ns() + o)
    }

    /// True when every file the key covered still has the stamp it was hashed with.
    pub fn unchanged_since_hashing(&self) -> Option<PathBuf> {
        self.seen.iter().find(|(p, s)| FileStamp::of_path(p).ok().as_ref() != Some(s)).map(|(p, _)| p.clone())
    }
}

/// Opens a file and takes its stamp with fstat — not stat: on NFS, open
/// revalidates the attributes (close-to-open consistency) where stat may
/// answer from a stale cache.
///
/// Only regular files: a pipe (`-fprofile-sample-use=/dev/fd/63` from a
/// shell's process substitution) or a device reports size 0 whatever it
/// delivers, so its digest would be that of no bytes, for any content.
fn open_stamped(path: &Path) -> Result<(File, FileStamp)> {
    let file = crate::util::open_raw(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok((file, FileStamp::of(&meta)))
}

/// Reads the whole file and checks it still has `stamp`: bytes read while a
/// build rewrote the file are refused. (read, not mmap: a file truncated under
/// us must not kill the wrapper with SIGBUS.)
fn read_unchanged(path: &Path, file: File, stamp: FileStamp) -> Result<Vec<u8>> {
    let data = crate::util::read_sized(&file, stamp.size).with_context(|| format!("reading {}", path.display()))?;
    // Same stamp afterwards (size included) and every byte read: the file was
    // neither rewritten nor truncated nor extended while we read it.
    if data.len() as u64 != stamp.size || FileStamp::of(&file.metadata()?) != stamp {
        bail!("{} changed while it was being read", path.display());
    }
    // Files of /proc and similar report size 0 and still have contents: one
    // read past the reported end must find nothing. (Only for empty files, so
    // the hit path's shard read costs no extra system call.)
    if stamp.size == 0 {
        use std::os::unix::fs::FileExt;
        if file.read_at(&mut [0u8; 1], 0).with_context(|| format!("reading {}", path.display()))? != 0 {
            bail!("{} has contents beyond the size it reports", path.display());
        }
    }
    Ok(data)
}

fn trusted(m: &FileMemo, margin_ns: i64) -> bool {
    m.hashed_ns - m.stamp.ctime_ns.max(m.stamp.mtime_ns) > margin_ns
}

fn encode_asm(refs: &[AsmRef]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in refs {
        match r {
            AsmRef::File(name) => {
                out.push(b'F');
                out.extend_from_slice(name);
            }
            AsmRef::Include(name) => {
                out.push(b'I');
                out.extend_from_slice(name);
            }
            AsmRef::Unresolvable(text) => {
                out.push(b'U');
                out.extend(text.bytes().filter(|&b| b != 0));
            }
        }
        out.push(0);
    }
    out
}

fn decode_asm(data: &[u8]) -> Vec<AsmRef> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| match s[0] {
            b'F' => AsmRef::File(s[1..].to_vec()),
            b'I' => AsmRef::Include(s[1..].to_vec()),
            _ => AsmRef::Unresolvable(String::from_utf8_lossy(&s[1..]).into_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sleeps until `path`'s stamp is older than the racy-timestamp margin,
    /// so that its digest may be memoised; returns the stamp.
    fn settle(path: &Path) -> FileStamp {
        let stamp = FileStamp::of_path(path).unwrap();
        let margin = racy_margin_ns(fs_type(&File::open(path).unwrap()), &stamp).unwrap();
        std::thread::sleep(std::time::Duration::from_nanos((margin + 20_000_000) as u64));
        stamp
    }

    thread_local! {
        /// Test-only: the statfs type every file reports (NFS without an NFS client).
        pub static FS_TYPE: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
        /// Test-only: how far this "client's" clock is off the filesystem's.
        pub static SKEW_NS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn on_a_network_filesystem_the_racy_guard_uses_the_servers_clock() {
        // Simulated: the statfs answer says NFS and this host's clock runs
        // five minutes fast; the files' stamps come from the "server"
        // (this kernel). With our own clock a file written just now would
        // look five minutes settled and be memoised at once.
        FS_TYPE.with(|t| t.set(Some(0x6969)));
        SKEW_NS.with(|s| s.set(300_000_000_000));
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.o");
        std::fs::write(&path, b"bitcode").unwrap();
        let table = MemoTable::open(&d.path().join("state")).unwrap();
        let stamp = FileStamp::of_path(&path).unwrap();
        FileHasher::new(Some(&table)).hash(&path, false).unwrap();
        assert!(table.lookup(&stamp).is_none(), "a file just written is not settled by the server's clock");
        assert!(std::fs::read_dir(d.path()).unwrap().count() == 2, "the clock probe left nothing behind");
        // Once it has settled by the server's clock (RACY_NS), it is memoised and used.
        std::thread::sleep(std::time::Duration::from_nanos(RACY_NS as u64 + 50_000_000));
        FileHasher::new(Some(&table)).hash(&path, false).unwrap();
        assert!(table.lookup(&stamp).is_some());
        let mut h = FileHasher::new(Some(&table));
        h.hash(&path, false).unwrap();
        assert_eq!(h.bytes_hashed, 0);
        // A clock five minutes slow trusts it just the same (our own clock
        // would have refused it for five minutes).
        SKEW_NS.with(|s| s.set(-300_000_000_000));
        let p2 = d.path().join("n.o");
        std::fs::write(&p2, b"other").unwrap();
        std::thread::sleep(std::time::Duration::from_nanos(RACY_NS as u64 + 50_000_000));
        FileHasher::new(Some(&table)).hash(&p2, false).unwrap();
        assert!(table.lookup(&FileStamp::of_path(&p2).unwrap()).is_some());
        FS_TYPE.with(|t| t.set(None));
        SKEW_NS.with(|s| s.set(0));
    }

    #[test]
    fn asm_memo_round_trips() {
        let refs = vec![
            AsmRef::File(b"a/b.bin".to_vec()),
            AsmRef::Include(b"m.s".to_vec()),
            AsmRef::Unresolvable(".incbin \\f".into()),
        ];
        assert_eq!(decode_asm(&encode_asm(&refs)), refs);
        assert!(decode_asm(&encode_asm(&[])).is_empty());
    }

    #[test]
    fn freshly_modified_file_is_not_trusted_from_memo() {
        let stamp = FileStamp { dev: 1, ino: 2, size: 3, mtime_ns: 10_000_000_000, ctime_ns: 10_000_000_000 };
        let racy = FileMemo { stamp, hashed_ns: 10_000_000_001, digest: [0; 32], asm: None };
        assert!(!trusted(&racy, RACY_NS));
        let settled = FileMemo { hashed_ns: 12_000_000_001, ..racy };
        assert!(trusted(&settled, RACY_NS));
    }

    #[test]
    fn fresh_file_is_memoised_only_once_it_has_settled() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.o");
        std::fs::write(&path, b"bitcode").unwrap();
        let table = MemoTable::open(&d.path().join("state")).unwrap();
        let stamp = FileStamp::of_path(&path).unwrap();
        let margin = racy_margin_ns(fs_type(&File::open(&path).unwrap()), &stamp).unwrap();

        let mut h = FileHasher::new(Some(&table));
        h.hash(&path, false).unwrap();
        assert_eq!(h.bytes_hashed, 7);
        assert!(table.lookup(&stamp).is_none(), "a file changed within the margin must not be memoised");

        std::thread::sleep(std::time::Duration::from_nanos((margin + 20_000_000) as u64));
        let mut h = FileHasher::new(Some(&table));
        h.hash(&path, false).unwrap();
        assert!(table.lookup(&stamp).is_some());
        let mut h = FileHasher::new(Some(&table));
        let again = h.hash(&path, false).unwrap();
        assert_eq!(h.bytes_hashed, 0, "the settled memo is used");
        assert_eq!(again.digest, *blake3::hash(b"bitcode").as_bytes());
    }

    #[test]
    fn concurrent_hashers_of_one_file_hash_it_once() {
        // Two backends started together both need the same import: the second
        // waits for the first's memo instead of hashing the file too.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.o");
        std::fs::write(&path, b"shared import").unwrap();
        let stamp = settle(&path);
        let first = MemoTable::open(&d.path().join("state")).unwrap();
        let guard = first.lock_bucket(&stamp).expect("lock");
        let (p2, state) = (path.clone(), d.path().join("state"));
        let second = std::thread::spawn(move || {
            let table = MemoTable::open(&state).unwrap(); // its own open file, as another process has
            let mut h = FileHasher::new(Some(&table));
            let got = h.hash(&p2, false).unwrap();
            (got.digest, h.bytes_hashed)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!second.is_finished(), "the second hasher waits for the bucket");
        let digest = *blake3::hash(b"shared import").as_bytes();
        first.insert(&FileMemo { stamp, hashed_ns: crate::util::now_ns(), digest, asm: None });
        drop(guard);
        assert_eq!(second.join().unwrap(), (digest, 0), "it used the first one's memo");
    }

    #[test]
    fn a_bucket_held_too_long_is_given_up_after_a_second() {
        // A holder that never lets go (stopped, or hung on a slow disk) costs
        // the others a second, then they hash the file themselves.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.o");
        std::fs::write(&path, b"held import").unwrap();
        let stamp = settle(&path);
        let holder = MemoTable::open(&d.path().join("state")).unwrap();
        let _held = holder.lock_bucket(&stamp).expect("lock");
        let table = MemoTable::open(&d.path().join("state")).unwrap();
        let started = std::time::Instant::now();
        let mut h = FileHasher::new(Some(&table));
        let got = h.hash(&path, false).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(900), "it waited for the holder");
        assert_eq!((got.digest, h.bytes_hashed), (*blake3::hash(b"held import").as_bytes(), 11));
    }

    #[test]
    fn stat_fast_path_sees_a_rewrite_of_the_same_size() {
        let d = tempfile::tempdir().unwrap();
        let (shard, module) = (d.path().join("s.bc"), d.path().join("m.o"));
        std::fs::write(&shard, b"shard").unwrap();
        std::fs::write(&module, b"version-1").unwrap();
        let table = MemoTable::open(&d.path().join("state")).unwrap();
        settle(&module);
        let hash = |expect_hashed: u64| {
            let mut h = FileHasher::new(Some(&table));
            h.read_tracked(&shard).unwrap(); // learns the filesystem, as a key computation does
            let got = h.hash(&module, false).unwrap();
            assert_eq!(h.bytes_hashed, expect_hashed);
            got.digest
        };
        assert_eq!(hash(9), *blake3::hash(b"version-1").as_bytes());
        assert_eq!(hash(0), *blake3::hash(b"version-1").as_bytes(), "served from the memo");
        std::fs::write(&module, b"version-2").unwrap();
        assert_eq!(hash(9), *blake3::hash(b"version-2").as_bytes(), "same size, new stamp: hashed again");
    }

    /// Digests shared by a process's jobs: the second job hashes nothing,
    /// yet records the file with its stamp, so a change before its compile
    /// ends is still seen by the after-compile check.
    #[test]
    fn shared_digests_are_taken_with_their_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.o");
        std::fs::write(&module, b"imported").unwrap();
        let shared = SharedDigests::default();
        let mut first = FileHasher::with_shared(None, &shared);
        let a = first.hash(&module, false).unwrap();
        assert_eq!(first.bytes_hashed, 8);
        let mut second = FileHasher::with_shared(None, &shared);
        let b = second.hash(&module, false).unwrap();
        assert_eq!((b.digest, second.bytes_hashed), (a.digest, 0), "taken from the first job");
        assert_eq!(second.seen, vec![(module.clone(), a.stamp)]);
        assert!(second.unchanged_since_hashing().is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&module, b"changed!!").unwrap();
        assert_eq!(second.unchanged_since_hashing(), Some(module.clone()));
        // A job that wants the assembly references does not take a digest without them.
        let mut third = FileHasher::with_shared(None, &shared);
        assert!(third.hash(&module, true).is_err() || third.bytes_hashed > 0, "hashed itself");
    }

    #[test]
    fn files_whose_size_does_not_tell_their_contents_are_refused() {
        let mut h = FileHasher::new(None);
        // /proc: size 0, contents nonetheless.
        let err = h.hash(Path::new("/proc/self/status"), false).unwrap_err();
        assert!(format!("{err:#}").contains("beyond the size"), "{err:#}");
        // A FIFO with no writer: refused at once (opening it must not block).
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = h.hash(&fifo, false).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        // An empty regular file is fine.
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert_eq!(h.hash(&dir.path().join("empty"), false).unwrap().digest, *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        // Process substitution: a writer waits for the compiler to open the
        // FIFO. Opening and closing it ourselves would let the writer through
        // and then kill it with SIGPIPE (EPIPE here), and the compiler would
        // wait forever for data.
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("profile");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let path = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(b"profile data"))
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let err = FileHasher::new(None).hash(&fifo, false).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished(), "the writer still waits for its reader");
        let mut got = String::new();
        std::fs::File::open(&fifo).unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "profile data");
        writer.join().unwrap().expect("the writer was not cut off");
    }

    #[test]
    fn margin_is_short_only_for_fine_local_timestamps() {
        let fine = FileStamp { dev: 1, ino: 2, size: 3, mtime_ns: 10_123_456_789, ctime_ns: 10_123_456_789 };
        let whole = FileStamp { mtime_ns: 10_000_000_000, ctime_ns: 10_000_000_000, ..fine };
        assert_eq!(racy_margin_ns(Some(0xEF53), &fine), Some(local_margin_ns()));
        assert!((10_000_000..=1_000_000_000).contains(&local_margin_ns()));
        // ext4 with 128-byte inodes: whole seconds.
        assert_eq!(racy_margin_ns(Some(0xEF53), &whole), Some(RACY_NS));
        // NFS (0x6969): the server's clock.
        assert_eq!(racy_margin_ns(Some(0x6969), &fine), Some(RACY_NS));
        // Never memoised: procfs (0x9fa0), sysfs (0x62656572), FUSE (0x65735546), or statfs failed.
        for t in [Some(0x9fa0), Some(0x62656572), Some(0x65735546), None] {
            assert_eq!(racy_margin_ns(t, &fine), None);
        }
    }
}

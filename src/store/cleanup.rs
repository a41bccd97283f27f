//! Keeping the store within its limits: LRU eviction, orphan and temp-file
//! sweeping, `evict --older-than`, and `verify`.
//!
//! Last use is recorded explicitly: a hit sets the entry's mtime (never atime,
//! which `noatime` mounts do not keep). Blobs are shared between entries, so a
//! blob goes only when no remaining entry names it. One cleaner runs at a time
//! per store (a non-blocking lock on `v1/cleanup.lock`); the others skip and
//! carry on. Every removal is of a whole file by `unlink`, so a concurrent
//! reader sees a file or a miss, and a concurrent writer at worst loses an
//! entry it had just written (a future miss, never a wrong object).

use crate::cachedir::beneath::{is_gone, is_refused, Dir, READ_CAP};
use crate::store::{Entry, LocalStore, Stored, JUNK_DEPTH, LAYOUT_DIR};
use crate::util::{hex, unhex};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A cleanup lock whose file has not been touched for this long belongs to a
/// cleaner that is gone without its lock being released — an NFSv3 client
/// that died (its NLM lock lasts until it reboots), a hung host — and is
/// broken. A live cleaner touches it every [`LOCK_HEARTBEAT`].
pub const LOCK_STALE: Duration = Duration::from_secs(600);
pub const LOCK_HEARTBEAT: Duration = Duration::from_secs(30);

/// Cleanup trims to this fraction of the limit, so it does not run again at the next store.
pub const TRIM_TO: f64 = 0.9;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of entries and blobs; 0 = no limit.
    pub max_size: u64,
    /// Entry and blob files; 0 = no limit.
    pub max_files: u64,
    /// Temp files and unreferenced blobs younger than this are left alone:
    /// a writer may be about to rename or reference them.
    pub grace: Duration,
}

/// The shared size ledger in `v1/size/`: how big the store was at the last
/// scan (`scan`: generation, bytes, files) and what each host has added since
/// that generation (`<hostname>`: same format). Every file is replaced by
/// rename, so any host can read a consistent value; the sum is what every host
/// compares with the limits. A store that races a scan may be counted twice or
/// not at all until the next scan: an estimate, corrected by every scan.
pub mod ledger {
    use super::*;

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Record {
        pub generation: i64,
        pub bytes: u64,
        pub files: u64,
    }

    fn dir() -> PathBuf {
        Path::new(LAYOUT_DIR).join("size")
    }

    pub fn scan_rel() -> PathBuf {
        dir().join("scan")
    }

    pub fn host_rel(host: &str) -> PathBuf {
        dir().join(format!("host.{host}"))
    }

    fn parse(text: &str) -> Option<Record> {
        let mut it = text.split_whitespace().map(|w| w.parse::<i64>().ok());
        Some(Record { generation: it.next()??, bytes: it.next()?? as u64, files: it.next()?? as u64 })
    }

    fn write(store: &LocalStore, name: &str, r: Record) -> Result<()> {
        // write_atomic creates the temp directory (and the ledger's) when missing.
        let text = format!("{} {} {}\n", r.generation, r.bytes, r.files);
        store.write_rel(&dir().join(name), text.as_bytes())
    }

    /// The last scan, if any host ever scanned this store.
    pub fn scan(store: &LocalStore) -> Option<Record> {
        let text = store.dir().ok()?.read(scan_rel(), 64).ok()?;
        parse(std::str::from_utf8(&text).ok()?)
    }

    pub fn write_scan(store: &LocalStore, r: Record) -> Result<()> {
        write(store, "scan", r)
    }

    /// Adds a store's bytes and files to this host's record in the ledger,
    /// `host.<name>`, and returns the new total. A record of another
    /// generation (a scan happened since) restarts at this store.
    ///
    /// Only this host writes its record, so its parallel compiles serialise
    /// on a host-local lock (`<state_dir>/ledger.lock`) and rewrite the record
    /// in place: fixed width, one `pwrite`. Not temp + rename: renaming over
    /// an existing file makes ext4 flush the new one first (`auto_da_alloc`),
    /// which cost 0.1–0.2 ms per store. A reader racing the write may see a
    /// torn record; it fails to parse and counts as zero until the next
    /// store, an underestimate within the stated tolerance.
    pub fn add_mine(
        state_dir: &Path,
        store: &LocalStore,
        host: &str,
        generation: i64,
        bytes: u64,
        files: u64,
    ) -> Result<Record> {
        use std::os::unix::fs::FileExt;
        let lock_path = state_dir.join(crate::cachedir::layout::LEDGER_LOCK);
        // Write access: on NFS an exclusive lock needs it.
        let lock = crate::cachedir::beneath::open_in(
            state_dir,
            crate::cachedir::layout::LEDGER_LOCK,
            libc::O_WRONLY | libc::O_CREAT,
            0o600,
            4096,
        )
        .with_context(|| format!("opening {}", lock_path.display()))?;
        // Bounded: a stopped process of this host holding the lock costs an
        // underestimate of this store, not a hung compile.
        crate::cachedir::beneath::lock_within(&lock, true, Duration::from_secs(2))
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let rel = host_rel(host);
        let cache = store.dir_creating()?;
        let opened = match cache.open_creating(&rel, libc::O_RDWR, 0o666, 4096) {
            // Not a record of ours at our name: replaced.
            Err(e) if is_refused(&e) => {
                remove(cache, &rel);
                cache.open_creating(&rel, libc::O_RDWR, 0o666, 4096)
            }
            r => r,
        };
        let (f, _) = opened.with_context(|| format!("opening {}", cache.join(&rel).display()))?;
        let mut buf = [0u8; 64];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        let mut r = match std::str::from_utf8(&buf[..n]).ok().and_then(parse) {
            Some(old) if old.generation == generation => old,
            _ => Record { generation, bytes: 0, files: 0 },
        };
        r.bytes += bytes;
        r.files += files;
        // Fixed width, so an overwrite never leaves a longer old tail behind.
        let line = format!("{:<63}\n", format!("{} {} {}", r.generation, r.bytes, r.files));
        f.write_all_at(line.as_bytes(), 0).with_context(|| format!("writing {}", cache.join(&rel).display()))?;
        Ok(r)
    }

    /// The sum of what other hosts added since `generation`.
    pub fn others(store: &LocalStore, generation: i64, me: &str) -> (u64, u64) {
        let mine = format!("host.{me}");
        let (mut b, mut f) = (0, 0);
        let Ok(cache) = store.dir() else { return (0, 0) };
        let Ok(names) = cache.names(Some(&dir())) else { return (0, 0) };
        for name in names {
            let Ok(name) = std::str::from_utf8(&name) else { continue };
            if !name.starts_with("host.") || name == mine {
                continue;
            }
            let text = cache.read(dir().join(name), 4096).ok();
            if let Some(r) = text.as_deref().and_then(|t| std::str::from_utf8(t).ok()).and_then(parse) {
                if r.generation == generation {
                    b += r.bytes;
                    f += r.files;
                }
            }
        }
        (b, f)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    /// When the scan started: the generation of the ledger it wrote.
    pub generation: i64,
    /// Another process held the cleanup lock; nothing was done.
    pub skipped: bool,
    pub bytes_before: u64,
    pub files_before: u64,
    pub bytes_after: u64,
    pub files_after: u64,
    pub removed_entries: u64,
    pub removed_blobs: u64,
    pub removed_temp: u64,
    pub removed_corrupt: u64,
    /// Precise maps whose entry is gone (src/precise.rs).
    pub removed_precise: u64,
    /// A stale cleanup lock was broken (its holder gone for [`LOCK_STALE`]).
    pub broke_stale_lock: bool,
}

struct EntryInfo {
    path: PathBuf,
    used: SystemTime,
    size: u64,
    blobs: Vec<[u8; 32]>,
}

struct BlobInfo {
    path: PathBuf,
    modified: SystemTime,
    size: u64,
}

/// Everything in the store, read once.
struct Inventory {
    entries: Vec<EntryInfo>,
    blobs: HashMap<[u8; 32], BlobInfo>,
    corrupt_entries: Vec<PathBuf>,
}

/// An entry file read for cleanup or verify: its stat and bytes, `Err` with
/// why it is not an entry file at all (a symlink, FIFO, directory or giant
/// planted at an entry's name), `None` when it vanished meanwhile.
fn read_entry(dir: &Dir, rel: &Path) -> Option<std::result::Result<(crate::cachedir::beneath::Stat, Vec<u8>), String>> {
    match dir.open_regular(rel, libc::O_RDONLY, 0, READ_CAP) {
        Ok((f, st)) => match crate::util::read_sized(&f, st.st_size as u64) {
            Ok(d) => Some(Ok((crate::cachedir::beneath::Stat::of_raw(&st), d))),
            Err(e) if is_gone(&e) => None,
            Err(e) => Some(Err(e.to_string())),
        },
        Err(e) if is_gone(&e) => None,
        Err(e) if is_refused(&e) => Some(Err(format!("refused: {e}"))),
        Err(e) => Some(Err(e.to_string())),
    }
}

fn inventory(store: &LocalStore, dir: &Dir, beat: &mut Heartbeat) -> Inventory {
    let mut inv = Inventory { entries: Vec::new(), blobs: HashMap::new(), corrupt_entries: Vec::new() };
    for path in store.files("entries") {
        beat.beat();
        let (meta, data) = match read_entry(dir, &path) {
            None => continue,
            Some(Ok(x)) => x,
            Some(Err(_)) => {
                inv.corrupt_entries.push(path);
                continue;
            }
        };
        if Entry::is_foreign(&data) {
            // Another version's entry: kept, evicted by age with no blob references known.
            inv.entries.push(EntryInfo { used: meta.modified(), size: meta.size, blobs: Vec::new(), path });
            continue;
        }
        match Entry::decode(&data) {
            Ok(e) if path.file_name().and_then(|n| n.to_str()) == Some(hex(&e.key).as_str()) => {
                inv.entries.push(EntryInfo {
                    used: meta.modified(),
                    size: meta.size,
                    blobs: e.outputs.iter().filter(|o| o.stored == Stored::Blob).map(|o| o.digest).collect(),
                    path,
                })
            }
            _ => inv.corrupt_entries.push(path),
        }
    }
    for path in store.files("blobs") {
        beat.beat();
        let Some(digest) = blob_digest(&path) else { continue };
        let meta = match dir.stat(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if !meta.is_file() {
            // Not a blob: something planted at a blob's name.
            inv.corrupt_entries.push(path);
            continue;
        }
        inv.blobs.insert(digest, BlobInfo { modified: meta.modified(), size: meta.size, path });
    }
    inv
}

/// Removes a file of ours, or whatever was planted at its name (a directory
/// tree is emptied by descriptor, never through a symlink).
fn remove(dir: &Dir, rel: &Path) -> bool {
    match dir.unlink(rel) {
        Ok(()) => true,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {
            dir.remove_tree(rel, JUNK_DEPTH).is_ok()
        }
        Err(_) => false,
    }
}

/// Keeps the cleanup lock file's mtime fresh while a cleanup runs, so that
/// no other host takes it for a dead cleaner's ([`LOCK_STALE`]).
struct Heartbeat {
    lock: File,
    last: std::time::Instant,
}

impl Heartbeat {
    fn beat(&mut self) {
        if self.last.elapsed() >= LOCK_HEARTBEAT {
            touch_fd(&self.lock);
            self.last = std::time::Instant::now();
        }
    }
}

fn touch_fd(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: futimens with NULL times sets "now" (the server's clock on NFS).
    unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) };
}

/// The digest a blob file is named by (raw `<hex>` or compressed `<hex>.zst`).
fn blob_digest(path: &Path) -> Option<[u8; 32]> {
    let name = path.file_name()?.to_str()?;
    unhex(name.strip_suffix(crate::store::ZSTD_SUFFIX).unwrap_or(name))?.try_into().ok()
}

/// The name of the cleanup lock, beneath the cache directory.
pub fn lock_rel() -> PathBuf {
    Path::new(LAYOUT_DIR).join("cleanup.lock")
}

/// Takes the cleanup lock without waiting. `None` when another process holds
/// it — unless its file has not been touched for [`LOCK_STALE`] by the
/// clock of the filesystem that stamps it: then its holder is taken for
/// dead, the file is replaced and the new one locked (the flag says so).
///
/// Opened for writing: Linux's NFS client turns `flock` into a POSIX lock,
/// and an exclusive one needs write access. A failed lock (no lock support)
/// is an error, never taken as held.
fn try_lock(store: &LocalStore) -> Result<Option<(File, bool)>> {
    let dir = store.dir_creating()?;
    dir.create_dirs(LAYOUT_DIR).with_context(|| format!("creating {}", store.root().display()))?;
    let rel = lock_rel();
    let open = || -> Result<File> {
        let opened = match dir.open_creating(&rel, libc::O_RDWR, 0o666, 4096) {
            // Something planted at the lock's name would stop every cleanup
            // for good: it goes (a name of ours), and a fresh file is made.
            Err(e) if is_refused(&e) => {
                remove(dir, &rel);
                dir.open_creating(&rel, libc::O_RDWR, 0o666, 4096)
            }
            r => r,
        };
        Ok(opened.with_context(|| format!("opening {}", dir.join(&rel).display()))?.0)
    };
    let f = open()?;
    match f.try_lock() {
        Ok(()) => {
            touch_fd(&f);
            return Ok(Some((f, false)));
        }
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", dir.join(&rel).display()))
        }
    }
    let stamp = crate::cachedir::beneath::Stat::of_raw(&crate::cachedir::beneath::fstat_file(&f)?);
    let now = crate::cachedir::beneath::fs_now_ns(dir, &LocalStore::tmp_rel()).unwrap_or_else(crate::util::now_ns);
    if now - stamp.mtime_ns < LOCK_STALE.as_nanos() as i64 {
        return Ok(None);
    }
    // Replace the file (by name: the dead holder's lock stays on the old
    // inode). Two hosts breaking the same stale lock at once may both win;
    // two cleaners then evict concurrently, which costs extra misses, never
    // a wrong object.
    let _ = dir.unlink(&rel);
    let f = open()?;
    match f.try_lock() {
        Ok(()) => {
            touch_fd(&f);
            Ok(Some((f, true)))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", dir.join(&rel).display())),
    }
}

fn older_than(t: SystemTime, age: Duration, now: SystemTime) -> bool {
    now.duration_since(t).map(|d| d >= age).unwrap_or(false)
}

/// Removes what `evict` selects (entries, least recently used first, while
/// `evict` says so), then every blob no entry names any more and every stale
/// temp file. `evict(bytes, files, entry)` decides per entry.
fn sweep(store: &LocalStore, limits: &Limits, mut evict: impl FnMut(u64, u64, &EntryInfo) -> bool) -> Result<Report> {
    let Some((lock, broke_stale_lock)) = try_lock(store)? else {
        return Ok(Report { skipped: true, ..Report::default() });
    };
    let dir = store.dir()?;
    let mut beat = Heartbeat { lock, last: std::time::Instant::now() };
    let now = SystemTime::now();
    let generation = crate::util::now_ns();
    let mut inv = inventory(store, dir, &mut beat);
    let mut r = Report { generation, broke_stale_lock, ..Report::default() };

    for p in &inv.corrupt_entries {
        if remove(dir, p) {
            r.removed_corrupt += 1;
        }
    }
    let mut bytes: u64 =
        inv.entries.iter().map(|e| e.size).sum::<u64>() + inv.blobs.values().map(|b| b.size).sum::<u64>();
    let mut files = (inv.entries.len() + inv.blobs.len()) as u64;
    r.bytes_before = bytes;
    r.files_before = files;

    let mut refs: HashMap<[u8; 32], u32> = HashMap::new();
    for e in &inv.entries {
        for b in &e.blobs {
            *refs.entry(*b).or_default() += 1;
        }
    }

    inv.entries.sort_by_key(|e| e.used);
    let mut evicted = std::collections::HashSet::new();
    for e in &inv.entries {
        beat.beat();
        if !evict(bytes, files, e) {
            continue;
        }
        if dir.unlink(&e.path).is_err() {
            continue;
        }
        r.removed_entries += 1;
        evicted.insert(&e.path);
        bytes = bytes.saturating_sub(e.size);
        files = files.saturating_sub(1);
        for b in &e.blobs {
            let n = refs.get_mut(b).expect("counted above");
            *n -= 1;
            if *n == 0 {
                // Its last entry is gone: the blob goes too (whatever its age;
                // a writer that re-references it re-stores it on a miss).
                if let Some(info) = inv.blobs.remove(b) {
                    if dir.unlink(&info.path).is_ok() {
                        r.removed_blobs += 1;
                        bytes = bytes.saturating_sub(info.size);
                        files = files.saturating_sub(1);
                    }
                }
            }
        }
    }

    // Blobs no entry ever named (a writer died between blob and entry), once
    // past the grace period in which a writer may still be about to name them.
    let orphans: Vec<[u8; 32]> = inv
        .blobs
        .iter()
        .filter(|(d, b)| refs.get(*d).copied().unwrap_or(0) == 0 && older_than(b.modified, limits.grace, now))
        .map(|(d, _)| *d)
        .collect();
    for d in orphans {
        let info = inv.blobs.remove(&d).unwrap();
        if dir.unlink(&info.path).is_ok() {
            r.removed_blobs += 1;
            bytes = bytes.saturating_sub(info.size);
            files = files.saturating_sub(1);
        }
    }

    // Precise maps (src/precise.rs) whose entry is gone, or that are not
    // maps, once past the grace period: without this they would outlive
    // every entry. A live map costs one small read here, only in cleanup.
    let live: std::collections::HashSet<&std::ffi::OsStr> =
        inv.entries.iter().filter(|e| !evicted.contains(&e.path)).filter_map(|e| e.path.file_name()).collect();
    for path in store.files("precise") {
        beat.beat();
        let Some(second) = path.file_name().and_then(|n| n.to_str()).and_then(unhex) else { continue };
        let Ok(second) = <[u8; 32]>::try_from(second) else { continue };
        let first = dir.read(&path, 256).ok().and_then(|d| crate::store::parse_precise_map(&second, &d));
        let alive = first.is_some_and(|k| live.contains(std::ffi::OsStr::new(&hex(&k))));
        let stale = dir.stat(&path).is_ok_and(|m| older_than(m.modified(), limits.grace, now));
        if !alive && stale && remove(dir, &path) {
            r.removed_precise += 1;
        }
    }

    // Temp files of writers that died (or are very slow) past the grace
    // period, and trees moved aside by `clear` or from an entry's name. Only
    // names of our shape; a tree is emptied by descriptor.
    let tmp = LocalStore::tmp_rel();
    for name in dir.names(Some(&tmp)).unwrap_or_default() {
        beat.beat();
        let Ok(name) = String::from_utf8(name) else { continue };
        if !(name.ends_with(".tmp") || name.ends_with(".junk")) {
            continue;
        }
        let rel = tmp.join(&name);
        let stale = dir.stat(&rel).is_ok_and(|m| older_than(m.modified(), limits.grace, now));
        if stale && remove(dir, &rel) {
            r.removed_temp += 1;
        }
    }
    r.bytes_after = bytes;
    r.files_after = files;
    // Best effort: on a full disk the ledger may not be writable; the next
    // cleanup (which finds no current scan) simply scans again.
    let _ = ledger::write_scan(store, ledger::Record { generation, bytes, files });
    Ok(r)
}

/// Trims the store below [`TRIM_TO`] of its limits, least recently used first.
pub fn cleanup(store: &LocalStore, limits: &Limits) -> Result<Report> {
    let over = |bytes: u64, files: u64, frac: f64| {
        (limits.max_size > 0 && bytes as f64 > limits.max_size as f64 * frac)
            || (limits.max_files > 0 && files as f64 > limits.max_files as f64 * frac)
    };
    // Only start evicting when over the limit; once started, go down to TRIM_TO.
    let mut started = false;
    sweep(store, limits, |bytes, files, _| {
        if !started {
            started = over(bytes, files, 1.0);
        }
        started && over(bytes, files, TRIM_TO)
    })
}

/// Removes entries not used for `age`.
pub fn evict_older_than(store: &LocalStore, limits: &Limits, age: Duration) -> Result<Report> {
    let now = SystemTime::now();
    sweep(store, limits, |_, _, e| older_than(e.used, age, now))
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    pub blobs: u64,
    pub bad_entries: Vec<PathBuf>,
    pub bad_blobs: Vec<PathBuf>,
    /// Entries that name a blob that is missing or has the wrong size.
    pub dangling_entries: Vec<PathBuf>,
    pub fixed: u64,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.bad_entries.is_empty() && self.bad_blobs.is_empty() && self.dangling_entries.is_empty()
    }
}

/// Checks every blob's digest and every entry's checksum and references.
///
/// Paths in the report are absolute. A file deleted meanwhile (by a cleanup,
/// another host: ENOENT, ESTALE) is skipped; anything that is not a regular
/// file at a blob's or entry's name is reported bad and, with `fix`, removed.
pub fn verify(store: &LocalStore, fix: bool) -> Result<VerifyReport> {
    let mut r = VerifyReport::default();
    let Ok(dir) = store.dir() else { return Ok(r) };
    let mut good_blobs: HashMap<[u8; 32], u64> = HashMap::new();
    let mut bad_rel = Vec::new();
    for path in store.files("blobs") {
        let data = match dir.open_regular(&path, libc::O_RDONLY, 0, crate::cachedir::beneath::BLOB_CAP) {
            Ok((f, st)) => match crate::util::map_file(&f, st.st_size as u64) {
                Ok(m) => {
                    if path.to_string_lossy().ends_with(crate::store::ZSTD_SUFFIX) {
                        zstd::stream::decode_all(&m[..]).ok()
                    } else {
                        Some(m.to_vec())
                    }
                }
                Err(e) if is_gone(&e) => continue,
                Err(_) => None,
            },
            Err(e) if is_gone(&e) => continue,
            Err(_) => None,
        };
        r.blobs += 1;
        match (blob_digest(&path), data) {
            (Some(d), Some(data)) if &d == blake3::hash(&data).as_bytes() => {
                good_blobs.insert(d, data.len() as u64);
            }
            _ => {
                r.bad_blobs.push(dir.join(&path));
                bad_rel.push(path);
            }
        }
    }
    for path in store.files("entries") {
        let data = match read_entry(dir, &path) {
            None => continue,
            Some(Ok((_, d))) => d,
            Some(Err(_)) => {
                r.entries += 1;
                r.bad_entries.push(dir.join(&path));
                bad_rel.push(path);
                continue;
            }
        };
        r.entries += 1;
        if Entry::is_foreign(&data) {
            continue; // another ltocache version's entry
        }
        match Entry::decode(&data) {
            Ok(e) if path.file_name().and_then(|n| n.to_str()) == Some(hex(&e.key).as_str()) => {
                if e.outputs.iter().any(|o| matches!(o.inline_data(), Some(Err(_)))) {
                    r.bad_entries.push(dir.join(&path));
                    bad_rel.push(path);
                } else if e
                    .outputs
                    .iter()
                    .any(|o| o.stored == Stored::Blob && good_blobs.get(&o.digest) != Some(&o.size))
                {
                    r.dangling_entries.push(dir.join(&path));
                    bad_rel.push(path);
                }
            }
            _ => {
                r.bad_entries.push(dir.join(&path));
                bad_rel.push(path);
            }
        }
    }
    if fix {
        for p in &bad_rel {
            if remove(dir, p) {
                r.fixed += 1;
            }
        }
    }
    Ok(r)
}

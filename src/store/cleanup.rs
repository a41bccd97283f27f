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

use crate::store::{Entry, LocalStore, Stored};
use crate::util::{hex, unhex};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

    fn dir(store: &LocalStore) -> PathBuf {
        store.root().join("size")
    }

    fn parse(text: &str) -> Option<Record> {
        let mut it = text.split_whitespace().map(|w| w.parse::<i64>().ok());
        Some(Record { generation: it.next()??, bytes: it.next()?? as u64, files: it.next()?? as u64 })
    }

    fn write(store: &LocalStore, name: &str, r: Record) -> Result<()> {
        // write_atomic creates the temp directory (and the ledger's) when missing.
        let text = format!("{} {} {}\n", r.generation, r.bytes, r.files);
        crate::util::write_atomic(&store.tmp_dir(), &dir(store).join(name), text.as_bytes())
    }

    /// The last scan, if any host ever scanned this store.
    pub fn scan(store: &LocalStore) -> Option<Record> {
        let text = crate::util::read_file(&dir(store).join("scan")).ok()?;
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
        let lock_path = state_dir.join("ledger.lock");
        let lock = crate::util::open_creating_dir(&lock_path, libc::O_WRONLY | libc::O_CREAT, 0o666)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()?;
        let path = dir(store).join(format!("host.{host}"));
        let f = crate::util::open_creating_dir(&path, libc::O_RDWR | libc::O_CREAT, 0o666)
            .with_context(|| format!("opening {}", path.display()))?;
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
        f.write_all_at(line.as_bytes(), 0).with_context(|| format!("writing {}", path.display()))?;
        Ok(r)
    }

    /// The sum of what other hosts added since `generation`.
    pub fn others(store: &LocalStore, generation: i64, me: &str) -> (u64, u64) {
        let mine = format!("host.{me}");
        let (mut b, mut f) = (0, 0);
        let dir = dir(store);
        let Ok(names) = crate::util::dir_names(&dir) else { return (0, 0) };
        for name in names {
            let Ok(name) = std::str::from_utf8(&name) else { continue };
            if !name.starts_with("host.") || name == mine {
                continue;
            }
            let text = crate::util::read_file(&dir.join(name)).ok();
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

fn inventory(store: &LocalStore) -> Inventory {
    let mut inv = Inventory { entries: Vec::new(), blobs: HashMap::new(), corrupt_entries: Vec::new() };
    for path in store.files("entries") {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let Ok(data) = std::fs::read(&path) else { continue };
        if Entry::is_foreign(&data) {
            // Another version's entry: kept, evicted by age with no blob references known.
            inv.entries.push(EntryInfo {
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                size: meta.len(),
                blobs: Vec::new(),
                path,
            });
            continue;
        }
        match Entry::decode(&data) {
            Ok(e) if path.file_name().and_then(|n| n.to_str()) == Some(hex(&e.key).as_str()) => {
                inv.entries.push(EntryInfo {
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    size: meta.len(),
                    blobs: e.outputs.iter().filter(|o| o.stored == Stored::Blob).map(|o| o.digest).collect(),
                    path,
                })
            }
            _ => inv.corrupt_entries.push(path),
        }
    }
    for path in store.files("blobs") {
        let Some(digest) = blob_digest(&path) else { continue };
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        inv.blobs.insert(
            digest,
            BlobInfo { modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), size: meta.len(), path },
        );
    }
    inv
}

/// The digest a blob file is named by (raw `<hex>` or compressed `<hex>.zst`).
fn blob_digest(path: &Path) -> Option<[u8; 32]> {
    let name = path.file_name()?.to_str()?;
    unhex(name.strip_suffix(crate::store::ZSTD_SUFFIX).unwrap_or(name))?.try_into().ok()
}

/// Takes the cleanup lock without waiting. `None` when another process holds it.
fn try_lock(store: &LocalStore) -> Result<Option<File>> {
    std::fs::create_dir_all(store.root()).with_context(|| format!("creating {}", store.root().display()))?;
    let path = store.root().join("cleanup.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

fn older_than(t: SystemTime, age: Duration, now: SystemTime) -> bool {
    now.duration_since(t).map(|d| d >= age).unwrap_or(false)
}

/// Removes what `evict` selects (entries, least recently used first, while
/// `evict` says so), then every blob no entry names any more and every stale
/// temp file. `evict(bytes, files, entry)` decides per entry.
fn sweep(store: &LocalStore, limits: &Limits, mut evict: impl FnMut(u64, u64, &EntryInfo) -> bool) -> Result<Report> {
    let Some(_lock) = try_lock(store)? else {
        return Ok(Report { skipped: true, ..Report::default() });
    };
    let now = SystemTime::now();
    let generation = crate::util::now_ns();
    let mut inv = inventory(store);
    let mut r = Report { generation, ..Report::default() };

    for p in &inv.corrupt_entries {
        if std::fs::remove_file(p).is_ok() {
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
    for e in &inv.entries {
        if !evict(bytes, files, e) {
            continue;
        }
        if std::fs::remove_file(&e.path).is_err() {
            continue;
        }
        r.removed_entries += 1;
        bytes = bytes.saturating_sub(e.size);
        files = files.saturating_sub(1);
        for b in &e.blobs {
            let n = refs.get_mut(b).expect("counted above");
            *n -= 1;
            if *n == 0 {
                // Its last entry is gone: the blob goes too (whatever its age;
                // a writer that re-references it re-stores it on a miss).
                if let Some(info) = inv.blobs.remove(b) {
                    if std::fs::remove_file(&info.path).is_ok() {
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
        if std::fs::remove_file(&info.path).is_ok() {
            r.removed_blobs += 1;
            bytes = bytes.saturating_sub(info.size);
            files = files.saturating_sub(1);
        }
    }

    // Temp files of writers that died (or are very slow) past the grace period.
    if let Ok(rd) = std::fs::read_dir(store.tmp_dir()) {
        for e in rd.flatten() {
            let stale =
                e.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| older_than(t, limits.grace, now));
            if stale && std::fs::remove_file(e.path()).is_ok() {
                r.removed_temp += 1;
            }
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
pub fn verify(store: &LocalStore, fix: bool) -> Result<VerifyReport> {
    let mut r = VerifyReport::default();
    let mut good_blobs: HashMap<[u8; 32], u64> = HashMap::new();
    for path in store.files("blobs") {
        r.blobs += 1;
        let mut data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if path.to_string_lossy().ends_with(crate::store::ZSTD_SUFFIX) {
            data = zstd::stream::decode_all(&data[..]).unwrap_or_default();
        }
        match blob_digest(&path) {
            Some(d) if &d == blake3::hash(&data).as_bytes() => {
                good_blobs.insert(d, data.len() as u64);
            }
            _ => r.bad_blobs.push(path),
        }
    }
    for path in store.files("entries") {
        r.entries += 1;
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if Entry::is_foreign(&data) {
            continue; // another ltocache version's entry
        }
        match Entry::decode(&data) {
            Ok(e) if path.file_name().and_then(|n| n.to_str()) == Some(hex(&e.key).as_str()) => {
                if e.outputs.iter().any(|o| matches!(o.inline_data(), Some(Err(_)))) {
                    r.bad_entries.push(path);
                } else if e
                    .outputs
                    .iter()
                    .any(|o| o.stored == Stored::Blob && good_blobs.get(&o.digest) != Some(&o.size))
                {
                    r.dangling_entries.push(path);
                }
            }
            _ => r.bad_entries.push(path),
        }
    }
    if fix {
        for p in r.bad_blobs.iter().chain(&r.bad_entries).chain(&r.dangling_entries) {
            if std::fs::remove_file(p).is_ok() {
                r.fixed += 1;
            }
        }
    }
    Ok(r)
}

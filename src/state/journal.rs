//! The per-host journal: each wrapped compile appends what it counted as one
//! record, in one `write`, instead of opening SQLite (about 0.7 ms of a 2 ms
//! hit before this existed). `stats`, `explain` and the like fold the journal
//! into the database first; a compile that finds the journal over
//! [`FOLD_AT`] folds it too, so it stays small when nobody asks.
//!
//! Folding is exactly-once, crash or not:
//!
//! * Writers open `journal` for appending (and reading: on NFS, where Linux
//!   turns `flock` into a POSIX lock, a shared lock needs read access), take
//!   a shared `flock` and check
//!   the path still names the file they hold before writing; a writer that
//!   lost a race with a fold retries on the new file.
//! * One folder at a time (an exclusive lock on `journal.lock`) renames
//!   `journal` to `journal.folding`, takes an exclusive `flock` on it (so
//!   in-flight writers finish), applies every record in one SQLite
//!   transaction that also records the folded file's identity, then unlinks
//!   it. A folder that dies leaves `journal.folding`: the next one applies it
//!   unless the database says it already did, and unlinks it either way.
//!
//! Locks are taken with bounded waits ([`crate::cachedir::beneath::lock_within`]): a
//! stopped process of this host holding one costs seconds, not a hang. A
//! lock that cannot be taken at all (a filesystem without locks) is an
//! error: the record is not written (the wrapper logs it) rather than
//! written where a fold could lose it.
//!
//! Record: `LTJ1`, payload length (u32 LE), the first 8 bytes of the
//! payload's BLAKE3, payload. A torn record (full disk, killed writer) fails
//! its check; the reader resynchronises on the next `LTJ1` and counts the
//! bytes it skipped.

use crate::cachedir::beneath::{lock_within, open_in, open_in_stat};
use crate::cachedir::layout::{JOURNAL, JOURNAL_FOLDING, JOURNAL_LOCK};
use crate::state::stats::{Batch, Db};
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const MAGIC: &[u8; 4] = b"LTJ1";
/// A compile that leaves the journal longer than this folds it (a record is
/// 0.2–2 KiB, so this is a fold every few thousand compiles).
pub const FOLD_AT: u64 = 4 << 20;
/// The most of a journal a fold reads: a compile folds it long before.
const FOLD_CAP: u64 = 256 << 20;

/// Appends one invocation's batch. Returns the journal's length afterwards.
pub fn append(dir: &Path, batch: &Batch) -> std::io::Result<u64> {
    append_many(dir, &[batch])
}

/// Appends several records in one `write` (the DTLTO distributor records a
/// whole link's jobs at once: one open and lock instead of one per job).
pub fn append_many(dir: &Path, batches: &[&Batch]) -> std::io::Result<u64> {
    // Extended whole, not collected byte by byte through `flat_map` (that
    // was 36,000 instructions for one hit's 1.4 KiB record).
    let mut record = Vec::new();
    for b in batches {
        record.extend_from_slice(&encode(b));
    }
    for _ in 0..8 {
        let (mut f, mine) = open_in_stat(dir, JOURNAL, libc::O_RDWR | libc::O_CREAT | libc::O_APPEND, 0o600, u64::MAX)?;
        // A fold holds the exclusive lock only while it waits for writers
        // already in, so this wait is short; a failure is the caller's to log.
        lock_within(&f, false, Duration::from_secs(2))?;
        match crate::cachedir::beneath::stat_in(dir, JOURNAL) {
            Ok(m) if m.ino == mine.st_ino && m.dev == mine.st_dev => {}
            // A fold renamed it between our open and our lock: use the new one.
            _ => continue,
        }
        f.write_all(&record)?;
        return Ok(mine.st_size as u64 + record.len() as u64);
    }
    Err(std::io::Error::other("journal kept being folded under us"))
}

/// Folds the journal into `db`. `wait`: block for a concurrent folder (the
/// subcommands, which must see every record) or give up (a compile).
pub fn fold(dir: &Path, db: &mut Db, wait: bool) -> Result<()> {
    let lock_path = dir.join(JOURNAL_LOCK);
    if !dir.is_dir() {
        return Ok(()); // no directory yet: nothing was ever journalled
    }
    // Opened for writing: an exclusive lock on NFS needs it.
    let lock = open_in(dir, JOURNAL_LOCK, libc::O_RDWR | libc::O_CREAT, 0o600, 4096)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if wait {
        lock_within(&lock, true, Duration::from_secs(30))
            .with_context(|| format!("another fold of {} is still running", dir.display()))?;
    } else if lock.try_lock().is_err() {
        return Ok(());
    }
    let folding = dir.join(JOURNAL_FOLDING);
    // A fold that died after renaming: finish it first.
    if std::fs::symlink_metadata(&folding).is_ok() {
        fold_file(dir, &folding, db)?;
    }
    match std::fs::rename(dir.join(JOURNAL), &folding) {
        Ok(()) => fold_file(dir, &folding, db),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("renaming the journal for folding"),
    }
}

fn fold_file(dir: &Path, path: &Path, db: &mut Db) -> Result<()> {
    let f = open_in(dir, JOURNAL_FOLDING, libc::O_RDWR, 0, u64::MAX)
        .with_context(|| format!("opening {}", path.display()))?;
    // Writers that opened it before the rename finish their record first.
    // One that stopped mid-append does not hold the fold (and so `stats`)
    // forever: after the wait its record, if it ever comes, is lost.
    match lock_within(&f, true, Duration::from_secs(10)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        r => r.with_context(|| format!("locking {}", path.display()))?,
    }
    let meta = f.metadata()?;
    let ident = (meta.dev(), meta.ino(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec(), meta.len());
    if db.journal_folded(ident)? {
        std::fs::remove_file(path)?;
        return Ok(());
    }
    let data = crate::util::read_sized(&f, meta.len().min(FOLD_CAP))?;
    let (mut batches, skipped) = decode_all(&data);
    if skipped > 0 {
        let mut b = Batch::default();
        b.add("errors.journal_bytes_skipped", skipped as i64);
        batches.push(b);
    }
    db.apply(&batches, Some(ident))?;
    std::fs::remove_file(path)?;
    Ok(())
}

struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn digest(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
}

fn encode(b: &Batch) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(512));
    w.u64(b.at_ns as u64);
    for (name, n) in &b.counters {
        w.0.push(b'C');
        w.bytes(name.as_bytes());
        w.u64(*n as u64);
    }
    if let Some((key, size, duration)) = &b.stored_entry {
        w.0.push(b'E');
        w.0.extend_from_slice(key);
        w.u64(*size);
        w.u64(*duration);
    }
    for (digest, size) in &b.stored_blobs {
        w.0.push(b'B');
        w.0.extend_from_slice(digest);
        w.u64(*size);
    }
    if let Some((output, key, outcome, fields)) = &b.last_compile {
        w.0.push(b'L');
        w.bytes(output.as_bytes());
        w.0.extend_from_slice(key);
        w.bytes(outcome.as_bytes());
        w.bytes(fields.as_bytes());
    }
    let payload = w.0;
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
    out.extend_from_slice(&payload);
    out
}

fn decode_payload(p: &[u8]) -> Option<Batch> {
    let mut r = Reader(p);
    let mut b = Batch { at_ns: r.u64()? as i64, ..Batch::default() };
    while let Some(tag) = r.take(1) {
        match tag[0] {
            b'C' => {
                let name = r.string()?;
                let n = r.u64()? as i64;
                *b.counters.entry(name).or_insert(0) += n;
            }
            b'E' => b.stored_entry = Some((r.digest()?, r.u64()?, r.u64()?)),
            b'B' => b.stored_blobs.push((r.digest()?, r.u64()?)),
            b'L' => b.last_compile = Some((r.string()?, r.digest()?, r.string()?, r.string()?)),
            _ => return None,
        }
    }
    Some(b)
}

/// Every intact record, and how many bytes were skipped around torn ones.
fn decode_all(data: &[u8]) -> (Vec<Batch>, usize) {
    let (mut out, mut skipped, mut at) = (Vec::new(), 0, 0);
    while at < data.len() {
        let record = (|| {
            let rest = &data[at..];
            if rest.get(..4)? != MAGIC {
                return None;
            }
            let n = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
            let payload = rest.get(16..16 + n)?;
            if blake3::hash(payload).as_bytes()[..8] != rest[8..16] {
                return None;
            }
            Some((decode_payload(payload)?, 16 + n))
        })();
        match record {
            Some((b, len)) => {
                out.push(b);
                at += len;
            }
            None => {
                // Resynchronise on the next magic.
                let next = data[at + 1..].windows(4).position(|w| w == MAGIC).map_or(data.len(), |p| at + 1 + p);
                skipped += next - at;
                at = next;
            }
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(hits: i64) -> Batch {
        let mut b = Batch { at_ns: 42, ..Batch::default() };
        b.add("hits", hits);
        b.stored_entry = Some(([1; 32], 10, 20));
        b.stored_blobs.push(([2; 32], 30));
        b.last_compile = Some(("/o.o".into(), [3; 32], "hit".into(), "arg[0]\t-c\n".into()));
        b
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_skipped() {
        let mut data = encode(&batch(1));
        let torn = encode(&batch(5));
        data.extend_from_slice(&torn[..torn.len() / 2]);
        data.extend_from_slice(&encode(&batch(2)));
        let (batches, skipped) = decode_all(&data);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].counters["hits"], 1);
        assert_eq!(batches[1].counters["hits"], 2);
        assert_eq!(batches[1].last_compile, batch(2).last_compile);
        assert_eq!(batches[1].stored_blobs, vec![([2; 32], 30)]);
        assert_eq!(skipped, torn.len() / 2);
    }

    #[test]
    fn concurrent_appends_and_folds_lose_and_double_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let db_path = dir.join("s.sqlite3");
        let writers: Vec<_> = (0..6)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        append(&dir, &batch(1)).unwrap();
                    }
                })
            })
            .collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let folder = {
            let (dir, db_path, done) = (dir.clone(), db_path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut db = Db::open(&db_path).unwrap();
                // Fold as often as possible while the writers run.
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    fold(&dir, &mut db, false).unwrap();
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        folder.join().unwrap();
        let mut db = Db::open(&db_path).unwrap();
        fold(&dir, &mut db, true).unwrap();
        assert_eq!(db.counters().unwrap()["hits"], 12000);
    }

    #[test]
    fn fold_applies_each_record_once() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(&d.path().join("s.sqlite3")).unwrap();
        for _ in 0..3 {
            append(d.path(), &batch(1)).unwrap();
        }
        fold(d.path(), &mut db, true).unwrap();
        assert_eq!(db.counters().unwrap()["hits"], 3);
        fold(d.path(), &mut db, true).unwrap();
        assert_eq!(db.counters().unwrap()["hits"], 3);

        // A folder that died after applying but before unlinking: the next
        // fold recognises the file and does not count it twice.
        append(d.path(), &batch(1)).unwrap();
        std::fs::rename(d.path().join("journal"), d.path().join("journal.folding")).unwrap();
        let f = std::fs::File::open(d.path().join("journal.folding")).unwrap();
        let m = f.metadata().unwrap();
        let ident = (m.dev(), m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.len());
        db.apply(&[batch(1)], Some(ident)).unwrap();
        append(d.path(), &batch(1)).unwrap();
        fold(d.path(), &mut db, true).unwrap();
        assert_eq!(db.counters().unwrap()["hits"], 5);
        assert!(!d.path().join("journal.folding").exists());
    }
}

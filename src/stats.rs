//! This host's SQLite database: counters, per-entry metadata and the memos
//! that keep the steady state free of rehashing and process spawns.
//!
//! SQLite's locking is not safe on NFS, so the database lives per host (see
//! `Config::stats_db_path`); the shared store never depends on it to serve a
//! hit. Each invocation does at most one write transaction ([`Db::commit`]).
//! A database that SQLite reports as corrupt is moved aside and rebuilt: the
//! counters restart, the cache itself is untouched.

use crate::util::FileStamp;
use anyhow::{Context, Result};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bump when the schema changes: a database of another version is rebuilt.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- Digest memo: one row per file identity; trusted only when the stamp matches
-- and the file had not been modified within RACY_NS before it was hashed.
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    hashed_ns INTEGER NOT NULL, digest BLOB NOT NULL, asm BLOB,
    PRIMARY KEY (dev, ino)) WITHOUT ROWID;
-- Compiler identity memo: the stamps of everything the identity covers.
CREATE TABLE IF NOT EXISTS compilers (path TEXT PRIMARY KEY, stamps BLOB NOT NULL, identity BLOB NOT NULL) WITHOUT ROWID;
-- What this host stored: sizes for stats, duration for time saved.
CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, size INTEGER NOT NULL, duration_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, last_used_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (digest BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
-- The key fields of the last compile of each output, for `ltocache explain`.
-- What this host added to a store since the ledger generation scanned_ns
-- (published to <store>/v1/size/host.<name> for the other hosts).
CREATE TABLE IF NOT EXISTS store_estimate (cache_dir TEXT PRIMARY KEY, scanned_ns INTEGER NOT NULL,
    bytes INTEGER NOT NULL, files INTEGER NOT NULL) WITHOUT ROWID;
-- prev_*: the last compile of the same output with a different key.
CREATE TABLE IF NOT EXISTS last_compile (output TEXT PRIMARY KEY, key BLOB NOT NULL, outcome TEXT NOT NULL,
    fields TEXT NOT NULL, at_ns INTEGER NOT NULL, prev_key BLOB, prev_outcome TEXT, prev_fields TEXT) WITHOUT ROWID;
";

/// A memoised file digest (and, when scanned, its assembly references).
#[derive(Clone, Debug)]
pub struct FileMemo {
    pub stamp: FileStamp,
    pub hashed_ns: i64,
    pub digest: [u8; 32],
    pub asm: Option<Vec<u8>>,
}

/// Everything one invocation writes, applied in one transaction.
#[derive(Default, Debug)]
pub struct Batch {
    pub counters: BTreeMap<String, i64>,
    pub files: Vec<FileMemo>,
    pub compiler: Option<(String, Vec<u8>, [u8; 32])>,
    /// (key, entry file size, duration)
    pub stored_entry: Option<([u8; 32], u64, u64)>,
    pub stored_blobs: Vec<([u8; 32], u64)>,
    /// (output path, key, outcome, fields as text)
    pub last_compile: Option<(String, [u8; 32], String, String)>,
    pub estimate: Option<EstimateUpdate>,
}

/// How an invocation changes this host's line in the size ledger:
/// (cache dir, ledger generation, bytes, files) added. A new generation
/// (a scan happened) restarts the count.
#[derive(Debug, Clone)]
pub enum EstimateUpdate {
    Add(String, i64, u64, u64),
}

/// This host's view of a store's size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub scanned_ns: i64,
    pub bytes: u64,
    pub files: u64,
}

impl Batch {
    pub fn add(&mut self, name: &str, n: i64) {
        // A zero would cost an UPSERT in the commit and change nothing.
        if n == 0 {
            return;
        }
        *self.counters.entry(name.to_string()).or_insert(0) += n;
    }
}

/// The recorded key fields of an output's last compile and of the one before
/// it that had a different key.
pub struct LastCompile {
    pub outcome: String,
    pub fields: String,
    pub prev_outcome: Option<String>,
    pub prev_fields: Option<String>,
}

pub struct Db {
    conn: Connection,
    pub path: PathBuf,
}

fn is_corruption(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::DatabaseCorrupt || f.code == ErrorCode::NotADatabase
        )
    })
}

impl Db {
    /// Opens (creating when needed) the database. A corrupt file is renamed to
    /// `*.corrupt` and a fresh one is created in its place.
    pub fn open(path: &Path) -> Result<Db> {
        match Db::open_once(path) {
            Ok(db) => Ok(db),
            Err(e) if is_corruption(&e) => {
                let aside = path.with_extension(format!("corrupt.{}", std::process::id()));
                std::fs::rename(path, &aside).with_context(|| format!("moving aside corrupt {}", path.display()))?;
                for ext in ["sqlite3-wal", "sqlite3-shm"] {
                    let _ = std::fs::remove_file(path.with_extension(ext));
                }
                Db::open_once(path).context("recreating the stats database")
            }
            Err(e) => Err(e),
        }
    }

    fn open_once(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            if !dir.is_dir() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            // Older layouts of the derived tables are dropped; counters survive.
            if version != 0 {
                conn.execute_batch("DROP TABLE IF EXISTS last_compile;")?;
            }
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        // A rollback journal kept between transactions (TRUNCATE, not deleted
        // and re-created each time) costs a handful of syscalls per commit.
        // Unlike WAL the mode does not persist, so it is set per connection.
        // WAL was measured slower here: each short-lived process either
        // checkpoints on close (fsync) or rebuilds the WAL index from the log.
        conn.pragma_update(None, "journal_mode", "TRUNCATE")?;
        // No fsync: a killed process cannot corrupt the file (the journal
        // rolls back), only a power cut can, and a corrupt file is rebuilt.
        // These are counters and memos, not the cache.
        conn.pragma_update(None, "synchronous", "OFF")?;
        Ok(Db { conn, path: path.to_path_buf() })
    }

    /// Starts a read transaction: the memo lookups of one key computation then
    /// take SQLite's file lock once instead of once per statement (each
    /// acquisition is several `fcntl` calls; a key with ten imports made
    /// dozens of them).
    pub fn begin_read(&self) {
        let _ = self.conn.execute_batch("BEGIN DEFERRED");
    }

    /// Ends the read transaction started by [`Db::begin_read`].
    pub fn end_read(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("COMMIT");
        }
    }

    pub fn lookup_file(&self, stamp: &FileStamp) -> Result<Option<FileMemo>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, hashed_ns, digest, asm FROM files WHERE dev = ?1 AND ino = ?2",
        )?;
        let row = stmt
            .query_row(params![stamp.dev as i64, stamp.ino as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            })
            .optional()?;
        Ok(row.and_then(|(size, mtime, ctime, hashed_ns, digest, asm)| {
            let digest: [u8; 32] = digest.try_into().ok()?;
            let memo_stamp =
                FileStamp { dev: stamp.dev, ino: stamp.ino, size: size as u64, mtime_ns: mtime, ctime_ns: ctime };
            (memo_stamp == *stamp).then_some(FileMemo { stamp: memo_stamp, hashed_ns, digest, asm })
        }))
    }

    pub fn lookup_compiler(&self, path: &str) -> Result<Option<(Vec<u8>, [u8; 32])>> {
        let mut stmt = self.conn.prepare_cached("SELECT stamps, identity FROM compilers WHERE path = ?1")?;
        let row = stmt.query_row([path], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))).optional()?;
        Ok(row.and_then(|(s, id)| Some((s, id.try_into().ok()?))))
    }

    /// Applies one invocation's writes in a single transaction.
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        let now = crate::util::now_ns();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2",
            )?;
            for (name, n) in &batch.counters {
                stmt.execute(params![name, n])?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO files(dev, ino, size, mtime_ns, ctime_ns, hashed_ns, digest, asm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for f in &batch.files {
                let s = &f.stamp;
                stmt.execute(params![
                    s.dev as i64,
                    s.ino as i64,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    f.hashed_ns,
                    &f.digest[..],
                    f.asm
                ])?;
            }
            if let Some((path, stamps, id)) = &batch.compiler {
                tx.execute(
                    "INSERT OR REPLACE INTO compilers(path, stamps, identity) VALUES (?1, ?2, ?3)",
                    params![path, stamps, &id[..]],
                )?;
            }
            if let Some((key, size, duration)) = &batch.stored_entry {
                tx.execute(
                    "INSERT OR REPLACE INTO entries(key, size, duration_ns, created_ns, last_used_ns) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![&key[..], *size as i64, *duration as i64, now],
                )?;
            }
            for (digest, size) in &batch.stored_blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO blobs(digest, size) VALUES (?1, ?2)",
                    params![&digest[..], *size as i64],
                )?;
            }
            if let Some(EstimateUpdate::Add(dir, generation, b, f)) = &batch.estimate {
                tx.execute(
                    "INSERT INTO store_estimate(cache_dir, scanned_ns, bytes, files) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(cache_dir) DO UPDATE SET
                       bytes = CASE WHEN scanned_ns = ?2 THEN bytes + ?3 ELSE ?3 END,
                       files = CASE WHEN scanned_ns = ?2 THEN files + ?4 ELSE ?4 END,
                       scanned_ns = ?2",
                    params![dir, generation, *b as i64, *f as i64],
                )?;
            }
            if let Some((output, key, outcome, fields)) = &batch.last_compile {
                tx.execute(
                    "INSERT INTO last_compile(output, key, outcome, fields, at_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(output) DO UPDATE SET
                       prev_key = CASE WHEN key != excluded.key THEN key ELSE prev_key END,
                       prev_outcome = CASE WHEN key != excluded.key THEN outcome ELSE prev_outcome END,
                       prev_fields = CASE WHEN key != excluded.key THEN fields ELSE prev_fields END,
                       key = excluded.key, outcome = excluded.outcome, fields = excluded.fields, at_ns = excluded.at_ns
                     WHERE key != excluded.key OR outcome != excluded.outcome",
                    params![output, &key[..], outcome, fields, now],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn estimate(&self, cache_dir: &str) -> Result<Estimate> {
        Ok(self
            .conn
            .query_row("SELECT scanned_ns, bytes, files FROM store_estimate WHERE cache_dir = ?1", [cache_dir], |r| {
                Ok(Estimate {
                    scanned_ns: r.get(0)?,
                    bytes: r.get::<_, i64>(1)? as u64,
                    files: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    pub fn counters(&self) -> Result<BTreeMap<String, i64>> {
        let mut stmt = self.conn.prepare("SELECT name, value FROM counters")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (entries, bytes) this host has stored, as recorded here.
    pub fn stored_usage(&self) -> Result<(i64, i64)> {
        let (n, e): (i64, i64) =
            self.conn.query_row("SELECT count(*), coalesce(sum(size), 0) FROM entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let b: i64 = self.conn.query_row("SELECT coalesce(sum(size), 0) FROM blobs", [], |r| r.get(0))?;
        Ok((n, e + b))
    }

    pub fn zero(&self) -> Result<()> {
        self.conn.execute("DELETE FROM counters", [])?;
        Ok(())
    }

    /// Forgets what this host stored (after `clear`); counters are kept.
    pub fn forget_entries(&self) -> Result<()> {
        self.conn.execute_batch("DELETE FROM entries; DELETE FROM blobs;")?;
        Ok(())
    }

    pub fn last_compile(&self, output: &str) -> Result<Option<LastCompile>> {
        Ok(self
            .conn
            .query_row(
                "SELECT outcome, fields, prev_outcome, prev_fields FROM last_compile WHERE output = ?1",
                [output],
                |r| {
                    Ok(LastCompile {
                        outcome: r.get(0)?,
                        fields: r.get(1)?,
                        prev_outcome: r.get(2)?,
                        prev_fields: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}

/// The file that counts front-end (non-backend) compiles: one byte each.
///
/// Those compiles must cost well under a millisecond, and even one SQLite
/// transaction costs about that much, so they append one byte to a per-host
/// file instead (O_APPEND on local disk is atomic); `stats` reads its size.
pub fn passthrough_counter_path(db_path: &Path) -> PathBuf {
    db_path.with_file_name("passthrough.count")
}

pub fn count_passthrough(db_path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = passthrough_counter_path(db_path);
    let mut f = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
            std::fs::OpenOptions::new().create(true).append(true).open(&path)?
        }
        Err(e) => return Err(e),
    };
    f.write_all(b".")
}

pub fn passthrough_count(db_path: &Path) -> i64 {
    std::fs::metadata(passthrough_counter_path(db_path)).map(|m| m.len() as i64).unwrap_or(0)
}

pub fn zero_passthrough(db_path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(passthrough_counter_path(db_path)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_across_commits() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(&d.path().join("s.sqlite3")).unwrap();
        let mut b = Batch::default();
        b.add("hits", 2);
        db.commit(&b).unwrap();
        db.commit(&b).unwrap();
        assert_eq!(db.counters().unwrap()["hits"], 4);
        db.zero().unwrap();
        assert!(db.counters().unwrap().is_empty());
    }

    #[test]
    fn corrupt_database_is_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sqlite3");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let mut db = Db::open(&p).unwrap();
        let mut b = Batch::default();
        b.add("misses", 1);
        db.commit(&b).unwrap();
        assert_eq!(db.counters().unwrap()["misses"], 1);
    }
}

//! This host's SQLite database: counters, what this host stored, and the
//! last compile of each output (for `explain`).
//!
//! Wrapped compiles do not open it: they append to the journal
//! ([`crate::state::journal`]) and keep their memos in [`crate::key::memo`]. The
//! subcommands fold the journal in and read from here.
//!
//! SQLite's locking is not safe on NFS, so the database lives per host (see
//! `Config::stats_dir`). A database that SQLite reports as corrupt is moved
//! aside and rebuilt: the counters restart, the cache itself is untouched.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bump when the schema changes: a database of another version is rebuilt.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- What this host stored: sizes for stats, duration for time saved.
CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, size INTEGER NOT NULL, duration_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, last_used_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (digest BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
-- The key fields of the last compile of each output, for `ltocache explain`.
-- prev_*: the last compile of the same output with a different key.
CREATE TABLE IF NOT EXISTS last_compile (output TEXT PRIMARY KEY, key BLOB NOT NULL, outcome TEXT NOT NULL,
    fields TEXT NOT NULL, at_ns INTEGER NOT NULL, prev_key BLOB, prev_outcome TEXT, prev_fields TEXT) WITHOUT ROWID;
-- The journal file folded last (device, inode, mtime, length): a fold that
-- died before unlinking it is not applied twice.
CREATE TABLE IF NOT EXISTS journal_fold (id INTEGER PRIMARY KEY CHECK (id = 0), dev INTEGER NOT NULL,
    ino INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, len INTEGER NOT NULL);
";

/// What one invocation records: appended to the journal as one record,
/// applied to the database when the journal is folded.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// When the invocation ran.
    pub at_ns: i64,
    pub counters: BTreeMap<String, i64>,
    /// (key, entry file size, duration)
    pub stored_entry: Option<([u8; 32], u64, u64)>,
    pub stored_blobs: Vec<([u8; 32], u64)>,
    /// (output path, key, outcome, fields as text)
    pub last_compile: Option<(String, [u8; 32], String, String)>,
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
                Db::move_aside(path)?;
                Db::open_once(path).context("recreating the stats database")
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on the database; when SQLite finds it corrupt on the way —
    /// damage past the first page passes `open` and shows only when a query
    /// reaches it — the file is moved aside and `f` runs once more on a fresh
    /// one. Counters restart; the cache itself is untouched.
    pub fn with<T>(path: &Path, mut f: impl FnMut(&mut Db) -> Result<T>) -> Result<T> {
        let first = Db::open(path).and_then(|mut db| f(&mut db));
        match first {
            Err(e) if is_corruption(&e) => {
                Db::move_aside(path)?;
                let mut db = Db::open_once(path).context("recreating the stats database")?;
                f(&mut db)
            }
            r => r,
        }
    }

    fn move_aside(path: &Path) -> Result<()> {
        let aside = path.with_extension(format!("corrupt.{}", std::process::id()));
        std::fs::rename(path, &aside).with_context(|| format!("moving aside corrupt {}", path.display()))?;
        for ext in ["sqlite3-wal", "sqlite3-shm", "sqlite3-journal"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
        Ok(())
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
                // Memos moved to memo.rs in version 4.
                conn.execute_batch(
                    "DROP TABLE IF EXISTS last_compile; DROP TABLE IF EXISTS files;
                     DROP TABLE IF EXISTS compilers; DROP TABLE IF EXISTS store_estimate;",
                )?;
            }
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        // Only subcommands and journal folds open the database, so the
        // default rollback journal is fine; what matters is no fsync.
        // No fsync: a killed process cannot corrupt the file (the journal
        // rolls back), only a power cut can, and a corrupt file is rebuilt.
        // These are counters and memos, not the cache.
        conn.pragma_update(None, "synchronous", "OFF")?;
        Ok(Db { conn, path: path.to_path_buf() })
    }

    /// Was the journal file with this (device, inode, mtime, length) folded already?
    pub fn journal_folded(&self, ident: (u64, u64, i64, u64)) -> Result<bool> {
        let (dev, ino, mtime, len) = ident;
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM journal_fold WHERE id = 0 AND dev = ?1 AND ino = ?2 AND mtime_ns = ?3 AND len = ?4",
                params![dev as i64, ino as i64, mtime, len as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Applies batches in one transaction, recording the journal file they
    /// came from (if any) in the same transaction.
    pub fn apply(&mut self, batches: &[Batch], journal: Option<(u64, u64, i64, u64)>) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for batch in batches {
            apply_one(&tx, batch)?;
        }
        if let Some((dev, ino, mtime, len)) = journal {
            tx.execute(
                "INSERT OR REPLACE INTO journal_fold(id, dev, ino, mtime_ns, len) VALUES (0, ?1, ?2, ?3, ?4)",
                params![dev as i64, ino as i64, mtime, len as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
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

fn apply_one(tx: &rusqlite::Transaction, batch: &Batch) -> Result<()> {
    let now = batch.at_ns;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2",
    )?;
    for (name, n) in &batch.counters {
        stmt.execute(params![name, n])?;
    }
    if let Some((key, size, duration)) = &batch.stored_entry {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO entries(key, size, duration_ns, created_ns, last_used_ns) VALUES (?1, ?2, ?3, ?4, ?4)",
        )?
        .execute(params![&key[..], *size as i64, *duration as i64, now])?;
    }
    for (digest, size) in &batch.stored_blobs {
        tx.prepare_cached("INSERT OR IGNORE INTO blobs(digest, size) VALUES (?1, ?2)")?
            .execute(params![&digest[..], *size as i64])?;
    }
    if let Some((output, key, outcome, fields)) = &batch.last_compile {
        tx.prepare_cached(
            "INSERT INTO last_compile(output, key, outcome, fields, at_ns) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(output) DO UPDATE SET
               prev_key = CASE WHEN key != excluded.key THEN key ELSE prev_key END,
               prev_outcome = CASE WHEN key != excluded.key THEN outcome ELSE prev_outcome END,
               prev_fields = CASE WHEN key != excluded.key THEN fields ELSE prev_fields END,
               key = excluded.key, outcome = excluded.outcome, fields = excluded.fields, at_ns = excluded.at_ns
             WHERE key != excluded.key OR outcome != excluded.outcome",
        )?
        .execute(params![output, &key[..], outcome, fields, now])?;
    }
    Ok(())
}

/// The file that counts front-end (non-backend) compiles: one byte each.
///
/// Those compiles must cost well under a millisecond, and even one SQLite
/// transaction costs about that much, so they append one byte to a per-host
/// file instead (O_APPEND on local disk is atomic); `stats` reads its size.
pub fn passthrough_counter_path(db_path: &Path) -> PathBuf {
    db_path.with_file_name(crate::cachedir::layout::PASSTHROUGH)
}

pub fn count_passthrough(db_path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let dir = db_path.parent().unwrap_or(Path::new("."));
    let mut f = crate::cachedir::beneath::open_in(
        dir,
        crate::cachedir::layout::PASSTHROUGH,
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        0o600,
        u64::MAX,
    )?;
    f.write_all(b".")
}

pub fn passthrough_count(db_path: &Path) -> i64 {
    std::fs::symlink_metadata(passthrough_counter_path(db_path))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len() as i64)
        .unwrap_or(0)
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
        db.apply(&[b.clone(), b], None).unwrap();
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
        db.apply(&[b], None).unwrap();
        assert_eq!(db.counters().unwrap()["misses"], 1);
    }
}

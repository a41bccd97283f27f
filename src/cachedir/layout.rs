//! The names of every file and directory ltocache opens in the cache
//! directory and in the state directory, in one place: the modules that open
//! them use these, and [`crate::store::every_path`] lists them all, so that the tests that
//! plant symlinks, FIFOs and giants at each (tests/multiuser.rs) cover what
//! the code actually opens.

use std::path::{Path, PathBuf};

// In the cache directory.
/// The settings file at the top of the cache directory (config.rs reads it,
/// trust.rs decides whether it may be believed).
pub const CONFIG_FILE_NAME: &str = "ltocache.conf";
/// The on-disk layout version of the store; a new layout gets a new directory.
pub const LAYOUT_DIR: &str = "v1";

// In the state directory (crate::cachedir::trust::State).
pub const JOURNAL: &str = "journal";
pub const JOURNAL_LOCK: &str = "journal.lock";
pub const JOURNAL_FOLDING: &str = "journal.folding";
pub const STATS_DB: &str = "stats.sqlite3";
/// SQLite's rollback journal beside the database.
pub const STATS_DB_JOURNAL: &str = "stats.sqlite3-journal";
pub const MEMO: &str = "memo.v1";
pub const LEDGER_LOCK: &str = "ledger.lock";
pub const PASSTHROUGH: &str = "passthrough.count";

/// The state file memoising what the clang driver loads for one question
/// (driver.rs): `driver-<hex of the question>`.
pub fn driver_memo(question: &str) -> String {
    format!("driver-{question}")
}

/// What the distributor last recorded for `explain` about the jobs of the
/// link whose output has this hash (distributor/recorded.rs).
pub fn dtlto_recorded(output_hash: &str) -> String {
    format!("dtlto-{output_hash}")
}

/// The compiler memo of the compiler invoked as `compiler`.
pub fn compiler_memo(compiler: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(compiler.as_os_str().as_bytes());
    format!("compiler-{}", crate::util::hex(&h.as_bytes()[..8]))
}

/// The state directory inside the cache (relative to it) of `uid` on `host`.
pub fn shared_state_rel(host: &str, uid: u32) -> PathBuf {
    Path::new("hosts").join(host).join(format!("u{uid}"))
}

/// Where a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Relative to the cache directory.
    Cache,
    /// Relative to the state directory.
    State,
}

/// What ltocache expects at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

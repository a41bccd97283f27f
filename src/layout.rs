//! The names of every file and directory ltocache opens in the cache
//! directory and in the state directory, in one place: the modules that open
//! them use these, and [`every_path`] lists them all, so that the tests that
//! plant symlinks, FIFOs and giants at each (tests/multiuser.rs) cover what
//! the code actually opens.

use crate::store::{cleanup, Digest, LocalStore, LAYOUT_DIR};
use std::path::{Path, PathBuf};

// In the state directory (crate::trust::State).
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

/// Every path ltocache opens for a store holding entries `keys` and blobs
/// `digests`, used by `uid` on `host` invoking `compilers`: directories
/// before what they contain.
pub fn every_path(
    keys: &[Digest],
    digests: &[Digest],
    compilers: &[&Path],
    host: &str,
    uid: u32,
) -> Vec<(Base, PathBuf, Kind)> {
    use Base::*;
    use Kind::*;
    let v1 = Path::new(LAYOUT_DIR);
    let mut out = vec![(Cache, PathBuf::from(crate::config::CONFIG_FILE_NAME), File), (Cache, v1.to_path_buf(), Dir)];
    let dirs_of = |rel: &Path, out: &mut Vec<(Base, PathBuf, Kind)>| {
        for a in rel.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
            if !a.as_os_str().is_empty() && !out.iter().any(|(b, p, _)| *b == Cache && p == a) {
                out.push((Cache, a.to_path_buf(), Dir));
            }
        }
    };
    let mut files = Vec::new();
    for k in keys {
        files.push(LocalStore::entry_rel(k));
        // Precise maps are named by a second key; the same names serve here.
        files.push(LocalStore::precise_rel(k));
    }
    for d in digests {
        files.push(LocalStore::blob_rel(d));
        files.push(LocalStore::zst_rel(d));
    }
    files.push(cleanup::lock_rel());
    files.push(cleanup::ledger::scan_rel());
    files.push(cleanup::ledger::host_rel(host));
    for f in &files {
        dirs_of(f, &mut out);
    }
    dirs_of(&LocalStore::tmp_rel().join("x"), &mut out);
    out.extend(files.into_iter().map(|f| (Cache, f, File)));
    let state = shared_state_rel(host, uid);
    dirs_of(&state.join("x"), &mut out);
    let mut state_files: Vec<String> =
        [JOURNAL, JOURNAL_LOCK, JOURNAL_FOLDING, STATS_DB, STATS_DB_JOURNAL, MEMO, LEDGER_LOCK, PASSTHROUGH]
            .iter()
            .map(|s| s.to_string())
            .collect();
    state_files.extend(compilers.iter().map(|c| compiler_memo(c)));
    state_files.push(driver_memo("00000000000000000000000000000000"));
    state_files.push(dtlto_recorded("0000000000000000"));
    // The compiler memo is replaced through a temp file beside it (a fresh name each time).
    state_files.push(crate::util::temp_name(""));
    out.extend(state_files.into_iter().map(|f| (State, PathBuf::from(f), File)));
    out
}

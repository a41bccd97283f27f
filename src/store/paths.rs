//! Every path ltocache opens, from the names in [`crate::cachedir::layout`] and the
//! store's own naming of entries and blobs: here rather than in layout so
//! that layout stays the leaf every module may use (no import circle).

use super::{cleanup, Digest, LocalStore};
use crate::cachedir::layout::*;
use std::path::{Path, PathBuf};

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
    let mut out = vec![(Cache, PathBuf::from(CONFIG_FILE_NAME), File), (Cache, v1.to_path_buf(), Dir)];
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

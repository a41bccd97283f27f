//! The content-addressed store.
//!
//! Layout (see docs/store.md for the grammar of each file):
//!
//! ```text
//! <cache_dir>/v1/entries/<k0k1>/<key hex>       one entry per key; small outputs inline
//! <cache_dir>/v1/blobs/<d0d1>/<digest hex>      larger output bytes, named by their blake3
//! <cache_dir>/v1/tmp/<host>.<pid>.<n>.<t>.tmp   temp files, renamed into place
//! ```
//!
//! Every file is written to `tmp/` and renamed: rename is atomic on local
//! filesystems and on NFS, so readers on any host see a whole file or none.
//! Blobs go in before the entry that names them. A blob whose bytes do not
//! hash to its name is deleted and reported as a miss.
//!
//! An output whose stored form (compressed when compression is on) fits in
//! [`INLINE_MAX`] lives inside its entry: creating a file is the largest single
//! cost of storing a miss (~0.1 ms each on the benchmark VM; most ThinLTO
//! objects are 10–100 KiB), and a hit then opens one file instead of two.
//! Larger outputs keep their own blob, shared between entries with the same
//! output, and served by reflink or hard link when configured.
//!
//! [`Store`] is the small interface a remote backend (bazel-remote, Redis)
//! implements; [`LocalStore`] adds what only a local directory can do
//! (mapping blobs, reflinks, hard links).
//!
//! Files: `entry.rs` (the entry grammar), `local.rs` (the directory store),
//! `codec.rs` (zstd), `cleanup.rs` (size ledger, LRU eviction, verify),
//! `remote/` (the remote tier: Redis and HTTP servers, after a local miss).
//! Nothing here reads the settings: `config` builds the store and its limits.

pub mod cleanup;
pub mod codec;
mod entry;
mod local;
mod paths;
pub mod remote;

pub use entry::*;
pub use local::*;
pub use paths::every_path;

use anyhow::Result;

/// How a hit puts the stored object at the output path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeMode {
    /// Copy into a temp file next to the output and rename it into place.
    Copy,
    /// `FICLONE` (btrfs, xfs): shares extents, falls back to copying.
    Reflink,
    /// Hard-link the blob. Off by default: a build that edits its outputs in
    /// place would edit the cache.
    HardLink,
}

/// Outcome of looking an entry up.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// An entry existed but failed its checksum (it has been removed).
    Corrupt(String),
}

/// The operations every storage backend offers. Local disk implements them
/// with files; a remote ([`remote::Remote`]: Redis, HTTP) keeps only
/// self-contained entries (every output inside), so that a lookup is one
/// round trip, and has no blobs.
pub trait Store {
    fn get_entry(&self, key: &Digest) -> Result<Lookup>;
    /// Returns the bytes written.
    fn put_entry(&self, entry: &Entry) -> Result<u64>;
    fn has_blob(&self, _digest: &Digest) -> bool {
        false
    }
    /// Stores bytes under their digest; returns the bytes written (0 when present).
    fn put_blob(&self, _digest: &Digest, _data: &[u8]) -> Result<u64> {
        anyhow::bail!("this store keeps outputs inside entries")
    }
}

/// Serves every output of a hit, each verified against its size and digest
/// (whichever store the entry came from: a remote's entries are inline and
/// `store` only writes them out). `Ok(None)` means an output was
/// unavailable or corrupt.
pub fn serve_entry(
    store: &LocalStore,
    mode: ServeMode,
    entry: &Entry,
    output: &std::path::Path,
) -> Result<Option<u64>> {
    // An entry without the object would leave the build without it.
    anyhow::ensure!(entry.outputs.iter().any(|o| o.kind == 0), "entry has no object");
    let mut total = 0;
    for o in &entry.outputs {
        anyhow::ensure!(o.kind == 0, "entry has an output kind this version cannot restore");
        match store.serve_output(o, output, mode)? {
            Served::Written(n) => total += n,
            Served::Unavailable(_) => return Ok(None),
        }
    }
    Ok(Some(total))
}

//! The store in a local (or NFS-mounted) directory: paths, atomic writes,
//! mapped and verified serving (copy, reflink, hard link).

use super::{Digest, Entry, Lookup, ServeMode, Store, Stored, StoredOutput, ENTRY_FORMAT, LAYOUT_DIR, RAW_MAX};
use crate::cachedir::beneath::{is_gone, is_refused, Dir, BLOB_CAP, READ_CAP};
use crate::util::{self, hex, map_file};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The store in a local (or NFS-mounted) directory. Every file in it is
/// opened through [`crate::cachedir::beneath`]: by descriptor under the cache
/// directory, never through a symlink, only regular files of sane size.
pub struct LocalStore {
    /// The cache directory (the store is its `v1/`), opened once, when first needed.
    cache: PathBuf,
    dir: std::sync::OnceLock<std::sync::Arc<Dir>>,
    root: PathBuf,
    /// zstd level for new outputs; `None` stores them raw (mapped, served
    /// without decoding — the fast path). Reading handles both kinds.
    compression: Option<i32>,
    /// Outputs stored in at most this many bytes go inside their entry (0: never).
    inline_max: usize,
    /// Serve a hit by creating the output itself (`O_EXCL`) when it is
    /// absent, instead of a temp file renamed over it (see
    /// [`LocalStore::with_direct_outputs`]).
    direct_outputs: bool,
}

/// A precise map file: this magic, the first key, then blake3 over the
/// second key (its name) and the first key.
const PRECISE_MAP_MAGIC: &[u8] = b"ltocache-precise-map-v1\n";

fn precise_map_sum(second: &Digest, first: &Digest) -> Digest {
    let mut check = blake3::Hasher::new();
    check.update(second);
    check.update(first);
    *check.finalize().as_bytes()
}

/// The first key of a map file's bytes, if they are one for `second`.
pub fn parse_precise_map(second: &Digest, data: &[u8]) -> Option<Digest> {
    let body = data.strip_prefix(PRECISE_MAP_MAGIC)?;
    let (first, sum) = (body.get(..32)?, body.get(32..)?);
    let first: Digest = first.try_into().ok()?;
    (sum == precise_map_sum(second, &first)).then_some(first)
}

/// The suffix of a zstd-compressed blob. Its name is still the blake3 of the
/// *uncompressed* bytes, which is what a hit verifies.
pub const ZSTD_SUFFIX: &str = ".zst";

/// What serving a blob to an output path did.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Written(u64),
    /// The blob was missing or did not verify (a corrupt one is removed).
    Unavailable(&'static str),
}

impl LocalStore {
    pub fn new(cache_dir: &Path) -> LocalStore {
        LocalStore {
            cache: cache_dir.to_path_buf(),
            dir: std::sync::OnceLock::new(),
            root: cache_dir.join(LAYOUT_DIR),
            compression: None,
            inline_max: 0,
            direct_outputs: false,
        }
    }

    /// The cache directory, opened (not created: a missing one is a miss).
    pub fn dir(&self) -> std::io::Result<&Dir> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let d = Dir::open_root(&self.cache)?;
        Ok(self.dir.get_or_init(|| std::sync::Arc::new(d)))
    }

    /// The cache directory, created when missing (before a store).
    pub fn dir_creating(&self) -> std::io::Result<&Dir> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let d = Dir::create_root(&self.cache)?;
        Ok(self.dir.get_or_init(|| std::sync::Arc::new(d)))
    }

    /// Use the cache directory already opened (and checked) by the caller.
    pub fn with_opened(self, opened: Option<std::sync::Arc<Dir>>) -> LocalStore {
        if let Some(d) = opened {
            let _ = self.dir.set(d);
        }
        self
    }

    /// Keep outputs stored in at most `max` bytes inside their entry.
    pub fn with_inline_max(mut self, max: usize) -> LocalStore {
        self.inline_max = max;
        self
    }

    /// Write a served output straight to its path when nothing is there yet
    /// (created with `O_EXCL`; removed again if writing it fails), instead
    /// of to a temp file renamed into place: one file created and no rename
    /// per hit (on a journaled ext4, 210 objects of 17 KiB cost 4.0 ms of CPU
    /// that way against 6.8 ms with temp and rename). Only for a caller
    /// whose reader waits for it to exit — lld reads a distributor's objects
    /// after the distributor has exited, and fails the link if it was killed
    /// half-way — so nobody can see a half-written object. An output that
    /// exists is still replaced through a temp file.
    pub fn with_direct_outputs(mut self, direct: bool) -> LocalStore {
        self.direct_outputs = direct;
        self
    }

    /// Compress new blobs with zstd at `level` (None: store them raw).
    pub fn with_compression(mut self, level: Option<i32>) -> LocalStore {
        self.compression = level;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The one place that decides where a blob or entry lives: paths
    /// relative to the cache directory ([`LocalStore::dir`]).
    pub fn entry_rel(key: &Digest) -> PathBuf {
        let h = hex(key);
        Path::new(LAYOUT_DIR).join("entries").join(&h[..2]).join(&h)
    }

    pub fn blob_rel(digest: &Digest) -> PathBuf {
        let h = hex(digest);
        Path::new(LAYOUT_DIR).join("blobs").join(&h[..2]).join(&h)
    }

    /// Where precise invalidation maps a second key to the first key it
    /// was stored under (src/precise.rs): one small file per mapping.
    pub fn precise_rel(second: &Digest) -> PathBuf {
        let h = hex(second);
        Path::new(LAYOUT_DIR).join("precise").join(&h[..2]).join(&h)
    }

    /// The first key a precise map names (src/precise.rs), read by
    /// descriptor: never through a symlink, never a FIFO or device, at most a
    /// few hundred bytes. `None` unless its checksum over both keys holds.
    pub fn get_precise_map(&self, second: &Digest) -> Option<Digest> {
        let data = self.dir().ok()?.read(Self::precise_rel(second), 256).ok()?;
        parse_precise_map(second, &data)
    }

    pub fn put_precise_map(&self, second: &Digest, first: &Digest) -> Result<()> {
        let mut data = PRECISE_MAP_MAGIC.to_vec();
        data.extend_from_slice(first);
        data.extend_from_slice(&precise_map_sum(second, first));
        self.write_rel(&Self::precise_rel(second), &data)
    }

    pub fn zst_rel(digest: &Digest) -> PathBuf {
        let mut p = Self::blob_rel(digest).into_os_string();
        p.push(ZSTD_SUFFIX);
        PathBuf::from(p)
    }

    pub fn tmp_rel() -> PathBuf {
        Path::new(LAYOUT_DIR).join("tmp")
    }

    /// The same paths, absolute (messages, tests).
    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        self.cache.join(Self::entry_rel(key))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.cache.join(Self::blob_rel(digest))
    }

    pub fn zst_path(&self, digest: &Digest) -> PathBuf {
        self.cache.join(Self::zst_rel(digest))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.cache.join(Self::tmp_rel())
    }

    /// Writes `data` at `rel` atomically (temp file in `v1/tmp`, rename).
    pub fn write_rel(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let dir = self.dir_creating().with_context(|| format!("opening {}", self.cache.display()))?;
        dir.write_atomic(&Self::tmp_rel(), rel, data).with_context(|| format!("writing {}", dir.join(rel).display()))
    }

    /// Stores one output of a compile: inside the entry when its stored form
    /// is small enough, else as a blob. Returns how the entry records it and
    /// the blob bytes written (0 when inline or already present).
    pub fn put_output(&self, kind: u8, data: &[u8]) -> Result<(StoredOutput, u64)> {
        let digest = *blake3::hash(data).as_bytes();
        // Up to one filesystem block, compression saves no disk space, and
        // costs a zstd context on both the miss and every hit (its workspace
        // is ~20 fresh pages: 0.16 ms of a miss, 0.07 ms of a hit on the
        // benchmark VM). A third of libgit2's objects are this small.
        let packed = match self.compression {
            Some(level) if data.len() > RAW_MAX => Some(compress(data, level)?),
            _ => None,
        };
        // Incompressible outputs stay raw (and keep the mapped fast path).
        let packed = packed.filter(|p| p.len() < data.len());
        let output = |stored| StoredOutput { kind, size: data.len() as u64, digest, stored };
        let stored_len = packed.as_ref().map_or(data.len(), Vec::len);
        if stored_len <= self.inline_max {
            let stored = match packed {
                Some(p) => Stored::InlineZstd(p),
                None => Stored::Inline(data.to_vec()),
            };
            return Ok((output(stored), 0));
        }
        if self.has_blob(&digest) {
            return Ok((output(Stored::Blob), 0));
        }
        match packed {
            Some(p) => self.write_rel(&Self::zst_rel(&digest), &p)?,
            None => self.write_rel(&Self::blob_rel(&digest), data)?,
        }
        Ok((output(Stored::Blob), stored_len as u64))
    }

    /// Serves one output of a hit into `dest`, verified against its digest.
    pub fn serve_output(&self, o: &StoredOutput, dest: &Path, mode: ServeMode) -> Result<Served> {
        match o.inline_data() {
            None => self.serve_blob(&o.digest, o.size, dest, mode),
            Some(Ok(data)) => self.write_output(&data, None, dest, ServeMode::Copy),
            Some(Err(why)) => Ok(Served::Unavailable(why)),
        }
    }

    /// Serves a blob into `dest` atomically (temp file next to `dest`, then
    /// rename), after checking its bytes hash to `digest`.
    pub fn serve_blob(&self, digest: &Digest, size: u64, dest: &Path, mode: ServeMode) -> Result<Served> {
        let rel = Self::blob_rel(digest);
        let dir = match self.dir() {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok(Served::Unavailable("blob missing")),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.cache.display())),
        };
        let (file, st) = match dir.open_regular(&rel, libc::O_RDONLY, 0, BLOB_CAP) {
            Ok(f) => f,
            Err(e) if is_gone(&e) => return self.serve_compressed(digest, size, dest),
            Err(e) if is_refused(&e) => return Ok(Served::Unavailable("blob is not a regular file of sane size")),
            Err(e) => return Err(e).with_context(|| format!("opening {}", dir.join(&rel).display())),
        };
        let len = st.st_size as u64;
        if len != size {
            self.discard_blob(&rel);
            return Ok(Served::Unavailable("blob has the wrong size"));
        }
        let map = match map_file(&file, len) {
            Ok(m) => m,
            // Deleted by another NFS client since we opened it.
            Err(e) if is_gone(&e) => return Ok(Served::Unavailable("blob missing")),
            Err(e) => return Err(e).with_context(|| format!("mapping {}", dir.join(&rel).display())),
        };
        if blake3::hash(&map).as_bytes() != digest {
            self.discard_blob(&rel);
            return Ok(Served::Unavailable("blob digest mismatch"));
        }
        self.write_output(&map, Some(&file), dest, mode)
    }

    /// Serves a zstd blob: decode, verify the decoded bytes, write.
    fn serve_compressed(&self, digest: &Digest, size: u64, dest: &Path) -> Result<Served> {
        let rel = Self::zst_rel(digest);
        let dir = self.dir()?;
        // Only stored compressed when smaller than the raw bytes: a bigger file is not ours.
        let packed = match dir.read(&rel, size.min(BLOB_CAP)) {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok(Served::Unavailable("blob missing")),
            Err(e) if is_refused(&e) => return Ok(Served::Unavailable("blob is not a regular file of sane size")),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join(&rel).display())),
        };
        let data = match super::codec::decompress(&packed, size as usize) {
            Ok(d) if d.len() as u64 == size && blake3::hash(&d).as_bytes() == digest => d,
            _ => {
                self.discard_blob(&rel);
                return Ok(Served::Unavailable("compressed blob does not decode to its digest"));
            }
        };
        self.write_output(&data, None, dest, ServeMode::Copy)
    }

    /// Writes verified bytes to a temp file next to `dest` and renames it into
    /// place. `source` (the raw blob, opened beneath the cache) enables
    /// reflinks and hard links.
    fn write_output(&self, bytes: &[u8], source: Option<&File>, dest: &Path, mode: ServeMode) -> Result<Served> {
        let len = bytes.len() as u64;
        if self.direct_outputs {
            match self.place_output(bytes, source, dest, mode, len) {
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists) => {}
                done => return done.map(|()| Served::Written(len)),
            }
        }
        let dir = util::parent_dir(dest);
        let name = dest.file_name().context("output has no file name")?.to_string_lossy().into_owned();
        let tmp = dir.join(util::temp_name(&format!(".{name}.ltocache.")));
        let result = self.place_output(bytes, source, &tmp, mode, len).and_then(|()| {
            // Remove the old output first: renaming over an existing file makes
            // ext4 (auto_da_alloc) flush the new file's data, about 0.6 ms per hit
            // here. The build expects the output to be absent or being rewritten
            // during its compile anyway.
            match std::fs::remove_file(dest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing the old {}", dest.display()))
                }
                _ => {}
            }
            std::fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| Served::Written(len))
    }

    /// Creates `path` (which must not exist: `O_EXCL`, an `AlreadyExists`
    /// error otherwise, with nothing touched) holding `bytes`: a hard link to
    /// `source`, a reflink of it, or a copy. Whatever it created is removed
    /// again when it fails after that.
    fn place_output(&self, bytes: &[u8], source: Option<&File>, path: &Path, mode: ServeMode, len: u64) -> Result<()> {
        if let (ServeMode::HardLink, Some(file)) = (mode, source) {
            if hard_link_read_only(file, path) {
                return Ok(());
            }
        }
        // Copy (also the fallback when a hard link is impossible: another
        // filesystem, no permission, or `path` exists).
        let mut out = util::open_raw(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o666).map_err(|e| {
            match e.kind() {
                // Nothing was created: the caller may take another way.
                std::io::ErrorKind::AlreadyExists => anyhow::Error::new(e),
                _ => anyhow::Error::new(e).context(format!("creating {}", path.display())),
            }
        })?;
        let cloned = match (mode, source) {
            (ServeMode::Reflink, Some(file)) => reflink(file, &out),
            // The kernel copies page to page (and on btrfs/xfs may share
            // extents); we already read the bytes to verify them.
            (ServeMode::Copy, Some(file)) => copy_range(file, &out, len),
            _ => false,
        };
        if !cloned {
            if let Err(e) = out.write_all(bytes) {
                drop(out);
                let _ = std::fs::remove_file(path);
                return Err(e).with_context(|| format!("writing {}", path.display()));
            }
        }
        Ok(())
    }

    /// Records a use of an entry for LRU eviction by setting its mtime to "now"
    /// (atime is not kept on `noatime` mounts). Skipped when `last_use` (from
    /// the lookup) is within the last minute, to spare a shared filesystem one
    /// write per hit.
    pub fn touch_entry(&self, key: &Digest, last_use: Option<std::time::SystemTime>) {
        if last_use.and_then(|t| t.elapsed().ok()).is_some_and(|age| age < std::time::Duration::from_secs(60)) {
            return;
        }
        // utimensat(..., NULL): "now" by the file's own clock (the server's on
        // NFS), allowed to any user with write access, unlike setting an
        // explicit time, which only the owner may do. Best effort.
        if let Ok(dir) = self.dir() {
            let _ = dir.touch(Self::entry_rel(key));
        }
    }

    /// Looks an entry up and also returns its last use (mtime), read from the
    /// same open file, for [`LocalStore::touch_entry`].
    pub fn get_entry_and_last_use(&self, key: &Digest) -> Result<(Lookup, Option<std::time::SystemTime>)> {
        let rel = Self::entry_rel(key);
        let dir = match self.dir() {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok((Lookup::Miss, None)),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.cache.display())),
        };
        let (file, st) = match dir.open_regular(&rel, libc::O_RDONLY, 0, READ_CAP) {
            Ok(f) => f,
            // Never stored, or deleted by another host since (ESTALE on NFS).
            Err(e) if is_gone(&e) => return Ok((Lookup::Miss, None)),
            // A symlink, FIFO, directory or giant planted here: not an entry.
            // Left in place; the store's rename replaces it (a directory is
            // moved aside first).
            Err(e) if is_refused(&e) => return Ok((Lookup::Corrupt(format!("refused: {e}")), None)),
            Err(e) => return Err(e).with_context(|| format!("opening {}", dir.join(&rel).display())),
        };
        let last_use = Some(crate::cachedir::beneath::Stat::of_raw(&st).modified());
        // Entries are renamed into place whole, never rewritten: its size is final.
        let data = match util::read_sized(&file, st.st_size as u64) {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok((Lookup::Miss, None)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join(&rel).display())),
        };
        // Another ltocache version sharing the store wrote this: a miss, and
        // its file is left for that version (the key version differs anyway).
        if Entry::format_of(&data).is_some_and(|f| f != ENTRY_FORMAT) {
            return Ok((Lookup::Miss, last_use));
        }
        let lookup = match Entry::decode(&data) {
            Ok(entry) if &entry.key == key => Lookup::Hit(entry),
            Ok(_) => {
                let _ = dir.unlink(&rel);
                Lookup::Corrupt("entry names another key".into())
            }
            Err(e) => {
                let _ = dir.unlink(&rel);
                Lookup::Corrupt(e.to_string())
            }
        };
        Ok((lookup, last_use))
    }

    /// True when new files can be created in the store (false on a read-only
    /// mount or without write permission).
    pub fn writable(&self) -> bool {
        // The store directory, or the nearest ancestor that exists (it will be created).
        let Some(dir) = self.root.ancestors().find(|d| d.exists()) else { return false };
        let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())) else {
            return false;
        };
        // SAFETY: access() reads the NUL-terminated path we own.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
    }

    fn discard_blob(&self, rel: &Path) {
        // Another process may have replaced it with a good copy meanwhile; a
        // removed good blob is only a future miss, a kept bad one is re-detected.
        if let Ok(dir) = self.dir() {
            let _ = dir.unlink(rel);
        }
    }

    /// Removes every entry and blob. Temp files of running writers are left.
    ///
    /// Each of `entries/`, `blobs/`, `size/` is first renamed into `tmp/`
    /// (atomic: compiles storing meanwhile create a fresh one), then removed
    /// there by descriptor. What a writer still renames into the old tree is
    /// swept with the rest of `tmp/` by the next cleanup.
    pub fn clear(&self) -> Result<()> {
        let dir = match self.dir() {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.cache.display())),
        };
        let tmp = Self::tmp_rel();
        dir.create_dirs(&tmp).with_context(|| format!("creating {}", dir.join(&tmp).display()))?;
        for sub in ["entries", "blobs", "size", "precise"] {
            let rel = Path::new(LAYOUT_DIR).join(sub);
            let junk = tmp.join(util::temp_name(&format!("clear-{sub}.")).replace(".tmp", ".junk"));
            match dir.rename(&rel, &junk) {
                Ok(()) => {}
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("moving {} aside", dir.join(&rel).display())),
            }
            // Best effort: a writer that had the old directory open may still
            // add a file; cleanup sweeps the rest of `tmp/` after `grace`.
            let _ = dir.remove_tree(&junk, JUNK_DEPTH);
        }
        Ok(())
    }

    /// Every file of ours under `entries/` or `blobs/` (`sub`), across the
    /// two-hex-digit fan-out directories, as paths relative to the cache
    /// directory. Walked by descriptor; a fan-out directory that is a symlink
    /// (or anything but a directory) is skipped, and only names of our shape
    /// (hex of the right length in the right fan-out) are listed.
    pub fn files(&self, sub: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dir) = self.dir() else { return out };
        let base = Path::new(LAYOUT_DIR).join(sub);
        let Ok(shards) = dir.subdir(&base) else { return out };
        let Ok(names) = shards.names(None) else { return out };
        for shard in names {
            let Ok(shard) = String::from_utf8(shard) else { continue };
            if shard.len() != 2 || !shard.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                continue;
            }
            let Ok(items) = shards.names(Some(Path::new(&shard))) else { continue };
            for item in items {
                let Ok(item) = String::from_utf8(item) else { continue };
                let hexpart = item.strip_suffix(ZSTD_SUFFIX).filter(|_| sub == "blobs").unwrap_or(&item);
                if hexpart.len() == 64 && hexpart.starts_with(&shard) && util::unhex(hexpart).is_some() {
                    out.push(base.join(&shard).join(&item));
                }
            }
        }
        out
    }

    /// (entries, files, bytes) by walking the directory: the authoritative
    /// size of a shared store, whatever each host's database believes.
    pub fn scan_usage(&self) -> (u64, u64, u64) {
        let Ok(dir) = self.dir() else { return (0, 0, 0) };
        let size = |paths: Vec<PathBuf>| -> (u64, u64) {
            paths
                .iter()
                .filter_map(|p| dir.stat(p).ok().filter(|s| s.is_file()))
                .fold((0, 0), |(n, b), m| (n + 1, b + m.size))
        };
        let (entries, entry_bytes) = size(self.files("entries"));
        let (blobs, blob_bytes) = size(self.files("blobs"));
        (entries, entries + blobs, entry_bytes + blob_bytes)
    }
}

impl Store for LocalStore {
    fn get_entry(&self, key: &Digest) -> Result<Lookup> {
        self.get_entry_and_last_use(key).map(|(lookup, _)| lookup)
    }

    fn put_entry(&self, entry: &Entry) -> Result<u64> {
        let data = entry.encode();
        self.write_rel(&Self::entry_rel(&entry.key), &data)?;
        Ok(data.len() as u64)
    }

    fn has_blob(&self, digest: &Digest) -> bool {
        // Only a regular file counts: a planted symlink or directory must not
        // stop the real blob from being stored.
        let Ok(dir) = self.dir() else { return false };
        [Self::blob_rel(digest), Self::zst_rel(digest)].iter().any(|r| dir.stat(r).is_ok_and(|s| s.is_file()))
    }

    fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<u64> {
        if blake3::hash(data).as_bytes() != digest {
            bail!("refusing to store a blob under a digest it does not have");
        }
        if self.has_blob(digest) {
            return Ok(0);
        }
        if let Some(level) = self.compression {
            let packed = compress(data, level)?;
            // Incompressible outputs stay raw (and keep the mapped fast path).
            if packed.len() < data.len() {
                self.write_rel(&Self::zst_rel(digest), &packed)?;
                return Ok(packed.len() as u64);
            }
        }
        self.write_rel(&Self::blob_rel(digest), data)?;
        Ok(data.len() as u64)
    }
}

/// One zstd frame of `data` at `level`, with the match-finder's hash table
/// sized to the input. zstd's defaults size it for large inputs (2^14 entries
/// at level 1 for a 10 KiB object); every page of a fresh table is a page
/// fault, ~2 µs each on the benchmark VM, which made compression the largest
/// single CPU cost of storing a small object. 2^(log2(size) - 3) entries
/// changes the compressed size by under 1 % (13 KiB object: 3,979 bytes
/// against 3,962).
fn compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    let hash_log = (data.len() <= 256 << 10).then(|| {
        let log2 = usize::BITS - data.len().max(1).next_power_of_two().leading_zeros() - 1;
        log2.saturating_sub(3).max(10)
    });
    super::codec::compress(data, level, hash_log)
}

/// Copies `len` bytes from the start of `src` into the empty `dst` with
/// `copy_file_range`. Returns false (having written nothing) when the kernel
/// or filesystem cannot, so the caller writes the bytes itself.
fn copy_range(src: &File, dst: &File, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let mut done: u64 = 0;
    let mut off_in: libc::loff_t = 0;
    let mut off_out: libc::loff_t = 0;
    while done < len {
        // SAFETY: valid descriptors we own; the offsets are our own variables.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, (len - done) as usize, 0)
        };
        if n <= 0 {
            if done > 0 {
                // Partial copy then failure: start over with plain writes.
                let _ = dst.set_len(0);
            }
            return false;
        }
        done += n as u64;
    }
    true
}

/// How deep `clear` and cleanup descend into a tree moved into `tmp/`:
/// entries and blobs sit two levels down; a planted tree deeper than this
/// stays (and costs nothing but its space).
pub const JUNK_DEPTH: u32 = 8;

/// Serves a blob by hard link, read-only and with a fresh mtime; false (and
/// nothing left at `tmp`) when that cannot be done, so the caller copies.
///
/// The link is made from the descriptor already opened and verified
/// (`/proc/self/fd/N`), not from the blob's path, which another process
/// could have replaced since. Read-only, so a tool that opens the output for
/// writing fails instead of editing the cache; a fresh mtime, since an
/// output older than its inputs makes `make` rebuild it every time.
fn hard_link_read_only(blob: &File, tmp: &Path) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = blob.metadata() else { return false };
    let mode = meta.permissions().mode();
    if mode & 0o222 != 0 && blob.set_permissions(std::fs::Permissions::from_mode(mode & 0o7555)).is_err() {
        return false; // not ours to make read-only
    }
    let (Ok(src), Ok(dst)) = (
        std::ffi::CString::new(format!("/proc/self/fd/{}", blob.as_raw_fd())),
        std::ffi::CString::new(tmp.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    // SAFETY: NUL-terminated paths we own.
    if unsafe { libc::linkat(libc::AT_FDCWD, src.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), libc::AT_SYMLINK_FOLLOW) } != 0
    {
        return false;
    }
    // SAFETY: NUL-terminated path we own; NULL times means "now".
    if unsafe { libc::utimensat(libc::AT_FDCWD, dst.as_ptr(), std::ptr::null(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let _ = std::fs::remove_file(tmp);
        return false;
    }
    true
}

/// Clones `src`'s extents into `dst` with the FICLONE ioctl (btrfs, xfs).
/// Returns false when the filesystem cannot, so the caller copies instead.
fn reflink(src: &File, dst: &File) -> bool {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open files we own for the call's duration;
    // FICLONE takes the source descriptor as its integer argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precise_maps_are_never_read_or_written_through_planted_files() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let (second, first) = ([7u8; 32], [9u8; 32]);
        s.put_precise_map(&second, &first).unwrap();
        assert_eq!(s.get_precise_map(&second), Some(first));
        assert_eq!(s.get_precise_map(&[8u8; 32]), None);
        // A FIFO at the map's name: refused without blocking on open.
        let path = d.path().join(LocalStore::precise_rel(&second));
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        assert_eq!(s.get_precise_map(&second), None);
        // A symlinked precise/ directory: nothing is written through it.
        let outside = tempfile::tempdir().unwrap();
        let dir = d.path().join(LAYOUT_DIR).join("precise");
        std::fs::remove_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
        assert!(s.put_precise_map(&[1u8; 32], &first).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A checksum over both keys: another second key's map does not verify.
        let mut data = PRECISE_MAP_MAGIC.to_vec();
        data.extend_from_slice(&first);
        data.extend_from_slice(&precise_map_sum(&second, &first));
        assert_eq!(parse_precise_map(&second, &data), Some(first));
        assert_eq!(parse_precise_map(&[3u8; 32], &data), None);
        assert_eq!(parse_precise_map(&second, &data[..data.len() - 1]), None);
    }
    use crate::store::ENTRY_MAGIC;

    fn sample() -> Entry {
        Entry {
            key: [7; 32],
            duration_ns: 123_456,
            created_unix: 1_700_000_000,
            outputs: vec![StoredOutput {
                kind: 0,
                size: 5,
                digest: *blake3::hash(b"hello").as_bytes(),
                stored: Stored::Blob,
            }],
            stderr: b"warning: x\n".to_vec(),
        }
    }

    #[test]
    fn entry_round_trips_and_detects_damage() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
        for i in [0, 9, 20, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Entry::decode(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn inline_outputs_round_trip_and_format_1_still_reads() {
        let mut e = sample();
        e.outputs[0].stored = Stored::Inline(b"hello".to_vec());
        e.outputs.push(StoredOutput { kind: 1, size: 9, digest: [3; 32], stored: Stored::InlineZstd(vec![1, 2, 3]) });
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        // Format 1, as written before outputs could be inline: no storage tag.
        let old = sample();
        let mut body = Vec::new();
        body.extend_from_slice(&old.key);
        body.extend_from_slice(&old.duration_ns.to_le_bytes());
        body.extend_from_slice(&old.created_unix.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&old.outputs[0].size.to_le_bytes());
        body.extend_from_slice(&old.outputs[0].digest);
        body.extend_from_slice(&(old.stderr.len() as u32).to_le_bytes());
        body.extend_from_slice(&old.stderr);
        let mut v1 = ENTRY_MAGIC.to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v1.extend_from_slice(&body);
        let sum = *blake3::hash(&v1).as_bytes();
        v1.extend_from_slice(&sum);
        assert!(!Entry::is_foreign(&v1));
        assert_eq!(Entry::decode(&v1).unwrap(), old);
    }

    #[test]
    fn small_outputs_go_inline_large_ones_to_blobs() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path()).with_compression(Some(1)).with_inline_max(1000);
        let small = b"ltocache ".repeat(500); // compresses far below 1000 bytes
        let (o, written) = s.put_output(0, &small).unwrap();
        assert!(matches!(o.stored, Stored::InlineZstd(_)) && written == 0);
        assert!(s.files("blobs").is_empty());
        // One block or less: raw, compression on or not.
        let tiny = b"ltocache ".repeat(100);
        assert_eq!(s.put_output(0, &tiny).unwrap().0.stored, Stored::Inline(tiny.clone()));
        let out = d.path().join("o");
        assert_eq!(s.serve_output(&o, &out, ServeMode::Copy).unwrap(), Served::Written(4500));
        assert_eq!(std::fs::read(&out).unwrap(), small);
        // Incompressible and over the limit: a raw blob.
        let mut big = vec![0u8; 4000];
        blake3::Hasher::new().finalize_xof().fill(&mut big);
        let (o, written) = s.put_output(0, &big).unwrap();
        assert_eq!((o.stored.clone(), written), (Stored::Blob, 4000));
        assert_eq!(s.serve_output(&o, &out, ServeMode::Copy).unwrap(), Served::Written(4000));
        assert_eq!(std::fs::read(&out).unwrap(), big);
        // Inline bytes that do not match the digest are never served.
        let (mut o, _) = s.put_output(0, &small).unwrap();
        o.stored = Stored::Inline(b"ltocache!".repeat(500));
        assert!(matches!(s.serve_output(&o, &out, ServeMode::Copy).unwrap(), Served::Unavailable(_)));
        o.stored = Stored::InlineZstd(vec![0x28, 0xb5, 0x2f, 0xfd, 0]);
        assert!(matches!(s.serve_output(&o, &out, ServeMode::Copy).unwrap(), Served::Unavailable(_)));
        // A size no checksummed entry would claim is refused, not allocated.
        o.size = 1 << 40;
        assert_eq!(o.inline_data().unwrap().unwrap_err(), "inline output too large");
        assert_eq!(std::fs::read(&out).unwrap(), big, "the output is untouched");
    }

    #[test]
    fn compressed_blobs_round_trip_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path()).with_compression(Some(3));
        let data = b"ltocache ".repeat(1000);
        let digest = *blake3::hash(&data).as_bytes();
        let written = s.put_blob(&digest, &data).unwrap();
        assert!(written < data.len() as u64 / 10, "{written}");
        assert!(s.zst_path(&digest).exists() && !s.blob_path(&digest).exists());
        let out = d.path().join("o");
        assert_eq!(s.serve_blob(&digest, data.len() as u64, &out, ServeMode::Copy).unwrap(), Served::Written(9000));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // A damaged frame is detected and removed.
        let mut packed = std::fs::read(s.zst_path(&digest)).unwrap();
        let n = packed.len();
        packed[n / 2] ^= 0x55;
        std::fs::write(s.zst_path(&digest), packed).unwrap();
        assert!(matches!(s.serve_blob(&digest, 9000, &out, ServeMode::Copy).unwrap(), Served::Unavailable(_)));
        assert!(!s.has_blob(&digest));
    }

    #[test]
    fn direct_outputs_are_created_in_place_and_existing_ones_replaced() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path()).with_compression(Some(1)).with_inline_max(1 << 20).with_direct_outputs(true);
        let data = b"ltocache direct ".repeat(1000);
        let (o, _) = s.put_output(0, &data).unwrap();
        let outdir = d.path().join("out");
        std::fs::create_dir(&outdir).unwrap();
        let listing = || {
            let mut v: Vec<String> =
                std::fs::read_dir(&outdir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        };
        // Absent: created as the output itself, nothing else left beside it.
        let dest = outdir.join("a.1.77.native.o");
        assert_eq!(s.serve_output(&o, &dest, ServeMode::Copy).unwrap(), Served::Written(data.len() as u64));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(listing(), ["a.1.77.native.o"]);
        // Present (a stale object, or a symlink to elsewhere): replaced whole
        // through a temp file, the symlink's target untouched.
        std::fs::write(&dest, b"old").unwrap();
        assert_eq!(s.serve_output(&o, &dest, ServeMode::Copy).unwrap(), Served::Written(data.len() as u64));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let elsewhere = d.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not ours").unwrap();
        let link = outdir.join("b.2.77.native.o");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert_eq!(s.serve_output(&o, &link, ServeMode::Copy).unwrap(), Served::Written(data.len() as u64));
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), data);
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not ours");
        assert_eq!(listing(), ["a.1.77.native.o", "b.2.77.native.o"]);
        // A raw blob, hard-linked in place when asked to.
        let blobs = LocalStore::new(d.path()).with_direct_outputs(true);
        let (o, _) = blobs.put_output(0, &data).unwrap();
        assert_eq!(o.stored, Stored::Blob);
        let dest = outdir.join("c.3.77.native.o");
        assert_eq!(blobs.serve_output(&o, &dest, ServeMode::HardLink).unwrap(), Served::Written(data.len() as u64));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().ino(),
            std::fs::metadata(blobs.blob_path(&o.digest)).unwrap().ino()
        );
        // A directory it cannot create in: an error, and nothing left.
        let missing = outdir.join("no-such-dir").join("d.o");
        assert!(s.serve_output(&o, &missing, ServeMode::Copy).is_err());
        assert_eq!(listing(), ["a.1.77.native.o", "b.2.77.native.o", "c.3.77.native.o"]);
    }

    #[test]
    fn another_versions_entry_is_a_miss_and_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let e = sample();
        s.put_entry(&e).unwrap();
        let path = s.entry_path(&e.key);
        let mut data = std::fs::read(&path).unwrap();
        data[8] = 9; // format 9, as a newer ltocache sharing the store would write
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(s.get_entry(&e.key).unwrap(), Lookup::Miss));
        assert!(path.exists(), "another version's entry is left alone");
    }

    #[test]
    fn corrupt_blob_is_removed_and_unavailable() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let digest = *blake3::hash(b"hello").as_bytes();
        s.put_blob(&digest, b"hello").unwrap();
        let out = d.path().join("out.o");
        assert_eq!(s.serve_blob(&digest, 5, &out, ServeMode::Copy).unwrap(), Served::Written(5));
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        std::fs::write(s.blob_path(&digest), b"jello").unwrap();
        assert!(matches!(s.serve_blob(&digest, 5, &out, ServeMode::Copy).unwrap(), Served::Unavailable(_)));
        assert!(!s.blob_path(&digest).exists());
    }
}

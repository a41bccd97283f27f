//! This host's memos — file digests and compiler identities — kept in plain
//! files so that a warm invocation opens no database.
//!
//! Opening SQLite, parsing its schema and preparing statements cost about as
//! much as the rest of a hit together (docs/benchmarks.md, "hit path"). A
//! memo lookup here is one `pread` of a 1 KiB bucket; a store is one `pwrite`.
//!
//! **File digests** live in `memo.v1`, a fixed-size hash table of 256-byte
//! slots, four to a bucket, indexed by (device, inode). The file is created
//! sparse, never truncated and never locked: every slot carries a BLAKE3
//! checksum over its whole content, key included, so a slot torn by two
//! concurrent writers or a crash fails its check and reads as empty (the file
//! is hashed again). A slot is trusted only when the file's stamp — size,
//! mtime, ctime — matches and the file was last changed comfortably before
//! it was hashed (see [`crate::key::digest`]).
//!
//! **Compiler identities** vary in length (the stamps of the binary, its
//! libraries and config files), so each lives in its own small file,
//! `compiler-<hash of the invoked path>`, replaced atomically by rename.

use crate::util::FileStamp;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SLOT: usize = 256;
const SLOTS_PER_BUCKET: usize = 4;
const BUCKET: usize = SLOT * SLOTS_PER_BUCKET;
/// 8192 buckets of 4 slots: 32768 files in 8 MiB, allocated as slots are
/// first written. A kernel allmodconfig build has about 25000 bitcode files.
const BUCKETS: u64 = 8192;
const TABLE_SIZE: u64 = BUCKETS * BUCKET as u64;
/// Where the encoded assembly references start in a slot; what does not fit
/// is not memoised (such modules are rare and small).
const ASM_AT: usize = 104;
pub const ASM_MAX: usize = SLOT - ASM_AT;
/// 2 since hashing times are taken from the coarse clock (and only regular
/// files on real filesystems are memoised): slots of kind 1 are not read.
const KIND_FILE: u8 = 2;

/// A memoised file digest (and, when scanned, its encoded assembly references).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMemo {
    pub stamp: FileStamp,
    /// When hashing started (this host's clock).
    pub hashed_ns: i64,
    pub digest: [u8; 32],
    pub asm: Option<Vec<u8>>,
}

/// The digest memo table of one host.
pub struct MemoTable {
    file: File,
}

impl MemoTable {
    /// Opens (creating when needed) `memo.v1` in `dir`. Read-only when the
    /// directory is not writable: lookups still work, inserts fail quietly.
    pub fn open(dir: &Path) -> std::io::Result<MemoTable> {
        // Not followed, not blocking, a regular file no larger than the table.
        let open = |flags| {
            crate::cachedir::beneath::open_in_stat(dir, crate::cachedir::layout::MEMO, flags, 0o600, TABLE_SIZE)
        };
        let (file, st) = match open(libc::O_RDWR | libc::O_CREAT) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(libc::O_RDONLY)?,
            Err(e) => return Err(e),
        };
        // Concurrent creators all extend to the same size; a sparse file
        // costs nothing until slots are written.
        if (st.st_size as u64) < TABLE_SIZE {
            file.set_len(TABLE_SIZE)?;
        }
        Ok(MemoTable { file })
    }

    fn bucket_offset(dev: u64, ino: u64) -> u64 {
        // splitmix64 of the identity: inode numbers are dense, buckets should not be.
        let mut z = dev.rotate_left(32) ^ ino;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        (z % BUCKETS) * BUCKET as u64
    }

    fn read_bucket(&self, offset: u64) -> Option<[u8; BUCKET]> {
        let mut buf = [0u8; BUCKET];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Holds off other processes hashing a file of the same bucket until the
    /// returned guard drops, so that backends started together hash a shared
    /// import once rather than each. An OFD lock on the bucket's bytes:
    /// released by the kernel if the holder dies. Waits at most a second
    /// (then `None`: the caller hashes unlocked, as it would without a memo).
    pub fn lock_bucket(&self, stamp: &FileStamp) -> Option<BucketLock<'_>> {
        let offset = Self::bucket_offset(stamp.dev, stamp.ino);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        // Hashing one module takes well under a millisecond, so the first
        // waits are short; they double up to 16 ms so that a long wait does
        // not cost a wake-up every 100 µs.
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match self.range_lock(offset, libc::F_WRLCK as i16) {
                Ok(()) => return Some(BucketLock { table: self, offset }),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EACCES) => {
                    if std::time::Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(16));
                }
                // No locks here (a read-only table, an NFS mount without them).
                Err(_) => return None,
            }
        }
    }

    fn range_lock(&self, offset: u64, kind: i16) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock is plain data; zeroed is a valid value for it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = offset as libc::off_t;
        fl.l_len = BUCKET as libc::off_t;
        // SAFETY: F_OFD_SETLK reads the flock struct we own; l_pid must be 0.
        if unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The memo for a file with exactly this stamp, if one is recorded.
    pub fn lookup(&self, stamp: &FileStamp) -> Option<FileMemo> {
        let bucket = self.read_bucket(Self::bucket_offset(stamp.dev, stamp.ino))?;
        bucket.chunks_exact(SLOT).filter_map(decode_slot).find(|m| m.stamp == *stamp)
    }

    /// Records a memo, replacing the same file's slot, else an empty one,
    /// else the bucket's oldest. Best effort: a failure only costs a rehash.
    pub fn insert(&self, memo: &FileMemo) {
        let Some(slot) = encode_slot(memo) else { return };
        let offset = Self::bucket_offset(memo.stamp.dev, memo.stamp.ino);
        let Some(bucket) = self.read_bucket(offset) else { return };
        let decoded: Vec<Option<FileMemo>> = bucket.chunks_exact(SLOT).map(decode_slot).collect();
        let same = |m: &FileMemo| m.stamp.dev == memo.stamp.dev && m.stamp.ino == memo.stamp.ino;
        let index = decoded
            .iter()
            .position(|m| m.as_ref().is_some_and(same))
            .or_else(|| decoded.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                (0..SLOTS_PER_BUCKET)
                    .min_by_key(|&i| decoded[i].as_ref().map_or(i64::MIN, |m| m.hashed_ns))
                    .unwrap_or(0)
            });
        let _ = self.file.write_all_at(&slot, offset + (index * SLOT) as u64);
    }
}

/// A bucket of the memo table locked by [`MemoTable::lock_bucket`].
pub struct BucketLock<'a> {
    table: &'a MemoTable,
    offset: u64,
}

impl Drop for BucketLock<'_> {
    fn drop(&mut self) {
        let _ = self.table.range_lock(self.offset, libc::F_UNLCK as i16);
    }
}

fn encode_slot(m: &FileMemo) -> Option<[u8; SLOT]> {
    let asm = m.asm.as_deref().unwrap_or(&[]);
    if asm.len() > ASM_MAX {
        return None;
    }
    let mut s = [0u8; SLOT];
    s[16] = KIND_FILE;
    s[17] = m.asm.is_some() as u8;
    s[18..20].copy_from_slice(&(asm.len() as u16).to_le_bytes());
    let st = &m.stamp;
    for (i, v) in
        [st.dev, st.ino, st.size, st.mtime_ns as u64, st.ctime_ns as u64, m.hashed_ns as u64].into_iter().enumerate()
    {
        s[24 + 8 * i..32 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    s[72..104].copy_from_slice(&m.digest);
    s[ASM_AT..ASM_AT + asm.len()].copy_from_slice(asm);
    let check = blake3::hash(&s[16..]);
    s[..16].copy_from_slice(&check.as_bytes()[..16]);
    Some(s)
}

fn decode_slot(s: &[u8]) -> Option<FileMemo> {
    if s[16] != KIND_FILE || blake3::hash(&s[16..]).as_bytes()[..16] != s[..16] {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(s[24 + 8 * i..32 + 8 * i].try_into().unwrap());
    let asm_len = u16::from_le_bytes([s[18], s[19]]) as usize;
    Some(FileMemo {
        stamp: FileStamp { dev: u(0), ino: u(1), size: u(2), mtime_ns: u(3) as i64, ctime_ns: u(4) as i64 },
        hashed_ns: u(5) as i64,
        digest: s[72..104].try_into().ok()?,
        asm: (s[17] & 1 == 1).then(|| s.get(ASM_AT..ASM_AT + asm_len).map(<[u8]>::to_vec)).flatten(),
    })
    .filter(|m| s[17] & 1 == 0 || m.asm.is_some())
}

const COMPILER_MAGIC: &[u8; 8] = b"LTOCCMP1";

fn compiler_memo_path(dir: &Path, compiler: &Path) -> PathBuf {
    dir.join(crate::cachedir::layout::compiler_memo(compiler))
}

/// The memoised identity of the compiler at `compiler`: (stamps, identity).
pub fn lookup_compiler(dir: &Path, compiler: &Path) -> Option<(Vec<u8>, [u8; 32])> {
    let path = compiler_memo_path(dir, compiler);
    let name = path.file_name()?.to_str()?;
    let (f, st) = crate::cachedir::beneath::open_in_stat(dir, name, libc::O_RDONLY, 0, 1 << 20).ok()?;
    let data = crate::util::read_sized(&f, st.st_size as u64).ok()?;
    let rest = data.strip_prefix(COMPILER_MAGIC)?;
    let id: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let n = u32::from_le_bytes(rest.get(32..36)?.try_into().ok()?) as usize;
    // The file name is a hash of the path: the path itself decides.
    if rest.get(36..36 + n)? != compiler.as_os_str().as_bytes() {
        return None;
    }
    Some((rest[36 + n..].to_vec(), id))
}

/// Records a compiler's identity with the stamps it was computed under.
pub fn store_compiler(dir: &Path, compiler: &Path, stamps: &[u8], id: &[u8; 32]) -> anyhow::Result<()> {
    let path = compiler.as_os_str().as_bytes();
    let mut data = Vec::with_capacity(48 + path.len() + stamps.len());
    data.extend_from_slice(COMPILER_MAGIC);
    data.extend_from_slice(id);
    data.extend_from_slice(&(path.len() as u32).to_le_bytes());
    data.extend_from_slice(path);
    data.extend_from_slice(stamps);
    std::fs::create_dir_all(dir)?;
    crate::util::write_atomic(dir, &compiler_memo_path(dir, compiler), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo(ino: u64, hashed_ns: i64, asm: Option<Vec<u8>>) -> FileMemo {
        FileMemo {
            stamp: FileStamp { dev: 7, ino, size: 100, mtime_ns: 5, ctime_ns: 6 },
            hashed_ns,
            digest: [ino as u8; 32],
            asm,
        }
    }

    #[test]
    fn lookup_finds_exact_stamp_only() {
        let d = tempfile::tempdir().unwrap();
        let t = MemoTable::open(d.path()).unwrap();
        let m = memo(1, 10, Some(b"Fblob.bin\0".to_vec()));
        t.insert(&m);
        assert_eq!(t.lookup(&m.stamp), Some(m.clone()));
        let mut other = m.stamp;
        other.mtime_ns += 1;
        assert_eq!(t.lookup(&other), None);
        // The same file re-hashed replaces its slot.
        let m2 = FileMemo { stamp: other, ..memo(1, 20, None) };
        t.insert(&m2);
        assert_eq!(t.lookup(&other), Some(m2));
        assert_eq!(t.lookup(&m.stamp), None);
    }

    #[test]
    fn torn_slot_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let t = MemoTable::open(d.path()).unwrap();
        let m = memo(3, 10, None);
        t.insert(&m);
        let offset = MemoTable::bucket_offset(7, 3);
        let mut bucket = t.read_bucket(offset).unwrap();
        let slot = (0..SLOTS_PER_BUCKET).find(|i| bucket[i * SLOT + 16] == KIND_FILE).unwrap();
        // One flipped byte of the digest, as a torn write would leave it.
        bucket[slot * SLOT + 80] ^= 1;
        t.file.write_all_at(&bucket, offset).unwrap();
        assert_eq!(t.lookup(&m.stamp), None);
    }

    #[test]
    fn full_bucket_evicts_oldest_and_long_asm_is_not_memoised() {
        let d = tempfile::tempdir().unwrap();
        let t = MemoTable::open(d.path()).unwrap();
        // Five identities in one bucket: find inodes that collide.
        let target = MemoTable::bucket_offset(7, 1);
        let inos: Vec<u64> = (1..).filter(|&i| MemoTable::bucket_offset(7, i) == target).take(5).collect();
        for (n, &ino) in inos.iter().enumerate() {
            t.insert(&memo(ino, 100 + n as i64, None));
        }
        assert_eq!(t.lookup(&memo(inos[0], 0, None).stamp), None, "oldest evicted");
        for &ino in &inos[1..] {
            assert!(t.lookup(&memo(ino, 0, None).stamp).is_some());
        }
        let long = memo(99, 1, Some(vec![b'x'; ASM_MAX + 1]));
        t.insert(&long);
        assert_eq!(t.lookup(&long.stamp), None);
    }

    #[test]
    fn compiler_memo_round_trips_and_checks_path() {
        let d = tempfile::tempdir().unwrap();
        let p = Path::new("/usr/bin/clang-19");
        store_compiler(d.path(), p, b"stamps", &[9; 32]).unwrap();
        assert_eq!(lookup_compiler(d.path(), p), Some((b"stamps".to_vec(), [9; 32])));
        assert_eq!(lookup_compiler(d.path(), Path::new("/usr/bin/clang")), None);
    }
}

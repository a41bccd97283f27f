//! File digests with a memo, so a warm build hashes each file once rather
//! than once per importer.
//!
//! The memo ([`crate::memo`]) for a file is keyed by (device, inode) and trusted only when
//! size, mtime and ctime all match *and* the file was last changed at least
//! [`RACY_NS`] before it was hashed. Without that margin, a file rewritten
//! within the same timestamp tick as our hash (same size, same mtime) would
//! keep its old digest: the "racy git" problem.

use crate::memo::{FileMemo, MemoTable};
use crate::shard::{self, AsmRef};
use crate::util::{now_ns, FileStamp};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A file changed less than this long before it was hashed is hashed again
/// next time. One second covers coarse timestamps (and modest clock skew
/// between an NFS server and this host).
pub const RACY_NS: i64 = 1_000_000_000;

#[derive(Clone, Debug)]
pub struct Hashed {
    pub stamp: FileStamp,
    pub digest: [u8; 32],
    /// Files the module's assembly pulls in; `None` unless asked for.
    pub asm: Option<Vec<AsmRef>>,
}

/// Hashes files for one invocation, consulting and feeding the memo.
pub struct FileHasher<'a> {
    memo: Option<&'a MemoTable>,
    pub bytes_hashed: u64,
    /// Every file the key covered, with the stamp it had: checked again after
    /// the compile so an input edited meanwhile is not stored under the old key.
    pub seen: Vec<(PathBuf, FileStamp)>,
    /// Files already hashed by this invocation (an input is also a module).
    done: HashMap<PathBuf, Hashed>,
}

impl<'a> FileHasher<'a> {
    pub fn new(memo: Option<&'a MemoTable>) -> Self {
        FileHasher { memo, bytes_hashed: 0, seen: Vec::new(), done: HashMap::new() }
    }

    /// Digest of `path` (and its assembly references when `want_asm`).
    pub fn hash(&mut self, path: &Path, want_asm: bool) -> Result<Hashed> {
        if let Some(h) = self.done.get(path) {
            if h.asm.is_some() || !want_asm {
                return Ok(h.clone());
            }
        }
        let h = self.hash_uncached(path, want_asm)?;
        self.done.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }

    /// Reads a whole small file (the shard), recording its stamp like a hashed one.
    pub fn read_tracked(&mut self, path: &Path) -> Result<Vec<u8>> {
        let (file, stamp) = open_stamped(path)?;
        self.seen.push((path.to_path_buf(), stamp));
        read_unchanged(path, file, stamp)
    }

    fn hash_uncached(&mut self, path: &Path, want_asm: bool) -> Result<Hashed> {
        let (file, stamp) = open_stamped(path)?;
        self.seen.push((path.to_path_buf(), stamp));
        let memo = self.memo.and_then(|t| t.lookup(&stamp)).filter(trusted);
        match memo {
            Some(m) if !want_asm => return Ok(Hashed { stamp, digest: m.digest, asm: None }),
            Some(FileMemo { digest, asm: Some(a), .. }) => {
                return Ok(Hashed { stamp, digest, asm: Some(decode_asm(&a)) })
            }
            _ => {}
        }

        let started = now_ns();
        let data = read_unchanged(path, file, stamp)?;
        let digest = *blake3::hash(&data).as_bytes();
        self.bytes_hashed += data.len() as u64;
        let asm =
            if want_asm { Some(shard::asm_refs(&data).with_context(|| path.display().to_string())?) } else { None };
        let memo = FileMemo { stamp, hashed_ns: started, digest, asm: asm.as_deref().map(encode_asm) };
        // A memo that is not trusted now never will be (nothing in it
        // changes): the file is hashed again until it has settled.
        if let (Some(table), true) = (self.memo, trusted(&memo)) {
            table.insert(&memo);
        }
        Ok(Hashed { stamp, digest, asm })
    }

    /// True when every file the key covered still has the stamp it was hashed with.
    pub fn unchanged_since_hashing(&self) -> Option<PathBuf> {
        self.seen.iter().find(|(p, s)| FileStamp::of_path(p).ok().as_ref() != Some(s)).map(|(p, _)| p.clone())
    }
}

/// Opens a file and takes its stamp with fstat — not stat: on NFS, open
/// revalidates the attributes (close-to-open consistency) where stat may
/// answer from a stale cache.
fn open_stamped(path: &Path) -> Result<(File, FileStamp)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let stamp = FileStamp::of(&file.metadata().with_context(|| format!("stat {}", path.display()))?);
    Ok((file, stamp))
}

/// Reads the whole file and checks it still has `stamp`: bytes read while a
/// build rewrote the file are refused. (read, not mmap: a file truncated under
/// us must not kill the wrapper with SIGBUS.)
fn read_unchanged(path: &Path, mut file: File, stamp: FileStamp) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(stamp.size as usize);
    std::io::Read::read_to_end(&mut file, &mut data).with_context(|| format!("reading {}", path.display()))?;
    if FileStamp::of(&file.metadata()?) != stamp {
        bail!("{} changed while it was being read", path.display());
    }
    Ok(data)
}

fn trusted(m: &FileMemo) -> bool {
    m.hashed_ns - m.stamp.ctime_ns.max(m.stamp.mtime_ns) > RACY_NS
}

fn encode_asm(refs: &[AsmRef]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in refs {
        match r {
            AsmRef::File(name) => {
                out.push(b'F');
                out.extend_from_slice(name);
            }
            AsmRef::Include(name) => {
                out.push(b'I');
                out.extend_from_slice(name);
            }
            AsmRef::Unresolvable(text) => {
                out.push(b'U');
                out.extend(text.bytes().filter(|&b| b != 0));
            }
        }
        out.push(0);
    }
    out
}

fn decode_asm(data: &[u8]) -> Vec<AsmRef> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| match s[0] {
            b'F' => AsmRef::File(s[1..].to_vec()),
            b'I' => AsmRef::Include(s[1..].to_vec()),
            _ => AsmRef::Unresolvable(String::from_utf8_lossy(&s[1..]).into_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asm_memo_round_trips() {
        let refs = vec![
            AsmRef::File(b"a/b.bin".to_vec()),
            AsmRef::Include(b"m.s".to_vec()),
            AsmRef::Unresolvable(".incbin \\f".into()),
        ];
        assert_eq!(decode_asm(&encode_asm(&refs)), refs);
        assert!(decode_asm(&encode_asm(&[])).is_empty());
    }

    #[test]
    fn freshly_modified_file_is_not_trusted_from_memo() {
        let stamp = FileStamp { dev: 1, ino: 2, size: 3, mtime_ns: 10_000_000_000, ctime_ns: 10_000_000_000 };
        let racy = FileMemo { stamp, hashed_ns: 10_000_000_001, digest: [0; 32], asm: None };
        assert!(!trusted(&racy));
        let settled = FileMemo { hashed_ns: 12_000_000_000, ..racy };
        assert!(trusted(&settled));
    }
}

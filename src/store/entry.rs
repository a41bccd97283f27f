//! The entry: one file per key, its grammar in docs/store.md. Small outputs
//! live inside it; larger ones are named by digest and kept as blobs.

use anyhow::{bail, ensure, Result};

pub use crate::cachedir::layout::LAYOUT_DIR;
pub const ENTRY_MAGIC: &[u8; 8] = b"LTOCENTR";
/// The entry grammar written; bumped whenever it changes. Readers treat
/// formats they do not know as misses (and leave those files alone).
pub const ENTRY_FORMAT: u32 = 2;
/// Format 1 (no inline outputs) is still read: an upgrade keeps the cache warm.
const READABLE_FORMATS: [u32; 2] = [1, 2];
/// Outputs of at most this many bytes are stored raw even when compression is on.
pub const RAW_MAX: usize = 4096;
/// Outputs whose stored bytes are at most this large are kept in the entry
/// by default (setting `inline_max`).
pub const INLINE_MAX: usize = 256 << 10;

pub type Digest = [u8; 32];

/// Where an output's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// In `blobs/` (raw, or zstd with the `.zst` suffix).
    Blob,
    /// In the entry, raw.
    Inline(Vec<u8>),
    /// In the entry, one zstd frame.
    InlineZstd(Vec<u8>),
}

/// What the backend produced, as stored in an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOutput {
    /// 0 = the `-o` object. Reserved for extra outputs (.dwo, remarks).
    pub kind: u8,
    /// Size and blake3 of the output's bytes, checked on every hit.
    pub size: u64,
    pub digest: Digest,
    pub stored: Stored,
}

/// One cache entry: what a hit needs to reproduce the compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Digest,
    /// How long the backend ran when it was stored: what a hit saves.
    pub duration_ns: u64,
    pub created_unix: u64,
    pub outputs: Vec<StoredOutput>,
    /// Replayed byte for byte on a hit.
    pub stderr: Vec<u8>,
}

impl Entry {
    /// Serialises the entry (grammar in docs/store.md).
    pub fn encode(&self) -> Vec<u8> {
        let inline: usize = self.outputs.iter().map(|o| o.inline_bytes().map_or(0, <[u8]>::len)).sum();
        let mut body = Vec::with_capacity(96 + self.outputs.len() * 46 + inline + self.stderr.len());
        body.extend_from_slice(&self.key);
        body.extend_from_slice(&self.duration_ns.to_le_bytes());
        body.extend_from_slice(&self.created_unix.to_le_bytes());
        body.extend_from_slice(&(self.outputs.len() as u32).to_le_bytes());
        for o in &self.outputs {
            body.push(o.kind);
            body.extend_from_slice(&o.size.to_le_bytes());
            body.extend_from_slice(&o.digest);
            let (tag, bytes): (u8, &[u8]) = match &o.stored {
                Stored::Blob => (0, &[]),
                Stored::Inline(b) => (1, b),
                Stored::InlineZstd(b) => (2, b),
            };
            body.push(tag);
            if tag != 0 {
                body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(&(self.stderr.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.stderr);

        let mut out = Vec::with_capacity(16 + body.len() + 32);
        out.extend_from_slice(ENTRY_MAGIC);
        out.extend_from_slice(&ENTRY_FORMAT.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// The format version of an entry file, if it has our magic and a
    /// plausible version (garbage after the magic is corruption, not a version).
    pub fn format_of(data: &[u8]) -> Option<u32> {
        (data.len() >= 12 && &data[..8] == ENTRY_MAGIC)
            .then(|| u32::from_le_bytes(data[8..12].try_into().unwrap()))
            .filter(|&f| f <= 0xffff)
    }

    /// True for an entry another ltocache version wrote in a format this one
    /// cannot read: a miss, and a file to leave alone.
    pub fn is_foreign(data: &[u8]) -> bool {
        Entry::format_of(data).is_some_and(|f| !READABLE_FORMATS.contains(&f))
    }

    pub fn decode(data: &[u8]) -> Result<Entry> {
        ensure!(data.len() >= 16 + 32, "entry too short");
        ensure!(&data[..8] == ENTRY_MAGIC, "bad entry magic");
        let format = u32::from_le_bytes(data[8..12].try_into().unwrap());
        ensure!(READABLE_FORMATS.contains(&format), "entry format {format}, expected {ENTRY_FORMAT}");
        let body_len = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
        ensure!(data.len() == 16 + body_len + 32, "entry length mismatch");
        let (signed, sum) = data.split_at(16 + body_len);
        ensure!(blake3::hash(signed).as_bytes() == sum, "entry checksum mismatch");
        let mut r = Reader { data: &data[16..16 + body_len] };
        let key: Digest = r.take(32)?.try_into().unwrap();
        let duration_ns = r.u64()?;
        let created_unix = r.u64()?;
        let n = r.u32()? as usize;
        ensure!(n <= 16, "too many outputs in entry");
        let mut outputs = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = r.take(1)?[0];
            let size = r.u64()?;
            let digest: Digest = r.take(32)?.try_into().unwrap();
            let stored = match if format == 1 { 0 } else { r.take(1)?[0] } {
                0 => Stored::Blob,
                tag @ (1 | 2) => {
                    let len = r.u32()? as usize;
                    let bytes = r.take(len)?.to_vec();
                    if tag == 1 {
                        ensure!(bytes.len() as u64 == size, "inline output has the wrong size");
                        Stored::Inline(bytes)
                    } else {
                        Stored::InlineZstd(bytes)
                    }
                }
                t => bail!("unknown output storage {t}"),
            };
            outputs.push(StoredOutput { kind, size, digest, stored });
        }
        let stderr_len = r.u32()? as usize;
        let stderr = r.take(stderr_len)?.to_vec();
        ensure!(r.data.is_empty(), "trailing bytes in entry");
        Ok(Entry { key, duration_ns, created_unix, outputs, stderr })
    }
}

/// Inline outputs larger than this (decoded) are refused rather than
/// allocated: a checksummed entry never claims it, a crafted one might.
const INLINE_DECODED_MAX: u64 = 1 << 30;

impl StoredOutput {
    /// The bytes kept in the entry, if any, as stored.
    pub fn inline_bytes(&self) -> Option<&[u8]> {
        match &self.stored {
            Stored::Blob => None,
            Stored::Inline(b) | Stored::InlineZstd(b) => Some(b),
        }
    }

    /// The output's bytes when they are kept in the entry: decoded and checked
    /// against the recorded size and digest (`Err` says why they are not
    /// usable). `None` for an output in a blob file. The entry's checksum
    /// already covers these bytes; checking the digest as well makes a hit's
    /// guarantee the same whichever way the output is stored.
    pub fn inline_data(&self) -> Option<std::result::Result<std::borrow::Cow<'_, [u8]>, &'static str>> {
        let data = match &self.stored {
            Stored::Blob => return None,
            Stored::Inline(b) => std::borrow::Cow::Borrowed(&b[..]),
            Stored::InlineZstd(_) if self.size > INLINE_DECODED_MAX => return Some(Err("inline output too large")),
            Stored::InlineZstd(b) => match super::codec::decompress(b, self.size as usize) {
                Ok(d) => std::borrow::Cow::Owned(d),
                Err(_) => return Some(Err("inline output does not decode")),
            },
        };
        if data.len() as u64 != self.size || blake3::hash(&data).as_bytes() != &self.digest {
            return Some(Err("inline output does not match its digest"));
        }
        Some(Ok(data))
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.data.len() >= n, "entry truncated");
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

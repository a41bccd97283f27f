//! The second key: the shard without its module paths and module hashes,
//! and the key over the first key's fields with the post-import module in
//! place of the imported modules.

use super::*;

// The shard without module paths and module hashes.

use crate::key::shard::{MODULE_STRTAB_BLOCK, MST_CODE_ENTRY, MST_CODE_HASH};
pub(super) const GLOBALVAL_SUMMARY_BLOCK: u32 = 20;
pub(super) const FULL_LTO_GLOBALVAL_SUMMARY_BLOCK: u32 = 24;
pub(super) const FS_FLAGS: u32 = 20;
/// Combined-summary records whose only readers after the post-import hook
/// are vetted: function, variable and alias summaries, names, GUIDs, the
/// version, flags and block count. Type tests, type ids, CFI, vtable
/// functions, parameter accesses and MemProf records are not.
pub(super) const SUMMARY_VETTED: &[u32] = &[4, 5, 6, 8, 9, 10, 16, 20, 24];

pub(super) struct NoHashVisitor {
    hasher: blake3::Hasher,
    unvetted: Option<String>,
}

impl NoHashVisitor {
    fn tag(&mut self, t: u8, v: u64) {
        self.hasher.update(&[t]);
        self.hasher.update(&v.to_le_bytes());
    }
}

impl<'a> Visitor<'a> for NoHashVisitor {
    fn enter_block(&mut self, _path: &[u32], block_id: u32) -> Visit {
        if block_id == FULL_LTO_GLOBALVAL_SUMMARY_BLOCK && self.unvetted.is_none() {
            self.unvetted = Some("regular-LTO summary block".into());
        }
        self.tag(b'{', block_id as u64);
        Visit::Enter
    }

    fn end_block(&mut self, _path: &[u32]) -> Result<()> {
        self.tag(b'}', 0);
        Ok(())
    }

    fn record(&mut self, path: &[u32], rec: &Record<'a>) -> Result<()> {
        let block = path.last().copied();
        if block == Some(MODULE_STRTAB_BLOCK) {
            match rec.code {
                // The module id stays (which module a summary belongs to);
                // the path goes (the key does not depend on where the build is).
                MST_CODE_ENTRY => {
                    let id = *rec.ops.first().context("module table entry without id")?;
                    self.tag(b'E', id);
                    return Ok(());
                }
                // Their effect (promoted names) is in the post-import module.
                MST_CODE_HASH => return Ok(()),
                _ => {}
            }
        }
        if block == Some(GLOBALVAL_SUMMARY_BLOCK) {
            if !SUMMARY_VETTED.contains(&rec.code) && self.unvetted.is_none() {
                self.unvetted = Some(format!("summary record code {}", rec.code));
            }
            // Bit 1 of the flags: the thin link skipped this module (clang
            // writes an empty object without running the backend).
            if rec.code == FS_FLAGS && rec.ops.first().is_some_and(|f| f & 2 != 0) && self.unvetted.is_none() {
                self.unvetted = Some("index skips the module".into());
            }
        }
        self.tag(b'R', rec.code as u64);
        self.tag(b'n', rec.ops.len() as u64);
        for &op in &rec.ops {
            self.hasher.update(&op.to_le_bytes());
        }
        if let Some(blob) = rec.blob {
            self.tag(b'B', blob.len() as u64);
            self.hasher.update(blob);
        }
        Ok(())
    }
}

/// blake3 over the shard without its module paths and module hashes, or
/// why precise mode must refuse it.
pub fn shard_without_hashes(data: &[u8]) -> Result<[u8; 32], Refusal> {
    if data.is_empty() {
        return refuse("empty_index", "empty index shard");
    }
    let mut v = NoHashVisitor { hasher: blake3::Hasher::new(), unvetted: None };
    v.hasher.update(b"ltocache-shard-nohash-v1");
    if let Err(e) = bitcode::walk(data, &mut v) {
        return refuse("bad_shard", format!("{e:#}"));
    }
    if let Some(why) = v.unvetted {
        return refuse("index_feature", why);
    }
    Ok(*v.hasher.finalize().as_bytes())
}

// The second key.

/// The second key from the first key's fields: every field but the shard's
/// digest and the imported modules' fingerprints, plus the helper's
/// identity, the shard without hashes and the post-import module.
pub fn second_key(first: &[(String, String)], helper: &[u8; 32], shard: &[u8; 32], post_import: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut field = |k: &str, v: &str| {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    };
    field("precise", PRECISE_KEY_VERSION);
    for (k, v) in first {
        if k == "shard" {
            continue;
        }
        if k.starts_with("module[") {
            // Which id is the input stays; imported modules count through
            // the post-import module.
            field(k, if v == "input" { "input" } else { "imported" });
            continue;
        }
        field(k, v);
    }
    field("precise-helper", &hex(helper));
    field("shard-without-hashes", &hex(shard));
    field("post-import", &hex(post_import));
    *h.finalize().as_bytes()
}

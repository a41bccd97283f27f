//! Reading what a backend will load: the module table of an index shard and the
//! inline assembly of a bitcode module.
//!
//! A shard (`X.o.thinlto.bc`) is a bitcode file whose MODULE_BLOCK holds a
//! MODULE_STRTAB_BLOCK (id 19): one ENTRY record (module id, path as given to
//! the linker) and one HASH record (five 32-bit words) per module, the input
//! itself plus every module it imports from. That list is what clang loads, so
//! it is the list the key hashes — never an `.imports` file, never the stored
//! hashes alone (bitcode made without `-module-hash` stores zeros).

use crate::key::bitcode::{self, Record, Visit, Visitor};
use anyhow::{Context, Result};

const MODULE_BLOCK: u32 = 8;
const CONSTANTS_BLOCK: u32 = 11;
const FUNCTION_BLOCK: u32 = 12;
/// The shard's module table and its records (also read by precise.rs).
pub const MODULE_STRTAB_BLOCK: u32 = 19;
pub const MST_CODE_ENTRY: u32 = 1;
pub const MST_CODE_HASH: u32 = 2;
const MODULE_CODE_ASM: u32 = 4;

/// One module named in a shard's module table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleRef {
    pub id: u64,
    /// The path exactly as the thin link wrote it (relative to the build's cwd, or absolute).
    pub path: Vec<u8>,
    /// The 160-bit module hash the front end stored, all zeros when it stored none.
    pub hash: [u32; 5],
}

/// What the key needs from a shard.
#[derive(Debug)]
pub struct Shard {
    pub modules: Vec<ModuleRef>,
    /// blake3 over every block and record of the shard *except the module paths*
    /// (the module block and its module table decoded, every other block as
    /// its raw bytes), so that two build directories (absolute paths given to the linker) give the
    /// same value while any change to the summary, ids or hashes does not.
    pub canonical_digest: [u8; 32],
}

struct ShardVisitor {
    /// Hash blocks other than the module block and its table raw (false:
    /// decode every block, the digest's first form, kept for the test that
    /// holds the two against each other).
    raw: bool,
    modules: Vec<ModuleRef>,
    /// The canonical byte stream, buffered and fed to `hasher` 16 KiB at a
    /// time: thousands of 8-byte updates would be slow, and buffering the
    /// whole stream (4× the shard) cost an allocation and its page faults on
    /// every hit. The digest is the same either way.
    canon: Vec<u8>,
    hasher: blake3::Hasher,
}

const CANON_BUFFER: usize = 16 << 10;

impl ShardVisitor {
    fn put(&mut self, bytes: &[u8]) {
        if self.canon.len() + bytes.len() > CANON_BUFFER {
            self.hasher.update(&self.canon);
            self.canon.clear();
        }
        if bytes.len() > CANON_BUFFER {
            self.hasher.update(bytes);
        } else {
            self.canon.extend_from_slice(bytes);
        }
    }

    fn tag(&mut self, tag: u8, value: u64) {
        let mut b = [0u8; 9];
        b[0] = tag;
        b[1..].copy_from_slice(&value.to_le_bytes());
        self.put(&b);
    }
}

impl<'a> Visitor<'a> for ShardVisitor {
    fn enter_block(&mut self, _path: &[u32], block_id: u32) -> Visit {
        // Only the module block and its module table are decoded (the paths
        // must be left out); every other block — the summary is ~90 % of a
        // shard — is hashed as its raw bytes, which say exactly what its
        // decoded records say (its abbreviations are inside it) at a tenth
        // of the cost. Module paths appear in no other block.
        // The tag goes in first either way: the walker decodes a block it
        // was asked for raw when abbreviations from BLOCKINFO apply, and the
        // block's id must then still be in the stream.
        self.tag(b'{', block_id as u64);
        match block_id {
            _ if !self.raw => Visit::Enter,
            MODULE_BLOCK | MODULE_STRTAB_BLOCK => Visit::Enter,
            _ => Visit::Raw,
        }
    }

    fn raw_block(&mut self, _path: &[u32], block_id: u32, width: u8, body: &'a [u8]) -> Result<()> {
        self.tag(b'[', block_id as u64);
        self.tag(b'w', width as u64);
        self.tag(b'n', body.len() as u64);
        self.put(body);
        Ok(())
    }

    fn end_block(&mut self, _path: &[u32]) -> Result<()> {
        self.tag(b'}', 0);
        Ok(())
    }

    fn record(&mut self, path: &[u32], rec: &Record<'a>) -> Result<()> {
        let in_strtab = path.last() == Some(&MODULE_STRTAB_BLOCK);
        if in_strtab && rec.code == MST_CODE_ENTRY {
            let id = *rec.ops.first().context("module table entry without id")?;
            self.modules.push(ModuleRef { id, path: rec.string_from(1), hash: [0; 5] });
            // The path is left out of the canonical digest; the key hashes the file's
            // contents (and whether it is the input) in its place.
            self.tag(b'E', id);
            return Ok(());
        }
        if in_strtab && rec.code == MST_CODE_HASH {
            let m = self.modules.last_mut().context("module hash before any module entry")?;
            for (slot, v) in m.hash.iter_mut().zip(rec.ops.iter()) {
                *slot = *v as u32;
            }
        }
        self.tag(b'R', rec.code as u64);
        self.tag(b'n', rec.ops.len() as u64);
        for &op in &rec.ops {
            self.put(&op.to_le_bytes());
        }
        if let Some(blob) = rec.blob {
            self.tag(b'B', blob.len() as u64);
            self.put(blob);
        }
        Ok(())
    }
}

/// Parses a shard's bytes.
pub fn read_shard(data: &[u8]) -> Result<Shard> {
    read(data, true)
}

/// [`read_shard`] decoding every block (a digest of another form): for the
/// test that the fast digest tells apart whatever decoding tells apart.
#[doc(hidden)]
pub fn read_shard_decoding_all(data: &[u8]) -> Result<Shard> {
    read(data, false)
}

fn read(data: &[u8], raw: bool) -> Result<Shard> {
    let mut v = ShardVisitor {
        raw,
        modules: Vec::new(),
        canon: Vec::with_capacity(CANON_BUFFER.min(data.len() * 4)),
        hasher: blake3::Hasher::new(),
    };
    // v2: blocks other than the module block and its table go in raw.
    v.put(b"ltocache-shard-v2");
    bitcode::walk(data, &mut v).context("reading index shard")?;
    v.hasher.update(&v.canon);
    Ok(Shard { modules: v.modules, canonical_digest: *v.hasher.finalize().as_bytes() })
}

/// A file that assembly in a module pulls in (`.incbin "f"` or `.include "f"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsmRef {
    /// `.incbin "f"`: bytes pulled into the object.
    File(Vec<u8>),
    /// `.include "f"`: more assembly, which may have directives of its own.
    Include(Vec<u8>),
    /// A directive whose operand is not a plain string literal (macro argument,
    /// symbol, ...): we cannot tell what it reads, so the command is uncacheable.
    Unresolvable(String),
}

struct AsmVisitor {
    texts: Vec<Vec<u8>>,
}

impl<'a> Visitor<'a> for AsmVisitor {
    fn enter_block(&mut self, _path: &[u32], block_id: u32) -> Visit {
        // Module-level asm sits in MODULE_BLOCK; per-function inline asm in
        // CONSTANTS_BLOCKs, at module level or inside a FUNCTION_BLOCK. Everything
        // else (types, metadata, symbol tables) is skipped by its length word.
        match block_id {
            MODULE_BLOCK | CONSTANTS_BLOCK => Visit::Enter,
            // A function's own records are instructions; only its nested
            // CONSTANTS_BLOCK can hold inline asm, so they are stepped over.
            FUNCTION_BLOCK => Visit::Scan,
            _ => Visit::Skip,
        }
    }

    fn wants_record(&mut self, path: &[u32], code: u32) -> bool {
        // Everything else (global initialisers, declarations) is stepped over undecoded.
        matches!(
            (path.last(), code),
            (Some(&MODULE_BLOCK), MODULE_CODE_ASM) | (Some(&CONSTANTS_BLOCK), 18 | 23 | 28 | 30)
        )
    }

    fn record(&mut self, path: &[u32], rec: &Record<'a>) -> Result<()> {
        match (path.last(), rec.code) {
            (Some(&MODULE_BLOCK), MODULE_CODE_ASM) => self.texts.push(rec.string_from(0)),
            // CST_CODE_INLINEASM (30) and _OLD3 (28): [fnty, flags, asmstrsize, asmstr..., ...]
            // CST_CODE_INLINEASM_OLD2 (23) and _OLD (18): [flags, asmstrsize, asmstr..., ...]
            (Some(&CONSTANTS_BLOCK), code @ (18 | 23 | 28 | 30)) => {
                let at = if code >= 28 { 2 } else { 1 };
                let len = *rec.ops.get(at).unwrap_or(&0) as usize;
                let text: Vec<u8> = rec.ops.iter().skip(at + 1).take(len).map(|&v| v as u8).collect();
                if contains_ci(&text, b"inc") {
                    self.texts.push(text);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Every file the assembly inside a bitcode module refers to, in order.
pub fn asm_refs(bitcode_data: &[u8]) -> Result<Vec<AsmRef>> {
    let mut v = AsmVisitor { texts: Vec::new() };
    bitcode::walk(bitcode_data, &mut v).context("reading module bitcode")?;
    let mut refs = Vec::new();
    for text in &v.texts {
        scan_asm(text, &mut refs);
    }
    Ok(refs)
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Finds `.incbin` / `.include` directives in assembly text. LLVM's assembler
/// matches directive names case-insensitively, so we do too. Anything that
/// looks like such a directive but has no literal file name is Unresolvable:
/// over-reporting costs a cache miss, under-reporting a stale object.
pub fn scan_asm(text: &[u8], out: &mut Vec<AsmRef>) {
    let lower = text.to_ascii_lowercase();
    for directive in [&b".incbin"[..], &b".include"[..]] {
        let mut from = 0;
        while let Some(pos) = find(&lower[from..], directive).map(|p| p + from) {
            from = pos + directive.len();
            // `.includex` is another word; `.include` must end at a separator.
            if lower.get(from).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                continue;
            }
            let mut i = from;
            while i < text.len() && (text[i] == b' ' || text[i] == b'\t') {
                i += 1;
            }
            match parse_string_literal(&text[i..]) {
                Some(name) if !name.is_empty() && directive == b".include" => out.push(AsmRef::Include(name)),
                Some(name) if !name.is_empty() => out.push(AsmRef::File(name)),
                _ => out.push(AsmRef::Unresolvable(
                    String::from_utf8_lossy(&text[pos..text.len().min(pos + 80)]).into_owned(),
                )),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `"..."` with the assembler's escapes (\\, \", \n, \t, octal).
fn parse_string_literal(s: &[u8]) -> Option<Vec<u8>> {
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(out),
            b'\n' => return None,
            b'\\' => {
                i += 1;
                match *s.get(i)? {
                    b'0'..=b'7' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 3 && i < s.len() && (b'0'..=b'7').contains(&s[i]) {
                            v = v * 8 + (s[i] - b'0') as u32;
                            i += 1;
                            n += 1;
                        }
                        out.push(v as u8);
                        continue;
                    }
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    // Anything else (e.g. `\file` from a macro) is not a literal.
                    _ => return None,
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn buffered_canonical_stream_hashes_like_the_whole_stream() {
        let mut v = ShardVisitor { raw: true, modules: Vec::new(), canon: Vec::new(), hasher: blake3::Hasher::new() };
        let mut whole = Vec::new();
        let mut x = 7u64;
        for i in 0..3000u64 {
            // Pieces of 0..40 bytes, and now and then one larger than the buffer.
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = if i % 997 == 0 { CANON_BUFFER + 5 } else { (x >> 58) as usize };
            let piece: Vec<u8> = (0..len).map(|k| (k as u64 ^ x) as u8).collect();
            v.put(&piece);
            whole.extend_from_slice(&piece);
            v.tag(b'R', i);
            whole.push(b'R');
            whole.extend_from_slice(&i.to_le_bytes());
        }
        v.hasher.update(&v.canon);
        assert_eq!(v.hasher.finalize(), blake3::hash(&whole));
    }
    use super::*;

    fn refs(s: &str) -> Vec<AsmRef> {
        let mut v = Vec::new();
        scan_asm(s.as_bytes(), &mut v);
        v
    }

    #[test]
    fn finds_incbin_with_literal_name() {
        assert_eq!(
            refs("\t.incbin \"kernel/config_data.gz\"\n"),
            vec![AsmRef::File(b"kernel/config_data.gz".to_vec())]
        );
        assert_eq!(refs(".INCBIN \"a\\\\b\", 4, 8"), vec![AsmRef::File(b"a\\b".to_vec())]);
        assert_eq!(refs(".include \"macros.s\""), vec![AsmRef::Include(b"macros.s".to_vec())]);
    }

    #[test]
    fn macro_argument_is_unresolvable() {
        assert!(matches!(refs(".macro m f\n.incbin \"\\f\"\n.endm")[0], AsmRef::Unresolvable(_)));
        assert!(matches!(refs(".incbin sym")[0], AsmRef::Unresolvable(_)));
    }

    #[test]
    fn other_words_are_not_directives() {
        assert!(refs(".includes_nothing: nop").is_empty());
        assert!(refs("mov %eax, %ebx").is_empty());
    }
}

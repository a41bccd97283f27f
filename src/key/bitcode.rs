//! A small reader for LLVM's bitstream container.
//!
//! We need two things from bitcode: the module table of an index shard and the
//! inline assembly of a module. Both sit in a handful of records, so rather than
//! materialise the whole tree (as a general-purpose crate does) this reader walks
//! the stream once and lets the caller decide, per block, whether to enter it or
//! skip it by its length word. Skipping is what keeps the hit path cheap: a
//! module's function bodies are never decoded unless the caller asks.
//!
//! Format reference: LLVM's "LLVM Bitcode File Format" document. Abbreviation
//! ids 0..=3 are END_BLOCK, ENTER_SUBBLOCK, DEFINE_ABBREV and UNABBREV_RECORD;
//! ids from 4 on name abbreviations, which come first from the BLOCKINFO block
//! (for the block's id) and then from DEFINE_ABBREV records inside the block.

use anyhow::{bail, ensure, Result};
use std::collections::HashMap;
use std::rc::Rc;

const END_BLOCK: u64 = 0;
const ENTER_SUBBLOCK: u64 = 1;
const DEFINE_ABBREV: u64 = 2;
const UNABBREV_RECORD: u64 = 3;
const BLOCKINFO_BLOCK_ID: u32 = 0;
const BLOCKINFO_CODE_SETBID: u32 = 1;
/// Nesting deeper than this is treated as a corrupt file rather than recursed into.
const MAX_DEPTH: usize = 64;

/// One operand of an abbreviation that decodes to a single value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    Literal(u64),
    Fixed(u8),
    Vbr(u8),
    Char6,
}

/// One operand of an abbreviation. `Copy`, so that a block's abbreviations
/// are cheap to hold and an array's element type needs no allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Scalar(Scalar),
    Array(Scalar),
    Blob,
}

type Abbrev = Vec<Op>;

/// One decoded record: its code, operands and (for blob operands) the bytes.
#[derive(Debug, Default)]
pub struct Record<'a> {
    pub code: u32,
    pub ops: Vec<u64>,
    pub blob: Option<&'a [u8]>,
}

impl Record<'_> {
    /// Operands from `start` read as one byte each (how LLVM stores strings).
    pub fn string_from(&self, start: usize) -> Vec<u8> {
        self.ops.get(start..).unwrap_or(&[]).iter().map(|&v| v as u8).collect()
    }
}

/// What the visitor wants done with a block it is about to enter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    Enter,
    /// Enter only to find the blocks nested in it: its records are stepped
    /// over without being decoded into values or shown to the visitor.
    Scan,
    Skip,
    /// Hand the block's body to [`Visitor::raw_block`] undecoded (its
    /// nested blocks included), then step over it. Only for a block whose
    /// abbreviations are all its own: when BLOCKINFO defines some for its
    /// id, the bytes alone do not say what they mean, and the block is
    /// entered as with [`Visit::Enter`] instead.
    Raw,
}

/// Callbacks for [`walk`]. `path` is the stack of enclosing block ids.
pub trait Visitor<'a> {
    fn enter_block(&mut self, path: &[u32], block_id: u32) -> Visit;
    /// Whether a record with this code, in the block `path` ends in, should be
    /// decoded and passed to [`Visitor::record`]; the others are stepped over.
    fn wants_record(&mut self, _path: &[u32], _code: u32) -> bool {
        true
    }
    fn record(&mut self, path: &[u32], record: &Record<'a>) -> Result<()>;
    fn end_block(&mut self, _path: &[u32]) -> Result<()> {
        Ok(())
    }
    /// A block the visitor asked for as [`Visit::Raw`]: its id, abbreviation
    /// width and the bytes of its body (32-bit aligned, END_BLOCK included).
    fn raw_block(&mut self, _path: &[u32], _block_id: u32, _width: u8, _body: &'a [u8]) -> Result<()> {
        Ok(())
    }
}

/// For each VBR width, the continuation bits of the chunks that fit in
/// 57 bits (bit `w - 1` of each `w`-bit chunk).
const VBR_ENDS: [u64; 33] = {
    let mut t = [0u64; 33];
    let mut w = 2;
    while w <= 32 {
        let mut k = 0;
        while (k + 1) * w <= 57 {
            t[w] |= 1u64 << (k * w + w - 1);
            k += 1;
        }
        w += 1;
    }
    t
};

struct Cursor<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    bit: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.bit >= self.data.len() * 8
    }

    fn read(&mut self, width: u8) -> Result<u64> {
        debug_assert!(width <= 64);
        if width == 0 {
            return Ok(0);
        }
        let end = self.bit + width as usize;
        ensure!(end <= self.data.len() * 8, "bitcode truncated");
        let byte = self.bit / 8;
        let shift = (self.bit % 8) as u32;
        // Fast path: one unaligned 8-byte load covers any field of up to 56 bits.
        let value = if width <= 56 && byte + 8 <= self.data.len() {
            let word = u64::from_le_bytes(self.data[byte..byte + 8].try_into().unwrap());
            (word >> shift) & ((1u64 << width) - 1)
        } else {
            let mut value: u64 = 0;
            let mut got = 0u32;
            let mut bit = self.bit;
            while got < width as u32 {
                let b = self.data[bit / 8] as u64;
                let off = (bit % 8) as u32;
                let take = (8 - off).min(width as u32 - got);
                value |= ((b >> off) & ((1u64 << take) - 1)) << got;
                got += take;
                bit += take as usize;
            }
            value
        };
        self.bit = end;
        Ok(value)
    }

    fn read_vbr(&mut self, width: u8) -> Result<u64> {
        ensure!((2..=32).contains(&width), "bad VBR width {width}");
        let hi = 1u64 << (width - 1);
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let piece = self.read(width)?;
            ensure!(shift < 64, "VBR value too long");
            value |= (piece & (hi - 1)) << shift;
            if piece & hi == 0 {
                return Ok(value);
            }
            shift += width as u32 - 1;
        }
    }

    /// Steps over `n` VBR values of `width` without decoding them. Function
    /// bodies are mostly such operands, so this works a word at a time: in
    /// one unaligned 8-byte load, the chunks whose continuation bit is clear
    /// are the values' last chunks; count them, and find the n-th with a
    /// bit scan once it is in reach.
    fn skip_vbrs(&mut self, width: u8, mut n: usize) -> Result<()> {
        ensure!((2..=32).contains(&width), "bad VBR width {width}");
        let w = width as usize;
        // Chunks per load: at least 57 bits are usable after the sub-byte shift.
        let per_load = 57 / w;
        let ends = VBR_ENDS[w];
        while n > 0 {
            let byte = self.bit / 8;
            if byte + 8 > self.data.len() {
                // The last bytes: one value at a time.
                for _ in 0..n {
                    self.read_vbr(width)?;
                }
                return Ok(());
            }
            let word = u64::from_le_bytes(self.data[byte..byte + 8].try_into().unwrap()) >> (self.bit % 8);
            let last = !word & ends;
            let count = last.count_ones() as usize;
            if count < n {
                n -= count;
                self.bit += per_load * w;
            } else {
                let mut m = last;
                for _ in 1..n {
                    m &= m - 1;
                }
                self.bit += m.trailing_zeros() as usize + 1;
                n = 0;
            }
        }
        ensure!(self.bit <= self.data.len() * 8, "bitcode truncated");
        Ok(())
    }

    fn align32(&mut self) {
        self.bit = (self.bit + 31) & !31;
    }

    fn skip_bits(&mut self, n: usize) -> Result<()> {
        ensure!(self.bit.checked_add(n).is_some_and(|e| e <= self.data.len() * 8), "bitcode truncated");
        self.bit += n;
        Ok(())
    }

    fn skip_bytes(&mut self, n: usize) -> Result<()> {
        ensure!((self.bit / 8).checked_add(n).is_some_and(|e| e <= self.data.len()), "bitcode truncated");
        self.bit += n * 8;
        Ok(())
    }
}

/// Strips the optional wrapper header and checks the 'BC' 0xC0DE magic.
/// Returns the bitstream that follows the magic.
pub fn stream(data: &[u8]) -> Result<&[u8]> {
    let mut data = data;
    if data.len() >= 20 && data[..4] == [0xDE, 0xC0, 0x17, 0x0B] {
        let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        let (offset, size) = (word(8), word(12));
        ensure!(offset.checked_add(size).is_some_and(|e| e <= data.len()), "bad bitcode wrapper");
        data = &data[offset..offset + size];
    }
    ensure!(data.len() >= 4 && data[..4] == [b'B', b'C', 0xC0, 0xDE], "not LLVM bitcode");
    Ok(&data[4..])
}

/// True when `data` starts like a bitcode file (raw or wrapped).
pub fn is_bitcode(data: &[u8]) -> bool {
    data.starts_with(&[b'B', b'C', 0xC0, 0xDE]) || data.starts_with(&[0xDE, 0xC0, 0x17, 0x0B])
}

/// Abbreviations that BLOCKINFO defines, per block id. Shared (`Rc`) so that
/// entering a block, which LLVM does once per function, costs no copy.
type BlockInfo = HashMap<u32, Rc<Vec<Abbrev>>>;

/// Walks every top-level block of a bitcode file, calling the visitor.
pub fn walk<'a>(file: &'a [u8], visitor: &mut dyn Visitor<'a>) -> Result<()> {
    let data = stream(file)?;
    let mut cur = Cursor { data, bit: 0 };
    let mut blockinfo = BlockInfo::new();
    let mut path = Vec::new();
    // One record buffer for the whole walk: records are decoded into it in
    // place, so the hot loop does not allocate.
    let mut rec = Record::default();
    // Top level: abbreviation width 2, only ENTER_SUBBLOCK is meaningful.
    while !cur.at_end() {
        // Trailing padding shorter than an abbreviation id, or zero words, ends the stream.
        if cur.data.len() * 8 - cur.bit < 32 && cur.data[cur.bit / 8..].iter().all(|&b| b == 0) {
            break;
        }
        let id = cur.read(2)?;
        if id != ENTER_SUBBLOCK {
            // LLVM tolerates zero padding at the end of a file (e.g. wrapper alignment).
            if id == 0 && cur.data[cur.bit / 8..].iter().all(|&b| b == 0) {
                break;
            }
            bail!("unexpected abbreviation id {id} at top level");
        }
        block(&mut cur, &mut blockinfo, &mut path, &mut rec, visitor)?;
    }
    Ok(())
}

/// Reads one block whose ENTER_SUBBLOCK id has just been consumed.
fn block<'a>(
    cur: &mut Cursor<'a>,
    blockinfo: &mut BlockInfo,
    path: &mut Vec<u32>,
    rec: &mut Record<'a>,
    visitor: &mut dyn Visitor<'a>,
) -> Result<()> {
    ensure!(path.len() < MAX_DEPTH, "bitcode nests too deeply");
    let block_id = cur.read_vbr(8)? as u32;
    let width = cur.read_vbr(4)? as u8;
    ensure!((1..=32).contains(&width), "bad abbreviation width {width}");
    cur.align32();
    let words = cur.read(32)? as usize;
    let body_start = cur.bit;
    let body_end = body_start
        .checked_add(words * 32)
        .filter(|&e| e <= cur.data.len() * 8)
        .ok_or_else(|| anyhow::anyhow!("block {block_id} runs past the end of the file"))?;

    let mut visit = if block_id == BLOCKINFO_BLOCK_ID { Visit::Enter } else { visitor.enter_block(path, block_id) };
    // Raw bytes say what the records say only where no abbreviation from
    // BLOCKINFO (which the visitor never sees) can be used: not in this
    // block, nor in any block nested in it — so none defined for any id.
    if visit == Visit::Raw && blockinfo.values().any(|a| !a.is_empty()) {
        visit = Visit::Enter;
    }
    if visit == Visit::Raw {
        // Both ends are 32-bit aligned: the body is whole bytes.
        visitor.raw_block(path, block_id, width, &cur.data[body_start / 8..body_end / 8])?;
        cur.bit = body_end;
        return Ok(());
    }
    if visit == Visit::Skip {
        cur.bit = body_end;
        return Ok(());
    }
    let want_records = visit == Visit::Enter;
    path.push(block_id);
    // Abbreviation ids from 4 on: first BLOCKINFO's for this block id, then the block's own.
    let inherited = blockinfo.get(&block_id).cloned().unwrap_or_default();
    let mut own: Vec<Abbrev> = Vec::new();
    // Inside BLOCKINFO, the block whose abbreviations are being defined.
    let mut info_target: Option<u32> = None;

    loop {
        let id = cur.read(width)?;
        match id {
            END_BLOCK => {
                cur.align32();
                ensure!(cur.bit == body_end, "block {block_id} length mismatch");
                visitor.end_block(path)?;
                path.pop();
                return Ok(());
            }
            ENTER_SUBBLOCK => block(cur, blockinfo, path, rec, visitor)?,
            DEFINE_ABBREV => {
                let abbrev = read_abbrev(cur)?;
                if block_id == BLOCKINFO_BLOCK_ID {
                    let target = info_target.ok_or_else(|| anyhow::anyhow!("DEFINE_ABBREV before SETBID"))?;
                    Rc::make_mut(blockinfo.entry(target).or_default()).push(abbrev);
                } else {
                    own.push(abbrev);
                }
            }
            _ => {
                // The operands' layout: an abbreviation, or None for UNABBREV_RECORD.
                let layout = if id == UNABBREV_RECORD {
                    None
                } else {
                    let i = (id - 4) as usize;
                    let found = if i < inherited.len() { inherited.get(i) } else { own.get(i - inherited.len()) };
                    Some(found.ok_or_else(|| anyhow::anyhow!("undefined abbreviation {id} in block {block_id}"))?)
                };
                let (code, rest) = match layout {
                    None => (cur.read_vbr(6)?, None),
                    Some(abbrev) => match abbrev.split_first() {
                        Some((Op::Scalar(s), rest)) => (read_scalar(cur, *s)?, Some(rest)),
                        _ => bail!("abbreviation without a scalar record code in block {block_id}"),
                    },
                };
                let code = code as u32;
                if block_id == BLOCKINFO_BLOCK_ID || (want_records && visitor.wants_record(path, code)) {
                    read_operands(cur, rest, rec)?;
                    rec.code = code;
                    if block_id != BLOCKINFO_BLOCK_ID {
                        visitor.record(path, rec)?;
                    } else if code == BLOCKINFO_CODE_SETBID {
                        info_target = rec.ops.first().map(|&v| v as u32);
                    }
                } else {
                    skip_operands(cur, rest)?;
                }
            }
        }
        ensure!(cur.bit <= body_end, "block {block_id} overruns its length");
    }
}

fn read_abbrev(cur: &mut Cursor) -> Result<Abbrev> {
    let n = cur.read_vbr(5)? as usize;
    ensure!(n <= cur.data.len() * 8, "abbreviation too long");
    let mut out: Abbrev = Vec::with_capacity(n.min(16));
    let mut i = 0;
    while i < n {
        match read_abbrev_op(cur)? {
            // An Array takes the operand after it as its element type, and ends the abbreviation.
            AbbrevOp::Array => {
                ensure!(i + 2 == n, "array must be the last abbreviation operand but its element type");
                match read_abbrev_op(cur)? {
                    AbbrevOp::Scalar(elt) => out.push(Op::Array(elt)),
                    _ => bail!("aggregate used as array element"),
                }
                i += 1;
            }
            AbbrevOp::Scalar(s) => out.push(Op::Scalar(s)),
            AbbrevOp::Blob => out.push(Op::Blob),
        }
        i += 1;
    }
    Ok(out)
}

enum AbbrevOp {
    Scalar(Scalar),
    Array,
    Blob,
}

fn read_abbrev_op(cur: &mut Cursor) -> Result<AbbrevOp> {
    if cur.read(1)? == 1 {
        return Ok(AbbrevOp::Scalar(Scalar::Literal(cur.read_vbr(8)?)));
    }
    let encoding = cur.read(3)?;
    Ok(match encoding {
        1 | 2 => {
            let w = cur.read_vbr(5)?;
            ensure!(w <= 64, "abbreviation width {w} too large");
            // LLVM reads a zero-width Fixed or VBR operand as the literal 0.
            AbbrevOp::Scalar(match (encoding, w) {
                (_, 0) => Scalar::Literal(0),
                (1, w) => Scalar::Fixed(w as u8),
                (_, w) => {
                    ensure!((2..=32).contains(&w), "bad VBR width {w}");
                    Scalar::Vbr(w as u8)
                }
            })
        }
        3 => AbbrevOp::Array,
        4 => AbbrevOp::Scalar(Scalar::Char6),
        5 => AbbrevOp::Blob,
        e => bail!("unknown abbreviation encoding {e}"),
    })
}

fn read_scalar(cur: &mut Cursor, op: Scalar) -> Result<u64> {
    Ok(match op {
        Scalar::Literal(v) => v,
        Scalar::Fixed(w) => cur.read(w)?,
        Scalar::Vbr(w) => cur.read_vbr(w)?,
        Scalar::Char6 => {
            let v = cur.read(6)? as u8;
            (match v {
                0..=25 => b'a' + v,
                26..=51 => b'A' + v - 26,
                52..=61 => b'0' + v - 52,
                62 => b'.',
                _ => b'_',
            }) as u64
        }
    })
}

/// Steps over a blob operand, returning its bytes.
fn read_blob<'a>(cur: &mut Cursor<'a>) -> Result<&'a [u8]> {
    let n = cur.read_vbr(6)? as usize;
    cur.align32();
    let start = cur.bit / 8;
    cur.skip_bytes(n)?;
    cur.align32();
    Ok(&cur.data[start..start + n])
}

/// Decodes a record's operands (all but its code) into `rec`: `layout` is
/// its abbreviation's operands after the code, or None for an unabbreviated
/// record (a VBR6 count, then that many VBR6 values).
fn read_operands<'a>(cur: &mut Cursor<'a>, layout: Option<&[Op]>, rec: &mut Record<'a>) -> Result<()> {
    rec.ops.clear();
    rec.blob = None;
    let Some(layout) = layout else {
        let n = cur.read_vbr(6)? as usize;
        ensure!(n <= cur.data.len() * 8, "record too long");
        for _ in 0..n {
            rec.ops.push(cur.read_vbr(6)?);
        }
        return Ok(());
    };
    for op in layout {
        match *op {
            Op::Array(elt) => {
                let n = cur.read_vbr(6)? as usize;
                ensure!(n <= cur.data.len() * 8, "array too long");
                // Bounded: a corrupt count must not reserve gigabytes up front.
                rec.ops.reserve(n.min(1 << 12));
                for _ in 0..n {
                    rec.ops.push(read_scalar(cur, elt)?);
                }
            }
            Op::Blob => rec.blob = Some(read_blob(cur)?),
            Op::Scalar(s) => rec.ops.push(read_scalar(cur, s)?),
        }
    }
    Ok(())
}

/// Steps over a record's operands without decoding them: the same bits as
/// [`read_operands`] consumes, fixed-width arrays and blobs in one step.
fn skip_operands(cur: &mut Cursor, layout: Option<&[Op]>) -> Result<()> {
    let Some(layout) = layout else {
        let n = cur.read_vbr(6)? as usize;
        ensure!(n <= cur.data.len() * 8, "record too long");
        return cur.skip_vbrs(6, n);
    };
    for op in layout {
        match *op {
            Op::Array(elt) => {
                let n = cur.read_vbr(6)? as usize;
                ensure!(n <= cur.data.len() * 8, "array too long");
                match elt {
                    Scalar::Literal(_) => {}
                    Scalar::Fixed(w) => cur.skip_bits(n * w as usize)?,
                    Scalar::Char6 => cur.skip_bits(n * 6)?,
                    Scalar::Vbr(w) => cur.skip_vbrs(w, n)?,
                }
            }
            Op::Blob => {
                read_blob(cur)?;
            }
            Op::Scalar(Scalar::Literal(_)) => {}
            Op::Scalar(Scalar::Fixed(w)) => cur.skip_bits(w as usize)?,
            Op::Scalar(Scalar::Char6) => cur.skip_bits(6)?,
            Op::Scalar(Scalar::Vbr(w)) => {
                cur.read_vbr(w)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbr_decodes_multi_chunk_values() {
        // 6-bit VBR of 100: chunks 0b1_00100 (36 | 32) then 0b0_00011 (3): 4 + 3*32 = 100.
        let bits: u64 = 0b00011_100100;
        let data = bits.to_le_bytes();
        let mut c = Cursor { data: &data, bit: 0 };
        assert_eq!(c.read_vbr(6).unwrap(), 100);
    }

    /// Appends `value` as a VBR of `width` to a little-endian bit buffer.
    fn put_vbr(bits: &mut Vec<bool>, mut value: u64, width: u32) {
        let payload = width - 1;
        loop {
            let more = value >> payload != 0;
            for i in 0..payload {
                bits.push(value >> i & 1 == 1);
            }
            bits.push(more);
            value >>= payload;
            if !more {
                return;
            }
        }
    }

    #[test]
    fn skipping_vbrs_lands_where_reading_them_does() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for width in [2u32, 3, 4, 5, 6, 7, 8, 11, 16, 32] {
            for trial in 0..40 {
                let mut bits = Vec::new();
                // A few junk bits first, so values start at every sub-byte offset.
                for i in 0..(trial % 9) {
                    bits.push(i % 2 == 0);
                }
                let lead = bits.len();
                let count = 1 + trial * 3;
                for _ in 0..count {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    // Mostly small values, some long ones.
                    let v = if x >> 60 == 0 { x >> 3 } else { (x >> 40) & 0xff };
                    put_vbr(&mut bits, v, width);
                }
                bits.extend([true; 5]);
                let mut data = vec![0u8; bits.len().div_ceil(8)];
                for (i, &b) in bits.iter().enumerate() {
                    data[i / 8] |= (b as u8) << (i % 8);
                }
                for n in [0, 1, count / 2, count] {
                    let mut read = Cursor { data: &data, bit: lead };
                    for _ in 0..n {
                        read.read_vbr(width as u8).unwrap();
                    }
                    let mut skip = Cursor { data: &data, bit: lead };
                    skip.skip_vbrs(width as u8, n).unwrap();
                    assert_eq!(skip.bit, read.bit, "width {width}, trial {trial}, {n} values");
                }
            }
        }
    }

    #[test]
    fn fast_and_slow_paths_agree() {
        let data: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
        for width in [1u8, 3, 6, 13, 32, 56, 57, 64] {
            for start in [0usize, 1, 7, 9, 100, 300] {
                let mut fast = Cursor { data: &data, bit: start };
                // The slow path, forced by reading from a copy cut to exactly the needed bytes.
                let need = (start + width as usize).div_ceil(8);
                let mut slow = Cursor { data: &data[..need], bit: start };
                if start + width as usize <= data.len() * 8 {
                    assert_eq!(fast.read(width).unwrap(), slow.read(width).unwrap(), "width {width} at {start}");
                }
            }
        }
    }

    #[test]
    fn rejects_non_bitcode() {
        assert!(stream(b"\x7fELF....").is_err());
        assert!(!is_bitcode(b"\x7fELF"));
    }
}

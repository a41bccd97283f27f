//! zstd compression of stored outputs, with zstd's memory taken from the
//! process's own allocator.
//!
//! Why not the zstd crate's contexts: they allocate through the C library's
//! `malloc`, which maps a fresh workspace (~250 KiB for level 1) for each
//! compression and unmaps it afterwards. On a miss that unmap comes after the
//! compiler ran, and the compiler's `vfork` child started on the other CPU
//! sharing our address space, so the kernel must interrupt that CPU to flush
//! its TLB: an `munmap` then costs ~20 µs instead of ~3 µs on the benchmark
//! VM (`benches/probes/munmap_after_spawn.c`: map, touch, spawn, unmap). zstd's
//! `customMem` hands the workspace to Rust's global allocator instead — the
//! arena in the binary ([`crate::arena`]), which never unmaps.

use anyhow::{bail, ensure, Result};
use std::alloc::Layout;
use std::ffi::c_void;
use zstd_sys as z;

/// The zstd level used when `compression = zstd` names none, and by default
/// (docs/benchmarks.md: level 1 keeps 37 % of the bytes, as level 3 does, at
/// no measurable cost per hit; higher levels save a few percent more).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Room in front of each block for its size (`free` is not told it), and
/// the alignment zstd expects of `malloc`.
const HEADER: usize = 16;

unsafe extern "C" fn alloc(_opaque: *mut c_void, size: usize) -> *mut c_void {
    let Some(layout) = size.checked_add(HEADER).and_then(|n| Layout::from_size_align(n, HEADER).ok()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a non-zero layout; the block is HEADER bytes longer than asked
    // and starts with its size, read back by `free`.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return std::ptr::null_mut();
        }
        (p as *mut usize).write(size);
        p.add(HEADER) as *mut c_void
    }
}

unsafe extern "C" fn free(_opaque: *mut c_void, p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` came from `alloc` above, HEADER bytes into a block whose
    // first word is the size it was asked for.
    unsafe {
        let base = (p as *mut u8).sub(HEADER);
        let size = (base as *const usize).read();
        std::alloc::dealloc(base, Layout::from_size_align_unchecked(size + HEADER, HEADER));
    }
}

fn custom_mem() -> z::ZSTD_customMem {
    z::ZSTD_customMem { customAlloc: Some(alloc), customFree: Some(free), opaque: std::ptr::null_mut() }
}

/// zstd's return convention: a size, or an error code.
fn check(code: usize, what: &str) -> Result<usize> {
    // SAFETY: pure functions of an integer.
    unsafe {
        if z::ZSTD_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(z::ZSTD_getErrorName(code));
            bail!("{what}: {}", name.to_string_lossy());
        }
    }
    Ok(code)
}

struct CCtx(*mut z::ZSTD_CCtx);
impl Drop for CCtx {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx_advanced, freed once.
        unsafe { z::ZSTD_freeCCtx(self.0) };
    }
}

struct DCtx(*mut z::ZSTD_DCtx);
impl Drop for DCtx {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createDCtx_advanced, freed once.
        unsafe { z::ZSTD_freeDCtx(self.0) };
    }
}

/// One zstd frame of `data` at `level` (content size recorded), with the
/// match finder's hash table sized to `2^hash_log` entries when given.
pub fn compress(data: &[u8], level: i32, hash_log: Option<u32>) -> Result<Vec<u8>> {
    // SAFETY: the context is checked non-null and freed by its guard; every
    // pointer passed with a length is a live buffer of at least that length.
    unsafe {
        let cctx = CCtx(z::ZSTD_createCCtx_advanced(custom_mem()));
        ensure!(!cctx.0.is_null(), "creating a zstd context");
        let set = |p, v| check(z::ZSTD_CCtx_setParameter(cctx.0, p, v), "setting a zstd parameter");
        set(z::ZSTD_cParameter::ZSTD_c_compressionLevel, level)?;
        if let Some(h) = hash_log {
            set(z::ZSTD_cParameter::ZSTD_c_hashLog, h as i32)?;
        }
        let cap = z::ZSTD_compressBound(data.len());
        let mut out: Vec<u8> = Vec::with_capacity(cap);
        let n = check(
            z::ZSTD_compress2(cctx.0, out.as_mut_ptr() as *mut c_void, cap, data.as_ptr() as *const c_void, data.len()),
            "compressing",
        )?;
        out.set_len(n);
        Ok(out)
    }
}

thread_local! {
    /// One decompression context per thread, reused: a distributor decodes
    /// hundreds of objects in one link, and a context is a ~100 KiB
    /// workspace to set up each time. A context holds no state between frames.
    static DCTX: std::cell::RefCell<Option<DCtx>> = const { std::cell::RefCell::new(None) };
}

/// Decodes a zstd frame whose content is at most `max` bytes (more is an
/// error, not a larger allocation). The caller checks the exact size.
pub fn decompress(frame: &[u8], max: usize) -> Result<Vec<u8>> {
    DCTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            // SAFETY: as in `compress`.
            let d = DCtx(unsafe { z::ZSTD_createDCtx_advanced(custom_mem()) });
            ensure!(!d.0.is_null(), "creating a zstd context");
            *slot = Some(d);
        }
        decompress_with(slot.as_ref().unwrap(), frame, max)
    })
}

fn decompress_with(dctx: &DCtx, frame: &[u8], max: usize) -> Result<Vec<u8>> {
    // SAFETY: as in `compress`.
    unsafe {
        let mut out: Vec<u8> = Vec::with_capacity(max);
        let n = check(
            z::ZSTD_decompressDCtx(
                dctx.0,
                out.as_mut_ptr() as *mut c_void,
                max,
                frame.as_ptr() as *const c_void,
                frame.len(),
            ),
            "decompressing",
        )?;
        out.set_len(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_frames_larger_than_allowed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 ^ (i / 997) as u8).collect();
        for hash_log in [None, Some(10), Some(14)] {
            let frame = compress(&data, 1, hash_log).unwrap();
            assert!(frame.len() < data.len() / 2);
            assert_eq!(decompress(&frame, data.len()).unwrap(), data);
            assert!(decompress(&frame, data.len() - 1).is_err(), "one byte short of the content");
        }
        // The crate's decoder reads our frames and ours reads its frames.
        let frame = compress(&data, 3, None).unwrap();
        assert_eq!(zstd::bulk::decompress(&frame, data.len()).unwrap(), data);
        let theirs = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(decompress(&theirs, data.len()).unwrap(), data);
        assert!(decompress(b"not a zstd frame", 100).is_err());
        assert_eq!(decompress(&compress(b"", 1, None).unwrap(), 0).unwrap(), b"");
    }
}

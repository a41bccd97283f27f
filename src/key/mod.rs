//! The cache key: blake3 over tagged fields covering everything a backend
//! compile reads. See docs/key.md for the list and the reasons.
//!
//! Every field is written as `tag length value`, so two fields can never run
//! together into the same bytes. The same fields are kept as text so that a
//! miss can be explained (`ltocache explain`) by comparing two field lists.

//!
//! The submodules are what the key reads: the command line ([`args`]), what
//! the clang driver adds to it ([`driver`]), the compiler's identity
//! ([`compiler`]), the shard and the bitcode it names ([`shard`],
//! [`bitcode`]), and file digests ([`digest`]) remembered between processes
//! ([`memo`]).

pub mod args;
pub mod bitcode;
pub mod compiler;
pub mod digest;
pub mod driver;
pub mod memo;
pub mod shard;

use crate::key::args::{profile_path, BackendInvocation, NotCacheable};
use crate::key::digest::FileHasher;
use crate::util::hex;
use shard::AsmRef;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Any change to what goes into the key, or how, must bump this: old entries
/// then simply stop matching instead of being served under new rules.
pub const KEY_VERSION: u32 = 3;

/// Environment variables that change what the clang driver does and are not
/// refused ([`crate::key::driver::REFUSED_ENV`]): `CLANG_NO_DEFAULT_CONFIG` also
/// decides the configuration files (whose contents are hashed); Darwin's
/// `RC_DEBUG_OPTIONS` records the command line in debug info.
const HASHED_ENV: &[&str] = &["CLANG_NO_DEFAULT_CONFIG", "RC_DEBUG_OPTIONS"];

/// Flags that load a shared library into the compiler.
const PLUGIN_FLAGS: &[&str] = &["-fplugin=", "-fpass-plugin=", "-Xclang -load"];

/// The finished key and its fields as (name, value) text.
#[derive(Clone, Debug)]
pub struct Key {
    pub digest: [u8; 32],
    pub fields: Vec<(String, String)>,
    /// Strings that can differ between two commands with this key because
    /// the key covers their contents, not their names: the input, shard and
    /// output paths, every module path of the shard, and `base_dir` (what
    /// every argument it rewrote contains). Stderr that names one of them is
    /// stored under [`path_keyed`] (see [`stderr_names_a_path`]).
    pub unkeyed_paths: Vec<String>,
}

/// The second key, for an entry whose stderr names unkeyed paths: the key
/// and those paths, so it is found only by a command with the same ones.
pub fn path_keyed(key: &Key) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ltocache-path-keyed-v1\0");
    h.update(&key.digest);
    for p in &key.unkeyed_paths {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// True when `stderr` names a path the key does not cover (or the working
/// directory): replaying it elsewhere would name another command's files.
pub fn stderr_names_a_path(stderr: &[u8], unkeyed: &[String]) -> bool {
    !stderr.is_empty()
        && unkeyed.iter().filter(|p| !p.is_empty()).any(|p| stderr.windows(p.len()).any(|w| w == p.as_bytes()))
}

pub struct KeyBuilder {
    hasher: blake3::Hasher,
    fields: Vec<(String, String)>,
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    pub fn new() -> Self {
        let mut b = KeyBuilder { hasher: blake3::Hasher::new(), fields: Vec::new() };
        b.field("version", KEY_VERSION.to_string().as_bytes());
        b
    }

    /// Adds one tagged field. `value` is hashed as-is; its text form is kept
    /// for explanations (long values are abbreviated by their digest).
    pub fn field(&mut self, tag: &str, value: &[u8]) {
        self.hasher.update(&(tag.len() as u32).to_le_bytes());
        self.hasher.update(tag.as_bytes());
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        let text = match std::str::from_utf8(value) {
            Ok(s) if s.len() <= 200 && !s.contains('\n') => s.to_string(),
            _ => format!("blake3:{}", hex(blake3::hash(value).as_bytes())),
        };
        self.fields.push((tag.to_string(), text));
    }

    pub fn digest_field(&mut self, tag: &str, digest: &[u8; 32]) {
        self.hasher.update(&(tag.len() as u32).to_le_bytes());
        self.hasher.update(tag.as_bytes());
        self.hasher.update(&32u64.to_le_bytes());
        self.hasher.update(digest);
        self.fields.push((tag.to_string(), hex(digest)));
    }

    /// A digest field whose text form also names what it came from (a module
    /// path): the label helps `explain` and is not hashed, so keys stay
    /// independent of where the build directory is.
    pub fn labelled_digest_field(&mut self, tag: &str, digest: &[u8; 32], label: &str) {
        self.digest_field(tag, digest);
        if let Some(last) = self.fields.last_mut() {
            last.1 = format!("{} {label}", last.1);
        }
    }

    pub fn finish(self) -> Key {
        Key { digest: *self.hasher.finalize().as_bytes(), fields: self.fields, unkeyed_paths: Vec::new() }
    }
}

/// A per-module fingerprint: today the digest of the module's whole bitcode.
/// Precise invalidation will replace it with a digest over only the
/// definitions the importer pulls in; the key's shape does not change.
/// The module's assembly references are appended to `asm` (one read of the
/// file gives both).
pub fn module_fingerprint(hasher: &mut FileHasher, path: &Path, asm: &mut Vec<AsmRef>) -> Result<[u8; 32], KeyError> {
    let h = hasher.hash(path, true).map_err(|e| unreadable(path, e))?;
    asm.extend(h.asm.unwrap_or_default());
    Ok(h.digest)
}

/// Why a key could not be computed.
#[derive(Debug)]
pub enum KeyError {
    /// The command cannot be cached (run the compiler, count the reason).
    NotCacheable(NotCacheable),
    /// Something went wrong inside ltocache (run the compiler, count an error).
    Internal(anyhow::Error),
}

fn unreadable(path: &Path, e: anyhow::Error) -> KeyError {
    KeyError::NotCacheable(NotCacheable::Unreadable(format!("{}: {e:#}", path.display())))
}

/// Refuses, from its `stat`, a path that is not a regular file, before
/// anything opens it: opening and closing a FIFO lets its writer run into a
/// closed pipe, and the compiler then waits for data that never comes.
fn regular_file(path: &Path) -> Result<(), KeyError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => {
            Err(KeyError::NotCacheable(NotCacheable::Unreadable(format!("{} is not a regular file", path.display()))))
        }
        Err(e) => Err(KeyError::NotCacheable(NotCacheable::Unreadable(format!("{}: {e}", path.display())))),
    }
}

/// Computes the key of a backend invocation.
pub fn compute(
    inv: &BackendInvocation,
    compiler_identity: &[u8; 32],
    hasher: &mut FileHasher,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Key, KeyError> {
    let mut k = KeyBuilder::new();

    // The compiler: its identity, and the name it was called by (the driver
    // picks its mode — clang, clang++, clang-cl — from argv[0]).
    k.digest_field("compiler", compiler_identity);
    let name = Path::new(&inv.compiler).file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    k.field("compiler-name", &name);
    for var in HASHED_ENV {
        if let Some(v) = getenv(var) {
            k.field(&format!("env:{var}"), v.as_bytes());
        }
    }

    // Every argument, with input/shard/output paths replaced by role markers.
    k.field("argc", inv.hashed_args.len().to_string().as_bytes());
    for (i, a) in inv.hashed_args.iter().enumerate() {
        k.field(&format!("arg[{i}]"), a.as_bytes());
    }

    // The shard: its canonical digest (everything but module paths) and, in
    // table order, each module's role and fingerprint.
    let shard = match hasher.take_shard(&inv.shard) {
        // Read by the caller through `read_tracked`, whose `fstat` admits
        // only a regular file: no second `stat` (one per distributor job).
        Some(parsed) => parsed,
        None => {
            regular_file(&inv.shard)?;
            let shard_bytes = hasher.read_tracked(&inv.shard).map_err(|e| unreadable(&inv.shard, e))?;
            shard::read_shard(&shard_bytes).map_err(|_| KeyError::NotCacheable(NotCacheable::BadShard))?
        }
    };
    k.digest_field("shard", &shard.canonical_digest);

    let input_bytes = inv.input.as_os_str().as_bytes();
    let mut unkeyed: Vec<String> =
        [&inv.input, &inv.shard, &inv.output].iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(cwd) = crate::util::cwd() {
        unkeyed.push(cwd.to_string_lossy().into_owned());
    }
    unkeyed.extend(shard.modules.iter().map(|m| String::from_utf8_lossy(&m.path).into_owned()));
    // Modules whose assembly must be scanned: the input and every import
    // (an imported function's inline asm is compiled into this object).
    let mut asm_refs: Vec<AsmRef> = Vec::new();
    let input_fp = module_fingerprint(hasher, &inv.input, &mut asm_refs)?;
    k.digest_field("input", &input_fp);

    k.field("modules", shard.modules.len().to_string().as_bytes());
    for m in &shard.modules {
        if m.path == input_bytes {
            // The backend matches its input to the index by this exact string.
            k.field(&format!("module[{}]", m.id), b"input");
            continue;
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&m.path));
        let fp = module_fingerprint(hasher, &path, &mut asm_refs)?;
        k.labelled_digest_field(&format!("module[{}]", m.id), &fp, &path.to_string_lossy());
    }

    // Files named by flags.
    for f in &inv.flag_files {
        let path = profile_path(f);
        let h = hasher.hash(&path, false).map_err(|e| unreadable(&path, e))?;
        k.digest_field(&format!("file:{}", f.flag), &h.digest);
        // A plugin's own shared libraries run in the compiler too (one `ldd`
        // per compile that names a plugin: plugins are rare).
        if PLUGIN_FLAGS.contains(&f.flag.as_str()) {
            for (i, lib) in crate::key::compiler::loaded_libraries(&path).iter().enumerate() {
                let h = hasher.hash(lib, false).map_err(|e| unreadable(lib, e))?;
                k.labelled_digest_field(&format!("file:{}#lib{i}", f.flag), &h.digest, &lib.to_string_lossy());
            }
        }
    }
    // Configuration files the driver loads, inclusions included: their
    // flags are already among the arguments; their bytes are hashed too.
    for (i, path) in inv.config_files.iter().enumerate() {
        let h = hasher.hash(path, false).map_err(|e| unreadable(path, e))?;
        k.labelled_digest_field(&format!("config[{i}]"), &h.digest, &path.to_string_lossy());
    }
    // Response and configuration files read before the key: checked again
    // after the compile like every other input.
    hasher.seen.extend(inv.read_files.iter().cloned());

    // Files pulled in by `.incbin`/`.include`. The assembler tries the name as
    // given (relative to the current directory), then each search directory;
    // hashing every candidate's presence and contents makes the key change
    // when which file wins would change.
    // `.include`d assembly is scanned in turn (to a fixed depth): a nested
    // `.incbin` must be covered too.
    let mut queue: std::collections::VecDeque<(AsmRef, usize)> = asm_refs.into_iter().map(|r| (r, 0)).collect();
    let mut done: Vec<AsmRef> = Vec::new();
    while let Some((r, depth)) = queue.pop_front() {
        if done.contains(&r) {
            continue;
        }
        done.push(r.clone());
        let (name, is_include) = match &r {
            AsmRef::Unresolvable(text) => {
                return Err(KeyError::NotCacheable(NotCacheable::UnresolvedAsmInclude(text.clone())));
            }
            AsmRef::File(name) => (name, false),
            AsmRef::Include(name) => (name, true),
        };
        let rel = PathBuf::from(std::ffi::OsStr::from_bytes(name));
        let mut candidates = vec![rel.clone()];
        if rel.is_relative() {
            candidates.extend(inv.asm_search_dirs.iter().map(|d| d.join(&rel)));
        }
        let mut found = false;
        for (i, c) in candidates.iter().enumerate() {
            let tag = format!("asm-include:{}#{i}", String::from_utf8_lossy(name));
            if c.exists() {
                if is_include && !found {
                    if depth >= 8 {
                        return Err(KeyError::NotCacheable(NotCacheable::UnresolvedAsmInclude(format!(
                            "{}: .include nests too deeply",
                            c.display()
                        ))));
                    }
                    // The assembly that is scanned must be the bytes that are
                    // hashed: one read, tracked like any input.
                    regular_file(c)?;
                    let text = hasher.read_tracked(c).map_err(|e| unreadable(c, e))?;
                    k.digest_field(&tag, blake3::hash(&text).as_bytes());
                    let mut nested = Vec::new();
                    shard::scan_asm(&text, &mut nested);
                    queue.extend(nested.into_iter().map(|n| (n, depth + 1)));
                } else {
                    let h = hasher.hash(c, false).map_err(|e| unreadable(c, e))?;
                    k.digest_field(&tag, &h.digest);
                }
                found = true;
            } else {
                k.field(&tag, b"absent");
            }
        }
        if !found {
            return Err(KeyError::NotCacheable(NotCacheable::UnresolvedAsmInclude(
                String::from_utf8_lossy(name).into_owned(),
            )));
        }
    }
    let mut key = k.finish();
    key.unkeyed_paths = unkeyed;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        // "ab"+"c" must not collide with "a"+"bc".
        let mut a = KeyBuilder::new();
        a.field("x", b"ab");
        a.field("y", b"c");
        let mut b = KeyBuilder::new();
        b.field("x", b"a");
        b.field("y", b"bc");
        assert_ne!(a.finish().digest, b.finish().digest);
    }
}

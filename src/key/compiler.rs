//! The compiler's identity: what makes two clang installations produce
//! different objects from the same inputs.
//!
//! It covers the resolved binary's bytes, the LLVM and clang shared libraries
//! it loads (Debian's clang is a thin driver over libclang-cpp and libLLVM),
//! any clang configuration files next to the binary, and `--version` output
//! (Debian's includes the package revision). Computing it reads ~150 MB and
//! spawns two processes, so it is memoised per resolved path together with
//! the stamps of everything it covered; the steady state costs a few stats.

use crate::util::FileStamp;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds the compiler the way the shell would, skipping any PATH entry that
/// is ltocache itself (a `clang` symlink to ltocache must not recurse).
pub fn resolve(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Compare by (device, inode): one stat instead of resolving every symlink,
    // and only once a candidate turns up.
    let mut me = None;
    let path = crate::util::env_os("PATH").unwrap_or_default();
    let mut tried: Vec<PathBuf> = Vec::new();
    for dir in std::env::split_paths(&path) {
        // PATH often names a directory twice; once is enough.
        if tried.contains(&dir) {
            continue;
        }
        let candidate = dir.join(name);
        tried.push(dir);
        let Ok(meta) = std::fs::metadata(&candidate) else { continue };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let me = me.get_or_insert_with(|| std::fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino())));
        if *me == Some((meta.dev(), meta.ino())) {
            continue;
        }
        return Ok(candidate);
    }
    bail!("compiler {name:?} not found in PATH")
}

/// How the compiler's identity is decided (ccache's `compiler_check`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompilerCheck {
    /// The binary, every shared library it loads, its default configuration
    /// files and `--version` (the default). A script is refused: what it
    /// runs is invisible.
    Content,
    /// The binary's size and modification time only (you promise that a new
    /// compiler always comes with a new mtime and that its libraries never
    /// change alone).
    Mtime,
    /// A fixed value you state: change it when the compiler changes.
    String(String),
    /// The standard output of a shell command, run once per identity memo
    /// (the memo is dropped when the binary's stamp changes).
    Command(String),
}

impl CompilerCheck {
    pub fn parse(s: &str) -> Result<CompilerCheck> {
        let t = s.trim();
        Ok(match t {
            "content" | "" => CompilerCheck::Content,
            "mtime" => CompilerCheck::Mtime,
            _ => match t.split_once(':') {
                Some(("string", v)) => CompilerCheck::String(v.to_string()),
                Some(("command", c)) if !c.trim().is_empty() => CompilerCheck::Command(c.to_string()),
                _ => bail!("expected content, mtime, string:VALUE or command:CMD"),
            },
        })
    }
}

impl fmt::Display for CompilerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompilerCheck::Content => f.write_str("content"),
            CompilerCheck::Mtime => f.write_str("mtime"),
            CompilerCheck::String(v) => write!(f, "string:{v}"),
            CompilerCheck::Command(c) => write!(f, "command:{c}"),
        }
    }
}

/// The compiler is a script (`#!`): under `compiler_check = content` it is
/// refused, since the compiler it runs is not what was hashed.
#[derive(Debug)]
pub struct ScriptCompiler(pub PathBuf);

impl fmt::Display for ScriptCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is a script; set compiler_check to identify what it runs", self.0.display())
    }
}

impl std::error::Error for ScriptCompiler {}

/// Environment variables that decide which shared libraries the compiler
/// loads: part of the identity, and of the memo's name, so the memo cannot
/// survive a change of them.
pub const LOADER_ENV: &[&str] = &["LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT"];

fn loader_env() -> Vec<u8> {
    let mut out = Vec::new();
    for v in LOADER_ENV {
        out.extend_from_slice(v.as_bytes());
        match crate::util::env_os(v) {
            Some(val) => {
                out.push(b'=');
                out.extend_from_slice(&(val.len() as u64).to_le_bytes());
                out.extend_from_slice(val.as_bytes());
            }
            None => out.push(b'!'),
        }
    }
    out
}

/// The files whose stamps decide whether the memo still holds.
///
/// The compiler's own libraries (LLVM's, clang's, and whatever its
/// toolchain directory bundles, e.g. libc++ in `$ORIGIN/../lib`) by their own
/// stamps; the system's (libstdc++, libc, ...) by the stamps of their
/// directories: a package manager replaces a library by renaming a new file
/// into place, which changes the directory's stamp, and one `stat` per
/// directory instead of one per library keeps the hit path at its budget
/// (Debian's clang-19 loads 16 system libraries from one directory).
fn tracked_files(real: &Path, libs: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = vec![real.to_path_buf()];
    let root = real.parent().and_then(Path::parent);
    for lib in libs {
        let name = lib.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let own = name.contains("LLVM")
            || name.contains("clang")
            || name.contains("lld")
            || root.is_some_and(|r| lib.starts_with(r));
        if own {
            v.push(lib.clone());
        } else if let Some(dir) = lib.parent() {
            if !v.iter().any(|x| x == dir) {
                v.push(dir.to_path_buf());
            }
        }
    }
    // The binary's directory: adding or removing a `*.cfg` there changes its mtime.
    if let Some(dir) = real.parent() {
        v.push(dir.to_path_buf());
    }
    v
}

fn encode_stamps(files: &[PathBuf]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let s = FileStamp::of_path(f).with_context(|| format!("stat {}", f.display()))?;
        let bytes = f.as_os_str().as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        for v in [s.dev, s.ino, s.size, s.mtime_ns as u64, s.ctime_ns as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

fn decode_paths(stamps: &[u8]) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut rest = stamps;
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let p = rest.get(4..4 + n)?;
        out.push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        rest = rest.get(4 + n + 40..)?;
    }
    Some(out)
}

/// The compiler's identity digest, from the memo when every covered file
/// still has the stamp it had; recomputed (and queued for the memo) otherwise.
///
/// The memo is keyed by the path as resolved from PATH, and its first tracked
/// file is that path: `stat` follows the symlink, so retargeting it (or
/// upgrading the binary behind it) changes the stamp. The steady state
/// therefore resolves no symlinks at all.
///
/// The flag is true when it was computed rather than found in the memo (the
/// caller counts that CPU time apart: it is paid once per host and compiler).
pub fn identity(compiler: &Path, memo_dir: Option<&Path>, check: &CompilerCheck) -> Result<([u8; 32], bool)> {
    // The memo is named by the path, the check and the loader's environment.
    let mut memo_name = compiler.as_os_str().as_bytes().to_vec();
    memo_name.push(0);
    memo_name.extend_from_slice(check.to_string().as_bytes());
    memo_name.push(0);
    memo_name.extend_from_slice(&loader_env());
    let memo_key = PathBuf::from(std::ffi::OsStr::from_bytes(&memo_name));
    if let Some(dir) = memo_dir {
        if let Some((stamps, id)) = crate::key::memo::lookup_compiler(dir, &memo_key) {
            if let Some(paths) = decode_paths(&stamps) {
                if encode_stamps(&paths).ok().as_deref() == Some(&stamps[..]) {
                    return Ok((id, false));
                }
            }
        }
    }
    let real = compiler.canonicalize().with_context(|| format!("resolving {}", compiler.display()))?;
    let (files, id) = match check {
        CompilerCheck::Content => {
            if is_script(&real) {
                return Err(ScriptCompiler(compiler.to_path_buf()).into());
            }
            let libs = loaded_libraries(&real);
            let cfgs = default_config_files(compiler, &real);
            let mut files = vec![compiler.to_path_buf()];
            files.extend(tracked_files(&real, &libs));
            // The invoked path's directory too (clang looks there with
            // -no-canonical-prefixes), and every config file, whose edits in place
            // change no directory's mtime.
            if let Some(dir) = compiler.parent().filter(|d| Some(*d) != real.parent()) {
                files.push(if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() });
            }
            files.extend(cfgs.iter().filter(|p| p.exists()).cloned());
            let distro: Vec<PathBuf> = DISTRO_FILES.iter().map(PathBuf::from).filter(|p| p.is_file()).collect();
            files.extend(distro.iter().cloned());
            let stamps = encode_stamps(&files)?;
            let mut id = compute_identity(&real, &libs, &cfgs)?;
            for d in &distro {
                let data = std::fs::read(d).with_context(|| format!("reading {}", d.display()))?;
                let mut h = blake3::Hasher::new();
                h.update(&id);
                h.update(d.as_os_str().as_bytes());
                h.update(&data);
                id = *h.finalize().as_bytes();
            }
            // Only memoise if nothing changed while we were reading.
            (if encode_stamps(&files)? == stamps { Some(files) } else { None }, id)
        }
        CompilerCheck::Mtime => {
            let s = FileStamp::of_path(&real)?;
            let mut h = blake3::Hasher::new();
            h.update(b"ltocache-compiler-mtime\0");
            h.update(real.as_os_str().as_bytes());
            h.update(&s.size.to_le_bytes());
            h.update(&s.mtime_ns.to_le_bytes());
            (Some(vec![compiler.to_path_buf(), real.clone()]), *h.finalize().as_bytes())
        }
        CompilerCheck::String(v) => {
            let mut h = blake3::Hasher::new();
            h.update(b"ltocache-compiler-string\0");
            h.update(v.as_bytes());
            (Some(vec![compiler.to_path_buf()]), *h.finalize().as_bytes())
        }
        CompilerCheck::Command(cmd) => {
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .env("LTOCACHE_COMPILER", compiler)
                .stdin(std::process::Stdio::null())
                .output()
                .with_context(|| format!("running compiler_check command {cmd:?}"))?;
            if !out.status.success() {
                bail!("compiler_check command {cmd:?} failed: {}", out.status);
            }
            let mut h = blake3::Hasher::new();
            h.update(b"ltocache-compiler-command\0");
            h.update(&out.stdout);
            (Some(vec![compiler.to_path_buf(), real.clone()]), *h.finalize().as_bytes())
        }
    };
    // The loader's environment changes which libraries run, whatever the check.
    let id = {
        let mut h = blake3::Hasher::new();
        h.update(&id);
        h.update(&loader_env());
        *h.finalize().as_bytes()
    };
    if let (Some(dir), Some(files)) = (memo_dir, files) {
        if let Ok(stamps) = encode_stamps(&files) {
            // Best effort: without the memo the next compile recomputes.
            let _ = crate::key::memo::store_compiler(dir, &memo_key, &stamps, &id);
        }
    }
    Ok((id, true))
}

/// Files the driver reads to detect the distribution (clang's `Distro`):
/// they change link-time and header defaults, so they join the identity
/// when present (and their stamps the memo's).
pub const DISTRO_FILES: &[&str] =
    &["/etc/os-release", "/usr/lib/os-release", "/etc/lsb-release", "/etc/debian_version"];

/// Files the compiler opens that are deliberately not in the key, each
/// with why (docs/key.md, "The strace audit"): path prefixes.
pub const COMPILERS_OWN_FILES: &[(&str, &str)] = &[
    ("/etc/ld.so.cache", "the loader's index; the libraries it leads to are hashed"),
    ("/dev/null", "no contents"),
    ("/dev/urandom", "randomness never reaches a deterministic object"),
    ("/proc/self/", "the process's own state (executable path, limits)"),
    (
        "/sys/devices/system/cpu/",
        "CPU count for thread pools; -march=native, the one use that changes code, is refused",
    ),
    ("/proc/cpuinfo", "likewise"),
    ("/usr/share/terminfo/", "the terminal's colour support, decided by the key's tty field"),
    ("/lib/terminfo/", "likewise"),
    ("/etc/terminfo/", "likewise"),
    ("/usr/lib/locale/", "locale data; diagnostics are not translated"),
];

/// Every file the identity covers for the binary at `real`: the binary, its
/// libraries, default configuration files beside it and the distribution
/// files. For the audit test and `explain`.
pub fn identity_files(invoked: &Path, real: &Path) -> Vec<PathBuf> {
    let mut v = vec![real.to_path_buf()];
    v.extend(loaded_libraries(real));
    v.extend(default_config_files(invoked, real));
    v.extend(DISTRO_FILES.iter().map(PathBuf::from).filter(|p| p.exists()));
    v
}

/// True when the file starts with `#!`.
pub fn is_script(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"#!"
}

/// Every shared library the binary loads, from `ldd` (run with our
/// environment, so `LD_LIBRARY_PATH` and `LD_PRELOAD` resolve as they will
/// for the compiler): LLVM's and clang's, the libc++/libc++abi/libunwind a
/// relocatable toolchain bundles in `$ORIGIN/../lib` (the LLVM 23 wheels),
/// and the system's (libstdc++, libc), which also decide what the compiler
/// does.
pub fn loaded_libraries(real: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(real).output() else { return Vec::new() };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            // The dynamic loader itself: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            None => l.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .filter_map(|p| Path::new(p).canonicalize().ok())
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Default configuration files clang may load: `*.cfg` beside the real binary
/// and beside the invoked path, with everything they `@include`.
fn default_config_files(invoked: &Path, real: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = real.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(d) = invoked.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dirs.iter().any(|x| x == d) {
            dirs.push(d.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        let mut cfgs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cfg")).collect())
            .unwrap_or_default();
        cfgs.sort();
        for cfg in cfgs {
            for f in crate::key::args::config_closure(&cfg) {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
    }
    out
}

fn compute_identity(real: &Path, libs: &[PathBuf], cfgs: &[PathBuf]) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update(b"ltocache-compiler-v1\0");
    let add_file = |h: &mut blake3::Hasher, tag: &str, p: &Path| -> Result<()> {
        let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        h.update(tag.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(blake3::hash(&data).as_bytes());
        Ok(())
    };
    add_file(&mut h, "binary", real)?;
    for lib in libs {
        add_file(&mut h, "library", lib)?;
    }
    // Default configuration files (`clang.cfg`, `<triple>-clang.cfg`, ...) and
    // their includes: any of them changes what the driver does.
    for cfg in cfgs {
        h.update(cfg.as_os_str().as_bytes());
        if cfg.exists() {
            add_file(&mut h, "config", cfg)?;
        } else {
            h.update(b"absent");
        }
    }
    let out = Command::new(real)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", real.display()))?;
    h.update(b"version");
    h.update(&out.stdout);
    Ok(*h.finalize().as_bytes())
}

//! Precise invalidation: a second key over the backend's post-import module,
//! tried only when the first key misses (docs/precise-invalidation.md).
//!
//! The first key hashes every imported module whole, so an edit reruns every
//! importer. The second key replaces the imported modules (and the module
//! hashes the shard carries for them) by the module the backend holds right
//! after importing — computed by the helper `ltocache-precise`, which runs
//! LLVM's own `lto::thinBackend` up to its post-import hook with the
//! configuration read from clang's own cc1 command line (`clang -###`). Every
//! other field of the first key stays: the input's own bitcode, the rest of
//! the shard (summaries, flags, module ids), arguments, compiler, files named
//! by flags, `.incbin` data.
//!
//! A hit on the second key serves the object of the entry it maps to and
//! stores that entry under the first key too. Anything not vetted refuses
//! (first key only, counted as `precise.refused.*`): cc1 options not on
//! [`CC1_VETTED`], `-mllvm` options not on [`MLLVM_VETTED`], index features
//! (type ids, CFI, MemProf, parameter accesses), skipped or empty indexes,
//! a compiler without a helper built against the libLLVM it maps (one
//! helper per LLVM, [`helper_for`] picks by the libLLVM file), any helper
//! error.
//!
//! Cost: the second key is computed only on a first-key miss of an output
//! that already exists (it was compiled before), or — for a cold compile,
//! `LTOCACHE_PRECISE_COLD=background` — after the compile in a detached
//! child at idle priority, so the cold build's jobs do not wait for it.

use crate::backend::{Ctx, Keyed};
use crate::key::args::BackendInvocation;
use crate::key::bitcode::{self, Record, Visit, Visitor};
use crate::state::stats::Batch;
use crate::store::{Lookup, Store};
use crate::util::{hex, unhex};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The helper's file name, looked for beside the `ltocache` executable.
pub const HELPER_NAME: &str = "ltocache-precise";

/// Bump when the second key's composition changes.
const PRECISE_KEY_VERSION: &str = "ltocache-precise-key-v1";

/// `-mllvm` options tested to be safe (tests/precise.rs): those the helper
/// applies before the post-import hook the way clang does, and those that
/// only act later (their value is in the first key's arguments anyway). The
/// helper holds the same list.
pub const MLLVM_VETTED: &[&str] =
    &["-use-source-filename-for-promoted-locals", "-import-instr-limit", "-inline-threshold"];

/// cc1 options (name up to `=`) reviewed against clang's IR path
/// (`CodeGenAction::ExecuteAction` → `EmitBackendOutput` →
/// `runThinLTOBackend`): none of them changes the module before the
/// post-import hook except those the request carries (`-triple`,
/// `-mrelocation-model`, `-target-cpu`, `-target-feature`, `-mcmodel=`,
/// `-O`, `-mllvm`). The rest configure the optimiser, code generation or
/// diagnostics, which act after the hook on what the key already holds (the
/// driver's arguments, the compiler). Anything else refuses: for example
/// `-fembed-bitcode=` and `-mlink-bitcode-file` change the module before
/// the backend runs, `-save-temps`, `-opt-record-file` write files.
pub const CC1_VETTED: &[&str] = &[
    "-cc1",
    "-triple",
    "-emit-obj",
    "-fthinlto-index",
    "-disable-free",
    "-clear-ast-before-backend",
    "-disable-llvm-verifier",
    "-discard-value-names",
    "-main-file-name",
    "-mrelocation-model",
    "-pic-level",
    "-pic-is-pie",
    "-mframe-pointer",
    "-fmath-errno",
    "-ffp-contract",
    "-fno-rounding-math",
    "-mconstructor-aliases",
    "-funwind-tables",
    "-target-cpu",
    "-tune-cpu",
    "-target-feature",
    "-mcmodel",
    "-debug-info-kind",
    "-dwarf-version",
    "-debugger-tuning",
    "-fdebug-compilation-dir",
    "-fcoverage-compilation-dir",
    "-ffunction-sections",
    "-fdata-sections",
    "-resource-dir",
    "-ferror-limit",
    "-fgnuc-version",
    "-fskip-odr-check-in-gmf",
    "-vectorize-loops",
    "-vectorize-slp",
    "-mllvm",
    "-faddrsig",
    "-D",
    "-o",
    "-x",
    "-O0",
    "-O1",
    "-O2",
    "-O3",
    "-Os",
    "-Oz",
    "-Wno-unused-command-line-argument",
    "-fno-signed-char",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
    "-mstack-alignment",
    "-fcf-protection",
    "-mfunction-return",
    "-mindirect-branch-cs-prefix",
    "-fno-jump-tables",
    "-fno-delete-null-pointer-checks",
    "-fwrapv",
    "-fno-strict-overflow",
    "-relaxed-aliasing",
    "-fno-builtin",
    "-ffreestanding",
    "-mskip-rax-setup",
    "-mregparm",
    "-fno-PIE",
    "-fno-common",
    "-fno-dwarf-directory-asm",
    "-mdisable-tail-calls",
    "-fpatchable-function-entry",
    "-fpatchable-function-entry-offset",
    "-mfentry",
    "-mrecord-mcount",
    "-mnop-mcount",
    "-mstack-protector-guard",
    "-mstack-protector-guard-reg",
    "-mstack-protector-guard-symbol",
    "-stack-protector",
    "-stack-protector-buffer-size",
    "-fzero-call-used-regs",
    "-fsplit-stack",
    "-mtune",
    "-fdebug-prefix-map",
    "-ffile-prefix-map",
    "-fmacro-prefix-map",
    "-fcoverage-prefix-map",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fstrict-flex-arrays",
    "-fno-threadsafe-statics",
    "-mrelax-all",
    "-fno-verbose-asm",
    "-fexperimental-assignment-tracking",
    "-funique-section-names",
    "-fno-unique-section-names",
    "-std",
    "-w",
    "-Werror",
    "-Wall",
    "-Wextra",
    "-fcolor-diagnostics",
    "-fdiagnostics-color",
    "-fmessage-length",
    // Seen on the kernel's backends (tinyconfig, x86-64): code generation,
    // target and front-end options with no effect before the hook.
    "-disable-red-zone",
    "-falign-loops",
    "-fno-signed-wchar",
    "-fwchar-type",
    "-fsplit-lto-unit",
    "-ftrivial-auto-var-init",
    "-fvisibility",
    "-fwarn-stack-size",
    "-nobuiltininc",
    "-nostdsysteminc",
    // What the driver adds for -fPIC (zstd's and libgit2's backends): a
    // language option read by the front end's code generation
    // (CodeGenModule's dso_local decisions), which does not run for IR
    // input; the module before the hook is clang's (tests/precise.rs,
    // benches/realworld/precise.py compare it with -save-temps).
    "-fhalf-no-semantic-interposition",
    // clang 23 passes this on every x86-64 backend (19 defined a macro
    // instead): whether the assembler writes `.cfi_*` directives
    // (TargetMachine's MC options), code generation only.
    "-fdwarf2-cfi-asm",
];

/// Prefixes of vetted cc1 option families: warnings (diagnostics only) and
/// `-fno-builtin-<name>` (the optimiser's library info, after the hook).
const CC1_VETTED_PREFIXES: &[&str] = &["-W", "-fno-builtin-"];

/// Separate-value cc1 options among the vetted ones: their next token is a
/// value, not an input.
const CC1_SEPARATE: &[&str] = &[
    "-triple",
    "-main-file-name",
    "-mrelocation-model",
    "-pic-level",
    "-target-cpu",
    "-tune-cpu",
    "-target-feature",
    "-resource-dir",
    "-ferror-limit",
    "-mllvm",
    "-D",
    "-o",
    "-x",
    "-stack-protector",
    "-stack-protector-buffer-size",
    "-mregparm",
    "-mstack-protector-guard-reg",
    "-mstack-protector-guard",
    "-fmessage-length",
];

/// Whether `LTOCACHE_PRECISE=0` turned precise mode off.
fn switched_off() -> bool {
    crate::util::env_os("LTOCACHE_PRECISE").is_some_and(|v| v == "0")
}

/// The helpers that may serve a compiler whose libLLVM has major version
/// `major`, in the order they are tried: `LTOCACHE_PRECISE_HELPER` (a
/// `:`-separated list), else beside the executable `ltocache-precise-<major>`
/// (what scripts/build-release.sh builds, one per LLVM found) and then
/// `ltocache-precise`. Each is still checked against the compiler's libLLVM
/// ([`helper_for`]); the names only save starting the ones that cannot match.
pub fn helper_candidates(major: Option<u32>) -> Vec<PathBuf> {
    if switched_off() {
        return Vec::new();
    }
    if let Some(list) = crate::util::env_os("LTOCACHE_PRECISE_HELPER") {
        return std::env::split_paths(&list).filter(|p| p.is_file()).collect();
    }
    let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = major.map(|m| format!("{HELPER_NAME}-{m}")).into_iter().collect();
    names.push(HELPER_NAME.to_string());
    names.into_iter().map(|n| dir.join(n)).filter(|p| p.is_file()).collect()
}

/// The major version in a libLLVM file name: `libLLVM.so.23.1` (LLVM's own
/// builds, the PyPI wheels, Debian's realpath), `libLLVM-19.so`.
pub fn llvm_major(lib: &Path) -> Option<u32> {
    let name = lib.file_name()?.to_str()?;
    let rest = name.strip_prefix("libLLVM.so.").or_else(|| name.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// When the second key of a cold compile (its output did not exist) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cold {
    /// Not at all: the first edit after a cold build gains nothing.
    Skip,
    /// Before the compile, like a rebuild's.
    Sync,
    /// After the compile, in a detached child at idle priority (default).
    Background,
}

fn cold_policy() -> Cold {
    match crate::util::env("LTOCACHE_PRECISE_COLD").as_deref() {
        Some("skip") | Some("0") => Cold::Skip,
        Some("sync") | Some("1") => Cold::Sync,
        _ => Cold::Background,
    }
}

/// Why the second key was not computed (a stats counter each).
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

fn refuse<T>(code: &'static str, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { code, detail: detail.into() })
}

/// The second key of one job.
#[derive(Clone, Debug)]
pub struct Second {
    pub digest: [u8; 32],
    /// CPU time the helper spent on the request.
    pub helper_cpu_ns: i64,
    /// The helper that answered (logged: which LLVM's helper served a job).
    pub helper: PathBuf,
}

// ---------------------------------------------------------------------------
// The shard without module paths and module hashes.

use crate::key::shard::{MODULE_STRTAB_BLOCK, MST_CODE_ENTRY, MST_CODE_HASH};
const GLOBALVAL_SUMMARY_BLOCK: u32 = 20;
const FULL_LTO_GLOBALVAL_SUMMARY_BLOCK: u32 = 24;
const FS_FLAGS: u32 = 20;
/// Combined-summary records whose only readers after the post-import hook
/// are vetted: function, variable and alias summaries, names, GUIDs, the
/// version, flags and block count. Type tests, type ids, CFI, vtable
/// functions, parameter accesses and MemProf records are not.
const SUMMARY_VETTED: &[u32] = &[4, 5, 6, 8, 9, 10, 16, 20, 24];

struct NoHashVisitor {
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

// ---------------------------------------------------------------------------
// clang's cc1 command line.

/// What the helper needs from the cc1 line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cc1 {
    pub triple: String,
    pub reloc: String,
    pub cmodel: String,
    pub cpu: String,
    pub features: Vec<String>,
    pub olevel: String,
    pub mllvm: Vec<String>,
    pub index: String,
}

/// Splits one `-###` job line (`"a" "b\"c"`) into its arguments.
pub fn split_job_line(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => continue,
            '"' => {
                let mut tok = String::new();
                loop {
                    match chars.next()? {
                        '\\' => tok.push(chars.next()?),
                        '"' => break,
                        c => tok.push(c),
                    }
                }
                out.push(tok);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads the cc1 line, refusing any option not on [`CC1_VETTED`].
pub fn parse_cc1(args: &[String]) -> Result<Cc1, Refusal> {
    let mut c = Cc1::default();
    let mut inputs = 0;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if !a.starts_with('-') {
            inputs += 1;
            continue;
        }
        let name = a.split_once('=').map(|(n, _)| n).unwrap_or(a);
        let name = if a.starts_with("-D") { "-D" } else { name };
        if !CC1_VETTED.contains(&name) && !CC1_VETTED_PREFIXES.iter().any(|p| a.starts_with(p)) {
            return refuse("cc1_option", a.to_string());
        }
        let value = if CC1_SEPARATE.contains(&name) && name == a {
            let Some(v) = args.get(i) else { return refuse("cc1_option", format!("{a} without a value")) };
            i += 1;
            v.clone()
        } else {
            a.split_once('=').map(|(_, v)| v.to_string()).unwrap_or_default()
        };
        match name {
            "-triple" => c.triple = value,
            "-mrelocation-model" => c.reloc = value,
            "-mcmodel" => c.cmodel = value,
            "-target-cpu" => c.cpu = value,
            "-target-feature" => c.features.push(value),
            "-fthinlto-index" => c.index = value,
            "-O0" | "-O1" | "-O2" | "-O3" | "-Os" | "-Oz" => c.olevel = a[2..].to_string(),
            "-x" if value != "ir" => return refuse("cc1_option", format!("-x {value}")),
            "-mllvm" => {
                let opt = value.split_once('=').map(|(n, _)| n).unwrap_or(&value);
                if !MLLVM_VETTED.contains(&opt) {
                    return refuse("mllvm_option", value);
                }
                c.mllvm.push(value);
            }
            _ => {}
        }
    }
    if inputs != 1 || c.triple.is_empty() || c.reloc.is_empty() || c.index.is_empty() {
        return refuse("cc1_option", "unexpected cc1 line");
    }
    if c.olevel.is_empty() {
        // cc1 without -O is -O0.
        c.olevel = "0".into();
    }
    Ok(c)
}

/// The arguments of the job with the input, shard and output paths back in
/// place of their role markers.
fn real_args(inv: &BackendInvocation) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    inv.hashed_args
        .iter()
        .map(|a| match a.as_str() {
            "<input>" => s(&inv.input),
            "<output>" => s(&inv.output),
            "-o<output>" => format!("-o{}", s(&inv.output)),
            "-fthinlto-index=<shard>" => format!("-fthinlto-index={}", s(&inv.shard)),
            _ => a.clone(),
        })
        .collect()
}

/// The arguments the cc1 memo is keyed on: all but preprocessor macros and
/// include directories (`-D`, `-U`, `-I`, joined or separate) and
/// dependency-file requests (`-Wp,-MMD,<file>`, `-Wp,-MD,<file>`), which
/// differ per file in kernel builds and which the driver does not turn into
/// any of the cc1 options we read or vet for IR input (tests/precise.rs
/// checks that the cc1 line is the same without them).
pub fn cc1_memo_args(args: &[String]) -> Vec<&str> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if matches!(a, "-D" | "-U" | "-I") {
            i += 1;
            continue;
        }
        if a.starts_with("-D") || a.starts_with("-U") || a.starts_with("-I") {
            continue;
        }
        if let Some(file) = a.strip_prefix("-Wp,-MMD,").or_else(|| a.strip_prefix("-Wp,-MD,")) {
            if !file.contains(',') {
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// clang's cc1 line for this job (`clang -###`), memoised per host by
/// everything it depends on: compiler identity and name, the environment
/// fields, the arguments but for [`cc1_memo_args`]'s, the working directory.
fn cc1_line(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, cwd: &Path) -> Result<Vec<String>, Refusal> {
    let mut h = blake3::Hasher::new();
    h.update(b"cc1-v1\0");
    h.update(cwd.as_os_str().as_bytes());
    for a in cc1_memo_args(&inv.hashed_args) {
        h.update(&(a.len() as u64).to_le_bytes());
        h.update(a.as_bytes());
    }
    for (k, v) in &job.key.fields {
        if k == "compiler" || k == "compiler-name" || k.starts_with("env:") {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    // The paths of the input, shard and output are left out (the first key
    // has role markers there), so jobs with the same flags share one `-###`:
    // what we read from the line (target, relocation and code model, CPU,
    // features, -O, -mllvm, which options appear) does not name them. Their
    // extensions stay: the driver picks an input's type by its extension.
    for p in [&inv.input, &inv.shard, &inv.output] {
        h.update(p.extension().map(|e| e.as_bytes()).unwrap_or(b""));
        h.update(b"\0");
    }
    let memo = ctx.state_dir.join("precise").join(format!("cc1-{}", &hex(h.finalize().as_bytes())[..32]));
    let read_memo = || {
        let text = std::fs::read(&memo).ok()?;
        let body = text.strip_prefix(b"cc1\0")?;
        Some(
            body.split(|&b| b == 0)
                .filter(|t| !t.is_empty())
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
        )
    };
    if let Some(args) = read_memo() {
        return Ok(args);
    }
    // One `clang -###` per memo: the background children of a cold build,
    // which queue up at idle priority, wait for the first to write it
    // instead of each running the driver (18 ms of CPU each for clang-19).
    // A job in the foreground never waits for one of them (an idle-priority
    // holder may not run while the build keeps the CPU busy): it only takes
    // a free lock. Held until this returns.
    let _lock = lock_file(&memo.with_extension("lock"), IN_BACKGROUND.load(std::sync::atomic::Ordering::Relaxed));
    if let Some(args) = read_memo() {
        return Ok(args);
    }
    let mut cmd = Command::new(&job.program);
    std::os::unix::process::CommandExt::arg0(&mut cmd, &inv.compiler);
    let out =
        cmd.args(real_args(inv)).arg("-###").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => return refuse("driver", format!("-### exited with {}", o.status)),
        Err(e) => return refuse("driver", format!("-###: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let jobs: Vec<&str> = text.lines().filter(|l| l.starts_with(" \"")).collect();
    if jobs.len() != 1 {
        return refuse("driver", format!("{} jobs in -###", jobs.len()));
    }
    let Some(args) = split_job_line(jobs[0]) else { return refuse("driver", "cannot read the -### line") };
    if args.get(1).map(String::as_str) != Some("-cc1") {
        return refuse("driver", "the -### job is not cc1");
    }
    let args: Vec<String> = args[1..].to_vec();
    let mut body = b"cc1\0".to_vec();
    for a in &args {
        body.extend_from_slice(a.as_bytes());
        body.push(0);
    }
    let dir = memo.parent().unwrap_or(Path::new("."));
    let _ = crate::util::write_atomic(dir, &memo, &body);
    Ok(args)
}

/// Set in the background child: it may wait for locks.
static IN_BACKGROUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An exclusive `flock` on `path` (created), released when the file is
/// dropped: waited for when `wait`, else taken only if free. None when it
/// is not had (the caller goes on unlocked: at worst it repeats work
/// another process is doing).
fn lock_file(path: &Path, wait: bool) -> Option<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let _ = std::fs::create_dir_all(path.parent()?);
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(f.as_raw_fd(), op) } == 0).then_some(f)
}

// ---------------------------------------------------------------------------
// The helper.

/// A helper found and checked against the compiler.
pub struct Helper {
    pub path: PathBuf,
    /// blake3 of the helper binary and its version line: part of the key.
    pub identity: [u8; 32],
}

/// The libLLVM file a program maps, from `ldd`.
fn libllvm_of(program: &Path) -> Option<PathBuf> {
    let out = Command::new("ldd").arg(program).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("libLLVM"))?;
    let path = line.split("=>").nth(1)?.trim().split(" (").next()?.trim();
    std::fs::canonicalize(path).ok()
}

/// A small verdict memoised in the state directory under `name`.
fn memoised(ctx: &Ctx, name: String, compute: impl FnOnce() -> String) -> String {
    let memo = ctx.state_dir.join("precise").join(name);
    if let Ok(v) = std::fs::read_to_string(&memo) {
        return v;
    }
    let v = compute();
    let dir = memo.parent().unwrap_or(Path::new("."));
    let _ = crate::util::write_atomic(dir, &memo, v.as_bytes());
    v
}

/// The libLLVM file (realpath) the job's compiler maps, memoised per
/// compiler identity and real path (the wheels find theirs relative to the
/// executable, so a copy elsewhere may map another).
fn compiler_libllvm(ctx: &Ctx, job: &Keyed) -> Option<PathBuf> {
    let real = std::fs::canonicalize(&job.program).unwrap_or_else(|_| job.program.clone());
    let compiler = job.key.fields.iter().find(|(k, _)| k == "compiler").map(|(_, v)| v.as_str()).unwrap_or("");
    let tag = blake3::hash(format!("llvm-v1\0{compiler}\0{}", real.display()).as_bytes());
    let v = memoised(ctx, format!("llvm-{}", &hex(tag.as_bytes())[..32]), || match libllvm_of(&real) {
        Some(l) => format!("lib {}\n", l.display()),
        None => "none\n".into(),
    });
    v.strip_prefix("lib ").map(|l| PathBuf::from(l.trim_end_matches('\n')))
}

/// Whether a job's compiler has a helper to try at all (cheap: a memo read
/// and a stat per candidate), so jobs without one pay nothing more.
fn has_candidates(ctx: &Ctx, job: &Keyed) -> bool {
    if switched_off() {
        return false;
    }
    let major = if crate::util::env_os("LTOCACHE_PRECISE_HELPER").is_some() {
        None
    } else {
        compiler_libllvm(ctx, job).as_deref().and_then(llvm_major)
    };
    !helper_candidates(major).is_empty()
}

/// Finds the helper that maps the same libLLVM file as the job's compiler:
/// a clang-19 job gets a helper built against libLLVM-19, a clang-23 job one
/// built against LLVM 23's, and a job whose compiler maps none no helper.
/// A helper's version line is memoised per (helper digest, path).
fn helper_for(ctx: &Ctx, job: &Keyed, hasher: &mut crate::key::digest::FileHasher) -> Result<Helper, Refusal> {
    let lib = compiler_libllvm(ctx, job);
    let candidates = helper_candidates(lib.as_deref().and_then(llvm_major));
    if candidates.is_empty() {
        return refuse("no_helper", "no helper");
    }
    let Some(lib) = lib else { return refuse("llvm_mismatch", "the compiler maps no libLLVM") };
    let mut why = Vec::new();
    for path in candidates {
        let digest = match hasher.hash(&path, false) {
            Ok(h) => h.digest,
            Err(e) => return refuse("helper_error", format!("hashing the helper: {e:#}")),
        };
        let tag = blake3::hash(format!("helper-v1\0{}\0{}", hex(&digest), path.display()).as_bytes());
        let line = memoised(ctx, format!("helper-{}", &hex(tag.as_bytes())[..32]), || version_line(&path));
        let Some(line) = line.strip_prefix("ok ").map(str::trim) else {
            why.push(format!("{}: {}", path.display(), line.trim()));
            continue;
        };
        let maps = line.rsplit(' ').next().map(PathBuf::from);
        if maps.as_deref() != Some(lib.as_path()) {
            why.push(format!("{} maps {}", path.display(), maps.unwrap_or_default().display()));
            continue;
        }
        let mut h = blake3::Hasher::new();
        h.update(&digest);
        h.update(line.as_bytes());
        return Ok(Helper { path, identity: *h.finalize().as_bytes() });
    }
    refuse("llvm_mismatch", format!("the compiler maps {}; {}", lib.display(), why.join("; ")))
}

/// "ok <version line>" (protocol, LLVM version, the libLLVM it maps), or why not.
fn version_line(helper: &Path) -> String {
    match Command::new(helper).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) if o.status.success() => format!("ok {}\n", String::from_utf8_lossy(&o.stdout).trim()),
        _ => "no: the helper does not run\n".into(),
    }
}

fn request_text(cwd: &Path, inv: &BackendInvocation, cc1: &Cc1, dump: Option<&Path>) -> String {
    let mut r = String::new();
    let mut put = |k: &str, v: &str| {
        r.push_str(k);
        r.push('\t');
        r.push_str(v);
        r.push('\n');
    };
    put("cwd", &cwd.to_string_lossy());
    put("input", &inv.input.to_string_lossy());
    // The index as the job names it (the memoised cc1 line may be another
    // job's with the same flags).
    put("index", &inv.shard.to_string_lossy());
    put("triple", &cc1.triple);
    put("reloc", &cc1.reloc);
    if !cc1.cmodel.is_empty() {
        put("cmodel", &cc1.cmodel);
    }
    put("cpu", &cc1.cpu);
    for f in &cc1.features {
        put("feature", f);
    }
    put("olevel", &cc1.olevel);
    for o in &cc1.mllvm {
        put("mllvm", o);
    }
    if let Some(d) = dump {
        put("dump", &d.to_string_lossy());
    }
    r.push_str("end\n");
    r
}

fn idle_seconds() -> u64 {
    crate::util::env("LTOCACHE_PRECISE_IDLE").and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(30)
}

/// Sends a request to the helper: to its server (started when absent) or,
/// with `LTOCACHE_PRECISE_SERVER=0`, to a process of its own.
pub fn ask(state_dir: &Path, helper: &Helper, request: &str) -> Result<String> {
    ask_within(state_dir, helper, request, Duration::from_secs(20))
}

fn ask_within(state_dir: &Path, helper: &Helper, request: &str, answer_within: Duration) -> Result<String> {
    let server = !crate::util::env_os("LTOCACHE_PRECISE_SERVER").is_some_and(|v| v == "0");
    // The state directory may be named through one of our descriptors
    // (/proc/self/fd/N): the server is another process, so it gets the
    // directory's real path.
    let dir = state_dir.join("precise");
    let _ = std::fs::create_dir_all(&dir);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    // Background children have a server of their own: started by one of
    // them it runs at idle priority (inherited, and an unprivileged process
    // cannot leave SCHED_IDLE), and a foreground job must never queue behind
    // idle-priority work while the build keeps the CPU busy.
    let background = IN_BACKGROUND.load(std::sync::atomic::Ordering::Relaxed);
    let name = format!("h-{}{}", &hex(&helper.identity)[..16], if background { "-idle" } else { "" });
    let sock = dir.join(format!("{name}.sock"));
    // sun_path holds 108 bytes; a deeper state directory asks a process.
    if !server || sock.as_os_str().len() >= 100 {
        return ask_once(&helper.path, request);
    }
    // A server that did not start or did not answer in time is skipped by
    // this user's compiles for a while (as a remote that is down): one
    // timeout, not one per backend of the build.
    let down = dir.join(format!("{name}.down"));
    if std::fs::metadata(&down).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e < DOWN_FOR)) {
        bail!("the helper server is marked down (it timed out less than {}s ago)", DOWN_FOR.as_secs());
    }
    let mark_down = |e: anyhow::Error| {
        let _ = std::fs::write(&down, b"");
        e
    };
    // The children of a cold build queue up together: one starts the
    // server while the others wait (each start loads libLLVM, ~12 ms of CPU,
    // before the loser sees the server's lock taken and leaves).
    let starting = if background { lock_file(&dir.join(format!("{name}.start")), true) } else { None };
    let mut stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(_) => {
            start_server(&helper.path, &sock)?;
            // An idle-priority server may wait long for the CPU; waiting
            // costs a background child nothing.
            let deadline = Instant::now() + Duration::from_secs(if background { 60 } else { 3 });
            let mut tries = 0u32;
            loop {
                match UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(mark_down(anyhow::anyhow!("helper server did not start: {e}")))
                    }
                    Err(_) => {
                        tries += 1;
                        // A server leaving on idle holds the lock until it has
                        // unlinked its socket, so the one we started may have
                        // given way to it: start another now and then.
                        if tries % 100 == 0 {
                            start_server(&helper.path, &sock)?;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        }
    };
    drop(starting);
    // The state directory may be shared with a group: a socket there could
    // be someone else's server answering forged digests. Only a server
    // running as this user is asked.
    if !peer_is_me(&stream) {
        bail!("the helper socket {} is served by another user", sock.display());
    }
    stream.set_read_timeout(Some(if background {
        answer_within.max(Duration::from_secs(120))
    } else {
        answer_within
    }))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    if let Err(e) = stream.read_to_string(&mut answer) {
        let timed_out = matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
        let e = anyhow::Error::new(e).context("reading the helper's answer");
        return Err(if timed_out { mark_down(e) } else { e });
    }
    Ok(answer)
}

/// How long a helper server that timed out is skipped.
const DOWN_FOR: Duration = Duration::from_secs(60);

fn peer_is_me(stream: &UnixStream) -> bool {
    use std::os::unix::io::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    rc == 0 && cred.uid == unsafe { libc::geteuid() }
}

fn ask_once(helper: &Path, request: &str) -> Result<String> {
    let mut child = Command::new(helper)
        .arg("--once")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the helper")?;
    child.stdin.take().context("helper stdin")?.write_all(request.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a helper server for this host's state directory, detached: its
/// own session, stdio on /dev/null and no other descriptor of ours (a build
/// tool waiting for its job's pipes or jobserver must not wait for it).
fn start_server(helper: &Path, sock: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(sock.parent().unwrap_or(Path::new("."))).context("creating the helper's directory")?;
    let mut cmd = Command::new(helper);
    cmd.arg("--serve").arg(sock).arg(idle_seconds().to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.spawn().context("starting the helper server")?;
    Ok(())
}

/// Parses the helper's answer into the post-import digest and the CPU time
/// the helper spent on it (a server's is not ours to measure).
fn parse_answer(answer: &str) -> Result<([u8; 32], i64), Refusal> {
    let line = answer.trim();
    if let Some(rest) = line.strip_prefix("ok ") {
        let mut parts = rest.split(' ');
        let hexd = parts.next().unwrap_or("");
        let cpu = parts.nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if let Some(d) = unhex(hexd).and_then(|v| <[u8; 32]>::try_from(v).ok()) {
            return Ok((d, cpu));
        }
    }
    if let Some(why) = line.strip_prefix("refuse ") {
        return refuse("helper_refused", why.to_string());
    }
    refuse("helper_error", format!("unexpected answer {line:?}"))
}

// ---------------------------------------------------------------------------
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

/// Computes the second key of a job with the helper [`helper_for`] chose,
/// or why not.
pub fn compute(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    helper: &Helper,
    hasher: &mut crate::key::digest::FileHasher,
) -> Result<Second, Refusal> {
    let shard_bytes = match hasher.read_tracked(&inv.shard) {
        Ok(b) => b,
        Err(e) => return refuse("helper_error", format!("reading the shard: {e:#}")),
    };
    let shard = shard_without_hashes(&shard_bytes)?;
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return refuse("helper_error", format!("cwd: {e}")),
    };
    let cc1 = parse_cc1(&cc1_line(ctx, inv, job, &cwd)?)?;
    // The real path: the socket's name is handed to the helper server, a
    // process of its own, where this one's /proc/self/fd means nothing.
    let dump = dump_path(&cwd, inv);
    let answer = match ask(&ctx.config.state().real, helper, &request_text(&cwd, inv, &cc1, dump.as_deref())) {
        Ok(a) => a,
        Err(e) => return refuse("helper_error", format!("{e:#}")),
    };
    let (post_import, helper_cpu_ns) = parse_answer(&answer)?;
    Ok(Second {
        digest: second_key(&job.key.fields, &helper.identity, &shard, &post_import),
        helper_cpu_ns,
        helper: helper.path.clone(),
    })
}

/// `LTOCACHE_PRECISE_DUMP=DIR` (benchmarks: benches/realworld/precise.py):
/// the helper also writes each job's post-import module, as `-save-temps=obj`
/// writes `X.3.import.bc`, to `DIR/<output path>.3.import.bc`, so that the
/// module the real jobs hashed can be compared with clang's own.
fn dump_path(cwd: &Path, inv: &BackendInvocation) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LTOCACHE_PRECISE_DUMP").filter(|d| !d.is_empty())?);
    let out = cwd.join(&inv.output);
    let rel = out.strip_prefix("/").unwrap_or(&out);
    let mut name = dir.join(rel).into_os_string();
    name.push(".3.import.bc");
    let name = PathBuf::from(name);
    std::fs::create_dir_all(name.parent()?).ok()?;
    Some(name)
}

/// Asks `helper` (a process of its own) for the post-import module of the
/// job `inv` run in `cwd` with the cc1 line `cc1_args`, and has it written to
/// `dump` the way clang's `-save-temps=obj` writes `X.3.import.bc` — for the
/// test that holds the two byte for byte. Returns the helper's answer.
pub fn dump_post_import(
    helper: &Path,
    cwd: &Path,
    inv: &BackendInvocation,
    cc1_args: &[String],
    dump: &Path,
) -> Result<String> {
    let cc1 = parse_cc1(cc1_args).map_err(|r| anyhow::anyhow!("{}: {}", r.code, r.detail))?;
    ask_once(helper, &request_text(cwd, inv, &cc1, Some(dump)))
}

// ---------------------------------------------------------------------------
// Mapping second key → first key of the entry that holds the object.

/// Read by descriptor beneath the cache directory (a symlink, FIFO or giant
/// planted at a map's name in a shared cache is no map): see store/local.rs.
fn read_map(ctx: &Ctx, second: &[u8; 32]) -> Option<[u8; 32]> {
    ctx.store.get_precise_map(second)
}

fn write_map(ctx: &Ctx, second: &[u8; 32], first: &[u8; 32]) -> Result<()> {
    ctx.store.put_precise_map(second, first)
}

// ---------------------------------------------------------------------------
// The hooks backend.rs calls.

fn count_refusal(ctx: &Ctx, inv: &BackendInvocation, batch: &mut Batch, r: &Refusal) {
    ctx.log.log(&format!("precise: refused ({}: {}) {}", r.code, r.detail, inv.output.display()));
    batch.add(&format!("precise.refused.{}", r.code), 1);
}

/// Computes the second key (when this output was compiled before, or the
/// cold policy says so) and finds the entry it maps to, without serving it.
/// The second key stays in the job either way.
fn lookup(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
) -> Option<(Second, [u8; 32], crate::store::Entry)> {
    job.precise_looked.set(true);
    if !job.output_existed() && cold_policy() != Cold::Sync {
        // A cold compile: nothing is computed before it (see after_store).
        return None;
    }
    if !has_candidates(ctx, job) {
        return None;
    }
    if imports_nothing(job) {
        batch.add("precise.skipped_no_imports", 1);
        return None;
    }
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    let second = helper_for(ctx, job, &mut hasher).and_then(|h| compute(ctx, inv, job, &h, &mut hasher));
    batch.add(
        "cpu_ns.precise",
        crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - cpu0,
    );
    let second = match second {
        Ok(s) => s,
        Err(r) => {
            count_refusal(ctx, inv, batch, &r);
            return None;
        }
    };
    batch.add("precise.computed", 1);
    batch.add("cpu_ns.precise_helper", second.helper_cpu_ns);
    // The helper read the files after the first key hashed them: had one
    // changed meanwhile, the two keys would describe different inputs.
    if job.hasher.unchanged_since_hashing().is_some() || hasher.unchanged_since_hashing().is_some() {
        count_refusal(ctx, inv, batch, &Refusal { code: "input_changed", detail: "input changed".into() });
        return None;
    }
    *job.precise.borrow_mut() = Some(second.clone());
    let target = read_map(ctx, &second.digest)?;
    match ctx.store.get_entry_and_last_use(&target) {
        Ok((Lookup::Hit(e), _)) => Some((second, target, e)),
        _ => {
            batch.add("precise.dangling", 1);
            None
        }
    }
}

/// `LTOCACHE_VERIFY` for the second key: the entry a second-key hit would
/// serve, so that the caller compiles anyway and compares (verify.rs), as it
/// does for first-key hits. A stale result is then stored under the first
/// key and [`remap_after_stale`] points the mapping at it.
pub fn verify_candidate(
    ctx: &Ctx,
    inv: &BackendInvocation,
    job: &Keyed,
    batch: &mut Batch,
) -> Option<crate::store::Entry> {
    let (_, _, entry) = lookup(ctx, inv, job, batch)?;
    batch.add("precise.verified", 1);
    Some(entry)
}

/// After a verified second-key hit was stale and the fresh result stored
/// under the first key: the mapping now names that entry.
pub fn remap_after_stale(ctx: &Ctx, job: &Keyed) {
    if let Some(second) = job.precise.borrow().as_ref() {
        ctx.log.log("precise: a verified second-key hit was stale; mapping replaced");
        let _ = write_map(ctx, &second.digest, &job.key.digest);
    }
}

/// After the first key missed: computes the second key (when this output
/// was compiled before, or the cold policy says so) and serves its entry.
/// Returns the stderr to replay on a hit; on a miss, keeps the second key in
/// the job for [`after_store`].
pub fn try_serve(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) -> Option<Vec<u8>> {
    if job.precise_looked.get() {
        // Already looked up (by verify_candidate) and nothing was served.
        return None;
    }
    let (second, target, entry) = lookup(ctx, inv, job, batch)?;
    match crate::store::serve_entry(&ctx.store, ctx.config.serve_mode.value, &entry, &inv.output) {
        Ok(Some(bytes)) => {
            ctx.log.log(&format!(
                "precise hit {} {} (helper {})",
                hex(&second.digest[..8]),
                inv.output.display(),
                second.helper.display()
            ));
            batch.add("hits", 1);
            batch.add("precise_hits", 1);
            batch.add("bytes_served", bytes as i64);
            batch.add("ns_saved", entry.duration_ns as i64);
            let fields = format!(
                "{}served-because\tsecond key {}, object of entry {}\n",
                job.fields_text(),
                hex(&second.digest),
                hex(&target)
            );
            batch.last_compile = Some((job.output_name.clone(), job.key.digest, "precise-hit".into(), fields));
            // Record the first key too: the next identical build hits at once.
            if !ctx.config.readonly.value && ctx.store.writable() {
                let mine = crate::store::Entry { key: job.key.digest, ..entry.clone() };
                match ctx.store.put_entry(&mine) {
                    Ok(size) => {
                        batch.add("precise.recorded_first_key", 1);
                        crate::backend::account_store(ctx, batch, size, 1);
                    }
                    Err(e) => ctx.log.log(&format!("precise: recording the first key failed: {e:#}")),
                }
            }
            Some(entry.stderr)
        }
        _ => {
            batch.add("errors.serve", 1);
            None
        }
    }
}

/// After the outputs were stored under the first key: records the second
/// key → first key mapping. A cold compile computes the second key now, in
/// a detached child at idle priority (the job does not wait for it).
pub fn after_store(ctx: &Ctx, inv: &BackendInvocation, job: &Keyed, batch: &mut Batch) {
    if let Some(second) = job.precise.borrow().as_ref() {
        match write_map(ctx, &second.digest, &job.key.digest) {
            Ok(()) => batch.add("precise.stored", 1),
            Err(e) => ctx.log.log(&format!("precise: mapping not stored: {e:#}")),
        }
        return;
    }
    if job.output_existed() || cold_policy() != Cold::Background || !has_candidates(ctx, job) {
        return;
    }
    if imports_nothing(job) {
        batch.add("precise.skipped_no_imports", 1);
        return;
    }
    // fork() copies only the calling thread: in a process running several
    // jobs at once (the DTLTO distributor) a lock held by another thread
    // would stay locked in the child forever. Only single-threaded callers
    // compute in the background.
    if !single_threaded() {
        batch.add("precise.background_skipped_threads", 1);
        return;
    }
    // The helper is chosen here (memo reads): a job whose compiler has no
    // matching helper is counted and forks nothing.
    let parent_cpu = || crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let cpu0 = parent_cpu();
    let mut hasher = crate::key::digest::FileHasher::new(ctx.memo.as_ref());
    let helper = match helper_for(ctx, job, &mut hasher) {
        Ok(h) => h,
        Err(r) => return count_refusal(ctx, inv, batch, &r),
    };
    batch.add("precise.background", 1);
    // SAFETY: this process is single-threaded here; the child only computes,
    // writes one file and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        // The parent (or a failed fork: nothing happens): its share of the
        // cost is the helper's choice (an `ldd` the first time) and the fork.
        batch.add("cpu_ns.precise", parent_cpu() - cpu0);
        return;
    }
    // The child: off the build's output pipes and its CPU.
    unsafe {
        // Other descriptors stay: the state directory may be one of them.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::setsid();
        // The system call itself: musl's sched_setscheduler() is a stub that
        // returns ENOSYS, and its sched_param has extra fields (zeroed here).
        let param: libc::sched_param = std::mem::zeroed();
        libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_IDLE, &param as *const libc::sched_param);
    }
    IN_BACKGROUND.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu0 = crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN);
    let mut own = crate::state::stats::Batch::default();
    match compute(ctx, inv, job, &helper, &mut hasher) {
        // The object was compiled from the files the first key hashed; the
        // second key describes them only if none changed since.
        Ok(second) if job.hasher.unchanged_since_hashing().is_none() && hasher.unchanged_since_hashing().is_none() => {
            own.add("precise.background_computed", 1);
            own.add("cpu_ns.precise_helper", second.helper_cpu_ns);
            if write_map(ctx, &second.digest, &job.key.digest).is_ok() {
                own.add("precise.stored", 1);
            }
        }
        Ok(_) => own.add("precise.refused.input_changed", 1),
        Err(r) => own.add(&format!("precise.refused.{}", r.code), 1),
    }
    // What the background cost is counted too (`stats`: precise cpu_ms),
    // in a record of its own (the job's batch is the parent's to write).
    own.add(
        "cpu_ns.precise",
        crate::util::cpu_ns(libc::RUSAGE_SELF) + crate::util::cpu_ns(libc::RUSAGE_CHILDREN) - cpu0,
    );
    own.at_ns = crate::util::now_ns();
    let _ = crate::state::journal::append_many(&ctx.config.state_dir(), &[&own]);
    crate::exec::exit_now(0);
}

/// True when the shard lists no module but the input. Then everything the
/// post-import module is made of is already in the first key — the input's
/// bitcode and the shard (summaries, flags, its one module hash, which is
/// the input's own) — so a second key could only hit where the first one
/// does: it is not computed (on the kernel's tinyconfig a fifth of the
/// backends, on Lua 4 of 33).
fn imports_nothing(job: &Keyed) -> bool {
    job.key.fields.iter().filter(|(k, _)| k.starts_with("module[")).all(|(_, v)| v == "input")
}

/// True when this process has one thread (field 20 of /proc/self/stat).
fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
    rest.split_whitespace().nth(17) == Some("1")
}

/// The precise-mode counters for `stats` (without their `precise.` prefix),
/// with its CPU time in milliseconds.
pub fn counters(all: &std::collections::BTreeMap<String, i64>) -> std::collections::BTreeMap<String, i64> {
    let mut out: std::collections::BTreeMap<String, i64> =
        all.iter().filter_map(|(k, v)| k.strip_prefix("precise.").map(|k| (k.to_string(), *v))).collect();
    if let Some(ns) = all.get("cpu_ns.precise") {
        out.insert("cpu_ms".into(), ns / 1_000_000);
    }
    if let Some(ns) = all.get("cpu_ns.precise_helper") {
        out.insert("helper_cpu_ms".into(), ns / 1_000_000);
    }
    out
}

/// What `explain` says of an object served by the second key.
pub fn explain_line(outcome: &str, fields: &str) -> Option<String> {
    if outcome != "precise-hit" {
        return None;
    }
    let detail = fields.lines().find_map(|l| l.strip_prefix("served-because\t")).unwrap_or("");
    Some(format!("served because its post-import module was unchanged: {detail}"))
}

/// Whether precise mode could run at all (for `stats`): a helper of any
/// LLVM version is there.
pub fn enabled() -> bool {
    if !helper_candidates(None).is_empty() {
        return true;
    }
    let dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let helpers = dir.and_then(|d| std::fs::read_dir(d).ok()).into_iter().flatten().flatten();
    !switched_off()
        && helpers.into_iter().any(|e| {
            e.file_name().to_str().and_then(|n| n.strip_prefix(HELPER_NAME)).is_some_and(|rest| {
                rest.strip_prefix('-').is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wedged_helper_server_costs_one_timeout_then_is_skipped() {
        // A server that accepts and never answers (stopped, or stuck) must
        // not cost every backend of a build its timeout.
        let d = tempfile::tempdir().unwrap();
        let helper = Helper { path: PathBuf::from("/nonexistent/ltocache-precise"), identity: [5; 32] };
        let dir = d.path().join("precise");
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join(format!("h-{}.sock", &hex(&helper.identity)[..16]));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let held = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            drop(conn);
        });
        let t = Instant::now();
        assert!(ask_within(d.path(), &helper, "x", Duration::from_millis(300)).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        let t = Instant::now();
        let e = ask_within(d.path(), &helper, "x", Duration::from_millis(300)).unwrap_err();
        assert!(format!("{e:#}").contains("marked down"), "{e:#}");
        assert!(t.elapsed() < Duration::from_millis(100), "skipped, not waited for");
        held.join().unwrap();
    }

    #[test]
    fn cc1_memo_leaves_out_macros_includes_and_dependency_files() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = v(&["-O2", "-DX=1", "-D", "Y", "-Iinc", "-I", "inc2", "-Uz", "-Wp,-MMD,a/.b.o.d", "-Wp,-MD,x,y", "-g"]);
        assert_eq!(cc1_memo_args(&a), vec!["-O2", "-Wp,-MD,x,y", "-g"]);
    }

    #[test]
    fn llvm_major_is_read_from_the_library_name() {
        assert_eq!(llvm_major(Path::new("/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1")), Some(19));
        assert_eq!(llvm_major(Path::new("/venv/lib/libLLVM.so.23.1")), Some(23));
        assert_eq!(llvm_major(Path::new("/usr/lib/libLLVM-19.so")), Some(19));
        assert_eq!(llvm_major(Path::new("/usr/lib/libLLVM.so")), None);
        assert_eq!(llvm_major(Path::new("/usr/lib/libclang.so.19")), None);
    }

    #[test]
    fn thread_count_is_read() {
        let one = single_threaded();
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(!single_threaded(), "a second thread is running");
        t.join().unwrap();
        let _ = one;
    }

    #[test]
    fn job_lines_split_like_the_driver_quotes_them() {
        let l = r#" "/usr/bin/clang" "-cc1" "-D" "A=\"b c\"" "x\\y""#;
        assert_eq!(split_job_line(l).unwrap(), vec!["/usr/bin/clang", "-cc1", "-D", "A=\"b c\"", "x\\y"]);
        assert!(split_job_line(" \"unterminated").is_none());
    }

    fn cc1(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["-cc1", "-triple", "x86_64-pc-linux-gnu", "-emit-obj", "-fthinlto-index=a.bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["-mrelocation-model", "pic", "-O2", "-x", "ir", "a.o"].iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn cc1_lines_are_read_and_unvetted_options_refused() {
        let c = parse_cc1(&cc1(&["-target-feature", "+avx2", "-mcmodel=large"])).unwrap();
        assert_eq!((c.triple.as_str(), c.reloc.as_str(), c.olevel.as_str()), ("x86_64-pc-linux-gnu", "pic", "2"));
        assert_eq!((c.features.clone(), c.cmodel.as_str()), (vec!["+avx2".to_string()], "large"));
        for bad in [
            &["-fembed-bitcode=all"][..],
            &["-mlink-bitcode-file", "x.bc"],
            &["-mllvm", "-lto-embed-bitcode=optimized"],
        ] {
            assert!(parse_cc1(&cc1(bad)).is_err(), "{bad:?} must refuse");
        }
        assert_eq!(parse_cc1(&cc1(&["-mllvm", "-inline-threshold=5"])).unwrap().mllvm, vec!["-inline-threshold=5"]);
        assert!(parse_cc1(&cc1(&["-fhalf-no-semantic-interposition"])).is_ok(), "-fPIC's cc1 option is vetted");
    }

    #[test]
    fn second_key_ignores_imported_fingerprints_and_keeps_the_rest() {
        let f = |m: &str, a: &str| -> Vec<(String, String)> {
            vec![
                ("shard".into(), "s1".into()),
                ("input".into(), "in".into()),
                ("module[0]".into(), "input".into()),
                ("module[1]".into(), format!("{m} b.o")),
                ("arg[0]".into(), a.into()),
            ]
        };
        let k = |m, a, p: u8| second_key(&f(m, a), &[1; 32], &[2; 32], &[p; 32]);
        assert_eq!(k("aa", "-O2", 3), k("bb", "-O2", 3), "an imported module's digest is not in the key");
        assert_ne!(k("aa", "-O2", 3), k("aa", "-O1", 3), "arguments are");
        assert_ne!(k("aa", "-O2", 3), k("aa", "-O2", 4), "the post-import module is");
        assert_ne!(second_key(&f("aa", "-O2"), &[9; 32], &[2; 32], &[3; 32]), k("aa", "-O2", 3), "the helper is");
    }
}

//! What the clang driver reads besides argv: its environment, its
//! configuration files, and the terminal it writes to.
//!
//! Configuration files are decided by the driver itself: which ones it loads
//! depends on its target triple, driver mode, executable name and directory,
//! `--config*` flags and `CLANG_NO_DEFAULT_CONFIG`, rules that change between
//! clang versions. Rather than reimplement them, ltocache asks the driver
//! (`clang <those flags> --version` prints one `Configuration file:` line per
//! file it loaded, and the directories it searched) and memoises the answer
//! under a digest of everything that question depended on, validated by the
//! stamps of the directories searched (creating, deleting or renaming a file
//! there changes the directory's stamp). The files' tokens then go through
//! the same analysis as argv, placed before it as clang places them.
//! `driver.rs` also decides the terminal's colours and refuses the
//! environment variables that make the driver write or edit.
//! See docs/key.md, "Configuration files".

use crate::key::args::{self, NotCacheable, ReadFile};
use crate::util::FileStamp;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Environment variables that make the driver write or print something a
/// hit cannot reproduce, or edit the command line (clang 19's driver.cpp:
/// `SetBackdoorDriverOutputsFromEnvVars`, `CCC_OVERRIDE_OPTIONS`). clang
/// tests only whether they are set: an empty value counts.
pub const REFUSED_ENV: &[&str] = &[
    "CCC_OVERRIDE_OPTIONS",
    "CC_PRINT_OPTIONS",
    "CC_PRINT_OPTIONS_FILE",
    "CC_PRINT_HEADERS",
    "CC_PRINT_HEADERS_FILE",
    "CC_LOG_DIAGNOSTICS",
    "CC_LOG_DIAGNOSTICS_FILE",
    "CC_PRINT_PROC_STAT",
    "CC_PRINT_PROC_STAT_FILE",
    "CC_PRINT_INTERNAL_STAT",
    "CC_PRINT_INTERNAL_STAT_FILE",
];

/// Refuses a command whose environment makes the driver do what a hit
/// cannot replay. `CCC_OVERRIDE_OPTIONS` (an edit language over argv) is
/// refused rather than reimplemented.
pub fn refuse_env(getenv: &dyn Fn(&str) -> Option<String>) -> Result<(), NotCacheable> {
    for var in REFUSED_ENV {
        if getenv(var).is_some() {
            return Err(NotCacheable::UnsupportedOption(format!("environment {var}")));
        }
    }
    Ok(())
}

/// The argv flags that can change which configuration files the driver
/// loads: the flags naming them or their directories, and those that change
/// the target triple or driver mode the default file names are built from.
fn config_relevant(args: &[String]) -> Vec<String> {
    const JOINED: &[&str] =
        &["--config", "--no-default-config", "--target=", "-target=", "-mabi=", "-march=", "--driver-mode"];
    const EXACT: &[&str] = &[
        "-m16",
        "-m32",
        "-m64",
        "-mx32",
        "-miamcu",
        "-EB",
        "-EL",
        "-mbig-endian",
        "-mlittle-endian",
        "-no-canonical-prefixes",
        "-canonical-prefixes",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--config" || a == "-target" {
            out.push(a.clone());
            if let Some(v) = args.get(i + 1) {
                out.push(v.clone());
            }
            i += 2;
            continue;
        }
        if EXACT.contains(&a.as_str()) || JOINED.iter().any(|p| a.starts_with(p)) {
            out.push(a.clone());
        }
        i += 1;
    }
    out
}

/// What the driver answered: the directories it searched (with their
/// stamps) and the configuration files it loaded, in loading order.
#[derive(Debug, PartialEq)]
struct Answer {
    dirs: Vec<(PathBuf, Option<FileStamp>)>,
    configs: Vec<PathBuf>,
}

impl Answer {
    fn encode(&self) -> Vec<u8> {
        let mut out = b"ltocache-driver-v1\n".to_vec();
        for (d, s) in &self.dirs {
            out.extend_from_slice(b"dir\t");
            match s {
                Some(s) => out.extend_from_slice(
                    format!("{} {} {} {} {}", s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns).as_bytes(),
                ),
                None => out.extend_from_slice(b"absent"),
            }
            out.push(b'\t');
            out.extend_from_slice(d.as_os_str().as_bytes());
            out.push(b'\n');
        }
        for c in &self.configs {
            out.extend_from_slice(b"cfg\t");
            out.extend_from_slice(c.as_os_str().as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn decode(data: &[u8]) -> Option<Answer> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.split_terminator('\n');
        if lines.next()? != "ltocache-driver-v1" {
            return None;
        }
        let mut a = Answer { dirs: Vec::new(), configs: Vec::new() };
        for l in lines {
            let mut f = l.splitn(3, '\t');
            match (f.next()?, f.next()?, f.next()) {
                ("dir", stamp, Some(path)) => {
                    let s = if stamp == "absent" {
                        None
                    } else {
                        let v: Vec<i64> = stamp.split(' ').map(|x| x.parse().ok()).collect::<Option<_>>()?;
                        let [dev, ino, size, mtime_ns, ctime_ns] = v[..] else { return None };
                        Some(FileStamp { dev: dev as u64, ino: ino as u64, size: size as u64, mtime_ns, ctime_ns })
                    };
                    a.dirs.push((PathBuf::from(path), s));
                }
                ("cfg", path, None) => a.configs.push(PathBuf::from(path)),
                _ => return None,
            }
        }
        Some(a)
    }

    /// True when every searched directory still has the stamp it had.
    fn still_valid(&self) -> bool {
        self.dirs.iter().all(|(d, s)| FileStamp::of_path(d).ok() == *s)
    }
}

/// One `--version` run: the directories the driver reports searching and
/// the configuration files it loaded.
fn probe(program: &Path, invoked: &str, flags: &[String]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), NotCacheable> {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(program)
        .arg0(invoked)
        .args(flags)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| NotCacheable::Unreadable(format!("asking {} for its configuration: {e}", program.display())))?;
    if !out.status.success() {
        return Err(NotCacheable::Unreadable(format!(
            "{} cannot load its configuration: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut dirs, mut configs) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let dir = line
            .strip_prefix("InstalledDir: ")
            .or_else(|| line.strip_prefix("System configuration file directory: "))
            .or_else(|| line.strip_prefix("User configuration file directory: "));
        if let Some(d) = dir {
            dirs.push(canonical(Path::new(d)));
        } else if let Some(c) = line.strip_prefix("Configuration file: ") {
            configs.push(PathBuf::from(c));
        }
    }
    Ok((dirs, configs))
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Asks the driver which configuration files it loads for these flags.
/// The directories it searches are stamped *before* the answer is taken,
/// so a file created meanwhile makes the memo stale rather than wrong:
/// the binary's real directory (and the invoked one under
/// `-no-canonical-prefixes`) and `--config-*-dir=` are known in advance;
/// if the driver reports others (a wrapper script runs another clang), they
/// are stamped and the question asked again. `None` stamps mean absent.
fn ask_driver(program: &Path, invoked: &str, flags: &[String]) -> Result<(Answer, bool), NotCacheable> {
    let mut known: Vec<PathBuf> = Vec::new();
    for f in flags {
        for p in ["--config-system-dir=", "--config-user-dir="] {
            if let Some(d) = f.strip_prefix(p).filter(|d| !d.is_empty()) {
                known.push(canonical(Path::new(d)));
            }
        }
    }
    // clang searches its real directory; a script's own directory is not
    // what the clang it runs searches (that one is reported, then stamped).
    if !crate::key::compiler::is_script(&canonical(program)) {
        known.push(canonical(program).parent().map(Path::to_path_buf).unwrap_or_default());
    }
    if flags.iter().any(|f| f == "-no-canonical-prefixes") {
        let d = Path::new(invoked).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        known.push(canonical(d));
    }
    let stamp_all = |dirs: &[PathBuf]| -> Vec<(PathBuf, Option<FileStamp>)> {
        let mut v: Vec<(PathBuf, Option<FileStamp>)> =
            dirs.iter().map(|d| (d.clone(), FileStamp::of_path(d).ok())).collect();
        v.dedup();
        v
    };
    for attempt in 0..2 {
        let stamps = stamp_all(&known);
        let (reported, configs) = probe(program, invoked, flags)?;
        let unknown: Vec<PathBuf> = reported.into_iter().filter(|d| !known.contains(d)).collect();
        if unknown.is_empty() {
            return Ok((Answer { dirs: stamps, configs }, true));
        }
        if attempt == 1 {
            // Still moving: answer, but do not memoise.
            return Ok((Answer { dirs: stamps, configs }, false));
        }
        known.extend(unknown);
    }
    unreachable!()
}

/// The memo's name for one question to the driver.
fn question_digest(
    program: &Path,
    invoked: &str,
    identity: &[u8; 32],
    flags: &[String],
    cwd: &Path,
    no_default: Option<&str>,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"ltocache-driver-question-v1\0");
    for part in [program.as_os_str().as_bytes(), invoked.as_bytes(), identity, cwd.as_os_str().as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match no_default {
        Some(v) => {
            h.update(b"\x01");
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        None => {
            h.update(b"\x00");
        }
    }
    for f in flags {
        h.update(&(f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
    }
    crate::util::hex(&h.finalize().as_bytes()[..16])
}

/// Counts for `stats`: whether the driver had to be asked.
#[derive(Default, Debug)]
pub struct Asked {
    pub probes: i64,
}

/// Answers one process has already found valid, by question: a driver of
/// many jobs ([`crate::backend::Ctx`]) reads and checks the memo once.
pub type Answers = std::sync::Mutex<Vec<(String, Vec<PathBuf>)>>;

/// The configuration files the driver loads for this command, in order,
/// from the memo in the state directory (`driver-<question>`) when still valid.
#[allow(clippy::too_many_arguments)] // the question's parts, and where answers are kept
pub fn loaded_configs(
    program: &Path,
    invoked: &str,
    identity: &[u8; 32],
    expanded: &[String],
    state_dir: Option<&Path>,
    getenv: &dyn Fn(&str) -> Option<String>,
    asked: &mut Asked,
    answers: Option<&Answers>,
) -> Result<Vec<PathBuf>, NotCacheable> {
    let flags = config_relevant(expanded);
    let cwd = crate::util::cwd().unwrap_or(Path::new(""));
    let no_default = getenv("CLANG_NO_DEFAULT_CONFIG");
    let name = question_digest(program, invoked, identity, &flags, cwd, no_default.as_deref());
    // Asked already by this process (a distributor keys hundreds of jobs
    // with the same question): the answer it found valid then.
    if let Some(known) = answers.and_then(|a| a.lock().ok()?.iter().find(|(q, _)| *q == name).map(|(_, c)| c.clone())) {
        return Ok(known);
    }
    let remember = |configs: &Vec<PathBuf>| {
        if let Some(mut a) = answers.and_then(|a| a.lock().ok()) {
            a.push((name.clone(), configs.clone()));
        }
    };
    // One flat file per question in the (private, checked) state directory,
    // opened there without following a symlink or blocking on a FIFO.
    let memo = state_dir.map(|d| (d, crate::cachedir::layout::driver_memo(&name)));
    if let Some((dir, file)) = &memo {
        let read = crate::cachedir::beneath::open_in_stat(dir, file, libc::O_RDONLY, 0, 1 << 20)
            .and_then(|(f, st)| crate::util::read_sized(&f, st.st_size as u64));
        if let Some(a) = read.ok().and_then(|d| Answer::decode(&d)) {
            if a.still_valid() {
                remember(&a.configs);
                return Ok(a.configs);
            }
        }
    }
    asked.probes += 1;
    let (answer, complete) = ask_driver(program, invoked, &flags)?;
    // A directory that changed within the margin may change again without
    // its stamp moving: answer from the driver, but do not memoise.
    let now = crate::util::coarse_now_ns();
    let settled = answer
        .dirs
        .iter()
        .all(|(_, s)| s.is_none_or(|s| now - s.mtime_ns.max(s.ctime_ns) > crate::key::digest::local_margin_ns()));
    if let (Some((dir, file)), true) = (&memo, settled && complete) {
        let _ = crate::util::write_atomic(dir, &dir.join(file), &answer.encode());
        remember(&answer.configs);
    }
    Ok(answer.configs)
}

/// Reads a configuration file as clang does, `@file` inclusions resolved
/// relative to the including file and `<CFGDIR>` replaced by its directory;
/// returns the tokens and records every file read.
pub fn read_config(path: &Path, read: &mut Vec<ReadFile>, depth: usize) -> Result<Vec<String>, NotCacheable> {
    if depth > 20 {
        return Err(NotCacheable::Unreadable(format!("{}: configuration files nest too deeply", path.display())));
    }
    let data = args::read_regular(path, read)?;
    let text = String::from_utf8(data).map_err(|_| NotCacheable::NonUtf8Argument)?;
    let dir = crate::util::parent_dir(path);
    let dir_text = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for tok in args::tokenize_config(&text) {
        let tok = tok.replace("<CFGDIR>", &dir_text);
        if let Some(name) = tok.strip_prefix('@') {
            let p = Path::new(name);
            let p = if p.is_relative() { dir.join(p) } else { p.to_path_buf() };
            out.extend(read_config(&p, read, depth + 1)?);
        } else if tok.starts_with("--config") {
            // clang refuses --config inside a configuration file.
            return Err(NotCacheable::UnsupportedOption(format!("{tok} inside {}", path.display())));
        } else {
            out.push(tok);
        }
    }
    Ok(out)
}

/// The invocation as the driver sees it with its configuration files: their
/// tokens in front of argv (clang 19 places every configuration option
/// before the command line's), analysed together from the expanded command
/// line, so a refused flag in a configuration file is refused and a file it
/// names is hashed. The arguments come out before any `base_dir` rewriting.
pub fn effective(inv: &args::BackendInvocation, configs: &[PathBuf]) -> Result<args::BackendInvocation, NotCacheable> {
    // No configuration file (the usual case): the command line alone, which
    // `inv` already is the analysis of. Analysing it again cost a kernel
    // backend's hit 110,000 instructions (6 %).
    if configs.is_empty() {
        let mut out = inv.clone();
        out.config_files.clear();
        return Ok(out);
    }
    let mut read = Vec::new();
    let mut effective = Vec::new();
    for c in configs {
        effective.extend(read_config(c, &mut read, 0)?);
    }
    let config_files: Vec<PathBuf> = read.iter().map(|(p, _)| p.clone()).collect();
    effective.extend(inv.expanded.iter().cloned());
    let mut out = args::analyze(&inv.compiler, &effective)?;
    out.expanded = inv.expanded.clone();
    out.read_files = inv.read_files.clone();
    out.read_files.extend(read);
    out.config_files = config_files;
    Ok(out)
}

/// Adjusts a job for what the terminal shows: a miss captures clang's
/// stderr through a pipe, where clang would not colour, so when clang alone
/// would, the compile gets `-fcolor-diagnostics` and the key becomes its
/// tty twin (the key and the marker `-fcolor-diagnostics<tty>`). Returns the
/// arguments to add to the compile.
pub fn for_terminal(
    inv: &args::BackendInvocation,
    key: &mut crate::key::Key,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<std::ffi::OsString>, NotCacheable> {
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    match colour(&inv.expanded, tty, getenv("TERM").as_deref()) {
        Colour::AsIs => Ok(Vec::new()),
        Colour::Force => {
            let mut h = blake3::Hasher::new();
            h.update(b"ltocache-tty-colour-v1\0");
            h.update(&key.digest);
            key.digest = *h.finalize().as_bytes();
            key.fields.push(("arg[tty]".into(), "-fcolor-diagnostics<tty>".into()));
            Ok(vec!["-fcolor-diagnostics".into()])
        }
        Colour::Unknown => {
            Err(NotCacheable::UnsupportedOption("stderr is a terminal of unknown colour support".into()))
        }
    }
}

/// How clang would colour diagnostics written to our stderr, when it cannot
/// tell by itself because a miss captures its stderr through a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// Not a terminal, or the command decides explicitly: nothing to add.
    AsIs,
    /// A terminal clang would colour: the compile gets `-fcolor-diagnostics`.
    Force,
    /// A terminal whose colour support clang decides through terminfo in a
    /// way not reproduced here: run clang directly.
    Unknown,
}

/// clang colours when stderr is a terminal whose terminfo entry has
/// colours (Debian's libLLVM 19 uses libtinfo). `TERM` unset or `dumb`
/// means no colours; the common colour terminals are recognised by name.
pub fn colour(args: &[String], stderr_is_tty: bool, term: Option<&str>) -> Colour {
    let explicit = args.iter().any(|a| {
        a.starts_with("-fcolor-diagnostics")
            || a.starts_with("-fno-color-diagnostics")
            || a.starts_with("-fdiagnostics-color")
            || a.starts_with("-fno-diagnostics-color")
    });
    if explicit || !stderr_is_tty {
        return Colour::AsIs;
    }
    match term {
        None | Some("") | Some("dumb") => Colour::AsIs,
        Some(t)
            if [
                "xterm",
                "screen",
                "tmux",
                "rxvt",
                "vt100",
                "linux",
                "ansi",
                "cygwin",
                "alacritty",
                "foot",
                "kitty",
            ]
            .iter()
            .any(|p| t.starts_with(p))
                || t.ends_with("color")
                || t.contains("256color") =>
        {
            Colour::Force
        }
        Some(_) => Colour::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn relevant_flags_are_picked() {
        let a = s(&["-O2", "--config", "x.cfg", "-m32", "-target", "t", "--target=u", "-DX", "--no-default-config"]);
        assert_eq!(
            config_relevant(&a),
            s(&["--config", "x.cfg", "-m32", "-target", "t", "--target=u", "--no-default-config"])
        );
    }

    #[test]
    fn answer_round_trips() {
        let a = Answer {
            dirs: vec![
                (PathBuf::from("/a b"), Some(FileStamp { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: -5 })),
                (PathBuf::from("/c"), None),
            ],
            configs: vec![PathBuf::from("/x/y.cfg")],
        };
        assert_eq!(Answer::decode(&a.encode()), Some(a));
        assert_eq!(Answer::decode(b"garbage"), None);
    }

    #[test]
    fn refused_environment() {
        for var in REFUSED_ENV {
            let env = |v: &str| (v == *var).then(String::new);
            assert!(refuse_env(&env).is_err(), "{var} set (even empty) must be refused");
        }
        assert!(refuse_env(&|_| None).is_ok());
    }

    #[test]
    fn colour_decision() {
        let none: Vec<String> = Vec::new();
        assert_eq!(colour(&none, false, Some("xterm")), Colour::AsIs);
        assert_eq!(colour(&none, true, Some("xterm-256color")), Colour::Force);
        assert_eq!(colour(&none, true, Some("dumb")), Colour::AsIs);
        assert_eq!(colour(&none, true, None), Colour::AsIs);
        assert_eq!(colour(&none, true, Some("weirdterm")), Colour::Unknown);
        assert_eq!(colour(&s(&["-fno-color-diagnostics"]), true, Some("xterm")), Colour::AsIs);
    }
}

//! Argument analysis: a compiler command line becomes either a typed
//! [`BackendInvocation`] or a typed [`NotCacheable`] reason.
//!
//! The rule is "hash everything, and understand enough to know what is *not*
//! in the arguments": every argument goes into the key, so an unfamiliar flag
//! that only changes code generation is safe. What we must recognise are flags
//! that read files (their contents join the key), flags that write outputs we
//! would not restore (refused), flags that change how paths resolve or which
//! tools run (refused), and flags that take the next argument as their value
//! (so that value is never mistaken for an input file).

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a command is run without the cache. Each variant is one stats counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotCacheable {
    /// No `-fthinlto-index=`: a front-end compile, link or anything else.
    NotBackend,
    NoCompileFlag,
    NoInput,
    SeveralInputs,
    NoOutput,
    SeveralOutputs,
    StdinOrStdout,
    /// `-E`, `-S`, `-###`, `-M`, `-fsyntax-only`, `--analyze`, `-print-*`, `-v`.
    NotACompile(String),
    SaveTemps,
    /// The input is not LLVM IR (`-x c`, or a non-`.bc` file without `-x ir`).
    NotIrInput,
    /// A flag writes an output we do not store (`-gsplit-dwarf`, `-ftime-trace`, ...).
    ExtraOutput(String),
    /// A flag whose effect we cannot vouch for (external assembler, working directory, plugin-ish cc1 options).
    UnsupportedOption(String),
    /// A response file, input, shard or imported module that cannot be read.
    Unreadable(String),
    /// The shard is not a bitcode file we can read.
    BadShard,
    /// Module assembly includes a file we cannot resolve.
    UnresolvedAsmInclude(String),
    /// An argument is not valid UTF-8.
    NonUtf8Argument,
}

impl NotCacheable {
    /// The stable counter name used in stats.
    pub fn code(&self) -> &'static str {
        match self {
            NotCacheable::NotBackend => "not_backend",
            NotCacheable::NoCompileFlag => "no_compile_flag",
            NotCacheable::NoInput => "no_input",
            NotCacheable::SeveralInputs => "several_inputs",
            NotCacheable::NoOutput => "no_output",
            NotCacheable::SeveralOutputs => "several_outputs",
            NotCacheable::StdinOrStdout => "stdin_or_stdout",
            NotCacheable::NotACompile(_) => "not_a_compile",
            NotCacheable::SaveTemps => "save_temps",
            NotCacheable::NotIrInput => "not_ir_input",
            NotCacheable::ExtraOutput(_) => "extra_output",
            NotCacheable::UnsupportedOption(_) => "unsupported_option",
            NotCacheable::Unreadable(_) => "unreadable_input",
            NotCacheable::BadShard => "bad_shard",
            NotCacheable::UnresolvedAsmInclude(_) => "unresolved_asm_include",
            NotCacheable::NonUtf8Argument => "non_utf8_argument",
        }
    }
}

impl fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCacheable::NotACompile(s)
            | NotCacheable::ExtraOutput(s)
            | NotCacheable::UnsupportedOption(s)
            | NotCacheable::Unreadable(s)
            | NotCacheable::UnresolvedAsmInclude(s) => write!(f, "{}: {}", self.code(), s),
            _ => f.write_str(self.code()),
        }
    }
}

/// A file a flag makes the backend read, and the flag that named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagFile {
    pub flag: String,
    pub path: PathBuf,
}

/// A cacheable distributed-ThinLTO backend compile.
#[derive(Clone, Debug)]
pub struct BackendInvocation {
    /// The compiler as the user named it (`clang-19`, `/usr/bin/clang`).
    pub compiler: String,
    pub input: PathBuf,
    pub shard: PathBuf,
    pub output: PathBuf,
    /// Every argument after response-file expansion, with the input, shard and
    /// output paths replaced by role markers: their contents are hashed instead.
    pub hashed_args: Vec<String>,
    /// Files named by flags, in command-line order.
    pub flag_files: Vec<FlagFile>,
    /// Directories the integrated assembler searches for `.incbin`/`.include`
    /// after the current directory, in the assembler's order: `-Wa,-I` and
    /// `-Xassembler -I` in command order, then cc1's `-Xclang -I`, then its
    /// `-Xclang -iquote`/`-isystem` (the driver's own `-I` does not reach the
    /// assembler for IR input: measured with clang-19).
    pub asm_search_dirs: Vec<PathBuf>,
    /// The command line after response-file expansion (before any
    /// configuration file's flags are put in front of it).
    pub expanded: Vec<String>,
    /// Response and configuration files read, with their stamps: checked
    /// again after the compile, like every hashed input.
    pub read_files: Vec<ReadFile>,
    /// Configuration files the driver loads (with their `@` inclusions), in
    /// reading order: their contents are in the key.
    pub config_files: Vec<PathBuf>,
}

/// The options that take the following argument as their value.
const SEPARATE_VALUE: &[&str] = &[
    "-o",
    "-x",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-isystem-after",
    "-cxx-isystem",
    "-MF",
    "-MT",
    "-MQ",
    "-mllvm",
    "-Xclang",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-target",
    "-arch",
    "-z",
    "-L",
    "-l",
    "-u",
    "-T",
    "-F",
    "-include-pch",
    "-ivfsoverlay",
    "--param",
    "-A",
    "-e",
    "-Xopenmp-target",
    "-dependency-file",
    "-MJ",
    "-serialize-diagnostics",
    "--serialize-diagnostics",
    "--sysroot",
    "-B",
    "--gcc-toolchain",
    "--config",
    "-working-directory",
    "-aux-triple",
    "-main-file-name",
    "-G",
    "-Xarch_device",
    "-Xarch_host",
    "-Xcuda-fatbinary",
    "-Xcuda-ptxas",
    "-Xoffload-linker",
    "--target",
    "-fmodule-file",
    "-Xanalyzer",
];

/// Joined flags (`-flag=path`) whose value is a file the backend (or the
/// driver) reads. `-fprofile-use=` may name a directory; see [`profile_path`].
const FILE_FLAGS: &[&str] = &[
    "-fprofile-sample-use=",
    "-fauto-profile=",
    "-fprofile-use=",
    "-fprofile-instr-use=",
    "-fprofile-instrument-use-path=",
    "-fprofile-remapping-file=",
    "-fsanitize-ignorelist=",
    "-fsanitize-blacklist=",
    "-fsanitize-system-ignorelist=",
    "-fbasic-block-sections=list=",
    "-fprofile-list=",
    "-fxray-always-instrument=",
    "-fxray-never-instrument=",
    "-fxray-attr-list=",
    "-fmemory-profile-use=",
    "-fpass-plugin=",
    "-fplugin=",
    "-fembed-offload-object=",
];

/// Flags that make the compile write files besides `-o` (or print
/// non-reproducible text). Caching them would drop or fake those outputs.
const EXTRA_OUTPUT_PREFIXES: &[&str] = &[
    // All split-DWARF forms: even `=single` writes the -o name into the object.
    "-gsplit-dwarf",
    "-split-dwarf",
    "-opt-record",
    "-stats-file",
    "-ftest-coverage",
    "--coverage",
    "-fprofile-arcs",
    "-coverage-",
    "-header-include-file",
    "-diagnostic-log-file",
    "-dependency-dot",
    "-fsave-optimization-record",
    "-foptimization-record-file",
    "-ftime-trace",
    "-fstack-usage",
    "-save-stats",
    "--save-stats",
    "-fproc-stat-report",
    "-ftime-report",
    "-fthin-link-bitcode",
    "-MJ",
    "-serialize-diagnostics",
    "--serialize-diagnostics",
    "-fdump-",
    "-fembed-bitcode-marker",
];

/// `-mllvm` option names that are known to name files: their value's contents
/// are hashed. Any other `-mllvm` option whose name suggests a file or an
/// output makes the command uncacheable.
const MLLVM_FILE_OPTIONS: &[&str] = &["-sample-profile-file", "-profile-file", "-import-cutoff-file"];
/// Options whose names look suspicious but that read and write no file.
/// `-use-source-filename-for-promoted-locals` (a boolean) names promoted
/// locals after the source file instead of the module hash; precise
/// invalidation needs it to be cacheable (docs/precise-invalidation.md).
const MLLVM_NOT_FILES: &[&str] = &["-use-source-filename-for-promoted-locals"];
const MLLVM_SUSPICIOUS: &[&str] = &[
    "file",
    "path",
    "output",
    "dir",
    "list",
    "remarks",
    "stats",
    "time-passes",
    "print",
    "replay",
    "dump",
    "csv",
    "yaml",
];

/// A response file that was read, with the stamp it had: checked again after
/// the compile like every hashed input.
pub type ReadFile = (PathBuf, crate::util::FileStamp);

/// Expands `@file` arguments the way clang 19 does on Unix (GNU quoting):
/// a nested `@file` is resolved relative to the *working directory*, not to
/// the file that names it (measured with clang-19: `@sub/outer.rsp` naming
/// `@inner.rsp` reads `./inner.rsp`). Only regular files are read: a FIFO
/// or `<(...)` is refused from its `stat`, never opened (reading it would
/// consume the data clang then misses).
pub fn expand_response_files(args: &[String]) -> Result<Vec<String>, NotCacheable> {
    expand_response_files_tracked(args).map(|(a, _)| a)
}

/// The same, also returning every response file read with its stamp.
pub fn expand_response_files_tracked(args: &[String]) -> Result<(Vec<String>, Vec<ReadFile>), NotCacheable> {
    let mut out = Vec::with_capacity(args.len());
    let mut read = Vec::new();
    expand_into(args, &mut out, &mut read, 0)?;
    Ok((out, read))
}

fn expand_into(
    args: &[String],
    out: &mut Vec<String>,
    read: &mut Vec<ReadFile>,
    depth: usize,
) -> Result<(), NotCacheable> {
    for arg in args {
        let Some(name) = arg.strip_prefix('@') else {
            out.push(arg.clone());
            continue;
        };
        if depth > 20 {
            return Err(NotCacheable::Unreadable(format!("response files nest too deeply at {arg}")));
        }
        let path = PathBuf::from(name);
        let text = read_regular(&path, read)?;
        let text = String::from_utf8(text).map_err(|_| NotCacheable::NonUtf8Argument)?;
        expand_into(&tokenize_gnu(&text), out, read, depth + 1)?;
    }
    Ok(())
}

/// Reads a regular file (refusing anything else before opening it) and
/// records its stamp; the stamp must be the same after reading.
pub fn read_regular(path: &Path, read: &mut Vec<ReadFile>) -> Result<Vec<u8>, NotCacheable> {
    let unreadable = |e: &dyn fmt::Display| NotCacheable::Unreadable(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| unreadable(&e))?;
    if !meta.is_file() {
        return Err(unreadable(&"not a regular file"));
    }
    let file = crate::util::open_raw(path, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| unreadable(&e))?;
    let meta = file.metadata().map_err(|e| unreadable(&e))?;
    if !meta.is_file() {
        return Err(unreadable(&"not a regular file"));
    }
    let stamp = crate::util::FileStamp::of(&meta);
    let data = crate::util::read_sized(&file, stamp.size).map_err(|e| unreadable(&e))?;
    if data.len() as u64 != stamp.size || file.metadata().map(|m| crate::util::FileStamp::of(&m)).ok() != Some(stamp) {
        return Err(unreadable(&"changed while it was read"));
    }
    read.push((path.to_path_buf(), stamp));
    Ok(data)
}

/// LLVM's whitespace for command-line tokenising: exactly these four (not
/// form feed, vertical tab or Unicode spaces, which Rust's `is_whitespace`
/// would also split on).
fn llvm_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// GNU-style tokenisation as LLVM's `TokenizeGNUCommandLine` does it:
/// whitespace separates, single and double quotes group, backslash escapes
/// the next character (inside quotes too), a trailing backslash is literal,
/// and an empty token (`''`) is dropped (measured with clang-19).
pub fn tokenize_gnu(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            cur.push(chars[i + 1]);
            i += 2;
            continue;
        }
        if c == '\'' || c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                cur.push(chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        if llvm_space(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Tokenises a clang configuration file the way LLVM's `tokenizeConfigFile`
/// does: at the start of a logical line (blanks skipped) `#` begins a
/// comment that runs to the line break; a backslash before a line break
/// (LF or CRLF) joins the next line; each logical line is then tokenised
/// with GNU quoting on its own (a quote cannot span lines).
pub fn tokenize_config(text: &str) -> Vec<String> {
    let src: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut cur = 0;
    while cur < src.len() {
        if llvm_space(src[cur]) {
            cur += 1;
            continue;
        }
        if src[cur] == '#' {
            while cur < src.len() && src[cur] != '\n' {
                cur += 1;
            }
            continue;
        }
        let mut line = String::new();
        let mut start = cur;
        while cur < src.len() {
            if src[cur] == '\\' {
                if cur + 1 < src.len() {
                    cur += 1;
                    let crlf = src[cur] == '\r' && src.get(cur + 1) == Some(&'\n');
                    if src[cur] == '\n' || crlf {
                        line.extend(&src[start..cur - 1]);
                        if crlf {
                            cur += 1;
                        }
                        start = cur + 1;
                    }
                }
            } else if src[cur] == '\n' {
                break;
            }
            cur += 1;
        }
        line.extend(&src[start.min(cur)..cur]);
        out.extend(tokenize_gnu(&line));
    }
    out
}

/// Cheap test used before anything else: could this command be a backend at
/// all? Front-end compiles answer `false` after one pass over argv, which is
/// what keeps `CC="ltocache clang"` pass-through under a millisecond.
pub fn may_be_backend(args: &[String]) -> bool {
    args.iter().any(|a| a.starts_with("-fthinlto-index=") || a.starts_with('@'))
}

/// Analyses `compiler args...` (already response-file expanded).
pub fn analyze(compiler: &str, args: &[String]) -> Result<BackendInvocation, NotCacheable> {
    let mut shard: Option<PathBuf> = None;
    let mut outputs: Vec<PathBuf> = Vec::new();
    let mut inputs: Vec<(PathBuf, bool)> = Vec::new(); // (path, declared `-x ir`)
    let mut compile_only = false;
    let mut lang: Option<String> = None;
    let mut flag_files = Vec::new();
    let mut asm_search_dirs = Vec::new();
    // cc1 search directories from `-Xclang -I...` (angled, first) and
    // `-Xclang -iquote/-isystem...` (after): cc1 passes its user entries to
    // the integrated assembler after the -Wa ones.
    let mut cc1_dirs: (Vec<PathBuf>, Vec<PathBuf>) = (Vec::new(), Vec::new());
    let mut hashed: Vec<String> = Vec::with_capacity(args.len());
    // Indices in `hashed` that hold the input path, fixed up once we know it.
    let mut input_slots: Vec<usize> = Vec::new();

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let next = args.get(i + 1).map(String::as_str);
        i += 1;

        if arg == "-" {
            return Err(NotCacheable::StdinOrStdout);
        }
        if !arg.starts_with('-') || arg.len() == 1 {
            input_slots.push(hashed.len());
            hashed.push(String::new());
            inputs.push((PathBuf::from(arg), lang.as_deref() == Some("ir")));
            continue;
        }
        refuse_flag(arg)?;

        // Separate-value options: consume the value together with the flag.
        if SEPARATE_VALUE.contains(&arg) {
            let Some(value) = next else {
                return Err(NotCacheable::UnsupportedOption(format!("{arg} without a value")));
            };
            i += 1;
            match arg {
                "-o" => {
                    outputs.push(PathBuf::from(value));
                    hashed.push("-o".into());
                    hashed.push("<output>".into());
                    continue;
                }
                "-x" => lang = Some(value.to_string()),
                "-Xassembler" => {
                    let mut extra = Vec::new();
                    let used = assembler_option(value, &args[i..], &mut asm_search_dirs, &mut extra)?;
                    i += used;
                    hashed.push(arg.into());
                    hashed.push(value.into());
                    hashed.extend(extra);
                    continue;
                }
                "-target" | "--target" => refuse_target(value)?,
                "-working-directory" => return Err(NotCacheable::UnsupportedOption(arg.into())),
                "-mllvm" => mllvm_option(value, &mut flag_files)?,
                "-Xclang" => {
                    // A cc1 option: the same rules as a driver option, plus
                    // `-load <plugin>` whose plugin is hashed.
                    refuse_flag(value)?;
                    refuse_cc1_flag(value)?;
                    cc1_search_dir(value, args.get(i), args.get(i + 1), &mut cc1_dirs);
                    if value.starts_with("-emit-") {
                        return Err(NotCacheable::NotACompile(format!("-Xclang {value}")));
                    }
                    if value == "-mllvm" {
                        // `-Xclang -mllvm -Xclang <option>`: the same rules as `-mllvm <option>`.
                        if let (Some(x), Some(opt)) = (args.get(i), args.get(i + 1)) {
                            if x == "-Xclang" {
                                mllvm_option(opt, &mut flag_files)?;
                            }
                        }
                    }
                    if value == "-load" || value == "-plugin" || value == "-add-plugin" {
                        if value == "-load" {
                            match (args.get(i), args.get(i + 1)) {
                                (Some(x), Some(p)) if x == "-Xclang" => {
                                    flag_files.push(FlagFile { flag: "-Xclang -load".into(), path: PathBuf::from(p) });
                                    hashed.push(arg.into());
                                    hashed.push(value.into());
                                    hashed.push(x.clone());
                                    hashed.push(p.clone());
                                    i += 2;
                                    continue;
                                }
                                _ => return Err(NotCacheable::UnsupportedOption("-Xclang -load".into())),
                            }
                        }
                    } else if let Some(f) = file_flag(value) {
                        flag_files.push(f);
                    } else if value == "-working-directory" || value.starts_with("-fno-integrated-as") {
                        return Err(NotCacheable::UnsupportedOption(format!("-Xclang {value}")));
                    }
                }
                _ => {}
            }
            hashed.push(arg.into());
            hashed.push(value.into());
            continue;
        }

        if arg == "-c" {
            compile_only = true;
        } else if let Some(path) = arg.strip_prefix("-fthinlto-index=") {
            if shard.is_some() {
                return Err(NotCacheable::UnsupportedOption("several -fthinlto-index=".into()));
            }
            shard = Some(PathBuf::from(path));
            hashed.push("-fthinlto-index=<shard>".into());
            continue;
        } else if let Some(out) = arg.strip_prefix("-o") {
            // `-ofile`; long options starting with -o are not clang driver flags.
            outputs.push(PathBuf::from(out));
            hashed.push("-o<output>".into());
            continue;
        } else if let Some(l) = arg.strip_prefix("-x") {
            lang = Some(l.to_string());
        } else if let Some(list) = arg.strip_prefix("-Wa,") {
            // `-Wa,-Idir`, `-Wa,-I,dir` and `-Wa,-I -Wa,dir`: the integrated
            // assembler's search path (driver -I does not reach it for IR).
            let mut parts: Vec<&str> = list.split(',').collect();
            if parts.last() == Some(&"-I") {
                if let Some(nx) = args.get(i).and_then(|n| n.strip_prefix("-Wa,")) {
                    parts.pop();
                    parts.push("-I");
                    parts.extend(nx.split(','));
                    hashed.push(arg.into());
                    hashed.push(args[i].clone());
                    i += 1;
                    wa_dirs(&parts, &mut asm_search_dirs)?;
                    continue;
                }
            }
            wa_dirs(&parts, &mut asm_search_dirs)?;
        } else if arg == "-fprofile-use" || arg == "-fprofile-instr-use" {
            // Without a value clang reads ./default.profdata.
            flag_files.push(FlagFile { flag: format!("{arg}="), path: PathBuf::from("default.profdata") });
        } else if let Some(f) = file_flag(arg) {
            flag_files.push(f);
        } else if let Some(v) = arg.strip_prefix("-mllvm=") {
            mllvm_option(v, &mut flag_files)?;
        }
        hashed.push(arg.into());
    }

    if shard.is_none() {
        return Err(NotCacheable::NotBackend);
    }
    if !compile_only {
        return Err(NotCacheable::NoCompileFlag);
    }
    let (input, declared_ir) = match inputs.len() {
        0 => return Err(NotCacheable::NoInput),
        1 => inputs.pop().unwrap(),
        _ => return Err(NotCacheable::SeveralInputs),
    };
    if !declared_ir && input.extension().is_none_or(|e| e != "bc") && !object_named_bitcode(&input) {
        return Err(NotCacheable::NotIrInput);
    }
    let output = match outputs.len() {
        0 => return Err(NotCacheable::NoOutput),
        1 => outputs.pop().unwrap(),
        _ => return Err(NotCacheable::SeveralOutputs),
    };
    if output.as_os_str() == "-" {
        return Err(NotCacheable::StdinOrStdout);
    }
    for slot in input_slots {
        hashed[slot] = "<input>".into();
    }
    asm_search_dirs.extend(cc1_dirs.0);
    asm_search_dirs.extend(cc1_dirs.1);
    if let Some(name) = Path::new(compiler).file_name().and_then(|n| n.to_str()) {
        refuse_compiler_name(name)?;
    }
    Ok(BackendInvocation {
        compiler: compiler.to_string(),
        input,
        shard: shard.unwrap(),
        output,
        hashed_args: hashed,
        flag_files,
        asm_search_dirs,
        expanded: args.to_vec(),
        read_files: Vec::new(),
        config_files: Vec::new(),
    })
}

/// An input clang takes as an object file (`.o`, `.obj`, no extension) that
/// holds bitcode: with `-fthinlto-index=` clang compiles it as IR, which is
/// how lld's DTLTO names its jobs' inputs (no `-x ir`). Decided by content
/// (raw or wrapper bitcode magic), not by name: a `.c` file is compiled as C
/// whatever it holds, so only object-like names qualify.
fn object_named_bitcode(input: &Path) -> bool {
    use std::io::Read;
    if !input.extension().is_none_or(|e| e == "o" || e == "obj") {
        return false;
    }
    // Never open what is not a regular file: a FIFO would block here (or,
    // opened and closed, kill its writer).
    if !std::fs::metadata(input).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    // `open_raw`: one `openat` (musl's `open` adds an `fcntl` for O_CLOEXEC).
    crate::util::open_raw(input, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && crate::key::bitcode::is_bitcode(&magic)
}

/// Flags we refuse outright: they do not compile, write other outputs, or
/// bring in tools and directories the key cannot see.
fn refuse_flag(arg: &str) -> Result<(), NotCacheable> {
    // Macros, include directories and warnings (most of a kernel command
    // line) match none of the spellings below, none of which starts with
    // `-D`, `-I`, `-U` or `-W`: decided here instead of by ~30 prefix tests
    // per argument. (The `vfsoverlay` test below is about `-ivfsoverlay`
    // and `-Xclang -ivfsoverlay`; `-Wa,` lists are checked by the assembler
    // search-path analysis.)
    if matches!(arg.as_bytes(), [b'-', b'D' | b'I' | b'U' | b'W', ..]) {
        return Ok(());
    }
    match arg {
        "-E" | "-S" | "-###" | "-M" | "-MM" | "-fsyntax-only" | "--analyze" | "-v" | "--verbose" | "-fdriver-only"
        | "-emit-ast" | "--precompile" => return Err(NotCacheable::NotACompile(arg.into())),
        "-fno-integrated-as" | "-no-integrated-as" => return Err(NotCacheable::UnsupportedOption(arg.into())),
        _ => {}
    }
    if arg.starts_with("-save-temps") || arg.starts_with("--save-temps") {
        return Err(NotCacheable::SaveTemps);
    }
    // Long aliases of -o and -x, and wrappers that hide a driver option
    // from this analysis (`-Xarch_x86_64 -ftime-trace`).
    if arg.starts_with("--output")
        || arg.starts_with("--language")
        || arg.starts_with("-Xarch_")
        || arg.starts_with("-Xopenmp-target")
        || arg.starts_with("--driver-mode")
    {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    // Modes and targets not tested here: clang-cl (Windows quoting, CL and
    // _CL_ variables), Darwin (deployment-target variables), COFF/CodeView.
    if arg.starts_with("--target=") || arg.starts_with("-target=") {
        refuse_target(arg.split_once('=').map(|x| x.1).unwrap_or(""))?;
    }
    if arg.starts_with("-gcodeview") || arg == "-arch" || arg.starts_with("-mmacos") || arg.starts_with("-mios") {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    // The host's CPU decides the code and is not in the key.
    if (arg.starts_with("-march=") || arg.starts_with("-mcpu=") || arg.starts_with("-mtune="))
        && arg.ends_with("=native")
    {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    // Written in place (mode and hard links kept): a hit replaces the file.
    if arg == "-fno-temp-file" {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    // The command line (with the paths the key replaces by role markers)
    // reaches the object: embedded bitcode's command-line section, the
    // recorded switches.
    if (arg.starts_with("-fembed-bitcode") && arg != "-fembed-bitcode=off")
        || arg == "-frecord-command-line"
        || arg == "-frecord-gcc-switches"
        || arg == "-grecord-command-line"
        || arg == "-grecord-gcc-switches"
    {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    if arg.starts_with("-print-") || arg.starts_with("--print-") || arg.starts_with("-dump") {
        return Err(NotCacheable::NotACompile(arg.into()));
    }
    if arg.starts_with("-working-directory") || arg.contains("vfsoverlay") || arg.starts_with("--rsp-quoting") {
        return Err(NotCacheable::UnsupportedOption(arg.into()));
    }
    if EXTRA_OUTPUT_PREFIXES.iter().any(|p| arg.starts_with(p)) {
        return Err(NotCacheable::ExtraOutput(arg.into()));
    }
    Ok(())
}

/// cc1 options (after `-Xclang`) that write files or change what is
/// compiled, beyond the driver spellings [`refuse_flag`] knows.
fn refuse_cc1_flag(value: &str) -> Result<(), NotCacheable> {
    const CC1_OUTPUTS: &[&str] = &[
        "-serialize-diagnostic-file",
        "-stack-usage-file",
        "-dependency-file",
        "-module-dependency-dir",
        "-header-include",
        "-diagnostic-log-file",
        "-dwarf-debug-flags",
        "-record-command-line",
        "-split-dwarf",
        "-fembed-bitcode",
        "-embed-bitcode",
        "-ftime-report",
        "-print-stats",
        "-fdump-record-layouts",
    ];
    if CC1_OUTPUTS.iter().any(|p| value.starts_with(p)) {
        return Err(NotCacheable::ExtraOutput(format!("-Xclang {value}")));
    }
    // cc1's own output, input language, shard and working directory.
    if value.starts_with("-o")
        || value == "-x"
        || value.starts_with("-fthinlto-index")
        || value.starts_with("-working-directory")
    {
        return Err(NotCacheable::UnsupportedOption(format!("-Xclang {value}")));
    }
    if value.starts_with("-triple") || value == "native" {
        return Err(NotCacheable::UnsupportedOption(format!("-Xclang {value}")));
    }
    Ok(())
}

/// `-Xclang -I dir` / `-Xclang -Idir` (angled) and `-Xclang -iquote` /
/// `-isystem` (after them): directories cc1 hands to the integrated assembler.
fn cc1_search_dir(value: &str, x: Option<&String>, next: Option<&String>, dirs: &mut (Vec<PathBuf>, Vec<PathBuf>)) {
    for (flag, angled) in [("-I", true), ("-iquote", false), ("-isystem", false)] {
        let Some(rest) = value.strip_prefix(flag) else { continue };
        let dir = if rest.is_empty() {
            match (x, next) {
                (Some(x), Some(d)) if x == "-Xclang" => d.clone(),
                _ => return,
            }
        } else if flag == "-I" {
            rest.to_string()
        } else {
            continue;
        };
        let list = if angled { &mut dirs.0 } else { &mut dirs.1 };
        list.push(PathBuf::from(dir));
        return;
    }
}

/// `-Xassembler -Idir`, or `-Xassembler -I -Xassembler dir` (the second
/// pair is consumed here and hashed by the caller's `extra`).
fn assembler_option(
    value: &str,
    rest: &[String],
    dirs: &mut Vec<PathBuf>,
    extra: &mut Vec<String>,
) -> Result<usize, NotCacheable> {
    if value == "-I" {
        return match rest {
            [x, d, ..] if x == "-Xassembler" => {
                dirs.push(PathBuf::from(d));
                extra.extend([x.clone(), d.clone()]);
                Ok(2)
            }
            _ => Err(NotCacheable::UnsupportedOption("-Xassembler -I without a directory".into())),
        };
    }
    wa_dirs(&[value], dirs)?;
    Ok(0)
}

/// The `-I` directories in one `-Wa,` list (`-Idir` or `-I,dir`).
fn wa_dirs(parts: &[&str], dirs: &mut Vec<PathBuf>) -> Result<(), NotCacheable> {
    let mut it = parts.iter();
    while let Some(p) = it.next() {
        if *p == "-I" {
            match it.next() {
                Some(d) => dirs.push(PathBuf::from(d)),
                None => return Err(NotCacheable::UnsupportedOption("-Wa,-I without a directory".into())),
            }
        } else if let Some(d) = p.strip_prefix("-I") {
            dirs.push(PathBuf::from(d));
        } else if p.starts_with("-o") || p.starts_with("--MD") || p.starts_with("-MD") {
            return Err(NotCacheable::ExtraOutput(format!("-Wa,{p}")));
        }
    }
    Ok(())
}

/// Targets whose driver behaviour is not tested here.
fn refuse_target(triple: &str) -> Result<(), NotCacheable> {
    const UNTESTED: &[&str] =
        &["apple", "darwin", "macos", "ios", "tvos", "watchos", "windows", "win32", "msvc", "mingw", "cygwin", "uefi"];
    let t = triple.to_ascii_lowercase();
    if UNTESTED.iter().any(|u| t.contains(u)) {
        return Err(NotCacheable::UnsupportedOption(format!("target {triple}")));
    }
    Ok(())
}

/// The driver takes its mode and a default target from its own name:
/// `clang-cl` (Windows quoting and options) and Darwin/Windows-prefixed
/// names are refused.
fn refuse_compiler_name(name: &str) -> Result<(), NotCacheable> {
    let lower = name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".exe").unwrap_or(&lower);
    if stem == "cl" || stem.ends_with("clang-cl") || stem.contains("clang-cl-") {
        return Err(NotCacheable::UnsupportedOption(format!("driver mode of {name}")));
    }
    refuse_target(stem)
}

/// A joined flag naming a file, if `arg` is one.
fn file_flag(arg: &str) -> Option<FlagFile> {
    let prefix = FILE_FLAGS.iter().find(|p| arg.starts_with(**p))?;
    let value = &arg[prefix.len()..];
    if value.is_empty() {
        return None;
    }
    Some(FlagFile { flag: prefix.to_string(), path: PathBuf::from(value) })
}

fn mllvm_option(value: &str, flag_files: &mut Vec<FlagFile>) -> Result<(), NotCacheable> {
    let (name, val) = value.split_once('=').unwrap_or((value, ""));
    if MLLVM_FILE_OPTIONS.contains(&name) {
        flag_files.push(FlagFile { flag: format!("-mllvm {name}="), path: PathBuf::from(val) });
        return Ok(());
    }
    let lname = name.to_ascii_lowercase();
    if MLLVM_NOT_FILES.contains(&name) {
        return Ok(());
    }
    if MLLVM_SUSPICIOUS.iter().any(|s| lname.contains(s)) {
        return Err(NotCacheable::UnsupportedOption(format!("-mllvm {value}")));
    }
    // Any other option whose value names an existing file may read it (LLVM
    // has hundreds of options; their names do not say): hash its contents.
    if !val.is_empty() && Path::new(val).is_file() {
        flag_files.push(FlagFile { flag: format!("-mllvm {name}="), path: PathBuf::from(val) });
    }
    Ok(())
}

/// A clang configuration file and every file it includes with `@file`
/// (resolved relative to the including file), in reading order. Files that
/// cannot be read are listed too: hashing them fails, which makes the
/// command uncacheable rather than risky.
pub fn config_closure(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() && out.len() < 64 {
        let cur = out[i].clone();
        i += 1;
        let Ok(text) = std::fs::read_to_string(&cur) else { continue };
        let text: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        for tok in tokenize_gnu(&text) {
            if let Some(name) = tok.strip_prefix('@') {
                let p = Path::new(name);
                let p = if p.is_relative() { cur.parent().unwrap_or(Path::new(".")).join(p) } else { p.to_path_buf() };
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Rewrites absolute paths under `base_dir` inside hashed arguments to paths
/// relative to `cwd` (ccache's `base_dir`): `-I/home/a/linux/include` hashes
/// as `-I../include` from `/home/a/linux/build`, as it would in any checkout.
pub fn relocate_args(args: &mut [String], base_dir: &Path, cwd: &Path) {
    let Some(base) = base_prefix(base_dir) else { return };
    let base = base.as_str();
    for arg in args.iter_mut() {
        let Some(pos) = arg.find(base) else { continue };
        let rest = &arg[pos + base.len()..];
        // Only a whole path component: `/src` must not match `/srcfoo`.
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let end = rest.find([' ', ',', ':', '=']).map(|i| pos + base.len() + i).unwrap_or(arg.len());
        let abs = Path::new(&arg[pos..end]);
        let rel = relative_to(abs, cwd);
        *arg = format!("{}{}{}", &arg[..pos], rel.display(), &arg[end..]);
    }
}

/// The text [`relocate_args`] looks for: `base_dir` without a trailing
/// slash, when it is absolute and not `/` (otherwise nothing is relocated).
/// Every argument it rewrites contains this text.
pub fn base_prefix(base_dir: &Path) -> Option<String> {
    let base = base_dir.to_string_lossy();
    let base = base.trim_end_matches('/');
    (!base.is_empty() && base_dir.is_absolute()).then(|| base.to_string())
}

/// `target` expressed relative to `from` (both absolute).
pub fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Where clang actually reads a `-fprofile-use=` style path: a directory means
/// `default.profdata` inside it.
pub fn profile_path(flag: &FlagFile) -> PathBuf {
    if (flag.flag == "-fprofile-use=" || flag.flag == "-fprofile-instr-use=") && flag.path.is_dir() {
        flag.path.join("default.profdata")
    } else {
        flag.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn backend(extra: &[&str]) -> Result<BackendInvocation, NotCacheable> {
        let mut a = s(&["-O2", "-c", "-fthinlto-index=a.o.thinlto.bc", "-x", "ir", "a.o", "-o", "a.final_o"]);
        a.extend(s(extra));
        analyze("clang-19", &a)
    }

    #[test]
    fn recognises_a_backend() {
        let b = backend(&[]).unwrap();
        assert_eq!(b.input, PathBuf::from("a.o"));
        assert_eq!(b.shard, PathBuf::from("a.o.thinlto.bc"));
        assert_eq!(b.output, PathBuf::from("a.final_o"));
        assert_eq!(
            b.hashed_args,
            s(&["-O2", "-c", "-fthinlto-index=<shard>", "-x", "ir", "<input>", "-o", "<output>"])
        );
    }

    #[test]
    fn typed_reasons() {
        assert_eq!(analyze("clang", &s(&["-c", "a.c", "-o", "a.o"])).unwrap_err(), NotCacheable::NotBackend);
        assert_eq!(backend(&["-S"]).unwrap_err().code(), "not_a_compile");
        assert_eq!(backend(&["b.o"]).unwrap_err(), NotCacheable::SeveralInputs);
        assert_eq!(backend(&["-o", "x"]).unwrap_err(), NotCacheable::SeveralOutputs);
        assert_eq!(backend(&["-save-temps"]).unwrap_err(), NotCacheable::SaveTemps);
        assert_eq!(backend(&["-gsplit-dwarf"]).unwrap_err().code(), "extra_output");
        assert_eq!(backend(&["-gsplit-dwarf=single"]).unwrap_err().code(), "extra_output");
        assert_eq!(
            backend(&["-Xclang", "-split-dwarf-output", "-Xclang", "x.dwo"]).unwrap_err().code(),
            "extra_output"
        );
        assert_eq!(backend(&["-Xclang", "-opt-record-file", "-Xclang", "x.yaml"]).unwrap_err().code(), "extra_output");
        assert_eq!(backend(&["-Xclang", "-emit-llvm-only"]).unwrap_err().code(), "not_a_compile");
        assert_eq!(backend(&["--coverage"]).unwrap_err().code(), "extra_output");
        assert_eq!(backend(&["-Xclang", "-ivfsoverlayov.yaml"]).unwrap_err().code(), "unsupported_option");
        assert_eq!(backend(&["-ivfsoverlay", "ov.yaml"]).unwrap_err().code(), "unsupported_option");
        assert_eq!(
            backend(&["-Xclang", "-mllvm", "-Xclang", "-forceattrs-csv-path=x"]).unwrap_err().code(),
            "unsupported_option"
        );
        assert_eq!(backend(&["-mllvm", "-cgscc-inline-replay=r.txt"]).unwrap_err().code(), "unsupported_option");
        assert_eq!(backend(&["-fno-integrated-as"]).unwrap_err().code(), "unsupported_option");
        assert_eq!(backend(&["-mllvm", "-pass-remarks-output=x"]).unwrap_err().code(), "unsupported_option");
        assert!(backend(&["-mllvm", "-use-source-filename-for-promoted-locals"]).is_ok());
        let no_x = analyze("clang", &s(&["-c", "-fthinlto-index=a.o.thinlto.bc", "/nonexistent/a.o", "-o", "x"]));
        assert_eq!(no_x.unwrap_err(), NotCacheable::NotIrInput);
        let stdin = analyze("clang", &s(&["-c", "-fthinlto-index=s", "-x", "ir", "-", "-o", "x"]));
        assert_eq!(stdin.unwrap_err(), NotCacheable::StdinOrStdout);
    }

    #[test]
    fn bitcode_is_recognised_by_content_in_object_named_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let raw: &[u8] = &[b'B', b'C', 0xC0, 0xDE, 0x35, 0x14];
        let wrapped: &[u8] = &[0xDE, 0xC0, 0x17, 0x0B, 0, 0, 0, 0];
        let cases: &[(&str, &[u8], bool)] = &[
            ("a.o", raw, true),
            ("w.o", wrapped, true),
            ("lib.a(b.o at 88).2.6451.o", raw, true),
            ("noext", raw, true),
            ("a.obj", raw, true),
            ("elf.o", b"\x7fELF\x02\x01", false),
            ("short.o", b"BC", false),
            ("src.c", raw, false),
            ("text.ll", raw, false),
        ];
        for (name, data, cacheable) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            let r = analyze("clang", &s(&["-c", "-fthinlto-index=s", p.to_str().unwrap(), "-o", "x"]));
            match (r, cacheable) {
                (Ok(b), true) => assert_eq!(b.input, p),
                (Err(e), false) => assert_eq!(e, NotCacheable::NotIrInput, "{name}"),
                (r, _) => panic!("{name}: {:?}", r.map(|b| b.input)),
            }
        }
    }

    #[test]
    fn separate_values_are_not_inputs() {
        let b = backend(&["-I", "include", "-D", "X=1", "-MF", "dep.d", "-mllvm", "-inline-threshold=10"]).unwrap();
        assert_eq!(b.input, PathBuf::from("a.o"));
        // The driver's -I does not reach the assembler for IR input.
        assert!(b.asm_search_dirs.is_empty());
    }

    #[test]
    fn assembler_search_dirs_in_clangs_order() {
        let b = backend(&[
            "-Xclang",
            "-iquote",
            "-Xclang",
            "q",
            "-Xclang",
            "-Ic1",
            "-Wa,-Iw1,-I,w2",
            "-Xassembler",
            "-Ix1",
            "-Xassembler",
            "-I",
            "-Xassembler",
            "x2",
            "-Wa,-I",
            "-Wa,w3",
            "-Xclang",
            "-I",
            "-Xclang",
            "c2",
            "-I",
            "drv",
        ])
        .unwrap();
        let dirs: Vec<_> = b.asm_search_dirs.iter().map(|d| d.to_str().unwrap().to_string()).collect();
        assert_eq!(dirs, s(&["w1", "w2", "x1", "x2", "w3", "c1", "c2", "q"]));
        assert_eq!(b.input, PathBuf::from("a.o"));
    }

    #[test]
    fn every_spelling_of_a_refused_flag() {
        for v in [
            &["--save-temps"][..],
            &["--save-temps=obj"],
            &["--save-stats"],
            &["--save-stats=obj"],
            &["-Xclang", "-serialize-diagnostic-file", "-Xclang", "d.dia"],
            &["-Xclang", "-stack-usage-file", "-Xclang", "su"],
            &["-Xclang", "-o", "-Xclang", "other.o"],
            &["-Xclang", "-ofoo"],
            &["-Xclang", "-fthinlto-index=x"],
            &["-Xclang", "-dwarf-debug-flags", "-Xclang", "x"],
            &["-Xclang", "-ftime-trace=x.json"],
            &["-Xclang", "-header-include-file", "-Xclang", "h"],
            &["--output=x.o"],
            &["--output", "x.o"],
            &["--language=ir"],
            &["-Xarch_x86_64", "-ftime-trace"],
            &["-Xopenmp-target", "-ftime-trace"],
            &["--driver-mode=cl"],
            &["--target=x86_64-apple-darwin"],
            &["-target", "x86_64-pc-windows-msvc"],
            &["-gcodeview"],
            &["-fno-temp-file"],
            &["-fembed-bitcode"],
            &["-fembed-bitcode=all"],
            &["-frecord-command-line"],
            &["-grecord-gcc-switches"],
            &["-Wa,-o,x"],
            &["-march=native"],
            &["-mtune=native"],
            &["-Xclang", "-target-cpu", "-Xclang", "native"],
        ] {
            assert!(backend(v).is_err(), "{v:?} must be refused");
        }
        assert!(backend(&["-fembed-bitcode=off", "--target=x86_64-pc-linux-gnu", "-Wa,--noexecstack"]).is_ok());
        assert!(analyze("clang-cl", &s(&["-c", "-fthinlto-index=s", "-x", "ir", "a.o", "-o", "x"])).is_err());
        assert!(analyze(
            "/opt/x86_64-apple-darwin-clang",
            &s(&["-c", "-fthinlto-index=s", "-x", "ir", "a.o", "-o", "x"])
        )
        .is_err());
    }

    #[test]
    fn tokenizer_matches_clang_19() {
        // Measured with clang-19: form feed, vertical tab and no-break space
        // are not separators; '' is no token; a trailing backslash is kept;
        // a backslash escapes inside single quotes too.
        assert_eq!(tokenize_gnu("-DA\u{c}-DB"), s(&["-DA\u{c}-DB"]));
        assert_eq!(tokenize_gnu("-DA\u{b}-DB"), s(&["-DA\u{b}-DB"]));
        assert_eq!(tokenize_gnu("-DA\u{a0}-DB"), s(&["-DA\u{a0}-DB"]));
        assert_eq!(tokenize_gnu("-DA '' -DB"), s(&["-DA", "-DB"]));
        assert_eq!(tokenize_gnu("-DA\\"), s(&["-DA\\"]));
        assert_eq!(tokenize_gnu("-D'A\\'B'"), s(&["-DA'B"]));
        assert_eq!(tokenize_gnu("-DA\"B C\"D\r\n\t-x"), s(&["-DAB CD", "-x"]));
    }

    #[test]
    fn config_tokenizer_matches_clang_19() {
        assert_eq!(tokenize_config("-DHEAD\n# c -DNO\n  # c2\n-DX=a\\\n b\n"), s(&["-DHEAD", "-DX=a", "b"]));
        // A continued line is one line even when the next starts with '#'.
        assert_eq!(tokenize_config("-DA\\\n#B\n-DC"), s(&["-DA#B", "-DC"]));
        // A quote does not span lines.
        assert_eq!(tokenize_config("'-DA\n-DB"), s(&["-DA", "-DB"]));
        assert_eq!(tokenize_config("-DA\\\r\n-DB\r\n"), s(&["-DA-DB"]));
    }

    #[test]
    fn a_fifo_response_file_is_refused_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("args.rsp");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening it for reading would block (no writer): refusing from the
        // stat returns at once.
        let r = expand_response_files(&[format!("@{}", fifo.display())]);
        assert_eq!(r.unwrap_err().code(), "unreadable_input");
    }

    #[test]
    fn file_flags_are_collected() {
        let b = backend(&["-fprofile-sample-use=p.prof", "-fsanitize-ignorelist=ign.txt"]).unwrap();
        let paths: Vec<_> = b.flag_files.iter().map(|f| f.path.to_str().unwrap().to_string()).collect();
        assert_eq!(paths, s(&["p.prof", "ign.txt"]));
        let b = backend(&["-fauto-profile=a.prof", "-fprofile-use"]).unwrap();
        let paths: Vec<_> = b.flag_files.iter().map(|f| f.path.to_str().unwrap().to_string()).collect();
        assert_eq!(paths, s(&["a.prof", "default.profdata"]));
    }

    #[test]
    fn base_dir_makes_paths_relative() {
        let mut a = s(&["-I/home/a/src/include", "-fprofile-use=/home/a/src/p.prof", "-I/home/a/srcx", "-O2"]);
        relocate_args(&mut a, Path::new("/home/a/src"), Path::new("/home/a/src/build"));
        assert_eq!(a, s(&["-I../include", "-fprofile-use=../p.prof", "-I/home/a/srcx", "-O2"]));
        assert_eq!(relative_to(Path::new("/a/b"), Path::new("/a/b")), PathBuf::from("."));
    }

    #[test]
    fn gnu_tokenizer_handles_quotes_and_escapes() {
        assert_eq!(tokenize_gnu("a 'b c' \"d\\\"e\" f\\ g\n"), s(&["a", "b c", "d\"e", "f g"]));
    }
}

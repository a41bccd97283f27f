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
    /// after the current directory (clang passes its -I style paths on).
    pub asm_search_dirs: Vec<PathBuf>,
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
    "--config=",
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

/// Expands `@file` arguments the way clang does on Unix: GNU quoting, nested
/// files resolved relative to the file that names them.
pub fn expand_response_files(args: &[String]) -> Result<Vec<String>, NotCacheable> {
    let mut out = Vec::with_capacity(args.len());
    expand_into(args, None, &mut out, 0)?;
    Ok(out)
}

fn expand_into(args: &[String], base: Option<&Path>, out: &mut Vec<String>, depth: usize) -> Result<(), NotCacheable> {
    for arg in args {
        let Some(name) = arg.strip_prefix('@') else {
            out.push(arg.clone());
            continue;
        };
        if depth > 20 {
            return Err(NotCacheable::Unreadable(format!("response files nest too deeply at {arg}")));
        }
        let path = match base {
            Some(dir) if Path::new(name).is_relative() => dir.join(name),
            _ => PathBuf::from(name),
        };
        let text = std::fs::read(&path).map_err(|e| NotCacheable::Unreadable(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8(text).map_err(|_| NotCacheable::NonUtf8Argument)?;
        let inner = tokenize_gnu(&text);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        expand_into(&inner, Some(&dir), out, depth + 1)?;
    }
    Ok(())
}

/// GNU-style tokenisation of a response file: whitespace separates, single
/// and double quotes group, backslash escapes the next character.
pub fn tokenize_gnu(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_token = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_token = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if in_token {
        out.push(cur);
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
                "-I" | "-iquote" | "-isystem" => asm_search_dirs.push(PathBuf::from(value)),
                "--config" => flag_files.push(FlagFile { flag: arg.into(), path: PathBuf::from(value) }),
                "-working-directory" => return Err(NotCacheable::UnsupportedOption(arg.into())),
                "-mllvm" => mllvm_option(value, &mut flag_files)?,
                "-Xclang" => {
                    // A cc1 option: the same rules as a driver option, plus
                    // `-load <plugin>` whose plugin is hashed.
                    refuse_flag(value)?;
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
        } else if let Some(d) = arg.strip_prefix("-I") {
            asm_search_dirs.push(PathBuf::from(d));
        } else if let Some(d) = arg.strip_prefix("-iquote").or_else(|| arg.strip_prefix("-isystem")) {
            if !d.is_empty() && !d.starts_with('-') {
                asm_search_dirs.push(PathBuf::from(d));
            }
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
    Ok(BackendInvocation {
        compiler: compiler.to_string(),
        input,
        shard: shard.unwrap(),
        output,
        hashed_args: hashed,
        flag_files,
        asm_search_dirs,
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
    let mut magic = [0u8; 4];
    std::fs::File::open(input).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && crate::bitcode::is_bitcode(&magic)
}

/// Flags we refuse outright: they do not compile, write other outputs, or
/// bring in tools and directories the key cannot see.
fn refuse_flag(arg: &str) -> Result<(), NotCacheable> {
    match arg {
        "-E" | "-S" | "-###" | "-M" | "-MM" | "-fsyntax-only" | "--analyze" | "-v" | "--verbose" | "-fdriver-only"
        | "-emit-ast" | "--precompile" => return Err(NotCacheable::NotACompile(arg.into())),
        "-fno-integrated-as" | "-no-integrated-as" => return Err(NotCacheable::UnsupportedOption(arg.into())),
        _ => {}
    }
    if arg.starts_with("-save-temps") {
        return Err(NotCacheable::SaveTemps);
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
    let base = base_dir.to_string_lossy();
    let base = base.trim_end_matches('/');
    if base.is_empty() || !base_dir.is_absolute() {
        return;
    }
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
        assert_eq!(b.asm_search_dirs, vec![PathBuf::from("include")]);
    }

    #[test]
    fn file_flags_are_collected() {
        let b =
            backend(&["-fprofile-sample-use=p.prof", "-fsanitize-ignorelist=ign.txt", "--config", "x.cfg"]).unwrap();
        let paths: Vec<_> = b.flag_files.iter().map(|f| f.path.to_str().unwrap().to_string()).collect();
        assert_eq!(paths, s(&["p.prof", "ign.txt", "x.cfg"]));
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

//! The strace audit (issue 11, item 8): run a backend under
//! `strace -f -e trace=open,openat,execve` and hold every file clang opened
//! against the key: each must be hashed (the key's inputs, the compiler's
//! identity) or be on the documented list of the compiler's own files
//! (`compiler::COMPILERS_OWN_FILES`), or be the output it writes.

mod util;

use ltocache::key::args;
use ltocache::key::digest::FileHasher;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use util::{ok, Fixture, CLANG};

/// Files opened successfully (not directories), from an strace log.
fn opened(trace: &str, cwd: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for line in trace.lines() {
        let Some(call) = ["openat(", "open(", "execve("].iter().find_map(|c| line.find(c).map(|i| &line[i..])) else {
            continue;
        };
        let Some(q1) = call.find('"') else { continue };
        let Some(len) = call[q1 + 1..].find('"') else { continue };
        let path = &call[q1 + 1..q1 + 1 + len];
        let Some(ret) = call.rsplit(" = ").next() else { continue };
        if ret.trim_start().starts_with('-') || call.contains("O_DIRECTORY") {
            continue;
        }
        let p = Path::new(path);
        let abs = if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
        out.insert(abs.canonicalize().unwrap_or(abs));
    }
    out
}

fn audit(f: &Fixture, m: &str, extra: &[&str]) {
    let out = format!("{m}.final_o");
    let argv = f.backend_args(m, &out, extra);
    audit_command(&f.dir, &argv, &format!("{m}.o"), &f.path(&out), &f.path("trace.txt"));
}

/// Runs `clang argv` in `dir` under strace and asserts that every file it
/// opened is covered by the key, is the compiler's own, or is `output`.
/// Shared by the fixture audits and the opt-in kernel audit.
fn audit_command(dir: &Path, argv: &[String], input: &str, output: &Path, trace: &Path) {
    ok(Command::new("strace")
        .current_dir(dir)
        .args(["-f", "-qq", "-e", "trace=open,openat,execve", "-o"])
        .arg(trace)
        .arg(CLANG)
        .args(argv));
    let opened = opened(&std::fs::read_to_string(trace).unwrap(), dir);
    assert!(opened.iter().any(|p| p.ends_with(input)), "the trace must show the input: {opened:?}");

    // What the key covers: the files key::compute hashed or read, and the
    // compiler's identity.
    // The key is computed in the build directory, as the wrapper would; the
    // working directory is the process's, so one audit at a time.
    static CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = CWD.lock().unwrap_or_else(|e| e.into_inner());
    let prev = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir).unwrap();
    let (expanded, read) = args::expand_response_files_tracked(argv).unwrap();
    let mut inv = args::analyze(CLANG, &expanded).unwrap();
    inv.read_files = read;
    let mut hasher = FileHasher::new(None);
    let key = ltocache::key::compute(&inv, &[0; 32], &mut hasher, &|v| std::env::var(v).ok());
    std::env::set_current_dir(prev).unwrap();
    key.unwrap_or_else(|_| panic!("the audited command must be cacheable"));
    let mut covered: BTreeSet<PathBuf> =
        hasher.seen.iter().map(|(p, _)| dir.join(p).canonicalize().unwrap_or(dir.join(p))).collect();
    let program = ltocache::key::compiler::resolve(CLANG).unwrap();
    let real = program.canonicalize().unwrap();
    for p in ltocache::key::compiler::identity_files(&program, &real) {
        covered.insert(p.canonicalize().unwrap_or(p));
    }

    let stem = output.file_stem().unwrap().to_string_lossy().into_owned();
    let mut unexplained = Vec::new();
    for p in &opened {
        let text = p.to_string_lossy();
        let is_output = p.parent() == output.parent()
            && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&stem))
            && (p == output || text.ends_with(".tmp"));
        let own = ltocache::key::compiler::COMPILERS_OWN_FILES.iter().any(|(prefix, _)| text.starts_with(prefix));
        if !(covered.contains(p) || is_output || own) {
            unexplained.push(p.clone());
        }
    }
    assert!(unexplained.is_empty(), "clang opened files the key does not cover: {unexplained:?}");
}

#[test]
fn every_file_a_fixture_backend_opens_is_in_the_key() {
    let f = Fixture::new();
    for m in util::MODULES {
        audit(&f, m, &[]);
    }
}

#[test]
fn every_file_a_backend_with_kernel_flags_opens_is_in_the_key() {
    // The shape of a Linux 7.2 distributed backend: the front end's saved
    // c_flags (with front-end-only options) plus the backend's own, and an
    // `.incbin` found through the assembler's search path.
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("kinc")).unwrap();
    std::fs::rename(f.path("blob.bin"), f.path("kinc/blob.bin")).unwrap();
    f.write("kver.h", "#define KV 1\n");
    let flags = [
        "-Wp,-MMD,./.blob.o.d",
        "-nostdinc",
        "-I./inc",
        "-include",
        "./kver.h",
        "-D__KERNEL__",
        "-fmacro-prefix-map=./=",
        "-std=gnu11",
        "-fshort-wchar",
        "-funsigned-char",
        "-fno-common",
        "-fno-PIE",
        "-fno-strict-aliasing",
        "-mno-sse",
        "-mno-mmx",
        "-mno-sse2",
        "-mno-3dnow",
        "-mno-avx",
        "-fcf-protection=none",
        "-m64",
        "-mno-80387",
        "-mstack-alignment=8",
        "-mskip-rax-setup",
        "-mtune=generic",
        "-mno-red-zone",
        "-mcmodel=kernel",
        "-fno-asynchronous-unwind-tables",
        "-fno-stack-protector",
        "-DKBUILD_MODFILE=\"blob\"",
        "-DKBUILD_BASENAME=\"blob\"",
        "-Wa,-Ikinc",
        "-fno-lto",
        "-Wno-unused-command-line-argument",
        "-ffunction-sections",
        "-fdata-sections",
    ];
    audit(&f, "blob", &flags);
    audit(&f, "vec", &flags);
}

/// Splits a kbuild `.X.o.cmd` line the way `sh` would for the quoting kbuild
/// writes (single quotes, double quotes, backslash escapes); enough for the
/// saved c_flags, which contain no expansions.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Opt-in (not in CI: it needs a built kernel): the same audit on real kernel
/// backends. `LTOCACHE_KERNEL_TREE` is the root of a 6.1 tree built with
/// distributed ThinLTO as benches/kernel/bench.py builds it (`X.o` bitcode
/// beside `X.o.thinlto.bc`); `LTOCACHE_KERNEL_OBJECTS` (comma-separated)
/// picks the backends, default `kernel/configs.o,init/main.o,lib/string.o`.
/// The tree is only read: the objects go to a temporary directory.
#[test]
fn every_file_a_kernel_backend_opens_is_in_the_key() {
    let Some(tree) = std::env::var_os("LTOCACHE_KERNEL_TREE") else {
        eprintln!("skipped: set LTOCACHE_KERNEL_TREE to a kernel tree built with distributed ThinLTO");
        return;
    };
    let tree = PathBuf::from(tree).canonicalize().expect("LTOCACHE_KERNEL_TREE must exist");
    let objects =
        std::env::var("LTOCACHE_KERNEL_OBJECTS").unwrap_or_else(|_| "kernel/configs.o,init/main.o,lib/string.o".into());
    let tmp = std::env::temp_dir().join(format!("ltocache-kaudit-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for obj in objects.split(',').filter(|o| !o.is_empty()) {
        let (d, b) = obj.rsplit_once('/').unwrap_or(("", obj));
        let cmd_file = tree.join(d).join(format!(".{b}.cmd"));
        let text = std::fs::read_to_string(&cmd_file).unwrap_or_else(|e| panic!("{}: {e}", cmd_file.display()));
        let line = text.lines().next().unwrap();
        let rest = line.strip_prefix(&format!("cmd_{obj} := ")).expect("a kbuild command line");
        let mut words = shell_words(rest);
        // `clang-19 <c_flags> -c -o X.o X.c`: keep the c_flags.
        assert!(words.len() > 4 && words[words.len() - 4..words.len() - 1] == ["-c", "-o", obj], "{obj}: {words:?}");
        words.truncate(words.len() - 4);
        words.remove(0);
        let out = tmp.join(format!("{}.native.o", obj.replace('/', "_")));
        let mut argv = words;
        argv.extend(
            [
                "-x",
                "ir",
                "-fno-lto",
                "-Wno-unused-command-line-argument",
                "-fno-PIE",
                "-ffunction-sections",
                "-fdata-sections",
            ]
            .map(String::from),
        );
        argv.push(format!("-fthinlto-index={obj}.thinlto.bc"));
        argv.extend(["-c".into(), "-o".into(), out.to_string_lossy().into_owned(), obj.to_string()]);
        audit_command(&tree, &argv, obj, &out, &tmp.join("trace.txt"));
        eprintln!("audited {obj}: every file clang opened is covered");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

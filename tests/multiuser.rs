//! A group-shared cache used by two real users (issue 12): the attacker, a
//! member of the cache's group, plants a symlink, a FIFO, a huge sparse file
//! or a hostile `ltocache.conf` line at every path ltocache uses — the list
//! comes from the code (`ltocache::store::every_path`) — and the victim
//! builds the real clang-19 fixture, cleans, verifies and clears; then root
//! runs cleanup, `verify --fix` and clear as a cron job would. Asserted: no
//! file outside the cache changes (a decoy tree, hashed before and after),
//! nothing hangs (every run under `timeout`), every object equals clang's.
//!
//! The users are plain uids switched to with `setpriv` (CI runs as root);
//! without root the test says so and passes.

mod util;

use ltocache::cachedir::layout::{Base, Kind};
use ltocache::store::every_path;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use util::{ok, Fixture, CLANG, MODULES};

const VICTIM: u32 = 61001;
const ATTACKER: u32 = 61002;
const GROUP: u32 = 61000;
/// Longer than any step takes here; a run killed by it is a hang.
const TIMEOUT_S: &str = "120";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    chown(p, uid, gid);
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo {}", p.display());
}

/// Everything under `root`: kind, owner, mode, size, mtime and content hash
/// of each name. A change anywhere shows as a difference.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        // Directory mtimes are left out: they only say a name inside changed, and names are listed.
        let mtime = if m.is_dir() { 0 } else { m.mtime() * 1_000_000_000 + m.mtime_nsec() };
        out.insert(p.clone(), format!("{:o} {}:{} {} {} {content}", m.mode(), m.uid(), m.gid(), m.len(), mtime));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    /// The victim's home: their files, the decoy.
    home: PathBuf,
    /// Files only root may read (what root's cron cleanup must not touch).
    rootonly: PathBuf,
    /// The victim's copy of the fixture.
    build: PathBuf,
    cache: PathBuf,
    /// What clang-19 alone makes of each module.
    expected: Vec<Vec<u8>>,
    keys: Vec<[u8; 32]>,
    digests: Vec<[u8; 32]>,
}

fn setpriv(uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &GROUP.to_string(), "--groups", &GROUP.to_string(), "--"]);
    c
}

impl World {
    fn new() -> World {
        let f = Fixture::new();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The binary where both users can run it.
        let bin = root.join("ltocache");
        std::fs::copy(util::ltocache_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.join("home-victim");
        std::fs::create_dir_all(home.join("projects")).unwrap();
        std::fs::write(home.join(".bashrc"), "alias ll='ls -l'\n").unwrap();
        std::fs::write(home.join("projects/notes.txt"), "keep me\n").unwrap();
        // One of the victim's own SQLite databases (a table of it was dropped once).
        std::fs::write(home.join("places.sqlite3"), b"SQLite format 3\0the victim's data").unwrap();
        chown_tree(&home, VICTIM, VICTIM);
        let rootonly = root.join("rootonly");
        std::fs::create_dir_all(&rootonly).unwrap();
        std::fs::write(rootonly.join("secret"), "root only\n").unwrap();
        std::fs::set_permissions(&rootonly, std::fs::Permissions::from_mode(0o700)).unwrap();
        // The victim's checkout of the fixture, and the attacker's.
        let copy = |name: &str, uid: u32| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            for e in std::fs::read_dir(&f.dir).unwrap() {
                let e = e.unwrap();
                if e.path().is_file() {
                    std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
                }
            }
            chown_tree(&d, uid, GROUP);
            d
        };
        let build = copy("build-victim", VICTIM);
        let attacker_build = copy("build-attacker", ATTACKER);
        // The shared directory the team's cache lives in (not sticky, not world-writable).
        let shared = root.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        chown(&shared, 0, GROUP);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let cache = shared.join("cache");
        let expected = MODULES.iter().map(|m| f.fresh_object(m, &[])).collect();
        let mut w =
            World { _tmp: tmp, root, bin, home, rootonly, build, cache, expected, keys: vec![], digests: vec![] };
        // The attacker learns the names the victim's build will use by building the same sources.
        w.fresh_cache();
        for m in MODULES {
            w.backend(ATTACKER, &attacker_build, m).unwrap();
        }
        let store = ltocache::store::LocalStore::new(&w.cache);
        let hexname = |p: &PathBuf| -> [u8; 32] {
            let n = p.file_name().unwrap().to_str().unwrap();
            ltocache::util::unhex(n.trim_end_matches(".zst")).unwrap().try_into().unwrap()
        };
        w.keys = store.files("entries").iter().map(hexname).collect();
        w.digests = store.files("blobs").iter().map(hexname).collect();
        assert_eq!(w.keys.len(), MODULES.len());
        assert!(!w.digests.is_empty(), "inline_max = 0: objects go to blob files");
        w
    }

    /// A new, empty cache directory made by the attacker: mode 2775, the team's group.
    fn fresh_cache(&self) {
        if self.cache.exists() {
            std::fs::remove_dir_all(&self.cache).unwrap();
        }
        std::fs::create_dir(&self.cache).unwrap();
        chown(&self.cache, ATTACKER, GROUP);
        std::fs::set_permissions(&self.cache, std::fs::Permissions::from_mode(0o2775)).unwrap();
    }

    fn ltocache(&self, uid: u32, cwd: &Path) -> Command {
        let mut c = if uid == 0 { Command::new("timeout") } else { setpriv(uid) };
        if uid != 0 {
            c.arg("timeout");
        }
        c.args(["-s", "KILL", TIMEOUT_S]).arg(&self.bin).current_dir(cwd).env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LTOCACHE_DIR", &self.cache)
            .env("LTOCACHE_UMASK", "002")
            .env("LTOCACHE_INLINE_MAX", "0");
        let home = match uid {
            VICTIM => self.home.clone(),
            0 => self.root.join("home-root"),
            _ => self.root.join("home-attacker"),
        };
        c.env("HOME", home);
        c
    }

    fn run(&self, uid: u32, cwd: &Path, args: &[&str]) -> Output {
        let out = self.ltocache(uid, cwd).args(args).output().unwrap();
        // timeout -s KILL: killed by signal 9 (or 137 through a shell) means it hung.
        assert!(
            !matches!(out.status.code(), None | Some(124) | Some(137)),
            "`ltocache {}` as uid {uid} hung or died: {:?}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn backend(&self, uid: u32, dir: &Path, m: &str) -> Result<(), String> {
        let mut args = vec![CLANG.to_string()];
        args.extend(util_backend_args(m));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(uid, dir, &a);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The victim builds every module; every object must equal clang's.
    fn victim_builds(&self, what: &str) {
        for (m, want) in MODULES.iter().zip(&self.expected) {
            let out = format!("{m}.final_o");
            let _ = std::fs::remove_file(self.build.join(&out));
            self.backend(VICTIM, &self.build, m).unwrap_or_else(|e| panic!("{what}: backend {m} failed: {e}"));
            let got = std::fs::read(self.build.join(&out)).unwrap();
            assert!(&got == want, "{what}: {m}'s object differs from clang's");
        }
    }

    /// The victim's session, then root's cron job.
    fn victim_and_root(&self, what: &str) {
        self.victim_builds(what);
        self.victim_builds(&format!("{what} (again)"));
        for args in [
            &["stats"][..],
            &["stats", "--json"],
            &["cleanup", "--max-size", "1"],
            &["verify", "--fix"],
            &["verify"],
            &["config"],
        ] {
            self.run(VICTIM, &self.build, args);
        }
        self.victim_builds(&format!("{what} (after cleanup)"));
        self.run(VICTIM, &self.build, &["clear"]);
        self.victim_builds(&format!("{what} (after clear)"));
        for args in [&["cleanup"][..], &["verify", "--fix"], &["evict", "--older-than", "0s"], &["clear"]] {
            self.run(0, &self.root, args);
        }
    }

    fn decoys(&self) -> BTreeMap<PathBuf, String> {
        let mut s = snapshot(&self.home);
        // The victim's own state (the private fallback) may legitimately change.
        s.retain(|p, _| !p.starts_with(self.home.join(".local")));
        s.extend(snapshot(&self.rootonly));
        s.extend(snapshot(&self.build).into_iter().filter(|(p, _)| !p.to_string_lossy().contains(".final_o")));
        s
    }

    fn paths(&self) -> Vec<(Base, PathBuf, Kind)> {
        let host = ltocache::util::hostname();
        every_path(&self.keys, &self.digests, &[Path::new(CLANG)], host, VICTIM)
    }

    /// The state directory the victim would use inside the cache, made by the
    /// attacker (open to all) so that files can be planted in it.
    fn attacker_state_dir(&self) -> PathBuf {
        let rel = ltocache::cachedir::layout::shared_state_rel(ltocache::util::hostname(), VICTIM);
        let d = self.cache.join(&rel);
        std::fs::create_dir_all(&d).unwrap();
        for a in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            chown(&self.cache.join(a), ATTACKER, GROUP);
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        d
    }

    fn real_dirs_for(&self, p: &Path) {
        let parent = p.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        let mut a = parent;
        while a.starts_with(&self.cache) && a != self.cache {
            chown(a, ATTACKER, GROUP);
            std::fs::set_permissions(a, std::fs::Permissions::from_mode(0o2777)).unwrap();
            a = a.parent().unwrap();
        }
    }
}

fn util_backend_args(m: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["-O2".into(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
    a.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), format!("{m}.final_o")]);
    a
}

#[derive(Clone, Copy, Debug)]
enum Plant {
    Symlink,
    Fifo,
    Sparse,
}

#[test]
fn an_attacker_in_the_group_cannot_turn_the_cache_against_its_users() {
    if !is_root() {
        eprintln!("skipped: needs root to act as two users (CI runs as root)");
        return;
    }
    let w = World::new();
    let before = w.decoys();
    // A clean round first: the victim's build uses exactly the names the attacker planted at.
    w.fresh_cache();
    w.victim_builds("no plants");
    let store = ltocache::store::LocalStore::new(&w.cache);
    assert_eq!(store.files("entries").len(), w.keys.len());
    for k in &w.keys {
        assert!(store.entry_path(k).exists(), "the victim's keys are the attacker's");
    }
    let targets_file = [w.home.join(".bashrc"), w.home.join("places.sqlite3"), w.rootonly.join("secret")];
    let targets_dir = [w.home.clone(), w.home.join("projects"), w.rootonly.clone()];
    let paths = w.paths();
    assert!(paths.len() > 30, "every path kind: {paths:?}");

    // Every file path at once, for each kind of plant.
    for plant in [Plant::Symlink, Plant::Fifo, Plant::Sparse] {
        w.fresh_cache();
        let state = w.attacker_state_dir();
        for (i, (base, rel, kind)) in paths.iter().enumerate() {
            if *kind != Kind::File {
                continue;
            }
            let p = match base {
                Base::Cache => w.cache.join(rel),
                Base::State => state.join(rel),
            };
            w.real_dirs_for(&p);
            let _ = std::fs::remove_file(&p);
            match plant {
                Plant::Symlink => std::os::unix::fs::symlink(&targets_file[i % 3], &p).unwrap(),
                Plant::Fifo => mkfifo(&p),
                Plant::Sparse => std::fs::File::create(&p).unwrap().set_len(1 << 40).unwrap(),
            }
            chown(&p, ATTACKER, GROUP);
        }
        w.victim_and_root(&format!("{plant:?} at every file"));
        assert_eq!(w.decoys(), before, "{plant:?} at every file: a file outside the cache changed");
    }

    // A hostile ltocache.conf: it may not send the log into the victim's
    // files, make their files world-writable, move their state or serve hard links.
    w.fresh_cache();
    let conf = w.cache.join("ltocache.conf");
    std::fs::write(
        &conf,
        format!(
            "logfile = {}\numask = 000\nstats_dir = {}\nserve_mode = hardlink\nbase_dir = /\n",
            w.home.join(".bashrc").display(),
            w.home.join("projects").display()
        ),
    )
    .unwrap();
    chown(&conf, ATTACKER, GROUP);
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o664)).unwrap();
    w.victim_builds("hostile ltocache.conf");
    for p in util::files_under(&w.cache.join("v1")) {
        let mode = std::fs::metadata(&p).unwrap().mode();
        assert_eq!(mode & 0o002, 0, "{} is world-writable: umask = 000 was honoured", p.display());
    }
    let config = String::from_utf8(w.run(VICTIM, &w.build, &["config"]).stdout).unwrap();
    for key in ["logfile", "umask", "stats_dir", "serve_mode", "base_dir"] {
        assert!(config.contains(&format!("warning: {key} in")), "config does not warn of {key}: {config}");
    }
    w.victim_and_root("hostile ltocache.conf");
    assert_eq!(w.decoys(), before, "hostile ltocache.conf: a file outside the cache changed");

    // Every directory, one at a time (a planted parent hides its children),
    // as a symlink to a directory of the victim's or root's, or as a FIFO.
    let dirs: Vec<&(Base, PathBuf, Kind)> =
        paths.iter().filter(|(b, _, k)| *b == Base::Cache && *k == Kind::Dir).collect();
    for (i, (_, rel, _)) in dirs.iter().enumerate() {
        for plant in [Plant::Symlink, Plant::Fifo] {
            w.fresh_cache();
            let p = w.cache.join(rel);
            w.real_dirs_for(&p);
            match plant {
                Plant::Symlink => std::os::unix::fs::symlink(&targets_dir[i % 3], &p).unwrap(),
                _ => mkfifo(&p),
            }
            chown(&p, ATTACKER, GROUP);
            let what = format!("{plant:?} at {}", rel.display());
            w.victim_and_root(&what);
            assert_eq!(w.decoys(), before, "{what}: a file outside the cache changed");
        }
    }
    // Nothing was left world-writable or owned by the attacker in the victim's private state.
    let private = w.home.join(".local/state/ltocache");
    if private.exists() {
        for p in util::files_under(&private) {
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file() && m.uid() == VICTIM, "{}: not the victim's own file", p.display());
        }
    }
}

#[test]
fn a_cache_directory_another_user_made_in_tmp_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to act as two users (CI runs as root)");
        return;
    }
    let w = World::new();
    // The attacker pre-creates the victim's LTOCACHE_DIR in a sticky world-writable directory.
    let sticky = w.root.join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = sticky.join("ltocache");
    std::fs::create_dir(&planted).unwrap();
    chown(&planted, ATTACKER, GROUP);
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = |args: &[&str], trusted: bool| {
        let mut c = w.ltocache(VICTIM, &w.build);
        c.env("LTOCACHE_DIR", &planted).args(args);
        if trusted {
            c.env("LTOCACHE_TRUSTED_DIR", &planted);
        }
        c.output().unwrap()
    };
    let mut args = vec![CLANG.to_string()];
    args.extend(util_backend_args("vec"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(run(&a, false).status.success(), "the compile passes through");
    assert_eq!(std::fs::read(w.build.join("vec.final_o")).unwrap(), w.expected[1]);
    assert!(util::files_under(&planted).is_empty(), "nothing was written into the attacker's directory");
    let stats = String::from_utf8(run(&["stats", "--json"], false).stdout).unwrap();
    assert_eq!(util::stat_of(&stats, "misses"), 0);
    assert!(stats.contains("\"cache_dir_refused\": \"") && stats.contains("cache_dir_refused\": 1"), "{stats}");
    let config = String::from_utf8(run(&["config"], false).stdout).unwrap();
    assert!(config.contains("refused") && config.contains("everyone may write"), "{config}");
    // Not writable by the victim at all, it would only serve the attacker's objects: refused too.
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = String::from_utf8(run(&["config"], false).stdout).unwrap();
    assert!(config.contains("refused") && config.contains("sticky"), "{config}");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(!run(&["cleanup"], false).status.success(), "cleanup refuses it");
    // Named trusted, it is used.
    assert!(run(&a, true).status.success());
    let stats = String::from_utf8(run(&["stats", "--json"], true).stdout).unwrap();
    assert_eq!(util::stat_of(&stats, "misses"), 1, "{stats}");
}

#[test]
fn hard_links_only_from_a_cache_nobody_else_writes_and_read_only() {
    let f = Fixture::new();
    std::fs::create_dir_all(&f.cache).unwrap();
    std::fs::set_permissions(&f.cache, std::fs::Permissions::from_mode(0o775)).unwrap();
    let with = |c: &mut Command| {
        c.env("LTOCACHE_SERVE_MODE", "hardlink").env("LTOCACHE_INLINE_MAX", "0");
    };
    let mut c = f.ltocache();
    with(&mut c);
    let config = String::from_utf8(ok(c.arg("config")).stdout).unwrap();
    assert!(config.contains("hardlink refused") && config.contains("serve_mode   = copy"), "{config}");
    for _ in 0..2 {
        let mut c = f.ltocache();
        with(&mut c);
        ok(c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[])));
    }
    assert_eq!(std::fs::metadata(f.path("vec.final_o")).unwrap().nlink(), 1, "copied: the cache is group-writable");
    // A private cache: linked, read-only, with a fresh mtime.
    std::fs::set_permissions(&f.cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(f.cache.join("v1"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let blob = &f.blob_files()[0];
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().append(true).open(blob).unwrap().set_modified(old).unwrap();
    let mut c = f.ltocache();
    with(&mut c);
    ok(c.arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[])));
    let m = std::fs::metadata(f.path("vec.final_o")).unwrap();
    assert_eq!(m.nlink(), 2, "served by a hard link");
    assert_eq!(m.mode() & 0o222, 0, "read-only");
    assert!(m.modified().unwrap().elapsed().unwrap() < std::time::Duration::from_secs(600), "a fresh mtime");
    assert_eq!(f.read("vec.final_o"), f.fresh_object("vec", &[]));
}

/// The path list the attack test plants at is complete: every path under
/// the cache or the state directory that a build, `stats`, `cleanup`,
/// `verify` and `clear` touch (strace, every file system call) is in
/// `every_path` — up to key and digest hex and temp-file names.
#[test]
fn every_path_lists_what_ltocache_really_opens() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: no strace");
        return;
    }
    let f = Fixture::new();
    f.use_blob_files();
    let trace = f.dir.join("trace");
    let strace = |args: &[&str]| {
        let mut c = f.ltocache();
        let prog = c.get_program().to_owned();
        let mut s = Command::new("strace");
        s.args(["-f", "-y", "-qq", "-e", "trace=%file,%desc", "-o"]).arg(&trace).arg("-A").arg(prog).args(args);
        s.current_dir(&f.dir);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => s.env(k, v),
                None => s.env_remove(k),
            };
        }
        let _ = c.args(args);
        ok(&mut s);
    };
    for m in MODULES {
        let mut a = vec![CLANG.to_string()];
        a.extend(util_backend_args(m));
        strace(&a.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for args in [&["stats"][..], &["cleanup", "--max-size", "1"], &["verify"], &["clear"], &["zero-stats"]] {
        strace(args);
    }
    let cache = std::fs::canonicalize(&f.cache).unwrap();
    let state = std::fs::canonicalize(f.state_dir()).unwrap();
    // Names up to hex and temp names.
    let shape = |p: &str| -> String {
        p.split('/')
            .map(|c| {
                let h = c.trim_end_matches(".zst");
                if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!("HEX{}", &c[64..])
                } else if c.len() == 2 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
                    "XX".into()
                } else if c.ends_with(".tmp") || c.ends_with(".junk") {
                    "TEMP".into()
                } else if c.starts_with("stats.sqlite3.corrupt")
                    || c.starts_with("compiler-")
                    || c.starts_with("driver-")
                {
                    c.split('.').next().unwrap().split('-').next().unwrap().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let host = ltocache::util::hostname();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut known: std::collections::BTreeSet<String> =
        every_path(&[[0xab; 32]], &[[0xcd; 32]], &[Path::new(CLANG)], host, uid)
            .into_iter()
            .map(|(b, p, _)| match b {
                Base::Cache => shape(&p.display().to_string()),
                Base::State => {
                    shape(&ltocache::cachedir::layout::shared_state_rel(host, uid).join(p).display().to_string())
                }
            })
            .collect();
    known.insert("v1/tmp/TEMP".into());
    known.insert(String::new()); // the cache directory itself
    let text = std::fs::read_to_string(&trace).unwrap();
    // `-y` prints every descriptor with its path: `3</abs/path>`; and `*at` calls name `dirfd</dir>, "name"`.
    let mut seen = std::collections::BTreeSet::new();
    let fd_path = regex_lite_fd();
    for line in text.lines() {
        for abs in fd_path(line) {
            for (root, prefix) in
                [(&cache, PathBuf::new()), (&state, ltocache::cachedir::layout::shared_state_rel(host, uid))]
            {
                if let Ok(rel) = Path::new(&abs).strip_prefix(root) {
                    seen.insert((shape(&prefix.join(rel).display().to_string()), line.to_string()));
                }
            }
        }
    }
    assert!(seen.iter().any(|(s, _)| s.starts_with("v1/entries/XX/HEX")), "the trace saw the entries: {}", seen.len());
    // Inside a tree `clear` moved aside into tmp/, everything is ours.
    let unknown: Vec<_> = seen
        .iter()
        .filter(|(s, _)| !known.contains(s.trim_end_matches('/')) && !s.starts_with("v1/tmp/TEMP/"))
        .collect();
    assert!(unknown.is_empty(), "opened but not in store::every_path: {unknown:#?}\nknown: {known:#?}");
}

/// Paths in a strace `-y` line: each `N</path>` descriptor, and for `*at`
/// calls the directory descriptor's path joined with the name after it.
fn regex_lite_fd() -> impl Fn(&str) -> Vec<String> {
    |line: &str| {
        let mut out = Vec::new();
        // `*at` calls resolve a name under their directory descriptor; others' strings are data.
        let call = line.split_whitespace().nth(1).and_then(|c| c.split('(').next()).unwrap_or("");
        let at_call = call.ends_with("at") || call.ends_with("at2");
        let mut rest = line;
        while let Some(i) = rest.find("</") {
            let after = &rest[i + 1..];
            let Some(end) = after.find('>') else { break };
            // A descriptor of a file unlinked since is shown with " (deleted)".
            let dir = after[..end].trim_end_matches(" (deleted)");
            out.push(dir.to_string());
            // `3</dir>, "name"`: a name resolved under that directory.
            let tail = &after[end + 1..];
            if let Some(q) = tail.strip_prefix(", \"").filter(|_| at_call) {
                if let Some(e) = q.find('"') {
                    let name = &q[..e];
                    if !name.starts_with('/') && !name.is_empty() {
                        out.push(format!("{dir}/{name}"));
                    }
                }
            }
            rest = &after[end + 1..];
        }
        out
    }
}

//! Bad input and bad luck the store must survive (issues 12 and 13): a
//! cleaner that died or hung holding the lock, `clear` racing stores, a
//! directory at an entry's or blob's name, a stats database damaged past its
//! first page, ages and sizes that overflow, files deleted under a walk.

mod util;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use util::{ok, Fixture, CLANG, MODULES};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Holds `v1/cleanup.lock` (exclusive flock) until killed.
fn hold_cleanup_lock(f: &Fixture) -> std::process::Child {
    let lock = f.cache.join("v1/cleanup.lock");
    let child = Command::new("flock")
        .args(["-o", "-x", lock.to_str().unwrap(), "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: killed with its `sleep` (which must not
        // outlive the test holding the test harness's pipes).
        .process_group(0)
        .spawn()
        .expect("flock(1)");
    // Wait until it holds the lock.
    for _ in 0..200 {
        let probe = Command::new("flock").args(["-n", "-x", lock.to_str().unwrap(), "true"]).status().unwrap();
        if !probe.success() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the holder never took the lock");
}

#[test]
fn a_cleaner_that_died_or_hung_holding_the_lock_does_not_stop_cleanup_for_long() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    // Killed (a crash, or a client whose NFSv4 lease expired): the kernel
    // releases the lock at once and the next cleanup runs.
    let mut holder = hold_cleanup_lock(&f);
    let out = text(&ok(f.ltocache().args(["cleanup"])));
    assert!(out.contains("another cleanup is running"), "{out}");
    // SAFETY: kill sends a signal to the process group of the child we spawned.
    unsafe { libc::kill(-(holder.id() as i32), libc::SIGKILL) };
    holder.wait().unwrap();
    let out = text(&ok(f.ltocache().args(["cleanup"])));
    assert!(out.contains("removed") && !out.contains("stale"), "{out}");

    // Stopped (a hung host; or an NFSv3 client that died, whose lock lasts
    // until it reboots): skipped while the lock file is fresh, broken once it
    // has gone untouched for LOCK_STALE (10 minutes; a live cleaner touches
    // it every 30 s). The age is faked by setting the file's mtime back.
    let holder = hold_cleanup_lock(&f);
    // SAFETY: as above.
    unsafe { libc::kill(holder.id() as i32, libc::SIGSTOP) };
    let out = text(&ok(f.ltocache().args(["cleanup"])));
    assert!(out.contains("another cleanup is running"), "a lock touched just now is respected: {out}");
    let lock = f.cache.join("v1/cleanup.lock");
    let nine = SystemTime::now() - Duration::from_secs(9 * 60);
    std::fs::File::options().append(true).open(&lock).unwrap().set_modified(nine).unwrap();
    let out = text(&ok(f.ltocache().args(["cleanup"])));
    assert!(out.contains("another cleanup is running"), "nine minutes is not stale yet: {out}");
    let eleven = SystemTime::now() - Duration::from_secs(11 * 60);
    std::fs::File::options().append(true).open(&lock).unwrap().set_modified(eleven).unwrap();
    let out = text(&ok(f.ltocache().args(["cleanup"])));
    assert!(out.contains("broke a stale cleanup lock") && out.contains("removed"), "{out}");
    // And the new lock is a real one: a cleanup during another's is skipped.
    let holder2 = hold_cleanup_lock(&f);
    assert!(text(&ok(f.ltocache().args(["cleanup"]))).contains("another cleanup is running"));
    for mut h in [holder, holder2] {
        // SAFETY: kill sends a signal to the process group of a child we spawned.
        unsafe { libc::kill(-(h.id() as i32), libc::SIGKILL) };
        let _ = h.wait();
    }
}

#[test]
fn clear_succeeds_while_compiles_store() {
    let f = Fixture::new();
    f.use_blob_files();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let variants: &[&[&str]] = &[&[], &["-O1"], &["-O3"]];
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            let (dir, cache) = (f.dir.clone(), f.cache.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 6 {
                    let m = MODULES[n % MODULES.len()];
                    let v = variants[(n / MODULES.len() + t) % variants.len()];
                    let out = format!("{m}.w{t}_o");
                    let mut args = vec!["-O2".to_string(), "-c".into(), format!("-fthinlto-index={m}.o.thinlto.bc")];
                    args.extend(v.iter().map(|s| s.to_string()));
                    args.extend(["-x".into(), "ir".into(), format!("{m}.o"), "-o".into(), out]);
                    let st = Command::new(util::ltocache_bin())
                        .current_dir(&dir)
                        .env("LTOCACHE_DIR", &cache)
                        .env("LTOCACHE_COMPRESSION", "off")
                        .arg(CLANG)
                        .args(&args)
                        .output()
                        .unwrap();
                    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
                    n += 1;
                }
            })
        })
        .collect();
    for _ in 0..15 {
        let out = f.ltocache().arg("clear").output().unwrap();
        assert!(out.status.success(), "clear failed while compiles store: {}", text(&out));
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    ok(f.ltocache().arg("clear"));
    assert!(f.entry_files().is_empty() && f.blob_files().is_empty());
    // What clear moved aside and could not remove at once is swept later (tmp/).
    let out = text(&ok(f.ltocache().args(["verify"])));
    assert!(out.contains("checked 0 entries"), "{out}");
}

#[test]
fn a_directory_at_an_entry_or_blob_name_is_reported_removed_and_replaced() {
    let f = Fixture::new();
    f.use_blob_files();
    f.cached_backends(&[]);
    let entries = f.entry_files();
    let blobs = f.blob_files();
    // Planted directories, with something inside.
    for p in [&entries[0], &blobs[0]] {
        std::fs::remove_file(p).unwrap();
        std::fs::create_dir_all(p.join("inner")).unwrap();
        std::fs::write(p.join("inner/file"), b"x").unwrap();
    }
    let out = f.ltocache().arg("verify").output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("checked {} entries and {} blobs", entries.len(), blobs.len())),
        "verify went on past them: {t}"
    );
    assert!(t.contains("corrupt entry") && t.contains("corrupt blob"), "{t}");
    let t = text(&f.ltocache().args(["verify", "--fix"]).output().unwrap());
    assert!(t.contains("removed"), "{t}");
    let t = text(&ok(f.ltocache().arg("verify")));
    assert!(t.contains("checked"), "{t}");
    assert!(!entries[0].exists() && !blobs[0].exists());

    // A directory at an entry's name when a compile stores there: moved aside, the entry written.
    let e = f.entry_files()[0].clone();
    std::fs::remove_file(&e).unwrap();
    std::fs::create_dir_all(e.join("inner")).unwrap();
    let (h0, m0) = (f.stat("hits"), f.stat("misses"));
    f.cached_backends(&[]);
    assert!(e.is_file(), "the entry was stored over the planted directory");
    f.cached_backends(&[]);
    assert_eq!(f.stat("hits") - h0, MODULES.len() as i64 * 2 - (f.stat("misses") - m0));
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]));
    }
}

#[test]
fn a_stats_database_damaged_past_its_first_page_is_rebuilt_on_use() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    assert_eq!(f.stat("misses"), MODULES.len() as i64);
    let db = f.state_dir().join("stats.sqlite3");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 4096 * 2, "more than one page: {len}");
    // The header page intact (it opens), every other page garbage.
    let mut data = std::fs::read(&db).unwrap();
    for b in &mut data[4096..] {
        *b = 0x5a;
    }
    std::fs::write(&db, &data).unwrap();
    f.cached_backend("vec", &[]);
    for args in [&["stats"][..], &["zero-stats"], &["stats", "--json"]] {
        let out = f.ltocache().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let out = f.ltocache().args(["explain", "vec.final_o"]).output().unwrap();
    assert!(!text(&out).contains("malformed") && !text(&out).contains("corrupt"), "{}", text(&out));
    let aside: Vec<_> = std::fs::read_dir(f.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file was moved aside");
    f.cached_backend("vec", &[]);
    assert_eq!(f.stat("hits"), 1, "counting again");
}

#[test]
fn ages_and_sizes_that_overflow_are_clear_errors() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    let n = f.entry_files().len();
    let out = f.ltocache().args(["evict", "--older-than", "213503982334602d"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("too large"), "{}", text(&out));
    assert_eq!(f.entry_files().len(), n, "nothing evicted");
    let out = f.ltocache().env("LTOCACHE_GRACE", "213503982334602d").arg("cleanup").output().unwrap();
    assert!(!out.status.success() && text(&out).contains("too large"), "{}", text(&out));
    let out = f.ltocache().args(["cleanup", "--max-size", "99999999999T"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("too large"), "{}", text(&out));
    // The largest age that fits evicts nothing either.
    let out = text(&ok(f.ltocache().args(["evict", "--older-than", "213503982334601d"])));
    assert!(out.contains("removed 0 entries"), "{out}");
    assert_eq!(f.entry_files().len(), n);
}

#[test]
fn files_deleted_during_a_walk_are_skipped_never_an_error() {
    // Another host deleting entries and blobs while this one verifies, scans
    // and cleans (ENOENT locally; ESTALE on NFS takes the same path,
    // crate::cachedir::beneath::is_gone).
    use ltocache::store::{Entry, LocalStore, Store, Stored, StoredOutput};
    let d = tempfile::tempdir().unwrap();
    let store = LocalStore::new(d.path());
    for i in 0..600u32 {
        let data = format!("object {i}").repeat(50).into_bytes();
        let digest = *blake3::hash(&data).as_bytes();
        store.put_blob(&digest, &data).unwrap();
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        key[4] = (i % 7) as u8;
        let e = Entry {
            key,
            duration_ns: 1,
            created_unix: 0,
            outputs: vec![StoredOutput { kind: 0, size: data.len() as u64, digest, stored: Stored::Blob }],
            stderr: vec![],
        };
        store.put_entry(&e).unwrap();
    }
    let root = d.path().to_path_buf();
    let deleter = std::thread::spawn(move || {
        let s = LocalStore::new(&root);
        let mut files: Vec<_> = s.files("entries").into_iter().chain(s.files("blobs")).collect();
        files.reverse();
        for f in files {
            let _ = std::fs::remove_file(root.join(f));
        }
    });
    let limits = ltocache::store::cleanup::Limits { max_size: 1 << 40, max_files: 0, grace: Duration::from_secs(3600) };
    for _ in 0..20 {
        ltocache::store::cleanup::verify(&store, false).expect("verify while files vanish");
        store.scan_usage();
        ltocache::store::cleanup::cleanup(&store, &limits).expect("cleanup while files vanish");
    }
    deleter.join().unwrap();
    assert!(ltocache::cachedir::beneath::is_gone(&std::io::Error::from_raw_os_error(libc::ESTALE)));
    assert!(ltocache::cachedir::beneath::is_gone(&std::io::Error::from_raw_os_error(libc::ENOENT)));
}

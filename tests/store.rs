//! The store under pressure: size limits and LRU eviction, shared blobs,
//! stale temp files, verify, read-only media, a full disk, group sharing.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime};
use util::{ok, Fixture, CLANG, MODULES};

fn set_age(path: &std::path::Path, age: Duration) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn store_bytes(f: &Fixture) -> u64 {
    f.entry_files().iter().chain(f.blob_files().iter()).map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

#[test]
fn cleanup_evicts_least_recently_used_first_and_trims_below_the_limit() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    let entries = f.entry_files();
    assert_eq!(entries.len(), MODULES.len());
    // Make every entry old, then use `main` (a hit touches its entry).
    for e in &entries {
        set_age(e, Duration::from_secs(3600));
    }
    f.cached_backend("main", &[]);
    assert_eq!(f.stat("hits"), 1);
    let main_entry = f
        .entry_files()
        .into_iter()
        .find(|p| p.metadata().unwrap().modified().unwrap().elapsed().unwrap() < Duration::from_secs(600))
        .expect("the hit touched its entry");

    let total = store_bytes(&f);
    let limit = total * 2 / 3;
    let out = String::from_utf8(ok(f.ltocache().args(["cleanup", "--max-size", &limit.to_string()])).stdout).unwrap();
    assert!(out.contains("removed"), "{out}");
    let after = store_bytes(&f);
    assert!(after as f64 <= limit as f64 * 0.9, "trimmed to {after}, limit {limit}");
    assert!(main_entry.exists(), "the most recently used entry must survive");
    // Every surviving entry still serves correctly.
    for m in MODULES {
        f.cached_backend(m, &[]);
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]));
    }
}

#[test]
fn a_blob_goes_with_its_last_entry_only() {
    let f = Fixture::new();
    f.use_blob_files();
    // Two keys (one extra warning flag) with byte-identical objects: one blob.
    f.cached_backend("vec", &[]);
    f.cached_backend("vec", &["-Wno-unused-command-line-argument"]);
    assert_eq!(f.entry_files().len(), 2);
    assert_eq!(f.blob_files().len(), 1, "identical objects share one blob");
    let (a, b) = (f.entry_files()[0].clone(), f.entry_files()[1].clone());
    set_age(&a, Duration::from_secs(10 * 86400));
    ok(f.ltocache().args(["evict", "--older-than", "7d"]));
    assert!(!a.exists() && b.exists());
    assert_eq!(f.blob_files().len(), 1, "the blob is still referenced");
    set_age(&b, Duration::from_secs(10 * 86400));
    ok(f.ltocache().args(["evict", "--older-than", "7d"]));
    assert!(f.entry_files().is_empty());
    assert!(f.blob_files().is_empty(), "its last entry gone, the blob goes");
}

#[test]
fn automatic_cleanup_keeps_the_store_within_its_limit() {
    let f = Fixture::new();
    let limit: u64 = 12 * 1024;
    let variants: &[&[&str]] = &[&[], &["-O1"], &["-O3"], &["-fno-PIE"], &["-ffunction-sections"], &["-g"]];
    for v in variants {
        for m in MODULES {
            let mut c = f.ltocache();
            c.env("LTOCACHE_MAXSIZE", limit.to_string()).arg(CLANG).args(f.backend_args(m, &format!("{m}.final_o"), v));
            ok(&mut c);
            assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, v));
        }
    }
    let size = store_bytes(&f);
    // Tolerance: one store's worth over the limit between a store and its cleanup.
    let largest_object = MODULES.iter().map(|m| f.read(&format!("{m}.final_o")).len() as u64).max().unwrap();
    assert!(size <= limit + largest_object + 512, "store is {size} bytes, limit {limit}");
    assert!(f.stat("cleanups") > 0);
    assert!(f.stat("evicted_entries") > 0);
    ok(f.ltocache().arg("verify"));
}

#[test]
fn stale_temp_files_are_swept_and_fresh_ones_kept() {
    let f = Fixture::new();
    f.cached_backend("vec", &[]);
    let tmp = f.cache.join("v1/tmp");
    std::fs::write(tmp.join("deadhost.1.0.0.tmp"), b"partial").unwrap();
    std::fs::write(tmp.join("livehost.2.0.0.tmp"), b"in progress").unwrap();
    set_age(&tmp.join("deadhost.1.0.0.tmp"), Duration::from_secs(7200));
    ok(f.ltocache().arg("cleanup"));
    assert!(!tmp.join("deadhost.1.0.0.tmp").exists());
    assert!(tmp.join("livehost.2.0.0.tmp").exists(), "a temp file within the grace period may still be renamed");
}

#[test]
fn verify_reports_and_fixes_broken_files() {
    let f = Fixture::new();
    f.use_blob_files();
    f.cached_backends(&[]);
    let out = ok(f.ltocache().arg("verify"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("checked {} entries", MODULES.len())));
    let blob = f.blob_files()[0].clone();
    let mut data = std::fs::read(&blob).unwrap();
    data[0] ^= 1;
    std::fs::write(&blob, data).unwrap();
    // Garbage in an entry that does not name the damaged blob (which entry
    // that is depends on the keys), so the blob's own entry dangles.
    let name = blob.file_name().unwrap().to_str().unwrap();
    let digest: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&name[2 * i..2 * i + 2], 16).unwrap()).collect();
    let entry =
        f.entry_files().into_iter().find(|e| !std::fs::read(e).unwrap().windows(32).any(|w| w == &digest[..])).unwrap();
    std::fs::write(&entry, b"LTOCENTR garbage").unwrap();
    let out = f.ltocache().arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrupt blob") && text.contains("corrupt entry"), "{text}");
    assert!(text.contains("names a missing or corrupt blob"), "the entry of the bad blob dangles: {text}");
    let fixed = f.ltocache().args(["verify", "--fix"]).output().unwrap();
    assert_eq!(fixed.status.code(), Some(1), "the store was not clean when --fix ran");
    ok(f.ltocache().arg("verify"));
    f.cached_backends(&[]);
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]));
    }
}

/// PATH with the system directories a non-login root shell may lack
/// (mkfs.xfs and filefrag live in /usr/sbin).
fn path_with_sbin() -> String {
    format!("{}:/usr/local/sbin:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default())
}

/// Runs a shell script in a private mount namespace (so mounts vanish with it).
fn in_mount_namespace(f: &Fixture, script: &str) -> String {
    let out = Command::new("unshare")
        .env("PATH", path_with_sbin())
        .args(["-m", "--propagation", "private", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(&f.dir)
        .env("LTOCACHE_DIR", &f.cache)
        .env("L", util::ltocache_bin())
        .env("LTOCACHE_COMPRESSION", "off")
        .env_remove("LTOCACHE_READONLY")
        .env_remove("LTOCACHE_STATS_DIR")
        .output()
        .expect("unshare");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "script failed: {text}");
    text
}

#[test]
fn read_only_cache_directory_serves_hits_and_builds_succeed() {
    let f = Fixture::new();
    f.cached_backends(&[]);
    let entries = f.entry_files().len();
    let cache = f.cache.display();
    let args = f.backend_args("main", "main.ro_o", &[]).join(" ");
    let miss_args = f.backend_args("main", "main.ro_miss_o", &["-O1"]).join(" ");
    // This host's state cannot live in the read-only cache: without any
    // setting it moves under $XDG_STATE_HOME, so stats and the memos (the
    // compiler identity above all) keep working. The hit and the miss succeed.
    let text = in_mount_namespace(
        &f,
        &format!(
            "mount --bind {cache} {cache} && mount -o remount,bind,ro {cache}
             export XDG_STATE_HOME=$PWD/xdg
             $L {CLANG} {args}
             $L {CLANG} {miss_args}
             $L cleanup || echo cleanup-refused
             $L stats --json
             ls $PWD/xdg/ltocache/*/*/"
        ),
    );
    assert!(text.contains("cleanup-refused") && text.contains("not writable"), "{text}");
    assert!(text.contains("memo.v1") && text.contains("compiler-"), "state moved to XDG_STATE_HOME: {text}");
    assert_eq!(util::stat_of(&text, "hits"), 1, "{text}");
    assert_eq!(util::stat_of(&text, "misses"), 1, "{text}");
    assert_eq!(f.read("main.ro_o"), f.fresh_object("main", &[]));
    assert_eq!(f.read("main.ro_miss_o"), f.fresh_object("main", &["-O1"]));
    assert_eq!(f.entry_files().len(), entries, "nothing was written to the read-only store");
}

#[test]
fn full_disk_fails_stores_cleanly_and_space_comes_back() {
    let f = Fixture::new();
    std::fs::create_dir_all(&f.cache).unwrap();
    let cache = f.cache.display();
    let mut script = format!(
        "mount -t tmpfs -o size=48k tmpfs {cache}
         export LTOCACHE_STATS_DIR=$PWD/full-stats LTOCACHE_MAXSIZE=0\n"
    );
    let variants = ["-O2", "-O1", "-O3", "-Os", "-fno-PIE"];
    for v in variants {
        for m in MODULES {
            let args = f.backend_args(m, &format!("{m}{v}.full_o"), &[v]).join(" ");
            script.push_str(&format!("$L {CLANG} {args}\n"));
        }
    }
    // Everything again: hits must be whole objects, misses must still compile.
    for v in variants {
        for m in MODULES {
            let args = f.backend_args(m, &format!("{m}{v}.again_o"), &[v]).join(" ");
            script.push_str(&format!("$L {CLANG} {args}\n"));
        }
    }
    script.push_str(&format!(
        "echo used-before=$(du -sk {cache} | cut -f1)
         $L stats --json
         $L verify
         $L cleanup --max-size 4k
         echo tmp-left=$(ls {cache}/v1/tmp | wc -l)
         echo used-after=$(du -sk {cache} | cut -f1)\n"
    ));
    let text = in_mount_namespace(&f, &script);
    assert!(util::stat_of(&text, "store") > 0, "the disk should have filled: {text}");
    for v in variants {
        for m in MODULES {
            let fresh = f.fresh_object(m, &[v]);
            assert_eq!(f.read(&format!("{m}{v}.full_o")), fresh, "{m} {v}");
            assert_eq!(f.read(&format!("{m}{v}.again_o")), fresh, "{m} {v} (second round)");
        }
    }
    assert!(text.contains("tmp-left=0"), "no temp file may survive a failed store: {text}");
    let num = |k: &str| -> u64 {
        let i = text.find(k).unwrap() + k.len();
        text[i..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(num("used-after=") < num("used-before="), "cleanup gives space back: {text}");
}

#[test]
fn umask_and_setgid_directories_make_a_group_shared_cache() {
    let f = Fixture::new();
    std::fs::create_dir_all(&f.cache).unwrap();
    // Group `daemon` (gid 1) exists on Debian; the setgid bit makes new files inherit it.
    std::os::unix::fs::chown(&f.cache, None, Some(1)).unwrap();
    std::fs::set_permissions(&f.cache, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let mut c = f.ltocache();
    c.env("LTOCACHE_UMASK", "002").arg(CLANG).args(f.backend_args("vec", "vec.final_o", &[]));
    ok(&mut c);
    let entry = f.entry_files().pop().unwrap();
    let meta = entry.metadata().unwrap();
    assert_eq!(meta.gid(), 1, "entries inherit the cache's group");
    assert_eq!(meta.mode() & 0o777, 0o664, "group-writable with umask 002");
    let dir = entry.parent().unwrap().metadata().unwrap();
    assert_eq!(dir.mode() & 0o2777, 0o2775, "new directories are group-writable and setgid");
    let bad = f.ltocache().env("LTOCACHE_UMASK", "999").arg("config").output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("umask"));
}

#[test]
fn compressed_store_serves_identical_objects() {
    // The fixture's objects are 1–2 KiB, stored raw (one block either way);
    // a 20 KiB `.incbin` makes `blob`'s object worth compressing.
    let big_blob = "ltocache fixture data, repeated to make an object worth compressing\n".repeat(300);
    let f = Fixture::new();
    f.write("blob.bin", &big_blob);
    let run = |f: &Fixture| {
        for m in MODULES {
            let mut c = f.ltocache();
            // The default (no setting) compresses.
            c.env_remove("LTOCACHE_COMPRESSION").arg(CLANG).args(f.backend_args(m, &format!("{m}.final_o"), &[]));
            ok(&mut c);
        }
    };
    run(&f);
    run(&f);
    assert_eq!(f.stat("hits"), MODULES.len() as i64);
    // By default the objects live in their entries: compressed, unless they
    // fit in one filesystem block anyway.
    assert!(f.blob_files().is_empty());
    let mut compressed = 0;
    for e in f.entry_files() {
        use ltocache::store::{Entry, Stored, RAW_MAX};
        let entry = Entry::decode(&std::fs::read(&e).unwrap()).unwrap();
        let o = &entry.outputs[0];
        match &o.stored {
            Stored::InlineZstd(packed) if o.size > RAW_MAX as u64 => {
                assert!((packed.len() as u64) < o.size, "objects compress");
                compressed += 1;
            }
            Stored::Inline(raw) if o.size <= RAW_MAX as u64 => assert_eq!(raw.len() as u64, o.size),
            _ => panic!("{entry:?}"),
        }
    }
    assert!(compressed > 0, "some fixture objects are larger than a block");
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]));
    }
    // With blob files (inline_max = 0), as `.zst` blobs.
    let g = Fixture::new();
    g.write("blob.bin", &big_blob);
    g.use_blob_files();
    run(&g);
    run(&g);
    assert_eq!(g.stat("hits"), MODULES.len() as i64);
    assert!(g.blob_files().iter().any(|p| p.to_string_lossy().ends_with(".zst")), "objects compress");
    for m in MODULES {
        assert_eq!(g.read(&format!("{m}.final_o")), g.fresh_object(m, &[]));
    }
    ok(g.ltocache().arg("verify"));
    ok(f.ltocache().arg("verify"));
    assert!(String::from_utf8(ok(f.ltocache().env_remove("LTOCACHE_COMPRESSION").arg("config")).stdout)
        .unwrap()
        .contains("zstd:1"));
    // An uncompressed reader (compression off) serves the compressed blobs too.
    f.cached_backends(&[]);
    assert_eq!(f.stat("hits"), 2 * MODULES.len() as i64);
    // Bad settings are refused with a clear message.
    let bad = f.ltocache().env("LTOCACHE_COMPRESSION", "zstd:99").arg("config").output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("compression"));
}

#[test]
fn reflink_mode_shares_extents_on_xfs() {
    // A real reflink-capable filesystem: XFS on a loop device, in a private
    // mount namespace. The build directory and the cache both live on it.
    let f = Fixture::new();
    let img = f.dir.with_file_name("xfs.img");
    std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
    ok(Command::new("mkfs.xfs").env("PATH", path_with_sbin()).args(["-q", "-m", "reflink=1"]).arg(&img));
    let mnt = f.dir.with_file_name("xfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let args = |m: &str| f.backend_args(m, &format!("{m}.final_o"), &[]).join(" ");
    let text = in_mount_namespace(
        &f,
        &format!(
            "mount -o loop {img} {mnt}
             cp -a . {mnt}/build && cd {mnt}/build
             export LTOCACHE_DIR={mnt}/cache LTOCACHE_SERVE_MODE=reflink LTOCACHE_STATS_DIR={mnt}/stats
             $L {CLANG} {vec}; rm vec.final_o; $L {CLANG} {vec}
             cmp vec.final_o vec.fresh_o && echo same-bytes
             filefrag -v vec.final_o | grep -q shared && echo extents-shared
             $L stats --json",
            img = img.display(),
            mnt = mnt.display(),
            vec = args("vec"),
        )
        .replace(
            "cmp vec.final_o vec.fresh_o",
            &format!("{CLANG} {} && cmp vec.final_o vec.fresh_o", f.backend_args("vec", "vec.fresh_o", &[]).join(" ")),
        ),
    );
    assert_eq!(util::stat_of(&text, "hits"), 1, "{text}");
    assert!(text.contains("same-bytes"), "{text}");
    assert!(text.contains("extents-shared"), "a reflinked hit shares the blob's extents: {text}");
}

#[test]
fn max_files_limit_is_kept() {
    let f = Fixture::new();
    for m in MODULES {
        let mut c = f.ltocache();
        c.env("LTOCACHE_MAXFILES", "4").arg(CLANG).args(f.backend_args(m, &format!("{m}.final_o"), &[]));
        ok(&mut c);
    }
    let files = f.entry_files().len() + f.blob_files().len();
    // Tolerance: one store (an entry, and a blob for large objects) between a
    // store and its cleanup. Six modules, one file each (objects are inline).
    assert!(files <= 4 + 2, "{files} files with max_files = 4");
    assert!(f.stat("evicted_entries") > 0);
    ok(f.ltocache().arg("verify"));
}

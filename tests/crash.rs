//! Fault injection: writers, cleaners and journal folds (`stats`) killed with
//! SIGKILL at random points, hundreds of times; then the store must verify,
//! stale temp files must go at the next cleanup, SQLite must be consistent,
//! and a real build must produce exactly what clang alone produces.
//!
//! The killed compiles use a fake compiler (a shell script): what is under
//! test is ltocache's own writes, which do not depend on clang. The real
//! build afterwards uses clang-19.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::{ok, Fixture, MODULES};

/// A deterministic fake backend: its object is a function of its arguments
/// (without the output path), large enough that writes take a while.
const FAKE_CC: &str = r#"#!/bin/bash
out=""; prev=""; args=()
for a in "$@"; do
  if [ "$a" = "--version" ]; then echo "fakecc 1"; exit 0; fi
  if [ "$prev" = "-o" ]; then out=$a; else args+=("$a"); fi
  prev=$a
done
{ printf '%s\n' "${args[@]}"; head -c 300000 /dev/zero | tr '\0' 'x'; } > "$out"
"#;

/// A small xorshift generator: reproducible "random" kill points.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_points_never_corrupts_the_cache() {
    let f = Fixture::new();
    let fake = f.dir.join("fakecc");
    std::fs::write(&fake, FAKE_CC).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let iterations = 300;
    let mut killed = 0;
    for i in 0..iterations {
        let variant = format!("-DV{}", rng.next() % 12);
        let m = MODULES[(rng.next() % MODULES.len() as u64) as usize];
        let mut cmd = f.ltocache();
        match i % 5 {
            // A stats reader, which folds the journal (killed mid-fold too).
            4 if i % 10 == 9 => {
                cmd.args(["stats", "--json"]);
            }
            // A cleaner with a tiny limit, racing the writers.
            4 => {
                cmd.env("LTOCACHE_GRACE", "0s").args(["cleanup", "--max-size", "700k"]);
            }
            // A writer that always stores (recache), or a normal lookup/store.
            k => {
                if k % 2 == 0 {
                    cmd.env("LTOCACHE_RECACHE", "1");
                }
                // A script compiler is refused unless compiler_check states it.
                cmd.env("LTOCACHE_COMPILER_CHECK", "string:fakecc");
                cmd.arg(&fake).args(f.backend_args(m, &format!("{m}.fake_o"), &[&variant]));
            }
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Within the few milliseconds a hit, a store or a `stats` takes on
        // a quiet machine (25 ms let most of them finish before the kill).
        std::thread::sleep(Duration::from_micros(rng.next() % 12_000));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // A sanity check that the kills land mid-run (fast `stats` and cleanup
    // runs often finish first; compiles rarely do).
    assert!(killed > iterations / 6, "only {killed} of {iterations} processes were killed mid-run");

    // No entry or blob is corrupt (dangling entries — a blob evicted under a
    // concurrent writer — are misses, not corruption).
    let v = f.ltocache().arg("verify").output().unwrap();
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(!text.contains("corrupt"), "{text}");

    // Every entry that is served verifies: serve each variant and compare with
    // the fake compiler run directly.
    for n in 0..12 {
        let variant = format!("-DV{n}");
        for m in MODULES {
            let out = f.cached_backend_with(&fake, m, &[&variant]);
            assert!(out.status.success());
            let served = f.read(&format!("{m}.final_o"));
            ok(Command::new(&fake).current_dir(&f.dir).args(f.backend_args(m, "direct.fake_o", &[&variant])));
            assert_eq!(served, f.read("direct.fake_o"), "{m} {variant}");
        }
    }

    // The next cleanup leaves no temp file older than the grace period.
    ok(f.ltocache().env("LTOCACHE_GRACE", "0s").arg("cleanup"));
    assert!(util::files_under(&f.cache.join("v1/tmp")).is_empty());

    // SQLite is consistent (or was rebuilt).
    let db = f.state_dir().join("stats.sqlite3");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    ok(f.ltocache().args(["stats", "--json"]));

    // A real build afterwards produces exactly what clang alone produces.
    f.cached_backends(&[]);
    f.cached_backends(&[]);
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, &[]), "{m}");
    }
}

//! The cache on real NFS (issue 13): `tests/nfs/run.sh` starts nfs-ganesha in
//! a loopback-only network namespace and two qemu guests with Linux's NFS
//! client, once over NFSv4.2 and once over NFSv3; each guest runs
//! `tests/nfs/scenario.sh` with real clang-19 (the host's, over a read-only
//! export) and reports `@@R key value` lines that land in
//! `target/nfs/results.txt`. This test runs it with the binary cargo built and
//! judges those results. It skips, saying why, only where `unshare` or qemu
//! cannot run. Alone: `cargo test --release --test nfs -- --nocapture`, or
//! `bash tests/nfs/run.sh` (which builds the static release binary).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The 2 MiB limit the scenario's size-limit phase stores under.
const LIMIT: u64 = 2 << 20;
const MODULES: u64 = 6;

struct Results(HashMap<(String, String, String), String>);

impl Results {
    fn parse(text: &str) -> Results {
        let mut map = HashMap::new();
        for line in text.lines() {
            let mut it = line.splitn(4, ' ');
            let (Some(v), Some(c), Some(k)) = (it.next(), it.next(), it.next()) else { continue };
            map.insert((v.to_string(), c.to_string(), k.to_string()), it.next().unwrap_or("").to_string());
        }
        Results(map)
    }

    fn get(&self, vers: &str, client: &str, key: &str) -> Option<&str> {
        self.0.get(&(vers.to_string(), client.to_string(), key.to_string())).map(String::as_str)
    }

    fn want(&self, vers: &str, client: &str, key: &str) -> &str {
        self.get(vers, client, key).unwrap_or_else(|| {
            panic!("NFSv{vers} client {client}: no result {key:?} (see target/nfs/v{vers}/{client}.log)")
        })
    }

    fn num(&self, vers: &str, client: &str, key: &str) -> u64 {
        let v = self.want(vers, client, key);
        v.parse().unwrap_or_else(|_| panic!("NFSv{vers} client {client}: {key} = {v:?}, not a number"))
    }
}

#[test]
fn two_nfs_clients_share_one_cache() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join("target/nfs");
    let status = Command::new("bash")
        .arg(repo.join("tests/nfs/run.sh"))
        .arg(&out)
        .env("LTOCACHE_NFS_BIN", env!("CARGO_BIN_EXE_ltocache"))
        .status()
        .expect("running tests/nfs/run.sh");
    let text = std::fs::read_to_string(out.join("results.txt")).unwrap_or_default();
    if status.code() == Some(77) {
        eprintln!("SKIPPED: the NFS test cannot run here: {}", text.trim());
        return;
    }
    eprintln!("{text}");
    assert!(status.success(), "tests/nfs/run.sh failed ({status}); logs under {}", out.display());
    let r = Results::parse(&text);

    for vers in ["4.2", "3"] {
        assert_eq!(r.want(vers, "host", "harness_rc"), "0", "NFSv{vers}: harness");
        // Both clients booted and mounted before anything else is judged.
        for c in ["A", "B"] {
            let mount = r.want(vers, c, "mounted");
            assert!(mount.contains(&format!("vers={vers},")), "NFSv{vers} client {c} mounted {mount}");
            assert!(r.get(vers, c, "fail").is_none(), "NFSv{vers} client {c}: {}", r.want(vers, c, "fail"));
        }
        for c in ["A", "B"] {
            // Both clients stored the same six keys at once, each object equal to clang's.
            for phase in ["race", "own", "cross"] {
                assert_eq!(r.num(vers, c, &format!("{phase}_mismatch")), 0, "NFSv{vers} {c}: {phase} objects differ");
            }
            // Every object of the other client's variant was a hit.
            assert_eq!(r.num(vers, c, "cross_hits"), MODULES, "NFSv{vers} {c}: hits of the other client's entries");
            assert_eq!(
                r.want(vers, c, "cross_stats_hits"),
                MODULES.to_string(),
                "NFSv{vers} {c}: `stats` counted them"
            );
            for cmd in [
                "version",
                "help",
                "config",
                "stats",
                "stats_json",
                "explain",
                "verify",
                "evict",
                "cleanup",
                "zero_stats",
            ] {
                assert_eq!(r.want(vers, c, &format!("rc_{cmd}")), "0", "NFSv{vers} {c}: `{cmd}` with default settings");
            }
            assert_eq!(r.want(vers, c, "after_zero_hits"), "0", "NFSv{vers} {c}: zero-stats");
            assert_eq!(r.want(vers, c, "rc_limit_cleanup"), "0", "NFSv{vers} {c}: cleanup under the limit");
        }
        // One cleaner at a time: two cleanups started together never both
        // skip, and the store ends within the documented tolerance (the limit
        // plus one store per host).
        let skipped = r.num(vers, "A", "cleanup_skipped") + r.num(vers, "B", "cleanup_skipped");
        assert!(skipped <= 1, "NFSv{vers}: both cleanups skipped, nobody cleaned");
        let bytes = r.num(vers, "A", "limit_bytes");
        let largest = r.num(vers, "A", "limit_largest");
        assert!(bytes <= LIMIT + 2 * (largest + 4096), "NFSv{vers}: {bytes} bytes stored under a {LIMIT}-byte limit");

        // B was powered off mid-store holding the cleanup lock; A carries on.
        assert!(r.get(vers, "B", "exit").is_none(), "NFSv{vers}: B was to be powered off, not to finish");
        assert!(r.get(vers, "host", "killed_B").is_some(), "NFSv{vers}: the host did not power B off");
        assert_eq!(r.want(vers, "A", "rc_verify_after_kill"), "0", "NFSv{vers}: verify after B died");
        for phase in ["final", "again"] {
            assert_eq!(
                r.num(vers, "A", &format!("{phase}_mismatch")),
                0,
                "NFSv{vers}: {phase} build differs from clang's"
            );
        }
        assert_eq!(r.num(vers, "A", "again_hits"), MODULES, "NFSv{vers}: the rebuild after the power-off hits");
        assert_eq!(r.want(vers, "A", "rc_stats_final"), "0", "NFSv{vers}: stats after B died");
        if vers != "3" {
            // NFSv4: the server's lease on the dead client's lock runs out.
            assert_eq!(
                r.want(vers, "A", "lock_released"),
                "1",
                "NFSv{vers}: the dead client's cleanup lock never went"
            );
        }
        assert_eq!(r.want(vers, "A", "rc_clear"), "0", "NFSv{vers}: clear");
        assert_eq!(r.want(vers, "A", "after_clear_entries"), "0", "NFSv{vers}: clear left entries");
        assert_eq!(r.want(vers, "A", "exit"), "0", "NFSv{vers}: A's scenario");
    }
}

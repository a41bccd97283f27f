//! Four simulated hosts — separate processes, each in its own UTS and PID
//! namespace with its own host name — build the fixture concurrently into one
//! shared cache directory with a small size limit.

mod util;

use std::process::Command;
use util::{Fixture, CLANG, MODULES};

const HOSTS: usize = 4;
const VARIANTS: &[&str] = &["-O2", "-O1", "-fno-PIE", "-ffunction-sections"];
const LIMIT: u64 = 16 * 1024;

#[test]
fn four_hosts_share_one_directory_under_a_size_limit() {
    let first = Fixture::new();
    let hosts: Vec<Fixture> = (1..HOSTS).map(|_| Fixture::sharing_cache_with(&first)).collect();
    let all: Vec<&Fixture> = std::iter::once(&first).chain(hosts.iter()).collect();

    let children: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(h, f)| {
            let mut script = format!("hostname host{h}\n");
            // Two rounds: the second one hits what survived eviction.
            for round in 0..2 {
                for v in VARIANTS {
                    for m in MODULES {
                        let args = f.backend_args(m, &format!("{m}{v}.r{round}.o"), &[v]).join(" ");
                        script.push_str(&format!("\"$L\" {CLANG} {args}\n"));
                    }
                }
            }
            Command::new("unshare")
                .args(["--uts", "--pid", "--fork", "bash", "-euo", "pipefail", "-c", &script])
                .current_dir(&f.dir)
                .env("L", util::ltocache_bin())
                .env("LTOCACHE_DIR", &f.cache)
                .env("LTOCACHE_MAXSIZE", LIMIT.to_string())
                .env("LTOCACHE_COMPRESSION", "off")
                .env_remove("LTOCACHE_STATS_DIR")
                .env_remove("LTOCACHE_RECACHE")
                .env_remove("LTOCACHE_READONLY")
                .spawn()
                .expect("unshare")
        })
        .collect();
    for (h, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "host{h}'s build failed");
    }

    // Nothing stale or corrupt was served: every object equals clang's own.
    for v in VARIANTS {
        for m in MODULES {
            let fresh = first.fresh_object(m, &[v]);
            for (h, f) in all.iter().enumerate() {
                for round in 0..2 {
                    assert_eq!(f.read(&format!("{m}{v}.r{round}.o")), fresh, "host{h} {m} {v} round {round}");
                }
            }
        }
    }

    // Counters add up: each host kept its own database under hosts/<name>/u<uid>/.
    let per_host = 2 * VARIANTS.len() * MODULES.len();
    let mut total = 0;
    let mut evicted = 0;
    for h in 0..HOSTS {
        // SAFETY: geteuid has no preconditions.
        let dir = first.cache.join("hosts").join(format!("host{h}")).join(format!("u{}", unsafe { libc::geteuid() }));
        assert!(dir.join("journal").exists(), "host{h} has its own stats journal");
        let out = first.ltocache().env("LTOCACHE_STATS_DIR", &dir).args(["stats", "--json"]).output().unwrap();
        let json = String::from_utf8(out.stdout).unwrap();
        let n = util::stat_of(&json, "hits") + util::stat_of(&json, "misses");
        assert_eq!(n, per_host as i64, "host{h}: {json}");
        assert_eq!(util::stat_of(&json, "errors_total"), 0);
        total += n;
        evicted += util::stat_of(&json, "evicted_entries");
    }
    assert_eq!(total, (HOSTS * per_host) as i64);
    assert!(evicted > 0, "the limit must have forced evictions (store: {:?})", first.entry_files().len());

    // The limit holds within the stated tolerance: each host may be one store
    // past it between a store and its cleanup.
    let size: u64 =
        first.entry_files().iter().chain(first.blob_files().iter()).map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let largest_store = first.blob_files().iter().map(|p| std::fs::metadata(p).unwrap().len()).max().unwrap_or(0)
        + first.entry_files().iter().map(|p| std::fs::metadata(p).unwrap().len()).max().unwrap();
    let bound = LIMIT + HOSTS as u64 * largest_store;
    eprintln!("shared store: {size} bytes; limit {LIMIT}; tolerance bound {bound}");
    assert!(size <= bound, "store is {size} bytes, limit {LIMIT}, bound {bound}");
    let verify = first.ltocache().arg("verify").output().unwrap();
    assert!(!String::from_utf8_lossy(&verify.stdout).contains("corrupt"));
}

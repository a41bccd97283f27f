//! Sampled verification (`LTOCACHE_VERIFY=RATE`): a fraction of hits is
//! compiled anyway and the fresh result compared byte for byte with the
//! cached one (object and stderr; entries hold no other outputs). On a
//! mismatch the fresh result is what the build gets, `stale_detected` is
//! counted, and both results with the key's fields are kept under
//! `<state dir>/verify-failures/` for a bug report. A team can leave 1 % on
//! in CI and know whether the key misses something.

use crate::exec::{self, Finished};
use crate::key::args::BackendInvocation;
use crate::store::{Entry, LocalStore, ServeMode, Served};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `0`, `0.01`, `1` (every hit), or a percentage `5%`.
pub fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim();
    let rate = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().context("expected a percentage")? / 100.0,
        None if t.is_empty() => 0.0,
        None => t.parse::<f64>().context("expected a fraction between 0 and 1")?,
    };
    if !(0.0..=1.0).contains(&rate) {
        bail!("verify rate {t} is outside 0..1");
    }
    Ok(rate)
}

/// Whether this hit is verified: a rate of 0 never, 1 always, otherwise a
/// draw from the clock, the process and the key (no shared state needed).
pub fn selected(rate: f64, key: &[u8; 32]) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let mut h = blake3::Hasher::new();
    h.update(key);
    h.update(&crate::util::now_ns().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let draw = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
    (draw as f64) < rate * (u64::MAX as f64)
}

/// What a verified hit found.
pub struct Verdict {
    /// The fresh compile: its status, stdout and stderr are what the caller reports.
    pub finished: Finished,
    pub stale: bool,
    /// Where both results were kept, on a mismatch.
    pub kept: Option<PathBuf>,
}

/// Compiles a hit anyway and compares. The fresh compile writes the real
/// output (so a mismatch serves the fresh result); the cached object is
/// served into a temporary file beside it only to be compared.
#[allow(clippy::too_many_arguments)]
pub fn verify_hit(
    store: &LocalStore,
    entry: &Entry,
    inv: &BackendInvocation,
    program: &Path,
    args: &[OsString],
    key_fields: &str,
    state_dir: &Path,
) -> Result<Verdict> {
    let cached = cached_object(store, entry, &inv.output)?;
    let finished = exec::run_captured(program, &inv.compiler, args)?;
    let fresh = if finished.status.success() { crate::util::read_file(&inv.output).ok() } else { None };
    let stale = fresh.as_deref() != Some(&cached[..]) || finished.stderr != entry.stderr || !finished.stdout.is_empty();
    let kept = if stale {
        keep_both(state_dir, entry, &cached, fresh.as_deref(), &finished, inv, key_fields).ok()
    } else {
        None
    };
    Ok(Verdict { finished, stale, kept })
}

fn cached_object(store: &LocalStore, entry: &Entry, output: &Path) -> Result<Vec<u8>> {
    let tmp = crate::util::parent_dir(output).join(crate::util::temp_name(".ltocache-verify."));
    let result = (|| -> Result<Vec<u8>> {
        let mut data = Vec::new();
        for o in &entry.outputs {
            anyhow::ensure!(o.kind == 0, "entry has an output kind this version cannot restore");
            match store.serve_output(o, &tmp, ServeMode::Copy)? {
                Served::Written(_) => data = std::fs::read(&tmp).context("reading the cached object back")?,
                Served::Unavailable(why) => bail!("cached output unavailable: {why:?}"),
            }
        }
        Ok(data)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn keep_both(
    state_dir: &Path,
    entry: &Entry,
    cached: &[u8],
    fresh: Option<&[u8]>,
    finished: &Finished,
    inv: &BackendInvocation,
    key_fields: &str,
) -> Result<PathBuf> {
    let dir = state_dir.join("verify-failures").join(format!(
        "{}-{}",
        crate::util::hex(&entry.key[..8]),
        crate::util::now_ns()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data);
    write("cached.o", cached)?;
    write("cached.stderr", &entry.stderr)?;
    write("fresh.o", fresh.unwrap_or_default())?;
    write("fresh.stderr", &finished.stderr)?;
    write("fresh.status", format!("{:?}\n", finished.status).as_bytes())?;
    // The fields this compile's key was made of; the stored entry was found
    // under the same digest, so its fields hashed to the same value — the
    // pair shows what the key missed, not where it differs. The fields the
    // last compile recorded for this output (from `explain`'s table) are in
    // `recorded-fields.txt` when known.
    write("key-fields.txt", key_fields.as_bytes())?;
    let cmd: Vec<String> = std::iter::once(inv.compiler.clone()).chain(inv.expanded.iter().cloned()).collect();
    write("command.txt", format!("{}\n", cmd.join("\n")).as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        assert_eq!(parse_rate("1").unwrap(), 1.0);
        assert_eq!(parse_rate("0.01").unwrap(), 0.01);
        assert_eq!(parse_rate("5%").unwrap(), 0.05);
        assert_eq!(parse_rate("").unwrap(), 0.0);
        assert!(parse_rate("2").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").is_err());
    }

    #[test]
    fn selection_follows_the_rate() {
        let key = [7u8; 32];
        assert!((0..1000).all(|_| !selected(0.0, &key)));
        assert!((0..1000).all(|_| selected(1.0, &key)));
        let n = (0u32..4000).filter(|i| selected(0.25, &blake3::hash(&i.to_le_bytes()).into())).count();
        assert!((700..1300).contains(&n), "about a quarter selected, got {n}/4000");
    }
}

//! The subcommands: `stats`, `zero-stats`, `clear`, `config`, `explain`.

use crate::cli::Cmd;
use crate::config::Config;
use crate::state::stats::Db;
use anyhow::{bail, Context, Result};
use humansize::{format_size, BINARY};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub fn run(cmd: Cmd) -> Result<()> {
    let config = Config::load()?;
    config.apply_umask();
    let store = config.store();
    let need_writable = || -> Result<()> {
        if let Some(why) = &config.refused {
            bail!("cache directory refused: {why}");
        }
        if !store.writable() {
            bail!(
                "cache directory {} is not writable (check its owner, group and mode, or the mount)",
                config.cache_dir.value.display()
            );
        }
        Ok(())
    };
    match cmd {
        Cmd::Cleanup { max_size } => {
            need_writable()?;
            let mut limits = config.limits();
            if let Some(s) = max_size {
                limits.max_size = crate::config::parse_size(&s)?;
            }
            let r = crate::store::cleanup::cleanup(&store, &limits)?;
            print_sweep(&r);
            Ok(())
        }
        Cmd::Evict { older_than } => {
            need_writable()?;
            let age = crate::config::parse_duration(&older_than)?;
            let r = crate::store::cleanup::evict_older_than(&store, &config.limits(), age)?;
            print_sweep(&r);
            Ok(())
        }
        Cmd::Verify { fix } => {
            if fix {
                need_writable()?;
            }
            let r = crate::store::cleanup::verify(&store, fix)?;
            println!("checked {} entries and {} blobs", r.entries, r.blobs);
            for p in &r.bad_blobs {
                println!("corrupt blob: {}", p.display());
            }
            for p in &r.bad_entries {
                println!("corrupt entry: {}", p.display());
            }
            for p in &r.dangling_entries {
                println!("entry names a missing or corrupt blob: {}", p.display());
            }
            if fix {
                println!("removed {} files", r.fixed);
            }
            if !r.clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Stats { json } => stats(&config, json),
        Cmd::ZeroStats => {
            with_db(&config, |db| db.zero())?;
            crate::state::stats::zero_passthrough(&config.stats_db_path())?;
            println!("Statistics zeroed");
            Ok(())
        }
        Cmd::Clear => {
            need_writable()?;
            store.clear()?;
            with_db(&config, |db| db.forget_entries())?;
            println!("Cleared {}", store.root().display());
            Ok(())
        }
        Cmd::Config => {
            for (k, v, origin) in config.describe() {
                println!("{k:<12} = {v:<50} ({origin})");
            }
            if let Some(why) = &config.refused {
                println!("warning: cache directory refused, compiles pass through: {why}");
            }
            for w in &config.warnings {
                println!("warning: {w}");
            }
            Ok(())
        }
        Cmd::Explain { output } => explain(&config, &output),
    }
}

fn print_sweep(r: &crate::store::cleanup::Report) {
    if r.skipped {
        println!("another cleanup is running; nothing done");
        return;
    }
    if r.broke_stale_lock {
        println!(
            "broke a stale cleanup lock (untouched for {} s: its holder is gone)",
            crate::store::cleanup::LOCK_STALE.as_secs()
        );
    }
    println!(
        "{} in {} files -> {} in {} files; removed {} entries, {} blobs, {} temp files, {} corrupt entries",
        format_size(r.bytes_before, BINARY),
        r.files_before,
        format_size(r.bytes_after, BINARY),
        r.files_after,
        r.removed_entries,
        r.removed_blobs,
        r.removed_temp,
        r.removed_corrupt
    );
}

/// Runs `f` on this host's database with its journal folded in, so it has
/// every record; a database found damaged on the way is rebuilt
/// ([`Db::with`]), the journal folded into the new one.
fn with_db<T>(config: &Config, mut f: impl FnMut(&mut Db) -> Result<T>) -> Result<T> {
    let path = config.stats_db_path();
    Db::with(&path, |db| {
        crate::state::journal::fold(&config.state_dir(), db, true).context("folding the stats journal")?;
        f(db)
    })
    .with_context(|| {
        format!("the stats database {}", config.state().real.join(crate::cachedir::layout::STATS_DB).display())
    })
}

/// The numbers `stats` reports, computed once for both output forms.
struct Report {
    counters: BTreeMap<String, i64>,
    hits: i64,
    misses: i64,
    uncacheable: BTreeMap<String, i64>,
    errors: BTreeMap<String, i64>,
    store_entries: u64,
    store_files: u64,
    store_bytes: u64,
    /// (entries, bytes) this host stored, from its database.
    stored_here: (i64, i64),
}

impl Report {
    fn get(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
    fn hit_rate(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 * 100.0 / total as f64)
    }
}

fn report(config: &Config) -> Result<Report> {
    let (mut counters, stored_here) = with_db(config, |db| Ok((db.counters()?, db.stored_usage()?)))?;
    let front_end = crate::state::stats::passthrough_count(&config.stats_db_path());
    if front_end > 0 {
        *counters.entry("uncacheable.not_backend".into()).or_insert(0) += front_end;
    }
    let sub = |prefix: &str| -> BTreeMap<String, i64> {
        counters
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), *v)))
            .filter(|(_, v)| *v != 0)
            .collect()
    };
    let (uncacheable, errors) = (sub("uncacheable."), sub("errors."));
    let (store_entries, store_files, store_bytes) = config.store().scan_usage();
    Ok(Report {
        hits: counters.get("hits").copied().unwrap_or(0),
        misses: counters.get("misses").copied().unwrap_or(0),
        counters,
        uncacheable,
        errors,
        store_entries,
        store_files,
        store_bytes,
        stored_here,
    })
}

fn stats(config: &Config, json: bool) -> Result<()> {
    let r = report(config)?;
    let secs = |name: &str| r.get(name) as f64 / 1e9;
    if json {
        let map = |m: &BTreeMap<String, i64>| {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("\"{}\": {v}", json_escape(k))).collect();
            format!("{{{}}}", items.join(", "))
        };
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"cache_dir\": \"{}\",", json_escape(&config.cache_dir.value.display().to_string()));
        let _ = writeln!(s, "  \"state_dir\": \"{}\",", json_escape(&config.state().real.display().to_string()));
        let refused = config.refused.as_deref().map(|w| format!("\"{}\"", json_escape(w)));
        let _ = writeln!(s, "  \"cache_dir_refused\": {},", refused.unwrap_or_else(|| "null".into()));
        let _ = writeln!(s, "  \"hits\": {},", r.hits);
        // Precise hits are hits (counted in "hits" too), shown apart.
        let _ = writeln!(s, "  \"precise_hits\": {},", r.get("precise_hits"));
        let _ = writeln!(s, "  \"precise\": {},", map(&crate::precise::counters(&r.counters)));
        let _ = writeln!(s, "  \"misses\": {},", r.misses);
        let _ = writeln!(
            s,
            "  \"hit_rate_percent\": {},",
            r.hit_rate().map(|v| format!("{v:.2}")).unwrap_or("null".into())
        );
        let _ = writeln!(s, "  \"uncacheable\": {},", map(&r.uncacheable));
        let _ = writeln!(s, "  \"uncacheable_total\": {},", r.uncacheable.values().sum::<i64>());
        let _ = writeln!(s, "  \"errors\": {},", map(&r.errors));
        let _ = writeln!(s, "  \"errors_total\": {},", r.errors.values().sum::<i64>());
        let _ = writeln!(s, "  \"compile_failed\": {},", r.get("compile_failed"));
        let _ = writeln!(s, "  \"verified_hits\": {},", r.get("verified_hits"));
        let _ = writeln!(s, "  \"stale_detected\": {},", r.get("stale_detected"));
        let _ = writeln!(s, "  \"stores_path_keyed\": {},", r.get("stores_path_keyed"));
        let _ = writeln!(s, "  \"driver_probes\": {},", r.get("driver_probes"));
        let _ = writeln!(s, "  \"stores\": {},", r.get("stores"));
        let _ = writeln!(s, "  \"bytes_served\": {},", r.get("bytes_served"));
        let _ = writeln!(s, "  \"bytes_hashed\": {},", r.get("bytes_hashed"));
        let _ = writeln!(s, "  \"backend_seconds_saved\": {:.6},", secs("ns_saved"));
        let _ = writeln!(s, "  \"backend_seconds_on_misses\": {:.6},", secs("ns_compiled"));
        let _ = writeln!(s, "  \"own_cpu_seconds_on_hits\": {:.6},", secs("cpu_ns.own_hits"));
        let _ = writeln!(s, "  \"own_cpu_seconds_on_misses\": {:.6},", secs("cpu_ns.own_misses"));
        let _ = writeln!(s, "  \"compiler_cpu_seconds_on_misses\": {:.6},", secs("cpu_ns.compiler_misses"));
        let _ = writeln!(s, "  \"own_cpu_seconds_hashing_compiler\": {:.6},", secs("cpu_ns.compiler_identity"));
        let _ = writeln!(s, "  \"cache_entries\": {},", r.store_entries);
        let _ = writeln!(s, "  \"cache_files\": {},", r.store_files);
        let _ = writeln!(s, "  \"cache_size_bytes\": {},", r.store_bytes);
        let _ = writeln!(s, "  \"stored_by_this_host_entries\": {},", r.stored_here.0);
        let _ = writeln!(s, "  \"stored_by_this_host_bytes\": {},", r.stored_here.1);
        let _ = writeln!(s, "  \"max_size_bytes\": {},", config.max_size.value);
        let _ = writeln!(s, "  \"max_files\": {},", config.max_files.value);
        let _ = writeln!(s, "  \"remotes\": {},", remotes_json(&r.counters));
        let _ = writeln!(s, "  \"cleanups\": {},", r.get("cleanups"));
        let _ = writeln!(s, "  \"evicted_entries\": {}", r.get("evicted_entries"));
        s.push('}');
        println!("{s}");
        return Ok(());
    }
    let mut out = String::new();
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{k:<28} {v}");
    };
    row(&mut out, "Cache directory", config.cache_dir.value.display().to_string());
    row(&mut out, "Stats database", config.state().real.join(crate::cachedir::layout::STATS_DB).display().to_string());
    row(&mut out, "State directory", config.state().why.clone());
    if let Some(why) = &config.refused {
        row(&mut out, "Cache directory refused", why.clone());
    }
    row(&mut out, "Hits", r.hits.to_string());
    if r.get("precise_hits") > 0 || crate::precise::enabled() {
        row(&mut out, "  post-import unchanged", r.get("precise_hits").to_string());
        for (k, v) in crate::precise::counters(&r.counters) {
            row(&mut out, &format!("  precise {k}"), v.to_string());
        }
    }
    row(&mut out, "Misses", r.misses.to_string());
    row(&mut out, "Hit rate", r.hit_rate().map(|v| format!("{v:.1} %")).unwrap_or_else(|| "-".into()));
    row(&mut out, "Uncacheable", r.uncacheable.values().sum::<i64>().to_string());
    for (k, v) in &r.uncacheable {
        row(&mut out, &format!("  {k}"), v.to_string());
    }
    row(&mut out, "Errors (fell back to clang)", r.errors.values().sum::<i64>().to_string());
    for (k, v) in &r.errors {
        row(&mut out, &format!("  {k}"), v.to_string());
    }
    row(&mut out, "Failed compiles (not cached)", r.get("compile_failed").to_string());
    if r.get("verified_hits") > 0 || r.get("stale_detected") > 0 {
        row(&mut out, "Verified hits (recompiled)", r.get("verified_hits").to_string());
        row(&mut out, "Stale hits detected", r.get("stale_detected").to_string());
    }
    row(&mut out, "Bytes served", format_size(r.get("bytes_served") as u64, BINARY));
    row(&mut out, "Bytes hashed", format_size(r.get("bytes_hashed") as u64, BINARY));
    row(&mut out, "Backend time saved", format!("{:.2} s", secs("ns_saved")));
    row(&mut out, "Backend time on misses", format!("{:.2} s", secs("ns_compiled")));
    // What the cache itself cost: its own CPU time per hit, and on misses as
    // a share of the compiler's CPU time (the compile a miss runs anyway).
    if r.hits > 0 {
        row(&mut out, "ltocache CPU per hit", format!("{:.2} ms", secs("cpu_ns.own_hits") * 1e3 / r.hits as f64));
    }
    if r.get("cpu_ns.compiler_identity") > 0 {
        // Paid once per host and compiler version, not per compile.
        row(
            &mut out,
            "ltocache CPU hashing clang",
            format!("{:.2} s (once per compiler)", secs("cpu_ns.compiler_identity")),
        );
    }
    if r.get("cpu_ns.compiler_misses") > 0 {
        row(
            &mut out,
            "ltocache CPU on misses",
            format!(
                "{:.2} ms per miss, {:.2} % of the compiler's",
                secs("cpu_ns.own_misses") * 1e3 / r.misses.max(1) as f64,
                r.get("cpu_ns.own_misses") as f64 * 100.0 / r.get("cpu_ns.compiler_misses") as f64
            ),
        );
    }
    for (name, m) in crate::store::remote::per_remote(&r.counters) {
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        let line = format!(
            "{} hits, {} misses, {} errors, {} timeouts, {} corrupt, {} skipped (down), {} stores",
            g("hits"),
            g("misses"),
            g("errors"),
            g("timeouts"),
            g("corrupt"),
            g("skipped_down"),
            g("stores")
        );
        row(&mut out, &format!("Remote {name}"), line);
        let (read, written) =
            (format_size(g("bytes_read") as u64, BINARY), format_size(g("bytes_written") as u64, BINARY));
        row(&mut out, "  bytes read / written", format!("{read} / {written}"));
        // What fetching remote hits cost the build against the compiles they replaced.
        let cost = format!("{:.3} s / {:.3} s", g("ns_hits") as f64 / 1e9, g("ns_saved") as f64 / 1e9);
        row(&mut out, "  hits cost / saved", cost);
    }
    row(
        &mut out,
        "Cache size",
        format!("{} in {} files ({} entries)", format_size(r.store_bytes, BINARY), r.store_files, r.store_entries),
    );
    row(
        &mut out,
        "Stored by this host",
        format!("{} in {} entries", format_size(r.stored_here.1 as u64, BINARY), r.stored_here.0),
    );
    row(
        &mut out,
        "Size limit",
        if config.max_size.value == 0 { "none".into() } else { format_size(config.max_size.value, BINARY) },
    );
    row(&mut out, "Cleanups (entries evicted)", format!("{} ({})", r.get("cleanups"), r.get("evicted_entries")));
    print!("{out}");
    Ok(())
}

/// `{"<name>": {"hits": n, ..., "seconds_hits_cost": s, "seconds_saved": s}, ...}`
fn remotes_json(counters: &BTreeMap<String, i64>) -> String {
    let items: Vec<String> = crate::store::remote::per_remote(counters)
        .iter()
        .map(|(name, m)| {
            let mut fields: Vec<String> = m.iter().map(|(k, v)| format!("\"{}\": {v}", json_escape(k))).collect();
            let g = |k: &str| m.get(k).copied().unwrap_or(0) as f64 / 1e9;
            fields.push(format!("\"seconds_hits_cost\": {:.6}", g("ns_hits")));
            fields.push(format!("\"seconds_saved\": {:.6}", g("ns_saved")));
            format!("\"{}\": {{{}}}", json_escape(name), fields.join(", "))
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Says why the last compile of `output` missed: the key fields that differ
/// from the previous compile of the same output that had another key.
fn explain(config: &Config, output: &str) -> Result<()> {
    let p = std::path::Path::new(output);
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    let Some(last) = with_db(config, |db| db.last_compile(&abs.to_string_lossy()))? else {
        bail!("no compile of {} is recorded on this host", abs.display());
    };
    println!("last compile of {}: {}", abs.display(), last.outcome);
    if let Some(why) = crate::precise::explain_line(&last.outcome, &last.fields) {
        println!("{why}");
    }
    let (Some(prev_outcome), Some(prev)) = (last.prev_outcome, last.prev_fields) else {
        println!("no earlier compile of this output with another key is recorded");
        return Ok(());
    };
    println!("it differs from the previous compile of this output ({prev_outcome}) in:");
    for line in explain_diff(&prev, &last.fields) {
        println!("  {line}");
    }
    Ok(())
}

/// The human causes of the differences between two field lists.
pub fn explain_diff(prev: &str, cur: &str) -> Vec<String> {
    let parse = |t: &str| -> BTreeMap<String, String> {
        t.lines().filter_map(|l| l.split_once('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let (a, b) = (parse(prev), parse(cur));
    let mut out = Vec::new();
    // Arguments are compared as lists: one inserted flag shifts every later
    // position, and the user wants to hear about the flag, not the shift.
    let args_of = |m: &BTreeMap<String, String>| -> Vec<String> {
        let mut v: Vec<(usize, String)> = m
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("arg[")?.strip_suffix(']')?.parse().ok()?, v.clone())))
            .collect();
        v.sort();
        v.into_iter().map(|(_, v)| v).collect()
    };
    let (old_args, new_args) = (args_of(&a), args_of(&b));
    if old_args != new_args {
        let removed: Vec<&String> = old_args.iter().filter(|x| !new_args.contains(x)).collect();
        let added: Vec<&String> = new_args.iter().filter(|x| !old_args.contains(x)).collect();
        out.push(format!("an argument: removed {removed:?}, added {added:?}"));
    }
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (old, new) = (a.get(k), b.get(k));
        if old == new || k.starts_with("arg[") || k == "argc" {
            continue;
        }
        let what = match k.as_str() {
            "compiler" | "compiler-name" => "the compiler".to_string(),
            k if k.starts_with("env:") => format!("environment variable {}", &k[4..]),
            "argc" => "the number of arguments".to_string(),
            k if k.starts_with("arg[") => "an argument".to_string(),
            "shard" => "the index shard (summary, import list or module hashes)".to_string(),
            "input" => "the input bitcode".to_string(),
            "modules" => "the number of modules in the shard".to_string(),
            k if k.starts_with("module[") => {
                let label = new.or(old).and_then(|v| v.split_once(' ')).map(|(_, l)| l).unwrap_or("?");
                format!("imported module {label}")
            }
            k if k.starts_with("file:") => format!("the file named by {}", &k[5..]),
            k if k.starts_with("asm-include:") => format!("a file included by assembly ({})", &k[12..]),
            "version" => "the ltocache key version".to_string(),
            _ => k.to_string(),
        };
        let show =
            |v: Option<&String>| v.map(|s| s.chars().take(80).collect::<String>()).unwrap_or_else(|| "(absent)".into());
        out.push(format!("{what} [{k}]: {} -> {}", show(old), show(new)));
    }
    out
}

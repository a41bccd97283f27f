//! Settings: defaults, then `ltocache.conf` inside the cache directory, then
//! `LTOCACHE_*` environment variables (the environment wins). Every value
//! remembers where it came from so `ltocache config` can say.

pub use crate::store::ServeMode;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::cachedir::layout::CONFIG_FILE_NAME;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment ({v})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub cache_dir: Setting<PathBuf>,
    pub disable: Setting<bool>,
    pub readonly: Setting<bool>,
    pub recache: Setting<bool>,
    pub logfile: Setting<Option<PathBuf>>,
    pub stats_dir: Setting<Option<PathBuf>>,
    pub serve_mode: Setting<ServeMode>,
    /// Absolute paths under this directory are hashed relative to the current
    /// directory, so two checkouts (or hosts) share hits.
    pub base_dir: Setting<Option<PathBuf>>,
    /// Bytes the store may hold before cleanup trims it (0 = unlimited).
    pub max_size: Setting<u64>,
    /// Files (entries + blobs) the store may hold (0 = unlimited).
    pub max_files: Setting<u64>,
    /// umask for cache files and directories (and, as with ccache, the compiler).
    pub umask: Setting<Option<u32>>,
    /// Age under which temp files and unreferenced blobs are left alone by cleanup.
    pub grace: Setting<std::time::Duration>,
    /// zstd level for new outputs, or None to store them raw.
    pub compression: Setting<Option<i32>>,
    /// Outputs stored in at most this many bytes go inside their entry.
    pub inline_max: Setting<u64>,
    /// Fraction of hits recompiled and compared (`LTOCACHE_VERIFY`, 0..=1).
    pub verify: Setting<f64>,
    /// How the compiler's identity is decided (like ccache's `compiler_check`).
    pub compiler_check: Setting<crate::key::compiler::CompilerCheck>,
    /// Remote storage URLs (store/remote/mod.rs), parsed only after a local miss.
    pub remote_storage: Setting<String>,
    /// Use only the remotes: no local store.
    pub remote_only: Setting<bool>,
    /// Also write local hits to the remotes.
    pub reshare: Setting<bool>,
    /// Why the cache directory is not used at all (compiles pass through),
    /// or `None` (see [`crate::cachedir::trust`]).
    pub refused: Option<String>,
    /// The cache directory as opened and checked at load (when it existed):
    /// the state directory and the store use this descriptor rather than
    /// opening the path again (each open walks the path; a process used to
    /// open it three times).
    cache_opened: Option<std::sync::Arc<crate::cachedir::beneath::Dir>>,
    /// Warnings about `ltocache.conf`: keys ignored from a file others may
    /// have written, or the whole file ignored. For `config` and the log.
    pub warnings: Vec<String>,
    /// Values of the environment the state directory is chosen with.
    env: crate::cachedir::trust::Env,
    /// [`Config::state_dir`], decided once per process.
    state: std::sync::OnceLock<std::sync::Arc<crate::cachedir::trust::State>>,
}

pub use crate::store::codec::DEFAULT_ZSTD_LEVEL;

pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The keys, as written in the config file; the environment variable is
/// `LTOCACHE_` + the key in upper case.
pub const KEYS: &[&str] = &[
    "disable",
    "readonly",
    "recache",
    "logfile",
    "stats_dir",
    "serve_mode",
    "base_dir",
    "max_size",
    "max_files",
    "umask",
    "grace",
    "compression",
    "inline_max",
    "verify",
    "compiler_check",
    "remote_storage",
    "remote_only",
    "reshare",
];

fn env_name(key: &str) -> &'static str {
    match key {
        "disable" => "LTOCACHE_DISABLE",
        "readonly" => "LTOCACHE_READONLY",
        "recache" => "LTOCACHE_RECACHE",
        "logfile" => "LTOCACHE_LOGFILE",
        "stats_dir" => "LTOCACHE_STATS_DIR",
        "serve_mode" => "LTOCACHE_SERVE_MODE",
        "base_dir" => "LTOCACHE_BASE_DIR",
        "max_size" => "LTOCACHE_MAXSIZE",
        "max_files" => "LTOCACHE_MAXFILES",
        "umask" => "LTOCACHE_UMASK",
        "grace" => "LTOCACHE_GRACE",
        "compression" => "LTOCACHE_COMPRESSION",
        "inline_max" => "LTOCACHE_INLINE_MAX",
        "verify" => "LTOCACHE_VERIFY",
        "compiler_check" => "LTOCACHE_COMPILER_CHECK",
        "remote_storage" => "LTOCACHE_REMOTE",
        "remote_only" => "LTOCACHE_REMOTE_ONLY",
        "reshare" => "LTOCACHE_RESHARE",
        _ => unreachable!("unknown key {key}"),
    }
}

/// Whether `value` parses for `key`, with the parser `Config::load` uses.
fn valid_value(key: &str, v: &str) -> bool {
    match key {
        "max_size" | "inline_max" => parse_size(v).is_ok(),
        "max_files" => v.trim().parse::<u64>().is_ok(),
        "umask" => parse_umask(v).is_ok(),
        "grace" => parse_duration(v).is_ok(),
        "compression" => parse_compression(v).is_ok(),
        "serve_mode" => parse_serve_mode(v).is_ok(),
        "verify" => crate::verify::parse_rate(v).is_ok(),
        "compiler_check" => crate::key::compiler::CompilerCheck::parse(v).is_ok(),
        "disable" | "readonly" | "recache" | "remote_only" | "reshare" => parse_bool(v).is_ok(),
        _ => true,
    }
}

pub use crate::util::parse_bool;

/// An octal mask such as `002`; empty means "inherit".
fn parse_umask(v: &str) -> Result<Option<u32>> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .map(Some)
        .with_context(|| format!("expected an octal mask like 002, got {v:?}"))
}

/// `off`, `zstd` (default level) or `zstd:N` (level 1..=19).
fn parse_compression(s: &str) -> Result<Option<i32>> {
    let s = s.trim();
    if ["off", "none", "0", "false", "no", ""].contains(&s) {
        return Ok(None);
    }
    match s.split_once(':') {
        None if s == "zstd" => Ok(Some(DEFAULT_ZSTD_LEVEL)),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok(Some(l)),
            _ => bail!("zstd level must be 1..19, got {level:?}"),
        },
        _ => bail!("compression must be off, zstd or zstd:LEVEL, got {s:?}"),
    }
}

fn parse_serve_mode(s: &str) -> Result<ServeMode> {
    match s.trim() {
        "copy" => Ok(ServeMode::Copy),
        "reflink" => Ok(ServeMode::Reflink),
        "hardlink" => Ok(ServeMode::HardLink),
        other => bail!("serve_mode must be copy, reflink or hardlink, got {other:?}"),
    }
}

pub use crate::util::parse_size;

/// Parses `7d`, `12h`, `30m`, `45s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("invalid duration {s:?}"))?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => anyhow::bail!("invalid duration {s:?}: use a number with s, m, h, d or w"),
    };
    // Checked: an unchecked product wrapped around (213503982334602d became
    // 17 hours, and `evict` took everything for older than that).
    let secs = n.checked_mul(unit_secs).with_context(|| format!("duration {s:?} is too large"))?;
    Ok(Duration::from_secs(secs))
}

impl Config {
    /// Loads the effective configuration. `getenv` is injected so tests can
    /// exercise precedence without touching the process environment.
    pub fn load_with(getenv: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let cache_dir = match getenv("LTOCACHE_DIR").filter(|s| !s.is_empty()) {
            Some(d) => Setting { value: PathBuf::from(d), origin: Origin::Env("LTOCACHE_DIR") },
            None => {
                let base = getenv("XDG_CACHE_HOME")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| getenv("HOME").filter(|s| !s.is_empty()).map(|h| Path::new(&h).join(".cache")))
                    .context("cannot find a cache directory: set LTOCACHE_DIR, XDG_CACHE_HOME or HOME")?;
                Setting { value: base.join("ltocache"), origin: Origin::Default }
            }
        };
        let file_path = cache_dir.value.join(CONFIG_FILE_NAME);
        let env = crate::cachedir::trust::Env::from(getenv);
        // The cache directory, its trust, and what of its ltocache.conf may
        // be honoured (crate::cachedir::trust).
        let checked = crate::cachedir::trust::check_cache_dir(&cache_dir.value, &env);
        let mut warnings = Vec::new();
        let file_entries = match &checked.dir {
            None => Vec::new(),
            Some(dir) => match crate::cachedir::trust::read_conf(dir) {
                Ok(None) => Vec::new(),
                Ok(Some((text, trusted))) => match parse_config_text(&file_path, &text) {
                    Ok(entries) if trusted.is_ok() => entries,
                    Ok(entries) => {
                        let why = trusted.unwrap_err();
                        let (kept, ignored): (Vec<_>, Vec<_>) =
                            entries.into_iter().partition(|(k, v)| !crate::cachedir::trust::needs_trusted_file(k, v));
                        for (k, _) in &ignored {
                            warnings.push(format!("{k} in {} ignored: {why}", file_path.display()));
                        }
                        // Only the user's own file may break their
                        // configuration: a bad value from anyone else's is
                        // a warning, and the default stays.
                        let (kept, bad): (Vec<_>, Vec<_>) = kept.into_iter().partition(|(k, v)| valid_value(k, v));
                        for (k, v) in &bad {
                            warnings.push(format!("{k} = {v:?} in {} ignored: not a valid value", file_path.display()));
                        }
                        kept
                    }
                    // Only the user's own file may break their configuration.
                    Err(e) if trusted.is_ok() => return Err(e),
                    Err(e) => {
                        warnings.push(format!("{} ignored ({}): {e:#}", file_path.display(), trusted.unwrap_err()));
                        Vec::new()
                    }
                },
                Err(e) => {
                    warnings.push(format!("{} ignored: {e}", file_path.display()));
                    Vec::new()
                }
            },
        };

        let lookup = |key: &str| -> Option<(String, Origin)> {
            let env = env_name(key);
            if let Some(v) = getenv(env) {
                return Some((v, Origin::Env(env)));
            }
            file_entries.iter().find(|(k, _)| k == key).map(|(_, v)| (v.clone(), Origin::File(file_path.clone())))
        };
        // A setting parsed from its text, or its default; errors name the
        // setting and where its value came from.
        fn parsed<T>(
            found: Option<(String, Origin)>,
            key: &str,
            default: T,
            parse: impl Fn(&str) -> Result<T>,
        ) -> Result<Setting<T>> {
            Ok(match found {
                Some((v, origin)) => {
                    Setting { value: parse(&v).with_context(|| format!("{key} (from {origin})"))?, origin }
                }
                None => Setting { value: default, origin: Origin::Default },
            })
        }
        let boolean = |key: &str| parsed(lookup(key), key, false, parse_bool);
        let path = |key: &str| -> Setting<Option<PathBuf>> {
            match lookup(key) {
                Some((v, origin)) if !v.is_empty() => Setting { value: Some(PathBuf::from(v)), origin },
                _ => Setting { value: None, origin: Origin::Default },
            }
        };
        let mut serve_mode = parsed(lookup("serve_mode"), "serve_mode", ServeMode::Copy, parse_serve_mode)?;
        if serve_mode.value == ServeMode::HardLink {
            if let Some(why) = crate::cachedir::trust::hardlink_refusal(checked.dir.as_ref()) {
                warnings.push(format!("serve_mode = hardlink refused ({why}): copying instead"));
                serve_mode.value = ServeMode::Copy;
            }
        }
        let max_size = parsed(lookup("max_size"), "max_size", DEFAULT_MAX_SIZE, parse_size)?;
        let max_files =
            parsed(lookup("max_files"), "max_files", 0, |v| v.trim().parse::<u64>().context("expected a number"))?;
        let umask = parsed(lookup("umask"), "umask", None, parse_umask)?;
        let grace = parsed(lookup("grace"), "grace", DEFAULT_GRACE, parse_duration)?;
        // Compressed by default, except where hits share the blob's extents or
        // inode (reflink, hardlink), which needs raw blobs.
        let default_compression = (serve_mode.value == ServeMode::Copy).then_some(DEFAULT_ZSTD_LEVEL);
        let compression = parsed(lookup("compression"), "compression", default_compression, parse_compression)?;
        // Outputs go inside their entries (one file per miss instead of two)
        // unless hits are to share a blob's extents or inode, which needs
        // blob files.
        let default_inline = if serve_mode.value == ServeMode::Copy { crate::store::INLINE_MAX as u64 } else { 0 };
        let inline_max = parsed(lookup("inline_max"), "inline_max", default_inline, parse_size)?;
        let verify = parsed(lookup("verify"), "verify", 0.0, crate::verify::parse_rate)?;
        let compiler_check = parsed(
            lookup("compiler_check"),
            "compiler_check",
            crate::key::compiler::CompilerCheck::Content,
            crate::key::compiler::CompilerCheck::parse,
        )?;
        Ok(Config {
            verify,
            compiler_check,
            compression,
            inline_max,
            max_size,
            max_files,
            umask,
            grace,
            disable: boolean("disable")?,
            readonly: boolean("readonly")?,
            recache: boolean("recache")?,
            remote_storage: parsed(lookup("remote_storage"), "remote_storage", String::new(), |v| Ok(v.trim().into()))?,
            remote_only: boolean("remote_only")?,
            reshare: boolean("reshare")?,
            logfile: path("logfile"),
            stats_dir: path("stats_dir"),
            base_dir: path("base_dir"),
            serve_mode,
            cache_dir,
            refused: checked.refused,
            cache_opened: checked.dir.map(std::sync::Arc::new),
            warnings,
            env,
            state: std::sync::OnceLock::new(),
        })
    }

    /// The store these settings describe.
    pub fn store(&self) -> crate::store::LocalStore {
        crate::store::LocalStore::new(&self.cache_dir.value)
            .with_opened(self.cache_opened.clone())
            .with_compression(self.compression.value)
            // Capped well inside the entry grammar's u32 lengths.
            .with_inline_max(self.inline_max.value.min(64 << 20) as usize)
    }

    pub fn limits(&self) -> crate::store::cleanup::Limits {
        crate::store::cleanup::Limits {
            max_size: self.max_size.value,
            max_files: self.max_files.value,
            grace: self.grace.value,
        }
    }

    /// Applies the configured umask to this process (and so to its children).
    pub fn apply_umask(&self) {
        if let Some(m) = self.umask.value {
            // SAFETY: umask only swaps the process's file-creation mask.
            unsafe {
                libc::umask(m as libc::mode_t);
            }
        }
    }

    pub fn load() -> Result<Config> {
        Config::load_with(&|k| crate::util::env(k))
    }

    /// Where this host's SQLite database lives. SQLite must not be shared over
    /// NFS, so the default is a per-host directory; `stats_dir` moves it to
    /// local disk when the cache directory itself is on NFS.
    pub fn stats_db_path(&self) -> PathBuf {
        self.state_dir().join(crate::cachedir::layout::STATS_DB)
    }

    /// This user's state directory on this host: the database, the journal,
    /// the memos (crate::cachedir::trust::choose_state says where and why). The path
    /// returned names the directory through the descriptor it was checked on
    /// (`/proc/self/fd/N`), so nothing can swap it for another afterwards.
    pub fn state_dir(&self) -> PathBuf {
        self.state().path.clone()
    }

    /// Where the state directory is, why there, and a counter to bump per
    /// compile when it is a fallback.
    pub fn state(&self) -> &crate::cachedir::trust::State {
        self.state.get_or_init(|| {
            std::sync::Arc::new(crate::cachedir::trust::choose_state(
                &self.cache_dir.value,
                self.cache_opened.as_deref(),
                self.stats_dir.value.as_deref(),
                self.refused.is_some(),
                &self.env,
            ))
        })
    }

    /// Lines for `ltocache config`: key, value, origin.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        let opt = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into());
        vec![
            ("cache_dir".into(), self.cache_dir.value.display().to_string(), self.cache_dir.origin.to_string()),
            ("disable".into(), self.disable.value.to_string(), self.disable.origin.to_string()),
            ("readonly".into(), self.readonly.value.to_string(), self.readonly.origin.to_string()),
            ("recache".into(), self.recache.value.to_string(), self.recache.origin.to_string()),
            ("logfile".into(), opt(&self.logfile.value), self.logfile.origin.to_string()),
            ("stats_dir".into(), opt(&self.stats_dir.value), self.stats_dir.origin.to_string()),
            ("base_dir".into(), opt(&self.base_dir.value), self.base_dir.origin.to_string()),
            (
                "serve_mode".into(),
                format!("{:?}", self.serve_mode.value).to_lowercase(),
                self.serve_mode.origin.to_string(),
            ),
            (
                "max_size".into(),
                humansize::format_size(self.max_size.value, humansize::BINARY),
                self.max_size.origin.to_string(),
            ),
            ("max_files".into(), self.max_files.value.to_string(), self.max_files.origin.to_string()),
            (
                "umask".into(),
                self.umask.value.map(|m| format!("{m:03o}")).unwrap_or_else(|| "(inherited)".into()),
                self.umask.origin.to_string(),
            ),
            ("grace".into(), format!("{}s", self.grace.value.as_secs()), self.grace.origin.to_string()),
            (
                "compression".into(),
                self.compression.value.map(|l| format!("zstd:{l}")).unwrap_or_else(|| "off".into()),
                self.compression.origin.to_string(),
            ),
            (
                "inline_max".into(),
                humansize::format_size(self.inline_max.value, humansize::BINARY),
                self.inline_max.origin.to_string(),
            ),
            ("verify".into(), self.verify.value.to_string(), self.verify.origin.to_string()),
            ("compiler_check".into(), self.compiler_check.value.to_string(), self.compiler_check.origin.to_string()),
            ("state_dir".into(), self.state().real.display().to_string(), self.state().why.clone()),
            (
                "stats_db".into(),
                self.state().real.join(crate::cachedir::layout::STATS_DB).display().to_string(),
                "derived".into(),
            ),
            ("remote_only".into(), self.remote_only.value.to_string(), self.remote_only.origin.to_string()),
            ("reshare".into(), self.reshare.value.to_string(), self.reshare.origin.to_string()),
        ]
        .into_iter()
        .chain(self.remote_tier().describe(&self.remote_storage.origin.to_string()))
        .collect()
    }

    /// The remote tier these settings describe (parsing its URLs: only
    /// after a local miss, or for `ltocache config`).
    pub fn remote_tier(&self) -> crate::store::remote::Tier {
        let mut tier = crate::store::remote::Tier::new(&self.remote_storage.value, self.state_dir());
        tier.fill_local = !self.remote_only.value;
        tier.readonly = self.readonly.value;
        tier.compression = self.compression.value.or(Some(DEFAULT_ZSTD_LEVEL));
        tier
    }
}

/// `key = value` lines; `#` starts a comment.
fn parse_config_text(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected `key = value`", path.display(), n + 1);
        };
        let k = k.trim();
        if !KEYS.contains(&k) {
            bail!("{}:{}: unknown setting {k:?} (known: {})", path.display(), n + 1, KEYS.join(", "));
        }
        out.push((k.to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_duration("7 days").is_err());
        // Products that overflow are errors, not wrapped-around small values.
        let e = parse_duration("213503982334602d").unwrap_err();
        assert!(format!("{e:#}").contains("too large"), "{e:#}");
        assert!(parse_duration("30500568904944w").is_err());
        assert_eq!(parse_duration("213503982334601d").unwrap().as_secs(), 213503982334601 * 86400);
        assert!(parse_size("99999999999T").is_err());
    }

    use std::collections::HashMap;

    #[test]
    fn environment_wins_over_file_and_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "readonly = true\nrecache = yes # comment\n").unwrap();
        let env: HashMap<&str, String> =
            [("LTOCACHE_DIR", dir.path().display().to_string()), ("LTOCACHE_RECACHE", "0".to_string())].into();
        let c = Config::load_with(&|k| env.get(k).cloned()).unwrap();
        assert!(c.readonly.value);
        assert!(matches!(c.readonly.origin, Origin::File(_)));
        assert!(!c.recache.value);
        assert_eq!(c.recache.origin, Origin::Env("LTOCACHE_RECACHE"));
        assert!(!c.disable.value);
        assert_eq!(c.disable.origin, Origin::Default);
    }

    #[test]
    fn default_dir_follows_xdg_then_home() {
        let c = Config::load_with(&|k| (k == "HOME").then(|| "/nonexistent-home".to_string())).unwrap();
        assert_eq!(c.cache_dir.value, PathBuf::from("/nonexistent-home/.cache/ltocache"));
        let c = Config::load_with(&|k| match k {
            "HOME" => Some("/h".into()),
            "XDG_CACHE_HOME" => Some("/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.cache_dir.value, PathBuf::from("/x/ltocache"));
    }

    #[test]
    fn bad_values_are_errors() {
        let env: HashMap<&str, String> =
            [("LTOCACHE_DIR", "/nonexistent".to_string()), ("LTOCACHE_DISABLE", "perhaps".to_string())].into();
        assert!(Config::load_with(&|k| env.get(k).cloned()).is_err());
    }
}

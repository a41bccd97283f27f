//! The remote tier: Redis and HTTP servers a team already runs, consulted
//! after a local miss, in the order the setting lists them.
//!
//! Setting (`remote_storage`, `LTOCACHE_REMOTE`), as ccache writes it:
//! space-separated URLs, each with `|name=value` attributes:
//!
//! ```text
//! redis://[[user]:password@]host[:port][/db]   redis+unix:/path/to.sock
//! http://[user:password@]host[:port]/prefix|layout=subdirs|flat|bazel
//! |read-only  |connect-timeout=MS (100)  |operation-timeout=MS (10000)
//! |bearer-token=TOKEN  |name=NAME  |max-value-size=SIZE (128M)
//! ```
//!
//! A value is one whole entry in the local grammar (store/entry.rs) with
//! every output inside it, compressed: a lookup is one round trip, and a
//! hit is checked exactly as a local entry is (checksum, key, every output's
//! size and digest). A value that does not decode, names another key, keeps
//! an output outside itself or is larger than `max-value-size` is a miss,
//! counted as `remote.<name>.corrupt`.
//!
//! A remote never breaks or stalls a build: every failure costs at most its
//! timeouts once, is counted (`remote.<name>.errors` / `.timeouts`) and
//! marks that remote down for this host for [`DOWN_FOR`] (a file in the
//! state directory), so the next compiles skip it.
//!
//! Nothing here runs, and no URL is parsed, before a local miss: the
//! backend builds the [`Tier`] the first time it needs it.

mod conn;
pub mod http;
pub mod redis;

use super::{Digest, Entry, LocalStore, Lookup, ServeMode, Store, Stored};
use crate::state::log::Logger;
use crate::state::stats::Batch;
use crate::util::hex;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a failed remote is skipped by this host's compiles.
pub const DOWN_FOR: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Values larger than this are not read (a miss) and not written.
pub const DEFAULT_MAX_VALUE: u64 = 128 << 20;

/// Why a remote operation failed: the two are counted apart.
#[derive(Debug)]
pub enum Failure {
    Timeout(String),
    Error(String),
}

impl Failure {
    fn from_io(what: &str, e: &std::io::Error) -> Failure {
        match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::Timeout(format!("{what}: {e}")),
            _ => Failure::Error(format!("{what}: {e}")),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(m) => write!(f, "timed out {m}"),
            Failure::Error(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// What a GET found.
pub enum Fetched {
    Value(Vec<u8>),
    Missing,
    /// The server has a value of this many bytes, over the limit: not read.
    TooLarge(u64),
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub operation: Duration,
}

#[derive(Clone, Debug)]
enum Engine {
    Redis(redis::Redis),
    Http(http::Http),
}

/// One remote, as the setting describes it.
#[derive(Clone, Debug)]
pub struct Remote {
    /// In counter names (`remote.<name>.hits`) and the down mark.
    pub name: String,
    /// The URL without its credentials, for `ltocache config` and logs.
    pub shown: String,
    pub read_only: bool,
    pub timeouts: Timeouts,
    pub max_value: u64,
    engine: Engine,
}

impl Remote {
    /// Parses one `URL|attr|attr=value` item.
    pub fn parse(item: &str) -> Result<Remote, String> {
        let mut parts = item.split('|');
        let url = parts.next().unwrap_or_default();
        let mut read_only = false;
        let mut timeouts = Timeouts { connect: DEFAULT_CONNECT_TIMEOUT, operation: DEFAULT_OPERATION_TIMEOUT };
        let mut layout = http::Layout::Subdirs;
        let mut bearer = None;
        let mut name = None;
        let mut max_value = DEFAULT_MAX_VALUE;
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let ms = |v: &str| v.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("{k}: {v:?} is not ms"));
            match k {
                "read-only" => {
                    read_only =
                        crate::util::parse_bool(if v.is_empty() { "true" } else { v }).map_err(|e| format!("{e}"))?
                }
                "connect-timeout" => timeouts.connect = ms(v)?,
                "operation-timeout" => timeouts.operation = ms(v)?,
                "layout" => {
                    layout = match v {
                        "subdirs" => http::Layout::Subdirs,
                        "flat" => http::Layout::Flat,
                        "bazel" => http::Layout::Bazel,
                        _ => return Err(format!("layout must be subdirs, flat or bazel, not {v:?}")),
                    }
                }
                "bearer-token" => bearer = Some(v.to_string()),
                "name" if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) => {
                    name = Some(v.to_string())
                }
                "name" => return Err(format!("name must be letters, digits, - and _, not {v:?}")),
                "max-value-size" => max_value = crate::util::parse_size(v).map_err(|e| format!("{e}"))?,
                _ => return Err(format!("unknown attribute {k:?}")),
            }
        }
        if timeouts.connect.is_zero() || timeouts.operation.is_zero() {
            return Err("timeouts must be at least 1 ms".into());
        }
        let (scheme, rest) = url.split_once(':').ok_or_else(|| format!("{url:?} is not a URL"))?;
        let (engine, shown, default_name) = match scheme {
            "redis" => {
                let rest = rest.strip_prefix("//").ok_or("redis URLs start with redis://")?;
                let (auth, hostpath) = split_userinfo(rest);
                let (hostport, db) = hostpath.split_once('/').unwrap_or((hostpath, ""));
                let db = if db.is_empty() { 0 } else { db.parse().map_err(|_| format!("bad database {db:?}"))? };
                let (host, port) = host_port(hostport, 6379)?;
                let (username, password) = match auth {
                    None => (None, None),
                    Some(a) => match a.split_once(':') {
                        Some((u, p)) => ((!u.is_empty()).then(|| percent_decode(u)), Some(percent_decode(p))),
                        None => (None, Some(percent_decode(a))),
                    },
                };
                let target = redis::Target::Tcp { host: host.clone(), port };
                let shown = format!("redis://{hostport}{}", if db == 0 { String::new() } else { format!("/{db}") });
                (Engine::Redis(redis::Redis { target, username, password, db }), shown, format!("redis-{host}-{port}"))
            }
            "redis+unix" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err("redis+unix: needs an absolute socket path".into());
                }
                let target = redis::Target::Unix(PathBuf::from(path));
                let r = redis::Redis { target, username: None, password: None, db: 0 };
                (Engine::Redis(r), format!("redis+unix:{path}"), "redis-unix".to_string())
            }
            "http" => {
                let rest = rest.strip_prefix("//").ok_or("http URLs start with http://")?;
                let (auth, hostpath) = split_userinfo(rest);
                let (hostport, path) = match hostpath.find('/') {
                    Some(i) => hostpath.split_at(i),
                    None => (hostpath, ""),
                };
                let (host, port) = host_port(hostport, 80)?;
                let authorization = match (auth, bearer) {
                    (Some(_), Some(_)) => return Err("both user:password and bearer-token given".into()),
                    (Some(a), None) => {
                        let (u, p) = a.split_once(':').unwrap_or((a, ""));
                        Some(http::basic_auth(&percent_decode(u), &percent_decode(p)))
                    }
                    (None, Some(t)) => Some(format!("Bearer {t}")),
                    (None, None) => None,
                };
                let prefix = path.trim_end_matches('/').to_string();
                let shown = format!("http://{hostport}{path}");
                let h = http::Http { host: host.clone(), port, prefix, layout, authorization };
                (Engine::Http(h), shown, format!("http-{host}-{port}"))
            }
            "https" | "rediss" => {
                return Err(format!("{scheme}: this build has no TLS (docs/dependencies.md says why)"));
            }
            _ => return Err(format!("unknown scheme {scheme:?} (redis, redis+unix, http)")),
        };
        let name = name.unwrap_or_else(|| default_name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
        Ok(Remote { name, shown, read_only, timeouts, max_value, engine })
    }

    /// True when the URL or an attribute carries a secret.
    pub fn has_credentials(&self) -> bool {
        match &self.engine {
            Engine::Redis(r) => r.password.is_some(),
            Engine::Http(h) => h.authorization.is_some(),
        }
    }

    /// One line for `ltocache config`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} name={} connect-timeout={}ms operation-timeout={}ms",
            self.shown,
            self.name,
            self.timeouts.connect.as_millis(),
            self.timeouts.operation.as_millis()
        );
        if let Engine::Http(h) = &self.engine {
            s.push_str(&format!(" layout={:?}", h.layout).to_lowercase());
        }
        if self.read_only {
            s.push_str(" read-only");
        }
        if self.has_credentials() {
            s.push_str(" (credentials given)");
        }
        s
    }

    fn fetch(&self, key: &Digest) -> Result<Fetched, Failure> {
        let k = hex(key);
        match &self.engine {
            Engine::Redis(r) => r.get(&k, &self.timeouts, self.max_value),
            Engine::Http(h) => h.get(&k, &self.timeouts, self.max_value),
        }
    }

    fn send(&self, key: &Digest, value: &[u8]) -> Result<(), Failure> {
        let k = hex(key);
        match &self.engine {
            Engine::Redis(r) => r.put(&k, value, &self.timeouts),
            Engine::Http(h) => h.put(&k, value, &self.timeouts),
        }
    }

    fn counter(&self, what: &str) -> String {
        format!("remote.{}.{what}", self.name)
    }
}

/// A remote holds self-contained entries: the lookup is one GET, and a
/// value that is not a whole entry for this key is corrupt (a miss).
impl Store for Remote {
    fn get_entry(&self, key: &Digest) -> Result<Lookup> {
        let data = match self.fetch(key)? {
            Fetched::Missing => return Ok(Lookup::Miss),
            Fetched::TooLarge(n) => return Ok(Lookup::Corrupt(format!("value of {n} bytes is over the limit"))),
            Fetched::Value(d) => d,
        };
        Ok(match Entry::decode(&data) {
            Err(e) => Lookup::Corrupt(e.to_string()),
            Ok(e) if &e.key != key => Lookup::Corrupt("value names another key".into()),
            Ok(e) if e.outputs.iter().any(|o| o.stored == Stored::Blob) => {
                Lookup::Corrupt("value keeps an output outside itself".into())
            }
            Ok(e) => Lookup::Hit(e),
        })
    }

    fn put_entry(&self, entry: &Entry) -> Result<u64> {
        anyhow::ensure!(
            entry.outputs.iter().all(|o| o.stored != Stored::Blob),
            "a remote value must hold every output"
        );
        let data = entry.encode();
        anyhow::ensure!(data.len() as u64 <= self.max_value, "value of {} bytes is over the limit", data.len());
        self.send(&entry.key, &data)?;
        Ok(data.len() as u64)
    }
}

/// The remotes of one process, with what a lookup and a store need to know.
pub struct Tier {
    pub remotes: Vec<Remote>,
    /// Items of the setting that were refused, with why (counted once).
    pub problems: Vec<String>,
    state_dir: PathBuf,
    /// Write remote hits into the local store.
    pub fill_local: bool,
    /// Write nothing anywhere (`readonly`).
    pub readonly: bool,
    /// zstd level for values packed from an output file.
    pub compression: Option<i32>,
    reported: AtomicBool,
}

/// Where a remote's down mark lives: one small file per remote in this host's
/// state directory, its mtime the time of the failure.
fn down_mark(state_dir: &Path, r: &Remote) -> PathBuf {
    state_dir.join(format!("remote-down.{}", r.name))
}

impl Tier {
    /// Parses the setting. Whose setting it may be is decided before, with
    /// the others (`config.rs`, `trust.rs`: a `remote_storage` in an
    /// `ltocache.conf` that another user owns or may write is ignored).
    pub fn new(spec: &str, state_dir: PathBuf) -> Tier {
        let mut remotes = Vec::new();
        let mut problems = Vec::new();
        for item in spec.split_whitespace() {
            match Remote::parse(item) {
                Ok(r) if remotes.iter().any(|o: &Remote| o.name == r.name) => {
                    problems.push(format!("two remotes named {}: add |name=", r.name))
                }
                Ok(r) => remotes.push(r),
                Err(e) => problems.push(format!("remote {}: {e}", redact(item))),
            }
        }
        Tier {
            remotes,
            problems,
            state_dir,
            fill_local: true,
            readonly: false,
            compression: Some(super::codec::DEFAULT_ZSTD_LEVEL),
            reported: AtomicBool::new(false),
        }
    }

    /// Lines for `ltocache config`: each remote and each refused item, with
    /// where the setting came from.
    pub fn describe(&self, origin: &str) -> Vec<(String, String, String)> {
        let mut lines: Vec<_> =
            self.remotes.iter().map(|r| ("remote".to_string(), r.describe(), origin.to_string())).collect();
        lines.extend(self.problems.iter().map(|p| ("remote".to_string(), format!("REFUSED: {p}"), origin.to_string())));
        if lines.is_empty() {
            lines.push(("remote_storage".into(), "(none)".into(), origin.into()));
        }
        lines
    }

    /// Logs and counts the setting's problems, once per process.
    fn report_problems(&self, log: &Logger, batch: &mut Batch) {
        if !self.problems.is_empty() && !self.reported.swap(true, Ordering::Relaxed) {
            for p in &self.problems {
                log.log(p);
            }
            batch.add("errors.remote_config", self.problems.len() as i64);
        }
    }

    fn is_down(&self, r: &Remote) -> bool {
        std::fs::symlink_metadata(down_mark(&self.state_dir, r))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < DOWN_FOR))
    }

    /// Counts a failure and marks the remote down for this host.
    fn failed(&self, r: &Remote, what: &str, e: &anyhow::Error, log: &Logger, batch: &mut Batch) {
        let timeout = matches!(e.downcast_ref::<Failure>(), Some(Failure::Timeout(_)));
        batch.add(&r.counter(if timeout { "timeouts" } else { "errors" }), 1);
        log.log(&format!(
            "remote {} ({}): {what} failed, skipped for {} s: {e:#}",
            r.name,
            r.shown,
            DOWN_FOR.as_secs()
        ));
        let path = down_mark(&self.state_dir, r);
        // O_NOFOLLOW: the state directory may sit in a shared cache directory.
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW;
        match crate::util::open_creating_dir(&path, flags, 0o666) {
            Ok(mut f) => {
                use std::io::Write;
                let _ = writeln!(f, "{what}: {e:#}");
            }
            Err(err) => log.log(&format!("cannot write {}: {err}", path.display())),
        }
    }

    /// After a local miss: asks each remote in turn. On a hit, verified as a
    /// local entry is, every output is put in place and the entry is written
    /// into the local store (when allowed).
    pub fn serve_hit(
        &self,
        local: &LocalStore,
        key: &Digest,
        output: &Path,
        log: &Logger,
        batch: &mut Batch,
    ) -> Option<RemoteHit> {
        self.report_problems(log, batch);
        for r in &self.remotes {
            if self.is_down(r) {
                batch.add(&r.counter("skipped_down"), 1);
                continue;
            }
            let start = Instant::now();
            let entry = match r.get_entry(key) {
                Ok(Lookup::Hit(e)) => e,
                Ok(Lookup::Miss) => {
                    batch.add(&r.counter("misses"), 1);
                    batch.add(&r.counter("ns_misses"), start.elapsed().as_nanos() as i64);
                    continue;
                }
                Ok(Lookup::Corrupt(why)) => {
                    log.log(&format!("remote {}: value for {} is unusable: {why}", r.name, hex(&key[..8])));
                    batch.add(&r.counter("corrupt"), 1);
                    continue;
                }
                Err(e) => {
                    self.failed(r, "lookup", &e, log, batch);
                    continue;
                }
            };
            match super::serve_entry(local, ServeMode::Copy, &entry, output) {
                Ok(Some(bytes)) => {
                    let stored_bytes: u64 =
                        entry.outputs.iter().filter_map(|o| o.inline_bytes()).map(|b| b.len() as u64).sum();
                    batch.add("hits", 1);
                    batch.add("bytes_served", bytes as i64);
                    batch.add("ns_saved", entry.duration_ns as i64);
                    batch.add(&r.counter("hits"), 1);
                    batch.add(&r.counter("bytes_read"), stored_bytes as i64);
                    batch.add(&r.counter("ns_hits"), start.elapsed().as_nanos() as i64);
                    batch.add(&r.counter("ns_saved"), entry.duration_ns as i64);
                    log.log(&format!("remote hit ({}) {} {}", r.name, hex(&key[..8]), output.display()));
                    let stored = self.fill(local, &entry, log, batch);
                    return Some(RemoteHit { stderr: entry.stderr, stored_locally: stored });
                }
                Ok(None) => {
                    // An output that does not match its digest: never served.
                    log.log(&format!("remote {}: value for {} has a corrupt output", r.name, hex(&key[..8])));
                    batch.add(&r.counter("corrupt"), 1);
                }
                Err(e) => {
                    log.log(&format!("serving a remote hit to {} failed: {e:#}", output.display()));
                    batch.add("errors.serve", 1);
                    return None;
                }
            }
        }
        None
    }

    /// Writes a remote hit into the local store; returns the bytes written.
    fn fill(&self, local: &LocalStore, entry: &Entry, log: &Logger, batch: &mut Batch) -> Option<u64> {
        if !self.fill_local || self.readonly || !local.writable() {
            return None;
        }
        match local.put_entry(entry) {
            Ok(n) => {
                batch.add("stores_from_remote", 1);
                batch.stored_entry = Some((entry.key, n, entry.duration_ns));
                Some(n)
            }
            Err(e) => {
                log.log(&format!("storing a remote hit locally failed: {e:#}"));
                batch.add("errors.store", 1);
                None
            }
        }
    }

    /// Writes an entry to every writable remote that is up, after the
    /// object is in place for the build. An output the entry keeps in a blob
    /// is read back from `output` (which holds exactly those bytes) and
    /// packed inside: a remote value holds everything.
    pub fn put(&self, entry: &Entry, output: &Path, log: &Logger, batch: &mut Batch) {
        self.report_problems(log, batch);
        if self.readonly || self.remotes.iter().all(|r| r.read_only) {
            return;
        }
        let packed;
        let entry = if entry.outputs.iter().any(|o| o.stored == Stored::Blob) {
            packed = match self.pack(entry, output) {
                Ok(e) => e,
                Err(e) => {
                    log.log(&format!("packing {} for the remotes failed: {e:#}", output.display()));
                    batch.add("errors.remote_pack", 1);
                    return;
                }
            };
            &packed
        } else {
            entry
        };
        for r in self.remotes.iter().filter(|r| !r.read_only) {
            if self.is_down(r) {
                batch.add(&r.counter("skipped_down"), 1);
                continue;
            }
            let start = Instant::now();
            match r.put_entry(entry) {
                Ok(n) => {
                    batch.add(&r.counter("stores"), 1);
                    batch.add(&r.counter("bytes_written"), n as i64);
                    batch.add(&r.counter("ns_stores"), start.elapsed().as_nanos() as i64);
                }
                Err(e) if e.downcast_ref::<Failure>().is_none() => {
                    // Over the size limit: this value only, not the remote.
                    log.log(&format!("remote {}: not stored: {e:#}", r.name));
                    batch.add(&r.counter("too_large"), 1);
                }
                Err(e) => self.failed(r, "store", &e, log, batch),
            }
        }
    }

    /// `entry` with every output inside it, compressed, from the output file.
    fn pack(&self, entry: &Entry, output: &Path) -> Result<Entry> {
        anyhow::ensure!(entry.outputs.len() == 1 && entry.outputs[0].kind == 0, "only the -o object can be packed");
        let data = crate::util::read_file(output)?;
        anyhow::ensure!(
            data.len() as u64 == entry.outputs[0].size && blake3::hash(&data).as_bytes() == &entry.outputs[0].digest,
            "the output changed since it was stored"
        );
        // A store with no size limit on inline outputs packs without
        // touching its directory, with the local store's own compression
        // rules (small and incompressible outputs stay raw).
        let packer =
            LocalStore::new(Path::new("/nonexistent")).with_compression(self.compression).with_inline_max(usize::MAX);
        let (o, _) = packer.put_output(0, &data)?;
        Ok(Entry { outputs: vec![o], ..entry.clone() })
    }

    /// A self-contained entry for a compile's output (with `remote_only`,
    /// where no local store made one).
    pub fn entry_for(&self, key: &Digest, duration_ns: u64, stderr: &[u8], output: &Path) -> Result<Entry> {
        let data = crate::util::read_file(output)?;
        let packer =
            LocalStore::new(Path::new("/nonexistent")).with_compression(self.compression).with_inline_max(usize::MAX);
        let (o, _) = packer.put_output(0, &data)?;
        Ok(Entry {
            key: *key,
            duration_ns,
            created_unix: (crate::util::now_ns() / 1_000_000_000) as u64,
            outputs: vec![o],
            stderr: stderr.to_vec(),
        })
    }
}

/// The `remote.<name>.<metric>` counters, grouped by remote (for `stats`).
pub fn per_remote(
    counters: &std::collections::BTreeMap<String, i64>,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> = Default::default();
    for (k, v) in counters {
        if let Some((name, metric)) = k.strip_prefix("remote.").and_then(|r| r.rsplit_once('.')) {
            *out.entry(name.to_string()).or_default().entry(metric.to_string()).or_insert(0) += v;
        }
    }
    out
}

/// What a remote hit did.
pub struct RemoteHit {
    pub stderr: Vec<u8>,
    /// Bytes written into the local store, if it was.
    pub stored_locally: Option<u64>,
}

/// An item of the setting with its password and token hidden, for messages.
fn redact(item: &str) -> String {
    let mut out = Vec::new();
    for (i, part) in item.split('|').enumerate() {
        if i == 0 {
            match part.split_once("://").map(|(s, r)| (s, split_userinfo(r))) {
                Some((scheme, (Some(_), rest))) => out.push(format!("{scheme}://***@{rest}")),
                _ => out.push(part.to_string()),
            }
        } else if part.starts_with("bearer-token=") {
            out.push("bearer-token=***".into());
        } else {
            out.push(part.to_string());
        }
    }
    out.join("|")
}

/// `user:password@host...` → (Some("user:password"), "host...").
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or("unterminated [ in host")?;
        (h, rest.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => default,
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hexval(c)), b.get(i + 2).and_then(|&c| hexval(c))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_attributes_parse_as_ccache_writes_them() {
        let r = Remote::parse("redis://u:p%40ss@10.0.0.1:7000/3|read-only|connect-timeout=250").unwrap();
        assert!(r.read_only && r.has_credentials());
        assert_eq!(r.timeouts.connect, Duration::from_millis(250));
        assert_eq!(r.timeouts.operation, DEFAULT_OPERATION_TIMEOUT);
        assert_eq!(r.shown, "redis://10.0.0.1:7000/3");
        let Engine::Redis(e) = &r.engine else { panic!() };
        assert_eq!((e.username.as_deref(), e.password.as_deref(), e.db), (Some("u"), Some("p@ss"), 3));
        let r = Remote::parse("redis://:secret@h").unwrap();
        let Engine::Redis(e) = &r.engine else { panic!() };
        assert_eq!((e.username.as_deref(), e.password.as_deref()), (None, Some("secret")));
        assert!(!Remote::parse("redis://h").unwrap().has_credentials());
        assert!(Remote::parse("redis+unix:/run/redis.sock").is_ok());
        assert!(Remote::parse("redis+unix:relative.sock").is_err());

        let r = Remote::parse("http://me:pw@[::1]:8080/cache/|layout=bazel|operation-timeout=500|name=farm").unwrap();
        assert_eq!((r.name.as_str(), r.shown.as_str()), ("farm", "http://[::1]:8080/cache/"));
        let Engine::Http(h) = &r.engine else { panic!() };
        assert_eq!(
            (h.host.as_str(), h.port, h.prefix.as_str(), h.layout),
            ("::1", 8080, "/cache", http::Layout::Bazel)
        );
        assert_eq!(h.authorization.as_deref(), Some(http::basic_auth("me", "pw").as_str()));
        let r = Remote::parse("http://h/c|bearer-token=tok").unwrap();
        let Engine::Http(h) = &r.engine else { panic!() };
        assert_eq!(h.authorization.as_deref(), Some("Bearer tok"));
        assert_eq!(h.port, 80);

        for bad in [
            "https://h/c",
            "rediss://h",
            "ftp://h",
            "http://h|layout=nested",
            "http://h|frobnicate",
            "http://h|connect-timeout=0",
            "http://h:port",
            "redis://",
            "http://u:p@h|bearer-token=t",
        ] {
            assert!(Remote::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn secrets_never_reach_messages() {
        assert_eq!(redact("http://u:pw@h/c|bearer-token=abc|read-only"), "http://***@h/c|bearer-token=***|read-only");
        let t = Tier::new("http://u:pw@h/c|bogus", PathBuf::from("/nonexistent"));
        assert_eq!(t.problems.len(), 1);
        assert!(!t.problems[0].contains("pw"), "{}", t.problems[0]);
        assert!(!Remote::parse("redis://:pw@h").unwrap().describe().contains("pw"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let t = Tier::new("redis://h redis://h:6379 redis://h|name=second", PathBuf::from("/x"));
        assert_eq!(t.remotes.len(), 2);
        assert_eq!(t.problems.len(), 1);
    }

    /// A server on 127.0.0.1 that answers each connection with `answer`
    /// (after reading the request), writing it `chunk` bytes at a time with
    /// `pause` between writes.
    fn serve(answers: Vec<Vec<u8>>, chunk: usize, pause: Duration) -> (u16, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req);
                for part in answer.chunks(chunk) {
                    if s.write_all(part).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
            }
        });
        (port, t)
    }

    #[test]
    fn chunked_bodies_are_read_and_a_trickling_server_times_out() {
        let key = [5u8; 32];
        let entry = Entry {
            key,
            duration_ns: 7,
            created_unix: 1,
            outputs: vec![crate::store::StoredOutput {
                kind: 0,
                size: 3,
                digest: *blake3::hash(b"obj").as_bytes(),
                stored: Stored::Inline(b"obj".to_vec()),
            }],
            stderr: vec![],
        };
        let body = entry.encode();
        let (a, b) = body.split_at(10);
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [a, b] {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (port, t) = serve(vec![chunked], 1 << 20, Duration::ZERO);
        let r = Remote::parse(&format!("http://127.0.0.1:{port}/c")).unwrap();
        assert!(matches!(r.get_entry(&key).unwrap(), Lookup::Hit(e) if e == entry));
        t.join().unwrap();

        // One byte every 20 ms: every read succeeds, only the operation's
        // deadline ends it.
        let mut slow = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        slow.extend_from_slice(&body);
        let (port, t) = serve(vec![slow], 1, Duration::from_millis(20));
        let r = Remote::parse(&format!("http://127.0.0.1:{port}/c|operation-timeout=200")).unwrap();
        let e = r.get_entry(&key).unwrap_err();
        assert!(matches!(e.downcast_ref::<Failure>(), Some(Failure::Timeout(_))), "{e:#}");
        t.join().unwrap();
    }

    #[test]
    fn counters_group_by_remote() {
        let c: std::collections::BTreeMap<String, i64> =
            [("remote.a.hits", 2), ("remote.a.ns_hits", 5), ("remote.b-1.errors", 1), ("hits", 9)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let g = per_remote(&c);
        assert_eq!(g.len(), 2);
        assert_eq!((g["a"]["hits"], g["a"]["ns_hits"], g["b-1"]["errors"]), (2, 5, 1));
    }

    #[test]
    fn a_value_that_is_not_a_whole_entry_for_the_key_is_corrupt() {
        // A server that answers whatever was asked with fixed bytes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let key = [9u8; 32];
        let other = Entry { key: [8; 32], duration_ns: 1, created_unix: 1, outputs: vec![], stderr: vec![] };
        let blob = Entry {
            key,
            outputs: vec![crate::store::StoredOutput { kind: 0, size: 1, digest: [0; 32], stored: Stored::Blob }],
            ..other.clone()
        };
        let answers = vec![b"garbage".to_vec(), other.encode(), blob.encode()];
        let n = answers.len();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for body in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).unwrap();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&body).unwrap();
            }
        });
        let r = Remote::parse(&format!("http://127.0.0.1:{port}/c")).unwrap();
        for _ in 0..n {
            assert!(matches!(r.get_entry(&key).unwrap(), Lookup::Corrupt(_)));
        }
        server.join().unwrap();
    }
}

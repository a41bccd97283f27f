//! The remote tier against real servers: redis-server and nginx (WebDAV),
//! each started by the test on 127.0.0.1 on a free port as its own process
//! and stopped when the test ends. Every "host" is a fixture with its own
//! build directory and its own local cache; what they share is the server.

mod util;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::{files_under, ok, stat_of, Fixture, CLANG, MODULES};

/// A server process of this test, killed (and reaped) when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(child: &mut Child, port: u16, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(start.elapsed() < Duration::from_secs(20), "server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("redis.log");
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/install-deps.sh installs it)");
    wait_listening(&mut child, port, &log);
    Server { child, port, dir }
}

impl Server {
    fn cli(&self, args: &[&str]) -> String {
        let out = ok(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.cli(&["--scan"]).lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        k.sort();
        k
    }

    /// A number from `INFO`.
    fn info(&self, field: &str) -> u64 {
        let info = self.cli(&["info", "everything"]);
        let line = info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).expect(field);
        line.trim().parse().unwrap()
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// nginx with WebDAV PUT under `/`, plus `/forbidden/` (403), `/auth/`
/// (basic auth, user `u`, password `pw`) and `/small/` (bodies over 1 KiB: 413).
fn nginx() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("htpasswd"), "u:{PLAIN}pw\n").unwrap();
    let dav = "dav_methods PUT DELETE; create_full_put_path on;";
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
    client_max_body_size 64m;
    location / {{ {dav} }}
    location /forbidden/ {{ return 403; }}
    location /auth/ {{ auth_basic ltocache; auth_basic_user_file {d}/htpasswd; {dav} }}
    location /small/ {{ client_max_body_size 1k; {dav} }}
  }}
}}
"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.path().join("error.log");
    let mut child = Command::new(nginx_bin())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (scripts/install-deps.sh installs it)");
    wait_listening(&mut child, port, &log);
    Server { child, port, dir }
}

/// Runs every backend of `f` through ltocache with `remote` set (and `env`),
/// asserting that each succeeded and that every object equals clang's own.
fn build(f: &Fixture, remote: &str, env: &[(&str, &str)], extra: &[&str]) -> Vec<Output> {
    let outs: Vec<Output> = MODULES
        .iter()
        .map(|m| {
            let mut c = f.ltocache();
            c.env("LTOCACHE_REMOTE", remote).env_remove("LTOCACHE_REMOTE_ONLY").env_remove("LTOCACHE_RESHARE");
            for (k, v) in env {
                c.env(k, v);
            }
            let out = c.arg(CLANG).args(f.backend_args(m, &format!("{m}.final_o"), extra)).output().unwrap();
            assert!(out.status.success(), "backend {m}: {}", String::from_utf8_lossy(&out.stderr));
            out
        })
        .collect();
    for m in MODULES {
        assert_eq!(f.read(&format!("{m}.final_o")), f.fresh_object(m, extra), "{m}: object differs from clang's");
    }
    outs
}

/// A per-remote counter from `stats --json` (0 when absent).
fn remote_stat(f: &Fixture, name: &str, metric: &str) -> i64 {
    let json = f.stats_json();
    let pat = format!("\"{name}\": {{");
    let Some(i) = json.find(&pat) else { return 0 };
    let rest = &json[i + pat.len()..];
    stat_of(&rest[..rest.find('}').unwrap()], metric)
}

fn remove_objects(f: &Fixture) {
    for m in MODULES {
        let _ = std::fs::remove_file(f.path(&format!("{m}.final_o")));
    }
}

fn n() -> i64 {
    MODULES.len() as i64
}

#[test]
fn a_fresh_local_cache_is_served_entirely_from_redis_and_then_from_itself() {
    let redis = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{}|name=r", redis.port);
    let a = Fixture::new();
    build(&a, &url, &[], &[]);
    assert_eq!((a.stat("misses"), remote_stat(&a, "r", "misses"), remote_stat(&a, "r", "stores")), (n(), n(), n()));
    assert_eq!(redis.keys().len(), MODULES.len());
    assert!(redis.keys().iter().all(|k| k.starts_with("ltocache:") && k.len() == 9 + 64));

    // Another machine: its own build directory, an empty local cache.
    let b = Fixture::new();
    build(&b, &url, &[], &[]);
    assert_eq!((b.stat("hits"), b.stat("misses")), (n(), 0));
    assert_eq!((remote_stat(&b, "r", "hits"), remote_stat(&b, "r", "errors")), (n(), 0));
    assert!(remote_stat(&b, "r", "bytes_read") > 0 && remote_stat(&b, "r", "ns_saved") > 0);
    assert_eq!(b.entry_files().len(), MODULES.len(), "remote hits are written into the local store");
    // The next build is local: the remote is not asked.
    remove_objects(&b);
    build(&b, &url, &[], &[]);
    assert_eq!((b.stat("hits"), remote_stat(&b, "r", "hits"), remote_stat(&b, "r", "misses")), (2 * n(), n(), 0));
    let text = String::from_utf8(ok(b.ltocache().arg("stats")).stdout).unwrap();
    assert!(text.contains("Remote r") && text.contains("6 hits"), "{text}");
}

#[test]
fn redis_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let redis = redis_server(&["--unixsocket", sock.to_str().unwrap()]);
    let url = format!("redis+unix:{}|name=u", sock.display());
    let (a, b) = (Fixture::new(), Fixture::new());
    build(&a, &url, &[], &[]);
    build(&b, &url, &[], &[]);
    assert_eq!(remote_stat(&b, "u", "hits"), n());
    assert_eq!(redis.keys().len(), MODULES.len());
}

#[test]
fn http_layouts_serve_a_fresh_local_cache_from_nginx() {
    let web = nginx();
    for (layout, check) in [
        ("subdirs", Box::new(|p: &str| p.len() == 2 + 1 + 62) as Box<dyn Fn(&str) -> bool>),
        ("flat", Box::new(|p: &str| p.len() == 64)),
        ("bazel", Box::new(|p: &str| p.starts_with("ac/") && p.len() == 3 + 64)),
    ] {
        let url = format!("http://127.0.0.1:{}/{layout}/|layout={layout}|name=web", web.port);
        let (a, b) = (Fixture::new(), Fixture::new());
        build(&a, &url, &[], &[]);
        let root = web.www().join(layout);
        let stored: Vec<String> =
            files_under(&root).iter().map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(stored.len(), MODULES.len(), "{layout}: {stored:?}");
        assert!(stored.iter().all(|p| check(p)), "{layout}: {stored:?}");
        build(&b, &url, &[], &[]);
        assert_eq!((b.stat("hits"), remote_stat(&b, "web", "hits")), (n(), n()), "{layout}");
    }
}

#[test]
fn read_only_remotes_serve_and_write_nothing() {
    let redis = redis_server(&[]);
    let web = nginx();
    let ro =
        format!("redis://127.0.0.1:{}|read-only|name=r http://127.0.0.1:{}/c|read-only|name=w", redis.port, web.port);
    let a = Fixture::new();
    build(&a, &ro, &[], &[]);
    assert!(redis.keys().is_empty(), "{:?}", redis.keys());
    assert!(files_under(&web.www()).is_empty());
    assert_eq!((remote_stat(&a, "r", "misses"), remote_stat(&a, "w", "misses")), (n(), n()));
    // Filled by a writable host, then read by the read-only one.
    let rw = format!("redis://127.0.0.1:{}|name=r", redis.port);
    build(&Fixture::new(), &rw, &[], &[]);
    let b = Fixture::new();
    build(&b, &ro, &[], &[]);
    assert_eq!((remote_stat(&b, "r", "hits"), remote_stat(&b, "w", "hits")), (n(), 0));
    assert!(files_under(&web.www()).is_empty());
}

/// Each broken remote costs its timeout at most once: the first compile
/// counts one failure and marks it down, the others skip it.
#[test]
fn refusing_and_hung_servers_cost_one_timeout_and_are_then_skipped() {
    // Accepts connections (the kernel completes them) and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let refusing = free_port();
    for (url, metric) in [
        (format!("redis://127.0.0.1:{refusing}|name=x"), "errors"),
        (format!("http://127.0.0.1:{refusing}/c|name=x"), "errors"),
        (format!("redis://127.0.0.1:{hung_port}|name=x|operation-timeout=300"), "timeouts"),
        (format!("http://127.0.0.1:{hung_port}/c|name=x|operation-timeout=300"), "timeouts"),
    ] {
        let f = Fixture::new();
        let start = Instant::now();
        build(&f, &url, &[], &[]);
        let took = start.elapsed();
        let failures = remote_stat(&f, "x", "errors") + remote_stat(&f, "x", "timeouts");
        assert_eq!(failures, 1, "{url}: one failure, then skipped");
        assert_eq!(remote_stat(&f, "x", metric), 1, "{url}");
        // Six lookups and six stores; the first lookup failed.
        assert_eq!(remote_stat(&f, "x", "skipped_down"), 2 * n() - 1, "{url}");
        assert_eq!(f.stat("misses"), n());
        assert_eq!(f.entry_files().len(), MODULES.len(), "{url}: the local store works as ever");
        // In this host's state directory, wherever under the cache it is.
        let marks = files_under(&f.cache).into_iter().filter(|p| p.ends_with("remote-down.x")).count();
        assert_eq!(marks, 1, "{url}: no down mark");
        // Not a performance figure: a hang (10 s default timeout per call,
        // twelve calls) would take minutes.
        assert!(took < Duration::from_secs(60), "{url}: {took:?}");
    }
    drop(hung);
}

#[test]
fn auth_failures_and_too_large_values_are_counted_and_the_build_goes_on() {
    let web = nginx();
    let p = web.port;
    for (url, lookup_fails) in [
        (format!("http://127.0.0.1:{p}/forbidden/|name=x"), true),
        (format!("http://u:wrong@127.0.0.1:{p}/auth/|name=x"), true),
        (format!("http://127.0.0.1:{p}/auth/|name=x"), true),
        (format!("http://127.0.0.1:{p}/auth/|name=x|bearer-token=nope"), true),
        // Lookups miss (404); the first store is refused with 413.
        (format!("http://127.0.0.1:{p}/small/|name=x"), false),
    ] {
        let f = Fixture::new();
        build(&f, &url, &[], &[]);
        assert_eq!(remote_stat(&f, "x", "errors"), 1, "{url}");
        // A refused store marks the remote down: the lookups after it skip it.
        let misses = remote_stat(&f, "x", "misses");
        assert!(if lookup_fails { misses == 0 } else { misses >= 1 }, "{url}: {misses}");
        assert_eq!(f.stat("misses"), n(), "{url}");
        let log = std::fs::read_to_string(f.cache.with_file_name("ltocache.log")).unwrap();
        assert!(log.contains("HTTP 40") || log.contains("HTTP 413") || log.contains("sending"), "{log}");
        assert!(!log.contains("wrong") && !log.contains("nope"), "a secret reached the log: {log}");
    }
    // The right password works.
    let url = format!("http://u:pw@127.0.0.1:{p}/auth/|name=x");
    let (a, b) = (Fixture::new(), Fixture::new());
    build(&a, &url, &[], &[]);
    build(&b, &url, &[], &[]);
    assert_eq!((remote_stat(&a, "x", "stores"), remote_stat(&b, "x", "hits")), (n(), n()));
}

#[test]
fn redis_out_of_memory_is_an_error_not_a_broken_build() {
    let redis = redis_server(&["--maxmemory-policy", "noeviction"]);
    let used = redis.info("used_memory");
    redis.cli(&["config", "set", "maxmemory", &(used + 1024).to_string()]);
    let f = Fixture::new();
    build(&f, &format!("redis://127.0.0.1:{}|name=r", redis.port), &[], &[]);
    assert_eq!(remote_stat(&f, "r", "errors"), 1);
    assert!(std::fs::read_to_string(f.cache.with_file_name("ltocache.log")).unwrap().contains("OOM"));
}

#[test]
fn corrupt_truncated_and_oversized_values_are_counted_misses() {
    let redis = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{}|name=r", redis.port);
    build(&Fixture::new(), &url, &[], &[]);
    let keys = redis.keys();
    // One value replaced by garbage, one truncated by a byte.
    redis.cli(&["set", &keys[0], "garbage"]);
    let truncate = "return redis.call('set', KEYS[1], string.sub(redis.call('get', KEYS[1]), 1, -2))";
    assert_eq!(redis.cli(&["eval", truncate, "1", &keys[1]]), "OK");
    let b = Fixture::new();
    build(&b, &url, &[], &[]);
    assert_eq!((remote_stat(&b, "r", "corrupt"), remote_stat(&b, "r", "hits")), (2, n() - 2));
    assert_eq!(b.stat("misses"), 2);
    // The two misses stored good values again: a third host hits them all.
    let c = Fixture::new();
    build(&c, &url, &[], &[]);
    assert_eq!(remote_stat(&c, "r", "hits"), n());
    // A limit under every value: nothing is read, every lookup counted.
    let d = Fixture::new();
    build(&d, &format!("{url}|max-value-size=64"), &[], &[]);
    assert_eq!((remote_stat(&d, "r", "corrupt"), remote_stat(&d, "r", "too_large")), (n(), n()));
    assert_eq!(remote_stat(&d, "r", "errors"), 0, "a value over the limit is not a broken remote");
}

#[test]
fn two_hosts_with_separate_local_caches_share_one_remote() {
    let redis = redis_server(&[]);
    let web = nginx();
    let url = format!("redis://127.0.0.1:{}|name=r http://127.0.0.1:{}/c|name=w", redis.port, web.port);
    let (a, b) = (Fixture::new(), Fixture::new());
    build(&a, &url, &[], &["-O2"]);
    build(&b, &url, &[], &["-O1"]);
    // Each host now hits what the other stored; the first remote answers.
    remove_objects(&a);
    build(&a, &url, &[], &["-O1"]);
    build(&b, &url, &[], &["-O2"]);
    assert_eq!((remote_stat(&a, "r", "hits"), remote_stat(&b, "r", "hits")), (n(), n()));
    assert_eq!((remote_stat(&a, "w", "hits"), remote_stat(&b, "w", "hits")), (0, 0));
    assert_eq!((a.stat("misses"), b.stat("misses")), (n(), n()));
    // Both remotes got every value.
    assert_eq!((redis.keys().len(), files_under(&web.www()).len()), (2 * MODULES.len(), 2 * MODULES.len()));
    // Concurrently: two hosts building the same variants at once.
    let (c, d) = (Fixture::new(), Fixture::new());
    std::thread::scope(|s| {
        s.spawn(|| build(&c, &url, &[], &["-fno-PIE"]));
        s.spawn(|| build(&d, &url, &[], &["-fno-PIE"]));
    });
    assert_eq!(c.stat("hits") + c.stat("misses"), n());
}

#[test]
fn redis_lru_eviction_never_breaks_a_build() {
    let redis = redis_server(&["--maxmemory-policy", "allkeys-lru"]);
    let used = redis.info("used_memory");
    // Room for about a megabyte (well above the server's own swings).
    redis.cli(&["config", "set", "maxmemory", &(used + (1 << 20)).to_string()]);
    // Newer keys of another user of the server: filling it makes it evict
    // the least recently used keys, ours among them.
    let fill = |tag: &str| {
        let script = format!("for i = 1, 192 do redis.call('set', 'other:{tag}:' .. i, string.rep('x', 8192)) end");
        redis.cli(&["eval", &script, "0"]);
    };
    let url = format!("redis://127.0.0.1:{}|name=r", redis.port);
    let (a, b) = (Fixture::new(), Fixture::new());
    let variants = ["-O2", "-O1", "-fno-PIE", "-ffunction-sections"];
    fill("before");
    for v in variants {
        build(&a, &url, &[], &[v]);
    }
    assert_eq!(remote_stat(&a, "r", "stores"), (variants.len() * MODULES.len()) as i64);
    fill("between");
    for v in variants {
        build(&b, &url, &[], &[v]);
        fill(v);
    }
    let evicted = redis.info("evicted_keys");
    assert!(evicted > 0, "the server should have evicted");
    let total = (variants.len() * MODULES.len()) as i64;
    assert_eq!(b.stat("hits") + b.stat("misses"), total);
    assert!(b.stat("misses") > 0 && remote_stat(&b, "r", "errors") == 0);
}

#[test]
fn remote_only_keeps_no_local_store_and_reshare_pushes_local_hits() {
    let redis = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{}|name=r", redis.port);
    let a = Fixture::new();
    build(&a, &url, &[("LTOCACHE_REMOTE_ONLY", "1")], &[]);
    assert!(a.entry_files().is_empty() && a.blob_files().is_empty(), "remote_only wrote a local entry");
    assert_eq!(redis.keys().len(), MODULES.len());
    remove_objects(&a);
    build(&a, &url, &[("LTOCACHE_REMOTE_ONLY", "1")], &[]);
    assert_eq!((a.stat("hits"), remote_stat(&a, "r", "hits")), (n(), n()));
    assert!(a.entry_files().is_empty());

    // A host whose local cache is warm from before the remote existed.
    let b = Fixture::new();
    build(&b, "", &[], &["-O1"]);
    remove_objects(&b);
    build(&b, &url, &[], &["-O1"]);
    assert_eq!(redis.keys().len(), MODULES.len(), "local hits are not pushed without reshare");
    remove_objects(&b);
    build(&b, &url, &[("LTOCACHE_RESHARE", "1")], &["-O1"]);
    assert_eq!(redis.keys().len(), 2 * MODULES.len());
    let c = Fixture::new();
    build(&c, &url, &[], &["-O1"]);
    assert_eq!(remote_stat(&c, "r", "hits"), n());
}

#[test]
fn local_hits_never_touch_the_remote() {
    // A remote that would cost a timeout on every use: a local hit does not
    // even parse its URL, so it is never asked and never marked down.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/c|name=x|operation-timeout=100", hung.local_addr().unwrap().port());
    let f = Fixture::new();
    build(&f, "", &[], &[]);
    remove_objects(&f);
    build(&f, &url, &[], &[]);
    assert_eq!(f.stat("hits"), n());
    assert!(!f.stats_json().contains("\"x\": {"), "{}", f.stats_json());
    // And an unparsable setting costs a local hit nothing either.
    remove_objects(&f);
    build(&f, "ftp://nowhere", &[], &[]);
    assert_eq!((f.stat("hits"), f.stat("remote_config")), (2 * n(), 0));
}

#[test]
fn config_shows_each_remote_and_refuses_remotes_from_another_users_file() {
    let f = Fixture::new();
    std::fs::create_dir_all(&f.cache).unwrap();
    let conf = f.cache.join("ltocache.conf");
    std::fs::write(&conf, "remote_storage = redis://:s3cret@127.0.0.1:1|name=r http://127.0.0.1:2/c|read-only\n")
        .unwrap();
    let out = String::from_utf8(ok(f.ltocache().env_remove("LTOCACHE_REMOTE").arg("config")).stdout).unwrap();
    assert!(out.contains("redis://127.0.0.1:1 name=r") && out.contains("read-only"), "{out}");
    assert!(out.contains(&conf.display().to_string()), "the origin is shown: {out}");
    assert!(!out.contains("s3cret"), "{out}");
    let bad = String::from_utf8(ok(f.ltocache().env("LTOCACHE_REMOTE", "https://h/c").arg("config")).stdout).unwrap();
    assert!(bad.contains("REFUSED") && bad.contains("LTOCACHE_REMOTE"), "{bad}");

    // Writable by others, or owned by another user: the remotes are not
    // used (someone else's file could point this user's builds at a server
    // of theirs). The rule is config.rs's (trust.rs); here, that it holds
    // for the remotes.
    let redis = redis_server(&[]);
    std::fs::write(&conf, format!("remote_storage = redis://127.0.0.1:{}|name=r\n", redis.port)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o664)).unwrap();
    let refused = |f: &Fixture| {
        let out = String::from_utf8(ok(f.ltocache().env_remove("LTOCACHE_REMOTE").arg("config")).stdout).unwrap();
        assert!(out.contains("remote_storage in") && out.contains("ignored"), "{out}");
        assert!(!out.contains(&format!("127.0.0.1:{}", redis.port)), "{out}");
        for m in MODULES {
            ok(f.ltocache().env_remove("LTOCACHE_REMOTE").arg(CLANG).args(f.backend_args(m, &format!("{m}.x.o"), &[])));
        }
        assert!(redis.keys().is_empty());
        assert_eq!(f.stat("misses"), n());
    };
    refused(&f);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let g = Fixture::new();
        std::fs::create_dir_all(&g.cache).unwrap();
        let conf = g.cache.join("ltocache.conf");
        std::fs::write(&conf, format!("remote_storage = redis://127.0.0.1:{}|name=r\n", redis.port)).unwrap();
        std::os::unix::fs::chown(&conf, Some(65534), None).unwrap();
        refused(&g);
    }
}

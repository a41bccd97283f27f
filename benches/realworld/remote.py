#!/usr/bin/env python3
""""A second machine": the backend phase of a distributed ThinLTO build on a
machine whose local cache is empty while a remote one (Redis, or nginx with
WebDAV) is warm, against the same phase with no cache and with a warm local
cache; and the latency of one remote hit against one local hit.

    benches/realworld/run.sh --remote [--corpus lua|libgit2]... [--repeat N] [--no-docs]

Both servers are started on free ports of 127.0.0.1 as processes of this
script (redis-server, nginx; scripts/install-deps.sh installs them) and
stopped at the end. The scenarios are interleaved round by round:

  none       every backend run by plain clang
  local      a warm local cache (this machine built it before)
  <remote>   a fresh local cache, the remote warm (another machine built it):
             every backend is a remote hit, written into the local cache

Every object of every scenario is compared with the uncached run's. Results
are printed and, with --docs, written into docs/benchmarks.md between the
markers of the section "A second machine"."""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the corpora, the build, the job runner)

BEGIN = "<!-- remote-bench:begin -->"
END = "<!-- remote-bench:end -->"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(proc, port, log):
    t0 = time.time()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited: {open(log).read() if os.path.exists(log) else ''}")
            if time.time() - t0 > 20:
                sys.exit(f"server did not listen on {port}")
            time.sleep(0.05)


class Servers:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ltocache-remote-bench-")
        self.procs = []

    def redis(self):
        port = free_port()
        log = os.path.join(self.dir, "redis.log")
        p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", self.dir, "--logfile", log], stdout=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(p, port, log)
        return f"redis://127.0.0.1:{port}|name=redis"

    def nginx(self):
        port = free_port()
        d = self.dir
        os.makedirs(f"{d}/www", exist_ok=True)
        conf = f"""daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen 127.0.0.1:{port}; root {d}/www; client_max_body_size 128m;
    location / {{ dav_methods PUT DELETE; create_full_put_path on; }} }} }}
"""
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
        p = subprocess.Popen([nginx, "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(p, port, f"{d}/error.log")
        return f"http://127.0.0.1:{port}/lto|name=http"

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def bench_corpus(corpus, work, ltocache, repeat, remotes, failures):
    b = bench.Build(corpus, work, ltocache)
    b.prepare()
    b.reset_lto_dir()
    b.thin_link()
    n = len(b.objs)
    name = corpus.name

    def tool(tag, remote=""):
        for d in ("cache", "stats"):
            shutil.rmtree(b.p("remote-bench", tag, d), ignore_errors=True)
        t = bench.Tool(ltocache, b.p("remote-bench", tag, "cache"), b.p("remote-bench", tag, "stats"),
                       b.p("remote-bench", tag, "log"))
        # A new machine hashes its compiler once (counted apart, ~0.1 s
        # unloaded): done here, with nothing looked up or stored, so that the
        # scenarios compare lookups, not that one-time cost.
        b.make_outdir(os.path.join("out", "rb-prime"))
        bench.run(t.wrap(b.backend_argv(b.objs[0], os.path.join("out", "rb-prime"))), cwd=b.dir,
                  env=dict(t.env, LTOCACHE_RECACHE="1", LTOCACHE_READONLY="1"))
        if remote:
            t.env["LTOCACHE_REMOTE"] = remote
        return t

    def backends(label, outdir, t=None):
        b.make_outdir(outdir, clean=True)
        jobs = [b.backend_argv(o, outdir) for o in b.objs]
        if t:
            jobs = [t.wrap(j) for j in jobs]
        res = bench.run_jobs(jobs, cwd=b.dir, env=t.env if t else None)
        bad = [r for r in res["results"] if r[1] != 0]
        if bad:
            raise RuntimeError(f"{label}: {len(bad)} backend(s) failed: {bad[0][3]}")
        bench.log(f"{name} {label}: wall {res['wall']:.2f} s")
        return res

    # One host's identity memo first, so no scenario pays for hashing clang.
    res = backends("none (reference)", os.path.join("out", "rb-none"))
    walls = {"none": [], "local": [], **{k: [] for k in remotes}}
    jobs = {k: [] for k in walls}
    stats = {}
    local = tool("local")
    backends("local, cold (filling)", os.path.join("out", "rb-local"), local)
    for kind, url in remotes.items():
        first = tool(f"{kind}-first", url)
        backends(f"{kind}: the first machine fills the remote", os.path.join("out", f"rb-{kind}"), first)
    for i in range(repeat):
        res = backends(f"none #{i + 1}", os.path.join("out", "rb-none"))
        walls["none"].append(res["wall"])
        jobs["none"] += [r[2] for r in res["results"]]
        local.zero()
        res = backends(f"local warm #{i + 1}", os.path.join("out", "rb-local"), local)
        walls["local"].append(res["wall"])
        jobs["local"] += [r[2] for r in res["results"]]
        st = local.stats()
        if st["hits"] != n:
            failures.append(f"{name} local warm: {st['hits']} hits of {n}")
        for kind, url in remotes.items():
            second = tool(f"{kind}-second", url)
            second.zero()
            out = os.path.join("out", f"rb-{kind}")
            res = backends(f"{kind}: a second machine #{i + 1}", out, second)
            walls[kind].append(res["wall"])
            jobs[kind] += [r[2] for r in res["results"]]
            st = second.stats()
            r = st["remotes"].get(kind, {})
            stats[kind] = r
            if st["hits"] != n or r.get("hits") != n or r.get("errors", 0) or r.get("timeouts", 0):
                failures.append(f"{name} {kind}: {st['hits']} hits, remote {r} of {n}")
            differ = bench.compare_outputs(b.dir, b.objs, b.p(out), b.p("out", "rb-none"))
            if differ:
                failures.append(f"{name} {kind}: {len(differ)} objects differ, e.g. {differ[0]}")
    differ = bench.compare_outputs(b.dir, b.objs, b.p("out", "rb-local"), b.p("out", "rb-none"))
    if differ:
        failures.append(f"{name} local: {len(differ)} objects differ")
    return {"name": name, "modules": n, "walls": walls, "jobs": jobs, "remote_stats": stats}


def report(results, meta):
    m = meta["machine"]
    machine = f"{m['nproc']} CPUs ({m['cpu']}), load {m['load']} at the start"
    out = [BEGIN, "", f"Run {meta['when']} at {meta['commit']} on {machine}: `{meta['command']}`; "
           f"{meta['repeat']} interleaved rounds, 2 jobs at a time; servers on 127.0.0.1 (no network latency: "
           "a real network adds one round trip per lookup).", ""]
    for r in results:
        n = r["modules"]
        none = statistics.mean(r["walls"]["none"])
        out += [f"**{r['name']}** ({n} backends)", "",
                "| scenario | backend phase s (mean) | vs no cache | per backend p50 ms | p90 ms |",
                "|---|---:|---:|---:|---:|"]
        labels = {"none": "no cache", "local": "warm local cache"}
        for k, walls in r["walls"].items():
            w = statistics.mean(walls)
            j = r["jobs"][k]
            label = labels.get(k, f"a second machine: fresh local cache, warm {k} remote")
            ratio = "—" if k == "none" else f"{none / w:.1f}x faster"
            out.append(f"| {label} | {w:.2f} | {ratio} | {pct(j, .5) * 1e3:.1f} | {pct(j, .9) * 1e3:.1f} |")
        for k, s in r["remote_stats"].items():
            hits = s.get("hits", 0)
            if hits:
                out.append("")
                out.append(f"{k}: {hits} remote hits in the last round, {bench.fmt_bytes(s.get('bytes_read', 0))} read; "
                           f"the hits cost {s.get('seconds_hits_cost', 0):.2f} s of lookup-to-object time against "
                           f"{s.get('seconds_saved', 0):.2f} s of compiles they replaced.")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ltocache", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--crates", required=True)
    ap.add_argument("--docs")
    ap.add_argument("--command", default="")
    ap.add_argument("--corpus", action="append", choices=["lua", "libgit2", "zstd"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--remote", action="store_true", help="(selects this script in run.sh)")
    args, _ = ap.parse_known_args()
    crates = json.loads(args.crates)
    repo = os.path.dirname(os.path.dirname(bench.HERE))
    rev = bench.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": rev, "machine": bench.machine(),
            "command": args.command, "repeat": args.repeat}
    servers = Servers()
    failures, results = [], []
    try:
        remotes = {"redis": servers.redis(), "http": servers.nginx()}
        for name in args.corpus or ["lua", "libgit2"]:
            corpus = bench.CORPORA[name](crates[bench.CORPORA[name].crate])
            results.append(bench_corpus(corpus, args.work, args.ltocache, args.repeat, remotes, failures))
    finally:
        servers.stop()
    text = report(results, meta)
    print(text)
    if args.docs:
        with open(args.docs) as f:
            doc = f.read()
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + text.rstrip("\n") + doc[doc.index(END) + len(END):]
        else:
            doc += "\n## A second machine: the remote tier\n\n" + text
        with open(args.docs, "w") as f:
            f.write(doc)
    if failures:
        print("FAILED: " + "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()

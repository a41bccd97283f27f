//! Micro-benchmarks of the hit path's parts, next to the hardware's limits on
//! the same machine (blake3's raw hashing speed, memcpy):
//!
//! - shard parsing for 1 / 10 / 100 imports;
//! - key computation for 1 / 10 / 100 imports (cold: every file hashed; warm: digest memo);
//! - store lookup + serving a hit for 4 KiB / 1 MiB / 16 MiB objects.
//!
//! Inputs are real: the modules are compiled and thin-linked with clang-19 at start-up.
//! Run: `cargo bench --bench micro` (figures in docs/benchmarks.md).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ltocache::key::args::analyze;
use ltocache::key::digest::FileHasher;
use ltocache::key::memo::MemoTable;
use ltocache::store::ServeMode;
use ltocache::store::{Entry, LocalStore, Store, Stored, StoredOutput};
use std::path::{Path, PathBuf};
use std::process::Command;

const IMPORTS: &[usize] = &[1, 10, 100];

/// Builds `lib0..lib99` and `main{1,10,100}`, where `mainK` calls `f0..f(K-1)`,
/// compiled with -flto=thin and thin-linked: `mainK.o.thinlto.bc` lists K imports.
fn corpus() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut objs = Vec::new();
    for i in 0..100 {
        std::fs::write(dir.join(format!("lib{i}.c")), format!("int f{i}(int x) {{ return x * {i} + 1; }}\n")).unwrap();
        objs.push(format!("lib{i}"));
    }
    for &k in IMPORTS {
        let decls: String = (0..k).map(|i| format!("int f{i}(int);")).collect();
        let calls: String = (0..k).map(|i| format!("s += f{i}(s);")).collect();
        std::fs::write(
            dir.join(format!("main{k}.c")),
            format!("{decls}\nint main{k}(int s) {{ {calls} return s; }}\n"),
        )
        .unwrap();
        objs.push(format!("main{k}"));
    }
    let mut children = Vec::new();
    for chunk in objs.chunks(objs.len().div_ceil(2)) {
        let chunk: Vec<String> = chunk.to_vec();
        let dir = dir.clone();
        children.push(std::thread::spawn(move || {
            for m in chunk {
                let st = Command::new("clang-19")
                    .current_dir(&dir)
                    .args(["-O2", "-flto=thin", "-c", &format!("{m}.c"), "-o", &format!("{m}.o")])
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }));
    }
    for c in children {
        c.join().unwrap();
    }
    let mut link = Command::new("ld.lld-19");
    link.current_dir(&dir).args(["--thinlto-index-only", "-shared", "-o", "out.so"]);
    link.args(objs.iter().map(|m| format!("{m}.o")));
    assert!(link.status().unwrap().success());
    (tmp, dir)
}

fn backend_args(k: usize) -> Vec<String> {
    ["-O2", "-c", &format!("-fthinlto-index=main{k}.o.thinlto.bc"), "-x", "ir", &format!("main{k}.o"), "-o", "out.o"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn bench_shard(c: &mut Criterion, dir: &Path) {
    let mut g = c.benchmark_group("shard_parse");
    for &k in IMPORTS {
        let data = std::fs::read(dir.join(format!("main{k}.o.thinlto.bc"))).unwrap();
        assert_eq!(ltocache::key::shard::read_shard(&data).unwrap().modules.len(), k + 1);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("imports", k), &data, |b, d| {
            b.iter(|| ltocache::key::shard::read_shard(d).unwrap())
        });
    }
    g.finish();
}

fn bench_key(c: &mut Criterion, dir: &Path) {
    std::env::set_current_dir(dir).unwrap();
    let compiler_id = [7u8; 32];
    let mut g = c.benchmark_group("key");
    for &k in IMPORTS {
        let inv = analyze("clang-19", &backend_args(k)).unwrap();
        let bytes: u64 = std::fs::read(format!("main{k}.o.thinlto.bc")).unwrap().len() as u64
            + (0..k).map(|i| std::fs::metadata(format!("lib{i}.o")).unwrap().len()).sum::<u64>()
            + std::fs::metadata(format!("main{k}.o")).unwrap().len();
        g.throughput(Throughput::Bytes(bytes));
        g.bench_with_input(BenchmarkId::new("cold", k), &inv, |b, inv| {
            b.iter(|| {
                let mut h = FileHasher::new(None);
                ltocache::key::compute(inv, &compiler_id, &mut h, &|_| None).map_err(|_| ()).unwrap()
            })
        });
        // Warm: a memo table that already holds every file (the fixture was
        // made more than RACY_NS ago, see `all`, so the memos are trusted).
        let memo_dir = tempfile::tempdir().unwrap();
        let memo = MemoTable::open(memo_dir.path()).unwrap();
        {
            let mut h = FileHasher::new(Some(&memo));
            ltocache::key::compute(&inv, &compiler_id, &mut h, &|_| None).map_err(|_| ()).unwrap();
        }
        g.bench_with_input(BenchmarkId::new("warm_memo", k), &inv, |b, inv| {
            b.iter(|| {
                let mut h = FileHasher::new(Some(&memo));
                let key = ltocache::key::compute(inv, &compiler_id, &mut h, &|_| None).map_err(|_| ()).unwrap();
                assert_eq!(h.bytes_hashed, 0);
                key
            })
        });
    }
    g.finish();
}

fn bench_store(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("cache"));
    let out = tmp.path().join("out.o");
    let mut g = c.benchmark_group("hit");
    for &(label, size) in &[("4KiB", 4usize << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)] {
        let data: Vec<u8> = (0..size).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1]).collect();
        let digest = *blake3::hash(&data).as_bytes();
        store.put_blob(&digest, &data).unwrap();
        let key = *blake3::hash(label.as_bytes()).as_bytes();
        let entry = Entry {
            key,
            duration_ns: 1,
            created_unix: 0,
            outputs: vec![StoredOutput { kind: 0, size: size as u64, digest, stored: Stored::Blob }],
            stderr: Vec::new(),
        };
        store.put_entry(&entry).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("lookup_and_serve", label), |b| {
            b.iter(|| {
                let ltocache::store::Lookup::Hit(e) = store.get_entry(&key).unwrap() else { panic!("miss") };
                store.serve_blob(&e.outputs[0].digest, e.outputs[0].size, &out, ServeMode::Copy).unwrap()
            })
        });
        // The default store: zstd level 1, outputs inside the entry up to
        // 256 KiB stored, ≤ 4 KiB raw (what a compile stores unless told otherwise).
        let default_store = LocalStore::new(&tmp.path().join("default"))
            .with_compression(Some(ltocache::config::DEFAULT_ZSTD_LEVEL))
            .with_inline_max(ltocache::store::INLINE_MAX);
        let (output, _) = default_store.put_output(0, &data).unwrap();
        default_store.put_entry(&Entry { outputs: vec![output], ..entry.clone() }).unwrap();
        g.bench_function(BenchmarkId::new("lookup_and_serve_default_store", label), |b| {
            b.iter(|| {
                let ltocache::store::Lookup::Hit(e) = default_store.get_entry(&key).unwrap() else { panic!("miss") };
                default_store.serve_output(&e.outputs[0], &out, ServeMode::Copy).unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("limit_blake3", label), |b| b.iter(|| blake3::hash(&data)));
        let mut dst = vec![0u8; size];
        g.bench_function(BenchmarkId::new("limit_memcpy", label), |b| b.iter(|| dst.copy_from_slice(&data)));
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    let (_tmp, dir) = corpus();
    // Let the files settle past the racy window so their memos are trusted.
    std::thread::sleep(std::time::Duration::from_nanos(ltocache::key::digest::RACY_NS as u64 + 100_000_000));
    bench_shard(c, &dir);
    bench_key(c, &dir);
    bench_store(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = all
}
criterion_main!(benches);

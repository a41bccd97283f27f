//! How fast the assembly scan (`shard::asm_refs`) reads real bitcode, next
//! to blake3 over the same bytes: every bitcode file under a directory,
//! three passes.
//!
//!     cargo bench --bench asm_scan -- benches/realworld/work/libgit2/bc

fn main() {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| {
        eprintln!("usage: cargo bench --bench asm_scan -- DIR_WITH_BITCODE");
        std::process::exit(2)
    });
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(dir)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(data) = std::fs::read(&p) {
                if ltocache::key::bitcode::is_bitcode(&data) {
                    files.push(data);
                }
            }
        }
    }
    let total: usize = files.iter().map(Vec::len).sum();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let refs: usize = files.iter().map(|f| ltocache::key::shard::asm_refs(f).map_or(0, |r| r.len())).sum();
        let scan = t.elapsed();
        let t = std::time::Instant::now();
        for f in &files {
            std::hint::black_box(blake3::hash(f));
        }
        let hash = t.elapsed();
        println!(
            "{} files, {} KiB: asm scan {:.2} ms ({:.0} MB/s, {refs} references), blake3 {:.2} ms",
            files.len(),
            total / 1024,
            scan.as_secs_f64() * 1e3,
            total as f64 / scan.as_secs_f64() / 1e6,
            hash.as_secs_f64() * 1e3
        );
    }
}

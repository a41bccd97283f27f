//! What `explain` already knows about a link's jobs, so that a warm link
//! does not record it again.
//!
//! Every served job used to append its key's fields (~1.7 KiB of text for a
//! libgit2 job) to the journal: 418 KiB per warm libgit2 link, so a fold
//! into SQLite every 11th link (60 ms of CPU), and — lld names each object
//! after its own PID — 210 new `last_compile` rows per link, forever. Now:
//!
//! - a job's object is recorded under its name without the linker's PID
//!   (`a.1.4711.native.o` → `a.1.native.o`, [`stable_name`]): the same name
//!   in every link of that program, so `explain` compares a job with the
//!   same job of the previous link;
//! - this file (`dtlto-<hash of the link's output>` in the state directory)
//!   lists, for the last link of that output on this host, each job whose
//!   record is a hit: (hash of the stable name, key served). A job served
//!   under the same key again has nothing new for `explain`: its record is
//!   left out (the fold would have changed nothing). A miss, a failure or
//!   another key is recorded as before, and the file rewritten.
//!
//! The file is written only after the journal took the link's records, so
//! it never claims a record the journal lost; a file that is missing, torn
//! or not ours only costs recording everything once more. Should the
//! database lose its rows while the file stays (a corrupt database is set
//! aside and rebuilt), `explain` has nothing on the unchanged jobs until
//! their key changes. lld names a job's object after its module and task in
//! the output's directory, so two programs linked in one directory from the
//! same modules share those names: `explain` then shows whichever link last
//! recorded a change there. Only `explain` is affected, never an object.

use crate::util::hex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"ltocache-dtlto-recorded-v1\n";
/// (blake3 of the stable name, first 16 bytes; the key served).
pub type Pair = ([u8; 16], [u8; 32]);
/// A link has at most a few thousand jobs; anything larger is not ours.
const CAP: u64 = 4 << 20;

/// The link's object name without the linker's PID: lld names a job's
/// object `<module>.<task>.<pid>.native.o` (the job file `<output>.<pid>.dist-file.json`).
/// Names without `.<pid>.` are kept as they are.
pub fn stable_name(output: &str, pid: Option<&str>) -> String {
    let Some(pid) = pid else { return output.to_string() };
    let (dir, file) = output.rsplit_once('/').map_or(("", output), |(d, f)| (d, f));
    let needle = format!(".{pid}.");
    match file.rfind(&needle) {
        Some(at) => {
            let file = format!("{}.{}", &file[..at], &file[at + needle.len()..]);
            if dir.is_empty() && !output.starts_with('/') {
                file
            } else {
                format!("{dir}/{file}")
            }
        }
        None => output.to_string(),
    }
}

/// The link's output and the linker's PID, from the job file's name
/// (`<output>.<pid>.dist-file.json`), if it has that shape.
pub fn link_of(job_file: &Path) -> Option<(PathBuf, String)> {
    let name = job_file.file_name()?.to_str()?;
    let stem = name.strip_suffix(".dist-file.json")?;
    let (output, pid) = stem.rsplit_once('.')?;
    if output.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((job_file.with_file_name(output), pid.to_string()))
}

pub fn name_hash(name: &str) -> [u8; 16] {
    blake3::hash(name.as_bytes()).as_bytes()[..16].try_into().unwrap()
}

/// The recorded hits of one link's output on this host.
pub struct Recorded {
    state_dir: PathBuf,
    file: String,
    pub hits: HashSet<Pair>,
}

impl Recorded {
    /// Reads the file for the link whose output is `output` (absolute).
    pub fn load(state_dir: &Path, output: &Path) -> Recorded {
        use std::os::unix::ffi::OsStrExt;
        let file =
            crate::cachedir::layout::dtlto_recorded(&hex(&blake3::hash(output.as_os_str().as_bytes()).as_bytes()[..8]));
        let data = crate::cachedir::beneath::open_in_stat(state_dir, &file, libc::O_RDONLY, 0, CAP)
            .and_then(|(f, st)| crate::util::read_sized(&f, st.st_size as u64))
            .ok();
        let hits = data.as_deref().and_then(decode).unwrap_or_default();
        Recorded { state_dir: state_dir.to_path_buf(), file, hits }
    }

    /// Replaces the file with `hits` when they differ from what it held.
    pub fn save(&self, hits: HashSet<Pair>) {
        if hits != self.hits {
            let _ = crate::util::write_atomic(&self.state_dir, &self.state_dir.join(&self.file), &encode(&hits));
        }
    }
}

fn encode(hits: &HashSet<Pair>) -> Vec<u8> {
    let mut sorted: Vec<&Pair> = hits.iter().collect();
    sorted.sort();
    let mut out = MAGIC.to_vec();
    for (name, key) in sorted {
        out.extend_from_slice(name);
        out.extend_from_slice(key);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(data: &[u8]) -> Option<HashSet<Pair>> {
    let (signed, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
    if blake3::hash(signed).as_bytes() != sum {
        return None;
    }
    let body = signed.strip_prefix(MAGIC)?;
    if body.len() % 48 != 0 {
        return None;
    }
    Some(body.chunks_exact(48).map(|c| (c[..16].try_into().unwrap(), c[16..].try_into().unwrap())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_the_linkers_pid_only() {
        let pid = Some("4711");
        assert_eq!(stable_name("/b/out/a.1.4711.native.o", pid), "/b/out/a.1.native.o");
        assert_eq!(stable_name("a.1.4711.native.o", pid), "a.1.native.o");
        // Only the file name, and only a whole `.pid.` part.
        assert_eq!(stable_name("/b/x.4711.d/a.1.4711.native.o", pid), "/b/x.4711.d/a.1.native.o");
        assert_eq!(stable_name("/b/a.14711.native.o", pid), "/b/a.14711.native.o");
        assert_eq!(stable_name("/b/a.1.native.o", None), "/b/a.1.native.o");
        assert_eq!(
            link_of(Path::new("/b/out/prog.4711.dist-file.json")),
            Some((PathBuf::from("/b/out/prog"), "4711".to_string()))
        );
        assert_eq!(link_of(Path::new("/b/jobs.json")), None);
        assert_eq!(link_of(Path::new("/b/prog.x1.dist-file.json")), None);
        assert_eq!(link_of(Path::new("/b/.4711.dist-file.json")), None);
    }

    #[test]
    fn the_file_round_trips_and_damage_reads_as_nothing_recorded() {
        let d = tempfile::tempdir().unwrap();
        let out = Path::new("/b/prog");
        let r = Recorded::load(d.path(), out);
        assert!(r.hits.is_empty());
        let hits: HashSet<Pair> = [([1; 16], [2; 32]), ([3; 16], [4; 32])].into_iter().collect();
        r.save(hits.clone());
        let again = Recorded::load(d.path(), out);
        assert_eq!(again.hits, hits);
        assert!(Recorded::load(d.path(), Path::new("/b/other")).hits.is_empty(), "one file per link output");
        let path = d.path().join(&again.file);
        let mut data = std::fs::read(&path).unwrap();
        data[MAGIC.len() + 3] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(Recorded::load(d.path(), out).hits.is_empty());
    }
}

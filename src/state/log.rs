//! The optional log file (`LTOCACHE_LOGFILE`): one line per event, so a
//! fallback to the real compiler is never silent for whoever looks.

use std::io::Write;
use std::path::PathBuf;

pub struct Logger {
    path: Option<PathBuf>,
}

impl Logger {
    pub fn new(path: Option<PathBuf>) -> Logger {
        Logger { path }
    }

    pub fn log(&self, msg: &str) {
        let Some(path) = &self.path else { return };
        let line = format!(
            "{} {}[{}] {}\n",
            crate::util::now_ns() / 1_000_000,
            crate::util::hostname(),
            std::process::id(),
            msg
        );
        // One write of one line with O_APPEND: lines from parallel processes
        // on one host do not interleave. Failing to log must not fail a build.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

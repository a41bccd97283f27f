//! The subcommands, as clap types. Anything that is not one of these is a
//! compiler command line and goes to [`crate::wrapper`].

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ltocache",
    version,
    about = "A cache for Clang's distributed ThinLTO backend compiles",
    long_about = "A cache for Clang's distributed ThinLTO backend compiles.\n\n\
Wrap a compiler:  ltocache clang-19 -O2 -c -fthinlto-index=a.o.thinlto.bc -x ir a.o -o a.final_o\n\
Kernel builds:    make LLVM=1 CC=\"ltocache clang\"\n\n\
Settings come from LTOCACHE_* environment variables or <cache_dir>/ltocache.conf; see `ltocache config`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show hit rate, counts, what the cache saved and its size.
    Stats {
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reset this host's counters (the cache itself is kept).
    ZeroStats,
    /// Remove every cached entry and blob.
    Clear,
    /// Show the effective settings and where each came from.
    Config,
    /// Trim the store below its size and file limits (least recently used first),
    /// and remove stale temp files and unreferenced blobs.
    Cleanup {
        /// Use this size limit instead of the configured one (e.g. 500M, 20G).
        #[arg(long)]
        max_size: Option<String>,
    },
    /// Remove entries not used for the given time (e.g. 7d, 12h).
    Evict {
        #[arg(long, value_name = "AGE")]
        older_than: String,
    },
    /// Check every blob's digest and every entry's checksum and references.
    /// Exits 1 when anything is broken.
    Verify {
        /// Remove what is broken.
        #[arg(long)]
        fix: bool,
    },
    /// Say why the last compile of an output missed (or hit).
    Explain {
        /// The output path (`-o` of the backend command).
        output: String,
    },
}

/// Names that select subcommand mode when they are the first argument.
pub const SUBCOMMANDS: &[&str] =
    &["stats", "zero-stats", "clear", "config", "explain", "cleanup", "evict", "verify", "help"];

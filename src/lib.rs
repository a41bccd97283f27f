//! ltocache: a cache for Clang's distributed ThinLTO backend compiles.
//!
//! The layers, bottom up (docs/ARCHITECTURE.md follows one invocation through
//! them): [`util`]; [`cachedir`] — the shared cache directory's names, trust
//! and descriptor-based opening; [`key`] — everything a backend reads and the
//! key over it; [`state`] — journal, stats database, log; [`store`] — local
//! and remote; [`config`]; [`exec`] and [`verify`]; then one backend job as
//! steps in [`backend`] (with its [`backend::precise`] second key), driven by
//! [`wrapper`] for a compiler command line and by [`distributor`] for lld's
//! DTLTO job file. The subcommands live in [`commands`] ([`cli`] parses
//! them). The binary allocates through [`arena`].

pub mod arena;
pub mod backend;
pub mod cachedir;
pub mod cli;
pub mod commands;
pub mod config;
pub mod distributor;
pub mod exec;
pub mod key;
pub mod state;
pub mod store;
pub mod util;
pub mod verify;
pub mod wrapper;

//! ltocache: a cache for Clang's distributed ThinLTO backend compiles.
//!
//! One invocation flows through the modules in this order (docs/ARCHITECTURE.md):
//! [`args`] → [`shard`]/[`bitcode`] → [`compiler`] + [`digest`] (memos in
//! [`memo`]) → [`key`] → [`store`] → [`exec`] → [`journal`], orchestrated by
//! [`wrapper`]. The subcommands (`stats`, `clear`, ...) live in [`commands`]
//! and read [`stats`], the journal folded into SQLite; settings in [`config`].
//! The binary allocates through [`arena`].

pub mod arena;
pub mod args;
pub mod backend;
pub mod beneath;
pub mod bitcode;
pub mod cli;
pub mod commands;
pub mod compiler;
pub mod config;
pub mod digest;
pub mod distributor;
pub mod driver;
pub mod exec;
pub mod journal;
pub mod key;
pub mod layout;
pub mod log;
pub mod memo;
pub mod precise;
pub mod shard;
pub mod stats;
pub mod store;
pub mod trust;
pub mod util;
pub mod verify;
pub mod wrapper;

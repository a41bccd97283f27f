//! ltocache: a cache for Clang's distributed ThinLTO backend compiles.
//!
//! One invocation flows through the modules in this order (docs/ARCHITECTURE.md):
//! [`args`] → [`shard`]/[`bitcode`] → [`compiler`] + [`digest`] → [`key`] →
//! [`store`] → [`exec`] → [`stats`], orchestrated by [`wrapper`]. The
//! subcommands (`stats`, `clear`, ...) live in [`commands`]; settings in [`config`].

pub mod args;
pub mod bitcode;
pub mod cleanup;
pub mod cli;
pub mod commands;
pub mod compiler;
pub mod config;
pub mod digest;
pub mod exec;
pub mod key;
pub mod log;
pub mod shard;
pub mod stats;
pub mod store;
pub mod util;
pub mod wrapper;

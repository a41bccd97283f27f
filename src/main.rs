//! Dispatch only: subcommands go to clap and `commands`, a DTLTO job file to
//! `distributor`, anything else is a compiler command line for `wrapper`.

use clap::Parser;
use std::ffi::OsString;
use std::path::Path;

/// A short-lived process's allocator: no memory is returned to the kernel
/// (see `arena.rs` for why and what it saved).
#[global_allocator]
static ALLOCATOR: ltocache::arena::Arena = ltocache::arena::Arena::new();

fn main() {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let me = argv.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());

    // Masquerade: a symlink named `clang` pointing at ltocache wraps itself.
    if me.as_deref().is_some_and(|n| !n.starts_with("ltocache")) {
        let compiler = argv.remove(0).to_string_lossy().into_owned();
        let compiler = Path::new(&compiler).file_name().unwrap().to_string_lossy().into_owned();
        ltocache::wrapper::run(compiler, argv);
    }

    // lld's DTLTO runs `ltocache [--options] OUT.PID.dist-file.json`.
    if ltocache::distributor::is_invocation(argv.get(1..).unwrap_or_default()) {
        ltocache::distributor::run(argv.split_off(1));
    }

    let first = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if argv.len() > 1 && !first.starts_with('-') && !ltocache::cli::SUBCOMMANDS.contains(&first) {
        let compiler = first.to_string();
        ltocache::wrapper::run(compiler, argv.split_off(2));
    }

    // Subcommands print to pipes (`ltocache stats | head`): a closed pipe ends
    // the process quietly, as for any Unix tool, instead of panicking.
    // SAFETY: restoring the default SIGPIPE disposition before any output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = ltocache::cli::Cli::parse();
    if let Err(e) = ltocache::commands::run(cli.command) {
        eprintln!("ltocache: {e:#}");
        std::process::exit(1);
    }
}

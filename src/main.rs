//! Dispatch only: subcommands go to clap and `commands`, anything else is a
//! compiler command line for `wrapper`.
//!
//! The entry point is C's `main`, not Rust's (`no_main`). std's start-up
//! installs an alternate signal stack for stack-overflow reports, ignores
//! SIGPIPE and checks the stdio descriptors: 70 µs of CPU and 9 page faults
//! per process on the benchmark VM, a tenth of a hit. Of that, what matters
//! is done here: descriptors 0–2 made valid (so no file we open lands on
//! them) and argv collected (on musl, `std::env::args` is empty without
//! std's start-up). SIGPIPE keeps the disposition the build gave us, which
//! is also what the compiler inherits.
#![cfg_attr(not(test), no_main)]

use clap::Parser;
use std::ffi::OsString;
use std::path::Path;

/// A short-lived process's allocator: no memory is returned to the kernel
/// (see `arena.rs` for why and what it saved).
#[global_allocator]
static ALLOCATOR: ltocache::arena::Arena = ltocache::arena::Arena::new();

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    ltocache::util::ensure_stdio_open();
    // SAFETY: the C runtime passes `argc` valid NUL-terminated strings.
    let args = unsafe { ltocache::util::args_from_c(argc, argv) };
    dispatch(args);
    // Through std's exit, which flushes stdout (returning would not).
    std::process::exit(0)
}

#[cfg_attr(test, allow(dead_code))]
fn dispatch(mut argv: Vec<OsString>) {
    let me = argv.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());

    // Masquerade: a symlink named `clang` pointing at ltocache wraps itself.
    if me.as_deref().is_some_and(|n| !n.starts_with("ltocache")) {
        let compiler = argv.remove(0).to_string_lossy().into_owned();
        let compiler = Path::new(&compiler).file_name().unwrap().to_string_lossy().into_owned();
        ltocache::wrapper::run(compiler, argv);
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
    let cli = ltocache::cli::Cli::parse_from(argv);
    if let Err(e) = ltocache::commands::run(cli.command) {
        eprintln!("ltocache: {e:#}");
        std::process::exit(1);
    }
}

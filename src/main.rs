//! The `mqdemo` binary: parse arguments, run, report the error once, exit.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Panic reports only; errors are reported by `mqdemo::exit_code` with no backtrace unless
    // RUST_BACKTRACE asks for one.
    let _ = color_eyre::config::HookBuilder::default().display_env_section(false).install();
    let cli = mqdemo::cli::Cli::parse();
    mqdemo::exit_code(mqdemo::run(cli))
}

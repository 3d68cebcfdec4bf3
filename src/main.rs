//! The `mqdemo` binary: parse arguments, run, report the error once, exit.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Errors stay one line (`mqdemo::exit_code`); backtraces are for panics.
    mqdemo::install_reports();
    let cli = mqdemo::cli::Cli::parse();
    mqdemo::exit_code(mqdemo::run(cli))
}

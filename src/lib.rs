//! mqdemo moves ML data (CSV rows, images, text files) into RabbitMQ queues and out again,
//! with publisher confirms, persistent messages and safe, atomic file writing.
//!
//! Modules: [`cli`] (arguments) -> [`config`] (validated) -> [`produce`] / [`consume`] /
//! [`demo`] (flows) over [`amqp`] (the only broker code), [`codec`] (pure wire format),
//! [`csv_input`] / [`csv_output`] (CSV files as they really are),
//! [`sink`] (files) and [`output`] (what people see on stderr).

#![warn(unreachable_pub)]

pub mod amqp;
pub(crate) mod child;
pub mod cli;
pub mod codec;
pub mod config;
pub(crate) mod consume;
pub mod csv_input;
pub(crate) mod csv_output;
pub(crate) mod demo;
pub(crate) mod failed_cmd;
mod files;
pub(crate) mod output;
pub(crate) mod produce;
pub(crate) mod request;
pub(crate) mod results_db;
pub(crate) mod signals;
pub(crate) mod sink;
pub(crate) mod stage;
pub(crate) mod stdout;
pub(crate) mod workers;

use color_eyre::eyre::{Report, Result, WrapErr};
use config::{Action, Config, UsageError};
use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// Run a parsed command line: Ok(true) when everything was done, Ok(false) when it ran to
/// the end with something skipped or failed (the summary says what).
pub fn run(cli: cli::Cli) -> Result<bool> {
    let config = Config::from_cli(cli)?;
    let stop = signals::install()?;
    let outcome = match &config.action {
        Action::Produce(p) => produce::run(&config.global, p, &stop)?,
        Action::Consume(c) => {
            let stdout = stdout::Handoff::new(std::io::stdout(), Arc::clone(&stop));
            let stdout: Box<dyn Write + Send> = Box::new(stdout);
            consume::run(&config.global, c, &stop, stdout)?
        }
        Action::Stage(s) => stage::run(&config.global, s, &stop)?,
        Action::Request(r) => {
            let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
            request::run(&config.global, r, &stop, stdout)?
        }
        Action::Demo => {
            let verdict = demo::run(&config.global, &stop)?;
            // A closed stdout (`| head`) is an error `exit_code` knows, not a panic.
            writeln!(std::io::stdout(), "{}", verdict.text)
                .wrap_err("cannot write the demo's table to stdout")?;
            return Ok(verdict.ok);
        }
        Action::Failed(f) => {
            let stdout = stdout::Handoff::new(std::io::stdout(), Arc::clone(&stop));
            let done = failed_cmd::run(&config.global, f, &stop, Box::new(stdout))?;
            let broken_pipe = done.error.as_ref().is_some_and(is_broken_pipe);
            if !config.global.quiet && !broken_pipe && !done.summary.is_empty() {
                eprintln!("{}", done.summary);
            }
            return done.error.map_or(Ok(done.clean), Err);
        }
    };
    finish(&config, outcome.summary, outcome.error)
}

/// Print the summary line; the run's error, or whether it was clean.
fn finish(config: &Config, summary: output::Summary, error: Option<Report>) -> Result<bool> {
    let broken_pipe = error.as_ref().is_some_and(is_broken_pipe);
    if !config.global.quiet && !broken_pipe {
        eprintln!("{}", summary.line());
    }
    match error {
        Some(e) => Err(e),
        None => Ok(summary.clean()),
    }
}

/// The exit code of a run, the one place it is decided: 0 all done (or stdout closed by
/// its reader, `| head`), 1 something skipped or failed, 1 an error, 2 bad usage. An error
/// is printed here, once (first line: what and how to fix it).
pub fn exit_code(result: Result<bool>) -> ExitCode {
    let err = match result {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => return ExitCode::FAILURE,
        Err(err) => err,
    };
    if is_broken_pipe(&err) {
        return ExitCode::SUCCESS;
    }
    eprintln!("mqdemo: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        eprintln!("{err:?}");
    }
    if err.downcast_ref::<UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
}

fn is_broken_pipe(err: &Report) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
            || e.downcast_ref::<csv::Error>().is_some_and(|c| {
                matches!(c.kind(), csv::ErrorKind::Io(io) if io.kind() == ErrorKind::BrokenPipe)
            })
    })
}
#[cfg(test)]
mod proptests;

//! mqdemo moves ML data (CSV rows, images, text files) into RabbitMQ queues and out again,
//! with publisher confirms, persistent messages and safe, atomic file writing.
//!
//! Modules: [`cli`] (arguments) -> [`config`] (validated) -> [`produce`] / [`consume`] /
//! [`demo`] (flows) over [`amqp`] (the only broker code), [`codec`] (pure wire format),
//! [`csv_input`] / [`csv_output`] (CSV files as they really are),
//! [`sink`] (files) and [`output`] (what people see on stderr).

pub mod amqp;
pub mod child;
pub mod cli;
pub mod codec;
pub mod config;
pub mod consume;
pub mod csv_input;
pub mod csv_output;
pub mod demo;
mod files;
pub mod output;
pub mod produce;
pub mod request;
pub mod results_db;
pub mod signals;
pub mod sink;
pub mod stage;
pub mod stdout;

use color_eyre::eyre::{Report, Result};
use config::{Action, Config, UsageError};
use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// Run a parsed command line; Ok(exit code) when it ran to the end.
pub fn run(cli: cli::Cli) -> Result<ExitCode> {
    let config = Config::from_cli(cli)?;
    let stop = signals::install()?;
    match &config.action {
        Action::Produce(p) => {
            let out = produce::run(&config.global, p, &stop)?;
            finish(&config, out.summary, out.error)
        }
        Action::Consume(c) => {
            let stdout = stdout::Handoff::new(std::io::stdout(), Arc::clone(&stop));
            let stdout: Box<dyn Write + Send> = Box::new(stdout);
            let out = consume::run(&config.global, c, &stop, stdout)?;
            finish(&config, out.summary, out.error)
        }
        Action::Stage(s) => {
            let out = stage::run(&config.global, s, &stop)?;
            finish(&config, out.summary, out.error)
        }
        Action::Request(r) => {
            let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
            let out = request::run(&config.global, r, &stop, stdout)?;
            finish(&config, out.summary, out.error)
        }
        Action::Demo => demo::run(&config.global, &stop),
    }
}

fn finish(config: &Config, summary: output::Summary, error: Option<Report>) -> Result<ExitCode> {
    let broken_pipe = error.as_ref().is_some_and(is_broken_pipe);
    if !config.global.quiet && !broken_pipe {
        eprintln!("{}", summary.line());
    }
    match error {
        Some(e) => Err(e),
        None if summary.clean() => Ok(ExitCode::SUCCESS),
        None => Ok(ExitCode::FAILURE),
    }
}

/// Print an error once (first line: what and how to fix it) and choose the exit code:
/// 2 bad usage, 0 a closed stdout pipe (`| head`), 1 anything else.
pub fn report(err: &Report) -> ExitCode {
    if is_broken_pipe(err) {
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

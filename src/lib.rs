//! mqdemo moves ML data (CSV rows, images, text files) into RabbitMQ queues and out again,
//! with publisher confirms, persistent messages and safe, atomic file writing.
//!
//! Modules: [`cli`] (arguments) -> [`config`] (validated) -> [`produce`] / [`consume`] /
//! [`demo`] (flows) over [`amqp`] (the only broker code), [`codec`] (pure wire format),
//! [`csv_input`] / [`csv_output`] (CSV files as they really are),
//! [`sink`] (files) and [`output`] (what people see on stderr).

#![warn(unreachable_pub)]

pub mod amqp;
pub(crate) mod checkpoint;
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
pub(crate) mod metrics;
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
    if let Some(addr) = config.global.metrics_addr {
        let (input, outputs) = metered_queues(&config.action);
        metrics::start(addr, input, &outputs)?;
    }
    let stop = signals::install()?;
    let started = std::time::Instant::now();
    let outcome = match &config.action {
        Action::Produce(p) => produce::run(&config.global, p, &stop),
        Action::Consume(c) => {
            let stdout = stdout::Handoff::new(std::io::stdout(), Arc::clone(&stop));
            let stdout: Box<dyn Write + Send> = Box::new(stdout);
            consume::run(&config.global, c, &stop, stdout)
        }
        Action::Stage(s) => stage::run(&config.global, s, &stop),
        Action::Request(r) => {
            let stdout: Box<dyn Write + Send> = Box::new(std::io::stdout());
            request::run(&config.global, r, &stop, stdout)
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
    match outcome {
        Ok(outcome) => finish(&config, outcome.summary, outcome.error),
        // Stopped before it began (no broker, a missing file): the JSON summary still says
        // so, never leaving an earlier run's in place.
        Err(error) => {
            if let Some(path) = &config.global.summary_json {
                let summary = output::Summary {
                    verb: verb(&config.action),
                    elapsed: started.elapsed(),
                    ..output::Summary::default()
                };
                let _ = write_summary_json(path, &summary, Some(&error));
            }
            Err(error)
        }
    }
}

/// The queue a long-running command consumes and those it publishes to: the `queue` labels
/// of its metrics.
fn metered_queues(action: &Action) -> (&str, Vec<&str>) {
    match action {
        Action::Consume(c) => (&c.queue.name, c.failed.iter().map(|f| f.name.as_str()).collect()),
        Action::Stage(s) => {
            let mut out = match &s.output {
                config::StageOutput::Queue(q) => vec![q.name.as_str()],
                config::StageOutput::Replies { results } => {
                    let results = results.iter().map(|r| r.name.as_str());
                    results.chain([metrics::REPLY_TO_LABEL]).collect()
                }
            };
            out.push(&s.failed.name);
            (&s.input.name, out)
        }
        _ => ("", Vec::new()),
    }
}

/// What the summary says a command did.
fn verb(action: &Action) -> &'static str {
    match action {
        Action::Produce(_) => "produced",
        Action::Consume(_) => "consumed",
        Action::Stage(s) if matches!(s.output, config::StageOutput::Queue(_)) => "piped",
        Action::Stage(_) => "served",
        Action::Request(_) => "requested",
        Action::Demo => "demo",
        Action::Failed(_) => "failed",
    }
}

/// Print the summary line (and write the JSON summary); the run's error, or whether it was
/// clean.
fn finish(config: &Config, summary: output::Summary, error: Option<Report>) -> Result<bool> {
    let broken_pipe = error.as_ref().is_some_and(is_broken_pipe);
    if !config.global.quiet && !broken_pipe {
        eprintln!("{}", summary.line());
    }
    let written = match &config.global.summary_json {
        Some(path) => write_summary_json(path, &summary, error.as_ref()),
        None => Ok(()),
    };
    match error {
        Some(e) => Err(e),
        None => written.map(|()| summary.clean()),
    }
}

/// `--summary-json FILE|-`: the counters as one JSON line.
fn write_summary_json(
    path: &std::path::Path,
    summary: &output::Summary,
    error: Option<&Report>,
) -> Result<()> {
    // A reader closing stdout (`| head`) ends the run with exit 0: not an error here either.
    let first_line = error.filter(|e| !is_broken_pipe(e)).map(|e| e.to_string());
    let mut line = summary.json(first_line.as_deref()).to_string();
    line.push('\n');
    if path.as_os_str() == "-" {
        std::io::stdout()
            .write_all(line.as_bytes())
            .wrap_err("cannot write --summary-json to stdout")
    } else {
        std::fs::write(path, line).wrap_err_with(|| {
            format!("cannot write --summary-json {}: check the path", path.display())
        })
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
    if error_backtraces_asked() {
        eprintln!("{err:?}");
    }
    if err.downcast_ref::<UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
}

/// Install how errors and panics are reported; `main` calls it first. An ordinary error is
/// printed by [`exit_code`] as its chain of messages and nothing else, whatever
/// RUST_BACKTRACE says: that variable, which many Rust users keep set, is for panics (bugs),
/// which color-eyre reports with a backtrace. Where an error was made, with its backtrace,
/// is captured and printed only with RUST_LIB_BACKTRACE=1 (or full), std's variable for the
/// backtraces of errors. Colour only when stderr is a terminal and NO_COLOR is not set.
pub fn install_reports() {
    use color_eyre::config::{HookBuilder, Theme};
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let theme = if colour { Theme::dark() } else { Theme::new() };
    let hooks = HookBuilder::default()
        .theme(theme)
        .panic_section("This is a bug in mqdemo, not a problem with your input: please report it.")
        .try_into_hooks();
    let Ok((panic_hook, eyre_hook)) = hooks else { return };
    panic_hook.install();
    let _ = if error_backtraces_asked() {
        eyre_hook.install()
    } else {
        color_eyre::eyre::set_hook(Box::new(|_| Box::new(PlainReport)))
    };
}

/// RUST_LIB_BACKTRACE asks for the backtraces of errors (std's convention; any value but 0).
fn error_backtraces_asked() -> bool {
    std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v != "0")
}

/// An error report with nothing captured (no backtrace, no span trace, no location): its
/// `Debug` is the chain of messages, as [`exit_code`] prints it.
struct PlainReport;

impl color_eyre::eyre::EyreHandler for PlainReport {
    fn debug(
        &self,
        error: &(dyn std::error::Error + 'static),
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "{error}")?;
        let mut cause = error.source();
        while let Some(e) = cause {
            write!(f, "\n  caused by: {e}")?;
            cause = e.source();
        }
        Ok(())
    }
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

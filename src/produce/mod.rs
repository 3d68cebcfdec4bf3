//! Producers: rows (CSV or JSON lines, a file or stdin) or files -> codec -> confirmed
//! publishing, with progress.
//!
//! A bad item inside the input (malformed row, non-image, non-UTF-8 text, too large) is
//! skipped, named on stderr and counted; a bad whole input stops the run before anything is
//! sent. Only messages the broker confirmed count as produced.
//!
//! [`pump`] hands messages to the publisher; [`tabular`] publishes rows (and batches them);
//! [`files`] lists a directory (--include, hidden entries) and reads whole files ahead; [`lines`] sends a text file
//! line by line.

use crate::amqp::Producer;
use crate::codec::Kind;
use crate::config::{CsvFormat, Global, ProduceConfig, Source};
use crate::csv_input::{Opening, Rows};
use crate::output::{Progress, Reporter, Summary, human_bytes, link_events};
use color_eyre::eyre::{Result, WrapErr, bail};
use files::Listing;
use pump::Pump;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tabular::RowLimits;

mod files;
mod lines;
mod pump;
mod tabular;
#[cfg(test)]
mod tests;

pub(crate) use crate::output::Outcome;

/// Run one producer.
pub(crate) fn run(global: &Global, cfg: &ProduceConfig, stop: &Arc<AtomicBool>) -> Result<Outcome> {
    let input = Input::open(cfg, stop)?;
    let reporter = Reporter::new(!global.quiet, input.progress(), &destination(cfg));
    let declared = if cfg.publish.declare_queue { vec![cfg.queue.clone()] } else { Vec::new() };
    let producer = Producer::open_to(
        &global.endpoints,
        &declared,
        cfg.publish.target.clone(),
        cfg.publisher,
        global.retry,
        Arc::clone(stop),
        Box::new(link_events(reporter.clone())),
    )?;
    let mut pump = Pump {
        producer,
        reporter,
        stop,
        interval: cfg.interval,
        max_size: cfg.max_message_size,
        skipped: 0,
        sent: 0,
        started: Instant::now(),
        padded_note: String::new(),
        run_id: cfg.run_id.clone(),
    };
    let started = pump.started;
    let left_out = input.left_out();
    let streamed = input.stream(&mut pump);
    let Pump { producer, reporter, skipped, padded_note, .. } = pump;
    let (report, finished) = producer.finish();
    reporter.finish();
    for (label, why) in report.refused.iter().take(SHOWN_REFUSED) {
        reporter.warn(&format!("not delivered: {label}: {why}"));
    }
    if report.refused.len() > SHOWN_REFUSED {
        reporter.warn(&format!(
            "... and {} more not delivered (counted as failed in the summary)",
            report.refused.len() - SHOWN_REFUSED
        ));
    }
    if !report.unconfirmed.is_empty() {
        let shown: Vec<&str> = report.unconfirmed.iter().take(5).map(String::as_str).collect();
        reporter.warn(&format!(
            "{} message(s) read but not confirmed by the broker (a published one may or may not \
             be in the queue): {}{}",
            report.unconfirmed.len(),
            shown.join(", "),
            if report.unconfirmed.len() > 5 { ", ..." } else { "" }
        ));
    }
    let error = streamed.err().or(finished.err());
    let summary = Summary {
        verb: "produced",
        messages: report.confirmed,
        bytes: report.confirmed_bytes,
        elapsed: started.elapsed(),
        skipped,
        failed: (report.refused.len() + report.unconfirmed.len()) as u64,
        failed_to: None,
        counts: vec![("re-published", report.republished)],
        note: [padded_note, left_out]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
    };
    Ok(Outcome { summary, error })
}

/// Refused messages named one by one on stderr; the rest are counted (a run to an exchange
/// that routes nowhere has a whole confirm window of them).
const SHOWN_REFUSED: usize = 10;

/// Where the messages go, for the progress bar: `→ queue`, or `→ exchange/key`.
fn destination(cfg: &ProduceConfig) -> String {
    let target = &cfg.publish.target;
    match (&target.exchange, &target.routing_key) {
        (Some(exchange), Some(key)) => format!("→ {exchange:?}/{key}"),
        _ => format!("→ {}", cfg.queue.name),
    }
}

pub(super) fn too_large(size: u64, max: u64) -> String {
    format!(
        "{} is over the {} message size limit (raise --max-message-size, and max_message_size in \
         rabbitmq.conf, to send it)",
        human_bytes(size),
        human_bytes(max)
    )
}

/// The checked input of a run, with everything reading it needs: matched once, here.
enum Input {
    Rows {
        /// The input, open, its header or first object read (the first pass reads it).
        input: Box<Rows>,
        /// Its size, for progress (None: stdin).
        size: Option<u64>,
        /// Where it is, to open it again for --repeat.
        file: PathBuf,
        format: CsvFormat,
        limits: RowLimits,
        stop: Arc<AtomicBool>,
    },
    Files {
        root: PathBuf,
        listing: Listing,
        kind: Kind,
        split_lines: bool,
    },
}

impl Input {
    /// Check the whole input before connecting, so a bad path (or a CSV whose header cannot
    /// be used) fails at once.
    fn open(cfg: &ProduceConfig, stop: &Arc<AtomicBool>) -> Result<Input> {
        match &cfg.source {
            Source::Csv { file, num_records, batch_size, repeat, format } => {
                let (input, size) = Rows::open(file, format, &Opening { regular: true, stop })?;
                let limits = RowLimits {
                    num_records: *num_records,
                    batch_size: *batch_size,
                    repeat: *repeat,
                };
                Ok(Input::Rows {
                    input: Box::new(input),
                    size,
                    file: file.clone(),
                    format: *format,
                    limits,
                    stop: Arc::clone(stop),
                })
            }
            Source::Files { directory, split_lines, filter } => {
                let meta = std::fs::metadata(directory).wrap_err_with(|| {
                    format!(
                        "cannot read directory {}; check the --directory path",
                        directory.display()
                    )
                })?;
                if !meta.is_dir() {
                    bail!("{} is not a directory; check the --directory path", directory.display());
                }
                Ok(Input::Files {
                    root: directory.clone(),
                    listing: files::list_files(directory, filter)?,
                    kind: cfg.kind,
                    split_lines: *split_lines,
                })
            }
        }
    }

    /// What a directory input leaves out on purpose, for the summary ("excluded 3 by
    /// --include, ignored 2 hidden"); empty when nothing is.
    fn left_out(&self) -> String {
        match self {
            Input::Files { listing, .. } => listing.summary_note(),
            Input::Rows { .. } => String::new(),
        }
    }

    fn progress(&self) -> Progress {
        match self {
            // --num-records: the rows left are known; else the bytes of a file.
            Input::Rows { limits: RowLimits { num_records: Some(n), .. }, .. } => {
                Progress::Items(*n)
            }
            Input::Rows { size: Some(size), .. } => Progress::Bytes(*size),
            Input::Rows { size: None, .. } => Progress::Open,
            Input::Files { listing, .. } => Progress::Items(listing.files.len() as u64),
        }
    }

    fn stream(self, pump: &mut Pump<'_>) -> Result<()> {
        match self {
            Input::Rows { input, file, format, limits, stop, .. } => {
                tabular::stream_rows(*input, (&file, &format), limits, &stop, pump)
            }
            Input::Files { root, listing, kind, split_lines } => {
                listing.warn_left_out(&pump.reporter);
                for (shown, why) in &listing.skipped {
                    pump.skip(shown, why);
                }
                files::stream_files(&root, &listing.files, kind, split_lines, pump)
            }
        }
    }
}

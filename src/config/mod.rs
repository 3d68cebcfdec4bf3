//! Parsed arguments -> validated plain structs the flows take. No clap type goes past here.

use crate::amqp::{Endpoint, PublisherOptions, QueueSpec, QueueType, Retry};
use crate::cli::{self, Cli, Command, ConsumeCommand, ProduceCommand};
use crate::codec::Kind;
use std::path::PathBuf;
use std::time::Duration;

mod commands;
mod failed;
mod filter;
mod publish;
mod stream;
#[cfg(test)]
mod tests;
mod urls;
mod values;

pub use commands::default_publisher;
use commands::{consume, pipe, produce, request, serve};
pub use failed::{FAILED_SUFFIX, FailedAction, FailedConfig};
pub use filter::{FileFilter, is_hidden};
pub use publish::Publish;
pub use stream::{Checkpoint, StreamConfig};
use urls::endpoints;
pub use urls::split_urls;
use values::{metrics_addr, seconds};

/// Bad usage: exit status 2.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Everything a run needs.
#[derive(Debug)]
pub struct Config {
    /// Broker and output settings shared by every command.
    pub global: Global,
    /// What to do.
    pub action: Action,
}

/// Shared settings.
#[derive(Debug, Clone)]
pub struct Global {
    /// Where the broker is: one endpoint per `--url` (cluster nodes), tried in turn.
    pub endpoints: Vec<Endpoint>,
    /// How long to keep reconnecting after a lost connection.
    pub retry: Retry,
    /// No progress bar, no summary.
    pub quiet: bool,
    /// Where the JSON summary goes (`--summary-json`; `-` = stdout), if anywhere.
    pub summary_json: Option<PathBuf>,
    /// Bytes of message bodies a consumer (consume, pipe, serve) may hold, prefetched and in
    /// hand, over all its workers (`--prefetch-bytes`).
    pub prefetch_bytes: u64,
    /// Where `/metrics`, `/ready` and `/live` are served (`--metrics-addr`; consume, pipe
    /// and serve), if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The command to run.
#[derive(Debug)]
pub enum Action {
    /// `produce <kind>`.
    Produce(ProduceConfig),
    /// `consume <kind>`.
    Consume(ConsumeConfig),
    /// `pipe` or `serve`.
    Stage(StageConfig),
    /// `request`.
    Request(RequestConfig),
    /// `demo`.
    Demo,
    /// `failed show|requeue`.
    Failed(FailedConfig),
}

/// A `pipe` or `serve` run.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Queue consumed.
    pub input: QueueSpec,
    /// Where answers go.
    pub output: StageOutput,
    /// Where messages the child fails on go.
    pub failed: QueueSpec,
    /// The model command (`sh -c`).
    pub exec: String,
    /// How the child is run: framing, deadline, size limits.
    pub child: crate::child::ChildOptions,
    /// `--framing envelope`: the child is handed each message's envelope (a line) instead
    /// of its body.
    pub envelope: bool,
    /// Inputs per model call: 1 = one at a time, as the framing says; more (or `json_batch`)
    /// = micro-batches (`codec::batch`).
    pub batch: usize,
    /// `--framing json-batch`: the model gets a JSON array of inputs per call.
    pub json_batch: bool,
    /// Longest the oldest message of a batch waits for the batch to fill.
    pub batch_wait: Duration,
    /// `--failed-queue` was given: `serve` also sends requests past their deadline there.
    pub failed_given: bool,
    /// Reply-queue name patterns `serve` answers to besides the reply queues it always
    /// allows.
    pub allow_reply_to: Vec<String>,
    /// Children (and consumers) in parallel.
    pub workers: usize,
    /// QoS prefetch per worker.
    pub prefetch: u16,
    /// Stop after this many input messages.
    pub count: Option<u64>,
    /// Stop after this long without input.
    pub idle_timeout: Option<Duration>,
    /// Confirm window for the answers.
    pub publisher: PublisherOptions,
    /// The input is a stream: where to start, stop, and keep the place (`pipe`).
    pub stream: Option<StreamConfig>,
}

/// Where a stage's answers go.
#[derive(Debug, Clone)]
pub enum StageOutput {
    /// `pipe`: the next queue.
    Queue(QueueSpec),
    /// `serve`: each request's reply_to, and the results queue if any.
    Replies {
        /// Every answer is also published here.
        results: Option<QueueSpec>,
    },
}

/// A `request` run.
#[derive(Debug, Clone)]
pub struct RequestConfig {
    /// Queue the server consumes.
    pub queue: QueueSpec,
    /// The rows to send (CSV or JSON lines; `-` is stdin).
    pub file: PathBuf,
    /// Only the first N rows.
    pub num_records: Option<u64>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Deadline per reply.
    pub timeout: Duration,
    /// Replies appended to this file; None = stdout.
    pub output: Option<PathBuf>,
    /// How to read the rows.
    pub format: CsvFormat,
}

/// Whether a `--file` argument means stdin (`-`).
pub fn is_stdin(file: &std::path::Path) -> bool {
    file.as_os_str() == "-"
}

/// What the rows of `produce tabular` and `request` are (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsFormat {
    /// From the file name, else from the first non-blank byte (`{`: JSON lines).
    Detect,
    /// CSV.
    Csv,
    /// JSON lines: one object per line.
    Jsonl,
}

/// How to read the rows: `--format`, and for CSV `--no-header`, `--skip-rows`,
/// `--delimiter`, `--encoding` (`--skip-rows` applies to JSON lines too).
#[derive(Debug, Clone, Copy)]
pub struct CsvFormat {
    /// CSV, JSON lines, or detected.
    pub rows: RowsFormat,
    /// The first CSV-only flag given (`--no-header`, `--delimiter`, `--encoding`), if any:
    /// refused when the input turns out to be JSON lines.
    pub csv_flag: Option<&'static str>,
    /// The first row (after the skipped lines) names the columns; else they are named by
    /// position, "0", "1", ...
    pub header: bool,
    /// Lines dropped before the header.
    pub skip_rows: u64,
    /// Field separator.
    pub delimiter: u8,
    /// The file's encoding when not UTF-8.
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// Longest row, in bytes (longer: an error naming its line).
    pub max_row_bytes: u64,
}

/// A producer run.
#[derive(Debug, Clone)]
pub struct ProduceConfig {
    /// Data kind.
    pub kind: Kind,
    /// Target queue.
    pub queue: QueueSpec,
    /// Pause between messages.
    pub interval: Duration,
    /// Confirm window and deadline.
    pub publisher: PublisherOptions,
    /// Largest body sent; bigger items are skipped.
    pub max_message_size: u64,
    /// With --new-ids: mixed into every message id, so this run's messages are new data.
    pub run_id: Option<String>,
    /// Where the data comes from.
    pub source: Source,
    /// Exchange, routing key, headers and properties (`--exchange`, `--header`, ...).
    pub publish: Publish,
}

/// Producer input.
#[derive(Debug, Clone)]
pub enum Source {
    /// A CSV or JSON lines file, or stdin (`-`).
    Csv {
        /// The file (`-`: stdin).
        file: PathBuf,
        /// Stop after this many data rows.
        num_records: Option<u64>,
        /// Rows per message.
        batch_size: u64,
        /// Loop over the file forever.
        repeat: bool,
        /// How to read it.
        format: CsvFormat,
    },
    /// Files under a directory.
    Files {
        /// The directory.
        directory: PathBuf,
        /// One message per line (text only).
        split_lines: bool,
        /// Which files are sent (`--include`, `--hidden`).
        filter: FileFilter,
    },
}

/// A consumer run.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// Data kind.
    pub kind: Kind,
    /// Source queue.
    pub queue: QueueSpec,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long without a message.
    pub idle_timeout: Option<Duration>,
    /// QoS prefetch (per worker).
    pub prefetch: u16,
    /// Competing consumers on threads.
    pub workers: usize,
    /// Where the data goes.
    pub sink: SinkConfig,
    /// Where messages that cannot be used go (published as they came, with the reason);
    /// None (--no-failed-queue): rejected without requeue, for the broker to dead-letter.
    pub failed: Option<QueueSpec>,
    /// The queue is a stream: where to start, stop, and keep the place.
    pub stream: Option<StreamConfig>,
}

/// Consumer output.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Rows to stdout (None) or appended to a file.
    Rows {
        /// None = stdout.
        output: Option<PathBuf>,
        /// Row format.
        format: RowFormat,
        /// Add the `--with-meta` fields to every row.
        with_meta: bool,
    },
    /// Files into a directory.
    Directory(PathBuf),
    /// Rows into an SQLite table.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: String,
        /// Add the `--with-meta` columns to every row.
        with_meta: bool,
    },
}

impl Default for CsvFormat {
    /// Detected; as CSV, a header, `,`, UTF-8; rows up to the default message size.
    fn default() -> Self {
        CsvFormat {
            rows: RowsFormat::Detect,
            csv_flag: None,
            header: true,
            skip_rows: 0,
            delimiter: b',',
            encoding: None,
            max_row_bytes: cli::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl RowFormat {
    /// CSV with a header row, `,`-separated.
    pub const CSV: RowFormat = RowFormat::Csv { delimiter: b',', header: true };
}

/// Row output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// JSON lines.
    Jsonl,
    /// One JSON envelope (properties, headers, body) per message, whatever it holds.
    Envelope,
    /// CSV.
    Csv {
        /// Field separator.
        delimiter: u8,
        /// Write a header row (into a new or empty file); without one, an existing file's
        /// columns are named by position.
        header: bool,
    },
}

/// In-flight bytes bound of the confirm window: enough to keep large images streaming, small
/// enough to keep memory bounded (amiquip's write buffer is sized to twice this, so a broker
/// alarm never stalls `publish` inside amiquip).
pub const WINDOW_BYTES: usize = 32 * 1024 * 1024;

impl Config {
    /// Validate parsed arguments.
    pub fn from_cli(cli: Cli) -> Result<Config, UsageError> {
        let g = &cli.global;
        let timeout = seconds("--connect-timeout", g.connect_timeout, false)?;
        let endpoints = endpoints(g, timeout)?;
        let retry_for = seconds("--retry-for", g.retry_for, true)?;
        let (prefetch_bytes, metrics) = match &cli.command {
            Command::Consume(
                ConsumeCommand::Tabular(cli::ConsumeTabular { common, .. })
                | ConsumeCommand::Image(cli::ConsumeFiles { common, .. })
                | ConsumeCommand::Text(cli::ConsumeFiles { common, .. }),
            ) => (common.prefetch_bytes, common.metrics_addr.as_deref()),
            Command::Pipe(cli::PipeArgs { model, .. })
            | Command::Serve(cli::ServeArgs { model, .. }) => {
                (model.prefetch_bytes, model.metrics_addr.as_deref())
            }
            _ => (cli::DEFAULT_PREFETCH_BYTES, None),
        };
        let metrics_addr = metrics.map(metrics_addr).transpose()?;
        let summary_json = g.summary_json.clone();
        let global = Global {
            endpoints,
            retry: Retry { retry_for },
            quiet: g.quiet,
            summary_json,
            prefetch_bytes,
            metrics_addr,
        };
        let action = match cli.command {
            Command::Produce(p) => Action::Produce(produce(p)?),
            Command::Consume(c) => Action::Consume(consume(c)?),
            Command::Pipe(p) => Action::Stage(pipe(p)?),
            Command::Serve(sv) => Action::Stage(serve(sv)?),
            Command::Request(r) => Action::Request(request(r)?),
            Command::Demo => Action::Demo,
            Command::Failed(f) => Action::Failed(failed::failed(f)?),
        };
        summary_json_fits(&global, &action)?;
        Ok(Config { global, action })
    }
}

/// `--summary-json -` only where stdout carries no data (it would be mixed into the rows or
/// replies), and not for `demo` (its table is its summary).
fn summary_json_fits(global: &Global, action: &Action) -> Result<(), UsageError> {
    let Some(path) = &global.summary_json else { return Ok(()) };
    let stdout = path.as_os_str() == "-";
    if !stdout {
        summary_json_path_is_free(path, action)?;
    }
    let clash = match action {
        Action::Demo => Some("demo prints its own table; run produce and consume for counters"),
        Action::Failed(_) => Some("failed show|requeue print their own summary line, not counters"),
        Action::Consume(c) if stdout && matches!(c.sink, SinkConfig::Rows { output: None, .. }) => {
            Some("stdout carries the rows: give a file, or consume with --output FILE")
        }
        Action::Request(r) if stdout && r.output.is_none() => {
            Some("stdout carries the replies: give a file, or request with --output FILE")
        }
        _ => None,
    };
    match clash {
        Some(fix) => Err(UsageError(format!("--summary-json {}: {fix}", path.display()))),
        None => Ok(()),
    }
}

/// The `--checkpoint FILE` of a run reading a stream.
fn checkpoint_file(stream: Option<&StreamConfig>) -> Option<&PathBuf> {
    match stream?.checkpoint.as_ref()? {
        Checkpoint::File(p) => Some(p),
        Checkpoint::Sqlite => None,
    }
}

/// A `--summary-json FILE` is written over at the end: never one of the run's own input or
/// output files (it would replace the rows just stored), and in a directory that exists
/// (found now, not after the whole run).
fn summary_json_path_is_free(path: &std::path::Path, action: &Action) -> Result<(), UsageError> {
    let data: Vec<&PathBuf> = match action {
        Action::Produce(p) => match &p.source {
            Source::Csv { file, .. } => vec![file],
            Source::Files { .. } => Vec::new(),
        },
        Action::Consume(c) => {
            let mut files = match &c.sink {
                SinkConfig::Rows { output, .. } => output.iter().collect(),
                SinkConfig::Sqlite { path, .. } => vec![path],
                SinkConfig::Directory(_) => Vec::new(),
            };
            files.extend(checkpoint_file(c.stream.as_ref()));
            files
        }
        Action::Request(r) => std::iter::once(&r.file).chain(r.output.iter()).collect(),
        Action::Stage(s) => checkpoint_file(s.stream.as_ref()).into_iter().collect(),
        Action::Demo | Action::Failed(_) => Vec::new(),
    };
    let same = |other: &PathBuf| stream::same_file(path, other);
    if let Some(clash) = data.into_iter().find(|d| same(d)) {
        return Err(UsageError(format!(
            "--summary-json {}: that is the run's own data file ({}); name another file",
            path.display(),
            clash.display()
        )));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|dir| !dir.is_dir()) || path.is_dir() {
        return Err(UsageError(format!(
            "--summary-json {}: no such directory to write it in (or it is a directory); \
             check the path",
            path.display()
        )));
    }
    Ok(())
}

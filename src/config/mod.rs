//! Parsed arguments -> validated plain structs the flows take. No clap type goes past here.

use crate::amqp::{Endpoint, PublisherOptions, QueueSpec, QueueType, Retry};
use crate::cli::{self, Cli, Command, ConsumeCommand, ProduceCommand};
use crate::codec::Kind;
use std::path::PathBuf;
use std::time::Duration;

mod commands;
mod failed;
#[cfg(test)]
mod tests;
mod urls;
mod values;

pub use commands::default_publisher;
use commands::{consume, pipe, produce, request, serve};
pub use failed::{FAILED_SUFFIX, FailedAction, FailedConfig};
use urls::endpoints;
pub use urls::split_urls;
use values::seconds;

/// Bad usage: exit status 2.
#[derive(Debug, thiserror::Error)]
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
    /// Bytes of message bodies a consumer (consume, pipe, serve) may hold, prefetched and in
    /// hand, over all its workers (`--prefetch-bytes`).
    pub prefetch_bytes: u64,
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
    /// CSV rows to send.
    pub file: PathBuf,
    /// Only the first N rows.
    pub num_records: Option<u64>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Deadline per reply.
    pub timeout: Duration,
    /// Replies appended to this file; None = stdout.
    pub output: Option<PathBuf>,
    /// How to read the CSV.
    pub format: CsvFormat,
}

/// How to read a CSV file (`--no-header`, `--skip-rows`, `--delimiter`, `--encoding`).
#[derive(Debug, Clone, Copy)]
pub struct CsvFormat {
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
}

/// Producer input.
#[derive(Debug, Clone)]
pub enum Source {
    /// A CSV file.
    Csv {
        /// The file.
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
    },
    /// Files into a directory.
    Directory(PathBuf),
    /// Rows into an SQLite table.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: String,
    },
}

impl Default for CsvFormat {
    /// A CSV file with a header, `,`, UTF-8, rows up to the default message size.
    fn default() -> Self {
        CsvFormat {
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
        let prefetch_bytes = match &cli.command {
            Command::Consume(
                ConsumeCommand::Tabular(cli::ConsumeTabular { common, .. })
                | ConsumeCommand::Image(cli::ConsumeFiles { common, .. })
                | ConsumeCommand::Text(cli::ConsumeFiles { common, .. }),
            ) => common.prefetch_bytes,
            Command::Pipe(cli::PipeArgs { model, .. })
            | Command::Serve(cli::ServeArgs { model, .. }) => model.prefetch_bytes,
            _ => cli::DEFAULT_PREFETCH_BYTES,
        };
        let global =
            Global { endpoints, retry: Retry { retry_for }, quiet: g.quiet, prefetch_bytes };
        let action = match cli.command {
            Command::Produce(p) => Action::Produce(produce(p)?),
            Command::Consume(c) => Action::Consume(consume(c)?),
            Command::Pipe(p) => Action::Stage(pipe(p)?),
            Command::Serve(sv) => Action::Stage(serve(sv)?),
            Command::Request(r) => Action::Request(request(r)?),
            Command::Demo => Action::Demo,
            Command::Failed(f) => Action::Failed(failed::failed(f)?),
        };
        Ok(Config { global, action })
    }
}

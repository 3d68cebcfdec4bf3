//! Command-line definition (clap derive types only; validation lives in `config`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Default confirm window (messages in flight).
pub const DEFAULT_CONFIRM_WINDOW: u32 = 1024;
/// Default confirm deadline, seconds.
pub const DEFAULT_CONFIRM_TIMEOUT_SECS: f64 = 30.0;
/// Default largest body (RabbitMQ 3.x's limit).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 128 << 20;
/// Default QoS prefetch.
pub const DEFAULT_PREFETCH: u16 = 256;
/// Default bound on the message bodies a consumer holds (prefetched and in hand).
pub const DEFAULT_PREFETCH_BYTES: u64 = 256 << 20;

/// Default broker URL: the local broker, vhost `/`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672/%2f";

/// mqdemo: move ML data (CSV rows, images, text files) into RabbitMQ queues and out again,
/// with publisher confirms, persistent messages and safe file writing.
#[derive(Debug, Parser)]
#[command(
    name = "mqdemo",
    version,
    about,
    max_term_width = 100,
    after_help = "Durations (SECS): seconds (0.5) or a number with a unit: 500ms, 5s, 2m, 1h.\n\nExamples:\n  mqdemo demo\n  mqdemo produce tabular --file examples/data/tabular_data.csv\n  mqdemo consume tabular --count 300 > rows.jsonl\n  mqdemo --url-file /run/secrets/amqp_url consume image --idle-timeout 5"
)]
pub struct Cli {
    /// Flags for every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Broker and output (any command)")]
pub struct GlobalArgs {
    /// Broker URL: amqp://USER:PASS@HOST:PORT/VHOST (amqps:// for TLS). Give it several
    /// times, or as a list split only where a new URL begins (`,amqp://` or `,amqps://`), for
    /// cluster nodes: each failure moves to the next. Percent-encode `/ ? # %` in a password
    /// (%2F %3F %23 %25). Passwords are never printed; keep them off the command line with
    /// AMQP_URL or --url-file. Default: amqp://****@localhost:5672/%2f (RabbitMQ's stock
    /// guest user). Example: --url amqp://localhost:5672/%2f
    #[arg(long, global = true, env = "AMQP_URL", hide_env_values = true)]
    pub url: Vec<String>,

    /// Read the broker URL(s) from this file instead (docker/Kubernetes secrets style; the
    /// trailing newline is ignored; one URL a line, or a list as --url takes), so the password
    /// shows neither in `ps` nor in the environment. Example: --url-file /run/secrets/amqp_url
    #[arg(long, global = true, env = "AMQP_URL_FILE", value_name = "PATH", hide_env_values = true)]
    pub url_file: Option<PathBuf>,

    /// Replace the host of --url, as the original Python demo did.
    /// Example: --rabbitmq-server rabbitmq
    #[arg(long, global = true, alias = "rabbitmq_server", value_name = "HOST")]
    pub rabbitmq_server: Option<String>,

    /// Seconds to wait for the broker to accept a connection and answer the AMQP handshake.
    /// Example: --connect-timeout 10
    #[arg(long, global = true, default_value_t = 5.0, value_parser = secs, value_name = "SECS")]
    pub connect_timeout: f64,

    /// After a lost connection, keep reconnecting (backoff with jitter, next --url each time)
    /// for up to SECS; 0 fails at once. The first connection of a run is never retried.
    /// Producers also keep re-publishing what the broker nacks or returns unroutable for up
    /// to SECS of nothing but refusals (with 0: refused messages fail at once; through
    /// --exchange, a message no binding routes stops the run at once).
    /// Example: --retry-for 60
    #[arg(long, global = true, default_value_t = 300.0, value_parser = secs, value_name = "SECS")]
    pub retry_for: f64,

    /// PEM file with the CA certificate(s) that signed the broker's TLS certificate, for
    /// amqps:// with a private CA. Example: --ca-cert /etc/rabbitmq/ca.pem
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// No progress bar and no summary line on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Also write the run's counters as one JSON object to FILE (- for stdout, where stdout
    /// carries no data): messages, bytes, seconds, skipped, failed, the command's own counts
    /// (zeros included), ok and error. Written even with --quiet. Example: --summary-json run.json
    #[arg(long, global = true, value_name = "FILE|-")]
    pub summary_json: Option<PathBuf>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish CSV rows, image files or text files to a queue.
    #[command(subcommand)]
    Produce(ProduceCommand),
    /// Receive messages from a queue into stdout, a file or a directory.
    #[command(subcommand)]
    Consume(ConsumeCommand),
    /// Pipeline stage: consume a queue, run each message through your model (a long-running
    /// child process), publish its answers to the next queue; the input is acked only after
    /// the answer is confirmed.
    /// Example: mqdemo pipe --from raw_records --to features --exec 'python3 preprocess.py'
    Pipe(PipeArgs),
    /// Model service: answer each request with your model, to the request's reply_to with the
    /// same correlation_id (and to --results-queue).
    /// Example: mqdemo serve --queue predict_requests --exec 'python3 model.py' --results-queue predictions
    Serve(ServeArgs),
    /// Client of `serve`: send CSV rows or JSON lines as requests, print the replies (one per
    /// line) and the latency percentiles. Example: mqdemo request --queue predict_requests --file rows.csv
    Request(RequestArgs),
    /// Run produce -> consume -> verify for all three kinds on built-in sample data, against
    /// the configured broker, on fresh queues that are deleted afterwards.
    /// Example: mqdemo demo
    Demo,
    /// Failed messages: show them (with why they failed) or requeue them once fixed.
    /// Example: mqdemo failed show alicpp_records.failed
    #[command(subcommand)]
    Failed(FailedCommand),
}

/// `produce <kind>`.
#[derive(Debug, Subcommand)]
pub enum ProduceCommand {
    /// One JSON message per CSV row or JSON line (or per --batch-size rows), from a file or stdin.
    /// Example: mqdemo produce tabular --file examples/data/tabular_data.csv --num-records 100
    Tabular(ProduceTabular),
    /// One message per image file under a directory (recursive), bytes untouched.
    /// Example: mqdemo produce image --directory examples/data/images
    Image(ProduceImage),
    /// One message per text file (or per line with --split line).
    /// Example: mqdemo produce text --directory examples/data/texts --split line
    Text(ProduceText),
}

/// `consume <kind>`.
#[derive(Debug, Subcommand)]
pub enum ConsumeCommand {
    /// Rows to stdout (default) or a file, as JSON lines or CSV; or any queue's messages whole
    /// (properties, headers, body) with --format envelope.
    /// Example: mqdemo consume tabular --count 300 --format csv --output rows.csv
    Tabular(ConsumeTabular),
    /// Image files into a directory, under their relative source paths.
    /// Example: mqdemo consume image --output-directory received_images --idle-timeout 2
    Image(ConsumeFiles),
    /// Text files into a directory. Files sent line by line are rebuilt whatever order their
    /// lines arrive in (kept in hidden .mqdemo-part.* files until complete, never appended
    /// to an existing file).
    /// Example: mqdemo consume text --output-directory received_texts --idle-timeout 2
    Text(ConsumeFiles),
}

/// Queue arguments; with none given the queue is declared durable with no arguments.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Declare the queue with this type (x-queue-type). A stream keeps messages after they
    /// are read, for replays (see --offset). Example: --queue-type quorum
    #[arg(long, value_enum, value_name = "TYPE")]
    pub queue_type: Option<QueueTypeArg>,

    /// Dead-letter undecodable or unwritable messages into this queue (declares it, the
    /// mqdemo.dead-letter exchange and the main queue's x-dead-letter-exchange).
    /// Example: --dead-letter-queue failed_records
    #[arg(long, value_name = "NAME")]
    pub dead_letter_queue: Option<String>,

    /// Bound the queue to N messages (x-max-length with x-overflow reject-publish):
    /// producers get nacks when it is full, back off and retry. Example: --max-length 10000
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,

    /// With --queue-type quorum: dead-letter (or drop) a message after N failed deliveries
    /// instead of redelivering it forever (x-delivery-limit). Example: --delivery-limit 5
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub delivery_limit: u64,

    /// With --queue-type stream: drop segments older than this (x-max-age), a number and
    /// one of the broker's units Y, M, D, h, m, s. Example: --max-age 7D
    #[arg(long, value_name = "AGE")]
    pub max_age: Option<String>,

    /// With --queue-type stream: drop the oldest segments beyond this many bytes
    /// (x-max-length-bytes). Example: --max-length-bytes 20000000000
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_length_bytes: Option<u64>,
}

/// Where a reader of a stream starts and stops, and where it keeps its place.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// With --queue-type stream: where to start reading. first, last (the last chunk), next
    /// (only new messages), an offset N, an RFC 3339 time (the first chunk the broker
    /// stored at or after it) or a duration back from now (10m, 2h, 1d). Default: next, or
    /// right after the --checkpoint. Example: --offset first; --offset 2026-12-01T10:00:00Z
    #[arg(long, value_name = "WHERE")]
    pub offset: Option<String>,

    /// With --queue-type stream: stop before the first message at this point: an RFC 3339
    /// time or a duration back from now (compared with each message's timestamp property,
    /// which mqdemo's producers set), or offset:N. Example: --until 2026-12-01T11:00:00Z
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// With --queue-type stream: keep the offset of the last message durably handled in
    /// FILE (JSON, replaced atomically after each ack), or with --sqlite in the database
    /// itself (`sqlite`: committed with the rows). A run with a checkpoint starts right
    /// after it; --offset applies only while there is none. Example: --checkpoint run.ckpt
    #[arg(long, value_name = "FILE|sqlite")]
    pub checkpoint: Option<std::path::PathBuf>,
}

/// `--queue-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueTypeArg {
    /// Classic queue.
    Classic,
    /// Replicated quorum queue (needs a durable queue; best on a cluster).
    Quorum,
    /// Append-only stream (RabbitMQ 3.9+): messages stay after they are read; readers
    /// start at an --offset.
    Stream,
}

mod consume;
mod duration;
mod failed;
mod model;
mod produce;
#[cfg(test)]
mod tests;

pub use consume::*;
pub use duration::secs;
pub use failed::*;
pub use model::*;
pub use produce::*;

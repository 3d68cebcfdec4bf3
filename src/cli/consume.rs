//! `consume` arguments.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

use super::{DEFAULT_PREFETCH, DEFAULT_PREFETCH_BYTES, QueueArgs, StreamArgs};

/// Options every consumer shares.
#[derive(Debug, Args)]
pub struct ConsumeCommon {
    /// Queue to read from (declared durable if missing). Defaults: alicpp_records (tabular),
    /// image_queue (image), text_queue (text). Example: --queue predictions
    #[arg(long, visible_alias = "queue-name", alias = "queue_name", value_name = "NAME")]
    pub queue: Option<String>,

    /// Queue arguments.
    #[command(flatten)]
    pub queue_args: QueueArgs,

    /// Reading a stream.
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Stop after N messages. Example: --count 300
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Stop after SECS with no message. Without --count or --idle-timeout the consumer runs
    /// until SIGINT/SIGTERM. Example: --idle-timeout 5
    #[arg(long, value_parser = super::secs, value_name = "SECS")]
    pub idle_timeout: Option<f64>,

    /// Unacknowledged messages the broker may send ahead (QoS prefetch). Example: --prefetch 500
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub prefetch: u16,

    /// Bytes of message bodies held at once (prefetched and in hand, all workers together):
    /// the prefetch is lowered so that it times the largest body seen fits. A body larger
    /// than this is still taken, alone. Also the most one message's rows may take decoded
    /// (tabular --format csv or --sqlite): a bigger batch is rejected with the reason.
    /// Example: --prefetch-bytes 67108864
    #[arg(long, default_value_t = DEFAULT_PREFETCH_BYTES, value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    pub prefetch_bytes: u64,

    /// Competing consumers on threads, each with its own connection, channel and prefetch,
    /// sharing the output: helps when the sink (fsync, disk) is the bottleneck.
    /// Example: --workers 4
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64), value_name = "N")]
    pub workers: u8,

    /// Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, with health
    /// checks /ready (200 while connected and consuming, else 503) and /live. Off by
    /// default; no authentication: keep it on 127.0.0.1 or a private network.
    /// Example: --metrics-addr 127.0.0.1:9090
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Where messages that cannot be used (not JSON, a column the CSV lacks, a bad sha256, a
    /// row SQLite refuses) go: mqdemo publishes each as it came, plus an x-mqdemo-error
    /// header with the reason, and acks it only once the broker confirmed the copy.
    /// Default: --dead-letter-queue if given, else the queue's name + ".failed".
    /// Example: --failed-queue bad_records
    #[arg(long, value_name = "NAME")]
    pub failed_queue: Option<String>,

    /// Reject unusable messages without requeue instead (the broker drops them, or
    /// dead-letters them where the queue has a dead-letter exchange, e.g. from a policy).
    /// Example: --no-failed-queue
    #[arg(long, conflicts_with = "failed_queue")]
    pub no_failed_queue: bool,
}

/// Row format of `consume tabular`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// CSV: a header row from the first message's columns (or, appending to a file that
    /// has one, its header: rows are mapped to its columns).
    Csv,
    /// One JSON object per message, whatever it holds (images, text, JSON, another
    /// producer's messages): properties, headers, exchange, routing_key, redelivered, and
    /// the body as `body` (JSON), `body_text` (UTF-8) or `body_base64`.
    Envelope,
}

/// `consume tabular`.
#[derive(Debug, Args)]
pub struct ConsumeTabular {
    /// Where rows go: a file (appended to) or - for stdout. Example: --output rows.jsonl
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub output: String,

    /// Output format. `envelope` reads ANY queue, not only rows (see docs/consuming.md).
    /// Example: --format csv; --queue image_queue --format envelope
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,

    /// With --format csv: write no header row (appending to an existing file, its columns
    /// are taken as "0", "1", ..., as `produce tabular --no-header` names them).
    /// Example: --format csv --no-header
    #[arg(long)]
    pub no_header: bool,

    /// With --format csv: the field separator, one ASCII character or `tab`.
    /// Example: --format csv --delimiter ';'
    #[arg(long, value_name = "C")]
    pub delimiter: Option<String>,

    /// Store rows in this SQLite database (created if missing) instead of --output: a table
    /// row per JSON row, a column per key, the message id as primary key (a redelivered
    /// message is stored once; rows of a message without an id get fresh keys). A message
    /// SQLite cannot hold (a key with NUL, over 1,000 new or 2,000 columns) is rejected
    /// alone. Example: --sqlite results.db
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "format", "no_header", "delimiter"])]
    pub sqlite: Option<PathBuf>,

    /// Table for --sqlite (created on first use). Example: --table predictions
    #[arg(long, default_value = "results", value_name = "NAME")]
    pub table: String,

    /// Add where each row came from (with --sqlite, or to JSON lines and CSV rows):
    /// _mq_source (the source header), _mq_row (its data row or text line), _mq_message_id,
    /// _mq_received_at (RFC 3339 UTC) and _mq_correlation_id, null where absent. A message
    /// with a field of one of these names goes to the failed queue.
    /// Example: --sqlite results.db --with-meta
    #[arg(long)]
    pub with_meta: bool,

    /// Options every consumer shares.
    #[command(flatten)]
    pub common: ConsumeCommon,
}

/// `consume image` / `consume text`.
#[derive(Debug, Args)]
pub struct ConsumeFiles {
    /// Directory the files are written into (created if missing). Defaults: received_images
    /// (image), received_texts (text). Example: --output-directory out/
    #[arg(long, alias = "output_directory", value_name = "DIR")]
    pub output_directory: Option<PathBuf>,

    /// Options every consumer shares.
    #[command(flatten)]
    pub common: ConsumeCommon,
}

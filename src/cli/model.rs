//! `pipe`, `serve` and `request` arguments: a model child and its clients.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

use super::{
    CsvReadArgs, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFETCH, DEFAULT_PREFETCH_BYTES, QueueArgs,
};

/// Default queue of `serve` and `request`.
pub const DEFAULT_REQUEST_QUEUE: &str = "predict_requests";
/// Default longest model stderr line shown, in bytes.
pub const DEFAULT_MAX_STDERR_LINE: u64 = 8 * 1024;
/// Default seconds a model child may take to answer one message.
pub const DEFAULT_EXEC_TIMEOUT_SECS: f64 = 60.0;

/// Default seconds the oldest message of a batch waits for more.
pub const DEFAULT_BATCH_WAIT_SECS: f64 = 0.01;

/// How message bodies and answers are delimited on the model child's stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramingArg {
    /// One line each way (JSON rows); an empty answer line publishes nothing.
    Lines,
    /// A 4-byte big-endian length then the bytes, each way (images, any binary body).
    Frames,
    /// Micro-batches (with --batch-size): one line holding a JSON array of up to N inputs (a
    /// JSON body as it is, a text body as a JSON string); the model answers one line holding
    /// a JSON array of exactly as many answers, in order, null for "no output".
    JsonBatch,
    /// One JSON line per message, its envelope (as `consume tabular --format envelope`
    /// writes it): properties, headers (headers.source: the input's file) and the body as
    /// body (JSON), body_text or body_base64; the model answers one line, as with lines.
    Envelope,
}

/// The model child and how `pipe` / `serve` consume.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Your model: a command run once by `sh -c` (restarted if it dies) that reads one message
    /// per line (or frame) on stdin and answers one line (or frame) on stdout, in order.
    /// Example: --exec 'python3 model.py'
    #[arg(long, value_name = "CMD")]
    pub exec: String,

    /// Body framing on the child's stdin/stdout; `envelope` also hands the model the
    /// message's headers and properties. Example: --framing frames; --framing envelope
    #[arg(long, value_enum, default_value_t = FramingArg::Lines)]
    pub framing: FramingArg,

    /// Inputs handed to the model in one call (json-batch, or frames: a 4-byte count, then
    /// the frames, both ways); the inputs are acked once all their answers are confirmed.
    /// The prefetch is raised to at least 8 x N. Example: --batch-size 64
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10_000), value_name = "N")]
    pub batch_size: u16,

    /// Longest a message waits for its batch to fill before the batch is handed to the model
    /// as it is (fractional seconds). Example: --batch-wait 0.05
    #[arg(long, default_value_t = DEFAULT_BATCH_WAIT_SECS, value_parser = super::secs, value_name = "SECS")]
    pub batch_wait: f64,

    /// Seconds the child may take for one message; past it the child is restarted and the
    /// message goes to the failed queue. Example: --exec-timeout 10
    #[arg(long, default_value_t = DEFAULT_EXEC_TIMEOUT_SECS, value_parser = super::secs, value_name = "SECS")]
    pub exec_timeout: f64,

    /// Largest answer (one line, or one frame) accepted from the model; a longer one fails
    /// the input, and the child is restarted. Example: --max-answer-bytes 1048576
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_parser = clap::value_parser!(u64).range(1..=(1 << 32)), value_name = "BYTES")]
    pub max_answer_bytes: u64,

    /// Longest line of the model's stderr shown (and kept for the failure reason); the rest
    /// of a longer line is cut. Example: --max-stderr-line 16384
    #[arg(long, default_value_t = DEFAULT_MAX_STDERR_LINE, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)), value_name = "BYTES")]
    pub max_stderr_line: u64,

    /// Where messages the child fails on go (with an x-mqdemo-error header saying why).
    /// Default: the input queue's name + ".failed". Example: --failed-queue bad_records
    #[arg(long, value_name = "NAME")]
    pub failed_queue: Option<String>,

    /// Children (and consumers) running in parallel, for CPU-heavy models. Example: --workers 4
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64), value_name = "N")]
    pub workers: u8,

    /// Unacknowledged input messages the broker may send ahead, per worker. Example: --prefetch 100
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub prefetch: u16,

    /// Bytes of input bodies held at once (prefetched and in hand, all workers together):
    /// the prefetch is lowered so that it times the largest body seen fits. A body larger
    /// than this is still taken, alone. Example: --prefetch-bytes 67108864
    #[arg(long, default_value_t = DEFAULT_PREFETCH_BYTES, value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    pub prefetch_bytes: u64,

    /// Stop after N input messages. Example: --count 1000
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Stop after SECS with no input message (default: run until SIGINT/SIGTERM).
    /// Example: --idle-timeout 5
    #[arg(long, value_parser = super::secs, value_name = "SECS")]
    pub idle_timeout: Option<f64>,

    /// Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, with health
    /// checks /ready (200 while connected and consuming, else 503) and /live. Off by
    /// default; no authentication: keep it on 127.0.0.1 or a private network.
    /// Example: --metrics-addr 127.0.0.1:9090
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Queue arguments, for every queue the command declares.
    #[command(flatten)]
    pub queue_args: QueueArgs,
}

/// `pipe`.
#[derive(Debug, Args)]
pub struct PipeArgs {
    /// Queue to consume. Example: --from raw_records
    #[arg(long, value_name = "NAME")]
    pub from: String,

    /// Queue the answers are published to. Example: --to features
    #[arg(long, value_name = "NAME")]
    pub to: String,

    /// Reading a stream.
    #[command(flatten)]
    pub stream: super::StreamArgs,

    /// The model child and consuming options.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Queue of requests. Example: --queue predict_requests
    #[arg(long, visible_alias = "queue-name", alias = "queue_name", default_value = DEFAULT_REQUEST_QUEUE, value_name = "NAME")]
    pub queue: String,

    /// Also publish every answer to this queue (e.g. for `consume tabular --sqlite`).
    /// Example: --results-queue predictions
    #[arg(long, value_name = "NAME")]
    pub results_queue: Option<String>,

    /// Also answer to reply queues named like PATTERN (`*` matches any run of characters),
    /// besides `amq.rabbitmq.reply-to*` and server-named `amq.gen-*` queues, which are
    /// always allowed. Repeatable. Example: --allow-reply-to 'replies.*'
    #[arg(long, value_name = "PATTERN")]
    pub allow_reply_to: Vec<String>,

    /// The model child and consuming options.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Queue `serve` consumes. Example: --queue predict_requests
    #[arg(long, visible_alias = "queue-name", alias = "queue_name", default_value = DEFAULT_REQUEST_QUEUE, value_name = "NAME")]
    pub queue: String,

    /// CSV or JSON lines file whose rows are sent as requests, or - for stdin (read as
    /// `produce tabular` reads it: typed CSV values, JSON objects as they are; the same
    /// --format detection, --no-header, --skip-rows, --delimiter and --encoding).
    /// Example: --file examples/data/tabular_data.csv
    #[arg(long, value_name = "PATH|-")]
    pub file: PathBuf,

    /// Send only the first N rows. Example: --num-records 100
    #[arg(long, alias = "num_records", value_name = "N")]
    pub num_records: Option<u64>,

    /// Requests in flight at once (1 = one round trip at a time). Example: --concurrency 10
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65535), value_name = "N")]
    pub concurrency: u32,

    /// Seconds to wait for each reply; requests still unanswered are reported and the run
    /// fails. Example: --timeout 5
    #[arg(long, default_value_t = 30.0, value_parser = super::secs, value_name = "SECS")]
    pub timeout: f64,

    /// Where replies go, one per line in request order: a file (appended to) or - for stdout.
    /// Example: --output replies.jsonl
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub output: String,

    /// Queue arguments (as `serve` declares the queue).
    #[command(flatten)]
    pub queue_args: QueueArgs,

    /// How to read the rows (last: its help heading covers what follows it).
    #[command(flatten)]
    pub csv: CsvReadArgs,
}

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
    after_help = "Examples:\n  mqdemo demo\n  mqdemo produce tabular --file examples/data/tabular_data.csv\n  mqdemo consume tabular --count 300 > rows.jsonl\n  mqdemo --url-file /run/secrets/amqp_url consume image --idle-timeout 5"
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
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECS")]
    pub connect_timeout: f64,

    /// After a lost connection, keep reconnecting (backoff with jitter, next --url each time)
    /// for up to SECS; 0 fails at once. The first connection of a run is never retried.
    /// Producers also keep re-publishing what the broker nacks or returns unroutable for up
    /// to SECS of nothing but refusals (with 0: refused messages fail at once).
    /// Example: --retry-for 60
    #[arg(long, global = true, default_value_t = 300.0, value_name = "SECS")]
    pub retry_for: f64,

    /// PEM file with the CA certificate(s) that signed the broker's TLS certificate, for
    /// amqps:// with a private CA. Example: --ca-cert /etc/rabbitmq/ca.pem
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// No progress bar and no summary line on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
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
    /// Client of `serve`: send CSV rows as requests, print the replies (one per line) and the
    /// latency percentiles. Example: mqdemo request --queue predict_requests --file rows.csv
    Request(RequestArgs),
    /// Run produce -> consume -> verify for all three kinds on built-in sample data, against
    /// the configured broker, on fresh queues that are deleted afterwards.
    /// Example: mqdemo demo
    Demo,
}

/// `produce <kind>`.
#[derive(Debug, Subcommand)]
pub enum ProduceCommand {
    /// One JSON message per CSV row (or per --batch-size rows).
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
    /// Rows to stdout (default) or a file, as JSON lines or CSV.
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
    /// Declare the queue with this type (x-queue-type). Example: --queue-type quorum
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
}

/// `--queue-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueTypeArg {
    /// Classic queue.
    Classic,
    /// Replicated quorum queue (needs a durable queue; best on a cluster).
    Quorum,
}

/// Options every producer shares.
#[derive(Debug, Args)]
pub struct ProduceCommon {
    /// Queue to publish to (declared durable if missing). Defaults: alicpp_records (tabular),
    /// image_queue (image), text_queue (text). Example: --queue raw_records
    #[arg(long, visible_alias = "queue-name", alias = "queue_name", value_name = "NAME")]
    pub queue: Option<String>,

    /// Queue arguments.
    #[command(flatten)]
    pub queue_args: QueueArgs,

    /// Pause between messages, in seconds (0 = as fast as confirms allow). Example: --interval 0.5
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub interval: f64,

    /// Messages published but not yet confirmed by the broker, at most. Larger is faster;
    /// 1 means one round trip per message. Example: --confirm-window 256
    #[arg(long, default_value_t = DEFAULT_CONFIRM_WINDOW, value_parser = clap::value_parser!(u32).range(1..=65535), value_name = "N")]
    pub confirm_window: u32,

    /// Seconds to wait for an outstanding publisher confirm before the connection is treated
    /// as lost and the unconfirmed messages are reported. Example: --confirm-timeout 60
    #[arg(long, default_value_t = DEFAULT_CONFIRM_TIMEOUT_SECS, value_name = "SECS")]
    pub confirm_timeout: f64,

    /// Largest message body to send, in bytes; bigger items are skipped before sending
    /// (RabbitMQ 3.x allows 128 MiB, 4.x 16 MiB by default). Example: --max-message-size 16777216
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES")]
    pub max_message_size: u64,

    /// Give every message an id new to this run, so sending the same data again on purpose
    /// is new data to consumers rather than duplicates of the first send. Without it ids are
    /// deterministic: a repeated or resumed run is dropped as duplicates. Example: --new-ids
    #[arg(long)]
    pub new_ids: bool,
}

/// `produce tabular`.
#[derive(Debug, Args)]
pub struct ProduceTabular {
    /// CSV file (with a header row unless --no-header). Example: --file examples/data/tabular_data.csv
    #[arg(long, value_name = "PATH.csv")]
    pub file: PathBuf,

    /// Stop after N data rows. Example: --num-records 1000
    #[arg(long, alias = "num_records", value_name = "N")]
    pub num_records: Option<u64>,

    /// Pack N rows into one message (a JSON array). Example: --batch-size 100
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub batch_size: u64,

    /// Loop over the file forever (a continuous stream for demos); combine with
    /// --num-records or --interval. Example: --repeat --interval 0.1
    #[arg(long)]
    pub repeat: bool,

    /// Options every producer shares.
    #[command(flatten)]
    pub common: ProduceCommon,

    /// How to read the CSV file (last: its help heading covers what follows it).
    #[command(flatten)]
    pub csv: CsvReadArgs,
}

/// How to read a CSV file as people really have it (produce tabular, request).
///
/// Rows shorter than the header are padded with nulls and counted; longer ones are skipped
/// and named. A header that repeats a column name, an empty file, or a quote that is never
/// closed is an error naming the file and line.
#[derive(Debug, Args)]
#[command(next_help_heading = "Reading the CSV")]
pub struct CsvReadArgs {
    /// The file has no header row: every row is data, and columns are named by position
    /// "0", "1", "2", ... (as pandas' header=None). Example: --no-header
    #[arg(long)]
    pub no_header: bool,

    /// Skip the first N lines, e.g. a metadata line before the data (scikit-learn's
    /// breast_cancer.csv: --skip-rows 1 --no-header). Line numbers in messages still count
    /// them. Example: --skip-rows 1
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub skip_rows: u64,

    /// Field separator: one ASCII character, or `tab` (also `\t`) for TSV.
    /// Example: --delimiter ';'
    #[arg(long, default_value = ",", value_name = "C")]
    pub delimiter: String,

    /// The file's encoding when it is not UTF-8: a WHATWG label such as latin1 (read as
    /// windows-1252), iso-8859-15, windows-1250, shift_jis or utf-16le. Without it, rows
    /// that are not UTF-8 are skipped and named. Example: --encoding latin1
    #[arg(long, value_name = "LABEL")]
    pub encoding: Option<String>,
}

/// `produce image`.
#[derive(Debug, Args)]
pub struct ProduceImage {
    /// Directory searched recursively for image files. Example: --directory examples/data/images
    #[arg(long, default_value = "images_data", value_name = "DIR")]
    pub directory: PathBuf,

    /// Options every producer shares.
    #[command(flatten)]
    pub common: ProduceCommon,
}

/// How `produce text` cuts files into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// One message per file.
    File,
    /// One message per line (the line's own terminator included, so files reassemble exactly).
    Line,
}

/// `produce text`.
#[derive(Debug, Args)]
pub struct ProduceText {
    /// Directory searched recursively for text files. Example: --directory examples/data/texts
    #[arg(long, default_value = "texts_data", value_name = "DIR")]
    pub directory: PathBuf,

    /// One message per file or per line. Each line names its file (SHA-256, size, line count)
    /// and byte offset, so a consumer rebuilds each file exactly, in any arrival order.
    /// Example: --split line
    #[arg(long, value_enum, default_value_t = Split::File)]
    pub split: Split,

    /// Options every producer shares.
    #[command(flatten)]
    pub common: ProduceCommon,
}

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

    /// Stop after N messages. Example: --count 300
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Stop after SECS with no message. Without --count or --idle-timeout the consumer runs
    /// until SIGINT/SIGTERM. Example: --idle-timeout 5
    #[arg(long, value_name = "SECS")]
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
}

/// `consume tabular`.
#[derive(Debug, Args)]
pub struct ConsumeTabular {
    /// Where rows go: a file (appended to) or - for stdout. Example: --output rows.jsonl
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub output: String,

    /// Output format. Example: --format csv
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

/// Default queue of `serve` and `request`.
pub const DEFAULT_REQUEST_QUEUE: &str = "predict_requests";
/// Default longest model stderr line shown, in bytes.
pub const DEFAULT_MAX_STDERR_LINE: u64 = 8 * 1024;
/// Default seconds a model child may take to answer one message.
pub const DEFAULT_EXEC_TIMEOUT_SECS: f64 = 60.0;

/// How message bodies and answers are delimited on the model child's stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramingArg {
    /// One line each way (JSON rows); an empty answer line publishes nothing.
    Lines,
    /// A 4-byte big-endian length then the bytes, each way (images, any binary body).
    Frames,
}

/// The model child and how `pipe` / `serve` consume.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Your model: a command run once by `sh -c` (restarted if it dies) that reads one message
    /// per line (or frame) on stdin and answers one line (or frame) on stdout, in order.
    /// Example: --exec 'python3 model.py'
    #[arg(long, value_name = "CMD")]
    pub exec: String,

    /// Body framing on the child's stdin/stdout. Example: --framing frames
    #[arg(long, value_enum, default_value_t = FramingArg::Lines)]
    pub framing: FramingArg,

    /// Seconds the child may take for one message; past it the child is restarted and the
    /// message goes to the failed queue. Example: --exec-timeout 10
    #[arg(long, default_value_t = DEFAULT_EXEC_TIMEOUT_SECS, value_name = "SECS")]
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
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,

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

    /// CSV file whose rows are sent as requests (typed JSON, as `produce tabular` sends;
    /// read with the same --no-header, --skip-rows, --delimiter and --encoding).
    /// Example: --file examples/data/tabular_data.csv
    #[arg(long, value_name = "PATH.csv")]
    pub file: PathBuf,

    /// Send only the first N rows. Example: --num-records 100
    #[arg(long, alias = "num_records", value_name = "N")]
    pub num_records: Option<u64>,

    /// Requests in flight at once (1 = one round trip at a time). Example: --concurrency 10
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65535), value_name = "N")]
    pub concurrency: u32,

    /// Seconds to wait for each reply; requests still unanswered are reported and the run
    /// fails. Example: --timeout 5
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,

    /// Where replies go, one per line in request order: a file (appended to) or - for stdout.
    /// Example: --output replies.jsonl
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub output: String,

    /// Queue arguments (as `serve` declares the queue).
    #[command(flatten)]
    pub queue_args: QueueArgs,

    /// How to read the CSV file (last: its help heading covers what follows it).
    #[command(flatten)]
    pub csv: CsvReadArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn original_demo_spellings_parse() {
        let cli = Cli::try_parse_from([
            "mqdemo",
            "--rabbitmq_server",
            "rabbit",
            "produce",
            "tabular",
            "--file",
            "x.csv",
            "--queue_name",
            "q",
            "--num_records",
            "5",
        ])
        .expect("original spellings parse");
        assert_eq!(cli.global.rabbitmq_server.as_deref(), Some("rabbit"));
        let Command::Produce(ProduceCommand::Tabular(t)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(t.num_records, Some(5));
        assert_eq!(t.common.queue.as_deref(), Some("q"));
    }

    #[test]
    fn url_may_repeat_and_is_kept_whole() {
        // Lists are split by config::split_urls, which knows where a new URL begins.
        let cli = Cli::try_parse_from([
            "mqdemo",
            "--url",
            "amqp://a",
            "--url",
            "amqp://u:x,y@b,amqp://c",
            "demo",
        ])
        .expect("parses");
        assert_eq!(cli.global.url, ["amqp://a", "amqp://u:x,y@b,amqp://c"]);
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::try_parse_from([
            "mqdemo",
            "consume",
            "image",
            "--output_directory",
            "out",
            "--url",
            "amqp://h",
            "-q",
        ])
        .expect("parses");
        assert_eq!(cli.global.url, ["amqp://h"]);
        assert!(cli.global.quiet);
    }
}

//! `produce` arguments.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

use super::{
    DEFAULT_CONFIRM_TIMEOUT_SECS, DEFAULT_CONFIRM_WINDOW, DEFAULT_MAX_MESSAGE_SIZE, QueueArgs,
};

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
    #[arg(long, default_value_t = 0.0, value_parser = super::secs, value_name = "SECS")]
    pub interval: f64,

    /// Messages published but not yet confirmed by the broker, at most. Larger is faster;
    /// 1 means one round trip per message. Example: --confirm-window 256
    #[arg(long, default_value_t = DEFAULT_CONFIRM_WINDOW, value_parser = clap::value_parser!(u32).range(1..=65535), value_name = "N")]
    pub confirm_window: u32,

    /// Seconds to wait for an outstanding publisher confirm before the connection is treated
    /// as lost and the unconfirmed messages are reported. Example: --confirm-timeout 60
    #[arg(long, default_value_t = DEFAULT_CONFIRM_TIMEOUT_SECS, value_parser = super::secs, value_name = "SECS")]
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

    /// Publish to this exchange (it must exist; mqdemo creates no exchanges and no bindings)
    /// instead of to --queue through the default exchange. With --exchange, no queue is
    /// declared unless --queue is given too; '' is the default exchange.
    /// Example: --exchange amq.topic --routing-key sensors.eu
    #[arg(long, value_name = "NAME", help_heading = "Exchange, headers and properties")]
    pub exchange: Option<String>,

    /// Routing key of every message, with --exchange (default: the queue name).
    /// Example: --routing-key sensors.eu.temperature
    #[arg(
        long,
        alias = "routing_key",
        value_name = "KEY",
        help_heading = "Exchange, headers and properties"
    )]
    pub routing_key: Option<String>,

    /// Add a header to every message (repeatable). A whole number becomes an integer header,
    /// true/false a boolean, anything else a string; NAME:TYPE=VALUE picks the type (str, int,
    /// bool, float), so NAME:str=42 sends the string "42". mqdemo's own headers (source, row,
    /// sha256, ..., x-mqdemo-*) cannot be set. Example: --header model=v2 --header batch:str=007
    #[arg(
        long = "header",
        value_name = "NAME=VALUE",
        help_heading = "Exchange, headers and properties"
    )]
    pub headers: Vec<String>,

    /// Set an AMQP property on every message (repeatable): priority (0-255), expiration
    /// (milliseconds), correlation_id, reply_to, type, app_id, user_id, timestamp (Unix
    /// seconds). message_id, delivery_mode and content_type are mqdemo's wire format.
    /// Example: --property priority=5 --property expiration=60000
    #[arg(
        long = "property",
        value_name = "NAME=VALUE",
        help_heading = "Exchange, headers and properties"
    )]
    pub properties: Vec<String>,
}

/// `produce tabular`.
#[derive(Debug, Args)]
pub struct ProduceTabular {
    /// CSV file (with a header row unless --no-header) or JSON lines file (one object per
    /// line; see --format), or - to read stdin, publishing rows as they arrive (source header
    /// `stdin`). Example: --file examples/data/tabular_data.csv
    #[arg(long, value_name = "PATH|-")]
    pub file: PathBuf,

    /// Stop after N data rows. Example: --num-records 1000
    #[arg(long, alias = "num_records", value_name = "N")]
    pub num_records: Option<u64>,

    /// Pack N rows into one message (a JSON array). Example: --batch-size 100
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub batch_size: u64,

    /// Loop over the file forever (a continuous stream for demos); combine with
    /// --num-records or --interval. Not with --file - (stdin is read once).
    /// Example: --repeat --interval 0.1
    #[arg(long)]
    pub repeat: bool,

    /// Options every producer shares.
    #[command(flatten)]
    pub common: ProduceCommon,

    /// How to read the rows (last: its help heading covers what follows it).
    #[command(flatten)]
    pub csv: CsvReadArgs,
}

/// The input formats of `produce tabular` and `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Comma-separated values (or --delimiter), a header row unless --no-header.
    Csv,
    /// JSON lines (NDJSON): one JSON object per line, sent as it is; blank lines skipped.
    Jsonl,
}

/// How to read a CSV file as people really have it (produce tabular, request).
///
/// Rows shorter than the header are padded with nulls and counted; longer ones are skipped
/// and named. A header that repeats a column name, an empty file, or a quote that is never
/// closed is an error naming the file and line.
#[derive(Debug, Args)]
#[command(next_help_heading = "Reading the rows (CSV or JSON lines)")]
pub struct CsvReadArgs {
    /// Input format. Default: detected, from the name (*.jsonl, *.ndjson, *.json-lines: JSON
    /// lines; *.csv, *.tsv: CSV), else from the content (first non-blank byte `{`: JSON
    /// lines). --no-header, --delimiter and --encoding are for CSV only. Example: --format jsonl
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<InputFormat>,

    /// The file has no header row: every row is data, and columns are named by position
    /// "0", "1", "2", ... (as pandas' header=None). Example: --no-header
    #[arg(long)]
    pub no_header: bool,

    /// Skip the first N lines, e.g. a metadata line before the data (scikit-learn's
    /// breast_cancer.csv: --skip-rows 1 --no-header); JSON lines too. Line numbers in messages
    /// still count them. Example: --skip-rows 1
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

/// Which files under --directory are sent (produce image, produce text).
#[derive(Debug, Args)]
pub struct FileSelectArgs {
    /// Send only files matching GLOB (repeatable: any one matching is enough). A GLOB without
    /// `/` matches the file name at any depth (`*.png`); one with `/` matches the path under
    /// --directory (`train/**/*.jpg`, `*` stays within one directory). Case-sensitive; `{a,b}`
    /// and `[ab]` work. Files left out are counted and named, and do not fail the run.
    /// Example: --include '*.png'
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Also send hidden files and look in hidden directories (names starting with `.`, such
    /// as .DS_Store or .git), which are left out by default (as fd and ripgrep do).
    /// Example: --hidden
    #[arg(long)]
    pub hidden: bool,
}

/// `produce image`.
#[derive(Debug, Args)]
pub struct ProduceImage {
    /// Directory searched recursively for image files. Example: --directory examples/data/images
    #[arg(long, default_value = "images_data", value_name = "DIR")]
    pub directory: PathBuf,

    /// Which files are sent.
    #[command(flatten)]
    pub select: FileSelectArgs,

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

    /// Which files are sent.
    #[command(flatten)]
    pub select: FileSelectArgs,

    /// Options every producer shares.
    #[command(flatten)]
    pub common: ProduceCommon,
}

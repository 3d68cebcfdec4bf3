//! `failed` arguments: look at the messages in a failed queue, and put them back.

use clap::{Args, Subcommand, ValueEnum};

/// `failed <action>`.
#[derive(Debug, Subcommand)]
pub enum FailedCommand {
    /// List the messages in a failed queue with why they failed (x-mqdemo-error), their
    /// message id, source and row, and a preview of the body; they stay in the queue, in
    /// their order. Rows go to stdout, the count to stderr.
    /// Example: mqdemo failed show alicpp_records.failed --count 20
    Show(FailedShow),
    /// Put failed messages back onto the queue they came from, as their producer sent them
    /// (same message id, the x-mqdemo-* failure headers removed), once the cause is fixed.
    /// Each is acked in the failed queue only after the broker confirmed its copy.
    /// Example: mqdemo failed requeue alicpp_records.failed
    Requeue(FailedRequeue),
}

/// `failed show`.
#[derive(Debug, Args)]
pub struct FailedShow {
    /// The failed queue (it is never created: a missing queue is an error).
    /// Example: alicpp_records.failed
    #[arg(value_name = "QUEUE")]
    pub queue: String,

    /// Show at most the first N messages (the oldest first). Example: --count 20
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub count: u64,

    /// Output: text (for people: two or three lines a message) or json (one JSON object a
    /// line, for scripts: jq, pandas). Example: --format json
    #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
    pub format: ShowFormat,

    /// Bytes of each body shown (a preview; 0 shows none). Example: --body-bytes 400
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=65_536), value_name = "BYTES")]
    pub body_bytes: u64,
}

/// `failed show --format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    /// Lines for people.
    Text,
    /// One JSON object per message and line.
    Json,
}

/// `failed requeue`.
#[derive(Debug, Args)]
pub struct FailedRequeue {
    /// The failed queue to take the messages from. Example: alicpp_records.failed
    #[arg(value_name = "QUEUE")]
    pub queue: String,

    /// The queue to put them on; it must exist. Default: QUEUE without its `.failed` suffix
    /// (required when QUEUE has none). Example: --to alicpp_records
    #[arg(long, value_name = "QUEUE")]
    pub to: Option<String>,

    /// Requeue at most the first N messages. Without it: the messages in QUEUE when the
    /// command starts (those that fail again and come back are not taken a second time).
    /// Example: --count 100
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub count: Option<u64>,
}

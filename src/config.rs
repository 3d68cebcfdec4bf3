//! Parsed arguments -> validated plain structs the flows take. No clap type goes past here.

use crate::amqp::{Endpoint, PublisherOptions, QueueSpec, QueueType, Retry};
use crate::cli::{self, Cli, Command, ConsumeCommand, ProduceCommand};
use crate::codec::Kind;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        let urls = broker_urls(&g.url, g.url_file.as_deref())?;
        let endpoints = urls
            .iter()
            .map(|u| {
                Endpoint::parse(u, g.rabbitmq_server.as_deref(), timeout)
                    .map(|e| e.with_ca_cert(g.ca_cert.clone()))
                    .map_err(|e| UsageError(e.0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(UsageError("--url: give at least one broker URL".into()));
        }
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
        };
        Ok(Config { global, action })
    }
}

/// The broker URLs to use: from --url / AMQP_URL (each value may be a list), or from the
/// file of --url-file / AMQP_URL_FILE, or the default. Never both: which one was meant is
/// not guessed.
fn broker_urls(given: &[String], file: Option<&Path>) -> Result<Vec<String>, UsageError> {
    match (given.is_empty(), file) {
        (false, Some(_)) => Err(UsageError(
            "--url / AMQP_URL and --url-file / AMQP_URL_FILE are both set: give the broker URL \
             one way (unset AMQP_URL to use --url-file)"
                .into(),
        )),
        (true, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!(
                    "cannot read --url-file {}: {e}; check the path",
                    path.display()
                ))
            })?;
            let urls = split_urls(&text);
            if urls.is_empty() {
                return Err(UsageError(format!(
                    "--url-file {} holds no URL; write amqp://USER:PASS@HOST:PORT/VHOST in it",
                    path.display()
                )));
            }
            Ok(urls)
        }
        (true, None) => Ok(vec![cli::DEFAULT_URL.to_string()]),
        (false, None) => Ok(given.iter().flat_map(|list| split_urls(list)).collect()),
    }
}

/// Split a list of broker URLs only where a new URL begins: at a `,` (or whitespace, e.g. a
/// line break in a file) followed by `amqp://` or `amqps://`. A comma anywhere else, e.g. in
/// a password, stays part of its URL.
pub fn split_urls(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut start, mut from) = (0, 0);
    while let Some(i) = crate::amqp::next_amqp_url(&list[from..]).map(|i| from + i) {
        if i > start && list[..i].ends_with(|c: char| c == ',' || c.is_whitespace()) {
            parts.push(&list[start..i]);
            start = i;
        }
        from = i + 1;
    }
    parts.push(&list[start..]);
    parts
        .into_iter()
        .map(|p| p.trim().trim_end_matches(',').trim_end())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn produce(cmd: ProduceCommand) -> Result<ProduceConfig, UsageError> {
    let (kind, source, common) = match cmd {
        ProduceCommand::Tabular(t) => (
            Kind::Tabular,
            Source::Csv {
                file: t.file,
                num_records: t.num_records,
                batch_size: t.batch_size,
                repeat: t.repeat,
                format: csv_format(&t.csv, t.common.max_message_size)?,
            },
            t.common,
        ),
        ProduceCommand::Image(i) => {
            (Kind::Image, Source::Files { directory: i.directory, split_lines: false }, i.common)
        }
        ProduceCommand::Text(t) => (
            Kind::Text,
            Source::Files { directory: t.directory, split_lines: t.split == cli::Split::Line },
            t.common,
        ),
    };
    Ok(ProduceConfig {
        kind,
        queue: queue_spec(common.queue, &common.queue_args, kind)?,
        interval: seconds("--interval", common.interval, true)?,
        publisher: PublisherOptions {
            window: common.confirm_window as usize,
            window_bytes: WINDOW_BYTES,
            confirm_timeout: seconds("--confirm-timeout", common.confirm_timeout, false)?,
        },
        max_message_size: common.max_message_size,
        run_id: common.new_ids.then(run_id),
        source,
    })
}

fn consume(cmd: ConsumeCommand) -> Result<ConsumeConfig, UsageError> {
    let (kind, common, sink) = match cmd {
        ConsumeCommand::Tabular(t) if t.sqlite.is_some() => {
            if let Some(why) = crate::results_db::check_table_name(&t.table) {
                return Err(UsageError(why));
            }
            let path = t.sqlite.unwrap_or_default();
            (Kind::Tabular, t.common, SinkConfig::Sqlite { path, table: t.table })
        }
        ConsumeCommand::Tabular(t) => {
            let output = (t.output != "-").then(|| PathBuf::from(&t.output));
            let format = match t.format {
                cli::Format::Jsonl if t.no_header || t.delimiter.is_some() => {
                    return Err(UsageError(
                        "--no-header and --delimiter shape CSV output: add --format csv".into(),
                    ));
                }
                cli::Format::Jsonl => RowFormat::Jsonl,
                cli::Format::Csv => RowFormat::Csv {
                    delimiter: t.delimiter.as_deref().map(delimiter).transpose()?.unwrap_or(b','),
                    header: !t.no_header,
                },
            };
            (Kind::Tabular, t.common, SinkConfig::Rows { output, format })
        }
        ConsumeCommand::Image(f) => {
            let dir = f.output_directory.unwrap_or_else(|| "received_images".into());
            (Kind::Image, f.common, SinkConfig::Directory(dir))
        }
        ConsumeCommand::Text(f) => {
            let dir = f.output_directory.unwrap_or_else(|| "received_texts".into());
            (Kind::Text, f.common, SinkConfig::Directory(dir))
        }
    };
    let idle_timeout =
        common.idle_timeout.map(|s| seconds("--idle-timeout", s, false)).transpose()?;
    let queue = queue_spec(common.queue, &common.queue_args, kind)?;
    let failed = match (common.no_failed_queue, common.failed_queue) {
        (true, _) => None,
        (false, Some(name)) => Some(failed_spec(name, &queue)?),
        // The dead-letter queue the user named is where they look for failed messages.
        (false, None) => match &queue.dead_letter_queue {
            Some(dlq) => Some(QueueSpec::plain(dlq)),
            None => Some(failed_spec(format!("{}.failed", queue.name), &queue)?),
        },
    };
    if failed.as_ref().is_some_and(|f| f.name == queue.name) {
        return Err(UsageError(format!(
            "--failed-queue {}: must differ from --queue (failed messages would come back)",
            queue.name
        )));
    }
    Ok(ConsumeConfig {
        kind,
        queue,
        count: common.count,
        idle_timeout,
        prefetch: common.prefetch,
        workers: usize::from(common.workers),
        sink,
        failed,
    })
}

/// The failed queue `name` of `input`: durable, of the input's type, no other arguments.
fn failed_spec(name: String, input: &QueueSpec) -> Result<QueueSpec, UsageError> {
    Ok(QueueSpec {
        name: queue_name(name)?,
        queue_type: input.queue_type,
        dead_letter_queue: None,
        max_length: None,
        delivery_limit: input.delivery_limit,
    })
}

fn pipe(p: cli::PipeArgs) -> Result<StageConfig, UsageError> {
    let output = queue_spec(Some(p.to), &p.model.queue_args, Kind::Tabular)?;
    if output.name == p.from {
        return Err(UsageError(format!("--to {}: must differ from --from", p.from)));
    }
    stage(p.from, StageOutput::Queue(output), p.model)
}

fn serve(sv: cli::ServeArgs) -> Result<StageConfig, UsageError> {
    let results =
        sv.results_queue.map(|q| queue_spec(Some(q), &sv.model.queue_args, Kind::Tabular));
    let results = results.transpose()?;
    if results.as_ref().is_some_and(|r| r.name == sv.queue) {
        return Err(UsageError(format!("--results-queue {}: must differ from --queue", sv.queue)));
    }
    let mut cfg = stage(sv.queue, StageOutput::Replies { results }, sv.model)?;
    cfg.allow_reply_to = sv.allow_reply_to;
    Ok(cfg)
}

fn stage(input: String, output: StageOutput, m: cli::ModelArgs) -> Result<StageConfig, UsageError> {
    let input = queue_spec(Some(input), &m.queue_args, Kind::Tabular)?;
    let failed_name = m.failed_queue.unwrap_or_else(|| format!("{}.failed", input.name));
    let failed = failed_spec(failed_name, &input)?;
    let clash = match &output {
        StageOutput::Queue(q) => Some(q),
        StageOutput::Replies { results } => results.as_ref(),
    };
    if failed.name == input.name || clash.is_some_and(|q| q.name == failed.name) {
        return Err(UsageError(format!(
            "--failed-queue {}: must differ from the queues the answers come from and go to",
            failed.name
        )));
    }
    if m.exec.trim().is_empty() {
        return Err(UsageError("--exec: give the command that runs your model".into()));
    }
    let idle_timeout = m.idle_timeout.map(|s| seconds("--idle-timeout", s, false)).transpose()?;
    Ok(StageConfig {
        input,
        output,
        failed,
        exec: m.exec,
        child: crate::child::ChildOptions {
            framing: match m.framing {
                cli::FramingArg::Lines => crate::child::Framing::Lines,
                cli::FramingArg::Frames => crate::child::Framing::Frames,
            },
            timeout: seconds("--exec-timeout", m.exec_timeout, false)?,
            max_answer: usize::try_from(m.max_answer_bytes).unwrap_or(usize::MAX),
            max_stderr_line: usize::try_from(m.max_stderr_line).unwrap_or(usize::MAX),
        },
        allow_reply_to: Vec::new(),
        workers: usize::from(m.workers),
        prefetch: m.prefetch,
        count: m.count,
        idle_timeout,
        publisher: default_publisher(),
    })
}

/// Publisher options where no flag sets them (pipe/serve answers, failed copies).
pub fn default_publisher() -> PublisherOptions {
    PublisherOptions {
        window: cli::DEFAULT_CONFIRM_WINDOW as usize,
        window_bytes: WINDOW_BYTES,
        confirm_timeout: Duration::from_secs_f64(cli::DEFAULT_CONFIRM_TIMEOUT_SECS),
    }
}

fn request(r: cli::RequestArgs) -> Result<RequestConfig, UsageError> {
    Ok(RequestConfig {
        queue: queue_spec(Some(r.queue), &r.queue_args, Kind::Tabular)?,
        file: r.file,
        num_records: r.num_records,
        concurrency: r.concurrency as usize,
        timeout: seconds("--timeout", r.timeout, false)?,
        output: (r.output != "-").then(|| PathBuf::from(&r.output)),
        format: csv_format(&r.csv, cli::DEFAULT_MAX_MESSAGE_SIZE)?,
    })
}

fn csv_format(a: &cli::CsvReadArgs, max_row_bytes: u64) -> Result<CsvFormat, UsageError> {
    Ok(CsvFormat {
        header: !a.no_header,
        skip_rows: a.skip_rows,
        delimiter: delimiter(&a.delimiter)?,
        encoding: a.encoding.as_deref().map(encoding).transpose()?.flatten(),
        max_row_bytes,
    })
}

/// `--delimiter`: one ASCII character, or `tab` / `\t`.
fn delimiter(given: &str) -> Result<u8, UsageError> {
    match given {
        "tab" | "TAB" | "\\t" | "\t" => Ok(b'\t'),
        _ if given.len() == 1
            && given.is_ascii()
            && !matches!(given.as_bytes()[0], b'"' | b'\n' | b'\r') =>
        {
            Ok(given.as_bytes()[0])
        }
        _ => Err(UsageError(format!(
            "--delimiter {given:?}: give one ASCII character other than a quote or a line \
             break, e.g. --delimiter ';', --delimiter '|' or --delimiter tab"
        ))),
    }
}

/// `--encoding`: a WHATWG label; None for UTF-8 (read as it is).
fn encoding(label: &str) -> Result<Option<&'static encoding_rs::Encoding>, UsageError> {
    match encoding_rs::Encoding::for_label(label.trim().as_bytes()) {
        Some(e) if e == encoding_rs::UTF_8 => Ok(None),
        Some(e) if e != encoding_rs::REPLACEMENT => Ok(Some(e)),
        _ => Err(UsageError(format!(
            "--encoding {label}: not an encoding this reads; give a WHATWG label such as \
             latin1 (= windows-1252), iso-8859-15, windows-1250, shift_jis, gbk or utf-16le"
        ))),
    }
}

fn queue_spec(
    given: Option<String>,
    args: &cli::QueueArgs,
    kind: Kind,
) -> Result<QueueSpec, UsageError> {
    let name = queue_name(given.unwrap_or_else(|| kind.default_queue().to_string()))?;
    let dead_letter_queue = args.dead_letter_queue.clone().map(queue_name).transpose()?;
    if dead_letter_queue.as_ref() == Some(&name) {
        return Err(UsageError(format!("--dead-letter-queue {name}: must differ from --queue")));
    }
    if args.max_length == Some(0) {
        return Err(UsageError("--max-length 0: a queue must hold at least 1 message".into()));
    }
    Ok(QueueSpec {
        name,
        queue_type: args.queue_type.map(|t| match t {
            cli::QueueTypeArg::Classic => QueueType::Classic,
            cli::QueueTypeArg::Quorum => QueueType::Quorum,
        }),
        dead_letter_queue,
        max_length: args.max_length,
        delivery_limit: Some(args.delivery_limit),
    })
}

fn queue_name(name: String) -> Result<String, UsageError> {
    if name.is_empty() || name.len() > 255 {
        return Err(UsageError(format!(
            "--queue {name:?}: a queue name must be 1 to 255 bytes long"
        )));
    }
    if name.starts_with("amq.") {
        return Err(UsageError(format!(
            "--queue {name}: names starting with `amq.` are reserved by RabbitMQ; pick another"
        )));
    }
    Ok(name)
}

fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration, UsageError> {
    let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0)) && value < 1e9;
    if !ok {
        let want = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(UsageError(format!("{flag} {value}: must be a number of seconds, {want}")));
    }
    Ok(Duration::from_secs_f64(value))
}

/// An id for this run: the time in nanoseconds and the process id.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, UsageError> {
        let mut all = vec!["mqdemo"];
        all.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(all).expect("parses"))
    }

    #[test]
    fn url_lists_split_only_where_a_new_url_begins() {
        assert_eq!(
            split_urls("amqp://a,amqp://b,amqps://c"),
            ["amqp://a", "amqp://b", "amqps://c"]
        );
        // A comma, `@` or `amqp` inside a password stays in its URL.
        assert_eq!(
            split_urls("amqp://u:a,b@h1/%2f,AMQPS://u:x@amqp,y@h2"),
            ["amqp://u:a,b@h1/%2f", "AMQPS://u:x@amqp,y@h2"]
        );
        assert_eq!(split_urls("amqp://u:p,,q@h"), ["amqp://u:p,,q@h"]);
        // A file: one URL a line, trailing newline and blank lines ignored.
        assert_eq!(split_urls("amqp://a\r\namqp://b\n\n"), ["amqp://a", "amqp://b"]);
        assert_eq!(split_urls(" amqp://a , amqp://b ,"), ["amqp://a", "amqp://b"]);
        assert!(split_urls("\n").is_empty());
    }

    #[test]
    fn url_and_url_file_are_not_both_taken() {
        let err = broker_urls(&["amqp://h".into()], Some(Path::new("f"))).expect_err("both");
        assert!(err.0.contains("--url-file"), "{}", err.0);
        assert_eq!(broker_urls(&[], None).expect("default"), [cli::DEFAULT_URL]);
    }

    #[test]
    fn defaults_follow_the_original_demo() {
        let Ok(Config { action: Action::Consume(c), .. }) = config(&["consume", "image"]) else {
            panic!("consume image");
        };
        assert_eq!(
            c.queue,
            QueueSpec { delivery_limit: Some(20), ..QueueSpec::plain("image_queue") }
        );
        assert!(
            matches!(c.sink, SinkConfig::Directory(ref d) if d == &PathBuf::from("received_images"))
        );
        let Ok(Config { action: Action::Produce(p), .. }) =
            config(&["produce", "tabular", "--file", "a.csv"])
        else {
            panic!("produce tabular");
        };
        assert_eq!(p.queue.name, "alicpp_records");
        assert!(p.queue.arguments().is_empty(), "no arguments unless asked for");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(config(&["consume", "text", "--idle-timeout", "0"]).is_err());
        assert!(config(&["produce", "text", "--interval=-1"]).is_err());
        assert!(config(&["produce", "text", "--queue", ""]).is_err());
        assert!(config(&["produce", "text", "--queue", "amq.x"]).is_err());
        assert!(config(&["--url", "http://x", "demo"]).is_err());
    }

    #[test]
    fn csv_delimiters_and_encodings() {
        for (given, want) in
            [(";", b';'), ("|", b'|'), ("tab", b'\t'), ("\\t", b'\t'), ("\t", b'\t')]
        {
            assert_eq!(delimiter(given).ok(), Some(want), "{given:?}");
        }
        for bad in ["", ";;", "\"", "\n", "é"] {
            assert!(delimiter(bad).is_err(), "{bad:?}");
        }
        assert_eq!(encoding("latin1").ok().flatten(), Some(encoding_rs::WINDOWS_1252));
        assert_eq!(encoding("UTF-8").ok(), Some(None));
        assert!(encoding("klingon").is_err() && encoding("iso-2022-kr").is_err());
        assert!(config(&["consume", "tabular", "--no-header"]).is_err(), "needs --format csv");
        let Ok(Config { action: Action::Consume(c), .. }) =
            config(&["consume", "tabular", "--format", "csv", "--delimiter", "tab"])
        else {
            panic!("consume csv");
        };
        assert!(matches!(
            c.sink,
            SinkConfig::Rows { format: RowFormat::Csv { delimiter: b'\t', header: true }, .. }
        ));
    }
}

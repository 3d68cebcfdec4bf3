//! Each command's arguments -> its validated config.

use super::stream::stream_config;
use super::values::{csv_format, delimiter, queue_name, queue_spec, seconds};
use super::*;

pub(super) fn produce(cmd: ProduceCommand) -> Result<ProduceConfig, UsageError> {
    let (kind, source, common) = match cmd {
        ProduceCommand::Tabular(t) => {
            if t.repeat && is_stdin(&t.file) {
                return Err(UsageError(
                    "--repeat with --file -: stdin can be read only once; save the rows to a \
                     file and give --file PATH --repeat, or drop --repeat"
                        .into(),
                ));
            }
            let source = Source::Csv {
                file: t.file,
                num_records: t.num_records,
                batch_size: t.batch_size,
                repeat: t.repeat,
                format: csv_format(&t.csv, t.common.max_message_size)?,
            };
            (Kind::Tabular, source, t.common)
        }
        ProduceCommand::Image(i) => {
            let filter = FileFilter::new(&i.select.include, i.select.hidden)?;
            let source = Source::Files { directory: i.directory, split_lines: false, filter };
            (Kind::Image, source, i.common)
        }
        ProduceCommand::Text(t) => {
            let filter = FileFilter::new(&t.select.include, t.select.hidden)?;
            let split_lines = t.split == cli::Split::Line;
            let source = Source::Files { directory: t.directory, split_lines, filter };
            (Kind::Text, source, t.common)
        }
    };
    let queue_given = common.queue.is_some();
    let queue = queue_spec(common.queue.clone(), &common.queue_args, kind)?;
    let publish = super::publish::publish(&common, &queue, queue_given)?;
    Ok(ProduceConfig {
        kind,
        queue,
        interval: seconds("--interval", common.interval, true)?,
        publisher: PublisherOptions {
            window: common.confirm_window as usize,
            window_bytes: WINDOW_BYTES,
            confirm_timeout: seconds("--confirm-timeout", common.confirm_timeout, false)?,
        },
        max_message_size: common.max_message_size,
        // Rows from stdin have no file to tell one stream from another: their ids are new
        // to the run (as --new-ids), so a second, different stream is never taken for
        // repeats of the first; within the run, re-published rows keep their ids.
        run_id: (common.new_ids || reads_stdin(&source)).then(run_id),
        source,
        publish,
    })
}

pub(super) fn consume(cmd: ConsumeCommand) -> Result<ConsumeConfig, UsageError> {
    let (kind, common, sink) = match cmd {
        ConsumeCommand::Tabular(t) if t.sqlite.is_some() => {
            if let Some(why) = crate::results_db::check_table_name(&t.table) {
                return Err(UsageError(why));
            }
            let path = t.sqlite.unwrap_or_default();
            let with_meta = t.with_meta;
            (Kind::Tabular, t.common, SinkConfig::Sqlite { path, table: t.table, with_meta })
        }
        ConsumeCommand::Tabular(t) => {
            let output = (t.output != "-").then(|| PathBuf::from(&t.output));
            let format = match t.format {
                cli::Format::Jsonl | cli::Format::Envelope
                    if t.no_header || t.delimiter.is_some() =>
                {
                    return Err(UsageError(
                        "--no-header and --delimiter shape CSV output: add --format csv".into(),
                    ));
                }
                cli::Format::Envelope if t.with_meta => {
                    return Err(UsageError(
                        "--with-meta adds fields to rows; --format envelope already carries \
                         every property and header: drop --with-meta"
                            .into(),
                    ));
                }
                cli::Format::Jsonl => RowFormat::Jsonl,
                cli::Format::Envelope => RowFormat::Envelope,
                cli::Format::Csv => RowFormat::Csv {
                    delimiter: t.delimiter.as_deref().map(delimiter).transpose()?.unwrap_or(b','),
                    header: !t.no_header,
                },
            };
            let with_meta = t.with_meta;
            (Kind::Tabular, t.common, SinkConfig::Rows { output, format, with_meta })
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
    let rows_to = match &sink {
        SinkConfig::Sqlite { path, .. } => Some(("--sqlite", path.as_path())),
        SinkConfig::Rows { output: Some(path), .. } => Some(("--output", path.as_path())),
        SinkConfig::Rows { output: None, .. } | SinkConfig::Directory(_) => None,
    };
    let stream = stream_config(&common.stream, &queue, rows_to, now_ms())?;
    if stream.is_some() {
        only_one_reader(common.workers)?;
        if common.no_failed_queue {
            return Err(UsageError(
                "--no-failed-queue with a stream: a stream takes no reject (RabbitMQ closes \
                 the connection); what cannot be used goes to the --failed-queue"
                    .into(),
            ));
        }
    }
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
        stream,
    })
}

/// A stream gives every consumer all of its messages: competing workers would each handle
/// every one.
fn only_one_reader(workers: u8) -> Result<(), UsageError> {
    if workers > 1 {
        return Err(UsageError(format!(
            "--workers {workers} with a stream: every consumer of a stream reads all of it, so \
             each message would be handled {workers} times; use --workers 1 (or split the work \
             downstream: pipe the stream into a classic or quorum queue)"
        )));
    }
    Ok(())
}

/// Now, in Unix milliseconds (times like `--offset 10m` are resolved once, at start).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The failed queue `name` of `input`: durable, of the input's type, no other arguments.
pub(super) fn failed_spec(name: String, input: &QueueSpec) -> Result<QueueSpec, UsageError> {
    Ok(QueueSpec {
        name: queue_name(name)?,
        // Failed messages of a stream go to an ordinary queue: they are to be looked at,
        // fixed and requeued (`mqdemo failed`), not replayed.
        queue_type: input.queue_type.filter(|t| *t != QueueType::Stream),
        dead_letter_queue: None,
        max_length: None,
        delivery_limit: input.delivery_limit,
        max_age: None,
        max_length_bytes: None,
    })
}

pub(super) fn pipe(p: cli::PipeArgs) -> Result<StageConfig, UsageError> {
    let output = queue_spec(Some(p.to), &p.model.queue_args, Kind::Tabular)?;
    if output.name == p.from {
        return Err(UsageError(format!("--to {}: must differ from --from", p.from)));
    }
    let mut cfg = stage(p.from, StageOutput::Queue(output), p.model)?;
    cfg.stream = stream_config(&p.stream, &cfg.input, None, now_ms())?;
    Ok(cfg)
}

pub(super) fn serve(sv: cli::ServeArgs) -> Result<StageConfig, UsageError> {
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

pub(super) fn stage(
    input: String,
    output: StageOutput,
    m: cli::ModelArgs,
) -> Result<StageConfig, UsageError> {
    let input = queue_spec(Some(input), &m.queue_args, Kind::Tabular)?;
    if input.is_stream() {
        only_one_reader(m.workers)?;
    }
    let stream = input_stream(&input);
    let failed_given = m.failed_queue.is_some();
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
    let batch = usize::from(m.batch_size);
    if batch > 1 && matches!(m.framing, cli::FramingArg::Lines | cli::FramingArg::Envelope) {
        return Err(UsageError(format!(
            "--batch-size {batch}: needs --framing json-batch (a JSON array of inputs per line) \
             or --framing frames (a count, then the frames); lines and envelope hand the model \
             one message per call"
        )));
    }
    // The next batches arrive while one is answered, and acks (each waiting for the answers'
    // confirms) come every few batches, not after each: 8x measured 0.8x of the pipe's own
    // ceiling with a 5 ms model at --batch-size 64, 2x only 0.7x.
    let prefetch = m.prefetch.max(u16::try_from(batch * 8).unwrap_or(u16::MAX));
    Ok(StageConfig {
        input,
        output,
        failed,
        exec: m.exec,
        child: crate::child::ChildOptions {
            framing: match m.framing {
                cli::FramingArg::Lines | cli::FramingArg::Envelope => crate::child::Framing::Lines,
                cli::FramingArg::JsonBatch => crate::child::Framing::LineBatch,
                cli::FramingArg::Frames if batch > 1 => crate::child::Framing::FrameBatch(batch),
                cli::FramingArg::Frames => crate::child::Framing::Frames,
            },
            timeout: seconds("--exec-timeout", m.exec_timeout, false)?,
            max_answer: usize::try_from(m.max_answer_bytes).unwrap_or(usize::MAX),
            max_stderr_line: usize::try_from(m.max_stderr_line).unwrap_or(usize::MAX),
        },
        envelope: m.framing == cli::FramingArg::Envelope,
        batch,
        json_batch: m.framing == cli::FramingArg::JsonBatch,
        batch_wait: seconds("--batch-wait", m.batch_wait, true)?,
        failed_given,
        allow_reply_to: Vec::new(),
        workers: usize::from(m.workers),
        prefetch,
        count: m.count,
        idle_timeout,
        publisher: default_publisher(),
        // `serve` reads a stream from `next`; `pipe` sets its flags.
        stream,
    })
}

/// A stream read from `next`, with no --until or checkpoint; None for other queues.
fn input_stream(input: &QueueSpec) -> Option<super::StreamConfig> {
    input.is_stream().then_some(super::StreamConfig { offset: None, until: None, checkpoint: None })
}

/// Publisher options where no flag sets them (pipe/serve answers, failed copies).
pub fn default_publisher() -> PublisherOptions {
    PublisherOptions {
        window: cli::DEFAULT_CONFIRM_WINDOW as usize,
        window_bytes: WINDOW_BYTES,
        confirm_timeout: Duration::from_secs_f64(cli::DEFAULT_CONFIRM_TIMEOUT_SECS),
    }
}

pub(super) fn request(r: cli::RequestArgs) -> Result<RequestConfig, UsageError> {
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

/// An id for this run: the time in nanoseconds and the process id.
/// Whether a producer reads its rows from stdin (`--file -`).
fn reads_stdin(source: &Source) -> bool {
    matches!(source, Source::Csv { file, .. } if file.as_os_str() == "-")
}

pub(super) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", std::process::id())
}

//! Producers: CSV rows or files -> codec -> confirmed publishing, with progress.
//!
//! A bad item inside the input (malformed row, non-image, non-UTF-8 text, too large) is
//! skipped, named on stderr and counted; a bad whole input stops the run before anything is
//! sent. Only messages the broker confirmed count as produced.

use crate::amqp::Producer;
use crate::codec::{Kind, Message, image, tabular, text};
use crate::config::{CsvFormat, Global, ProduceConfig, Source};
use crate::csv_input::{self, CsvInput, Next};
use crate::output::{Progress, Reporter, Summary, human_bytes, link_events};
use crate::signals::sleep_unless_stopped;
use color_eyre::eyre::{Result, WrapErr, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use walkdir::WalkDir;

pub use crate::output::Outcome;

/// Run one producer.
pub fn run(global: &Global, cfg: &ProduceConfig, stop: &Arc<AtomicBool>) -> Result<Outcome> {
    let input = Input::open(cfg)?;
    let reporter = Reporter::new(!global.quiet, input.progress(), &format!("→ {}", cfg.queue.name));
    let producer = Producer::open(
        &global.endpoints,
        &cfg.queue,
        cfg.publisher,
        global.retry,
        Arc::clone(stop),
        Box::new(link_events(reporter.clone())),
    )?;
    let mut pump = Pump {
        producer,
        reporter,
        stop,
        interval: cfg.interval,
        max_size: cfg.max_message_size,
        skipped: 0,
        sent: 0,
        started: Instant::now(),
        padded_note: String::new(),
        run_id: cfg.run_id.clone(),
    };
    let started = pump.started;
    let streamed = input.stream(cfg, &mut pump);
    let Pump { producer, reporter, skipped, padded_note, .. } = pump;
    let (report, finished) = producer.finish();
    reporter.finish();
    for (label, why) in &report.refused {
        reporter.warn(&format!("not delivered: {label}: {why}"));
    }
    if !report.unconfirmed.is_empty() {
        let shown: Vec<&str> = report.unconfirmed.iter().take(5).map(String::as_str).collect();
        reporter.warn(&format!(
            "{} message(s) read but not confirmed by the broker (a published one may or may not \
             be in the queue): {}{}",
            report.unconfirmed.len(),
            shown.join(", "),
            if report.unconfirmed.len() > 5 { ", ..." } else { "" }
        ));
    }
    let error = streamed.err().or(finished.err());
    let summary = Summary {
        verb: "produced",
        messages: report.confirmed,
        bytes: report.confirmed_bytes,
        elapsed: started.elapsed(),
        skipped,
        failed: (report.refused.len() + report.unconfirmed.len()) as u64,
        failed_to: None,
        extra: [
            padded_note,
            if report.republished > 0 {
                format!("re-published {} (same message ids)", report.republished)
            } else {
                String::new()
            },
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", "),
    };
    Ok(Outcome { summary, error })
}

/// Hands messages to the publisher, one at a time, honouring --interval and signals.
struct Pump<'a> {
    producer: Producer,
    reporter: Reporter,
    stop: &'a AtomicBool,
    interval: Duration,
    max_size: u64,
    skipped: u64,
    sent: u64,
    started: Instant,
    /// "padded N short rows with nulls" (CSV), for the summary.
    padded_note: String,
    /// --new-ids: mixed into every message id.
    run_id: Option<String>,
}

impl Pump<'_> {
    /// Publish; Ok(false) when the run should stop reading input (signal).
    fn send(&mut self, mut msg: Message) -> Result<bool> {
        if let Some(run) = &self.run_id {
            msg.message_id = crate::codec::run_message_id(run, &msg.message_id);
        }
        if msg.body.len() as u64 > self.max_size {
            self.skip(&msg.label, &too_large(msg.body.len() as u64, self.max_size));
            return Ok(self.keep_going());
        }
        if self.sent > 0 && !self.interval.is_zero() {
            self.pause();
        }
        if !self.keep_going() {
            return Ok(false);
        }
        self.producer.publish(msg)?;
        self.sent += 1;
        self.show_status();
        Ok(self.keep_going())
    }

    /// "12,000 msgs (4.1 MiB) confirmed, 8,100 msg/s" on the progress bar.
    fn show_status(&self) {
        self.reporter.status(|| {
            let (confirmed, bytes) = self.producer.confirmed();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            format!(
                "{confirmed} msgs ({}) confirmed, {:.0} msg/s",
                human_bytes(bytes),
                confirmed as f64 / secs
            )
        });
    }

    fn skip(&mut self, what: &str, why: &str) {
        self.skipped += 1;
        self.reporter.warn(&format!("skipped {what}: {why}"));
    }

    fn keep_going(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sleep for --interval, waking early on a signal.
    fn pause(&self) {
        sleep_unless_stopped(self.interval, self.stop);
    }
}

fn too_large(size: u64, max: u64) -> String {
    format!(
        "{} is over the {} message size limit (raise --max-message-size, and max_message_size in \
         rabbitmq.conf, to send it)",
        human_bytes(size),
        human_bytes(max)
    )
}

/// The checked input of a run.
enum Input {
    Csv { input: Box<CsvInput>, size: u64 },
    Files { root: PathBuf, files: Vec<(PathBuf, String)>, skipped: Vec<(String, String)> },
}

impl Input {
    /// Check the whole input before connecting, so a bad path (or a CSV whose header cannot
    /// be used) fails at once.
    fn open(cfg: &ProduceConfig) -> Result<Input> {
        match &cfg.source {
            Source::Csv { file, format, .. } => {
                let meta = std::fs::metadata(file).wrap_err_with(|| {
                    format!("cannot read CSV file {}; check the --file path", file.display())
                })?;
                if !meta.is_file() {
                    bail!("{} is not a file; --file needs a CSV file", file.display());
                }
                let input = Box::new(CsvInput::open(file, format)?);
                Ok(Input::Csv { input, size: meta.len() })
            }
            Source::Files { directory, .. } => {
                let meta = std::fs::metadata(directory).wrap_err_with(|| {
                    format!(
                        "cannot read directory {}; check the --directory path",
                        directory.display()
                    )
                })?;
                if !meta.is_dir() {
                    bail!("{} is not a directory; check the --directory path", directory.display());
                }
                let Listing { files, skipped } = list_files(directory)?;
                Ok(Input::Files { root: directory.clone(), files, skipped })
            }
        }
    }

    fn progress(&self) -> Progress {
        match self {
            Input::Csv { size, .. } => Progress::Bytes(*size),
            Input::Files { files, .. } => Progress::Items(files.len() as u64),
        }
    }

    fn stream(self, cfg: &ProduceConfig, pump: &mut Pump<'_>) -> Result<()> {
        match (self, &cfg.source) {
            (
                Input::Csv { input, .. },
                Source::Csv { file, num_records, batch_size, repeat, format },
            ) => {
                let rows = RowLimits {
                    num_records: *num_records,
                    batch_size: *batch_size,
                    repeat: *repeat,
                };
                stream_csv(*input, file, format, rows, pump)
            }
            (Input::Files { root, files, skipped }, Source::Files { split_lines, .. }) => {
                for (shown, why) in &skipped {
                    pump.skip(shown, why);
                }
                stream_files(&root, &files, cfg.kind, *split_lines, pump)
            }
            _ => bail!("internal: input does not match source"),
        }
    }
}

/// What a directory walk found: regular files, sorted, with their `/`-separated relative
/// paths; and what it skips, as (shown name, why), in the order met.
struct Listing {
    files: Vec<(PathBuf, String)>,
    skipped: Vec<(String, String)>,
}

/// Walk `root` without following symlinks. Only regular files are sent: a symlink (to a
/// file, a directory, or nothing), a FIFO, a socket or a device is skipped and named, never
/// opened (a FIFO nobody writes to would block the producer for good).
fn list_files(root: &Path) -> Result<Listing> {
    let mut listing = Listing { files: Vec::new(), skipped: Vec::new() };
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.wrap_err_with(|| format!("cannot list {}", root.display()))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            listing.skipped.push((entry.path().display().to_string(), not_regular(kind)));
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        let source =
            parts.map(|p| p.join("/")).unwrap_or_else(|| rel.to_string_lossy().into_owned());
        listing.files.push((entry.path().to_path_buf(), source));
    }
    Ok(listing)
}

/// Why a directory entry that is not a regular file is not sent.
fn not_regular(kind: std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_symlink() {
        "a symbolic link (not followed: copy the file into the directory to send it)"
    } else if kind.is_fifo() {
        "a FIFO (named pipe), not a regular file; not opened"
    } else if kind.is_socket() {
        "a socket, not a regular file"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device, not a regular file"
    } else {
        "not a regular file"
    };
    what.to_string()
}

/// Open a listed file for reading without following a symlink and without blocking (it may
/// have been replaced by a FIFO since it was listed): an error unless it is a regular file.
fn open_listed(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = File::options().read(true).custom_flags(flags.bits() as i32).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    Ok(f)
}

#[derive(Clone, Copy)]
struct RowLimits {
    num_records: Option<u64>,
    batch_size: u64,
    repeat: bool,
}

fn stream_csv(
    first: CsvInput,
    path: &Path,
    format: &CsvFormat,
    limits: RowLimits,
    pump: &mut Pump<'_>,
) -> Result<()> {
    let mut read = 0u64;
    let mut input = first;
    let mut rows = CsvRows::default();
    for pass in 0.. {
        if pass > 0 {
            input = CsvInput::open(path, format)?;
        }
        let mut encoder = input.encoder();
        encoder.set_pass(pass);
        let more = rows.pass(&mut input, &encoder, limits, &mut read, pump);
        pump.padded_note = padded_note(rows.padded);
        if !more? || !limits.repeat || read == 0 {
            break;
        }
    }
    Ok(())
}

fn padded_note(padded: u64) -> String {
    match padded {
        0 => String::new(),
        1 => "padded 1 short row with nulls".into(),
        n => format!("padded {n} short rows with nulls"),
    }
}

/// State of the CSV reading across passes.
#[derive(Default)]
struct CsvRows {
    /// Short rows padded with nulls.
    padded: u64,
    /// The --encoding hint was given once.
    hinted_encoding: bool,
}

impl CsvRows {
    /// One pass over the file; Ok(false) when the run must stop (limit reached or signal).
    fn pass(
        &mut self,
        input: &mut CsvInput,
        encoder: &tabular::Encoder,
        limits: RowLimits,
        read: &mut u64,
        pump: &mut Pump<'_>,
    ) -> Result<bool> {
        let mut record = csv::StringRecord::new();
        let mut batch = Batch::default();
        let mut row = 0u64;
        loop {
            if limits.num_records.is_some_and(|n| *read >= n) {
                batch.flush(encoder, pump)?;
                return Ok(false);
            }
            let (line, encoded) = match input.read(&mut record) {
                Err(e) => {
                    batch.flush(encoder, pump)?;
                    return Err(e);
                }
                Ok(Next::End) => return batch.flush(encoder, pump),
                Ok(Next::Bad { line, why }) => (line, Err(why)),
                Ok(Next::Row(line)) => {
                    row += 1;
                    let short = encoder.is_short(&record);
                    let encoded = if limits.batch_size == 1 {
                        encoder.encode_row(&record, row).map(Some)
                    } else {
                        batch.add(encoder, &record, row).map(|()| None)
                    };
                    self.padded += u64::from(encoded.is_ok() && short);
                    (line, encoded.map_err(|e| e.0))
                }
            };
            *read += 1;
            let keep = match encoded {
                Err(why) => self.skip(input, line, why, pump),
                Ok(Some(msg)) => pump.send(msg)?,
                Ok(None) if batch.rows >= limits.batch_size => batch.flush(encoder, pump)?,
                Ok(None) => true,
            };
            pump.reporter.set_position(input.bytes_read());
            if !keep {
                batch.flush(encoder, pump)?;
                return Ok(false);
            }
        }
    }

    /// Skip a row that cannot be sent, named (the first non-UTF-8 one with the fix).
    fn skip(&mut self, input: &CsvInput, line: u64, why: String, pump: &mut Pump<'_>) -> bool {
        let why = if why == csv_input::NOT_UTF8 && !self.hinted_encoding {
            self.hinted_encoding = true;
            format!("{why}; {}", csv_input::encoding_hint())
        } else {
            why
        };
        pump.skip(&format!("{} line {line}", input.source), &why);
        pump.keep_going()
    }
}

/// Rows collected for one `--batch-size` message.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    first_row: u64,
    rows: u64,
}

impl Batch {
    fn add(
        &mut self,
        encoder: &tabular::Encoder,
        record: &csv::StringRecord,
        row: u64,
    ) -> Result<(), tabular::RowError> {
        let mark = self.body.len();
        self.body.push(if self.rows == 0 { b'[' } else { b',' });
        if let Err(e) = encoder.write_object(record, &mut self.body) {
            self.body.truncate(mark);
            return Err(e);
        }
        if self.rows == 0 {
            self.first_row = row;
        }
        self.rows += 1;
        Ok(())
    }

    /// Publish the batch if it holds rows; Ok(false) on a signal.
    fn flush(&mut self, encoder: &tabular::Encoder, pump: &mut Pump<'_>) -> Result<bool> {
        if self.rows == 0 {
            return Ok(pump.keep_going());
        }
        let mut body = std::mem::take(&mut self.body);
        body.push(b']');
        let msg = encoder.encode_batch(body, self.first_row, self.rows);
        self.rows = 0;
        pump.send(msg)
    }
}

fn stream_files(
    root: &Path,
    files: &[(PathBuf, String)],
    kind: Kind,
    split_lines: bool,
    pump: &mut Pump<'_>,
) -> Result<()> {
    if !split_lines {
        return stream_whole_files(root, files, kind, pump);
    }
    for (path, source) in files {
        let shown = format!("{}", root.join(source).display());
        let keep = match std::fs::metadata(path) {
            Err(e) => {
                pump.skip(&shown, &format!("cannot read it: {e}"));
                pump.keep_going()
            }
            Ok(_) => send_lines(path, source, &shown, pump)?,
        };
        pump.reporter.inc(1);
        if !keep {
            break;
        }
    }
    Ok(())
}

/// Bytes of whole files read and encoded ahead of the publisher.
const READ_AHEAD_BYTES: u64 = 16 * 1024 * 1024;

/// One file, read and encoded (or the reason it is skipped: shown name, why).
type Loaded = Result<Message, (String, String)>;

/// Whole files: a reader thread reads and encodes (hashes) the next files while this one
/// publishes, so reading and hashing overlap the network; at most [`READ_AHEAD_BYTES`] (or
/// one file, if larger) wait between them.
fn stream_whole_files(
    root: &Path,
    files: &[(PathBuf, String)],
    kind: Kind,
    pump: &mut Pump<'_>,
) -> Result<()> {
    let budget = ReadAhead::default();
    let (tx, rx) = crossbeam_channel::unbounded::<Loaded>();
    let (max_size, stop) = (pump.max_size, pump.stop);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new().name("mqdemo-read".into());
        let spawned = reader.spawn_scoped(scope, || {
            for (path, source) in files {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let loaded = load_file(root, path, source, kind, max_size);
                let size = loaded.as_ref().map_or(0, |m| m.body.len() as u64);
                if !budget.take(size) || tx.send(loaded).is_err() {
                    break;
                }
            }
            drop(tx);
        });
        spawned.wrap_err("cannot start the file reader thread")?;
        // Whatever ends this loop (done, signal, error) releases the reader.
        let _close = budget.closer();
        for loaded in rx {
            budget.give(loaded.as_ref().map_or(0, |m| m.body.len() as u64));
            let keep = match loaded {
                Ok(msg) => pump.send(msg)?,
                Err((shown, why)) => {
                    pump.skip(&shown, &why);
                    pump.keep_going()
                }
            };
            pump.reporter.inc(1);
            if !keep {
                break;
            }
        }
        Ok(())
    })
}

fn load_file(root: &Path, path: &Path, source: &str, kind: Kind, max_size: u64) -> Loaded {
    let shown = || format!("{}", root.join(source).display());
    let skip = |why: String| Err((shown(), why));
    // One open, one fstat, reads into a buffer of the file's size.
    let read = open_listed(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        if len > max_size {
            return Ok(Err(len));
        }
        let mut bytes = Vec::with_capacity(len as usize + 1);
        f.read_to_end(&mut bytes)?;
        Ok(Ok(bytes))
    });
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(len)) => return skip(too_large(len, max_size)),
        Err(e) => return skip(format!("cannot read it: {e}")),
    };
    let encoded = match kind {
        Kind::Image => image::encode(source, bytes).map_err(|_| {
            "not an image (JPEG, PNG, GIF, WebP, BMP or TIFF by its first bytes)".to_string()
        }),
        _ => text::encode_file(source, bytes)
            .map_err(|e| format!("not UTF-8 text (first bad byte on line {})", e.line)),
    };
    encoded.or_else(skip)
}

/// Bytes read ahead but not yet taken by the publisher; the reader waits above the limit.
#[derive(Default)]
struct ReadAhead {
    /// (bytes queued, publisher gone, reader waiting)
    state: Mutex<(u64, bool, bool)>,
    changed: Condvar,
}

impl ReadAhead {
    /// Wait for room for `size` more bytes (always granted when nothing waits); false once
    /// the publisher has gone.
    fn take(&self, size: u64) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.1 && st.0 > 0 && st.0 + size > READ_AHEAD_BYTES {
            st.2 = true;
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.2 = false;
        st.0 += size;
        !st.1
    }

    fn give(&self, size: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(size);
        if st.2 {
            self.changed.notify_all();
        }
    }

    fn closer(&self) -> impl Drop + '_ {
        struct Close<'a>(&'a ReadAhead);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
                self.0.changed.notify_all();
            }
        }
        Close(self)
    }
}

/// `--split line`: read the whole file first (UTF-8 check, SHA-256, size, lines), so a bad
/// file sends nothing and every line names its file; then one message per line, terminator
/// included, with its byte offset. A file that changes between the two reads is reported. A
/// file with a line over --max-message-size is skipped whole (its other lines could never
/// make the file), and the line is never held: both passes stream the file in pieces.
fn send_lines(path: &Path, source: &str, shown: &str, pump: &mut Pump<'_>) -> Result<bool> {
    let (file, long_lines) = match scan_lines(path, pump.max_size) {
        Ok(scanned) => scanned,
        Err(why) => {
            pump.skip(shown, &why);
            return Ok(pump.keep_going());
        }
    };
    if let Some(first) = long_lines.first() {
        // Its other lines could never make the whole file at the consumer: the file is
        // skipped before any line is sent.
        let why = format!(
            "line {first} is over --max-message-size ({} bytes){}; the file is skipped, as its \
             lines would never make the whole file",
            pump.max_size,
            match long_lines.len() {
                1 => String::new(),
                n => format!(" ({n} such lines)"),
            }
        );
        pump.skip(shown, &why);
        return Ok(pump.keep_going());
    }
    let opened = open_listed(path).wrap_err_with(|| format!("cannot read {shown}"))?;
    let mut reader = BufReader::with_capacity(64 * 1024, opened);
    let (mut line_no, mut offset) = (0u64, 0u64);
    let mut again = text::FileDigest::default();
    loop {
        let mut line = Vec::new();
        let n = read_line_within(&mut reader, pump.max_size, &mut line, &mut again)
            .wrap_err_with(|| format!("cannot read {shown}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line_no > file.lines || offset + n > file.size {
            break; // grew since it was read: reported below
        }
        let at = offset;
        offset += n;
        if n > pump.max_size {
            pump.skip(&format!("{shown} line {line_no}"), &too_large(n, pump.max_size));
            if !pump.keep_going() {
                return Ok(false);
            }
            continue;
        }
        match text::encode_line(source, &file, line_no, at, line) {
            Ok(msg) => {
                if !pump.send(msg)? {
                    return Ok(false);
                }
            }
            Err(e) => {
                pump.skip(&format!("{shown} line {}", e.line), "not UTF-8 text");
                return Ok(pump.keep_going());
            }
        }
    }
    if again.finish() != file {
        pump.skip(
            shown,
            "changed while it was being sent (its lines will not add up at the consumer); \
             produce it again",
        );
    }
    Ok(pump.keep_going())
}

/// Read one line (terminator included) and return its length; its bytes go to `line` only
/// up to `max` + 1 of them (a longer line is counted to its end but not kept), and all of
/// them to `digest`.
fn read_line_within<R: BufRead>(
    reader: &mut R,
    max: u64,
    line: &mut Vec<u8>,
    digest: &mut text::FileDigest,
) -> std::io::Result<u64> {
    let mut n = 0u64;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(n);
        }
        let (piece, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        digest.update(piece);
        let room = (max + 1).saturating_sub(line.len() as u64);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(piece.len());
        line.extend_from_slice(&piece[..keep]);
        let len = piece.len();
        n += len as u64;
        reader.consume(len);
        if done {
            return Ok(n);
        }
    }
}

/// The file's identity and its lines longer than `max` bytes, or Err(reason) when it is
/// not UTF-8 text; read in pieces, so a long line is never held.
fn scan_lines(path: &Path, max: u64) -> Result<(text::FileIdentity, Vec<u64>), String> {
    let file = open_listed(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut digest = text::FileDigest::default();
    let mut utf8 = Utf8Check::default();
    let (mut long_lines, mut line_len, mut line_no) = (Vec::new(), 0u64, 1u64);
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        if buf.is_empty() {
            break;
        }
        utf8.feed(buf).map_err(not_utf8)?;
        digest.update(buf);
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            line_len += (nl + 1 - start) as u64;
            if line_len > max {
                long_lines.push(line_no);
            }
            (line_len, line_no, start) = (0, line_no + 1, nl + 1);
        }
        line_len += (buf.len() - start) as u64;
        let len = buf.len();
        reader.consume(len);
    }
    if line_len > max {
        long_lines.push(line_no);
    }
    utf8.finish().map_err(not_utf8)?;
    Ok((digest.finish(), long_lines))
}

fn not_utf8(line: u64) -> String {
    format!("not UTF-8 text (first bad byte on line {line})")
}

/// UTF-8 validation of a stream fed in pieces (a character may be split between two);
/// errors are the 1-based line of the first bad byte.
#[derive(Default)]
struct Utf8Check {
    /// The start of a character cut off at the end of the last piece.
    carry: Vec<u8>,
    /// Newlines before the current piece.
    lines: u64,
}

impl Utf8Check {
    fn feed(&mut self, mut piece: &[u8]) -> Result<(), u64> {
        while !self.carry.is_empty() {
            let Some((&b, rest)) = piece.split_first() else {
                return Ok(());
            };
            self.carry.push(b);
            piece = rest;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return Err(self.lines + 1),
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => self.carry = piece[e.valid_up_to()..].to_vec(),
            Err(e) => {
                return Err(self.lines
                    + memchr::memchr_iter(b'\n', &piece[..e.valid_up_to()]).count() as u64
                    + 1);
            }
        }
        self.lines += memchr::memchr_iter(b'\n', piece).count() as u64;
        Ok(())
    }

    fn finish(&self) -> Result<(), u64> {
        if self.carry.is_empty() { Ok(()) } else { Err(self.lines + 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_file_replaced_by_a_fifo_or_symlink_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fifo, link) = (dir.path().join("f"), dir.path().join("l"));
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        std::fs::write(dir.path().join("a"), "a").expect("write");
        std::os::unix::fs::symlink(dir.path().join("a"), &link).expect("symlink");
        let (tx, rx) = std::sync::mpsc::channel();
        let paths = [fifo, link, dir.path().join("a")];
        std::thread::spawn(move || {
            let _ = tx.send(paths.map(|p| open_listed(&p).is_ok()));
        });
        let opened = rx.recv_timeout(Duration::from_secs(10)).expect("open_listed blocked");
        assert_eq!(opened, [false, false, true]);
    }

    #[test]
    fn utf8_is_checked_across_pieces_with_the_line_of_the_bad_byte() {
        let text = "a\né\n€ x\n😀\n".as_bytes();
        for size in 1..=text.len() {
            let mut check = Utf8Check::default();
            for piece in text.chunks(size) {
                assert_eq!(check.feed(piece), Ok(()), "pieces of {size}");
            }
            assert_eq!(check.finish(), Ok(()));
        }
        let bad = b"ok\nstill\nbad \xff here\n";
        for size in 1..=bad.len() {
            let mut check = Utf8Check::default();
            let got = bad.chunks(size).map(|p| check.feed(p)).find(Result::is_err);
            assert_eq!(got, Some(Err(3)), "pieces of {size}");
        }
        let mut cut = Utf8Check::default();
        assert_eq!(cut.feed(b"a\n\xe2\x82"), Ok(()));
        assert_eq!(cut.finish(), Err(2), "a character cut off by the end of the file");
    }

    #[test]
    fn a_long_line_is_counted_but_kept_only_to_the_limit() {
        let data = b"0123456789\nab\n";
        let mut reader = BufReader::with_capacity(4, &data[..]);
        let mut digest = text::FileDigest::default();
        let mut line = Vec::new();
        assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(11));
        assert_eq!(line, b"012345", "the limit + 1 bytes: enough to tell it is over");
        line.clear();
        assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(3));
        assert_eq!(line, b"ab\n");
        assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(0));
        let mut whole = text::FileDigest::default();
        whole.update(data);
        assert!(digest.finish() == whole.finish(), "every byte is digested");
    }
}

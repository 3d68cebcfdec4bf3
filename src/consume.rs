//! Consumers: deliveries -> codec -> sink (stdout, a file, a directory), acked only after
//! the sink has the data durably.

use crate::amqp::{self, ConsumeLimits, ConsumeOutcome, Disposition, Handler, Producer, QueueSpec};
use crate::codec::{Delivery, failed_copy, header_text, tabular, unique_id};
use crate::config::{ConsumeConfig, Global, RowFormat, SinkConfig};
use crate::csv_output::{self, CsvOut};
use crate::output::{Progress, Reporter, Summary, human_bytes, link_events};
use crate::results_db::{NO_ID_PREFIX, ResultsDb, Stored as DbStored, row_key};
use color_eyre::eyre::{Result, WrapErr, eyre};
use serde_json::{Map, Value};
use std::collections::{HashSet, VecDeque};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use crate::output::Outcome;

/// Run one consumer (with `--workers N`: N competing consumers on threads, each with its own
/// connection, channel and prefetch, sharing one sink). `stdout` is where rows go when no
/// --output file is given.
pub fn run(
    global: &Global,
    cfg: &ConsumeConfig,
    stop: &Arc<AtomicBool>,
    stdout: Box<dyn Write + Send>,
) -> Result<Outcome> {
    let reporter = Reporter::new(!global.quiet, Progress::Open, &format!("← {}", cfg.queue.name));
    let workers = cfg.workers.max(1);
    let mut line_files = None;
    let (mut handlers, shared_rows) = match &cfg.sink {
        SinkConfig::Rows { output, format } => {
            let mut rows = RowHandler::new(output.as_ref(), *format, stdout, reporter.clone())?;
            rows.decoded_limit = global.prefetch_bytes;
            shared(rows, workers)
        }
        SinkConfig::Sqlite { path, table } => {
            let mut db = DbHandler::new(path, table, reporter.clone())?;
            db.decoded_limit = global.prefetch_bytes;
            shared(db, workers)
        }
        SinkConfig::Directory(dir) => {
            let (hs, lines) = crate::files::handlers(dir, cfg.kind, workers, &reporter)?;
            line_files = Some(lines);
            (hs, None)
        }
    };
    let mut keepers: Vec<Keeper<'_>> = handlers
        .iter_mut()
        .map(|h| Keeper::new(global, cfg, stop, h.as_mut_handler(), &reporter))
        .collect();
    let started = Instant::now();
    let mut dyn_handlers: Vec<&mut (dyn Handler + Send)> =
        keepers.iter_mut().map(|k| k as &mut (dyn Handler + Send)).collect();
    let workload = Workload {
        queue: &cfg.queue,
        prefetch: cfg.prefetch,
        count: cfg.count,
        idle: cfg.idle_timeout,
    };
    let (outcome, mut error) = drive(global, &workload, stop, &mut dyn_handlers, &reporter)?;
    let mut kept = 0;
    for k in keepers {
        let (sent, closed) = k.close();
        kept += sent;
        if let Err(e) = closed {
            error.get_or_insert(e);
        }
    }
    let error = error.or_else(|| line_files.and_then(|l| l.unfinished()));
    let counts = match shared_rows {
        Some(rows) => rows.lock().map_or_else(|_| Counts::default(), |r| r.counts()),
        None => handlers.iter().map(|h| h.counts()).fold(Counts::default(), Counts::sum),
    };
    let failed = outcome.rejected.max(counts.rejected);
    let summary = Summary {
        verb: "consumed",
        messages: counts.messages,
        bytes: counts.bytes,
        elapsed: started.elapsed(),
        skipped: 0,
        failed,
        failed_to: cfg.failed.as_ref().filter(|_| kept > 0).map(|f| match failed - kept {
            0 => format!("sent to {}", f.name),
            _ => format!("{kept} sent to {}", f.name),
        }),
        extra: counts.extra(),
    };
    Ok(Outcome { summary, error })
}

type Handlers = Vec<Box<dyn CountingHandler + Send>>;

/// One worker's handler with the failed queue around it: a message the handler cannot use
/// is published to the failed queue as it came, with the reason, and acked only once the
/// broker confirmed that copy (the consumer flushes before it acks). Without a failed
/// queue (--no-failed-queue) it is rejected without requeue. The failed queue's connection
/// is opened (and the queue declared) at the first failed message: a run with none has no
/// idle connection to lose, and declares no queue it does not need.
struct Keeper<'h> {
    inner: &'h mut (dyn Handler + Send),
    failed: Option<FailedQueue<'h>>,
    reporter: Reporter,
}

/// Where a worker's failed messages go.
struct FailedQueue<'h> {
    spec: &'h QueueSpec,
    global: &'h Global,
    stop: Arc<AtomicBool>,
    producer: Option<Producer>,
}

impl FailedQueue<'_> {
    fn producer(&mut self, reporter: &Reporter) -> Result<&mut Producer> {
        if self.producer.is_none() {
            let producer = Producer::open_many(
                &self.global.endpoints,
                std::slice::from_ref(self.spec),
                crate::config::default_publisher(),
                self.global.retry,
                Arc::clone(&self.stop),
                Box::new(link_events(reporter.clone())),
            )
            .wrap_err_with(|| {
                format!(
                    "cannot send failed messages to {q}; name another queue with \
                     --failed-queue NAME (or reject them with --no-failed-queue); the message \
                     stays in the queue",
                    q = self.spec.name
                )
            })?;
            self.producer = Some(producer);
        }
        self.producer.as_mut().ok_or_else(|| eyre!("the failed queue's producer is missing"))
    }
}

impl<'h> Keeper<'h> {
    fn new(
        global: &'h Global,
        cfg: &'h ConsumeConfig,
        stop: &Arc<AtomicBool>,
        inner: &'h mut (dyn Handler + Send),
        reporter: &Reporter,
    ) -> Keeper<'h> {
        let failed = cfg.failed.as_ref().map(|spec| FailedQueue {
            spec,
            global,
            stop: Arc::clone(stop),
            producer: None,
        });
        Keeper { inner, failed, reporter: reporter.clone() }
    }

    /// Every failed copy confirmed, or why not. (Acks wait for the confirms, so this only
    /// fails when the run stopped early; a connection lost after its last confirm is no
    /// loss.)
    /// Returns how many copies the broker confirmed.
    fn close(self) -> (u64, Result<()>) {
        let Some(producer) = self.failed.and_then(|f| f.producer) else { return (0, Ok(())) };
        let (report, _closed) = producer.finish();
        let sent = report.confirmed;
        match report.unconfirmed.len() {
            0 => (sent, Ok(())),
            n => (
                sent,
                Err(eyre!("{n} failed messages were not confirmed; their originals stay queued")),
            ),
        }
    }
}

impl Handler for Keeper<'_> {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        let why = match self.inner.handle(d)? {
            Disposition::Reject(why) => why,
            stored => return Ok(stored),
        };
        let Some(failed) = &mut self.failed else {
            self.reporter.warn(&format!("rejected message {}: {why}", d.id_or_hash()));
            return Ok(Disposition::Reject(why));
        };
        // Without a message id the copy gets a fresh one (never merged with another's).
        let id = d.assigned_id().map_or_else(unique_id, str::to_string);
        let queue = failed.spec.name.clone();
        self.reporter
            .warn(&format!("message {id} failed ({}); sending it to {queue}", header_text(&why)));
        let body = std::mem::take(&mut d.body);
        failed.producer(&self.reporter)?.publish(failed_copy(d, body, &id, &why, &queue))?;
        Ok(Disposition::Ack)
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush()?;
        let Some(producer) = self.failed.as_mut().and_then(|f| f.producer.as_mut()) else {
            return Ok(());
        };
        match producer.flush()?.into_iter().next() {
            None => Ok(()),
            Some((label, why)) => Err(eyre!(
                "{label} was refused by the broker ({why}); stopping without acking it (it \
                 stays in the queue)"
            )),
        }
    }

    fn idle(&mut self) -> Result<()> {
        self.inner.idle()
    }
}

/// `workers` handles on one sink, and the sink (for its counts at the end).
fn shared<H: CountingHandler + Send + 'static>(
    sink: H,
    workers: usize,
) -> (Handlers, Option<Arc<Mutex<dyn CountingHandler + Send>>>) {
    let sink: Arc<Mutex<dyn CountingHandler + Send>> = Arc::new(Mutex::new(sink));
    let hs = (0..workers).map(|_| Box::new(SharedRows(Arc::clone(&sink))) as _).collect();
    (hs, Some(sink))
}

/// What the workers of [`drive`] consume, and when they stop.
pub(crate) struct Workload<'a> {
    pub queue: &'a amqp::QueueSpec,
    pub prefetch: u16,
    pub count: Option<u64>,
    pub idle: Option<std::time::Duration>,
}

/// Run one consumer per handler, each on its own thread, connection and channel, until the
/// shared --count, --idle-timeout, a signal, or one worker's failure (which stops the
/// others). Returns the summed outcome and the first error.
pub(crate) fn drive(
    global: &Global,
    work: &Workload<'_>,
    stop: &AtomicBool,
    handlers: &mut [&mut (dyn Handler + Send)],
    reporter: &Reporter,
) -> Result<(ConsumeOutcome, Option<color_eyre::eyre::Report>)> {
    let (claimed, halt) = (AtomicU64::new(0), AtomicBool::new(false));
    // --prefetch-bytes bounds the process: each worker holds its share.
    let workers = u64::try_from(handlers.len()).unwrap_or(u64::MAX).max(1);
    let limits = ConsumeLimits {
        count: work.count,
        idle: work.idle,
        stop,
        claimed: &claimed,
        halt: &halt,
        held_bytes: (global.prefetch_bytes / workers).max(1),
    };
    let results: Vec<Result<(ConsumeOutcome, Result<()>)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = handlers
            .iter_mut()
            .map(|h| {
                let (limits, reporter, halt) = (&limits, reporter.clone(), &halt);
                scope.spawn(move || {
                    let on_event = link_events(reporter);
                    let r = amqp::consume(
                        &global.endpoints,
                        work.queue,
                        work.prefetch,
                        limits,
                        &mut **h,
                        global.retry,
                        &on_event,
                    );
                    if !matches!(r, Ok((_, Ok(())))) {
                        // One worker failed: the others stop too, instead of waiting forever.
                        halt.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err(eyre!("a consumer worker panicked"))))
            .collect()
    });
    reporter.finish();
    let mut outcome = ConsumeOutcome::default();
    let mut error = None;
    for r in results {
        let (o, res) = r?;
        outcome.rejected += o.rejected;
        outcome.received += o.received;
        outcome.acked += o.acked;
        if let Err(e) = res {
            error.get_or_insert(e);
        }
    }
    Ok((outcome, error))
}

/// One row sink shared by every worker.
struct SharedRows(Arc<Mutex<dyn CountingHandler + Send>>);

impl SharedRows {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, dyn CountingHandler + Send + 'static>> {
        self.0.lock().map_err(|_| eyre!("a consumer worker panicked while writing rows"))
    }
}

impl Handler for SharedRows {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        self.lock()?.handle(d)
    }

    fn flush(&mut self) -> Result<()> {
        self.lock()?.flush()
    }
}

impl CountingHandler for SharedRows {
    fn counts(&self) -> Counts {
        self.lock().map_or_else(|_| Counts::default(), |r| r.counts())
    }
    fn as_mut_handler(&mut self) -> &mut (dyn Handler + Send) {
        self
    }
}

/// What a handler saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Messages stored (or found already stored).
    pub messages: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Rows written (tabular).
    pub rows: u64,
    /// Files written.
    pub written: u64,
    /// Files already present with the same content.
    pub duplicates: u64,
    /// Files written under another name because the wanted one held other content.
    pub renamed: u64,
    /// Messages rejected as undecodable.
    pub rejected: u64,
    /// Rows rather than files.
    pub tabular: bool,
}

impl Counts {
    fn sum(self, o: Counts) -> Counts {
        Counts {
            messages: self.messages + o.messages,
            bytes: self.bytes + o.bytes,
            rows: self.rows + o.rows,
            written: self.written + o.written,
            duplicates: self.duplicates + o.duplicates,
            renamed: self.renamed + o.renamed,
            rejected: self.rejected + o.rejected,
            tabular: self.tabular || o.tabular,
        }
    }

    /// Progress-bar text.
    pub(crate) fn status(&self) -> String {
        format!("{} msgs ({}) stored, {}", self.messages, human_bytes(self.bytes), self.extra())
    }

    fn extra(&self) -> String {
        if self.tabular {
            format!("rows {}, duplicates {}", self.rows, self.duplicates)
        } else {
            format!(
                "written {}, duplicates {}, renamed {}",
                self.written, self.duplicates, self.renamed
            )
        }
    }
}

pub(crate) trait CountingHandler: Handler {
    fn counts(&self) -> Counts;
    fn as_mut_handler(&mut self) -> &mut (dyn Handler + Send);
}

/// Rows to stdout or a file, as JSON lines or CSV.
struct RowHandler {
    out: RowOut,
    reporter: Reporter,
    counts: Counts,
    seen: SeenIds,
    /// Most memory one message's decoded rows may take (--prefetch-bytes).
    decoded_limit: u64,
}

enum RowOut {
    Jsonl(BufWriter<Box<dyn Write + Send>>),
    Csv(Box<CsvOut>),
}

impl RowHandler {
    fn new(
        output: Option<&PathBuf>,
        format: RowFormat,
        stdout: Box<dyn Write + Send>,
        reporter: Reporter,
    ) -> Result<RowHandler> {
        let w: Box<dyn Write + Send> = match output {
            None => stdout,
            Some(path) => Box::new(csv_output::append(path)?.file),
        };
        let out = match format {
            RowFormat::Jsonl => RowOut::Jsonl(BufWriter::with_capacity(64 * 1024, w)),
            RowFormat::Csv { delimiter, header } => RowOut::Csv(Box::new(CsvOut::new(
                w,
                output.map(PathBuf::as_path),
                delimiter,
                header,
            )?)),
        };
        Ok(RowHandler {
            out,
            reporter,
            counts: Counts { tabular: true, ..Counts::default() },
            seen: SeenIds::default(),
            decoded_limit: crate::cli::DEFAULT_PREFETCH_BYTES,
        })
    }

    fn reject(&mut self, why: &str) -> Disposition {
        self.counts.rejected += 1;
        Disposition::Reject(why.to_string())
    }

    fn write_rows(&mut self, rows: &[Map<String, Value>]) -> Result<()> {
        match &mut self.out {
            RowOut::Jsonl(w) => {
                for row in rows {
                    serde_json::to_writer(&mut *w, row).wrap_err("cannot write rows")?;
                    w.write_all(b"\n").wrap_err("cannot write rows")?;
                }
            }
            RowOut::Csv(csv) => csv.write(rows)?,
        }
        Ok(())
    }

    /// JSON lines, fast path: the objects' own text, one per line.
    fn write_raw(&mut self, d: &Delivery, objects: &[&str]) -> Result<Disposition> {
        if self.seen.contains(d) {
            self.counts.duplicates += 1;
            return Ok(Disposition::Ack);
        }
        if let RowOut::Jsonl(w) = &mut self.out {
            for o in objects {
                w.write_all(o.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .wrap_err("cannot write rows")?;
            }
        }
        self.seen.insert(d);
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        self.counts.rows += objects.len() as u64;
        self.reporter.status(|| self.counts.status());
        Ok(Disposition::Ack)
    }

    /// CSV output: why a message's rows cannot be written under the columns, if so.
    fn unknown_columns(&self, rows: &[Map<String, Value>]) -> Option<String> {
        match &self.out {
            RowOut::Csv(csv) => csv.misfit(rows),
            RowOut::Jsonl(_) => None,
        }
    }
}

impl Handler for RowHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        if matches!(self.out, RowOut::Jsonl(_)) {
            match tabular::raw_objects(&d.body) {
                Err(e) => return Ok(self.reject(&e.0)),
                Ok(Some(objects)) => return self.write_raw(d, &objects),
                Ok(None) => {} // pretty-printed: re-serialise below
            }
        }
        let rows = match tabular::decode_within(&d.body, self.decoded_limit) {
            Ok(rows) if rows.is_empty() => return Ok(self.reject("empty batch")),
            Ok(rows) => rows,
            Err(e) => return Ok(self.reject(&e.0)),
        };
        if let Some(why) = self.unknown_columns(&rows) {
            return Ok(self.reject(&why));
        }
        if self.seen.contains(d) {
            self.counts.duplicates += 1;
            return Ok(Disposition::Ack);
        }
        self.write_rows(&rows)?;
        self.seen.insert(d);
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        self.counts.rows += rows.len() as u64;
        self.reporter.status(|| self.counts.status());
        Ok(Disposition::Ack)
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.out {
            RowOut::Jsonl(w) => w.flush(),
            RowOut::Csv(csv) => csv.flush(),
        }
        .wrap_err("cannot write rows")
    }
}

impl CountingHandler for RowHandler {
    fn counts(&self) -> Counts {
        self.counts
    }
    fn as_mut_handler(&mut self) -> &mut (dyn Handler + Send) {
        self
    }
}

/// Rows into an SQLite table, committed before each ack; idempotent on the message id.
struct DbHandler {
    db: ResultsDb,
    reporter: Reporter,
    counts: Counts,
    /// Most memory one message's decoded rows may take (--prefetch-bytes).
    decoded_limit: u64,
}

impl DbHandler {
    fn new(path: &std::path::Path, table: &str, reporter: Reporter) -> Result<DbHandler> {
        Ok(DbHandler {
            db: ResultsDb::open(path, table)?,
            reporter,
            counts: Counts { tabular: true, ..Counts::default() },
            decoded_limit: crate::cli::DEFAULT_PREFETCH_BYTES,
        })
    }

    fn reject(&mut self, why: &str) -> Disposition {
        self.counts.rejected += 1;
        Disposition::Reject(why.to_string())
    }
}

impl Handler for DbHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        let rows = match tabular::decode_within(&d.body, self.decoded_limit) {
            Ok(rows) if rows.is_empty() => return Ok(self.reject("empty batch")),
            Ok(rows) => rows,
            Err(e) => return Ok(self.reject(&e.0)),
        };
        if let Some(why) = self.db.refuse(&rows) {
            return Ok(self.reject(&why));
        }
        let keys = row_keys(d, rows.len());
        let keyed: Vec<(String, &Map<String, Value>)> = keys.into_iter().zip(&rows).collect();
        let stored = self.db.store(&keyed).wrap_err_with(|| {
            format!("cannot store message {}; it stays in the queue", d.id_or_hash())
        })?;
        let stored = match stored {
            DbStored::Rows(n) => n,
            DbStored::Refused(why) => return Ok(self.reject(&why)),
        };
        if stored == 0 {
            // Every row was already there: a redelivery.
            self.counts.duplicates += 1;
            return Ok(Disposition::Ack);
        }
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        self.counts.rows += stored;
        self.reporter.status(|| self.counts.status());
        Ok(Disposition::Ack)
    }

    fn flush(&mut self) -> Result<()> {
        self.db.commit()
    }
}

/// The primary keys of a message's rows: from its message id ([`row_key`]), or for a
/// delivery without one a fresh key per row (`noid-…`), so identical readings from another
/// producer are rows of their own, never "already stored".
fn row_keys(d: &Delivery, n: usize) -> Vec<String> {
    let Some(id) = d.assigned_id() else {
        return (0..n).map(|_| format!("{NO_ID_PREFIX}{}", unique_id())).collect();
    };
    if d.body.trim_ascii_start().starts_with(b"[") {
        (1..=n).map(|i| row_key(id, Some(i))).collect()
    } else {
        vec![row_key(id, None)]
    }
}

impl CountingHandler for DbHandler {
    fn counts(&self) -> Counts {
        self.counts
    }
    fn as_mut_handler(&mut self) -> &mut (dyn Handler + Send) {
        self
    }
}

/// Message ids handled recently, to drop redeliveries and re-publishes (bounded memory: the
/// oldest ids are forgotten first).
pub(crate) struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

/// Ids remembered: at ~100 bytes each, about 10 MB.
const SEEN_CAPACITY: usize = 100_000;

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds { set: HashSet::new(), order: VecDeque::new(), capacity: SEEN_CAPACITY }
    }
}

impl SeenIds {
    /// Whether `d` was handled already; never for a delivery without a message id.
    pub(crate) fn contains(&self, d: &Delivery) -> bool {
        d.assigned_id().is_some_and(|id| self.set.contains(id))
    }

    pub(crate) fn insert(&mut self, d: &Delivery) {
        let Some(id) = d.assigned_id() else {
            return;
        };
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Delivery {
        Delivery { message_id: Some(id.into()), ..Delivery::default() }
    }

    #[test]
    fn seen_ids_forget_the_oldest_beyond_capacity() {
        let mut seen = SeenIds { capacity: 2, ..SeenIds::default() };
        for id in ["a", "b", "c"] {
            seen.insert(&with_id(id));
        }
        assert!(!seen.contains(&with_id("a")));
        assert!(seen.contains(&with_id("b")) && seen.contains(&with_id("c")));
        assert!(!seen.contains(&Delivery::default()), "no id, never a duplicate");
    }
}

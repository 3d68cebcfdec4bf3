//! Consumers: deliveries -> codec -> sink (stdout, a file, a directory), acked only after
//! the sink has the data durably.

mod db;
mod keeper;
mod meta;
mod rows;

use crate::amqp::{Disposition, Handler, Identity};
use crate::codec::Delivery;
use crate::config::{Checkpoint, ConsumeConfig, Global, SinkConfig};
use crate::output::{Progress, Reporter, Summary, link_events, rate_text};
use crate::workers::{SeenIds, Workload, drive};
use color_eyre::eyre::{Result, eyre};
use db::DbHandler;
use keeper::Keeper;
use rows::RowHandler;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) use crate::output::Outcome;

/// Run one consumer (with `--workers N`: N competing consumers on threads, each with its own
/// connection, channel and prefetch, sharing one sink). `stdout` is where rows go when no
/// --output file is given.
pub(crate) fn run(
    global: &Global,
    cfg: &ConsumeConfig,
    stop: &Arc<AtomicBool>,
    stdout: Box<dyn Write + Send>,
) -> Result<Outcome> {
    let progress = cfg.count.map_or(Progress::Open, Progress::Items);
    let reporter = Reporter::new(!global.quiet, progress, &format!("← {}", cfg.queue.name));
    let workers = cfg.workers.max(1);
    let mut line_files = None;
    let (mut handlers, shared_rows) = match &cfg.sink {
        SinkConfig::Rows { output, format, with_meta } => {
            let mut rows = RowHandler::new(output.as_ref(), *format, stdout, reporter.clone())?;
            rows.decoded_limit = global.prefetch_bytes;
            rows.with_meta = *with_meta;
            rows.stream = cfg.stream.is_some();
            if cfg.stream.as_ref().is_none_or(|s| s.checkpoint.is_none()) {
                // Acked without an fsync, as before: only a checkpoint must not get ahead.
                rows.no_sync();
            }
            shared(rows, workers)
        }
        SinkConfig::Sqlite { path, table, with_meta } => {
            let mut db = DbHandler::new(path, table, reporter.clone())?;
            db.decoded_limit = global.prefetch_bytes;
            db.with_meta = *with_meta;
            db.stream = cfg.stream.is_some();
            db.stream_queue = cfg.stream.as_ref().map(|_| cfg.queue.name.clone());
            if cfg.stream.as_ref().is_some_and(|s| s.checkpoint == Some(Checkpoint::Sqlite)) {
                db.checkpoint = Some(cfg.queue.name.clone());
            }
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
        .map(|h| Keeper::new(global, cfg, stop, h.as_mut(), &reporter))
        .collect();
    let started = Instant::now();
    let mut dyn_handlers: Vec<&mut (dyn Handler + Send)> =
        keepers.iter_mut().map(|k| k as &mut (dyn Handler + Send)).collect();
    let sqlite = match &cfg.sink {
        SinkConfig::Sqlite { path, table, .. } => Some((path.as_path(), table.as_str())),
        _ => None,
    };
    let stream = cfg
        .stream
        .as_ref()
        .map(|s| crate::checkpoint::reading(s, &cfg.queue.name, sqlite, &reporter))
        .transpose()?;
    let workload = Workload {
        queue: &cfg.queue,
        prefetch: cfg.prefetch,
        count: cfg.count,
        idle: cfg.idle_timeout,
        stream: stream.as_ref(),
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
        skipped: outcome.dropped,
        failed,
        failed_to: cfg.failed.as_ref().filter(|_| kept > 0).map(|f| match failed - kept {
            0 => format!("sent to {}", f.name),
            _ => format!("{kept} sent to {}", f.name),
        }),
        counts: counts.named(),
        note: crate::checkpoint::stream_note(&outcome),
    };
    Ok(Outcome { summary, error })
}

type Handlers = Vec<Box<dyn CountingHandler + Send>>;

/// `workers` handles on one sink, and the sink (for its counts at the end).
fn shared<H: CountingHandler + Send + 'static>(
    sink: H,
    workers: usize,
) -> (Handlers, Option<Arc<Mutex<dyn CountingHandler + Send>>>) {
    let sink: Arc<Mutex<dyn CountingHandler + Send>> = Arc::new(Mutex::new(sink));
    let hs = (0..workers).map(|_| Box::new(SharedRows(Arc::clone(&sink))) as _).collect();
    (hs, Some(sink))
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

    fn covers(&mut self, offset: u64, mark: Option<&Identity>) {
        if let Ok(mut sink) = self.lock() {
            sink.covers(offset, mark);
        }
    }
}

impl CountingHandler for SharedRows {
    fn counts(&self) -> Counts {
        self.lock().map_or_else(|_| Counts::default(), |r| r.counts())
    }
}

/// What a handler saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
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

    /// Progress-bar text: what was stored, and the counts that are not zero.
    pub(crate) fn status(&self, elapsed: std::time::Duration) -> String {
        let mut text = rate_text("stored", self.messages, self.bytes, elapsed);
        for (name, n) in self.named().into_iter().filter(|(_, n)| *n > 0) {
            text.push_str(&format!(", {name} {n}"));
        }
        text
    }

    /// The kind-specific counts, by name.
    fn named(&self) -> Vec<(&'static str, u64)> {
        if self.tabular {
            vec![("rows", self.rows), ("duplicates", self.duplicates)]
        } else {
            vec![
                ("written", self.written),
                ("duplicates", self.duplicates),
                ("renamed", self.renamed),
            ]
        }
    }
}

/// The bookkeeping every storing handler does the same way: drop a repeat of a message it
/// stored (by message id), and count and show what it stored.
pub(crate) struct Tally {
    pub(crate) counts: Counts,
    seen: SeenIds,
    reporter: Reporter,
}

impl Tally {
    pub(crate) fn new(counts: Counts, reporter: Reporter) -> Tally {
        Tally { counts, seen: SeenIds::default(), reporter }
    }

    /// Whether `d` repeats a message stored already (counted as a duplicate: ack it, store
    /// nothing).
    pub(crate) fn repeat(&mut self, d: &Delivery) -> bool {
        let seen = self.seen.contains(d);
        if seen {
            self.duplicate();
            self.reporter.inc(1);
        }
        seen
    }

    /// A message found stored already (by id, by its rows, or a file of the same content).
    pub(crate) fn duplicate(&mut self) {
        self.counts.duplicates += 1;
        crate::metrics::duplicate();
    }

    /// `d` is stored, with `rows` rows: remembered, counted, shown; ack it.
    pub(crate) fn stored(&mut self, d: &Delivery, rows: u64) -> Disposition {
        self.seen.insert(d);
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        self.counts.rows += rows;
        self.reporter.inc(1);
        self.reporter.status(|| self.counts.status(self.reporter.elapsed()));
        Disposition::Ack
    }

    /// Tell people (a line on stderr, above the progress bar).
    pub(crate) fn warn(&self, text: &str) {
        self.reporter.warn(text);
    }

    /// `d` cannot be used, for this reason: counted; it goes to the failed queue.
    pub(crate) fn failed(&mut self, why: &str) -> Disposition {
        self.counts.rejected += 1;
        Disposition::Reject(why.to_string())
    }
}

pub(crate) trait CountingHandler: Handler {
    fn counts(&self) -> Counts;
}

//! Files into a directory (`consume image`, `consume text`): named from the `source` header
//! when it is safe, whole files committed in groups, `--split line` files assembled line by
//! line (one assembly shared by every worker). Content that cannot be stored (no name can be
//! made unique, lines that do not add up to their file) fails its own message, rejected
//! without requeue with the reason; errors of the directory itself (disk full, permissions)
//! stop the run and requeue.
//!
//! What a message is (its checked body, its names, a line's place) is decided by
//! [`crate::codec::file`] (through `codec::image::decode` and `codec::text::decode`); this
//! module only stores it.

use crate::amqp::{Disposition, Handler};
use crate::codec::file::{self, FileMessage, Names};
use crate::codec::text::FileIdentity;
use crate::codec::{Delivery, Kind, image, text};
use crate::consume::{CountingHandler, Counts, Tally};
use crate::output::Reporter;
use crate::sink::lines::{Added, Assembly, Line};
use crate::sink::{DirSink, Queued, Stored};

use color_eyre::eyre::{Report, Result, eyre};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// `workers` handlers writing into `dir`, and the line assembly they share.
pub(crate) fn handlers(
    dir: &Path,
    kind: Kind,
    workers: usize,
    reporter: &Reporter,
) -> Result<(Vec<Box<dyn CountingHandler + Send>>, LineFiles)> {
    let lines = Arc::new(Mutex::new(Assembly::new(DirSink::new(dir)?.root())?));
    let hs = (0..workers)
        .map(|_| {
            let h = FileHandler::new(dir, kind, reporter.clone(), Arc::clone(&lines))?;
            Ok(Box::new(h) as Box<dyn CountingHandler + Send>)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((hs, LineFiles(lines)))
}

/// The files a run assembles line by line, for the report at its end.
pub(crate) struct LineFiles(Arc<Mutex<Assembly>>);

/// Incomplete files named in the report (the rest are counted).
const SHOWN: usize = 5;

impl LineFiles {
    /// An error naming the files whose lines have not all arrived (their lines are kept in
    /// staging files, and the next run finishes them), or None.
    pub(crate) fn unfinished(&self) -> Option<Report> {
        let waiting = self.0.lock().map(|a| a.incomplete()).unwrap_or_default();
        let first = waiting.first()?;
        let dir = first.staging.parent().map_or(String::new(), |p| p.display().to_string());
        let shown: Vec<String> = waiting
            .iter()
            .take(SHOWN)
            .map(|i| format!("{} ({} of {} lines)", i.source, i.have, i.lines))
            .collect();
        Some(eyre!(
            "{} file(s) sent line by line are incomplete: {}{}; the lines received are kept in \
             {dir}/{}*; consume the queue again to finish them",
            waiting.len(),
            shown.join(", "),
            if waiting.len() > SHOWN { ", ..." } else { "" },
            crate::sink::lines::STAGING_PREFIX,
        ))
    }
}

/// Files into a directory, named from the `source` header when it is safe.
struct FileHandler {
    sink: DirSink,
    lines: Arc<Mutex<Assembly>>,
    kind: Kind,
    tally: Tally,
}

/// Bodies from this size on have their sha256 checked on a second thread while written.
const PARALLEL_HASH_BYTES: usize = 1024 * 1024;

impl FileHandler {
    fn new(
        dir: &Path,
        kind: Kind,
        reporter: Reporter,
        lines: Arc<Mutex<Assembly>>,
    ) -> Result<FileHandler> {
        Ok(FileHandler {
            sink: DirSink::new(dir)?,
            lines,
            kind,
            tally: Tally::new(Counts::default(), reporter),
        })
    }

    /// Warn that a message's `source` header is unsafe and where its file goes instead.
    fn warn_unsafe(&self, names: &Names) {
        if let Some(s) = &names.unsafe_source {
            let fallback = &names.fallback;
            self.tally.warn(&format!("unsafe source header {s:?}; writing {fallback} instead"));
        }
    }

    /// A whole file was queued in the sink: it is linked into place (and counted) when the
    /// group is committed, at the latest before the ack, earlier when the group is full.
    fn queued(&mut self, d: &Delivery) -> Result<Disposition> {
        if self.sink.group_full() {
            let group = self.sink.sync()?;
            self.committed(group);
        }
        Ok(self.handled(d))
    }

    fn handled(&mut self, d: &Delivery) -> Disposition {
        self.tally.stored(d, 0)
    }

    fn duplicate(&mut self, d: &Delivery) -> Disposition {
        self.tally.duplicate();
        self.handled(d)
    }

    fn corrupt(&mut self) -> Disposition {
        self.tally.failed(file::CORRUPT)
    }

    /// Count and report what became of committed files.
    fn committed(&mut self, group: Vec<Stored>) {
        for stored in group {
            match stored {
                Stored::Written(_) => self.tally.counts.written += 1,
                Stored::Duplicate(_) => self.tally.duplicate(),
                Stored::Renamed { wanted, written } => {
                    self.tally.counts.renamed += 1;
                    self.tally.warn(&format!(
                        "{} exists with other content; wrote {}",
                        wanted.display(),
                        written.display()
                    ));
                }
            }
        }
    }

    /// A whole file (or a line that cannot be placed in a file, stored as a file of its own).
    fn whole(&mut self, d: &Delivery, names: &Names) -> Result<Disposition> {
        let want = file::claimed_sha256(d);
        let rel = names.rel.as_deref();
        if let (Some(want), true) = (want, d.body.len() >= PARALLEL_HASH_BYTES) {
            // A large file: check its digest on a second core while it is written.
            let (intact, queued) = std::thread::scope(|s| {
                let check = s.spawn(|| file::sha256_matches(want, &d.body));
                let queued = self.sink.store(rel, &names.fallback, &names.tags, &d.body);
                (check.join().unwrap_or(false), queued)
            });
            let queued = queued?;
            if !intact {
                if queued == Queued::Pending {
                    self.sink.discard_last();
                }
                return Ok(self.corrupt());
            }
            return self.outcome(d, queued);
        }
        if !file::intact(d) {
            return Ok(self.corrupt());
        }
        let queued = self.sink.store(rel, &names.fallback, &names.tags, &d.body)?;
        self.outcome(d, queued)
    }

    fn outcome(&mut self, d: &Delivery, queued: Queued) -> Result<Disposition> {
        match queued {
            Queued::Pending => self.queued(d),
            Queued::Duplicate(_) => Ok(self.duplicate(d)),
            Queued::Refused(why) => Ok(self.tally.failed(&why)),
        }
    }

    /// Line `line` of `file`, put in its place.
    fn line(
        &mut self,
        d: &Delivery,
        line: u64,
        offset: u64,
        file: &FileIdentity,
        names: &Names,
    ) -> Result<Disposition> {
        if !file::intact(d) {
            return Ok(self.corrupt());
        }
        self.warn_unsafe(names);
        let added = lock(&self.lines)?.add(&Line {
            source: d.header_str(file::SOURCE).unwrap_or(""),
            rel: names.rel.as_deref(),
            fallback: &names.fallback,
            tags: &names.tags,
            file,
            line,
            offset,
            body: &d.body,
        })?;
        Ok(match added {
            Added::Kept => self.handled(d),
            Added::Duplicate => self.duplicate(d),
            Added::Complete(stored) => {
                self.committed(vec![stored]);
                self.handled(d)
            }
            Added::Refused(why) => self.tally.failed(&why),
        })
    }
}

fn lock(lines: &Mutex<Assembly>) -> Result<MutexGuard<'_, Assembly>> {
    lines.lock().map_err(|_| eyre!("a consumer worker panicked while assembling lines"))
}

impl Handler for FileHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        if self.tally.repeat(d) {
            return Ok(Disposition::Ack);
        }
        let message = match self.kind {
            Kind::Text => match text::decode(d) {
                Ok(message) => message,
                Err(why) => return Ok(self.tally.failed(&why)),
            },
            _ => image::decode(d),
        };
        match message {
            FileMessage::Line { line, offset, file, names } => {
                self.line(d, line, offset, &file, &names)
            }
            FileMessage::Whole(names) => {
                self.warn_unsafe(&names);
                self.whole(d, &names)
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        let group = self.sink.sync()?;
        self.committed(group);
        lock(&self.lines)?.sync()
    }
}

impl CountingHandler for FileHandler {
    fn counts(&self) -> Counts {
        self.tally.counts
    }
}

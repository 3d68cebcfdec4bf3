//! Files into a directory (`consume image`, `consume text`): named from the `source` header
//! when it is safe, whole files committed in groups, `--split line` files assembled line by
//! line (one assembly shared by every worker). Content that cannot be stored (no name can be
//! made unique, lines that do not add up to their file) fails its own message, rejected
//! without requeue with the reason; errors of the directory itself (disk full, permissions)
//! stop the run and requeue.

use crate::amqp::{Disposition, Handler};
use crate::codec::text::{self, FileIdentity, LinePart};
use crate::codec::{Delivery, Kind, extension_for, sha256_hex};
use crate::consume::{CountingHandler, Counts};
use crate::output::Reporter;
use crate::sink::lines::{Added, Assembly, Line};
use crate::sink::{AltTags, DirSink, Queued, Stored, safe_relative_path};
use crate::workers::SeenIds;
use color_eyre::eyre::{Report, Result, eyre};
use std::path::{Path, PathBuf};
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
    reporter: Reporter,
    counts: Counts,
    seen: SeenIds,
}

/// Where a message's file goes: the sanitised `source`, the name used when that is unusable,
/// and the tags of alternative names.
struct Names {
    rel: Option<PathBuf>,
    fallback: String,
    tags: AltTags,
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
            reporter,
            counts: Counts::default(),
            seen: SeenIds::default(),
        })
    }

    /// Names for a whole file: fallback and tags from the message id.
    fn names(&self, d: &Delivery) -> Names {
        let id = d.id_or_hash();
        let safe_id = if id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            id
        } else {
            sha256_hex(id.as_bytes())[..32].to_string()
        };
        let fallback = format!("{safe_id}.{}", extension_for(d.content_type.as_deref()));
        Names { rel: self.rel(d, &fallback), fallback, tags: AltTags::from_id(&safe_id) }
    }

    /// Names for a file sent line by line: fallback and tags from the file's SHA-256.
    fn file_names(&self, d: &Delivery, file: &FileIdentity) -> Names {
        let fallback =
            format!("{}.{}", &file.sha256[..32], extension_for(d.content_type.as_deref()));
        let tags = AltTags { short: file.sha256[..12].to_string(), full: file.sha256.clone() };
        Names { rel: self.rel(d, &fallback), fallback, tags }
    }

    fn rel(&self, d: &Delivery, fallback: &str) -> Option<PathBuf> {
        d.header_str("source").and_then(|s| {
            let p = safe_relative_path(s);
            if p.is_none() {
                self.reporter
                    .warn(&format!("unsafe source header {s:?}; writing {fallback} instead"));
            }
            p
        })
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
        self.seen.insert(d);
        self.counts.messages += 1;
        self.counts.bytes += d.body.len() as u64;
        self.reporter.status(|| self.counts.status());
        Disposition::Ack
    }

    fn duplicate(&mut self, d: &Delivery) -> Disposition {
        self.counts.duplicates += 1;
        self.handled(d)
    }

    /// This message cannot be stored: it fails, with the reason, and is counted.
    fn reject(&mut self, why: &str) -> Disposition {
        self.counts.rejected += 1;
        Disposition::Reject(why.to_string())
    }

    fn corrupt(&mut self) -> Disposition {
        self.reject("body does not match its sha256 header")
    }

    /// Count and report what became of committed files.
    fn committed(&mut self, group: Vec<Stored>) {
        for stored in group {
            match stored {
                Stored::Written(_) => self.counts.written += 1,
                Stored::Duplicate(_) => self.counts.duplicates += 1,
                Stored::Renamed { wanted, written } => {
                    self.counts.renamed += 1;
                    self.reporter.warn(&format!(
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
        let want = d.header_str("sha256");
        let matches = |want: &str| want.eq_ignore_ascii_case(&sha256_hex(&d.body));
        let rel = names.rel.as_deref();
        if let (Some(want), true) = (want, d.body.len() >= PARALLEL_HASH_BYTES) {
            // A large file: check its digest on a second core while it is written.
            let (intact, queued) = std::thread::scope(|s| {
                let check = s.spawn(|| matches(want));
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
        if want.is_some_and(|w| !matches(w)) {
            return Ok(self.corrupt());
        }
        let queued = self.sink.store(rel, &names.fallback, &names.tags, &d.body)?;
        self.outcome(d, queued)
    }

    fn outcome(&mut self, d: &Delivery, queued: Queued) -> Result<Disposition> {
        match queued {
            Queued::Pending => self.queued(d),
            Queued::Duplicate(_) => Ok(self.duplicate(d)),
            Queued::Refused(why) => Ok(self.reject(&why)),
        }
    }

    /// Line `line` of `file`, put in its place.
    fn line(
        &mut self,
        d: &Delivery,
        line: u64,
        offset: u64,
        file: &FileIdentity,
    ) -> Result<Disposition> {
        if d.header_str("sha256").is_some_and(|w| !w.eq_ignore_ascii_case(&sha256_hex(&d.body))) {
            return Ok(self.corrupt());
        }
        let names = self.file_names(d, file);
        let added = lock(&self.lines)?.add(&Line {
            source: d.header_str("source").unwrap_or(""),
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
            Added::Refused(why) => self.reject(&why),
        })
    }
}

fn lock(lines: &Mutex<Assembly>) -> Result<MutexGuard<'_, Assembly>> {
    lines.lock().map_err(|_| eyre!("a consumer worker panicked while assembling lines"))
}

/// `dir/name.ext` -> `dir/name.line-N.ext`: where a line that names no file of its own is
/// stored (as a file of its own, never appended to anything).
fn line_path(rel: &Path, line: u64) -> PathBuf {
    let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match rel.extension() {
        Some(ext) => format!("{stem}.line-{line}.{}", ext.to_string_lossy()),
        None => format!("{stem}.line-{line}"),
    };
    rel.with_file_name(name)
}

impl Handler for FileHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        if self.seen.contains(d) {
            self.counts.duplicates += 1;
            return Ok(Disposition::Ack);
        }
        let part = match self.kind {
            Kind::Text => match text::line_part(d) {
                Ok(part) => part,
                Err(why) => return Ok(self.reject(&why)),
            },
            _ => None,
        };
        match part {
            Some(LinePart::Placed { line, offset, file }) => self.line(d, line, offset, &file),
            Some(LinePart::Unplaced { line }) => {
                let mut names = self.names(d);
                names.rel = names.rel.map(|r| line_path(&r, line));
                self.whole(d, &names)
            }
            None => {
                let names = self.names(d);
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
        self.counts
    }
    fn as_mut_handler(&mut self) -> &mut (dyn Handler + Send) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_no_known_file_gets_a_name_of_its_own() {
        assert_eq!(line_path(Path::new("notes/a.txt"), 3), Path::new("notes/a.line-3.txt"));
        assert_eq!(line_path(Path::new("README"), 12), Path::new("README.line-12"));
        let long = "x".repeat(200);
        let p = line_path(Path::new(&long), u64::MAX);
        assert!(p.as_os_str().len() < 255, "still a valid file name");
    }
}

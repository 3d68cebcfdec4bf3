//! Files sent line by line (`--split line`), assembled whatever order their lines arrive in.
//!
//! A file is known by its `source` and whole-file SHA-256 (two files of one name, or a file
//! and its edited version, never meet). It is assembled in a hidden staging file directly in
//! the output directory, each line written at its byte offset, so arrival order does not
//! matter. A marks file beside it lists the lines whose bytes are durable: marks are written
//! only after the staging data is synced, so they never claim more than is on disk, and both
//! survive a restart. When every line is in, the staging file is synced, checked against the
//! file's SHA-256, and linked into place like a whole file (never over other content; the
//! same content already there is a duplicate). mqdemo never appends to a file it did not
//! create. One [`Assembly`] is shared by every worker of a consumer; a staging file is locked
//! (flock) while open, so a second consumer process on the same directory is told, not mixed
//! in.

mod ranges;
mod staging;

use super::compare::{Content, file_holds};
use super::dir::Dir;
use super::place::{Source, no_name, place_first, sync_dirs, target_path};
use super::{AltTags, Dirty, Stored};
use crate::codec::sha256_hex;
use crate::codec::text::FileIdentity;
use color_eyre::eyre::{Result, WrapErr, eyre};
use ranges::{RangeSet, Recent};
use staging::Opened;
#[cfg(test)]
use staging::marks_header;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of staging files (hidden, never a final name); the marks file adds `.marks`.
pub(crate) const STAGING_PREFIX: &str = ".mqdemo-part.";
/// Most staging files held open at once; the least recently used are synced and closed.
const MAX_OPEN: usize = 128;

/// One received line, for [`Assembly::add`].
pub(crate) struct Line<'a> {
    /// The `source` header as sent ("" when there is none): part of the file's identity.
    pub source: &'a str,
    /// The sanitised `source`, when safe.
    pub rel: Option<&'a Path>,
    /// File name used when `rel` is unusable.
    pub fallback: &'a str,
    /// Tags of the alternative names.
    pub tags: &'a AltTags,
    /// The whole file.
    pub file: &'a FileIdentity,
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line.
    pub offset: u64,
    /// The line's bytes.
    pub body: &'a [u8],
}

/// What became of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Added {
    /// Written into its place; the file is not complete yet.
    Kept,
    /// Already there (or its file is already complete): nothing written.
    Duplicate,
    /// The file's last line: the file is in place.
    Complete(Stored),
    /// Cannot be stored (the reason): this message fails, the rest goes on.
    Refused(String),
}

/// A file still waiting for lines, for the report at exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incomplete {
    /// Its `source` header.
    pub source: String,
    /// Lines stored.
    pub have: u64,
    /// Lines it has.
    pub lines: u64,
    /// Where the lines received so far are kept.
    pub staging: PathBuf,
}

/// Line-by-line files being assembled in one output directory.
pub(crate) struct Assembly {
    root: Arc<Dir>,
    files: HashMap<String, Staged>,
    done: Recent,
    /// Staging and marks files (in the root) of completed files, removed after the next
    /// directory sync.
    finished: Vec<OsString>,
    dirty_dirs: Dirty,
    tick: u64,
}

struct Staged {
    source: String,
    /// The sanitised source and the fallback name: where the file goes is decided (and its
    /// directories opened) again when it is complete, never kept from the first line.
    rel: Option<PathBuf>,
    fallback: String,
    tags: AltTags,
    file: FileIdentity,
    /// The output directory, where the staging and marks files are.
    root: Arc<Dir>,
    data_name: OsString,
    marks_name: OsString,
    /// Their paths, for messages.
    data_path: PathBuf,
    marks_path: PathBuf,
    /// Open (and locked) while in use; closed when evicted.
    data: Option<File>,
    marks: Option<File>,
    /// Lines whose bytes are durable and marked.
    durable: RangeSet,
    /// Lines written: `durable` and `pending`.
    have: RangeSet,
    /// Lines written since the last sync.
    pending: Vec<u64>,
    used: u64,
}

impl Assembly {
    /// Assemble into `root` (which exists).
    pub(crate) fn new(root: &Path) -> Result<Assembly> {
        let dir = Dir::open(root)
            .wrap_err_with(|| format!("cannot open output directory {}", root.display()))?;
        Ok(Assembly {
            root: Arc::new(dir),
            files: HashMap::new(),
            done: Recent::default(),
            finished: Vec::new(),
            dirty_dirs: Dirty::new(),
            tick: 0,
        })
    }

    fn root_dirty(&mut self) {
        self.dirty_dirs.insert(self.root.path().to_path_buf(), Arc::clone(&self.root));
    }

    /// Write one line into its file's place. The line is durable after the next
    /// [`Assembly::sync`]; a file's last line links the whole file into place before this
    /// returns (its directory is synced by the next [`Assembly::sync`]). Errors are the
    /// directory's (disk full, permissions), not the line's.
    pub(crate) fn add(&mut self, l: &Line<'_>) -> Result<Added> {
        let key = staging_key(l.source, &l.file.sha256);
        if self.done.contains(&key) {
            return Ok(Added::Duplicate);
        }
        if !self.files.contains_key(&key) {
            match self.open(&key, l)? {
                Opened::Staged(staged) => {
                    self.files.insert(key.clone(), *staged);
                    self.evict()?;
                }
                Opened::Done => {
                    self.done.insert(key);
                    return Ok(Added::Duplicate);
                }
                Opened::Refused(why) => return Ok(Added::Refused(why)),
            }
        }
        self.tick += 1;
        let Some(s) = self.files.get_mut(&key) else {
            return Err(eyre!("internal: no staging file for {}", l.source));
        };
        if s.file != *l.file {
            return Ok(Added::Refused(format!(
                "line {} says {} has {} bytes in {} lines; earlier lines said {} in {}",
                l.line, l.source, l.file.size, l.file.lines, s.file.size, s.file.lines
            )));
        }
        s.used = self.tick;
        if s.have.contains(l.line) {
            return Ok(Added::Duplicate);
        }
        let shown = s.data_path.display().to_string();
        match s.open_data()?.write_all_at(l.body, l.offset) {
            Ok(()) => {}
            Err(e) if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::FBIG) => {
                return Ok(Added::Refused(format!(
                    "{} bytes is more than a file on this file system can hold",
                    l.file.size
                )));
            }
            Err(e) => {
                return Err(e).wrap_err_with(|| format!("cannot write {shown}; check free space"));
            }
        }
        s.have.insert(l.line);
        s.pending.push(l.line);
        if s.have.len() < s.file.lines {
            return Ok(Added::Kept);
        }
        self.complete(&key, l.line)
    }

    /// Every line is in: check the whole file and link it into place. If that fails (a
    /// directory error), the last line is not kept as durable: its redelivery must come
    /// back here, or the file would stay staged for good with nothing left in the queue.
    fn complete(&mut self, key: &str, line: u64) -> Result<Added> {
        let r = self.try_complete(key, line);
        if r.is_err()
            && let Some(s) = self.files.get_mut(key)
        {
            s.have.remove(line);
            s.pending.retain(|n| *n != line);
        }
        r
    }

    fn try_complete(&mut self, key: &str, line: u64) -> Result<Added> {
        let Some(s) = self.files.get_mut(key) else {
            return Err(eyre!("internal: no staging file to complete"));
        };
        let shown = s.data_path.display().to_string();
        s.open_data()?;
        let data = s.opened()?;
        data.sync_data().wrap_err_with(|| format!("cannot write {shown}; check free space"))?;
        let whole = Content::Digest { size: s.file.size, sha256: &s.file.sha256 };
        let intact = file_holds(data, whole).wrap_err_with(|| format!("cannot read {shown}"))?;
        if !intact {
            let why = format!(
                "the lines of {} do not add up to its file_sha256 (changed while it was \
                 produced, or mixed with another producer's lines); its {} lines are dropped",
                s.source, s.file.lines
            );
            self.forget(key);
            return Ok(Added::Refused(why));
        }
        // Where it goes is looked at again now: a directory on the way may have been
        // replaced by a symlink since the first line came.
        let target = target_path(&s.root, s.rel.as_deref(), &s.fallback)?;
        let data = s.opened()?;
        let src = Source { dir: &s.root, name: &s.data_name, file: data };
        let Some(stored) = place_first(&src, &target, &s.tags)? else {
            // Kept staged without this line: it may come again once a name is free.
            s.have.remove(line);
            s.pending.retain(|n| *n != line);
            return Ok(Added::Refused(no_name(&target.path())));
        };
        self.dirty_dirs.insert(target.dir().path().to_path_buf(), Arc::clone(target.dir()));
        self.forget(key);
        self.done.insert(key.to_string());
        Ok(Added::Complete(stored))
    }

    /// Drop a file's staging state; its files go after the next directory sync.
    fn forget(&mut self, key: &str) {
        if let Some(s) = self.files.remove(key) {
            // Marks first: marks never outlive their staging file by a crash's choice.
            self.finished.push(s.marks_name);
            self.finished.push(s.data_name);
        }
    }

    /// Make every line added so far durable: sync the staging data, then mark the lines,
    /// sync the marks and the directories; then remove the staging files of complete files.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let mut created = false;
        for s in self.files.values_mut() {
            created |= s.sync()?;
        }
        if created {
            self.root_dirty();
        }
        sync_dirs(&mut self.dirty_dirs)?;
        if self.finished.is_empty() {
            return Ok(());
        }
        for name in self.finished.drain(..) {
            match self.root.remove(&name) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).wrap_err_with(|| {
                        format!("cannot remove {}", self.root.join(&name).display())
                    });
                }
                _ => {}
            }
        }
        self.root
            .sync()
            .wrap_err_with(|| format!("cannot sync directory {}", self.root.path().display()))
    }

    /// Files still waiting for lines.
    pub(crate) fn incomplete(&self) -> Vec<Incomplete> {
        let mut v: Vec<Incomplete> = self
            .files
            .values()
            .map(|s| Incomplete {
                source: s.source.clone(),
                have: s.have.len(),
                lines: s.file.lines,
                staging: s.data_path.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.source.cmp(&b.source));
        v
    }

    /// Above [`MAX_OPEN`] open staging files, sync and close the least recently used.
    fn evict(&mut self) -> Result<()> {
        let open = self.files.values().filter(|s| s.data.is_some()).count();
        if open <= MAX_OPEN {
            return Ok(());
        }
        let oldest = self.files.values_mut().filter(|s| s.data.is_some()).min_by_key(|s| s.used);
        if let Some(s) = oldest {
            let created = s.sync()?;
            s.data = None;
            s.marks = None;
            if created {
                self.root_dirty();
            }
        }
        Ok(())
    }
}

/// A file's key: its source and whole-file SHA-256.
fn staging_key(source: &str, file_sha256: &str) -> String {
    let mut bytes = Vec::with_capacity(source.len() + 80);
    bytes.extend_from_slice(b"mqdemo-lines/1\0");
    bytes.extend_from_slice(source.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(file_sha256.as_bytes());
    sha256_hex(&bytes)[..32].to_string()
}

#[cfg(test)]
mod tests;

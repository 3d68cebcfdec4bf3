//! Staging files and their marks: a file's staging state opened (reopened after a
//! restart, or new), its lines synced and marked, its marks read back, its lock.

use super::ranges::RangeSet;
use super::{Assembly, Line, STAGING_PREFIX, Staged};
use crate::codec::text::FileIdentity;
use crate::sink::compare::Content;
use crate::sink::dir::{Access, foreign};
use crate::sink::place::{Choice, free_name, target_path};
use color_eyre::eyre::{Result, WrapErr, eyre};
use rustix::fs::FileType;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// What [`Assembly::open`] found.
pub(super) enum Opened {
    Staged(Box<Staged>),
    Done,
    Refused(String),
}

impl Assembly {
    /// The staging state of a file: reopened after a restart, or new; Done when the file is
    /// already in place (its target, or an alternative name, holds exactly its content).
    pub(super) fn open(&mut self, key: &str, l: &Line<'_>) -> Result<Opened> {
        let data_name = OsString::from(format!("{STAGING_PREFIX}{key}"));
        let marks_name = OsString::from(format!("{STAGING_PREFIX}{key}.marks"));
        let mut s = Staged {
            source: l.source.to_string(),
            rel: l.rel.map(Path::to_path_buf),
            fallback: l.fallback.to_string(),
            tags: l.tags.clone(),
            file: l.file.clone(),
            root: Arc::clone(&self.root),
            data_path: self.root.join(&data_name),
            marks_path: self.root.join(&marks_name),
            data_name,
            marks_name,
            data: None,
            marks: None,
            durable: RangeSet::default(),
            have: RangeSet::default(),
            pending: Vec::new(),
            used: self.tick,
        };
        let target = target_path(&self.root, l.rel, l.fallback)?;
        let content = Content::Digest { size: l.file.size, sha256: &l.file.sha256 };
        if let Choice::Holds(_) = free_name(&target, &s.tags, content, &HashSet::new())? {
            // Produced before, or completed just before a crash: staging files left go.
            self.finished.extend([s.marks_name, s.data_name]);
            return Ok(Opened::Done);
        }
        let in_the_way = |p: &Path| {
            Opened::Refused(format!(
                "{} is in the way of the staging files of {}; move it away",
                p.display(),
                l.source
            ))
        };
        match self.root.kind(&s.data_name) {
            Ok(Some(FileType::RegularFile)) => {
                s.open_data()?;
                return Ok(match s.read_marks()? {
                    Some(marks) => {
                        s.have = marks.clone();
                        s.durable = marks;
                        Opened::Staged(Box::new(s))
                    }
                    None => in_the_way(&s.marks_path),
                });
            }
            Ok(Some(_)) => return Ok(in_the_way(&s.data_path)),
            Ok(None) => {}
            Err(e) => {
                return Err(e)
                    .wrap_err_with(|| format!("cannot inspect {}", s.data_path.display()));
            }
        }
        // Marks without their staging file are left from a completion cut short: stale. (A
        // symlink there is removed itself, never what it points to.)
        match self.root.remove(&s.marks_name) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::IsADirectory => return Ok(in_the_way(&s.marks_path)),
            Err(e) => {
                return Err(e)
                    .wrap_err_with(|| format!("cannot remove {}", s.marks_path.display()));
            }
        }
        let file = match self.root.create(&s.data_name, false) {
            Ok(file) => file,
            // Planted between the look and the create: never opened.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(in_the_way(&s.data_path)),
            Err(e) => {
                return Err(e).wrap_err_with(|| {
                    format!(
                        "cannot create {}; check free space and permissions",
                        s.data_path.display()
                    )
                });
            }
        };
        lock(&file, &s)?;
        s.data = Some(file);
        self.root_dirty();
        Ok(Opened::Staged(Box::new(s)))
    }
}

impl Staged {
    /// The staging file, opened (without following a symlink) and locked if it was closed.
    pub(super) fn open_data(&mut self) -> Result<&File> {
        if self.data.is_none() {
            let file = self
                .root
                .open_file(&self.data_name, Access::ReadWrite)
                .wrap_err_with(|| format!("cannot open {}", self.data_path.display()))?;
            lock(&file, self)?;
            self.data = Some(file);
        }
        self.opened()
    }

    /// The staging file, already open.
    pub(super) fn opened(&self) -> Result<&File> {
        self.data.as_ref().ok_or_else(|| eyre!("internal: staging file not open"))
    }

    /// Sync the data written since the last sync, then append and sync its marks. True when
    /// the marks file was created (its directory needs a sync).
    pub(super) fn sync(&mut self) -> Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let shown = self.data_path.display().to_string();
        self.open_data()?
            .sync_data()
            .wrap_err_with(|| format!("cannot write {shown}; check free space"))?;
        let mut created = false;
        if self.marks.is_none() {
            // A new marks file, or the one this file had before its staging file was closed;
            // never through a symlink.
            let f = match self.root.create(&self.marks_name, true) {
                Ok(f) => {
                    created = true;
                    Ok(f)
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    self.root.open_file(&self.marks_name, Access::Append)
                }
                Err(e) => Err(e),
            };
            let f = f.wrap_err_with(|| format!("cannot open {}", self.marks_path.display()))?;
            self.marks = Some(f);
        }
        let mut out = Vec::with_capacity(self.pending.len() * 8 + 256);
        if created {
            out.extend_from_slice(marks_header(&self.source, &self.file).as_bytes());
        }
        for n in &self.pending {
            out.extend_from_slice(format!("{n}\n").as_bytes());
        }
        let marks = self.marks.as_mut().ok_or_else(|| eyre!("internal: marks not open"))?;
        marks.write_all(&out).and_then(|()| marks.sync_data()).wrap_err_with(|| {
            format!("cannot write {}; check free space", self.marks_path.display())
        })?;
        for n in self.pending.drain(..) {
            self.durable.insert(n);
        }
        Ok(created)
    }

    /// The lines a marks file lists as durable (none when there is no marks file); None when
    /// the marks file is not one mqdemo wrote for this file.
    pub(super) fn read_marks(&self) -> Result<Option<RangeSet>> {
        let mut text = String::new();
        let opened = self.root.open_file(&self.marks_name, Access::Read);
        let read = opened.and_then(|mut f| f.read_to_string(&mut text));
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Some(RangeSet::default())),
            Err(e) if foreign(&e) => return Ok(None),
            Err(e) => {
                return Err(e)
                    .wrap_err_with(|| format!("cannot read {}", self.marks_path.display()));
            }
        }
        let Some(records) = text.strip_prefix(&marks_header(&self.source, &self.file)) else {
            return Ok(None);
        };
        let mut set = RangeSet::default();
        // A last record without its newline was cut by a crash before its sync: not durable.
        let complete = records.rsplit_once('\n').map_or("", |(done, _)| done);
        for rec in complete.split('\n').filter(|r| !r.is_empty()) {
            match rec.parse::<u64>() {
                Ok(n) if (1..=self.file.lines).contains(&n) => {
                    set.insert(n);
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(set))
    }
}

/// Lock a staging file for this process, or say which other consumer has it.
pub(super) fn lock(file: &File, s: &Staged) -> Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            eyre!(
                "another mqdemo consumer is assembling {} in {} ({}); the lines of one file \
                 must all go to one consumer process (use --workers for parallel consumers)",
                s.source,
                s.data_path.parent().map_or(String::new(), |p| p.display().to_string()),
                s.data_path.display()
            )
        } else {
            eyre!("cannot lock {}: {e}", s.data_path.display())
        }
    })
}

/// The first line of a marks file: which file it belongs to.
pub(super) fn marks_header(source: &str, file: &FileIdentity) -> String {
    let v = serde_json::json!({
        "mqdemo_lines": 1,
        "source": source,
        "file_sha256": file.sha256,
        "file_size": file.size,
        "lines": file.lines,
    });
    format!("{v}\n")
}

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

use super::dir::{Access, Dir, foreign};
use super::{
    AltTags, Choice, Content, Dirty, Source, Stored, file_holds, free_name, no_name, place_first,
    sync_dirs, target_path,
};
use crate::codec::sha256_hex;
use crate::codec::text::FileIdentity;
use color_eyre::eyre::{Result, WrapErr, eyre};
use rustix::fs::FileType;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of staging files (hidden, never a final name); the marks file adds `.marks`.
pub const STAGING_PREFIX: &str = ".mqdemo-part.";
/// Most staging files held open at once; the least recently used are synced and closed.
const MAX_OPEN: usize = 128;
/// Completed files remembered, so late copies of their lines are known duplicates.
const DONE_CAPACITY: usize = 10_000;

/// One received line, for [`Assembly::add`].
pub struct Line<'a> {
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
pub enum Added {
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
pub struct Incomplete {
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
pub struct Assembly {
    root: Arc<Dir>,
    files: HashMap<String, Staged>,
    done: Recent,
    /// Staging and marks files (in the root) of completed files, removed after the next
    /// directory sync.
    finished: Vec<OsString>,
    dirty_dirs: Dirty,
    tick: u64,
}

/// What [`Assembly::open`] found.
enum Opened {
    Staged(Box<Staged>),
    Done,
    Refused(String),
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
    pub fn new(root: &Path) -> Result<Assembly> {
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
    pub fn add(&mut self, l: &Line<'_>) -> Result<Added> {
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
        if r.is_err() {
            if let Some(s) = self.files.get_mut(key) {
                s.have.remove(line);
                s.pending.retain(|n| *n != line);
            }
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
    pub fn sync(&mut self) -> Result<()> {
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
    pub fn incomplete(&self) -> Vec<Incomplete> {
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

    /// The staging state of a file: reopened after a restart, or new; Done when the file is
    /// already in place (its target, or an alternative name, holds exactly its content).
    fn open(&mut self, key: &str, l: &Line<'_>) -> Result<Opened> {
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

impl Staged {
    /// The staging file, opened (without following a symlink) and locked if it was closed.
    fn open_data(&mut self) -> Result<&File> {
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
    fn opened(&self) -> Result<&File> {
        self.data.as_ref().ok_or_else(|| eyre!("internal: staging file not open"))
    }

    /// Sync the data written since the last sync, then append and sync its marks. True when
    /// the marks file was created (its directory needs a sync).
    fn sync(&mut self) -> Result<bool> {
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
    fn read_marks(&self) -> Result<Option<RangeSet>> {
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
fn lock(file: &File, s: &Staged) -> Result<()> {
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
fn marks_header(source: &str, file: &FileIdentity) -> String {
    let v = serde_json::json!({
        "mqdemo_lines": 1,
        "source": source,
        "file_sha256": file.sha256,
        "file_size": file.size,
        "lines": file.lines,
    });
    format!("{v}\n")
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

/// Keys of recently completed files (bounded: the oldest are forgotten first).
#[derive(Default)]
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > DONE_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A set of line numbers as ranges: small when lines come mostly in order, whatever a
/// header claims the file's line count is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive), disjoint and never adjacent.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.ranges.range(..=n).next_back().is_some_and(|(_, end)| n < *end)
    }

    /// Add `n`; false when it was there.
    pub(crate) fn insert(&mut self, n: u64) -> bool {
        if self.contains(n) {
            return false;
        }
        let mut start = n;
        if let Some((s, e)) = self.ranges.range(..n).next_back() {
            if *e == n {
                start = *s;
            }
        }
        let end = match self.ranges.remove(&(n + 1)) {
            Some(e) => e,
            None => n + 1,
        };
        self.ranges.insert(start, end);
        self.len += 1;
        true
    }

    /// Remove `n`; false when it was not there.
    pub(crate) fn remove(&mut self, n: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=n).next_back() else {
            return false;
        };
        if n >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < n {
            self.ranges.insert(s, n);
        }
        if n + 1 < e {
            self.ranges.insert(n + 1, e);
        }
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::text::FileDigest;
    use proptest::prelude::*;
    use std::fs;

    fn identity(text: &[u8]) -> FileIdentity {
        let mut d = FileDigest::default();
        d.update(text);
        d.finish()
    }

    /// The lines of `text` as (line, offset, bytes).
    fn split(text: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut offset = 0;
        for (i, piece) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            out.push((i as u64 + 1, offset, piece.to_vec()));
            offset += piece.len() as u64;
        }
        out
    }

    fn add(a: &mut Assembly, source: &str, file: &FileIdentity, l: &(u64, u64, Vec<u8>)) -> Added {
        let rel = crate::sink::safe_relative_path(source);
        let tags = AltTags::from_id(&file.sha256[..32]);
        let line = Line {
            source,
            rel: rel.as_deref(),
            fallback: "fallback.txt",
            tags: &tags,
            file,
            line: l.0,
            offset: l.1,
            body: &l.2,
        };
        a.add(&line).expect("add")
    }

    fn visible(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .map(|n| (n.clone(), fs::read(dir.join(&n)).expect("read")))
            .collect();
        v.sort();
        v
    }

    fn staging_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
            .count()
    }

    #[test]
    fn lines_in_any_order_give_the_file_and_two_files_of_one_name_stay_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Assembly::new(dir.path()).expect("assembly");
        let (one, two) = (b"a1\na2\na3\n".to_vec(), b"b1\nb2\nb3\nb4\nb5".to_vec());
        let (f1, f2) = (identity(&one), identity(&two));
        let mut lines1 = split(&one);
        let mut lines2 = split(&two);
        lines1.reverse();
        lines2.swap(0, 3);
        let mut outcomes = Vec::new();
        for (l1, l2) in lines1.iter().zip(&lines2) {
            outcomes.push(add(&mut a, "n.txt", &f1, l1));
            outcomes.push(add(&mut a, "n.txt", &f2, l2));
        }
        for l in &lines2[3..] {
            outcomes.push(add(&mut a, "n.txt", &f2, l));
        }
        a.sync().expect("sync");
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Added::Complete(_))).count(), 2);
        let files = visible(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.iter().any(|(n, b)| n == "n.txt" && *b == one));
        assert!(files.iter().any(|(n, b)| n != "n.txt" && *b == two));
        assert_eq!(staging_files(dir.path()), 0);
        assert_eq!(add(&mut a, "n.txt", &f1, &lines1[0]), Added::Duplicate, "late copy");
    }

    #[test]
    fn a_restart_resumes_from_the_marks_and_never_touches_a_foreign_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("n.txt"), b"the user's\n").expect("seed");
        let text = b"1\n2\n3\n4\n".to_vec();
        let f = identity(&text);
        let lines = split(&text);
        {
            let mut a = Assembly::new(dir.path()).expect("assembly");
            assert_eq!(add(&mut a, "n.txt", &f, &lines[1]), Added::Kept);
            assert_eq!(add(&mut a, "n.txt", &f, &lines[0]), Added::Kept);
            a.sync().expect("sync");
            // Written but never synced: not marked, so it must come again.
            assert_eq!(add(&mut a, "n.txt", &f, &lines[3]), Added::Kept);
            assert_eq!(a.incomplete()[0].have, 3);
        }
        let mut a = Assembly::new(dir.path()).expect("assembly");
        assert_eq!(add(&mut a, "n.txt", &f, &lines[0]), Added::Duplicate);
        assert_eq!(add(&mut a, "n.txt", &f, &lines[2]), Added::Kept);
        assert_eq!(a.incomplete()[0].have, 3, "line 4 was not durable");
        let done = add(&mut a, "n.txt", &f, &lines[3]);
        a.sync().expect("sync");
        let alt = dir.path().join(format!("n.{}.txt", &f.sha256[..12]));
        assert_eq!(
            done,
            Added::Complete(Stored::Renamed {
                wanted: dir.path().join("n.txt"),
                written: alt.clone()
            })
        );
        assert_eq!(fs::read(&alt).expect("read"), text);
        assert_eq!(fs::read(dir.path().join("n.txt")).expect("read"), b"the user's\n");
        assert!(a.incomplete().is_empty());
        // Produced again later, by a consumer that forgot: the file is found in place.
        let mut fresh = Assembly::new(dir.path()).expect("assembly");
        assert_eq!(add(&mut fresh, "n.txt", &f, &lines[2]), Added::Duplicate);
        assert_eq!(staging_files(dir.path()), 0);
    }

    #[test]
    fn a_file_that_cannot_be_placed_is_placed_when_its_last_line_comes_again() {
        // The target directory refuses the link (immutable): the run stops, the last line is
        // not marked, and its redelivery to a restarted consumer completes the file.
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("d");
        fs::create_dir(&sub).expect("mkdir");
        let text = b"one\ntwo\nthree\n".to_vec();
        let (f, lines) = (identity(&text), split(&text));
        let chattr = |flag: &str| {
            let ok = std::process::Command::new("chattr").arg(flag).arg(&sub).status();
            assert!(ok.is_ok_and(|s| s.success()), "chattr {flag} (needs root on ext4)");
        };
        {
            let mut a = Assembly::new(dir.path()).expect("assembly");
            assert_eq!(add(&mut a, "d/x.txt", &f, &lines[0]), Added::Kept);
            assert_eq!(add(&mut a, "d/x.txt", &f, &lines[1]), Added::Kept);
            chattr("+i");
            let rel = crate::sink::safe_relative_path("d/x.txt");
            let tags = AltTags::from_id(&f.sha256[..32]);
            let last = Line {
                source: "d/x.txt",
                rel: rel.as_deref(),
                fallback: "fallback.txt",
                tags: &tags,
                file: &f,
                line: 3,
                offset: lines[2].1,
                body: &lines[2].2,
            };
            let failed = a.add(&last);
            chattr("-i");
            assert!(failed.is_err(), "the directory refused the link");
            a.sync().expect("the first two lines are durable");
        }
        let mut a = Assembly::new(dir.path()).expect("assembly");
        assert!(matches!(add(&mut a, "d/x.txt", &f, &lines[2]), Added::Complete(_)));
        a.sync().expect("sync");
        assert_eq!(fs::read(sub.join("x.txt")).expect("placed"), text);
    }

    #[test]
    fn lines_that_do_not_add_up_fail_and_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Assembly::new(dir.path()).expect("assembly");
        let f = identity(b"x\ny\n");
        add(&mut a, "n.txt", &f, &(1, 0, b"x\n".to_vec()));
        let last = add(&mut a, "n.txt", &f, &(2, 2, b"z\n".to_vec()));
        assert!(matches!(&last, Added::Refused(why) if why.contains("do not add up")), "{last:?}");
        a.sync().expect("sync");
        assert!(visible(dir.path()).is_empty());
        assert_eq!(staging_files(dir.path()), 0);
    }

    #[test]
    fn a_second_process_on_the_same_file_is_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = identity(b"1\n2\n");
        let mut a = Assembly::new(dir.path()).expect("assembly");
        add(&mut a, "n.txt", &f, &(1, 0, b"1\n".to_vec()));
        a.sync().expect("sync");
        let mut b = Assembly::new(dir.path()).expect("assembly");
        let rel = PathBuf::from("n.txt");
        let tags = AltTags::from_id("t");
        let line = Line {
            source: "n.txt",
            rel: Some(&rel),
            fallback: "f",
            tags: &tags,
            file: &f,
            line: 2,
            offset: 2,
            body: b"2\n",
        };
        let err = b.add(&line).map(|_| ()).expect_err("locked");
        assert!(format!("{err}").contains("another mqdemo consumer"), "{err}");
    }

    #[test]
    fn more_files_than_open_slots_are_closed_and_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Assembly::new(dir.path()).expect("assembly");
        let texts: Vec<Vec<u8>> =
            (0..MAX_OPEN + 40).map(|i| format!("{i} one\n{i} two\n").into_bytes()).collect();
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(
                add(&mut a, &format!("f{i}.txt"), &identity(text), &split(text)[0]),
                Added::Kept
            );
        }
        let open = a.files.values().filter(|s| s.data.is_some()).count();
        assert!(open <= MAX_OPEN, "{open} staging files open");
        for (i, text) in texts.iter().enumerate() {
            let done = add(&mut a, &format!("f{i}.txt"), &identity(text), &split(text)[1]);
            assert!(matches!(done, Added::Complete(Stored::Written(_))), "{i}: {done:?}");
        }
        a.sync().expect("sync");
        assert_eq!(visible(dir.path()).len(), texts.len());
        assert_eq!(staging_files(dir.path()), 0);
    }

    #[test]
    fn things_in_the_way_of_staging_files_fail_that_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t1, t2, t3) = (b"1\n2\n".to_vec(), b"3\n4\n".to_vec(), b"5\n6\n".to_vec());
        let (f1, f2, f3) = (identity(&t1), identity(&t2), identity(&t3));
        let staging = |source: &str, f: &FileIdentity| {
            dir.path().join(format!("{STAGING_PREFIX}{}", staging_key(source, &f.sha256)))
        };
        // A directory where the staging file goes; a symlink where the marks go.
        fs::create_dir(staging("a.txt", &f1)).expect("mkdir");
        fs::write(staging("b.txt", &f2), b"").expect("seed");
        let marks = format!("{}.marks", staging("b.txt", &f2).display());
        std::os::unix::fs::symlink("/etc/passwd", &marks).expect("symlink");
        // Stale marks of a completion cut short, claiming both lines.
        let stale = format!("{}.marks", staging("c.txt", &f3).display());
        fs::write(&stale, format!("{}1\n2\n", marks_header("c.txt", &f3))).expect("seed");
        let mut a = Assembly::new(dir.path()).expect("assembly");
        let first = add(&mut a, "a.txt", &f1, &split(&t1)[0]);
        assert!(matches!(&first, Added::Refused(why) if why.contains("in the way")), "{first:?}");
        let second = add(&mut a, "b.txt", &f2, &split(&t2)[0]);
        assert!(matches!(&second, Added::Refused(why) if why.contains("in the way")), "{second:?}");
        assert_eq!(add(&mut a, "c.txt", &f3, &split(&t3)[1]), Added::Kept, "stale marks ignored");
        assert!(matches!(add(&mut a, "c.txt", &f3, &split(&t3)[0]), Added::Complete(_)));
        a.sync().expect("sync");
        assert_eq!(visible(dir.path()), [("c.txt".to_string(), t3)]);
        assert_eq!(
            fs::read_to_string("/etc/passwd").map(|s| s.contains("mqdemo")).ok(),
            Some(false)
        );
    }

    proptest! {
        #[test]
        fn range_set_is_a_set(ops in prop::collection::vec((any::<bool>(), 0u64..64), 0..200)) {
            let mut set = RangeSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (add, n) in ops {
                if add {
                    prop_assert_eq!(set.insert(n), model.insert(n));
                } else {
                    prop_assert_eq!(set.remove(n), model.remove(&n));
                }
                prop_assert_eq!(set.len(), model.len() as u64);
                for k in 0..65 {
                    prop_assert_eq!(set.contains(k), model.contains(&k));
                }
                let ranges: Vec<(u64, u64)> = set.ranges.iter().map(|(s, e)| (*s, *e)).collect();
                prop_assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{:?}", ranges);
            }
        }

        #[test]
        fn any_arrival_order_gives_back_the_file(
            text in "([a-c]{0,3}\n){1,12}[a-c]{0,2}",
            seed in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut a = Assembly::new(dir.path()).expect("assembly");
            let f = identity(text.as_bytes());
            let mut lines = split(text.as_bytes());
            let mut x = seed;
            for i in (1..lines.len()).rev() {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                lines.swap(i, (x >> 33) as usize % (i + 1));
            }
            for (i, l) in lines.iter().enumerate() {
                add(&mut a, "p.txt", &f, l);
                if i % 3 == 0 {
                    a.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                // Every line again, as a redelivery: never written twice.
                prop_assert!(matches!(add(&mut a, "p.txt", &f, l), Added::Duplicate));
            }
            a.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(visible(dir.path()), vec![("p.txt".to_string(), text.into_bytes())]);
            prop_assert_eq!(staging_files(dir.path()), 0);
        }
    }
}

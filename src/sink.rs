//! Safe, atomic file writing for the consumers.
//!
//! A file is written to a hidden temporary name in its final directory, fsynced, then
//! linked into place without replacing anything (so a crash leaves no partial file under a
//! final name, and an existing file with other content is never overwritten). Names come
//! from the sender's `source` header only when every path component is safe.
//!
//! Files are committed in groups: [`DirSink::store`] writes the temporary file and starts
//! its write-back; [`DirSink::sync`] (called before the consumer acks) waits for the data of
//! every file in the group, links them into place and fsyncs their directories. One group
//! shares its journal commits, which makes many small files several times faster than an
//! fsync each, with the same guarantee: nothing is acked before it is durable.
//!
//! A name that holds other content gets an alternative ([`candidates`]); a file for which no
//! name is free is refused at [`DirSink::store`] (that one message fails), never half-stored.
//! Files sent line by line are assembled by [`lines::Assembly`].
//!
//! Every file operation goes through [`dir::Dir`]: relative to a directory held open, never
//! through a symlink (a symlink planted at any name, or a subdirectory replaced by one after
//! it was checked, is never followed).

mod compare;
mod dir;
pub(crate) mod lines;
mod place;

pub(crate) use crate::codec::path::{AltTags, MAX_COUNTER, candidates};
use color_eyre::eyre::{Result, WrapErr, eyre};
use compare::Content;
use dir::Dir;
use place::{
    Choice, Source, Target, free_name, no_name, place_first, sync_dirs, target_path, write_temp,
};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of temporary files (hidden, never a final name).
pub(crate) const TEMP_PREFIX: &str = ".mqdemo-tmp.";
/// Most files in one uncommitted group (each holds an open file descriptor).
const GROUP_FILES: usize = 64;
/// Most bytes in one uncommitted group.
const GROUP_BYTES: u64 = 64 * 1024 * 1024;

/// What happened to a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Written under the wanted name.
    Written(PathBuf),
    /// A file with the same content was already there: nothing written.
    Duplicate(PathBuf),
    /// The wanted name held other content; written under this other name instead.
    Renamed {
        /// The name the sender asked for.
        wanted: PathBuf,
        /// Where the file was written.
        written: PathBuf,
    },
}

/// What [`DirSink::store`] did with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Written to a temporary file; the next [`DirSink::sync`] links it into place.
    Pending,
    /// A file with this content is already there (at this path): nothing to write.
    Duplicate(PathBuf),
    /// No name can hold it (every candidate holds other content or is in the way): this
    /// message cannot be stored. The reason, for people.
    Refused(String),
}

/// A directory that received files are written into.
pub(crate) struct DirSink {
    root: Arc<Dir>,
    /// Directories whose entries changed since the last `sync`.
    dirty_dirs: Dirty,
    /// Written temporary files waiting for [`DirSink::sync`] to commit them.
    group: Vec<Pending>,
    group_bytes: u64,
    /// Names the group's files will take (so two of them never count on the same one).
    reserved: HashSet<PathBuf>,
}

/// Directories whose entries changed, by path.
pub(crate) type Dirty = HashMap<PathBuf, Arc<Dir>>;

/// A temporary file (in its target's directory) not yet linked into place; removed when
/// dropped.
struct Pending {
    tmp: OsString,
    file: File,
    target: Target,
    tags: AltTags,
    reserved: PathBuf,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Linked into place or abandoned: either way the temporary name goes.
        let _ = self.target.dir.remove(&self.tmp);
    }
}

impl DirSink {
    /// Create `root` if needed.
    pub(crate) fn new(root: &Path) -> Result<DirSink> {
        let cannot = || {
            format!(
                "cannot create output directory {}; check the path and permissions",
                root.display()
            )
        };
        fs::create_dir_all(root).wrap_err_with(cannot)?;
        let dir = Dir::open(root).wrap_err_with(cannot)?;
        Ok(DirSink {
            root: Arc::new(dir),
            dirty_dirs: Dirty::new(),
            group: Vec::new(),
            group_bytes: 0,
            reserved: HashSet::new(),
        })
    }

    /// The output directory.
    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// Queue `body` for `rel` (already sanitised) or, when that is unusable, `fallback` (a
    /// plain file name): unless a file with this content is there already, or no name can
    /// hold it (see [`Queued`]), it is written to a temporary file now and linked into place
    /// by the next [`DirSink::sync`], which reports what became of it. `tags` make the
    /// alternative names used when the wanted one holds other content.
    pub(crate) fn store(
        &mut self,
        rel: Option<&Path>,
        fallback: &str,
        tags: &AltTags,
        body: &[u8],
    ) -> Result<Queued> {
        let target = target_path(&self.root, rel, fallback)?;
        let reserved = match free_name(&target, tags, Content::Bytes(body), &self.reserved)? {
            Choice::Free(path) => path,
            Choice::Holds(path) => return Ok(Queued::Duplicate(path)),
            Choice::None => return Ok(Queued::Refused(no_name(&target.path()))),
        };
        let (tmp, file) = write_temp(&target.dir, body)?;
        self.reserved.insert(reserved.clone());
        self.group.push(Pending { tmp, file, target, tags: tags.clone(), reserved });
        self.group_bytes += body.len() as u64;
        Ok(Queued::Pending)
    }

    /// Forget the file queued last (its content turned out to be bad): it is never linked.
    pub(crate) fn discard_last(&mut self) {
        if let Some(p) = self.group.pop() {
            let len = p.file.metadata().map_or(0, |m| m.len());
            self.group_bytes = self.group_bytes.saturating_sub(len);
            self.reserved.remove(&p.reserved);
        }
    }

    /// Whether the uncommitted group is full: the caller should [`DirSink::sync`] now.
    pub(crate) fn group_full(&self) -> bool {
        self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES
    }

    /// Make everything stored so far durable and in place: wait for the data of every
    /// queued file, link each into place (in the order stored) and fsync the changed
    /// directories. Returns what became of each queued file, in order.
    pub(crate) fn sync(&mut self) -> Result<Vec<Stored>> {
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        self.reserved.clear();
        for p in &group {
            p.file.sync_data().wrap_err_with(|| {
                format!("cannot write {}; check free space", p.target.dir.join(&p.tmp).display())
            })?;
        }
        let mut stored = Vec::with_capacity(group.len());
        for p in group {
            // From the wanted name on, so that identical files of one group are one file.
            let tmp = Source { dir: &p.target.dir, name: &p.tmp, file: &p.file };
            let Some(done) = place_first(&tmp, &p.target, &p.tags)? else {
                return Err(eyre!("{}", no_name(&p.target.path())));
            };
            self.dirty_dirs.insert(p.target.dir.path().to_path_buf(), Arc::clone(&p.target.dir));
            stored.push(done);
        }
        sync_dirs(&mut self.dirty_dirs)?;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests;

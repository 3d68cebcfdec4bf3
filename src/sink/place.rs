//! Placing files: where a file for a relative path goes (its directories opened without
//! following a symlink), temporary files written and flushed, the first free candidate
//! name, and links into place that never replace anything.

use super::compare::{Content, holds, name_unusable};
use super::dir::Dir;
use super::{AltTags, Dirty, MAX_COUNTER, Stored, TEMP_PREFIX, candidates};
use color_eyre::eyre::{Result, WrapErr};
use rustix::fs::FileType;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a file goes: a name in a directory held open.
#[derive(Clone)]
pub(crate) struct Target {
    pub(super) dir: Arc<Dir>,
    pub(super) name: OsString,
}

impl Target {
    /// Its path, for messages and reports.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The directory it goes in.
    pub(crate) fn dir(&self) -> &Arc<Dir> {
        &self.dir
    }

    /// Every name it may take, in order (see [`candidates`]).
    fn names<'a>(&'a self, tags: &'a AltTags) -> impl Iterator<Item = OsString> + 'a {
        candidates(Path::new(&self.name), tags).map(PathBuf::into_os_string)
    }
}

impl Stored {
    fn at(index: usize, wanted: &Path, path: PathBuf, placed: Placed) -> Stored {
        match (placed, index) {
            (Placed::Same, _) => Stored::Duplicate(path),
            (_, 0) => Stored::Written(path),
            _ => Stored::Renamed { wanted: wanted.to_path_buf(), written: path },
        }
    }
}

/// Why a file wanted at `target` cannot be stored.
pub(super) fn no_name(target: &Path) -> String {
    format!(
        "no free name for {}: it and its {MAX_COUNTER}+ alternative names hold other content \
         or are in the way; move them away",
        target.display()
    )
}

/// Write `body` to a new temporary file in `dir` and start its write-back (so that the
/// group's later fdatasync calls mostly find the data already on disk).
pub(super) fn write_temp(dir: &Dir, body: &[u8]) -> Result<(OsString, File)> {
    // Unique across every DirSink of the process (workers share directories).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = OsString::from(format!("{TEMP_PREFIX}{}.{n}", std::process::id()));
    let mut f = dir.create(&tmp, false).wrap_err_with(|| {
        format!("cannot create {}; check free space and permissions", dir.join(&tmp).display())
    })?;
    if let Err(e) = f.write_all(body) {
        let _ = dir.remove(&tmp);
        return Err(e).wrap_err_with(|| {
            format!("cannot write {}; check free space", dir.join(&tmp).display())
        });
    }
    start_write_back(&f);
    Ok((tmp, f))
}

/// fsync each directory (their entries changed), and forget them.
pub(crate) fn sync_dirs(dirs: &mut Dirty) -> Result<()> {
    for (path, dir) in dirs.drain() {
        dir.sync().wrap_err_with(|| format!("cannot sync directory {}", path.display()))?;
    }
    Ok(())
}

/// Where a file for `rel` goes: `rel` under `root` (its directories opened level by level,
/// created where missing, never through a symlink or a non-directory), else `fallback` in
/// `root` itself.
pub(crate) fn target_path(root: &Arc<Dir>, rel: Option<&Path>, fallback: &str) -> Result<Target> {
    if let Some(target) = rel.map(|r| prepare(root, r)).transpose()?.flatten() {
        return Ok(target);
    }
    Ok(Target { dir: Arc::clone(root), name: OsString::from(fallback) })
}

/// `rel`'s directory under `root`, opened (and created where missing) without following a
/// symlink, and its name. None when the path cannot be used safely (a symlink or a
/// non-directory on the way, or something other than a file at the name).
pub(super) fn prepare(root: &Arc<Dir>, rel: &Path) -> Result<Option<Target>> {
    let Some(name) = rel.file_name() else {
        return Ok(None);
    };
    let dir = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        None => Arc::clone(root),
        Some(parent) => match root.subdirs(parent) {
            Ok(Some(dir)) => Arc::new(dir),
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(e).wrap_err_with(|| {
                    format!("cannot create directory {}", root.join(parent.as_os_str()).display())
                });
            }
        },
    };
    match dir.kind(name) {
        Ok(Some(kind)) if kind != FileType::RegularFile => Ok(None),
        _ => Ok(Some(Target { dir, name: name.to_os_string() })),
    }
}

/// Ask the kernel to start writing `f`'s dirty pages now, without waiting: on Linux,
/// `POSIX_FADV_DONTNEED` starts write-back of the whole file (and we never read it back).
/// Only a hint: durability comes from the fdatasync in [`super::DirSink::sync`].
pub(super) fn start_write_back(f: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = f;
}

/// The first candidate name for `target` that is free (and not `reserved`), or that already
/// holds `content`; None when every candidate holds other content or is in the way.
pub(super) enum Choice {
    Free(PathBuf),
    Holds(PathBuf),
    None,
}

pub(super) fn free_name(
    target: &Target,
    tags: &AltTags,
    content: Content<'_>,
    reserved: &HashSet<PathBuf>,
) -> Result<Choice> {
    for name in target.names(tags) {
        let path = target.dir.join(&name);
        if reserved.contains(&path) {
            continue;
        }
        match target.dir.kind(&name) {
            Ok(None) => return Ok(Choice::Free(path)),
            Err(e) if name_unusable(&e) => {}
            Err(e) => return Err(e).wrap_err_with(|| format!("cannot inspect {}", path.display())),
            Ok(Some(_)) if holds(&target.dir, &name, content)? => return Ok(Choice::Holds(path)),
            Ok(Some(_)) => {}
        }
    }
    Ok(Choice::None)
}

/// A complete file to link into place: its name in its directory, and its open handle.
pub(super) struct Source<'a> {
    pub(super) dir: &'a Dir,
    pub(super) name: &'a OsStr,
    pub(super) file: &'a File,
}

/// Link `src` to the first candidate name of `target` that is free or already holds the same
/// bytes. None when every candidate holds other content.
pub(super) fn place_first(
    src: &Source<'_>,
    target: &Target,
    tags: &AltTags,
) -> Result<Option<Stored>> {
    for (i, name) in target.names(tags).enumerate() {
        match place(src, &target.dir, &name)? {
            Some(Placed::Different) | None => {}
            Some(placed) => {
                let path = target.dir.join(&name);
                return Ok(Some(Stored::at(i, &target.path(), path, placed)));
            }
        }
    }
    Ok(None)
}

pub(super) enum Placed {
    Linked,
    Same,
    Different,
}

/// Link `src` as `name` in `dir` unless something is there (a symlink is never followed);
/// then compare contents. None when the name cannot be used at all (too long).
pub(super) fn place(src: &Source<'_>, dir: &Dir, name: &OsStr) -> Result<Option<Placed>> {
    match src.dir.link(src.name, dir, name) {
        Ok(()) => Ok(Some(Placed::Linked)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if holds(dir, name, Content::File(src.file))? {
                Ok(Some(Placed::Same))
            } else {
                Ok(Some(Placed::Different))
            }
        }
        Err(e) if name_unusable(&e) => Ok(None),
        Err(e) => Err(e).wrap_err_with(|| format!("cannot create {}", dir.join(name).display())),
    }
}

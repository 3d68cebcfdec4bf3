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

mod dir;
pub mod lines;

use color_eyre::eyre::{Result, WrapErr, eyre};
use dir::{Access, Dir, foreign};
use rustix::fs::FileType;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest path component accepted from a `source` header (bytes).
const MAX_COMPONENT: usize = 200;
/// Most directory levels accepted from a `source` header.
const MAX_DEPTH: usize = 16;
/// Prefix of temporary files (hidden, never a final name).
pub const TEMP_PREFIX: &str = ".mqdemo-tmp.";
/// Most files in one uncommitted group (each holds an open file descriptor).
const GROUP_FILES: usize = 64;
/// Most bytes in one uncommitted group.
const GROUP_BYTES: u64 = 64 * 1024 * 1024;
/// Highest counter of an alternative name (`name.TAG.N.ext`, N from 2).
pub const MAX_COUNTER: u32 = 100;

/// Turn a sender-supplied `source` into a relative path, or None when any part of it is
/// unsafe: absolute, `..`, `.`, empty components, NUL/control characters, format characters
/// (bidirectional overrides, zero-width characters), backslashes, colons, Windows device
/// names, trailing dots or spaces, hidden names, over-long names.
pub fn safe_relative_path(source: &str) -> Option<PathBuf> {
    if source.is_empty() || source.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = source.split('/').collect();
    if parts.len() > MAX_DEPTH || !parts.iter().all(|p| safe_component(p)) {
        return None;
    }
    let path: PathBuf = parts.iter().collect();
    // Defence in depth: the joined path must be purely normal components.
    path.components().all(|c| matches!(c, Component::Normal(_))).then_some(path)
}

fn safe_component(part: &str) -> bool {
    if part.is_empty() || part.len() > MAX_COMPONENT || part.starts_with('.') {
        return false;
    }
    if part.ends_with(' ') || part.ends_with('.') {
        return false;
    }
    if part
        .chars()
        .any(|c| invisible(c) || matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        return false;
    }
    !is_windows_device(part)
}

/// Characters that do not show as themselves in a name: controls (Unicode Cc), format
/// characters (Cf: bidirectional overrides and isolates that make `evil\u{202e}gnp.exe` show
/// as `evilexe.png`, zero-width characters, BOM, soft hyphen, tags) and line and paragraph
/// separators (Zl, Zp). The Cf list is Unicode 15.1's.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

fn is_windows_device(part: &str) -> bool {
    let stem = part.split('.').next().unwrap_or(part).trim_end().to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

/// What happened to a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
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

impl Stored {
    fn at(index: usize, wanted: &Path, path: PathBuf, placed: Placed) -> Stored {
        match (placed, index) {
            (Placed::Same, _) => Stored::Duplicate(path),
            (_, 0) => Stored::Written(path),
            _ => Stored::Renamed { wanted: wanted.to_path_buf(), written: path },
        }
    }
}

/// What [`DirSink::store`] did with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Written to a temporary file; the next [`DirSink::sync`] links it into place.
    Pending,
    /// A file with this content is already there (at this path): nothing to write.
    Duplicate(PathBuf),
    /// No name can hold it (every candidate holds other content or is in the way): this
    /// message cannot be stored. The reason, for people.
    Refused(String),
}

/// The tags of a file's alternative names: `name.SHORT.ext`, then `name.FULL.ext`, then
/// `name.SHORT.N.ext` (see [`candidates`]). Both must be safe file-name characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltTags {
    /// A short tag (the id's first 12 characters).
    pub short: String,
    /// The whole (safe) id.
    pub full: String,
}

impl AltTags {
    /// Tags from a safe id: its first 12 characters, and all of it.
    pub fn from_id(id: &str) -> AltTags {
        AltTags { short: id.chars().take(12).collect(), full: id.to_string() }
    }
}

/// Every name a file wanted at `target` may take, in order: `target`, `name.SHORT.ext`,
/// `name.FULL.ext` (when FULL is longer), then `name.SHORT.N.ext` for N in 2..=[`MAX_COUNTER`].
pub fn candidates<'a>(target: &'a Path, tags: &'a AltTags) -> impl Iterator<Item = PathBuf> + 'a {
    let full = (tags.full != tags.short).then(|| alternative_name(target, &tags.full));
    std::iter::once(target.to_path_buf())
        .chain(std::iter::once(alternative_name(target, &tags.short)))
        .chain(full)
        .chain((2..=MAX_COUNTER).map(|n| alternative_name(target, &format!("{}.{n}", tags.short))))
}

/// Where a file goes: a name in a directory held open.
#[derive(Clone)]
pub(crate) struct Target {
    dir: Arc<Dir>,
    name: OsString,
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

/// A directory that received files are written into.
pub struct DirSink {
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
    pub fn new(root: &Path) -> Result<DirSink> {
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
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Queue `body` for `rel` (already sanitised) or, when that is unusable, `fallback` (a
    /// plain file name): unless a file with this content is there already, or no name can
    /// hold it (see [`Queued`]), it is written to a temporary file now and linked into place
    /// by the next [`DirSink::sync`], which reports what became of it. `tags` make the
    /// alternative names used when the wanted one holds other content.
    pub fn store(
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
    pub fn discard_last(&mut self) {
        if let Some(p) = self.group.pop() {
            let len = p.file.metadata().map_or(0, |m| m.len());
            self.group_bytes = self.group_bytes.saturating_sub(len);
            self.reserved.remove(&p.reserved);
        }
    }

    /// Whether the uncommitted group is full: the caller should [`DirSink::sync`] now.
    pub fn group_full(&self) -> bool {
        self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES
    }

    /// Make everything stored so far durable and in place: wait for the data of every
    /// queued file, link each into place (in the order stored) and fsync the changed
    /// directories. Returns what became of each queued file, in order.
    pub fn sync(&mut self) -> Result<Vec<Stored>> {
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

/// Why a file wanted at `target` cannot be stored.
fn no_name(target: &Path) -> String {
    format!(
        "no free name for {}: it and its {MAX_COUNTER}+ alternative names hold other content \
         or are in the way; move them away",
        target.display()
    )
}

/// Write `body` to a new temporary file in `dir` and start its write-back (so that the
/// group's later fdatasync calls mostly find the data already on disk).
fn write_temp(dir: &Dir, body: &[u8]) -> Result<(OsString, File)> {
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
fn prepare(root: &Arc<Dir>, rel: &Path) -> Result<Option<Target>> {
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
/// Only a hint: durability comes from the fdatasync in [`DirSink::sync`].
fn start_write_back(f: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = f;
}

/// Content a name is checked against.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The bytes of this (temporary) file.
    File(&'a File),
    /// Bytes of this size and lowercase hex SHA-256.
    Digest { size: u64, sha256: &'a str },
}

/// The first candidate name for `target` that is free (and not `reserved`), or that already
/// holds `content`; None when every candidate holds other content or is in the way.
enum Choice {
    Free(PathBuf),
    Holds(PathBuf),
    None,
}

fn free_name(
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

/// An error that rules out one name, not the directory: too long, or not a directory on the
/// way (a file where a directory should be).
fn name_unusable(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::NAMETOOLONG | Errno::NOTDIR | Errno::MLINK))
}

/// A complete file to link into place: its name in its directory, and its open handle.
struct Source<'a> {
    dir: &'a Dir,
    name: &'a OsStr,
    file: &'a File,
}

/// Link `src` to the first candidate name of `target` that is free or already holds the same
/// bytes. None when every candidate holds other content.
fn place_first(src: &Source<'_>, target: &Target, tags: &AltTags) -> Result<Option<Stored>> {
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

enum Placed {
    Linked,
    Same,
    Different,
}

/// Link `src` as `name` in `dir` unless something is there (a symlink is never followed);
/// then compare contents. None when the name cannot be used at all (too long).
fn place(src: &Source<'_>, dir: &Dir, name: &OsStr) -> Result<Option<Placed>> {
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

/// Whether `name` in `dir` is a regular file (not a symlink) holding exactly `content`.
fn holds(dir: &Dir, name: &OsStr, content: Content<'_>) -> Result<bool> {
    let file = match dir.open_file(name, Access::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound || name_unusable(&e) || foreign(&e) => {
            return Ok(false);
        }
        Err(e) => {
            return Err(e).wrap_err_with(|| format!("cannot read {}", dir.join(name).display()));
        }
    };
    file_holds(&file, content).wrap_err_with(|| format!("cannot read {}", dir.join(name).display()))
}

/// Whether the open `file` holds exactly `content` (read from its start, whatever its
/// offset).
fn file_holds(file: &File, content: Content<'_>) -> std::io::Result<bool> {
    let want_len = match content {
        Content::Bytes(b) => b.len() as u64,
        Content::File(other) => other.metadata()?.len(),
        Content::Digest { size, .. } => size,
    };
    if file.metadata()?.len() != want_len {
        return Ok(false);
    }
    match content {
        Content::Bytes(b) => same_stream(At::new(file), b),
        Content::File(other) => same_stream(At::new(file), At::new(other)),
        Content::Digest { sha256, .. } => Ok(stream_sha256(At::new(file))? == sha256),
    }
}

/// A file read from its start with positional reads (its own offset is left alone).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> At<'a> {
    fn new(file: &'a File) -> At<'a> {
        At { file, pos: 0 }
    }
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Whether two readers yield the same bytes, compared in pieces so memory stays bounded
/// whatever the files' size.
fn same_stream(mut a: impl Read, mut b: impl Read) -> std::io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fill `buf` as far as the reader goes; the count read (short only at the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Lowercase hex SHA-256 of what a reader yields, read in pieces.
fn stream_sha256(mut r: impl Read) -> std::io::Result<String> {
    let mut digest = crate::codec::text::FileDigest::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = read_full(&mut r, &mut buf)?;
        if n == 0 {
            return Ok(digest.finish().sha256);
        }
        digest.update(&buf[..n]);
    }
}

/// `dir/name.ext` -> `dir/name.TAG.ext`.
fn alternative_name(target: &Path, tag: &str) -> PathBuf {
    let stem = target.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match target.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    target.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_compare_in_pieces() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut other = big.clone();
        assert!(same_stream(&big[..], &other[..]).expect("read"));
        other[199_999] ^= 1;
        assert!(!same_stream(&big[..], &other[..]).expect("read"), "last byte differs");
        assert!(!same_stream(&big[..], &big[..199_999]).expect("read"), "shorter");
        assert!(same_stream(&b""[..], &b""[..]).expect("read"));
    }

    #[test]
    fn hostile_sources_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../../x",
            "a/../../b",
            "a/./../../b",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "..",
            ".",
            ".hidden",
            "a/.ssh/x",
            "CON",
            "nul.txt",
            "com1.png",
            "LPT9",
            "a\\..\\b",
            "c:/x",
            "C:x",
            "tab\there",
            "trailing.",
            "trailing ",
            &"x".repeat(300),
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_and_bidi_characters_are_refused_in_every_component() {
        // Found by attack: `evil\u{202e}gnp.exe` passed and shows as `evilexe.png`.
        for bad in [
            "evil\u{202e}gnp.exe",
            "d\u{202e}ir/a.txt",
            "a/b\u{2066}c.txt",
            "zero\u{200b}width.png",
            "\u{200f}rlm.txt",
            "\u{feff}bom.txt",
            "arabic\u{061c}mark.txt",
            "soft\u{00ad}hyphen.txt",
            "tag\u{e0041}.txt",
            "line\u{2028}sep.txt",
            "para\u{2029}sep.txt",
            "c1\u{0085}next.txt",
            "del\u{7f}.txt",
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ordinary_sources_are_kept() {
        for good in [
            "a.png",
            "shapes/circle.png",
            "Zoë/über 1.txt",
            "שלום/مرحبا.txt",
            "日本語/ファイル.png",
            "com10.png",
            "console.jpg",
            "a b/c-d_e.f",
        ] {
            let p = safe_relative_path(good).unwrap_or_else(|| panic!("{good} refused"));
            assert_eq!(p, PathBuf::from(good));
        }
    }

    fn tags(id: &str) -> AltTags {
        AltTags::from_id(id)
    }

    #[test]
    fn store_never_overwrites_different_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let rel = PathBuf::from("sub/a.png");
        let queued = sink.store(Some(&rel), "x.bin", &tags("id1"), b"one").expect("store");
        assert_eq!(queued, Queued::Pending);
        assert!(!dir.path().join("sub/a.png").exists(), "in place only once synced");
        let first = sink.sync().expect("sync");
        assert_eq!(first, [Stored::Written(dir.path().join("sub/a.png"))]);
        // The same content again, then other content for the same name.
        let again = sink.store(Some(&rel), "x.bin", &tags("id1"), b"one").expect("store");
        assert_eq!(again, Queued::Duplicate(dir.path().join("sub/a.png")));
        sink.store(Some(&rel), "x.bin", &tags("id2"), b"two").expect("store");
        let group = sink.sync().expect("sync");
        assert_eq!(
            group,
            [Stored::Renamed {
                wanted: dir.path().join("sub/a.png"),
                written: dir.path().join("sub/a.id2.png")
            }]
        );
        assert_eq!(fs::read(dir.path().join("sub/a.id2.png")).expect("read"), b"two");
        assert_eq!(fs::read(dir.path().join("sub/a.png")).expect("read"), b"one");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn identical_files_in_one_group_are_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let rel = PathBuf::from("a.txt");
        sink.store(Some(&rel), "f", &tags("one"), b"same").expect("store");
        sink.store(Some(&rel), "f", &tags("two"), b"same").expect("store");
        let a = dir.path().join("a.txt");
        assert_eq!(sink.sync().expect("sync"), [Stored::Written(a.clone()), Stored::Duplicate(a)]);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn alternative_names_go_on_to_the_full_id_then_a_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let rel = PathBuf::from("o.txt");
        for (id, body) in [("order-2024-01", "1"), ("order-2024-02", "2"), ("order-2024-02", "3")] {
            sink.store(Some(&rel), "f", &tags(id), body.as_bytes()).expect("store");
        }
        let names: Vec<String> = sink
            .sync()
            .expect("sync")
            .into_iter()
            .map(|s| match s {
                Stored::Written(p) | Stored::Renamed { written: p, .. } => p,
                Stored::Duplicate(p) => panic!("{p:?} is no duplicate"),
            })
            .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        assert_eq!(names, ["o.txt", "o.order-2024-0.txt", "o.order-2024-02.txt"]);
        sink.store(Some(&rel), "f", &tags("order-2024-02"), b"4").expect("store");
        let next = sink.sync().expect("sync");
        assert!(
            matches!(&next[..], [Stored::Renamed { written, .. }] if written.ends_with("o.order-2024-0.2.txt")),
            "{next:?}"
        );
    }

    #[test]
    fn a_file_with_no_free_name_is_refused_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tags("id");
        let target = dir.path().join("x.txt");
        for path in candidates(&target, &t) {
            fs::write(&path, b"other content").expect("seed");
        }
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let refused = sink.store(Some(Path::new("x.txt")), "f", &t, b"x").expect("store");
        assert!(matches!(&refused, Queued::Refused(why) if why.contains("x.txt")), "{refused:?}");
        assert_eq!(
            sink.store(Some(Path::new("y.txt")), "f", &t, b"y").expect("store"),
            Queued::Pending
        );
        assert_eq!(sink.sync().expect("sync"), [Stored::Written(dir.path().join("y.txt"))]);
    }

    #[test]
    fn candidates_are_distinct_and_stay_in_the_directory() {
        let t = AltTags { short: "abc".into(), full: "abcdef".into() };
        let all: Vec<PathBuf> = candidates(Path::new("d/n.txt"), &t).collect();
        let unique: HashSet<&PathBuf> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(all.len(), 3 + (MAX_COUNTER as usize - 1));
        assert!(all.iter().all(|p| p.parent() == Some(Path::new("d"))));
        assert_eq!(all[2], Path::new("d/n.abcdef.txt"));
    }

    #[test]
    fn store_does_not_follow_symlinked_directories() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        sink.store(Some(Path::new("link/x.txt")), "fallback.txt", &tags("t"), b"hi")
            .expect("store");
        let stored = sink.sync().expect("sync");
        assert_eq!(stored, [Stored::Written(dir.path().join("fallback.txt"))]);
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_before_the_sync_is_not_followed() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let queued = sink.store(Some(Path::new("d/x.txt")), "f.txt", &tags("t"), b"hi");
        assert_eq!(queued.expect("store"), Queued::Pending);
        fs::rename(dir.path().join("d"), dir.path().join("moved")).expect("mv");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).expect("symlink");
        sink.sync().expect("the file goes into the directory it was written in");
        assert_eq!(fs::read(dir.path().join("moved/x.txt")).expect("read"), b"hi");
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn an_unsynced_group_leaves_no_file_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        for i in 0..GROUP_FILES {
            assert!(!sink.group_full());
            let body = i.to_string();
            sink.store(Some(Path::new("a.txt")), "f.txt", &tags(&body), body.as_bytes())
                .expect("store");
        }
        assert!(sink.group_full());
        drop(sink);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}

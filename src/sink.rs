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

use color_eyre::eyre::{Result, WrapErr};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};
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

/// Turn a sender-supplied `source` into a relative path, or None when any part of it is
/// unsafe: absolute, `..`, `.`, empty components, NUL/control characters, backslashes,
/// colons, Windows device names, trailing dots or spaces, hidden names, over-long names.
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
        .any(|c| c.is_control() || matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        return false;
    }
    !is_windows_device(part)
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

/// A directory that received files are written into.
pub struct DirSink {
    root: PathBuf,
    /// Directories whose entries changed since the last `sync`.
    dirty_dirs: HashSet<PathBuf>,
    /// Line-mode files: source -> (path, open file, next expected line).
    lines: HashMap<String, LineFile>,
    /// Written temporary files waiting for [`DirSink::sync`] to commit them.
    group: Vec<Pending>,
    group_bytes: u64,
}

/// A temporary file not yet linked into place; removed when dropped.
struct Pending {
    tmp: PathBuf,
    file: File,
    target: PathBuf,
    alt_tag: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Linked into place or abandoned: either way the temporary name goes.
        let _ = fs::remove_file(&self.tmp);
    }
}

struct LineFile {
    file: File,
    path: PathBuf,
    dirty: bool,
    /// The line number expected next; anything lower is a redelivery.
    next_line: u64,
}

impl DirSink {
    /// Create `root` if needed.
    pub fn new(root: &Path) -> Result<DirSink> {
        fs::create_dir_all(root).wrap_err_with(|| {
            format!(
                "cannot create output directory {}; check the path and permissions",
                root.display()
            )
        })?;
        Ok(DirSink {
            root: root.to_path_buf(),
            dirty_dirs: HashSet::new(),
            lines: HashMap::new(),
            group: Vec::new(),
            group_bytes: 0,
        })
    }

    /// The output directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Queue `body` for `rel` (already sanitised) or, when that is unusable, `fallback` (a
    /// plain file name): it is written to a temporary file now and linked into place by the
    /// next [`DirSink::sync`], which reports what became of it. `alt_tag` makes the
    /// alternative name when `rel` holds other content by then.
    pub fn store(
        &mut self,
        rel: Option<&Path>,
        fallback: &str,
        alt_tag: &str,
        body: &[u8],
    ) -> Result<()> {
        let target = match rel.and_then(|r| self.prepare_parent(r).transpose()) {
            Some(Ok(path)) => path,
            Some(Err(e)) => return Err(e),
            None => self.root.join(fallback),
        };
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        let (tmp, file) = self.write_temp(&dir, body)?;
        self.group.push(Pending { tmp, file, target, alt_tag: alt_tag.to_string() });
        self.group_bytes += body.len() as u64;
        Ok(())
    }

    /// Forget the file queued last (its content turned out to be bad): it is never linked.
    pub fn discard_last(&mut self) {
        if let Some(p) = self.group.pop() {
            let len = p.file.metadata().map_or(0, |m| m.len());
            self.group_bytes = self.group_bytes.saturating_sub(len);
        }
    }

    /// Whether the uncommitted group is full: the caller should [`DirSink::sync`] now.
    pub fn group_full(&self) -> bool {
        self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES
    }

    /// Create the parent directories of `rel` under the root, refusing to follow symlinks or
    /// pass through non-directories. None when the path cannot be used safely.
    fn prepare_parent(&self, rel: &Path) -> Result<Option<PathBuf>> {
        let mut dir = self.root.clone();
        let Some(parent) = rel.parent() else {
            return Ok(Some(self.root.join(rel)));
        };
        for comp in parent.components() {
            dir.push(comp);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == ErrorKind::NotFound => match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(e).wrap_err_with(|| {
                            format!("cannot create directory {}", dir.display())
                        });
                    }
                },
                Err(e) => {
                    return Err(e).wrap_err_with(|| format!("cannot inspect {}", dir.display()));
                }
            }
        }
        let target = self.root.join(rel);
        match fs::symlink_metadata(&target) {
            Ok(m) if !m.file_type().is_file() => Ok(None),
            _ => Ok(Some(target)),
        }
    }

    /// Write `body` to a new temporary file in `dir` and start its write-back (so that the
    /// group's later fdatasync calls mostly find the data already on disk).
    fn write_temp(&mut self, dir: &Path, body: &[u8]) -> Result<(PathBuf, File)> {
        // Unique across every DirSink of the process (workers share directories).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()));
        let mut f =
            OpenOptions::new().write(true).create_new(true).open(&tmp).wrap_err_with(|| {
                format!("cannot create {}; check free space and permissions", tmp.display())
            })?;
        if let Err(e) = f.write_all(body) {
            let _ = fs::remove_file(&tmp);
            return Err(e)
                .wrap_err_with(|| format!("cannot write {}; check free space", tmp.display()));
        }
        start_write_back(&f);
        Ok((tmp, f))
    }

    fn link_into_place(&self, tmp: &Path, target: &Path, alt_tag: &str) -> Result<Stored> {
        match place(tmp, target)? {
            Placed::Linked => return Ok(Stored::Written(target.to_path_buf())),
            Placed::Same => return Ok(Stored::Duplicate(target.to_path_buf())),
            Placed::Different => {}
        }
        let alt = alternative_name(target, alt_tag);
        match place(tmp, &alt)? {
            Placed::Linked => Ok(Stored::Renamed { wanted: target.to_path_buf(), written: alt }),
            Placed::Same => Ok(Stored::Duplicate(alt)),
            Placed::Different => Err(color_eyre::eyre::eyre!(
                "both {} and {} exist with other content; move them away",
                target.display(),
                alt.display()
            )),
        }
    }

    /// Append line `line` (terminator included) of `source` to its file, in order.
    ///
    /// Line 1 starts a new file, unless a file of that name already starts with this very line
    /// (a restarted consumer resuming it); an existing file with other content is kept and
    /// the new one gets another name. A line at or below the count already in the file is a
    /// redelivery: nothing is written.
    pub fn append_line(
        &mut self,
        source_key: &str,
        rel: Option<&Path>,
        fallback: &str,
        alt_tag: &str,
        line: u64,
        body: &[u8],
    ) -> Result<Stored> {
        if !self.lines.contains_key(source_key) {
            let target = match rel.map(|r| self.prepare_parent(r)).transpose()?.flatten() {
                Some(t) => t,
                None => self.root.join(fallback),
            };
            let lf = open_line_file(&target, alt_tag, line, body)?;
            if let Some(dir) = lf.path.parent() {
                self.dirty_dirs.insert(dir.to_path_buf());
            }
            self.lines.insert(source_key.to_string(), lf);
        }
        let Some(lf) = self.lines.get_mut(source_key) else {
            return Err(color_eyre::eyre::eyre!("internal: no line file for {source_key}"));
        };
        if line < lf.next_line {
            return Ok(Stored::Duplicate(lf.path.clone()));
        }
        lf.file.write_all(body).wrap_err_with(|| {
            format!("cannot append to {}; check free space", lf.path.display())
        })?;
        lf.dirty = true;
        lf.next_line = line + 1;
        Ok(Stored::Written(lf.path.clone()))
    }

    /// Make everything stored so far durable and in place: wait for the data of every
    /// queued file, link each into place (in the order stored), fsync appended files and
    /// changed directories. Returns what became of each queued file, in order.
    pub fn sync(&mut self) -> Result<Vec<Stored>> {
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        for p in &group {
            p.file
                .sync_data()
                .wrap_err_with(|| format!("cannot write {}; check free space", p.tmp.display()))?;
        }
        let mut stored = Vec::with_capacity(group.len());
        for p in group {
            stored.push(self.link_into_place(&p.tmp, &p.target, &p.alt_tag)?);
            if let Some(dir) = p.target.parent() {
                self.dirty_dirs.insert(dir.to_path_buf());
            }
        }
        for lf in self.lines.values_mut().filter(|l| l.dirty) {
            lf.file.sync_data().wrap_err_with(|| format!("cannot sync {}", lf.path.display()))?;
            lf.dirty = false;
        }
        for dir in self.dirty_dirs.drain() {
            if let Ok(d) = File::open(&dir) {
                d.sync_all()
                    .wrap_err_with(|| format!("cannot sync directory {}", dir.display()))?;
            }
        }
        Ok(stored)
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

fn open_line_file(target: &Path, alt_tag: &str, line: u64, body: &[u8]) -> Result<LineFile> {
    let append = |p: &Path, create_new: bool| {
        let mut o = OpenOptions::new();
        o.append(true);
        if create_new {
            o.create_new(true)
        } else {
            o.create(true)
        };
        o.open(p).wrap_err_with(|| format!("cannot open {}", p.display()))
    };
    let existing = match fs::read(target) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).wrap_err_with(|| format!("cannot read {}", target.display())),
    };
    let resumable = match &existing {
        None => true,
        // Line 1 may only resume a file that starts with it; later lines resume any file.
        Some(bytes) => line > 1 || bytes.starts_with(body),
    };
    if resumable {
        let next_line = existing.as_deref().map_or(1, |b| count_lines(b) + 1);
        let file = append(target, false)?;
        return Ok(LineFile { file, path: target.to_path_buf(), dirty: false, next_line });
    }
    let alt = alternative_name(target, alt_tag);
    let file = append(&alt, true).wrap_err_with(|| {
        format!("both {} and {} exist; move them away", target.display(), alt.display())
    })?;
    Ok(LineFile { file, path: alt, dirty: false, next_line: 1 })
}

/// Lines in `bytes`, counting a last line without a terminator.
fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|b| *b != b'\n'))
}

enum Placed {
    Linked,
    Same,
    Different,
}

/// Link `tmp` to `target` unless `target` exists; then compare contents.
fn place(tmp: &Path, target: &Path) -> Result<Placed> {
    match fs::hard_link(tmp, target) {
        Ok(()) => Ok(Placed::Linked),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if same_content(target, tmp)? {
                Ok(Placed::Same)
            } else {
                Ok(Placed::Different)
            }
        }
        Err(e) => Err(e).wrap_err_with(|| format!("cannot create {}", target.display())),
    }
}

/// Whether `path` is a regular file with exactly the bytes of `tmp`.
fn same_content(path: &Path, tmp: &Path) -> Result<bool> {
    let meta = fs::symlink_metadata(path)
        .wrap_err_with(|| format!("cannot inspect {}", path.display()))?;
    let want = fs::metadata(tmp).wrap_err_with(|| format!("cannot inspect {}", tmp.display()))?;
    if !meta.file_type().is_file() || meta.len() != want.len() {
        return Ok(false);
    }
    let read = |p: &Path| -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(want.len() as usize);
        File::open(p)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .wrap_err_with(|| format!("cannot read {}", p.display()))?;
        Ok(bytes)
    };
    Ok(read(path)? == read(tmp)?)
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
    fn ordinary_sources_are_kept() {
        for good in [
            "a.png",
            "shapes/circle.png",
            "Zoë/über 1.txt",
            "com10.png",
            "console.jpg",
            "a b/c-d_e.f",
        ] {
            let p = safe_relative_path(good).unwrap_or_else(|| panic!("{good} refused"));
            assert_eq!(p, PathBuf::from(good));
        }
    }

    #[test]
    fn store_never_overwrites_different_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let rel = PathBuf::from("sub/a.png");
        sink.store(Some(&rel), "x.bin", "id1", b"one").expect("store");
        assert!(!dir.path().join("sub/a.png").exists(), "in place only once synced");
        let first = sink.sync().expect("sync");
        assert_eq!(first, [Stored::Written(dir.path().join("sub/a.png"))]);
        // One group: the same content again, then other content for the same name.
        sink.store(Some(&rel), "x.bin", "id1", b"one").expect("store");
        sink.store(Some(&rel), "x.bin", "id2", b"two").expect("store");
        let group = sink.sync().expect("sync");
        assert_eq!(
            group,
            [
                Stored::Duplicate(dir.path().join("sub/a.png")),
                Stored::Renamed {
                    wanted: dir.path().join("sub/a.png"),
                    written: dir.path().join("sub/a.id2.png")
                }
            ]
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
    fn store_does_not_follow_symlinked_directories() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        sink.store(Some(Path::new("link/x.txt")), "fallback.txt", "t", b"hi").expect("store");
        let stored = sink.sync().expect("sync");
        assert_eq!(stored, [Stored::Written(dir.path().join("fallback.txt"))]);
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn an_unsynced_group_leaves_no_file_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        for i in 0..GROUP_FILES {
            assert!(!sink.group_full());
            sink.store(Some(Path::new("a.txt")), "f.txt", &i.to_string(), b"x").expect("store");
        }
        assert!(sink.group_full());
        drop(sink);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn lines_append_and_line_one_never_clobbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), b"old\n").expect("seed");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let rel = PathBuf::from("a.txt");
        let mut line = |n: u64, body: &[u8]| {
            sink.append_line("a.txt", Some(&rel), "f.txt", "tag", n, body).expect("line")
        };
        let p1 = line(1, b"new 1\n");
        let p2 = line(2, b"new 2");
        let again = line(1, b"new 1\n");
        sink.sync().expect("sync");
        let alt = dir.path().join("a.tag.txt");
        assert_eq!(p1, Stored::Written(alt.clone()));
        assert_eq!(p2, Stored::Written(alt.clone()));
        assert_eq!(again, Stored::Duplicate(alt.clone()));
        assert_eq!(fs::read(&alt).expect("read"), b"new 1\nnew 2");
        assert_eq!(fs::read(dir.path().join("a.txt")).expect("read"), b"old\n");
    }

    #[test]
    fn restarted_line_consumer_resumes_without_duplicating() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), b"one\ntwo\n").expect("seed");
        let rel = PathBuf::from("a.txt");
        let mut sink = DirSink::new(dir.path()).expect("sink");
        let redelivered =
            sink.append_line("a.txt", Some(&rel), "f", "t", 2, b"two\n").expect("line");
        assert!(matches!(redelivered, Stored::Duplicate(_)));
        sink.append_line("a.txt", Some(&rel), "f", "t", 3, b"three").expect("line");
        sink.sync().expect("sync");
        assert_eq!(fs::read(dir.path().join("a.txt")).expect("read"), b"one\ntwo\nthree");
        let mut fresh = DirSink::new(dir.path()).expect("sink");
        let first = fresh.append_line("a.txt", Some(&rel), "f", "t", 1, b"one\n").expect("line");
        assert!(matches!(first, Stored::Duplicate(_)), "line 1 resumes a file that starts with it");
    }
}

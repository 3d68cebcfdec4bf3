//! `produce image` / `produce text`: a directory walk (regular files only; hidden entries
//! and files no --include glob matches left out, counted) and whole files read and encoded
//! ahead of the publisher, within a byte budget.

use super::lines::send_lines;
use super::pump::Pump;
use super::too_large;
use crate::codec::{Kind, Message, image, text};
use crate::config::{FileFilter, is_hidden};
use crate::output::Reporter;
use color_eyre::eyre::{Result, WrapErr, eyre};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use walkdir::WalkDir;

/// What a directory walk found: regular files, sorted, with their `/`-separated relative
/// paths; what it skips as bad items, as (shown name, why), in the order met; and what it
/// leaves out on purpose (`--include`, hidden entries), which is no failure.
pub(super) struct Listing {
    pub(super) files: Vec<(PathBuf, String)>,
    pub(super) skipped: Vec<(String, String)>,
    /// Files no `--include` glob matches.
    pub(super) excluded: LeftOut,
    /// Hidden files and directories (without `--hidden`); a directory counts once.
    pub(super) hidden: LeftOut,
}

/// Entries left out on purpose: counted, the first few named (a folder of 100,000 files
/// gives one line, not 100,000).
#[derive(Default)]
pub(super) struct LeftOut {
    pub(super) count: u64,
    first: Vec<String>,
}

/// Entries named in a [`LeftOut`] line.
const NAMED: usize = 5;

impl LeftOut {
    fn add(&mut self, shown: String) {
        self.count += 1;
        if self.first.len() < NAMED {
            self.first.push(shown);
        }
    }

    /// "a.txt, b/c.csv and 3 more".
    pub(super) fn names(&self) -> String {
        let shown = self.first.join(", ");
        match self.count.saturating_sub(self.first.len() as u64) {
            0 => shown,
            more => format!("{shown} and {more} more"),
        }
    }
}

/// Walk `root` without following symlinks. Only regular files are sent: a symlink (to a
/// file, a directory, or nothing), a FIFO, a socket or a device is skipped and named, never
/// opened (a FIFO nobody writes to would block the producer for good). Hidden entries are
/// left out (a hidden directory is not entered) unless `--hidden`; then `--include`.
pub(super) fn list_files(root: &Path, filter: &FileFilter) -> Result<Listing> {
    let mut listing = Listing {
        files: Vec::new(),
        skipped: Vec::new(),
        excluded: LeftOut::default(),
        hidden: LeftOut::default(),
    };
    let mut walk = WalkDir::new(root).follow_links(false).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.wrap_err_with(|| format!("cannot list {}", root.display()))?;
        let kind = entry.file_type();
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        let source =
            parts.map(|p| p.join("/")).unwrap_or_else(|| rel.to_string_lossy().into_owned());
        if entry.depth() > 0 && !filter.hidden && is_hidden(entry.file_name()) {
            if kind.is_dir() {
                walk.skip_current_dir();
                listing.hidden.add(format!("{source}/"));
            } else {
                listing.hidden.add(source);
            }
            continue;
        }
        if kind.is_dir() {
            continue;
        }
        if !filter.includes(&source, &entry.file_name().to_string_lossy()) {
            listing.excluded.add(source);
            continue;
        }
        if !kind.is_file() {
            listing.skipped.push((entry.path().display().to_string(), not_regular(kind)));
            continue;
        }
        listing.files.push((entry.path().to_path_buf(), source));
    }
    check_matched(root, filter, &listing)?;
    Ok(listing)
}

impl Listing {
    /// One line each for the files `--include` leaves out and the hidden entries, naming
    /// the first few.
    pub(super) fn warn_left_out(&self, reporter: &Reporter) {
        if self.excluded.count > 0 {
            reporter.warn(&format!(
                "excluded {} file(s) matching no --include glob: {}",
                self.excluded.count,
                self.excluded.names()
            ));
        }
        if self.hidden.count > 0 {
            reporter.warn(&format!(
                "ignored {} hidden entr{} (name starting with `.`; --hidden sends them): {}",
                self.hidden.count,
                if self.hidden.count == 1 { "y" } else { "ies" },
                self.hidden.names()
            ));
        }
    }

    /// "excluded 3 by --include, ignored 2 hidden" for the summary; empty when none.
    pub(super) fn summary_note(&self) -> String {
        let mut parts = Vec::new();
        if self.excluded.count > 0 {
            parts.push(format!("excluded {} by --include", self.excluded.count));
        }
        if self.hidden.count > 0 {
            parts.push(format!("ignored {} hidden", self.hidden.count));
        }
        parts.join(", ")
    }
}

/// `--include` that matches none of the files there: most likely a mistyped glob (they are
/// case-sensitive), so it is an error rather than a run that sends nothing.
fn check_matched(root: &Path, filter: &FileFilter, listing: &Listing) -> Result<()> {
    if !listing.files.is_empty() || !listing.skipped.is_empty() || listing.excluded.count == 0 {
        return Ok(());
    }
    let globs: Vec<String> = filter.patterns().iter().map(|g| format!("--include {g:?}")).collect();
    Err(eyre!(
        "{} matches none of the {} file(s) under {} (such as {}); globs are case-sensitive, \
         and one without `/` matches the file name: e.g. --include '*.png'",
        globs.join(" "),
        listing.excluded.count,
        root.display(),
        listing.excluded.names()
    ))
}

/// Why a directory entry that is not a regular file is not sent.
fn not_regular(kind: std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_symlink() {
        "a symbolic link (not followed: copy the file into the directory to send it)"
    } else if kind.is_fifo() {
        "a FIFO (named pipe), not a regular file; not opened"
    } else if kind.is_socket() {
        "a socket, not a regular file"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device, not a regular file"
    } else {
        "not a regular file"
    };
    what.to_string()
}

/// Open a listed file for reading without following a symlink and without blocking (it may
/// have been replaced by a FIFO since it was listed): an error unless it is a regular file.
pub(super) fn open_listed(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = File::options().read(true).custom_flags(flags.bits() as i32).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    Ok(f)
}

pub(super) fn stream_files(
    root: &Path,
    files: &[(PathBuf, String)],
    kind: Kind,
    split_lines: bool,
    pump: &mut Pump<'_>,
) -> Result<()> {
    if !split_lines {
        return stream_whole_files(root, files, kind, pump);
    }
    for (path, source) in files {
        let shown = format!("{}", root.join(source).display());
        let keep = match std::fs::metadata(path) {
            Err(e) => {
                pump.skip(&shown, &format!("cannot read it: {e}"));
                pump.keep_going()
            }
            Ok(_) => send_lines(path, source, &shown, pump)?,
        };
        pump.reporter.inc(1);
        if !keep {
            break;
        }
    }
    Ok(())
}

/// Bytes of whole files read and encoded ahead of the publisher.
pub(super) const READ_AHEAD_BYTES: u64 = 16 * 1024 * 1024;

/// One file, read and encoded (or the reason it is skipped: shown name, why).
type Loaded = Result<Message, (String, String)>;

/// Whole files: a reader thread reads and encodes (hashes) the next files while this one
/// publishes, so reading and hashing overlap the network; at most [`READ_AHEAD_BYTES`] (or
/// one file, if larger) wait between them.
fn stream_whole_files(
    root: &Path,
    files: &[(PathBuf, String)],
    kind: Kind,
    pump: &mut Pump<'_>,
) -> Result<()> {
    let budget = ReadAhead::default();
    let (tx, rx) = crossbeam_channel::unbounded::<Loaded>();
    let (max_size, stop) = (pump.max_size, pump.stop);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new().name("mqdemo-read".into());
        let spawned = reader.spawn_scoped(scope, || {
            for (path, source) in files {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let loaded = load_file(root, path, source, kind, max_size);
                let size = loaded.as_ref().map_or(0, |m| m.body.len() as u64);
                if !budget.take(size) || tx.send(loaded).is_err() {
                    break;
                }
            }
            drop(tx);
        });
        spawned.wrap_err("cannot start the file reader thread")?;
        // Whatever ends this loop (done, signal, error) releases the reader.
        let _close = budget.closer();
        for loaded in rx {
            budget.give(loaded.as_ref().map_or(0, |m| m.body.len() as u64));
            let keep = match loaded {
                Ok(msg) => pump.send(msg)?,
                Err((shown, why)) => {
                    pump.skip(&shown, &why);
                    pump.keep_going()
                }
            };
            pump.reporter.inc(1);
            if !keep {
                break;
            }
        }
        Ok(())
    })
}

fn load_file(root: &Path, path: &Path, source: &str, kind: Kind, max_size: u64) -> Loaded {
    let shown = || format!("{}", root.join(source).display());
    let skip = |why: String| Err((shown(), why));
    // One open, one fstat, reads into a buffer of the file's size.
    let read = open_listed(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        if len > max_size {
            return Ok(Err(len));
        }
        let mut bytes = Vec::with_capacity(len as usize + 1);
        f.read_to_end(&mut bytes)?;
        Ok(Ok(bytes))
    });
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(len)) => return skip(too_large(len, max_size)),
        Err(e) => return skip(format!("cannot read it: {e}")),
    };
    let encoded = match kind {
        Kind::Image => image::encode(source, bytes).map_err(|_| {
            "not an image (JPEG, PNG, GIF, WebP, BMP or TIFF by its first bytes)".to_string()
        }),
        _ => text::encode_file(source, bytes)
            .map_err(|e| format!("not UTF-8 text (first bad byte on line {})", e.line)),
    };
    encoded.or_else(skip)
}

/// Bytes read ahead but not yet taken by the publisher; the reader waits above the limit.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// (bytes queued, publisher gone, reader waiting)
    state: Mutex<(u64, bool, bool)>,
    changed: Condvar,
}

impl ReadAhead {
    /// Wait for room for `size` more bytes (always granted when nothing waits); false once
    /// the publisher has gone.
    pub(super) fn take(&self, size: u64) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.1 && st.0 > 0 && st.0 + size > READ_AHEAD_BYTES {
            st.2 = true;
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.2 = false;
        st.0 += size;
        !st.1
    }

    pub(super) fn give(&self, size: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(size);
        if st.2 {
            self.changed.notify_all();
        }
    }

    pub(super) fn closer(&self) -> impl Drop + '_ {
        struct Close<'a>(&'a ReadAhead);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
                self.0.changed.notify_all();
            }
        }
        Close(self)
    }
}

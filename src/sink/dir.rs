//! A directory held open, and every file operation of the sinks relative to it: nothing is
//! ever created, opened, linked or removed through a symlink. A name that is a symlink is
//! never followed (O_NOFOLLOW, O_EXCL, linkat without AT_SYMLINK_FOLLOW), subdirectories are
//! opened level by level the same way, and a directory swapped for a symlink after it was
//! opened changes nothing: the handle still names the directory that was checked.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// A directory held open by file descriptor; its path is kept for messages only.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// How [`Dir::open_file`] opens an existing file.
#[derive(Clone, Copy)]
pub(crate) enum Access {
    Read,
    ReadWrite,
    Append,
}

/// Mode of new files and directories, before the umask (what `std::fs` uses).
const FILE_MODE: u32 = 0o666;
const DIR_MODE: u32 = 0o777;

impl Dir {
    /// Open the directory at `path` (the user's output directory: a symlink there is the
    /// user's choice and is followed; nothing below it is).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// Its path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in it, for messages.
    pub(crate) fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// The directory `rel` (normal components only) under this one, each level created when
    /// missing. None when a level is not a directory (a symlink, a file) or `rel` is not
    /// plainly relative.
    pub(crate) fn subdirs(&self, rel: &Path) -> io::Result<Option<Dir>> {
        let mut fd: Option<OwnedFd> = None;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Ok(None);
            };
            let next = match &fd {
                Some(at) => open_subdir(at, name)?,
                None => open_subdir(&self.fd, name)?,
            };
            match next {
                Some(next) => fd = Some(next),
                None => return Ok(None),
            }
        }
        Ok(fd.map(|fd| Dir { fd, path: self.path.join(rel) }))
    }

    /// What `name` is (not following a symlink), or None when there is nothing there.
    pub(crate) fn kind(&self, name: &OsStr) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Create the new file `name` for reading and writing (appending with `append`); fails
    /// with AlreadyExists when anything is there, a symlink (even a dangling one) included.
    pub(crate) fn create(&self, name: &OsStr, append: bool) -> io::Result<File> {
        let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        if append {
            flags |= OFlags::APPEND;
        }
        let fd = rustix::fs::openat(&self.fd, name, flags | OFlags::CLOEXEC, FILE_MODE.into())?;
        Ok(File::from(fd))
    }

    /// Open the existing regular file `name`. A symlink there fails (ELOOP); anything else
    /// that is not a regular file (a FIFO, a directory) fails with InvalidData and is never
    /// waited on (opened non-blocking).
    pub(crate) fn open_file(&self, name: &OsStr, access: Access) -> io::Result<File> {
        let mode = match access {
            Access::Read => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
            Access::Append => OFlags::WRONLY | OFlags::APPEND,
        };
        let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&self.fd, name, flags, Mode::empty())?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(ErrorKind::InvalidData, "not a regular file"));
        }
        Ok(file)
    }

    /// Link `name` (a file in this directory) as `to` in `dir`, never replacing anything
    /// (AlreadyExists when `to` exists, a symlink included).
    pub(crate) fn link(&self, name: &OsStr, dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(&self.fd, name, &dir.fd, to, AtFlags::empty())?)
    }

    /// Remove the name `name` (a symlink itself, never what it points to).
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Make its entries durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

/// Open (creating it when missing) the subdirectory `name` of `at`; None when it is not a
/// directory.
fn open_subdir(at: &OwnedFd, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..2 {
        match rustix::fs::openat(at, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::LOOP | Errno::NOTDIR) => return Ok(None),
            Err(Errno::NOENT) => match rustix::fs::mkdirat(at, name, DIR_MODE.into()) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    // Created, then gone again before it could be opened: someone else is at work here.
    Err(io::Error::new(ErrorKind::NotFound, "directory removed while it was being created"))
}

/// Errors that say a name holds something mqdemo did not write there: a symlink, a
/// directory, a FIFO or socket, or another non-regular file.
pub(crate) fn foreign(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::IsADirectory | ErrorKind::InvalidData)
        || matches!(Errno::from_io_error(e), Some(Errno::LOOP | Errno::NXIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn nothing_is_done_through_a_symlink() {
        let (out, far) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("t"));
        std::fs::write(far.path().join("victim"), "v").expect("write");
        symlink(far.path().join("victim"), out.path().join("to-file")).expect("symlink");
        symlink(far.path().join("new"), out.path().join("dangling")).expect("symlink");
        symlink(far.path(), out.path().join("to-dir")).expect("symlink");
        std::fs::write(out.path().join("mine"), "m").expect("write");
        let dir = Dir::open(out.path()).expect("open");
        for name in ["to-file", "dangling", "to-dir"] {
            let name = OsStr::new(name);
            let made = dir.create(name, true).map(|_| ());
            assert_eq!(made.map_err(|e| e.kind()), Err(ErrorKind::AlreadyExists));
            for access in [Access::Read, Access::ReadWrite, Access::Append] {
                assert!(dir.open_file(name, access).is_err_and(|e| foreign(&e)), "{name:?}");
            }
            let linked = dir.link(OsStr::new("mine"), &dir, name).map_err(|e| e.kind());
            assert_eq!(linked, Err(ErrorKind::AlreadyExists));
            assert!(dir.kind(name).is_ok_and(|k| k == Some(FileType::Symlink)));
        }
        assert!(dir.subdirs(Path::new("to-dir/x")).is_ok_and(|d| d.is_none()));
        assert!(dir.subdirs(Path::new("mine/x")).is_ok_and(|d| d.is_none()));
        assert!(dir.subdirs(Path::new("../x")).is_ok_and(|d| d.is_none()));
        let snapshot: Vec<_> = std::fs::read_dir(far.path()).expect("ls").collect();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(std::fs::read(far.path().join("victim")).expect("read"), b"v");
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_it_was_opened_is_not_followed() {
        let (out, far) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("t"));
        let root = Dir::open(out.path()).expect("open");
        let sub = root.subdirs(Path::new("a/b")).expect("mkdir").expect("a directory");
        std::fs::rename(out.path().join("a"), out.path().join("moved")).expect("mv");
        symlink(far.path(), out.path().join("a")).expect("symlink");
        drop(sub.create(OsStr::new("x"), false).expect("create"));
        assert!(out.path().join("moved/b/x").is_file());
        assert_eq!(std::fs::read_dir(far.path()).expect("ls").count(), 0);
        assert!(root.subdirs(Path::new("a/b")).is_ok_and(|d| d.is_none()));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let out = tempfile::tempdir().expect("tempdir");
        let made = std::process::Command::new("mkfifo").arg(out.path().join("p")).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let dir = Dir::open(out.path()).expect("open");
        for access in [Access::Read, Access::ReadWrite, Access::Append] {
            assert!(dir.open_file(OsStr::new("p"), access).is_err_and(|e| foreign(&e)));
        }
    }
}

//! Whether a name already holds some content: compared byte by byte from an open file,
//! or by size and SHA-256, in bounded memory whatever the files' size.

use super::dir::{Access, Dir, foreign};
use color_eyre::eyre::{Result, WrapErr};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;

/// Content a name is checked against.
#[derive(Clone, Copy)]
pub(super) enum Content<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The bytes of this (temporary) file.
    File(&'a File),
    /// Bytes of this size and lowercase hex SHA-256.
    Digest { size: u64, sha256: &'a str },
}

/// An error that rules out one name, not the directory: too long, or not a directory on the
/// way (a file where a directory should be).
pub(super) fn name_unusable(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::NAMETOOLONG | Errno::NOTDIR | Errno::MLINK))
}

/// Whether `name` in `dir` is a regular file (not a symlink) holding exactly `content`.
pub(super) fn holds(dir: &Dir, name: &OsStr, content: Content<'_>) -> Result<bool> {
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
pub(super) fn file_holds(file: &File, content: Content<'_>) -> std::io::Result<bool> {
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
}

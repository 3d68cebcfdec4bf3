//! `produce text --split line`: a text file checked whole, then sent a line at a time,
//! never holding a line over the size limit.

use super::files::open_listed;
use super::pump::Pump;
use super::too_large;
use crate::codec::text;
use color_eyre::eyre::{Result, WrapErr};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// `--split line`: read the whole file first (UTF-8 check, SHA-256, size, lines), so a bad
/// file sends nothing and every line names its file; then one message per line, terminator
/// included, with its byte offset. A file that changes between the two reads is reported. A
/// file with a line over --max-message-size is skipped whole (its other lines could never
/// make the file), and the line is never held: both passes stream the file in pieces.
pub(super) fn send_lines(
    path: &Path,
    source: &str,
    shown: &str,
    pump: &mut Pump<'_>,
) -> Result<bool> {
    let (file, long_lines) = match scan_lines(path, pump.max_size) {
        Ok(scanned) => scanned,
        Err(why) => {
            pump.skip(shown, &why);
            return Ok(pump.keep_going());
        }
    };
    if let Some(first) = long_lines.first() {
        // Its other lines could never make the whole file at the consumer: the file is
        // skipped before any line is sent.
        let why = format!(
            "line {first} is over --max-message-size ({} bytes){}; the file is skipped, as its \
             lines would never make the whole file",
            pump.max_size,
            match long_lines.len() {
                1 => String::new(),
                n => format!(" ({n} such lines)"),
            }
        );
        pump.skip(shown, &why);
        return Ok(pump.keep_going());
    }
    let opened = open_listed(path).wrap_err_with(|| format!("cannot read {shown}"))?;
    let mut reader = BufReader::with_capacity(64 * 1024, opened);
    let (mut line_no, mut offset) = (0u64, 0u64);
    let mut again = text::FileDigest::default();
    loop {
        let mut line = Vec::new();
        let n = read_line_within(&mut reader, pump.max_size, &mut line, &mut again)
            .wrap_err_with(|| format!("cannot read {shown}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line_no > file.lines || offset + n > file.size {
            break; // grew since it was read: reported below
        }
        let at = offset;
        offset += n;
        if n > pump.max_size {
            pump.skip(&format!("{shown} line {line_no}"), &too_large(n, pump.max_size));
            if !pump.keep_going() {
                return Ok(false);
            }
            continue;
        }
        match text::encode_line(source, &file, line_no, at, line) {
            Ok(msg) => {
                if !pump.send(msg)? {
                    return Ok(false);
                }
            }
            Err(e) => {
                pump.skip(&format!("{shown} line {}", e.line), "not UTF-8 text");
                return Ok(pump.keep_going());
            }
        }
    }
    if again.finish() != file {
        pump.skip(
            shown,
            "changed while it was being sent (its lines will not add up at the consumer); \
             produce it again",
        );
    }
    Ok(pump.keep_going())
}

/// Read one line (terminator included) and return its length; its bytes go to `line` only
/// up to `max` + 1 of them (a longer line is counted to its end but not kept), and all of
/// them to `digest`.
pub(super) fn read_line_within<R: BufRead>(
    reader: &mut R,
    max: u64,
    line: &mut Vec<u8>,
    digest: &mut text::FileDigest,
) -> std::io::Result<u64> {
    let mut n = 0u64;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(n);
        }
        let (piece, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        digest.update(piece);
        let room = (max + 1).saturating_sub(line.len() as u64);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(piece.len());
        line.extend_from_slice(&piece[..keep]);
        let len = piece.len();
        n += len as u64;
        reader.consume(len);
        if done {
            return Ok(n);
        }
    }
}

/// The file's identity and its lines longer than `max` bytes, or Err(reason) when it is
/// not UTF-8 text; read in pieces, so a long line is never held.
fn scan_lines(path: &Path, max: u64) -> Result<(text::FileIdentity, Vec<u64>), String> {
    let file = open_listed(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut digest = text::FileDigest::default();
    let mut utf8 = Utf8Check::default();
    let (mut long_lines, mut line_len, mut line_no) = (Vec::new(), 0u64, 1u64);
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        if buf.is_empty() {
            break;
        }
        utf8.feed(buf).map_err(not_utf8)?;
        digest.update(buf);
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            line_len += (nl + 1 - start) as u64;
            if line_len > max {
                long_lines.push(line_no);
            }
            (line_len, line_no, start) = (0, line_no + 1, nl + 1);
        }
        line_len += (buf.len() - start) as u64;
        let len = buf.len();
        reader.consume(len);
    }
    if line_len > max {
        long_lines.push(line_no);
    }
    utf8.finish().map_err(not_utf8)?;
    Ok((digest.finish(), long_lines))
}

fn not_utf8(line: u64) -> String {
    format!("not UTF-8 text (first bad byte on line {line})")
}

/// UTF-8 validation of a stream fed in pieces (a character may be split between two);
/// errors are the 1-based line of the first bad byte.
#[derive(Default)]
pub(super) struct Utf8Check {
    /// The start of a character cut off at the end of the last piece.
    carry: Vec<u8>,
    /// Newlines before the current piece.
    lines: u64,
}

impl Utf8Check {
    pub(super) fn feed(&mut self, mut piece: &[u8]) -> Result<(), u64> {
        while !self.carry.is_empty() {
            let Some((&b, rest)) = piece.split_first() else {
                return Ok(());
            };
            self.carry.push(b);
            piece = rest;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return Err(self.lines + 1),
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => self.carry = piece[e.valid_up_to()..].to_vec(),
            Err(e) => {
                return Err(self.lines
                    + memchr::memchr_iter(b'\n', &piece[..e.valid_up_to()]).count() as u64
                    + 1);
            }
        }
        self.lines += memchr::memchr_iter(b'\n', piece).count() as u64;
        Ok(())
    }

    pub(super) fn finish(&self) -> Result<(), u64> {
        if self.carry.is_empty() { Ok(()) } else { Err(self.lines + 1) }
    }
}

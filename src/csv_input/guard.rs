//! The guard between the decoded bytes and csv: --skip-rows, quoting followed as csv-core
//! does (an unterminated quote names its line) and the row length limit.

use std::io::{self, Read};

/// Why the guarded reader stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum GuardError {
    /// A quoted field opened on this line runs to the end of the file.
    #[error("line {line}: unterminated quote")]
    Unterminated { line: u64 },
    /// The row starting on this line is longer than `limit` bytes.
    #[error("line {line}: row longer than {limit} bytes")]
    TooLong { line: u64, limit: u64 },
    /// Not valid in the --encoding given.
    #[error("line {line}: not valid {encoding}")]
    Malformed { line: u64, encoding: &'static str },
}

/// Where the guard is in the CSV's quoting (csv-core's rules: a `"` opens a quoted field
/// only at the start of a field; inside one, `""` is a quote and `"` closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quoting {
    Unquoted,
    /// In a quoted field opened on this line.
    Quoted(u64),
    /// Just after a `"` inside a quoted field opened on this line.
    QuoteInQuoted(u64),
}

/// Passes the bytes through to csv, dropping --skip-rows lines, and fails on an unterminated
/// quote or a row over the limit (tracking quotes with memchr, so it costs little).
pub(super) struct Guard<R> {
    inner: R,
    delimiter: u8,
    pub(super) skip_left: u64,
    max_row: u64,
    /// Newlines seen (skipped lines included).
    lines: u64,
    /// Line on which the current row began.
    row_line: u64,
    row_bytes: u64,
    quoting: Quoting,
    /// The byte before the next one (a field starts after a delimiter or a line end).
    prev: u8,
    started: bool,
    /// An error found while the bytes before it were passed on: returned next.
    failed: Option<GuardError>,
}

impl<R: Read> Guard<R> {
    pub(super) fn new(inner: R, delimiter: u8, skip: u64, max_row: u64) -> Self {
        Guard {
            inner,
            delimiter,
            skip_left: skip,
            max_row,
            lines: 0,
            row_line: 1,
            row_bytes: 0,
            quoting: Quoting::Unquoted,
            prev: b'\n',
            started: false,
            failed: None,
        }
    }

    /// Drop whole lines while --skip-rows asks; returns where the kept bytes start.
    fn skip_lines(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        while self.skip_left > 0 && at < buf.len() {
            match memchr::memchr(b'\n', &buf[at..]) {
                Some(i) => {
                    at += i + 1;
                    self.lines += 1;
                    self.skip_left -= 1;
                    self.row_line = self.lines + 1;
                }
                None => at = buf.len(),
            }
        }
        at
    }

    fn is_field_start(&self, prev: u8) -> bool {
        prev == self.delimiter || prev == b'\n' || prev == b'\r'
    }

    /// A row ended at `at` (the index after its terminator): Err(start) when it was over the
    /// limit.
    fn end_row(&mut self, at: usize, row_start: &mut usize) -> Result<(), usize> {
        if self.row_bytes > self.max_row {
            return Err(*row_start);
        }
        self.row_bytes = 0;
        self.row_line = self.lines + 1;
        *row_start = at;
        Ok(())
    }

    /// Follow the quoting through `buf`. Err(start) when the row beginning at index `start`
    /// (0 if in an earlier piece) is over the limit: only the bytes before it may go on.
    fn scan(&mut self, whole: &[u8]) -> Result<(), usize> {
        let mut bom = 0;
        if !self.started {
            self.started = true;
            // csv-core drops a UTF-8 BOM at the very start: a quote after it opens a field.
            if whole.starts_with(b"\xef\xbb\xbf") {
                bom = 3;
            }
        }
        let buf = &whole[bom..];
        let mut row_start = 0;
        let mut i = 0;
        while i < buf.len() {
            match self.quoting {
                Quoting::Unquoted => match memchr::memchr3(b'"', b'\n', b'\r', &buf[i..]) {
                    None => {
                        self.row_bytes += (buf.len() - i) as u64;
                        i = buf.len();
                    }
                    Some(k) => {
                        let j = i + k;
                        let prev = if j > 0 { buf[j - 1] } else { self.prev };
                        self.row_bytes += k as u64;
                        match buf[j] {
                            b'\n' => {
                                self.lines += 1;
                                self.end_row(bom + j + 1, &mut row_start)?;
                            }
                            b'\r' => self.end_row(bom + j + 1, &mut row_start)?,
                            _ => {
                                self.row_bytes += 1;
                                if self.is_field_start(prev) {
                                    self.quoting = Quoting::Quoted(self.lines + 1);
                                }
                            }
                        }
                        i = j + 1;
                    }
                },
                Quoting::Quoted(from) => match memchr::memchr2(b'"', b'\n', &buf[i..]) {
                    None => {
                        self.row_bytes += (buf.len() - i) as u64;
                        i = buf.len();
                    }
                    Some(k) => {
                        let j = i + k;
                        self.row_bytes += (k + 1) as u64;
                        if buf[j] == b'\n' {
                            self.lines += 1;
                        } else {
                            self.quoting = Quoting::QuoteInQuoted(from);
                        }
                        i = j + 1;
                    }
                },
                Quoting::QuoteInQuoted(from) => {
                    if buf[i] == b'"' {
                        // `""`: a quote inside the field.
                        self.quoting = Quoting::Quoted(from);
                        self.row_bytes += 1;
                        i += 1;
                    } else {
                        // The field closed; this byte is read again as unquoted.
                        self.quoting = Quoting::Unquoted;
                    }
                }
            }
        }
        if let Some(&last) = buf.last() {
            self.prev = last;
        }
        if self.row_bytes > self.max_row {
            return Err(row_start);
        }
        Ok(())
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(guard_error(e));
        }
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                if let Quoting::Quoted(line) = self.quoting {
                    return Err(guard_error(GuardError::Unterminated { line }));
                }
                return Ok(0);
            }
            let start = self.skip_lines(&buf[..n]);
            if start == n {
                continue;
            }
            buf.copy_within(start..n, 0);
            let kept = n - start;
            if let Err(cut) = self.scan(&buf[..kept]) {
                let e = GuardError::TooLong { line: self.row_line, limit: self.max_row };
                if cut == 0 {
                    return Err(guard_error(e));
                }
                // The rows before it go on; the error comes with the next read.
                self.failed = Some(e);
                return Ok(cut);
            }
            return Ok(kept);
        }
    }
}

pub(super) fn guard_error(e: GuardError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

//! CSV input for `produce tabular` and `request`, as files really are: another separator,
//! another encoding, metadata lines before the header, no header at all.
//!
//! The reader is guarded ([`Guard`]): it follows the quoting as csv-core does, so a quote
//! that is never closed is an error naming the line it opened on (instead of every later row
//! silently becoming one field), and a row longer than the limit is an error naming its
//! line before it is held in memory.

use crate::codec::tabular;
use crate::config::CsvFormat;
use crate::output::human_bytes;
use color_eyre::eyre::{Report, Result, WrapErr, eyre};
use csv::StringRecord;
use encoding_rs::{Decoder, DecoderResult, Encoding};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How [`CsvInput::read`] names a row that is not UTF-8.
pub const NOT_UTF8: &str = "not valid UTF-8";

/// Rows read ahead by the opening check, at most.
const OPENING_ROWS: usize = 10;
/// Bytes of rows read ahead by the opening check, at most (rows can be large).
const OPENING_BYTES: usize = 16 * 1024 * 1024;

/// csv's read buffer (larger than its default: fewer reads on big files).
const BUFFER: usize = 256 * 1024;

/// An open CSV file, its header read and checked.
pub struct CsvInput {
    path: PathBuf,
    /// The file's base name (the `source` header of its messages).
    pub source: String,
    rdr: csv::Reader<Guard<Box<dyn Read + Send>>>,
    columns: Vec<String>,
    /// With --no-header, the first record (data) and its line.
    first: Option<(StringRecord, u64)>,
    /// Lines dropped by --skip-rows (csv's line numbers start after them).
    skipped: u64,
    /// Records read ahead by the opening check, replayed first.
    ahead: VecDeque<(StringRecord, Next)>,
    raw_bytes: Arc<AtomicU64>,
}

/// The next thing read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A record, which starts on this line of the file.
    Row(u64),
    /// End of the file.
    End,
    /// A record that cannot be read (e.g. not UTF-8): skip it, name it.
    Bad {
        /// Where it starts.
        line: u64,
        /// Why.
        why: String,
    },
}

impl CsvInput {
    /// Open `path`, skip --skip-rows lines, read the header (or, with --no-header, the first
    /// row) and refuse repeated column names. Errors name the file and the fix.
    pub fn open(path: &Path, format: &CsvFormat) -> Result<CsvInput> {
        let file = File::open(path).wrap_err_with(|| {
            format!("cannot read CSV file {}; check the --file path", path.display())
        })?;
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let counted = Counted { inner: file, n: Arc::clone(&raw_bytes) };
        let decoded = decode(counted, format.encoding)
            .wrap_err_with(|| format!("cannot read CSV file {}", path.display()))?;
        let guard = Guard::new(decoded, format.delimiter, format.skip_rows, format.max_row_bytes);
        let rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(format.delimiter)
            .buffer_capacity(BUFFER)
            .from_reader(guard);
        let source = path
            .file_name()
            .map_or_else(|| "data.csv".into(), |n| n.to_string_lossy().into_owned());
        let mut input = CsvInput {
            path: path.to_path_buf(),
            source,
            rdr,
            columns: Vec::new(),
            first: None,
            skipped: format.skip_rows,
            ahead: VecDeque::new(),
            raw_bytes,
        };
        input.read_header(format)?;
        input.check_opening()?;
        Ok(input)
    }

    /// Read the first rows ahead: when all of them (up to [`OPENING_ROWS`]) fail the same way
    /// and none fits, the file is misread as a whole (a metadata line taken for the header,
    /// another encoding): one error with the fix, before anything is sent, instead of a
    /// skipped line per row.
    fn check_opening(&mut self) -> Result<()> {
        let width = self.columns.len();
        let mut failures: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0;
        while self.ahead.len() < OPENING_ROWS && bytes < OPENING_BYTES {
            let mut record = StringRecord::new();
            let next = self.read_file(&mut record)?;
            let failure = match &next {
                Next::End => break,
                Next::Bad { line, why } => (*line, why.clone()),
                Next::Row(line) => match tabular::too_wide(record.len(), width) {
                    Some(e) => (*line, e.0),
                    None => {
                        self.ahead.push_back((record, next));
                        failures.clear();
                        break;
                    }
                },
            };
            failures.push(failure);
            bytes += record.as_byte_record().as_slice().len();
            self.ahead.push_back((record, next));
        }
        let Some((first_line, why)) = failures.first() else {
            return Ok(());
        };
        if failures.len() < self.ahead.len() || failures.iter().any(|(_, w)| w != why) {
            return Ok(());
        }
        let last_line = failures.last().map_or(*first_line, |f| f.0);
        let what = match failures.len() {
            1 => format!("its only row (line {first_line}) fails"),
            n if n < OPENING_ROWS => {
                format!("all {n} of its rows (lines {first_line}-{last_line}) fail the same way")
            }
            n => {
                format!("the first {n} rows (lines {first_line}-{last_line}) all fail the same way")
            }
        };
        let hint = if why == NOT_UTF8 {
            encoding_hint().to_string()
        } else {
            header_hint(self.header_line())
        };
        Err(eyre!(
            "{}: {what}: {why}. The file is read wrongly as a whole: {hint}. Nothing was sent",
            self.path.display()
        ))
    }

    fn read_header(&mut self, format: &CsvFormat) -> Result<()> {
        let mut header = StringRecord::new();
        let line = match self.read_file(&mut header)? {
            Next::Row(line) => line,
            Next::Bad { line, why } => {
                return Err(eyre!(
                    "{} line {line}: the {} is {why}: {}",
                    self.path.display(),
                    if format.header { "header" } else { "first row" },
                    encoding_hint()
                ));
            }
            Next::End if format.skip_rows > 0 && self.rdr.get_ref().skip_left > 0 => {
                return Err(eyre!(
                    "{}: nothing is left after the {n} lines --skip-rows {n} drops; lower \
                     --skip-rows",
                    self.path.display(),
                    n = format.skip_rows
                ));
            }
            Next::End => {
                return Err(eyre!(
                    "{} is empty: no header row and no data{}; check the --file path",
                    self.path.display(),
                    if format.skip_rows > 0 { " after the lines --skip-rows skips" } else { "" }
                ));
            }
        };
        if header.iter().any(|f| f.contains('\0')) {
            // UTF-16 read as bytes: big-endian puts the zero byte before each ASCII one.
            let be = header.get(0).is_some_and(|f| f.starts_with('\0'));
            return Err(eyre!(
                "{} line {line}: the first row holds NUL characters, as UTF-16 text read as \
                 UTF-8 does; if the file is UTF-16 without a byte-order mark, use --encoding \
                 {}",
                self.path.display(),
                if be { "utf-16be" } else { "utf-16le" }
            ));
        }
        if format.header {
            self.columns = header.iter().map(str::to_string).collect();
            let dups = tabular::duplicate_columns(header.iter());
            if !dups.is_empty() {
                return Err(eyre!(
                    "{} line {line}: the header repeats column names: {}; their values would \
                     overwrite each other. Rename them, or use --no-header if line {line} is \
                     data, not a header (columns are then named 0, 1, 2, ...)",
                    self.path.display(),
                    describe_duplicates(&dups)
                ));
            }
        } else {
            self.columns = tabular::positional_columns(header.len());
            self.first = Some((header, line));
        }
        Ok(())
    }

    /// An encoder for this file's columns.
    pub fn encoder(&self) -> tabular::Encoder {
        tabular::Encoder::new(&self.source, self.columns.iter().map(String::as_str))
    }

    /// Line of the header (or of the first row, with --no-header).
    pub fn header_line(&self) -> u64 {
        self.skipped + 1
    }

    /// Bytes of the file read so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.raw_bytes.load(Ordering::Relaxed)
    }

    /// Read the next record into `record`. A fatal error (unterminated quote, a row over the
    /// limit, a read error) stops the whole input.
    pub fn read(&mut self, record: &mut StringRecord) -> Result<Next> {
        if let Some((ahead, next)) = self.ahead.pop_front() {
            *record = ahead;
            return Ok(next);
        }
        self.read_file(record)
    }

    /// The next record of the file itself (or the first row kept by --no-header).
    fn read_file(&mut self, record: &mut StringRecord) -> Result<Next> {
        if let Some((first, line)) = self.first.take() {
            *record = first;
            return Ok(Next::Row(line));
        }
        match self.rdr.read_record(record) {
            Ok(true) => Ok(Next::Row(record.position().map_or(0, |p| p.line()) + self.skipped)),
            Ok(false) => Ok(Next::End),
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line()) + self.skipped;
                match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => Ok(Next::Bad { line, why: NOT_UTF8.into() }),
                    csv::ErrorKind::Io(io) => Err(self.fatal(io)),
                    _ => Ok(Next::Bad { line, why: e.to_string() }),
                }
            }
        }
    }

    fn fatal(&self, io: &io::Error) -> Report {
        let name = self.path.display();
        match io.get_ref().and_then(|e| e.downcast_ref::<GuardError>()) {
            Some(GuardError::Unterminated { line }) => eyre!(
                "{name} line {line}: a quoted field starts on this line and is never closed \
                 (an unterminated `\"`): every later row would have become part of it. Close \
                 the quote (a `\"` inside a quoted field is written `\"\"`)"
            ),
            Some(GuardError::TooLong { line, limit }) => eyre!(
                "{name} line {line}: a row longer than {} ({limit} bytes) starts here: an \
                 unterminated `\"`, or not a CSV file? A row that long cannot be one message; \
                 raise --max-message-size if it is meant to be",
                human_bytes(*limit)
            ),
            Some(GuardError::Malformed { line, encoding }) => eyre!(
                "{name} line {line}: not valid {encoding}; check --encoding (the file's \
                 encoding, e.g. latin1, windows-1252, utf-16le)"
            ),
            None => eyre!("cannot read {name}: {io}"),
        }
    }
}

/// The first record of an existing CSV file (the header of a file rows are appended to);
/// None when it has none.
pub fn first_record(path: &Path, delimiter: u8) -> Result<Option<StringRecord>> {
    let file = File::open(path).wrap_err_with(|| format!("cannot read {}", path.display()))?;
    let guard = Guard::new(file, delimiter, 0, crate::cli::DEFAULT_MAX_MESSAGE_SIZE);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(guard);
    let mut record = StringRecord::new();
    match rdr.read_record(&mut record) {
        Ok(true) => Ok(Some(record)),
        Ok(false) => Ok(None),
        Err(e) => Err(eyre!(
            "{}: cannot read its first line as a UTF-8 CSV header to append rows under ({e}); \
             give another --output",
            path.display()
        )),
    }
}

/// `"val" (columns 2, 3), "id" (columns 1, 4)`, the first few.
fn describe_duplicates(dups: &[(String, Vec<usize>)]) -> String {
    const NAMES: usize = 3;
    const POSITIONS: usize = 6;
    let mut parts: Vec<String> = dups
        .iter()
        .take(NAMES)
        .map(|(name, at)| {
            let mut cols: Vec<String> = at.iter().take(POSITIONS).map(usize::to_string).collect();
            if at.len() > POSITIONS {
                cols.push("...".into());
            }
            format!("{name:?} (columns {})", cols.join(", "))
        })
        .collect();
    if dups.len() > NAMES {
        parts.push(format!("and {} more", dups.len() - NAMES));
    }
    parts.join(", ")
}

/// The fix for a file that is not UTF-8.
pub fn encoding_hint() -> &'static str {
    "if the file is in another encoding, give it with --encoding, e.g. --encoding latin1 \
     (or windows-1252, iso-8859-15, utf-16le)"
}

/// The fix for rows wider than the header, when no row fitted it.
pub fn header_hint(header_line: u64) -> String {
    format!(
        "if line {header_line} is not the header but metadata (as in scikit-learn's CSVs), \
         skip it with --skip-rows {header_line} and add --no-header when no header row follows; \
         if the file has no header at all, use --no-header"
    )
}

/// Raw bytes read, counted for progress.
struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The file as UTF-8: as it is, unless --encoding names another encoding or the file starts
/// with a UTF-16 byte order mark.
fn decode<R: Read + Send + 'static>(
    mut raw: R,
    encoding: Option<&'static Encoding>,
) -> io::Result<Box<dyn Read + Send>> {
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < head.len() {
        match raw.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let raw = Prefixed { head, len: n, pos: 0, inner: raw };
    let utf16 = Encoding::for_bom(&head[..n])
        .map(|(e, _)| e)
        .filter(|e| *e == encoding_rs::UTF_16LE || *e == encoding_rs::UTF_16BE);
    Ok(match encoding.or(utf16) {
        // new_decoder sniffs a BOM (which wins over the label) and removes it.
        Some(enc) => Box::new(Transcode::new(raw, enc.new_decoder(), enc)),
        None => Box::new(raw),
    })
}

/// The bytes read to sniff a BOM, then the rest, in one read: csv-core takes a first read
/// holding only a BOM for the end of the file (it strips the BOM and sees no input).
struct Prefixed<R> {
    head: [u8; 3],
    len: usize,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            return self.inner.read(buf);
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
        self.pos += n;
        if n == buf.len() {
            return Ok(n);
        }
        Ok(n + self.inner.read(&mut buf[n..])?)
    }
}

/// Bytes in `encoding` -> UTF-8; a malformed sequence is an error naming its line.
struct Transcode<R> {
    inner: R,
    decoder: Decoder,
    encoding: &'static Encoding,
    raw: Vec<u8>,
    raw_pos: usize,
    raw_len: usize,
    eof: bool,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// Newlines written so far (to name the line of a malformed sequence).
    lines: u64,
    /// A malformed sequence was found on this line: the next read fails.
    failed: Option<u64>,
    done: bool,
}

impl<R: Read> Transcode<R> {
    fn new(inner: R, decoder: Decoder, encoding: &'static Encoding) -> Self {
        Transcode {
            inner,
            decoder,
            encoding,
            raw: vec![0; 64 * 1024],
            raw_pos: 0,
            raw_len: 0,
            eof: false,
            out: vec![0; 64 * 1024 * 3 + 16],
            out_pos: 0,
            out_len: 0,
            lines: 0,
            failed: None,
            done: false,
        }
    }

    /// Decode the next piece into `out`.
    fn fill(&mut self) -> io::Result<()> {
        if self.raw_pos == self.raw_len && !self.eof {
            self.raw_len = loop {
                match self.inner.read(&mut self.raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            self.raw_pos = 0;
            self.eof = self.raw_len == 0;
        }
        let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
            &self.raw[self.raw_pos..self.raw_len],
            &mut self.out,
            self.eof,
        );
        self.raw_pos += read;
        let newlines = memchr::memchr_iter(b'\n', &self.out[..written]).count() as u64;
        self.out_pos = 0;
        self.out_len = written;
        match result {
            DecoderResult::InputEmpty => self.done = self.eof,
            DecoderResult::OutputFull => {}
            DecoderResult::Malformed(..) => self.failed = Some(self.lines + newlines + 1),
        }
        self.lines += newlines;
        Ok(())
    }
}

impl<R: Read> Read for Transcode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if let Some(line) = self.failed {
                let encoding = self.encoding.name();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    GuardError::Malformed { line, encoding },
                ));
            }
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
    }
}

/// Why the guarded reader stopped.
#[derive(Debug, thiserror::Error)]
enum GuardError {
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
enum Quoting {
    Unquoted,
    /// In a quoted field opened on this line.
    Quoted(u64),
    /// Just after a `"` inside a quoted field opened on this line.
    QuoteInQuoted(u64),
}

/// Passes the bytes through to csv, dropping --skip-rows lines, and fails on an unterminated
/// quote or a row over the limit (tracking quotes with memchr, so it costs little).
struct Guard<R> {
    inner: R,
    delimiter: u8,
    skip_left: u64,
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
    fn new(inner: R, delimiter: u8, skip: u64, max_row: u64) -> Self {
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

fn guard_error(e: GuardError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the guard lets through, read in `chunk`-byte pieces, or its error.
    fn guarded(input: &[u8], skip: u64, max: u64, chunk: usize) -> Result<Vec<u8>, String> {
        let mut g = Guard::new(input, b',', skip, max);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match g.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    #[test]
    fn quotes_that_close_pass_through_whatever_the_chunk_size() {
        let ok: &[&[u8]] = &[
            b"a,b\n1,\"two\nlines\"\n",
            b"a,b\n1,\"say \"\"hi\"\"\"\n",
            b"a,b\r\n1,\"x\"\r\n",
            b"a,b\n5\" pipe,x\n",   // a quote inside an unquoted field is data
            b"a,b\n\"ab\"c\"d,x\n", // after a closed field, a quote is data
            b"\xef\xbb\xbf\"a\",b\n1,2\n", // BOM, then a quoted header field
            b"a,b\n1,\"\"",         // an empty quoted field at the end of the file
        ];
        for input in ok {
            for chunk in [1, 2, 3, 7, 4096] {
                assert_eq!(
                    guarded(input, 0, 1 << 20, chunk).as_deref(),
                    Ok(*input),
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn an_unterminated_quote_names_the_line_it_opened_on() {
        for chunk in [1, 5, 4096] {
            let err = guarded(b"a,b\n1,ok\n2,\"x\n3,y\n4,z\n", 0, 1 << 20, chunk);
            assert_eq!(err, Err("line 3: unterminated quote".into()), "chunk {chunk}");
            let err = guarded(b"a,b\n1,\"x\"\"\n", 0, 1 << 20, chunk);
            assert_eq!(err, Err("line 2: unterminated quote".into()), "chunk {chunk}");
        }
    }

    #[test]
    fn a_row_over_the_limit_names_the_line_it_began_on() {
        let mut input = b"a,b\n1,x\n2,".to_vec();
        input.extend(std::iter::repeat_n(b'y', 100));
        input.extend_from_slice(b"\n3,z\n");
        assert_eq!(guarded(&input, 0, 50, 16), Err("line 3: row longer than 50 bytes".into()));
        // A runaway quote is caught by the limit long before the end of the file.
        let mut runaway = b"a,b\n\"x\n".to_vec();
        for _ in 0..100 {
            runaway.extend_from_slice(b"1,2\n");
        }
        assert_eq!(guarded(&runaway, 0, 50, 16), Err("line 2: row longer than 50 bytes".into()));
        assert!(guarded(&input, 0, 200, 16).is_ok());
        // A long row inside one piece: the rows before it still go on, then the error.
        let mut g = Guard::new(&input[..], b',', 0, 50);
        let mut buf = vec![0u8; 4096];
        assert_eq!(g.read(&mut buf).expect("rows before the long one"), 8);
        assert_eq!(&buf[..8], b"a,b\n1,x\n");
        let err = g.read(&mut buf).expect_err("then the long row");
        assert_eq!(err.to_string(), "line 3: row longer than 50 bytes");
    }

    #[test]
    fn skipped_lines_are_dropped_and_still_counted() {
        let input = b"569,30,\"malignant\nmeta\na,b\n1,\"x\n";
        assert_eq!(guarded(input, 2, 1 << 20, 3), Err("line 4: unterminated quote".into()));
        assert_eq!(guarded(b"m\na,b\n", 1, 1 << 20, 2).as_deref(), Ok(&b"a,b\n"[..]));
        assert_eq!(guarded(b"m\n", 5, 1 << 20, 2).as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn latin1_and_utf16_decode_to_utf8() {
        let latin1 = b"City\n\xd5akman\n".to_vec();
        let mut out = String::new();
        decode(io::Cursor::new(latin1), Encoding::for_label(b"latin1"))
            .expect("decoder")
            .read_to_string(&mut out)
            .expect("decodes");
        assert_eq!(out, "City\nÕakman\n");
        // UTF-16LE with a BOM is recognised without --encoding.
        let mut utf16 = vec![0xff, 0xfe];
        for u in "a\tb\n1\t\u{e9}\n".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let mut out = String::new();
        decode(io::Cursor::new(utf16), None)
            .expect("decoder")
            .read_to_string(&mut out)
            .expect("decodes");
        assert_eq!(out, "a\tb\n1\té\n");
    }

    #[test]
    fn the_first_read_holds_more_than_a_bom() {
        let mut r =
            decode(io::Cursor::new(b"\xef\xbb\xbf\"id\",n\n".to_vec()), None).expect("reader");
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).expect("reads"), 10, "the BOM and the line");
    }

    #[test]
    fn malformed_bytes_in_the_given_encoding_name_their_line() {
        let sjis = b"a\nb\n\x82\n".to_vec();
        let mut out = String::new();
        let err = decode(io::Cursor::new(sjis), Encoding::for_label(b"shift_jis"))
            .expect("decoder")
            .read_to_string(&mut out)
            .expect_err("malformed");
        assert_eq!(err.to_string(), "line 3: not valid Shift_JIS");
    }

    #[test]
    fn duplicates_are_described_briefly() {
        let dups = tabular::duplicate_columns(["0", "0", "5", "5", "0", "0", "0", "0", "0", "0"]);
        assert_eq!(
            describe_duplicates(&dups),
            r#""0" (columns 1, 2, 5, 6, 7, 8, ...), "5" (columns 3, 4)"#
        );
    }
}

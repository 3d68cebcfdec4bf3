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
use color_eyre::eyre::{Report, Result, WrapErr, bail, eyre};
use csv::StringRecord;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod decode;
mod guard;
mod jsonl;
mod piped;
mod rows;
mod sniff;
#[cfg(test)]
mod tests;

pub use piped::STOPPED;
pub use rows::{Item, Opening, Rows, STDIN_SOURCE};

use decode::{Counted, decode};
use guard::{Guard, GuardError};

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
    /// How the input is named in messages (its path, or `stdin`).
    shown: String,
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
        let file = File::open(path).wrap_err_with(|| cannot_read(path))?;
        // A FIFO or /dev/stdin is fine here (`request`); a directory opens but cannot be read.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            bail!("{} is a directory; --file needs a CSV file", path.display());
        }
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let counted = Counted { inner: file, n: Arc::clone(&raw_bytes) };
        let named = Named { shown: path.display().to_string(), source: source_name(path) };
        CsvInput::from_reader(Box::new(counted), named, format, raw_bytes)
    }

    /// [`CsvInput::open`] on bytes already opened (a file, stdin), counted in `raw_bytes`.
    pub(crate) fn from_reader(
        raw: Box<dyn Read + Send>,
        named: Named,
        format: &CsvFormat,
        raw_bytes: Arc<AtomicU64>,
    ) -> Result<CsvInput> {
        let decoded = decode(raw, format.encoding)
            .wrap_err_with(|| format!("cannot read {}; check the --file path", named.shown))?;
        let guard = Guard::new(decoded, format.delimiter, format.skip_rows, format.max_row_bytes);
        let rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(format.delimiter)
            .buffer_capacity(BUFFER)
            .from_reader(guard);
        let mut input = CsvInput {
            shown: named.shown,
            source: named.source,
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
            self.shown
        ))
    }

    fn read_header(&mut self, format: &CsvFormat) -> Result<()> {
        let mut header = StringRecord::new();
        let line = match self.read_file(&mut header)? {
            Next::Row(line) => line,
            Next::Bad { line, why } => {
                return Err(eyre!(
                    "{} line {line}: the {} is {why}: {}",
                    self.shown,
                    if format.header { "header" } else { "first row" },
                    encoding_hint()
                ));
            }
            Next::End if format.skip_rows > 0 && self.rdr.get_ref().skip_left > 0 => {
                return Err(eyre!(
                    "{}: nothing is left after the {n} lines --skip-rows {n} drops; lower \
                     --skip-rows",
                    self.shown,
                    n = format.skip_rows
                ));
            }
            Next::End => {
                return Err(eyre!(
                    "{} is empty: no header row and no data{}; check the --file path",
                    self.shown,
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
                self.shown,
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
                    self.shown,
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
        let name = &self.shown;
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

/// An input's names: as shown in messages, and as its messages' `source` header.
pub(crate) struct Named {
    /// Its path, or `stdin`.
    pub(crate) shown: String,
    /// The file's base name, or `stdin`.
    pub(crate) source: String,
}

/// The `source` header of a file's rows: its base name.
pub(crate) fn source_name(path: &Path) -> String {
    path.file_name().map_or_else(|| "data.csv".into(), |n| n.to_string_lossy().into_owned())
}

/// The error of an input file that cannot be opened: it names the file and the flag.
fn cannot_read(path: &Path) -> String {
    format!("cannot read {}; check the --file path", path.display())
}

/// The fix for rows wider than the header, when no row fitted it.
pub fn header_hint(header_line: u64) -> String {
    format!(
        "if line {header_line} is not the header but metadata (as in scikit-learn's CSVs), \
         skip it with --skip-rows {header_line} and add --no-header when no header row follows; \
         if the file has no header at all, use --no-header"
    )
}

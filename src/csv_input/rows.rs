//! The rows of `produce tabular` and `request`: CSV or JSON lines (`--format`, else detected),
//! from a file or stdin (`-`), each row handed over as one JSON object's text.
//!
//! Detection: the name (`*.jsonl`, `*.ndjson`, `*.json-lines`: JSON lines; `*.csv`, `*.tsv`:
//! CSV), else the first non-blank byte after --skip-rows lines (`{`: JSON lines). CSV whose
//! first line starts with `{` is refused with the fix (it used to become one garbage
//! column), and so are CSV-only flags on JSON lines (a usage error).

use super::jsonl::JsonLines;
use super::piped::Piped;
use super::{CsvInput, Named, Next, cannot_read, sniff, source_name};
use crate::codec::tabular::Encoder;
use crate::config::{CsvFormat, RowsFormat, UsageError, is_stdin};
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use csv::StringRecord;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The `source` header (and the name in messages) of rows read from stdin.
pub const STDIN_SOURCE: &str = "stdin";

/// An open input of rows, its header (CSV) or first object (JSON lines) read and checked.
pub struct Rows {
    inner: Inner,
    encoder: Encoder,
    /// The `source` header: the file's base name, or `stdin`.
    source: String,
    raw_bytes: Arc<AtomicU64>,
    /// Rows read so far (the `row` header of the last one).
    row: u64,
}

enum Inner {
    Csv { input: Box<CsvInput>, record: StringRecord },
    Jsonl(JsonLines),
}

/// The next thing [`Rows::next`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A row, its JSON object written out.
    Row {
        /// The line it starts on.
        line: u64,
        /// Its number among the rows (the `row` header).
        row: u64,
        /// A CSV row shorter than the header, padded with nulls.
        padded: bool,
    },
    /// A row that cannot be sent: skip it, name it.
    Bad {
        /// The line it starts on.
        line: u64,
        /// Why.
        why: String,
    },
    /// The end of the input.
    End,
}

/// How to open an input.
pub struct Opening<'a> {
    /// Only a regular file (or stdin) will do: `produce tabular` reads it again for
    /// --repeat. `request` also takes a FIFO.
    pub regular: bool,
    /// The run's stop flag: a read of stdin (or a FIFO) waiting for input gives up once set.
    pub stop: &'a Arc<AtomicBool>,
}

impl Rows {
    /// Open `file` (`-`: stdin) and read its first rows (the header of a CSV, the opening
    /// checks): errors name the input and the fix. Also the file's size (None for stdin).
    pub fn open(file: &Path, format: &CsvFormat, how: &Opening<'_>) -> Result<(Rows, Option<u64>)> {
        Rows::open_input(file, format, how).map_err(|e| {
            if !how.stop.load(Ordering::SeqCst) {
                return e;
            }
            eyre!("stopped by a signal while reading the first rows of {}; nothing was sent", {
                if is_stdin(file) { STDIN_SOURCE.into() } else { file.display().to_string() }
            })
        })
    }

    fn open_input(
        file: &Path,
        format: &CsvFormat,
        how: &Opening<'_>,
    ) -> Result<(Rows, Option<u64>)> {
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let (raw, named, size): (Box<dyn Read + Send>, Named, Option<u64>) = if is_stdin(file) {
            let stdin = Piped::new(std::io::stdin(), Arc::clone(how.stop));
            let named = Named { shown: STDIN_SOURCE.into(), source: STDIN_SOURCE.into() };
            (Box::new(stdin), named, None)
        } else {
            let (opened, size) = open_file(file, how)?;
            let named = Named { shown: file.display().to_string(), source: source_name(file) };
            (opened, named, size)
        };
        let source = named.source.clone();
        let counted = super::decode::Counted { inner: raw, n: Arc::clone(&raw_bytes) };
        let (raw, jsonl) = choose(Box::new(counted), file, format, &named.shown)?;
        let inner = if jsonl {
            let max = format.max_row_bytes;
            Inner::Jsonl(JsonLines::open(raw, named.shown, format.skip_rows, max)?)
        } else {
            let input = CsvInput::from_reader(raw, named, format, Arc::clone(&raw_bytes))?;
            Inner::Csv { input: Box::new(input), record: StringRecord::new() }
        };
        let encoder = match &inner {
            Inner::Csv { input, .. } => input.encoder(),
            Inner::Jsonl(_) => Encoder::new(&source, std::iter::empty()),
        };
        Ok((Rows { inner, encoder, source, raw_bytes, row: 0 }, size))
    }

    /// The next row, its JSON object written into `out` (replacing what was there). A fatal
    /// error (an unterminated quote, a read error, a signal while waiting on stdin) stops
    /// the input.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Result<Item> {
        match &mut self.inner {
            Inner::Csv { input, record } => match input.read(record)? {
                Next::End => Ok(Item::End),
                Next::Bad { line, why } => Ok(Item::Bad { line, why }),
                Next::Row(line) => {
                    self.row += 1;
                    out.clear();
                    Ok(match self.encoder.write_object(record, out) {
                        Err(e) => Item::Bad { line, why: e.0 },
                        Ok(()) => {
                            Item::Row { line, row: self.row, padded: self.encoder.is_short(record) }
                        }
                    })
                }
            },
            Inner::Jsonl(lines) => match lines.read(out)? {
                Next::End => Ok(Item::End),
                Next::Bad { line, why } => {
                    self.row += 1;
                    Ok(Item::Bad { line, why })
                }
                Next::Row(line) => {
                    self.row += 1;
                    Ok(Item::Row { line, row: self.row, padded: false })
                }
            },
        }
    }

    /// The encoder of this input's messages (`source` header, ids).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Set the `--repeat` pass number (part of the message ids).
    pub fn set_pass(&mut self, pass: u64) {
        self.encoder.set_pass(pass);
    }

    /// The `source` header of the rows: the file's base name, or `stdin`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// For CSV, the line of the header (or first row): where a misread file goes wrong.
    pub fn csv_header_line(&self) -> Option<u64> {
        match &self.inner {
            Inner::Csv { input, .. } => Some(input.header_line()),
            Inner::Jsonl(_) => None,
        }
    }

    /// Bytes of the input read so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.raw_bytes.load(Ordering::Relaxed)
    }
}

/// Open a file, refusing what it cannot read from: a directory always, anything but a regular
/// file when `how.regular`. A FIFO (`request`) is read in a way a signal can interrupt.
fn open_file(file: &Path, how: &Opening<'_>) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    let meta = std::fs::metadata(file).wrap_err_with(|| cannot_read(file))?;
    if meta.is_dir() {
        bail!("{} is a directory; --file needs a CSV or JSON lines file", file.display());
    }
    if how.regular && !meta.is_file() {
        bail!(
            "{} is not a regular file; --file needs a file, or - to read stdin (e.g. `zcat \
             rows.csv.gz | mqdemo produce tabular --file -`)",
            file.display()
        );
    }
    let opened = File::open(file).wrap_err_with(|| cannot_read(file))?;
    if meta.is_file() {
        return Ok((Box::new(opened), Some(meta.len())));
    }
    Ok((Box::new(Piped::new(opened, Arc::clone(how.stop))), None))
}

/// Decide CSV or JSON lines (true) for `raw`, and give back a reader of all its bytes.
fn choose(
    raw: Box<dyn Read + Send>,
    file: &Path,
    format: &CsvFormat,
    shown: &str,
) -> Result<(Box<dyn Read + Send>, bool)> {
    let named = if is_stdin(file) { None } else { sniff::by_name(file) };
    // UTF-16 (--encoding utf-16le): a `{` byte would not mean `{`; look only when ASCII
    // bytes mean ASCII (UTF-8, latin1, shift_jis, ...).
    let ascii = format.encoding.is_none_or(|e| e.is_ascii_compatible());
    let (raw, first): (Box<dyn Read + Send>, Option<u8>) = if ascii {
        let (replay, first) = sniff::first_byte(raw, format.skip_rows)
            .wrap_err_with(|| format!("cannot read {shown}; check the --file path"))?;
        (Box::new(replay), first)
    } else {
        (raw, None)
    };
    let (jsonl, because) = match (format.rows, named) {
        (RowsFormat::Jsonl, _) => (true, "--format jsonl"),
        (RowsFormat::Csv, _) => (false, "--format csv"),
        (RowsFormat::Detect, Some(by_name)) => (by_name == RowsFormat::Jsonl, "its name"),
        (RowsFormat::Detect, None) => (first == Some(b'{'), "it starts with `{`"),
    };
    if !jsonl && first == Some(b'{') {
        return Err(eyre!(
            "{shown}: its first line starts with `{{`, as JSON lines do, but it is read as CSV \
             ({because}); read it with --format jsonl (CSV would make each line one garbage \
             column), or, if lines before the CSV header start with `{{`, skip them with \
             --skip-rows N. Nothing was sent"
        ));
    }
    if let (true, Some(flag)) = (jsonl, format.csv_flag) {
        return Err(UsageError(format!(
            "{shown} is read as JSON lines ({because}), and {flag} is for CSV only: drop {flag}, \
             or give --format csv if it is CSV"
        ))
        .into());
    }
    Ok((raw, jsonl))
}

//! CSV rows out (`consume tabular --format csv`): the columns are fixed once, from the header
//! of the file appended to or else from the first message, and every row is written under
//! them by name. A row with a column they lack is refused (the caller rejects the message, so
//! it is dead-lettered, never written into the wrong column or dropped).

use crate::codec::tabular;
use crate::csv_input;
use color_eyre::eyre::{Result, WrapErr, eyre};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// An output file opened for appending, and what is already in it.
pub(crate) struct Appended {
    /// The file, positioned at its end (a line break already added if its last line had
    /// none, so appended rows never join it).
    pub file: File,
}

/// Open `path` for appending (created if missing).
pub(crate) fn append(path: &Path) -> Result<Appended> {
    let mut file =
        OpenOptions::new().create(true).append(true).read(true).open(path).wrap_err_with(|| {
            format!("cannot open output file {}; check the --output path", path.display())
        })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .wrap_err_with(|| format!("cannot read output file {}", path.display()))?;
        if last[0] != b'\n' && last[0] != b'\r' {
            file.write_all(b"\n")
                .wrap_err_with(|| format!("cannot write output file {}", path.display()))?;
        }
    }
    Ok(Appended { file })
}

/// CSV rows under fixed columns.
pub(crate) struct CsvOut {
    w: csv::Writer<Box<dyn Write + Send>>,
    /// The columns, once known, and each one's position.
    columns: Option<(Vec<String>, HashMap<String, usize>)>,
    /// A header row is still to be written.
    write_header: bool,
    /// Where the rows go, for messages.
    name: String,
}

impl CsvOut {
    /// Rows into `w`. `existing`: the file appended to, whose first line (when it has one)
    /// fixes the columns: its header, or with `header` false its width (columns "0", "1", ...).
    pub(crate) fn new(
        w: Box<dyn Write + Send>,
        existing: Option<&Path>,
        delimiter: u8,
        header: bool,
    ) -> Result<CsvOut> {
        let first = existing.map(|p| csv_input::first_record(p, delimiter)).transpose()?.flatten();
        let columns = match (&first, existing) {
            (Some(rec), Some(path)) if header => {
                let dups = tabular::duplicate_columns(rec.iter());
                if !dups.is_empty() {
                    return Err(eyre!(
                        "{} line 1: its header repeats column names ({}), so rows cannot be \
                         mapped to it; give another --output",
                        path.display(),
                        dups.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                    ));
                }
                Some(rec.iter().map(str::to_string).collect())
            }
            (Some(rec), _) => Some(tabular::positional_columns(rec.len())),
            (None, _) => None,
        };
        let name = existing.map_or_else(|| "stdout".into(), |p| p.display().to_string());
        let w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .buffer_capacity(64 * 1024)
            .from_writer(w);
        Ok(CsvOut {
            w,
            write_header: header && first.is_none(),
            columns: columns.map(indexed),
            name,
        })
    }

    /// Why these rows cannot be written under the columns (a column they lack), if so.
    pub(crate) fn misfit(&self, rows: &[Map<String, Value>]) -> Option<String> {
        let (cols, index) = self.columns.as_ref()?;
        let key = rows.iter().flat_map(|r| r.keys()).find(|k| !index.contains_key(*k))?;
        let shown: Vec<&str> = cols.iter().take(8).map(String::as_str).collect();
        Some(format!(
            "column {key:?} is not among the columns of {} ({}{}); written there it would be \
             lost",
            self.name,
            shown.join(", "),
            if cols.len() > 8 { ", ..." } else { "" }
        ))
    }

    /// Write rows (checked with [`CsvOut::misfit`]); the first message fixes the columns when
    /// nothing did: every column any of its rows has, in order of appearance.
    pub(crate) fn write(&mut self, rows: &[Map<String, Value>]) -> Result<()> {
        let (cols, index) = self.columns.get_or_insert_with(|| {
            let mut cols: Vec<String> = Vec::new();
            for k in rows.iter().flat_map(|r| r.keys()) {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
            indexed(cols)
        });
        if self.write_header {
            self.w.write_record(cols.iter()).wrap_err("cannot write rows")?;
            self.write_header = false;
        }
        let mut fields: Vec<Cow<'_, str>> = Vec::with_capacity(cols.len());
        for row in rows {
            fields.clear();
            fields.resize(cols.len(), Cow::Borrowed(""));
            for (k, v) in row {
                if let Some(&i) = index.get(k) {
                    fields[i] = tabular::csv_field(v);
                }
            }
            self.w
                .write_record(fields.iter().map(|f| f.as_bytes()))
                .wrap_err("cannot write rows")?;
        }
        Ok(())
    }

    /// Flush to the underlying writer.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn indexed(cols: Vec<String>) -> (Vec<String>, HashMap<String, usize>) {
    let index = cols.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
    (cols, index)
}

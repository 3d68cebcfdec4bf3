//! `consume tabular` to stdout or a file: JSON lines (the objects' own text), CSV, or one
//! envelope per message (`--format envelope`: any message, properties and headers too).

use super::meta::{RowMeta, clash, object_keys};
use super::{CountingHandler, Counts, Tally};
use crate::amqp::{Disposition, Handler, delivery_meta};
use crate::codec::{Delivery, envelope, tabular};
use crate::config::RowFormat;
use crate::csv_output::{self, CsvOut};
use crate::output::Reporter;
use color_eyre::eyre::{Result, WrapErr};
use serde_json::{Map, Value};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// Rows to stdout or a file, as JSON lines or CSV; or envelopes.
pub(super) struct RowHandler {
    out: RowOut,
    tally: Tally,
    /// Most memory one message's decoded rows may take (--prefetch-bytes).
    pub(super) decoded_limit: u64,
    /// --with-meta: each row gets the [`super::meta::COLUMNS`] fields.
    pub(super) with_meta: bool,
    /// Reading a stream: --with-meta adds the stream offset.
    pub(super) stream: bool,
    /// The output file (--output, or stdout when it is a regular file), synced at each
    /// flush: a stream checkpoint saved after the flush must not be on disk ahead of the
    /// rows it covers. A pipe or terminal has no disk to sync to.
    sync: Option<std::fs::File>,
}

enum RowOut {
    Jsonl(BufWriter<Box<dyn Write + Send>>),
    Envelope(BufWriter<Box<dyn Write + Send>>),
    Csv(Box<CsvOut>),
}

impl RowHandler {
    pub(super) fn new(
        output: Option<&PathBuf>,
        format: RowFormat,
        stdout: Box<dyn Write + Send>,
        reporter: Reporter,
    ) -> Result<RowHandler> {
        let (w, sync): (Box<dyn Write + Send>, _) = match output {
            None => (stdout, stdout_file()),
            Some(path) => {
                let file = csv_output::append(path)?.file;
                let sync = file.try_clone().wrap_err("cannot open the output file twice")?;
                (Box::new(file), Some(sync))
            }
        };
        let out = match format {
            RowFormat::Jsonl => RowOut::Jsonl(BufWriter::with_capacity(64 * 1024, w)),
            RowFormat::Envelope => RowOut::Envelope(BufWriter::with_capacity(64 * 1024, w)),
            RowFormat::Csv { delimiter, header } => RowOut::Csv(Box::new(CsvOut::new(
                w,
                output.map(PathBuf::as_path),
                delimiter,
                header,
            )?)),
        };
        Ok(RowHandler {
            out,
            tally: Tally::new(Counts { tabular: true, ..Counts::default() }, reporter),
            decoded_limit: crate::cli::DEFAULT_PREFETCH_BYTES,
            with_meta: false,
            stream: false,
            sync,
        })
    }

    /// Flush without syncing the output file.
    pub(super) fn no_sync(&mut self) {
        self.sync = None;
    }

    fn write_rows(&mut self, rows: &[Map<String, Value>]) -> Result<()> {
        match &mut self.out {
            RowOut::Jsonl(w) | RowOut::Envelope(w) => {
                for row in rows {
                    serde_json::to_writer(&mut *w, row).wrap_err("cannot write rows")?;
                    w.write_all(b"\n").wrap_err("cannot write rows")?;
                }
            }
            RowOut::Csv(csv) => csv.write(rows)?,
        }
        Ok(())
    }

    /// JSON lines, fast path: the objects' own text, one per line (with --with-meta, the
    /// fields spliced in at the end of each).
    fn write_raw(
        &mut self,
        d: &Delivery,
        objects: &[&str],
        meta: Option<&RowMeta>,
    ) -> Result<Disposition> {
        if meta.is_some() {
            let keys: Result<Vec<Vec<String>>, String> =
                objects.iter().map(|o| object_keys(o)).collect();
            let keys = match keys {
                Ok(keys) => keys.concat(),
                Err(why) => return Ok(self.tally.failed(&why)),
            };
            if let Some(why) = clash(keys.iter().map(String::as_str)) {
                return Ok(self.tally.failed(&why));
            }
        }
        if self.tally.repeat(d) {
            return Ok(Disposition::Ack);
        }
        if let RowOut::Jsonl(w) = &mut self.out {
            for (i, o) in objects.iter().enumerate() {
                let spliced = meta.map(|m| m.splice(o, i));
                w.write_all(spliced.as_deref().unwrap_or(o).as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .wrap_err("cannot write rows")?;
            }
        }
        Ok(self.tally.stored(d, objects.len() as u64))
    }

    /// `--format envelope`: the whole message as one line, whatever its body.
    fn write_envelope(&mut self, d: &Delivery) -> Result<Disposition> {
        if self.tally.repeat(d) {
            return Ok(Disposition::Ack);
        }
        if let RowOut::Envelope(w) = &mut self.out {
            let line = envelope::encode(&delivery_meta(d), &d.body);
            w.write_all(&line).and_then(|()| w.write_all(b"\n")).wrap_err("cannot write rows")?;
        }
        Ok(self.tally.stored(d, 1))
    }

    /// CSV output: why a message's rows cannot be written under the columns, if so.
    fn unknown_columns(&self, rows: &[Map<String, Value>]) -> Option<String> {
        match &self.out {
            RowOut::Csv(csv) => csv.misfit(rows),
            RowOut::Jsonl(_) | RowOut::Envelope(_) => None,
        }
    }
}

/// Stdout as a file that can be synced, when it is a regular file (`> rows.jsonl`); None
/// for a pipe, a terminal or anything else.
fn stdout_file() -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    let out = std::io::stdout();
    let fd = out.as_fd();
    let stat = rustix::fs::fstat(fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    fd.try_clone_to_owned().ok().map(std::fs::File::from)
}

impl Handler for RowHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        if matches!(self.out, RowOut::Envelope(_)) {
            return self.write_envelope(d);
        }
        let meta = self.with_meta.then(|| RowMeta::of(d, self.stream));
        if matches!(self.out, RowOut::Jsonl(_)) {
            match tabular::raw_objects(&d.body) {
                Err(e) => return Ok(self.tally.failed(&e.0)),
                Ok(Some(objects)) => return self.write_raw(d, &objects, meta.as_ref()),
                Ok(None) => {} // pretty-printed: re-serialise below
            }
        }
        let mut rows = match tabular::decode_within(&d.body, self.decoded_limit) {
            Ok(rows) if rows.is_empty() => return Ok(self.tally.failed("empty batch")),
            Ok(rows) => rows,
            Err(e) => return Ok(self.tally.failed(&e.0)),
        };
        if let Some(m) = &meta {
            if let Some(why) = clash(rows.iter().flat_map(|r| r.keys().map(String::as_str))) {
                return Ok(self.tally.failed(&why));
            }
            m.add(&mut rows);
        }
        if let Some(why) = self.unknown_columns(&rows) {
            return Ok(self.tally.failed(&why));
        }
        if self.tally.repeat(d) {
            return Ok(Disposition::Ack);
        }
        self.write_rows(&rows)?;
        Ok(self.tally.stored(d, rows.len() as u64))
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.out {
            RowOut::Jsonl(w) | RowOut::Envelope(w) => w.flush(),
            RowOut::Csv(csv) => csv.flush(),
        }
        .wrap_err("cannot write rows")?;
        if let Some(file) = &self.sync {
            file.sync_data().wrap_err("cannot sync the rows to disk")?;
        }
        Ok(())
    }
}

impl CountingHandler for RowHandler {
    fn counts(&self) -> Counts {
        self.tally.counts
    }
}

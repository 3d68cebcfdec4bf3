//! `produce tabular`: CSV rows, one message each or `--batch-size` to a message, over
//! one or more passes (`--repeat`).

use super::pump::Pump;
use crate::codec::{Message, tabular};
use crate::config::CsvFormat;
use crate::csv_input::{self, CsvInput, Next};
use color_eyre::eyre::Result;
use std::path::Path;

#[derive(Clone, Copy)]
pub(super) struct RowLimits {
    pub(super) num_records: Option<u64>,
    pub(super) batch_size: u64,
    pub(super) repeat: bool,
}

pub(super) fn stream_csv(
    first: CsvInput,
    path: &Path,
    format: &CsvFormat,
    limits: RowLimits,
    pump: &mut Pump<'_>,
) -> Result<()> {
    let mut read = 0u64;
    let mut input = first;
    let mut rows = CsvRows::default();
    for pass in 0.. {
        if pass > 0 {
            input = CsvInput::open(path, format)?;
        }
        let mut encoder = input.encoder();
        encoder.set_pass(pass);
        let more = rows.pass(&mut input, &encoder, limits, &mut read, pump);
        pump.padded_note = padded_note(rows.padded);
        if !more? || !limits.repeat || read == 0 {
            break;
        }
    }
    Ok(())
}

pub(super) fn padded_note(padded: u64) -> String {
    match padded {
        0 => String::new(),
        1 => "padded 1 short row with nulls".into(),
        n => format!("padded {n} short rows with nulls"),
    }
}

/// State of the CSV reading across passes.
#[derive(Default)]
struct CsvRows {
    /// Short rows padded with nulls.
    padded: u64,
    /// The --encoding hint was given once.
    hinted_encoding: bool,
}

impl CsvRows {
    /// One pass over the file; Ok(false) when the run must stop (limit reached or signal).
    fn pass(
        &mut self,
        input: &mut CsvInput,
        encoder: &tabular::Encoder,
        limits: RowLimits,
        read: &mut u64,
        pump: &mut Pump<'_>,
    ) -> Result<bool> {
        let mut record = csv::StringRecord::new();
        let mut batch = Batch::default();
        let mut row = 0u64;
        loop {
            if limits.num_records.is_some_and(|n| *read >= n) {
                batch.flush(encoder, pump)?;
                return Ok(false);
            }
            let (line, encoded) = match input.read(&mut record) {
                Err(e) => {
                    batch.flush(encoder, pump)?;
                    return Err(e);
                }
                Ok(Next::End) => return batch.flush(encoder, pump),
                Ok(Next::Bad { line, why }) => (line, Err(why)),
                Ok(Next::Row(line)) => {
                    row += 1;
                    let short = encoder.is_short(&record);
                    let encoded = if limits.batch_size == 1 {
                        encoder.encode_row(&record, row).map(Some)
                    } else {
                        batch.add(encoder, &record, row).map(|()| None)
                    };
                    self.padded += u64::from(encoded.is_ok() && short);
                    (line, encoded.map_err(|e| e.0))
                }
            };
            *read += 1;
            let keep = match encoded {
                Err(why) => self.skip(input, line, why, pump),
                Ok(Some(msg)) => pump.send(msg)?,
                Ok(None) if batch.rows >= limits.batch_size => batch.flush(encoder, pump)?,
                Ok(None) => true,
            };
            pump.reporter.set_position(input.bytes_read());
            if !keep {
                batch.flush(encoder, pump)?;
                return Ok(false);
            }
        }
    }

    /// Skip a row that cannot be sent, named (the first non-UTF-8 one with the fix).
    fn skip(&mut self, input: &CsvInput, line: u64, why: String, pump: &mut Pump<'_>) -> bool {
        let why = if why == csv_input::NOT_UTF8 && !self.hinted_encoding {
            self.hinted_encoding = true;
            format!("{why}; {}", csv_input::encoding_hint())
        } else {
            why
        };
        pump.skip(&format!("{} line {line}", input.source), &why);
        pump.keep_going()
    }
}

/// Rows collected for one `--batch-size` message.
#[derive(Default)]
pub(super) struct Batch {
    body: Vec<u8>,
    first_row: u64,
    rows: u64,
}

impl Batch {
    pub(super) fn add(
        &mut self,
        encoder: &tabular::Encoder,
        record: &csv::StringRecord,
        row: u64,
    ) -> Result<(), tabular::RowError> {
        let mark = self.body.len();
        self.body.push(if self.rows == 0 { b'[' } else { b',' });
        if let Err(e) = encoder.write_object(record, &mut self.body) {
            self.body.truncate(mark);
            return Err(e);
        }
        if self.rows == 0 {
            self.first_row = row;
        }
        self.rows += 1;
        Ok(())
    }

    /// The batch as one message (a JSON array of its rows), leaving it empty; None when it
    /// holds no rows.
    pub(super) fn take(&mut self, encoder: &tabular::Encoder) -> Option<Message> {
        if self.rows == 0 {
            return None;
        }
        let mut body = std::mem::take(&mut self.body);
        body.push(b']');
        let msg = encoder.encode_batch(body, self.first_row, self.rows);
        self.rows = 0;
        Some(msg)
    }

    /// Publish the batch if it holds rows; Ok(false) on a signal.
    fn flush(&mut self, encoder: &tabular::Encoder, pump: &mut Pump<'_>) -> Result<bool> {
        match self.take(encoder) {
            None => Ok(pump.keep_going()),
            Some(msg) => pump.send(msg),
        }
    }
}

//! `produce tabular`: rows (CSV or JSON lines, from a file or stdin), one message each or
//! `--batch-size` to a message, over one or more passes (`--repeat`). Each row is published
//! as soon as it is read: a slow pipe is never held back until its end.

use super::pump::Pump;
use crate::codec::{Message, tabular};
use crate::config::CsvFormat;
use crate::csv_input::{self, Item, Opening, Rows};
use color_eyre::eyre::Result;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Clone, Copy)]
pub(super) struct RowLimits {
    pub(super) num_records: Option<u64>,
    pub(super) batch_size: u64,
    pub(super) repeat: bool,
}

/// Stream the rows of `first` (and, with --repeat, of `path` opened again for each pass).
pub(super) fn stream_rows(
    first: Rows,
    (path, format): (&Path, &CsvFormat),
    limits: RowLimits,
    stop: &Arc<AtomicBool>,
    pump: &mut Pump<'_>,
) -> Result<()> {
    let mut read = 0u64;
    let mut input = first;
    let mut rows = RowState::default();
    for pass in 0.. {
        if pass > 0 {
            input = Rows::open(path, format, &Opening { regular: true, stop })?.0;
        }
        input.set_pass(pass);
        let more = rows.pass(&mut input, limits, &mut read, pump);
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

/// State of the reading across passes.
#[derive(Default)]
struct RowState {
    /// Short rows padded with nulls.
    padded: u64,
    /// The --encoding hint was given once.
    hinted_encoding: bool,
}

impl RowState {
    /// One pass over the input; Ok(false) when the run must stop (limit reached or signal).
    fn pass(
        &mut self,
        input: &mut Rows,
        limits: RowLimits,
        read: &mut u64,
        pump: &mut Pump<'_>,
    ) -> Result<bool> {
        let mut object = Vec::new();
        let mut batch = Batch::default();
        loop {
            if limits.num_records.is_some_and(|n| *read >= n) {
                batch.flush(input.encoder(), pump)?;
                return Ok(false);
            }
            let (line, sent) = match input.next(&mut object) {
                Err(e) => {
                    batch.flush(input.encoder(), pump)?;
                    // A signal while waiting on stdin ends the run as a signal does.
                    return if pump.keep_going() { Err(e) } else { Ok(false) };
                }
                Ok(Item::End) => return batch.flush(input.encoder(), pump),
                Ok(Item::Bad { line, why }) => (line, Err(why)),
                Ok(Item::Row { line, row, padded }) => {
                    self.padded += u64::from(padded);
                    if limits.batch_size == 1 {
                        let msg = input.encoder().encode_object(std::mem::take(&mut object), row);
                        (line, Ok(Some(msg)))
                    } else {
                        batch.add_object(&object, row);
                        (line, Ok(None))
                    }
                }
            };
            *read += 1;
            let keep = match sent {
                Err(why) => self.skip(input, line, why, pump),
                Ok(Some(msg)) => pump.send(msg)?,
                Ok(None) if batch.rows >= limits.batch_size => {
                    batch.flush(input.encoder(), pump)?
                }
                Ok(None) => true,
            };
            pump.reporter.set_position(match limits.num_records {
                Some(_) => *read,
                None => input.bytes_read(),
            });
            if !keep {
                batch.flush(input.encoder(), pump)?;
                return Ok(false);
            }
        }
    }

    /// Skip a row that cannot be sent, named (the first non-UTF-8 one with the fix).
    fn skip(&mut self, input: &Rows, line: u64, why: String, pump: &mut Pump<'_>) -> bool {
        let why = if why == csv_input::NOT_UTF8 && !self.hinted_encoding {
            self.hinted_encoding = true;
            format!("{why}; {}", csv_input::encoding_hint())
        } else {
            why
        };
        pump.skip(&format!("{} line {line}", input.source()), &why);
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
    /// Add one row, already written as a JSON object.
    pub(super) fn add_object(&mut self, object: &[u8], row: u64) {
        self.body.push(if self.rows == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(object);
        if self.rows == 0 {
            self.first_row = row;
        }
        self.rows += 1;
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
    /// Send the rows held; after a stop signal too, since they were already read (from
    /// stdin they could not be read again): the run ends once they are confirmed.
    fn flush(&mut self, encoder: &tabular::Encoder, pump: &mut Pump<'_>) -> Result<bool> {
        match self.take(encoder) {
            None => Ok(pump.keep_going()),
            Some(msg) if pump.keep_going() => pump.send(msg),
            Some(msg) => pump.send_held(msg).map(|()| false),
        }
    }
}

//! `consume tabular --sqlite`: rows into an SQLite table, committed before each ack.

use super::meta::{RowMeta, clash};
use super::{CountingHandler, Counts, Tally};
use crate::amqp::{Disposition, Handler, Identity};
use crate::codec::{Delivery, STREAM_OFFSET, sha256_hex, tabular, unique_id};
use crate::output::Reporter;
use crate::results_db::{NO_ID_PREFIX, ResultsDb, Stored as DbStored, row_key, stream_row_key};
use color_eyre::eyre::{Result, WrapErr};
use serde_json::{Map, Value};

/// Rows into an SQLite table, committed before each ack; idempotent on the message id.
pub(super) struct DbHandler {
    db: ResultsDb,
    tally: Tally,
    /// Most memory one message's decoded rows may take (--prefetch-bytes).
    pub(super) decoded_limit: u64,
    /// --with-meta: each row gets the [`super::meta::COLUMNS`] columns.
    pub(super) with_meta: bool,
    /// Reading a stream: --with-meta adds the stream offset.
    pub(super) stream: bool,
    /// Reading this stream: a message without an id is keyed by its place in it
    /// ([`stream_row_key`]), not afresh each time it is read.
    pub(super) stream_queue: Option<String>,
    /// `--checkpoint sqlite`: the stream whose offset is committed with the rows.
    pub(super) checkpoint: Option<String>,
    /// The stream offset the next commit covers, and what identifies its message.
    covered: Option<(u64, Option<Identity>)>,
}

impl DbHandler {
    pub(super) fn new(
        path: &std::path::Path,
        table: &str,
        reporter: Reporter,
    ) -> Result<DbHandler> {
        Ok(DbHandler {
            db: ResultsDb::open(path, table)?,
            tally: Tally::new(Counts { tabular: true, ..Counts::default() }, reporter),
            decoded_limit: crate::cli::DEFAULT_PREFETCH_BYTES,
            with_meta: false,
            stream: false,
            stream_queue: None,
            checkpoint: None,
            covered: None,
        })
    }
}

impl Handler for DbHandler {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        let mut rows = match tabular::decode_within(&d.body, self.decoded_limit) {
            Ok(rows) if rows.is_empty() => return Ok(self.tally.failed("empty batch")),
            Ok(rows) => rows,
            Err(e) => return Ok(self.tally.failed(&e.0)),
        };
        if self.with_meta {
            if let Some(why) = clash(rows.iter().flat_map(|r| r.keys().map(String::as_str))) {
                return Ok(self.tally.failed(&why));
            }
            RowMeta::of(d, self.stream).add(&mut rows);
        }
        if let Some(why) = self.db.refuse(&rows) {
            return Ok(self.tally.failed(&why));
        }
        let keys = row_keys(d, rows.len(), self.stream_queue.as_deref());
        let keyed: Vec<(String, &Map<String, Value>)> = keys.into_iter().zip(&rows).collect();
        let stored = self.db.store(&keyed).wrap_err_with(|| {
            format!("cannot store message {}; it stays in the queue", d.id_or_hash())
        })?;
        let stored = match stored {
            DbStored::Rows(n) => n,
            DbStored::Refused(why) => return Ok(self.tally.failed(&why)),
        };
        if stored == 0 {
            // Every row was already there: a redelivery (the table is the dedupe here).
            self.tally.duplicate();
            return Ok(Disposition::Ack);
        }
        Ok(self.tally.stored(d, stored))
    }

    fn flush(&mut self) -> Result<()> {
        if let (Some(queue), Some((offset, mark))) = (&self.checkpoint, self.covered.take()) {
            self.db.checkpoint(queue, offset, mark.as_ref())?;
        }
        self.db.commit()
    }

    fn covers(&mut self, offset: u64, mark: Option<&Identity>) {
        self.covered = Some((offset, mark.cloned()));
    }
}

/// The primary keys of a message's rows: from its message id ([`row_key`]); for a delivery
/// without one read from `stream`, from its place there ([`stream_row_key`]: a message read
/// again after a SIGKILL is stored once); otherwise a fresh key per row (`noid-…`), so
/// identical readings from another producer are rows of their own, never "already stored".
fn row_keys(d: &Delivery, n: usize, stream: Option<&str>) -> Vec<String> {
    let Some(id) = d.assigned_id() else {
        let offset = d.header_int(STREAM_OFFSET).and_then(|o| u64::try_from(o).ok());
        if let (Some(queue), Some(offset)) = (stream, offset) {
            let hash = sha256_hex(&d.body);
            return (1..=n).map(|row| stream_row_key(queue, offset, &hash, row)).collect();
        }
        return (0..n).map(|_| format!("{NO_ID_PREFIX}{}", unique_id())).collect();
    };
    if d.body.trim_ascii_start().starts_with(b"[") {
        (1..=n).map(|i| row_key(id, Some(i))).collect()
    } else {
        vec![row_key(id, None)]
    }
}

impl CountingHandler for DbHandler {
    fn counts(&self) -> Counts {
        self.tally.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::HeaderValue;

    fn from_stream(offset: i64, id: Option<&str>) -> Delivery {
        let mut d = Delivery { body: b"{\"a\":1}".to_vec(), ..Delivery::default() };
        d.headers.insert(STREAM_OFFSET.to_string(), HeaderValue::Int(offset));
        d.message_id = id.map(str::to_string);
        d
    }

    #[test]
    fn a_stream_message_without_an_id_gets_the_same_keys_each_time_it_is_read() {
        let d = from_stream(41, None);
        let keys = row_keys(&d, 2, Some("events"));
        assert_eq!(keys, row_keys(&d, 2, Some("events")));
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys, row_keys(&from_stream(42, None), 2, Some("events")));
        // A sender whose message id is that very key is another message.
        let spoof = from_stream(41, Some(&keys[0]));
        assert_ne!(row_keys(&spoof, 1, Some("events"))[0], keys[0]);
        // Not a stream (a classic or quorum queue): fresh keys, as before.
        let fresh = row_keys(&d, 1, None);
        assert!(fresh[0].starts_with(NO_ID_PREFIX), "{fresh:?}");
        assert_ne!(fresh, row_keys(&d, 1, None));
    }
}

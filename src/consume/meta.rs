//! `--with-meta`: where each stored row came from, as extra fields (SQLite columns, JSON
//! keys, CSV columns) named so they cannot be taken for data: [`COLUMNS`].

use crate::codec::Delivery;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The fields `--with-meta` adds to every row, in this order: the `source` header, the
/// row's own data row (the `row` header, plus its place in a batch; for an answer to a
/// line of a text file, the `line` header), the message id, when
/// mqdemo received it (RFC 3339, UTC, milliseconds) and the `correlation_id` property.
/// Each is null where the message has none.
pub(crate) const COLUMNS: [&str; 5] =
    ["_mq_source", "_mq_row", "_mq_message_id", "_mq_received_at", "_mq_correlation_id"];

/// Reading a stream, `--with-meta` adds this field after [`COLUMNS`]: the message's stream
/// offset (the broker's `x-stream-offset` header).
pub(crate) const STREAM_OFFSET_COLUMN: &str = "_mq_stream_offset";

/// What `--with-meta` adds to the rows of one message.
pub(crate) struct RowMeta {
    source: Value,
    first_row: Option<i64>,
    message_id: Value,
    received_at: Value,
    correlation_id: Value,
    /// Reading a stream: the offset (null if the broker gave none).
    stream_offset: Option<Value>,
}

impl RowMeta {
    /// The metadata of `d`, received now; `stream`: it came from a stream.
    pub(crate) fn of(d: &Delivery, stream: bool) -> RowMeta {
        let opt = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_string()));
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        RowMeta {
            source: opt(d.header_str("source")),
            first_row: d.header_int("row").or_else(|| d.header_int(crate::codec::text::LINE)),
            message_id: opt(d.assigned_id()),
            received_at: Value::String(rfc3339_millis(u64::try_from(ms).unwrap_or(u64::MAX))),
            correlation_id: opt(d.correlation_id.as_deref()),
            stream_offset: stream.then(|| {
                d.header_int(crate::codec::STREAM_OFFSET).map_or(Value::Null, Value::from)
            }),
        }
    }

    /// The fields for row `index` (0-based) of the message, in [`COLUMNS`] order (and the
    /// stream offset last).
    fn fields(&self, index: usize) -> Vec<(&'static str, Value)> {
        let row = self
            .first_row
            .and_then(|r| i64::try_from(index).ok().and_then(|i| r.checked_add(i)))
            .map_or(Value::Null, Value::from);
        [
            (COLUMNS[0], self.source.clone()),
            (COLUMNS[1], row),
            (COLUMNS[2], self.message_id.clone()),
            (COLUMNS[3], self.received_at.clone()),
            (COLUMNS[4], self.correlation_id.clone()),
        ]
        .into_iter()
        .chain(self.stream_offset.clone().map(|o| (STREAM_OFFSET_COLUMN, o)))
        .collect()
    }

    /// Add the fields to each row (rows of a batch numbered from the `row` header).
    pub(crate) fn add(&self, rows: &mut [Map<String, Value>]) {
        for (i, row) in rows.iter_mut().enumerate() {
            row.extend(self.fields(i).into_iter().map(|(k, v)| (k.to_string(), v)));
        }
    }

    /// Row `index`'s JSON object text `object` with the fields added at its end, its own
    /// text kept exactly.
    pub(crate) fn splice(&self, object: &str, index: usize) -> String {
        let inner = object.trim_end().strip_suffix('}').unwrap_or(object);
        let empty = inner.trim_start().strip_prefix('{').is_some_and(|r| r.trim().is_empty());
        let mut out = String::with_capacity(object.len() + 200);
        out.push_str(inner);
        for (i, (k, v)) in self.fields(index).iter().enumerate() {
            if i > 0 || !empty {
                out.push(',');
            }
            out.push_str(&Value::from(*k).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

/// Why rows with these keys cannot take the metadata fields (a key already named like one,
/// in any letter case: SQLite column names ignore it), or None.
pub(crate) fn clash<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let named =
        |k: &str| COLUMNS.iter().chain([&STREAM_OFFSET_COLUMN]).any(|c| c.eq_ignore_ascii_case(k));
    keys.into_iter().find(|k| named(k)).map(|k| {
        format!(
            "the row has a {k:?} field, but --with-meta adds a field of that name; rename the \
             field, or consume without --with-meta"
        )
    })
}

/// The keys of one JSON object's text (which is valid JSON), for [`clash`].
pub(crate) fn object_keys(object: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<std::collections::HashMap<String, &RawValue>>(object)
        .map(|m| m.into_keys().collect())
        // A key no JSON reader takes (a lone surrogate `\ud800`) cannot be checked against
        // the meta names, so the row is not stored with a guess.
        .map_err(|e| format!("its keys cannot be read ({e}), so --with-meta cannot add its fields"))
}

/// `unix_ms` as RFC 3339 in UTC with milliseconds: `2026-03-01T12:00:00.123Z` (sorts as
/// text; SQLite's date functions read it).
pub(crate) fn rfc3339_millis(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z")
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::HeaderValue;

    fn meta() -> RowMeta {
        let mut d = Delivery { message_id: Some("m1".into()), ..Delivery::default() };
        d.headers.insert("source".into(), HeaderValue::Str("cats/a.png".into()));
        d.headers.insert("row".into(), HeaderValue::Int(7));
        RowMeta::of(&d, false)
    }

    #[test]
    fn a_text_line_is_its_row() {
        let mut d = Delivery::default();
        d.headers.insert("line".into(), HeaderValue::Int(4));
        let mut rows = vec![Map::new()];
        RowMeta::of(&d, false).add(&mut rows);
        assert_eq!(rows[0]["_mq_row"], 4);
        assert_eq!(rows[0]["_mq_source"], Value::Null);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_millis(1_709_294_400_000), "2024-03-01T12:00:00.000Z");
        assert_eq!(rfc3339_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rows_of_a_batch_get_their_own_row_numbers() {
        let mut rows = vec![Map::new(), Map::new()];
        meta().add(&mut rows);
        assert_eq!(rows[0]["_mq_row"], 7);
        assert_eq!(rows[1]["_mq_row"], 8);
        assert_eq!(rows[1]["_mq_source"], "cats/a.png");
        assert_eq!(rows[1]["_mq_correlation_id"], Value::Null);
        let keys: Vec<&String> = rows[0].keys().collect();
        assert_eq!(keys, COLUMNS.to_vec(), "in COLUMNS order");
    }

    #[test]
    fn splicing_keeps_the_object_text() {
        let m = meta();
        let out = m.splice("{\"x\": 1.10, \"big\": 123456789012345678901234}", 0);
        assert!(out.starts_with("{\"x\": 1.10, \"big\": 123456789012345678901234,\"_mq_source\":"));
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["_mq_row"], 7);
        let out = m.splice("{ }", 1);
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["_mq_row"], 8);
        assert_eq!(v.as_object().map(Map::len), Some(5));
    }

    #[test]
    fn a_field_named_like_a_meta_column_clashes() {
        assert!(clash(["a", "b"]).is_none());
        assert!(clash(["a", "_MQ_Source"]).is_some_and(|w| w.contains("_MQ_Source")));
        let keys = object_keys(r#"{"_mq_row": 1, "x\u0041": 2}"#).expect("keys");
        assert!(
            keys.contains(&"xA".to_string()) && clash(keys.iter().map(String::as_str)).is_some()
        );
    }

    #[test]
    fn keys_no_reader_takes_are_an_error_not_an_empty_list() {
        // Passed the clash check before: {"\ud800":1,"_mq_source":"fake"} gave two _mq_source.
        let why = object_keys(r#"{"\ud800":1,"_mq_source":"fake"}"#).expect_err("lone surrogate");
        assert!(why.contains("--with-meta"), "{why}");
    }
}

//! Tabular codec: CSV records <-> JSON objects with typed values.
//!
//! Typing is lossless: a field becomes a JSON number only when the number's canonical JSON
//! text is exactly the field's text, so every value reads back as the same characters.
//! `007`, `1.50`, `1e5`, `-0`, `NaN`, `1e999` and integers beyond i64 stay strings; an empty
//! field becomes null. A row shorter than the header is padded with nulls (as pandas reads
//! it); a longer one is an error. Column names are never merged: a header that repeats a
//! name is refused by the caller ([`duplicate_columns`]) before any row is encoded.

use super::{HeaderValue, Headers, Kind, Message, message_id};
use csv::StringRecord;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Content type of tabular messages.
pub const CONTENT_TYPE: &str = "application/json";

/// How one CSV field is typed.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed<'a> {
    /// Empty field.
    Null,
    /// A number whose canonical JSON text is exactly this.
    Number(&'a str),
    /// Anything else.
    Str(&'a str),
}

/// Type one CSV field.
pub fn type_value(field: &str) -> Typed<'_> {
    if field.is_empty() {
        Typed::Null
    } else if is_canonical_number(field) {
        Typed::Number(field)
    } else {
        Typed::Str(field)
    }
}

fn is_canonical_number(s: &str) -> bool {
    let bytes = s.as_bytes();
    let first = bytes[0];
    if !(first == b'-' || first.is_ascii_digit()) {
        return false;
    }
    if bytes.iter().all(|b| b.is_ascii_digit() || *b == b'-') {
        return is_canonical_integer(s);
    }
    // Decimal: parsed and printed by serde_json itself (what a consumer does) it must come
    // back as the same characters: `1.5`, `100.0`, `1e+16` yes; `1.50`, `1e16` no.
    serde_json::from_str::<serde_json::Number>(s).is_ok_and(|n| n.is_f64() && n.to_string() == s)
}

fn is_canonical_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical_digits = match digits.as_bytes() {
        [] => false,
        [b'0'] => digits.len() == s.len(), // "0" yes, "-0" no
        [b'0', ..] => false,
        _ => digits.bytes().all(|b| b.is_ascii_digit()),
    };
    // Up to 18 digits always fit an i64; only longer ones need the range check.
    canonical_digits && (digits.len() <= 18 || s.parse::<i64>().is_ok())
}

/// Column names that occur more than once, each with its 1-based positions, in the order of
/// their first occurrence. Two equal names would make two equal JSON keys, and a consumer
/// keeps only one of them.
pub fn duplicate_columns<'a>(
    columns: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, Vec<usize>)> {
    let mut seen: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (i, name) in columns.into_iter().enumerate() {
        match index.get(name) {
            Some(&at) => {
                let entry: &mut (&str, Vec<usize>) = &mut seen[at];
                entry.1.push(i + 1);
            }
            None => {
                index.insert(name, seen.len());
                seen.push((name, vec![i + 1]));
            }
        }
    }
    seen.into_iter().filter(|(_, at)| at.len() > 1).map(|(n, at)| (n.to_string(), at)).collect()
}

/// Column names for a file without a header: "0", "1", ... (pandas' `header=None`).
pub fn positional_columns(width: usize) -> Vec<String> {
    (0..width).map(|i| i.to_string()).collect()
}

/// A row the encoder could not turn into a message.
#[derive(Debug, PartialEq, Eq)]
pub struct RowError(pub String);

/// The error for a row of `fields` fields under a header of `width` columns, if it is longer.
pub fn too_wide(fields: usize, width: usize) -> Option<RowError> {
    (fields > width)
        .then(|| RowError(format!("row has {fields} fields but the header has {width}")))
}

/// Encodes the rows of one CSV source.
pub struct Encoder {
    source: String,
    /// Column names, already JSON-escaped with quotes and the trailing colon.
    keys: Vec<String>,
    /// Repeat pass (0 for the first), part of the message id so a `--repeat` stream
    /// is not dropped as duplicates.
    pass: u64,
}

impl Encoder {
    /// `source` is the CSV's base name; `columns` its header row.
    pub fn new<'a>(source: &str, columns: impl IntoIterator<Item = &'a str>) -> Self {
        let keys =
            columns.into_iter().map(|c| format!("{}:", Value::String(c.to_string()))).collect();
        Encoder { source: source.to_string(), keys, pass: 0 }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.keys.len()
    }

    /// Whether `fields` is shorter than the header (and so padded with nulls).
    pub fn is_short(&self, fields: &StringRecord) -> bool {
        fields.len() < self.keys.len()
    }

    /// Set the `--repeat` pass number.
    pub fn set_pass(&mut self, pass: u64) {
        self.pass = pass;
    }

    /// Append one row as a JSON object to `out`. A row shorter than the header gets null
    /// for its missing trailing fields (see [`Encoder::is_short`]); a longer one is an error.
    pub fn write_object(&self, fields: &StringRecord, out: &mut Vec<u8>) -> Result<(), RowError> {
        if let Some(e) = too_wide(fields.len(), self.keys.len()) {
            return Err(e);
        }
        out.push(b'{');
        for (i, (key, field)) in self.keys.iter().zip(fields.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            match type_value(field) {
                Typed::Null => out.extend_from_slice(b"null"),
                Typed::Number(n) => out.extend_from_slice(n.as_bytes()),
                Typed::Str(s) => write_json_string(s, out),
            }
        }
        for (i, key) in self.keys.iter().enumerate().skip(fields.len()) {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"null");
        }
        out.push(b'}');
        Ok(())
    }

    /// A message for one row (`row` is the 1-based data row number).
    pub fn encode_row(&self, fields: &StringRecord, row: u64) -> Result<Message, RowError> {
        let mut body = Vec::with_capacity(self.keys.len() * 16);
        self.write_object(fields, &mut body)?;
        Ok(self.message(body, row, None))
    }

    /// A message for one row already written as a JSON object: a CSV row by
    /// [`Encoder::write_object`], or a JSON lines object as it was given.
    pub fn encode_object(&self, body: Vec<u8>, row: u64) -> Message {
        self.message(body, row, None)
    }

    /// A message for a batch already written as a JSON array by the caller
    /// (`[` + objects joined by `,` + `]`).
    pub fn encode_batch(&self, body: Vec<u8>, first_row: u64, rows: u64) -> Message {
        self.message(body, first_row, Some(rows))
    }

    fn message(&self, body: Vec<u8>, row: u64, rows: Option<u64>) -> Message {
        let position = match (rows, self.pass) {
            (None, 0) => row.to_string(),
            (None, p) => format!("{row}#{p}"),
            (Some(n), 0) => format!("{row}+{n}"),
            (Some(n), p) => format!("{row}+{n}#{p}"),
        };
        let mut headers = Headers::new();
        headers.insert("source".into(), HeaderValue::Str(self.source.clone()));
        headers.insert("row".into(), HeaderValue::Int(clamp(row)));
        if let Some(n) = rows {
            headers.insert("rows".into(), HeaderValue::Int(clamp(n)));
        }
        let label = match rows {
            None => format!("{} row {row}", self.source),
            Some(n) => format!("{} rows {row}-{}", self.source, row + n.saturating_sub(1)),
        };
        Message {
            kind: Kind::Tabular,
            content_type: CONTENT_TYPE.to_string(),
            message_id: message_id(Kind::Tabular, &self.source, &position, &body),
            headers,
            body,
            label,
            route: super::Route::default(),
            original: super::Original::default(),
            ticket: 0,
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Why a body is not tabular data.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Decode a tabular body: one JSON object, or an array of objects (a batch).
pub fn decode(body: &[u8]) -> Result<Vec<Map<String, Value>>, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("body is not JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(vec![map]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(map) => Ok(map),
                other => Err(DecodeError(format!(
                    "batch item {i} is {}, not a JSON object",
                    json_kind(&other)
                ))),
            })
            .collect(),
        other => Err(DecodeError(format!(
            "body is a JSON {}, not an object or an array of objects",
            json_kind(&other)
        ))),
    }
}

/// Decode a tabular body like [`decode`], refusing one whose rows would take more than
/// `limit` bytes of memory (a 56 MB batch of short fields decodes to over 1 GB): a batch is
/// split into its items' raw text first (16 bytes an item) and decoded item by item, so
/// decoding stops at the limit instead of building everything first. The size counted is
/// an estimate of the decoded values ([`row_bytes`]); a single object is decoded whole
/// before it is measured (its size is bounded by the body's).
pub fn decode_within(body: &[u8], limit: u64) -> Result<Vec<Map<String, Value>>, DecodeError> {
    if body.trim_ascii_start().first() != Some(&b'[') {
        let rows = decode(body)?;
        let size = rows.iter().map(row_bytes).sum::<u64>();
        return if size > limit { Err(too_big(size, limit, 1)) } else { Ok(rows) };
    }
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("body is not JSON: {e}")))?;
    let mut rows = Vec::new();
    let mut size = 0u64;
    for (i, item) in items.iter().enumerate() {
        let row = match serde_json::from_str::<Value>(item.get()) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                return Err(DecodeError(format!(
                    "batch item {i} is {}, not a JSON object",
                    json_kind(&other)
                )));
            }
            Err(e) => return Err(DecodeError(format!("batch item {i} is not JSON: {e}"))),
        };
        size += row_bytes(&row);
        if size > limit {
            return Err(too_big(size, limit, i + 1));
        }
        rows.push(row);
    }
    Ok(rows)
}

fn too_big(size: u64, limit: u64, rows: usize) -> DecodeError {
    DecodeError(format!(
        "its rows take more than {limit} bytes of memory decoded (over {size} bytes by row \
         {rows}): raise --prefetch-bytes to take it, or read it as JSON lines (the default \
         output, which never decodes it)"
    ))
}

/// Memory a decoded row takes, estimated from serde_json's layout and fitted to what was
/// measured here (within 10-30% for rows of 1, 8 and 31 short fields, long texts, nested
/// values; 8 short fields take about 2 KiB): an entry is its key, a 32-byte value and the
/// ordered map's hash and index, reserved ahead as the map grows; a map is two allocations
/// and its 72 bytes in the row list, which grows by doubling too.
pub fn row_bytes(row: &Map<String, Value>) -> u64 {
    const MAP: u64 = 300;
    const ENTRY: u64 = 176;
    MAP + row.iter().map(|(k, v)| ENTRY + alloc(k.len()) + value_bytes(v)).sum::<u64>()
}

/// Heap bytes of a JSON value beyond its own 32.
fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::String(s) => alloc(s.len()),
        Value::Array(items) => alloc(32 * items.len()) + items.iter().map(value_bytes).sum::<u64>(),
        Value::Object(map) => row_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// What an allocation of `n` bytes takes from the allocator (glibc: 8 bytes of header,
/// 16-byte steps, 32 at least).
fn alloc(n: usize) -> u64 {
    if n == 0 { 0 } else { ((n as u64 + 8 + 15) & !15).max(32) }
}

/// The objects of a tabular body as their exact original JSON text, validated but without
/// building values (the fast path for JSON-lines output). `Ok(None)` when an object spans
/// several lines (pretty-printed) and must be re-serialised to fit on one.
pub fn raw_objects(body: &[u8]) -> Result<Option<Vec<&str>>, DecodeError> {
    let objects: Vec<&str> = match body.trim_ascii_start().first() {
        Some(b'{') => {
            let raw: &RawValue = serde_json::from_slice(body)
                .map_err(|e| DecodeError(format!("body is not JSON: {e}")))?;
            vec![raw.get()]
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body)
                .map_err(|e| DecodeError(format!("body is not JSON: {e}")))?;
            let texts: Vec<&str> = items.iter().map(|r| r.get()).collect();
            if let Some(i) = texts.iter().position(|t| !t.starts_with('{')) {
                return Err(DecodeError(format!("batch item {i} is not a JSON object")));
            }
            texts
        }
        _ => return decode(body).map(|_| None),
    };
    if objects.is_empty() {
        return Err(DecodeError("empty batch".into()));
    }
    Ok((!objects.iter().any(|o| o.contains('\n'))).then_some(objects))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The CSV field for a JSON value: null -> empty, strings as they are, numbers in their
/// canonical text, nested values as compact JSON.
pub fn csv_field(v: &Value) -> Cow<'_, str> {
    match v {
        Value::Null => Cow::Borrowed(""),
        Value::String(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Number(n) => Cow::Owned(n.to_string()),
        other => Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests;

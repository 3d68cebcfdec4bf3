//! The envelope: one delivery as one line of JSON — its properties, its headers (every AMQP
//! field type), where it came from and its body — for `consume tabular --format envelope`
//! and for a model run with `--framing envelope`. Pure: the AMQP layer fills a [`Meta`].
//!
//! The body is exactly one of three keys, so a reader always knows which it got:
//! `body` (the body is JSON and its content type is not `text/*`: the JSON itself, numbers
//! as written), `body_text` (UTF-8 text) or `body_base64` (anything else, standard base64).

use base64::Engine as _;
use serde_json::value::RawValue;

/// A header value of any AMQP field type (as RabbitMQ encodes them).
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `t`: JSON true/false.
    Bool(bool),
    /// `b B s u I i l`: every integer width, a JSON number.
    Int(i64),
    /// `f`: a JSON number in its shortest form; NaN and infinities as strings.
    Float(f32),
    /// `d`: as `Float`.
    Double(f64),
    /// `D`: the exact decimal `value / 10^scale` as a JSON number (`-0.05`).
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// The unscaled value (RabbitMQ encodes it as a signed 32-bit integer).
        value: i32,
    },
    /// `S`: a JSON string.
    Str(String),
    /// `x`: `{"base64": "..."}`.
    Bytes(Vec<u8>),
    /// `T`: seconds since 1970 (UTC), a JSON integer, as the `timestamp` property.
    Timestamp(u64),
    /// `A`: a JSON array.
    Array(Vec<Field>),
    /// `F`: a JSON object, in the table's order.
    Table(Vec<(String, Field)>),
    /// `V`: null.
    Void,
}

/// The AMQP basic properties of a delivery; only those present are written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// `message_id`.
    pub message_id: Option<String>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `type` (written under that name).
    pub kind: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `timestamp`: seconds since 1970 (UTC).
    pub timestamp: Option<u64>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// `expiration` (milliseconds, a string as AMQP carries it).
    pub expiration: Option<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `cluster_id`.
    pub cluster_id: Option<String>,
}

/// Everything about a delivery but its body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Its properties.
    pub properties: Properties,
    /// Its headers, in the table's order (empty when it had none).
    pub headers: Vec<(String, Field)>,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The broker delivered it before.
    pub redelivered: bool,
}

/// The envelope of a delivery: one line of JSON (no line break, none at the end either).
pub fn encode(meta: &Meta, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 4 / 3 + 512);
    out.extend_from_slice(b"{\"properties\":");
    write_properties(&mut out, &meta.properties);
    out.extend_from_slice(b",\"headers\":");
    write_table(&mut out, &meta.headers);
    out.extend_from_slice(b",\"exchange\":");
    write_str(&mut out, &meta.exchange);
    out.extend_from_slice(b",\"routing_key\":");
    write_str(&mut out, &meta.routing_key);
    out.extend_from_slice(if meta.redelivered {
        b",\"redelivered\":true,"
    } else {
        b",\"redelivered\":false,"
    });
    write_body(&mut out, meta.properties.content_type.as_deref(), body);
    out.push(b'}');
    out
}

fn write_properties(out: &mut Vec<u8>, p: &Properties) {
    let strings = [
        ("message_id", &p.message_id),
        ("content_type", &p.content_type),
        ("content_encoding", &p.content_encoding),
        ("type", &p.kind),
        ("app_id", &p.app_id),
    ];
    let later = [
        ("correlation_id", &p.correlation_id),
        ("reply_to", &p.reply_to),
        ("expiration", &p.expiration),
        ("user_id", &p.user_id),
        ("cluster_id", &p.cluster_id),
    ];
    let numbers = [
        ("timestamp", p.timestamp),
        ("priority", p.priority.map(u64::from)),
        ("delivery_mode", p.delivery_mode.map(u64::from)),
    ];
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
    };
    for (name, value) in strings.iter().chain(&later) {
        if let Some(v) = value {
            key(out, name);
            write_str(out, v);
        }
    }
    for (name, value) in numbers {
        if let Some(v) = value {
            key(out, name);
            out.extend_from_slice(v.to_string().as_bytes());
        }
    }
    out.push(b'}');
}

fn write_table(out: &mut Vec<u8>, table: &[(String, Field)]) {
    out.push(b'{');
    for (i, (k, v)) in table.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_field(out, v);
    }
    out.push(b'}');
}

fn write_field(out: &mut Vec<u8>, f: &Field) {
    match f {
        Field::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Field::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Field::Timestamp(t) => out.extend_from_slice(t.to_string().as_bytes()),
        Field::Float(x) => write_float(out, x.is_finite(), f64::from(*x), &format!("{x:?}")),
        Field::Double(x) => write_float(out, x.is_finite(), *x, &format!("{x:?}")),
        Field::Decimal { scale, value } => {
            out.extend_from_slice(decimal(*scale, *value).as_bytes())
        }
        Field::Str(s) => write_str(out, s),
        Field::Bytes(b) => {
            out.extend_from_slice(b"{\"base64\":\"");
            base64_into(out, b);
            out.extend_from_slice(b"\"}");
        }
        Field::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_field(out, v);
            }
            out.push(b']');
        }
        Field::Table(t) => write_table(out, t),
        Field::Void => out.extend_from_slice(b"null"),
    }
}

/// A float in Rust's shortest round-trip form (`0.1`, `1e300`: valid JSON numbers); NaN and
/// the infinities, which JSON has no number for, as the strings `NaN`, `Infinity`,
/// `-Infinity`.
fn write_float(out: &mut Vec<u8>, finite: bool, x: f64, shortest: &str) {
    if finite {
        out.extend_from_slice(shortest.as_bytes());
    } else if x.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if x > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

/// The exact text of `value / 10^scale`: `decimal(2, -5)` is `-0.05`.
fn decimal(scale: u8, value: i32) -> String {
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `"body":JSON`, `"body_text":"..."` or `"body_base64":"..."` (see the module docs).
fn write_body(out: &mut Vec<u8>, content_type: Option<&str>, body: &[u8]) {
    let text = content_type.is_some_and(is_text);
    if !text
        && nesting(body) <= MAX_BODY_NESTING
        && let Ok(raw) = serde_json::from_slice::<&RawValue>(body)
    {
        out.extend_from_slice(b"\"body\":");
        one_line_json(out, raw.get());
        return;
    }
    match std::str::from_utf8(body) {
        Ok(s) => {
            out.extend_from_slice(b"\"body_text\":");
            write_str(out, s);
        }
        Err(_) => {
            out.extend_from_slice(b"\"body_base64\":\"");
            base64_into(out, body);
            out.push(b'"');
        }
    }
}

/// Standard base64 of `bytes` appended to `out`, encoded in place (a large body is not
/// held a third time).
fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    if engine.encode_slice(bytes, &mut out[start..]).is_err() {
        // Cannot happen (the room is exactly the encoded length); never write a bad line.
        out.truncate(start);
        out.extend_from_slice(engine.encode(bytes).as_bytes());
    }
}

/// Whether a content type says text (`text/plain; charset=utf-8`, `TEXT/CSV`).
fn is_text(content_type: &str) -> bool {
    content_type.trim_start().get(..5).is_some_and(|t| t.eq_ignore_ascii_case("text/"))
}

/// Valid JSON `json` on one line: as it is when it has no line break, else without the
/// whitespace between its tokens (a line break can only be such whitespace: inside a JSON
/// string it is escaped). Numbers and strings keep their exact text.
/// The deepest a JSON body may nest to be written as JSON: serde_json's and Python's
/// readers stop at about 128 and 1,000 levels, so a deeper body goes as text (or base64):
/// a reader must always be able to read the line.
const MAX_BODY_NESTING: usize = 128;

/// How deep `json`'s arrays and objects nest (brackets inside strings not counted); only
/// an upper bound for text that is not JSON.
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in json {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn one_line_json(out: &mut Vec<u8>, json: &str) {
    if !json.contains(['\n', '\r']) {
        out.extend_from_slice(json.as_bytes());
        return;
    }
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests;

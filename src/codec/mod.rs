//! Wire format version 1: the data kinds and the pure encode/decode of messages.
//!
//! Codecs turn an input item into a [`Message`] (body + properties + headers) and a received
//! [`Delivery`] back into data. They never touch the network, the file system or the terminal.

pub mod answer;
pub mod batch;
pub mod envelope;
pub mod failed;
pub mod file;
pub mod image;
pub mod path;
pub mod tabular;
pub mod text;

pub use answer::{answer, answer_kind, error_reply};
pub use failed::{
    ADDED_HEADERS, DROPPED_HEADER, ERROR_HEADER, Original, failed_copy, requeued_copy,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The three kinds of data mqdemo moves; also the AMQP `type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CSV rows as JSON objects.
    Tabular,
    /// Image files, bytes untouched.
    Image,
    /// UTF-8 text files or lines.
    Text,
}

impl Kind {
    /// The value of the AMQP `type` property.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tabular => "tabular",
            Kind::Image => "image",
            Kind::Text => "text",
        }
    }

    /// The queue used when `--queue` is not given (the original demo's names).
    pub fn default_queue(self) -> &'static str {
        match self {
            Kind::Tabular => "alicpp_records",
            Kind::Image => "image_queue",
            Kind::Text => "text_queue",
        }
    }
}

/// A header value as mqdemo writes and reads it (AMQP field table subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Signed 64-bit integer (`l` in AMQP field tables).
    Int(i64),
    /// UTF-8 long string (`S`).
    Str(String),
}

/// Headers by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// Header of a request: when its client stops waiting for the answer, in Unix milliseconds
/// (`request --timeout` sets it; `serve` does not answer a request past it).
pub const DEADLINE_HEADER: &str = "x-mqdemo-deadline";

/// The header RabbitMQ puts on each message it delivers from a stream: its offset.
pub const STREAM_OFFSET: &str = "x-stream-offset";

/// On an answer to a message read from a stream: that message's offset (the answer's own
/// queue may be a stream too, which gives it an `x-stream-offset` of its own).
pub const INPUT_OFFSET_HEADER: &str = "x-mqdemo-input-offset";

/// A request's deadline, as its [`DEADLINE_HEADER`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deadline {
    /// No such header.
    None,
    /// Unix time in milliseconds.
    At(i64),
    /// A value that cannot be a Unix time in milliseconds (seconds, negative, not a number):
    /// the request is served as if it had none, with a warning showing the value.
    Bad(String),
}

/// Earliest plausible deadline: 2001-09-09 in Unix milliseconds. A smaller number is most
/// likely seconds (1.8e9 s is 1970-01-21 in milliseconds), or not a time at all.
const EARLIEST_DEADLINE_MS: i64 = 1_000_000_000_000;
/// Latest plausible deadline (about the year 5138 in milliseconds).
const LATEST_DEADLINE_MS: i64 = 100_000_000_000_000;

/// A request's deadline ([`DEADLINE_HEADER`]): an integer, or a decimal string (fractions of
/// a millisecond are dropped).
pub fn deadline(headers: &Headers) -> Deadline {
    let (ms, shown) = match headers.get(DEADLINE_HEADER) {
        None => return Deadline::None,
        Some(HeaderValue::Int(ms)) => (Some(*ms), ms.to_string()),
        Some(HeaderValue::Str(s)) => {
            let t = s.trim();
            let ms = t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>().ok().filter(|f| f.is_finite() && f.abs() < 1e18).map(|f| f as i64)
            });
            (ms, format!("{:?}", header_text(s)))
        }
    };
    match ms {
        Some(ms) if (EARLIEST_DEADLINE_MS..=LATEST_DEADLINE_MS).contains(&ms) => Deadline::At(ms),
        _ => Deadline::Bad(shown),
    }
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A message ready to publish: everything but the publisher-owned properties
/// (`delivery_mode`, `app_id`, `timestamp`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Data kind (the `type` property).
    pub kind: Kind,
    /// `content_type` property.
    pub content_type: String,
    /// Deterministic id: the same input item gives the same id on every run.
    pub message_id: String,
    /// Application headers.
    pub headers: Headers,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Where the item came from, for people (`file.csv:12`, `dir/a.png`).
    pub label: String,
    /// Request/reply addressing; all None for plain messages.
    pub route: Route,
    /// For a copy of a delivery (the failed queue): its properties as they came, which the
    /// publisher uses instead of making its own. Empty for everything mqdemo makes.
    pub original: Original,
    /// Its place in publishing order, set when it is handed to a [`crate::amqp::Producer`]
    /// (see `Producer::settled_below`).
    pub ticket: u64,
}

/// The most bytes a message's properties and headers may take: they travel in one content
/// header frame, and RabbitMQ's default `frame_max` is 131,072 bytes (less the frame's own
/// fields; a margin covers the rest of the encoding).
pub const MAX_PROPERTY_BYTES: usize = 131_072 - 1_024;

/// The longest value mqdemo writes into a header itself (`x-mqdemo-error`), in bytes.
pub const MAX_HEADER_VALUE: usize = 4_096;

/// `text` cut to at most [`MAX_HEADER_VALUE`] bytes at a character boundary, marked when cut.
pub fn header_text(text: &str) -> String {
    if text.len() <= MAX_HEADER_VALUE {
        return text.to_string();
    }
    let marker = " [cut]";
    let mut end = MAX_HEADER_VALUE - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// Encoded size of a header table (AMQP field table: length, then name and typed value).
pub fn headers_bytes(headers: &Headers) -> usize {
    4 + headers
        .iter()
        .map(|(k, v)| {
            1 + k.len()
                + 1
                + match v {
                    HeaderValue::Int(_) => 8,
                    HeaderValue::Str(s) => 4 + s.len(),
                }
        })
        .sum::<usize>()
}

impl Message {
    /// The encoded size of its properties and headers when over [`MAX_PROPERTY_BYTES`]
    /// (the broker would close the connection over it), else None.
    pub fn oversized_properties(&self) -> Option<usize> {
        let short = |s: &str| 1 + s.len();
        let opt = |s: &Option<String>| s.as_deref().map_or(0, short);
        // Flags, delivery mode, timestamp, app_id and the frame's own fields.
        let fixed = 2 + 1 + 8 + short("mqdemo") + 22;
        let n = self.original.copy_bytes(&self.headers).unwrap_or_else(|| {
            fixed
                + short(&self.content_type)
                + short(&self.message_id)
                + short(self.kind.as_str())
                + opt(&self.route.correlation_id)
                + opt(&self.route.reply_to)
                + headers_bytes(&self.headers)
        });
        (n > MAX_PROPERTY_BYTES).then_some(n)
    }
}

/// Where a message goes and how replies find their way back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Routing key on the default exchange; None = the publisher's own queue.
    pub routing_key: Option<String>,
    /// `correlation_id` property: matches a reply to its request.
    pub correlation_id: Option<String>,
    /// `reply_to` property: where the reply to a request goes.
    pub reply_to: Option<String>,
}

/// A received message, from mqdemo or any other AMQP producer.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Body bytes.
    pub body: Vec<u8>,
    /// `content_type` property, if set.
    pub content_type: Option<String>,
    /// `message_id` property, if set.
    pub message_id: Option<String>,
    /// `type` property, if set.
    pub kind: Option<String>,
    /// Headers mqdemo understands (integers and strings; other types are dropped).
    pub headers: Headers,
    /// The broker says it delivered this message before.
    pub redelivered: bool,
    /// `correlation_id` property, if set.
    pub correlation_id: Option<String>,
    /// `reply_to` property, if set.
    pub reply_to: Option<String>,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Every property as it came (for a failed copy); see [`Original`].
    pub original: Original,
}

impl Delivery {
    /// A string header.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.headers.get(name) {
            Some(HeaderValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer header.
    pub fn header_int(&self, name: &str) -> Option<i64> {
        match self.headers.get(name) {
            Some(HeaderValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// The id its producer gave it (an empty one counts as none). Only this id makes two
    /// deliveries the same message: without one, a delivery is at-least-once data and
    /// never merged with another (see [`unique_id`]).
    pub fn assigned_id(&self) -> Option<&str> {
        self.message_id.as_deref().filter(|id| !id.is_empty())
    }

    /// The message id, or (for producers that set none) a hash of the body: a name for
    /// people and for files, never a key that decides whether two deliveries are one.
    pub fn id_or_hash(&self) -> String {
        match &self.message_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => sha256_hex(&self.body)[..32].to_string(),
        }
    }
}

/// A fresh id, unique to this call (32 lowercase hex digits, like the ids mqdemo derives):
/// for what mqdemo produces from a delivery without a message id, so that it is never
/// merged with what another delivery produced, however alike their bodies are.
pub fn unique_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Unique within the process by the counter, across processes by pid, time and the
    // random keys std seeds its hash maps with.
    let random = RandomState::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(b"mqdemo/unique\0");
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(nanos.to_le_bytes());
    h.update(random.hash_one(1u8).to_le_bytes());
    h.update(random.hash_one(2u8).to_le_bytes());
    hex(&h.finalize()[..16])
}

/// The message id of the answer to input `input_id` published to queue `to` (by `pipe`
/// and `serve`): deterministic, so a re-published or recomputed answer keeps its id and
/// consumers downstream drop the repeat.
pub fn answer_id(input_id: &str, to: &str) -> String {
    sha256_hex(format!("{input_id}\0{to}").as_bytes())[..32].to_string()
}

/// The id of a message sent with `--new-ids`: its deterministic id mixed with the run's id,
/// so the same data sent by another run is new data.
pub fn run_message_id(run: &str, id: &str) -> String {
    sha256_hex(format!("{run}\0{id}").as_bytes())[..32].to_string()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Deterministic message id: the first 32 hex digits of
/// SHA-256(`mqdemo/1` NUL kind NUL source NUL position NUL body).
pub fn message_id(kind: Kind, source: &str, position: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in
        [b"mqdemo/1" as &[u8], kind.as_str().as_bytes(), source.as_bytes(), position.as_bytes()]
    {
        h.update(part);
        h.update([0u8]);
    }
    h.update(body);
    hex(&h.finalize()[..16])
}

/// The message id of a whole file whose body's SHA-256 is already known (`sha256_hex`): the
/// same formula with the body's hex digest in place of the body, so the file is hashed once.
pub fn file_message_id(kind: Kind, source: &str, body_sha256_hex: &str) -> String {
    message_id(kind, source, "", body_sha256_hex.as_bytes())
}

/// File extension (without dot) for a content type; `bin` when unknown.
pub fn extension_for(content_type: Option<&str>) -> &'static str {
    let essence =
        content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "image/tiff" => "tiff",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "application/json" => "json",
        _ => "bin",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn header_text_is_cut_at_a_character_boundary() {
        assert_eq!(header_text("short"), "short");
        let long = "é".repeat(MAX_HEADER_VALUE);
        let cut = header_text(&long);
        assert!(cut.len() <= MAX_HEADER_VALUE && cut.ends_with(" [cut]"), "{}", cut.len());
        assert!(cut.len() > MAX_HEADER_VALUE - 10);
    }

    #[test]
    fn deadlines_are_unix_milliseconds_or_told_apart() {
        let with = |v: HeaderValue| Headers::from([(DEADLINE_HEADER.to_string(), v)]);
        assert_eq!(deadline(&Headers::new()), Deadline::None);
        let ms = 1_796_178_694_318;
        assert_eq!(deadline(&with(HeaderValue::Int(ms))), Deadline::At(ms));
        assert_eq!(deadline(&with(HeaderValue::Str(format!(" {ms} ")))), Deadline::At(ms));
        assert_eq!(deadline(&with(HeaderValue::Str(format!("{ms}.5")))), Deadline::At(ms));
        // Seconds, negative, text, absurdly far: told apart, with the value as given.
        assert_eq!(
            deadline(&with(HeaderValue::Int(1_796_178_694))),
            Deadline::Bad("1796178694".into())
        );
        assert_eq!(deadline(&with(HeaderValue::Int(-5))), Deadline::Bad("-5".into()));
        assert_eq!(
            deadline(&with(HeaderValue::Int(i64::MAX))),
            Deadline::Bad(i64::MAX.to_string())
        );
        assert_eq!(
            deadline(&with(HeaderValue::Str("abc".into()))),
            Deadline::Bad("\"abc\"".into())
        );
        assert_eq!(
            deadline(&with(HeaderValue::Str("1e400".into()))),
            Deadline::Bad("\"1e400\"".into())
        );
    }

    #[test]
    fn properties_over_a_frame_are_told() {
        let mut msg = Message {
            kind: Kind::Tabular,
            content_type: "application/json".into(),
            message_id: "id".into(),
            headers: Headers::new(),
            body: Vec::new(),
            label: "x".into(),
            route: Route::default(),
            original: Original::default(),
            ticket: 0,
        };
        assert_eq!(msg.oversized_properties(), None);
        msg.headers.insert("big".into(), HeaderValue::Str("h".repeat(MAX_PROPERTY_BYTES)));
        assert!(msg.oversized_properties().is_some_and(|n| n > MAX_PROPERTY_BYTES));
        msg.headers.insert("big".into(), HeaderValue::Str("h".repeat(MAX_PROPERTY_BYTES - 200)));
        assert_eq!(msg.oversized_properties(), None);
    }

    /// The shared round-trip contract every codec must meet: the encoded message carries the
    /// wire-format-1 fields, and decoding the delivery gives the input back.
    pub(crate) fn assert_round_trip<T: PartialEq + std::fmt::Debug>(
        msg: &Message,
        expected_content_type: &str,
        decode: impl Fn(&Delivery) -> T,
        expected: T,
    ) {
        assert_eq!(msg.content_type, expected_content_type);
        assert_eq!(msg.message_id.len(), 32);
        assert!(matches!(msg.headers.get("source"), Some(HeaderValue::Str(_))));
        let delivery = Delivery {
            body: msg.body.clone(),
            content_type: Some(msg.content_type.clone()),
            message_id: Some(msg.message_id.clone()),
            kind: Some(msg.kind.as_str().to_string()),
            headers: msg.headers.clone(),
            redelivered: false,
            ..Delivery::default()
        };
        assert_eq!(decode(&delivery), expected);
    }

    #[test]
    fn message_id_is_deterministic_and_input_sensitive() {
        let a = message_id(Kind::Tabular, "a.csv", "1", b"{}");
        assert_eq!(a, message_id(Kind::Tabular, "a.csv", "1", b"{}"));
        assert_ne!(a, message_id(Kind::Tabular, "a.csv", "2", b"{}"));
        assert_ne!(a, message_id(Kind::Text, "a.csv", "1", b"{}"));
        assert_ne!(a, message_id(Kind::Tabular, "b.csv", "1", b"{}"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn extension_from_content_type() {
        assert_eq!(extension_for(Some("image/png")), "png");
        assert_eq!(extension_for(Some("text/plain; charset=utf-8")), "txt");
        assert_eq!(extension_for(Some("IMAGE/JPEG")), "jpg");
        assert_eq!(extension_for(None), "bin");
        assert_eq!(extension_for(Some("application/x-weird")), "bin");
    }

    #[test]
    fn only_a_non_empty_message_id_is_assigned() {
        let d = Delivery { body: b"abc".to_vec(), ..Delivery::default() };
        assert_eq!(d.assigned_id(), None);
        let d = Delivery { message_id: Some(String::new()), ..Delivery::default() };
        assert_eq!(d.assigned_id(), None);
        let d = Delivery { message_id: Some("m1".into()), ..Delivery::default() };
        assert_eq!(d.assigned_id(), Some("m1"));
    }

    #[test]
    fn unique_ids_differ_and_look_like_message_ids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| unique_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(answer_id("a", "q"), answer_id("a", "q"));
        assert_ne!(answer_id("a", "q"), answer_id("a", "r"));
        let long = "x".repeat(200);
        assert_ne!(answer_id(&format!("{long}1"), "q"), answer_id(&format!("{long}2"), "q"));
    }

    #[test]
    fn id_or_hash_falls_back_to_body_hash() {
        let d = Delivery { body: b"abc".to_vec(), ..Delivery::default() };
        assert_eq!(d.id_or_hash(), sha256_hex(b"abc")[..32]);
        let d = Delivery { message_id: Some("m1".into()), ..Delivery::default() };
        assert_eq!(d.id_or_hash(), "m1");
    }
}

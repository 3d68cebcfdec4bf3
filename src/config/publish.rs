//! `produce --exchange/--routing-key/--header/--property` -> a checked [`Publish`].
//!
//! What the user may set, and what wire format 1 owns: `message_id` (deterministic, so
//! consumers drop repeats; `--new-ids` makes a re-send new data), `delivery_mode` (2,
//! persistent: a transient message is lost on a broker restart after its confirm),
//! `content_type` and `content_encoding` (consumers decode and name files by them) and the
//! headers the codecs write are refused with the reason, before anything connects.

use super::UsageError;
use crate::amqp::{HeaderField, PropertyOverrides, QueueSpec, Target};
use crate::cli::ProduceCommon;
use crate::codec::{MAX_PROPERTY_BYTES, text};

/// Where `produce` publishes, and what it adds to every message.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Exchange, routing key, headers and properties.
    pub target: Target,
    /// Declare `--queue` (false: `--exchange` without `--queue`, nothing is declared).
    pub declare_queue: bool,
}

impl Default for Publish {
    /// mqdemo's own: the queue, declared, through the default exchange, nothing added.
    fn default() -> Publish {
        Publish { target: Target::default(), declare_queue: true }
    }
}

/// Headers the codecs write (wire format 1); `x-mqdemo-*` is refused as a prefix.
const WIRE_HEADERS: [&str; 12] = [
    "source",
    "row",
    "rows",
    "size",
    "sha256",
    "width",
    "height",
    text::LINE,
    text::FILE_SHA256,
    text::FILE_SIZE,
    text::LINES,
    text::OFFSET,
];

/// The properties `--property` sets, as the error for an unknown name lists them.
const SETTABLE: &str = "priority, expiration, correlation_id, reply_to, type, app_id, user_id, \
                        timestamp";

/// Room left in a content header frame for mqdemo's own properties and headers.
const OWN_ROOM: usize = 8 * 1024;

/// The checked publishing options of `produce` (`queue`: the queue the run names).
pub(super) fn publish(
    common: &ProduceCommon,
    queue: &QueueSpec,
    queue_given: bool,
) -> Result<Publish, UsageError> {
    let mut target = Target::default();
    match (&common.exchange, &common.routing_key) {
        (None, Some(key)) => {
            return Err(UsageError(format!(
                "--routing-key {key}: only with --exchange NAME; without it mqdemo publishes \
                 to --queue through the default exchange, which routes by queue name (use \
                 --queue {key}, or add --exchange)"
            )));
        }
        (None, None) => {}
        (Some(exchange), key) => {
            // What the management UI and rabbitmqadmin call the default exchange.
            let exchange = if exchange == "amq.default" { "" } else { exchange.as_str() };
            target.exchange = Some(short_string("--exchange", exchange)?);
            let key = key.clone().unwrap_or_else(|| queue.name.clone());
            target.routing_key = Some(short_string("--routing-key", &key)?);
        }
    }
    let declare_queue = target.exchange.is_none() || queue_given;
    if !declare_queue {
        unused_queue_args(common)?;
    }
    for given in &common.headers {
        let (name, value) = header(given)?;
        if target.headers.iter().any(|(n, _)| *n == name) {
            return Err(UsageError(format!(
                "--header {name}: given twice; an AMQP header table holds one value per name"
            )));
        }
        target.headers.push((name, value));
    }
    let mut seen = Vec::new();
    for given in &common.properties {
        let name = property(given, &mut target.properties)?;
        if seen.contains(&name) {
            return Err(UsageError(format!("--property {name}: given twice")));
        }
        seen.push(name);
    }
    let added = target.added_bytes();
    if added > MAX_PROPERTY_BYTES - OWN_ROOM {
        return Err(UsageError(format!(
            "--header/--property: {added} bytes, more than the {} that fit in one AMQP frame \
             beside mqdemo's own headers; send less (large data belongs in the body)",
            MAX_PROPERTY_BYTES - OWN_ROOM
        )));
    }
    Ok(Publish { target, declare_queue })
}

/// With `--exchange` and no `--queue` nothing is declared: queue options would do nothing.
fn unused_queue_args(common: &ProduceCommon) -> Result<(), UsageError> {
    let a = &common.queue_args;
    let given = [
        ("--queue-type", a.queue_type.is_some()),
        ("--dead-letter-queue", a.dead_letter_queue.is_some()),
        ("--max-length", a.max_length.is_some()),
        ("--max-age", a.max_age.is_some()),
        ("--max-length-bytes", a.max_length_bytes.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(UsageError(format!(
            "{flag}: shapes the queue mqdemo declares, and with --exchange and no --queue it \
             declares none; add --queue NAME (the queue is declared, not bound), or drop {flag}"
        ))),
        None => Ok(()),
    }
}

/// An AMQP short string (exchange names, routing keys, most properties): at most 255 bytes.
fn short_string(flag: &str, value: &str) -> Result<String, UsageError> {
    if value.len() > 255 {
        return Err(UsageError(format!(
            "{flag} {}...: {} bytes; AMQP allows at most 255",
            value.chars().take(40).collect::<String>(),
            value.len()
        )));
    }
    Ok(value.to_string())
}

/// `NAME=VALUE` or `NAME:TYPE=VALUE` -> a header.
fn header(given: &str) -> Result<(String, HeaderField), UsageError> {
    let bad = |why: String| Err(UsageError(format!("--header {given}: {why}")));
    let Some((left, value)) = given.split_once('=') else {
        return bad("give NAME=VALUE (or NAME:TYPE=VALUE), e.g. --header model=v2".into());
    };
    let (name, kind) = match left.rsplit_once(':') {
        Some((name, kind)) => (name, Some(kind)),
        None => (left, None),
    };
    if let Some(why) = refused_header(name) {
        return bad(why);
    }
    let field = match kind {
        None => auto_typed(value),
        Some("str" | "string") => HeaderField::Str(value.to_string()),
        Some("int") => match value.trim().parse::<i64>() {
            Ok(i) => HeaderField::Int(i),
            Err(_) => return bad(format!("{value:?} is not a whole number (64-bit)")),
        },
        Some("bool") => match value.to_ascii_lowercase().as_str() {
            "true" => HeaderField::Bool(true),
            "false" => HeaderField::Bool(false),
            _ => return bad(format!("{value:?} is not true or false")),
        },
        Some("float") => match value.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => HeaderField::Float(f),
            _ => return bad(format!("{value:?} is not a finite number")),
        },
        Some(other) => {
            return bad(format!(
                "unknown type {other:?}: give str, int, bool or float (a name with a ':' in \
                 it needs a type: NAME:str=VALUE)"
            ));
        }
    };
    Ok((name.to_string(), field))
}

/// Why `name` cannot be a user's header, if it cannot.
fn refused_header(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 255 {
        return Some("a header name must be 1 to 255 bytes long".into());
    }
    if WIRE_HEADERS.contains(&name) || name.to_ascii_lowercase().starts_with("x-mqdemo-") {
        return Some(format!(
            "{name:?} is a header of mqdemo's wire format ({}, x-mqdemo-*); consumers rely on \
             it, so it cannot be set; pick another name",
            WIRE_HEADERS.join(", ")
        ));
    }
    if name == "CC" || name == "BCC" {
        return Some(format!(
            "{name} (RabbitMQ's sender-selected distribution) must be an array of routing keys, \
             which --header cannot give; bind the queues to the --exchange instead"
        ));
    }
    None
}

/// A value without a type: a whole number as written (`42`, `-7`; not `007` or `+1`, which
/// would not come back the same) is an integer, `true`/`false` a boolean, the rest a string.
fn auto_typed(value: &str) -> HeaderField {
    match value {
        "true" => return HeaderField::Bool(true),
        "false" => return HeaderField::Bool(false),
        _ => {}
    }
    match value.parse::<i64>() {
        Ok(i) if i.to_string() == value => HeaderField::Int(i),
        _ => HeaderField::Str(value.to_string()),
    }
}

/// Set one `NAME=VALUE` property; the property's name, for duplicates.
fn property(given: &str, props: &mut PropertyOverrides) -> Result<String, UsageError> {
    let bad = |why: String| UsageError(format!("--property {given}: {why}"));
    let Some((name, value)) = given.split_once('=') else {
        return Err(bad("give NAME=VALUE, e.g. --property priority=5".into()));
    };
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    let text = || short_string(&format!("--property {name}"), value);
    match name.as_str() {
        "priority" => {
            props.priority = Some(value.parse::<u8>().map_err(|_| {
                bad("give a whole number from 0 to 255 (RabbitMQ honours it on a queue \
                         declared with x-max-priority)"
                    .into())
            })?);
        }
        "expiration" => props.expiration = Some(expiration(value).map_err(bad)?),
        "timestamp" => {
            props.timestamp = Some(value.parse::<u64>().map_err(|_| {
                bad("give whole seconds since 1970-01-01 UTC, e.g. 1700000000 (default: the \
                     time of publishing)"
                    .into())
            })?);
        }
        "correlation_id" => props.correlation_id = Some(text()?),
        "reply_to" if value.starts_with("amq.rabbitmq.reply-to") => {
            return Err(bad("RabbitMQ's direct reply-to needs a consumer on the publishing \
                            channel, and produce reads no replies (the broker would close the \
                            channel); name a queue your consumer reads, or use `mqdemo \
                            request` for request/reply"
                .into()));
        }
        "reply_to" => props.reply_to = Some(text()?),
        "type" => props.type_ = Some(text()?),
        "app_id" => props.app_id = Some(text()?),
        "user_id" => props.user_id = Some(text()?),
        "delivery_mode" if matches!(value, "2" | "persistent") => {}
        other => return Err(bad(not_settable(other))),
    }
    Ok(name)
}

/// `expiration`: a per-message TTL in milliseconds, sent as a decimal string (AMQP's
/// `expiration` is a short string; RabbitMQ takes 0 to 2^32-1).
fn expiration(value: &str) -> Result<String, String> {
    let ms = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u32>().ok())
        .flatten()
        .filter(|_| !value.is_empty());
    match ms {
        Some(ms) => Ok(ms.to_string()),
        None => Err("give the time to live in milliseconds, a whole number from 0 to \
                     4294967295, e.g. --property expiration=60000 (a message still in the queue \
                     after it is dropped, or dead-lettered)"
            .into()),
    }
}

/// Why a property name cannot be set.
fn not_settable(name: &str) -> String {
    match name {
        "message_id" => "message_id is mqdemo's wire format: the same input gives the same id, \
                         so consumers drop repeats; to send data again as new data use --new-ids"
            .into(),
        "delivery_mode" => "mqdemo publishes persistent messages only (delivery_mode 2): a \
                            transient message (1) is lost on a broker restart even after its \
                            confirm, and nothing confirmed may be lost"
            .into(),
        "content_type" | "content_encoding" => format!(
            "{name} is mqdemo's wire format, set from the data (application/json, the \
             image's own type, text/plain; charset=utf-8, bodies unencoded): consumers decode \
             and name files by it"
        ),
        "headers" => "give headers with --header NAME=VALUE".into(),
        other => format!("unknown property {other:?}; the ones you can set are: {SETTABLE}"),
    }
}

#[cfg(test)]
mod tests;

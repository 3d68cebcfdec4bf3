//! `failed show`: every message taken with `basic.get` and held, one entry written per
//! message as it comes (text for people, or one JSON object a line), then all released back
//! where they were. Only one body is in memory at a time, and only a preview of it is shown.

use super::{Done, no_failed_queue};
use crate::amqp::{Browser, DELIVERY_COUNT};
use crate::codec::{DROPPED_HEADER, Delivery, ERROR_HEADER};
use crate::config::Global;
use crate::output::{Reporter, human_bytes};
use color_eyre::eyre::{Result, WrapErr};
use serde_json::{Map, Value, json};
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `show` prints.
pub(super) struct View {
    /// At most this many messages.
    pub count: u64,
    /// One JSON object a line.
    pub json: bool,
    /// Bytes of each body previewed.
    pub body_bytes: usize,
}

/// List the messages of `queue` to `out`, leaving them in the queue.
pub(super) fn run(
    global: &Global,
    queue: &str,
    view: &View,
    stop: &Arc<AtomicBool>,
    out: Box<dyn Write + Send>,
) -> Result<Done> {
    let Some((mut browser, info)) = Browser::open(&global.endpoints, queue, &[])? else {
        return Err(no_failed_queue(queue));
    };
    let reporter = Reporter::hidden();
    if info.consumers > 0 {
        reporter.warn(&format!(
            "{} consumer(s) on {queue}: the messages they hold are not shown, and those shown \
             are out of their reach until this ends",
            info.consumers
        ));
    }
    let mut out = BufWriter::new(out);
    let listed = list(&mut browser, view, stop, &mut out);
    let released = browser.release();
    // After a failed read the connection is usually gone, and its error says why.
    if let (Ok(_), Err(e)) = (&listed, released) {
        reporter.warn(&format!(
            "could not release the messages shown ({e}); the broker puts them back in {queue} \
             as the connection closes"
        ));
    }
    let (seen, error) = match listed {
        Ok(seen) => (seen, None),
        Err((seen, e)) => (seen, Some(e)),
    };
    if let Some(n) = seen.most_deliveries {
        reporter.warn(&quorum_warning(queue, n + 1));
    }
    let summary = match (seen.shown, &error) {
        (0, Some(_)) => String::new(), // the error says it all
        (shown, _) => summary(queue, shown, u64::from(info.messages), view.count, stop),
    };
    Ok(Done { summary, clean: error.is_none(), error })
}

/// The summary line: how many were shown, of how many, and that they are all still there.
fn summary(queue: &str, shown: u64, depth: u64, count: u64, stop: &AtomicBool) -> String {
    if shown == 0 {
        return format!("mqdemo: no failed messages in {queue}");
    }
    let more = match depth.saturating_sub(shown) {
        0 => String::new(),
        n if stop.load(Ordering::SeqCst) => format!("; stopped by a signal, {n} not shown"),
        n => format!("; {n} more not shown (--count {count})"),
    };
    format!("mqdemo: showed {shown} of {depth} messages in {queue} (all left there){more}")
}

/// What a look at a quorum queue costs its messages (`deliveries`: the most now).
fn quorum_warning(queue: &str, deliveries: u64) -> String {
    format!(
        "{queue} is a quorum queue: RabbitMQ counts each message shown as delivered once more \
         (x-delivery-count, now up to {deliveries}), and drops or dead-letters one delivered \
         more often than its x-delivery-limit (mqdemo gives the failed queue of a quorum queue \
         its --delivery-limit, 20 by default): requeue them rather than show them again and \
         again"
    )
}

/// What [`list`] saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Entries written.
    shown: u64,
    /// The highest delivery count of a message shown (quorum queues count them).
    most_deliveries: Option<u64>,
}

/// Write one entry per message taken; what was seen, and what stopped it early.
fn list(
    browser: &mut Browser,
    view: &View,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Seen, (Seen, color_eyre::eyre::Report)> {
    let mut seen = Seen::default();
    while seen.shown < view.count && !stop.load(Ordering::SeqCst) {
        let taken = browser.get().map_err(|e| (seen, e))?;
        let Some(b) = taken else { break };
        if let Some(n) = b.headers.get(DELIVERY_COUNT).and_then(Value::as_u64) {
            seen.most_deliveries = Some(seen.most_deliveries.unwrap_or(0).max(n));
        }
        let e = entry(&b.delivery, &b.properties, &b.headers, seen.shown + 1, view.body_bytes);
        let written = if view.json {
            serde_json::to_writer(&mut *out, &e).map_err(std::io::Error::from)
        } else {
            out.write_all(text(&e, view.body_bytes > 0).as_bytes())
        };
        written.and_then(|()| out.write_all(b"\n")).map_err(|e| (seen, e.into()))?;
        seen.shown += 1;
    }
    out.flush().wrap_err("cannot write to stdout").map_err(|e| (seen, e))?;
    Ok(seen)
}

/// One message as a JSON object: where it is in the queue, why it failed, what it is, where
/// it came from (when dead-lettered by the broker), every property and header, and a body
/// preview (text, or hex when the body is not UTF-8).
fn entry(
    d: &Delivery,
    properties: &Map<String, Value>,
    h: &Map<String, Value>,
    position: u64,
    body_bytes: usize,
) -> Value {
    let get = |k: &str| h.get(k).cloned().unwrap_or(Value::Null);
    let origin = h.get("x-first-death-queue").map(|queue| {
        json!({
            "queue": queue,
            "reason": get("x-first-death-reason"),
            "exchange": get("x-first-death-exchange"),
        })
    });
    let (body, encoding, cut) = preview(&d.body, body_bytes);
    json!({
        "position": position,
        "message_id": d.message_id,
        "reason": get(ERROR_HEADER),
        "source": get("source"),
        "row": get("row"),
        "line": get("line"),
        "type": d.kind,
        "content_type": d.content_type,
        "size": d.body.len(),
        "origin": origin,
        "properties": Value::Object(properties.clone()),
        "headers": Value::Object(h.clone()),
        "body": body,
        "body_encoding": encoding,
        "body_truncated": cut,
    })
}

/// The first `max` bytes of a body: as text when they are UTF-8 (a character cut at the end
/// is left off), else as hex; and whether the body is longer.
fn preview(body: &[u8], max: usize) -> (String, &'static str, bool) {
    let cut = body.len() > max;
    let head = &body[..body.len().min(max)];
    match std::str::from_utf8(head) {
        Ok(s) => (s.to_string(), "utf-8", cut),
        Err(e) if cut && e.error_len().is_none() => {
            (String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned(), "utf-8", true)
        }
        Err(_) => {
            let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
            (hex.join(" "), "hex", cut)
        }
    }
}

/// An entry for people: what it is, why it failed, where it came from, a body preview.
fn text(e: &Value, with_body: bool) -> String {
    let s = |k: &str| e[k].as_str().map(printable);
    let id = s("message_id").filter(|id| !id.is_empty());
    let id = id.unwrap_or_else(|| "(no message id)".into());
    let mut what = vec![id];
    if let Some(source) = plain(&e["source"]) {
        what.push(source);
    }
    for place in ["row", "line"] {
        if let Some(n) = plain(&e[place]) {
            what.push(format!("{place} {n}"));
        }
    }
    let size = human_bytes(e["size"].as_u64().unwrap_or(0));
    let delivered = match e["headers"][DELIVERY_COUNT].as_u64() {
        Some(1) => Some("delivered once before".to_string()),
        Some(n) if n > 1 => Some(format!("delivered {n} times before")),
        _ => None,
    };
    let kind = [s("type"), s("content_type"), Some(size), delivered].into_iter().flatten();
    let mut out =
        format!("{}. {} ({})", e["position"], what.join("  "), kind.collect::<Vec<_>>().join(", "));
    let reason = plain(&e["reason"]).unwrap_or_else(|| "(no reason)".into());
    out.push_str(&format!("\n   reason: {reason}"));
    if let Some(origin) = e["origin"].as_object() {
        let from = plain(&origin["queue"]).unwrap_or_default();
        let why = plain(&origin["reason"]).unwrap_or_default();
        out.push_str(&format!("\n   from: queue {from} (dead-lettered: {why})"));
    }
    if let Some(n) = plain(&e["headers"][DROPPED_HEADER]) {
        out.push_str(&format!("\n   note: {n} of its headers did not fit beside the reason"));
    }
    if with_body {
        let body = printable(e["body"].as_str().unwrap_or(""));
        let more = if e["body_truncated"] == true { " …" } else { "" };
        let hex = if e["body_encoding"] == "hex" { "(hex) " } else { "" };
        out.push_str(&format!("\n   body: {hex}{body}{more}"));
    }
    out
}

/// A JSON value as a person reads it: strings without quotes, others as JSON; None for null.
fn plain(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(printable(s)),
        other => Some(printable(&other.to_string())),
    }
}

/// `s` safe for a terminal: line breaks, tabs, control characters (escape sequences) and
/// bidirectional overrides shown as escapes instead of acted on.
pub(super) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder the text around them (U+202A..U+202E, U+2066..U+2069, marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &[u8]) -> Value {
        let d = Delivery {
            body: body.to_vec(),
            message_id: Some("m1".into()),
            kind: Some("tabular".into()),
            content_type: Some("application/json".into()),
            ..Delivery::default()
        };
        let headers = json!({"source": "a.csv", "row": 3, ERROR_HEADER: "body is not JSON"});
        let Value::Object(headers) = headers else { unreachable!() };
        entry(&d, &Map::new(), &headers, 1, 8)
    }

    #[test]
    fn an_entry_names_the_message_its_reason_and_its_place() {
        let e = sample(b"not json at all");
        assert_eq!(e["reason"], "body is not JSON");
        assert_eq!((e["source"].clone(), e["row"].clone()), (json!("a.csv"), json!(3)));
        assert_eq!(e["size"], 15);
        assert_eq!(
            (e["body"].clone(), e["body_truncated"].clone()),
            (json!("not json"), json!(true))
        );
        assert_eq!(
            text(&e, true),
            "1. m1  a.csv  row 3 (tabular, application/json, 15 B)\n   reason: body is not \
             JSON\n   body: not json …"
        );
        assert!(!text(&e, false).contains("body:"));
    }

    #[test]
    fn a_message_from_elsewhere_has_no_reason_and_may_have_no_id() {
        let e = entry(&Delivery::default(), &Map::new(), &Map::new(), 7, 0);
        assert_eq!(e["reason"], Value::Null);
        assert_eq!(text(&e, false), "7. (no message id) (0 B)\n   reason: (no reason)");
    }

    #[test]
    fn dead_lettered_messages_say_where_they_came_from() {
        let headers = json!({"x-first-death-queue": "records", "x-first-death-reason": "rejected"});
        let Value::Object(headers) = headers else { unreachable!() };
        let e = entry(&Delivery::default(), &Map::new(), &headers, 1, 0);
        assert_eq!(e["origin"]["queue"], "records");
        assert!(text(&e, false).contains("from: queue records (dead-lettered: rejected)"));
    }

    #[test]
    fn previews_are_text_when_utf8_else_hex_and_never_split_a_character() {
        assert_eq!(preview(b"abc", 10), ("abc".into(), "utf-8", false));
        assert_eq!(preview("aé".as_bytes(), 2), ("a".into(), "utf-8", true));
        assert_eq!(preview(&[0x89, b'P', b'N', b'G'], 3), ("89 50 4e".into(), "hex", true));
        assert_eq!(preview(b"abc", 0), (String::new(), "utf-8", true));
        assert_eq!(preview(b"", 0), (String::new(), "utf-8", false));
    }

    #[test]
    fn control_and_bidi_characters_are_shown_not_acted_on() {
        assert_eq!(printable("a\nb\x1b[31mc\u{202e}d"), "a\\nb\\u{1b}[31mc\\u{202e}d");
        assert_eq!(printable("café ✓"), "café ✓");
    }
}

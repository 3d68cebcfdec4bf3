//! The answer format: what `pipe` and `serve` publish for an input their model answered
//! (or failed on). Ids derive from the input's, so a recomputed answer keeps its id.

use super::{
    Delivery, ERROR_HEADER, HeaderValue, Headers, INPUT_OFFSET_HEADER, Kind, Message, Original,
    Route, STREAM_OFFSET, answer_id, header_text, image,
};

/// Headers describing the input body, which an answer does not inherit.
const BODY_HEADERS: [&str; 4] = ["sha256", "size", "width", "height"];

/// An answer body's kind and content type: JSON is tabular; otherwise text for a line
/// model, and for a framed (binary) model an image when its bytes say so.
pub fn answer_kind(body: &[u8], binary: bool) -> (Kind, &'static str) {
    let json = serde_json::from_slice::<&serde_json::value::RawValue>(body).is_ok();
    match (json, binary) {
        (true, _) => (Kind::Tabular, "application/json"),
        (false, false) => (Kind::Text, "text/plain; charset=utf-8"),
        (false, true) => match image::sniff(body) {
            Some(ct) => (Kind::Image, ct),
            None => (Kind::Text, "application/octet-stream"),
        },
    }
}

/// The answer to input `d` (id `input_id`) for queue `to`: the model's `body`, the input's
/// headers but those describing its body, its correlation id.
pub fn answer(
    d: &Delivery,
    input_id: &str,
    body: Vec<u8>,
    binary: bool,
    to: &str,
    label: String,
) -> Message {
    let (kind, content_type) = answer_kind(&body, binary);
    let mut headers = d.headers.clone();
    headers.retain(|k, _| !BODY_HEADERS.contains(&k.as_str()));
    if let Some(offset) = headers.remove(STREAM_OFFSET) {
        headers.insert(INPUT_OFFSET_HEADER.into(), offset);
    }
    Message {
        kind,
        content_type: content_type.to_string(),
        message_id: answer_id(input_id, to),
        headers,
        body,
        label,
        route: back_to(d, to),
        original: Original::default(),
        ticket: 0,
    }
}

/// An error reply to request `d` for its reply queue `to`: an empty body, the reason in
/// [`ERROR_HEADER`], the request's correlation id.
pub fn error_reply(d: &Delivery, input_id: &str, reason: &str, to: &str, label: String) -> Message {
    let mut headers = Headers::new();
    headers.insert(ERROR_HEADER.into(), HeaderValue::Str(header_text(reason)));
    Message {
        kind: Kind::Text,
        content_type: "text/plain; charset=utf-8".into(),
        message_id: answer_id(input_id, &format!("{to}#error")),
        headers,
        body: Vec::new(),
        label,
        route: back_to(d, to),
        original: Original::default(),
        ticket: 0,
    }
}

/// Addressed to queue `to`, with the input's correlation id (how a client matches a reply).
fn back_to(d: &Delivery, to: &str) -> Route {
    Route {
        routing_key: Some(to.to_string()),
        correlation_id: d.correlation_id.clone(),
        reply_to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_typed_by_its_body() {
        assert_eq!(answer_kind(b"{\"a\":1}", false).0, Kind::Tabular);
        assert_eq!(answer_kind(b"cat", false), (Kind::Text, "text/plain; charset=utf-8"));
        assert_eq!(answer_kind(b"\x89PNG\r\n\x1a\n....", true).0, Kind::Image);
        assert_eq!(answer_kind(b"\x00\x01", true), (Kind::Text, "application/octet-stream"));
    }

    #[test]
    fn an_answer_keeps_the_input_headers_but_those_of_its_body() {
        let mut d = Delivery { correlation_id: Some("c".into()), ..Delivery::default() };
        d.headers.insert("source".into(), HeaderValue::Str("a.csv".into()));
        d.headers.insert("sha256".into(), HeaderValue::Str("00".into()));
        let a = answer(&d, "in1", b"1".to_vec(), false, "out", "l".into());
        assert_eq!(a.message_id, answer_id("in1", "out"), "derived: a recomputed answer repeats");
        assert!(a.headers.contains_key("source") && !a.headers.contains_key("sha256"));
        assert_eq!(a.route.correlation_id.as_deref(), Some("c"));
        let e = error_reply(&d, "in1", "boom", "reply", "l".into());
        assert!(e.body.is_empty());
        assert_eq!(e.headers.get(ERROR_HEADER), Some(&HeaderValue::Str("boom".into())));
        assert_ne!(e.message_id, a.message_id);
    }
}

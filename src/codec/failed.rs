//! The failed-message format: a message mqdemo could not use (undecodable, unstorable, or
//! one the model failed on) goes to a failed queue as it came, plus the reason.
//!
//! "As it came" means every property and header the broker delivered, including header types
//! the codec does not model: the delivery carries them in an [`Original`], which only the AMQP
//! layer fills and reads.

use super::{Delivery, HeaderValue, Kind, Message, Route, header_text};
use std::any::Any;
use std::sync::Arc;

/// The header naming why mqdemo could not use a message.
pub const ERROR_HEADER: &str = "x-mqdemo-error";
/// The header counting the input's headers left off a failed copy because they did not fit.
pub const DROPPED_HEADER: &str = "x-mqdemo-dropped-headers";

/// The properties a delivery arrived with, whole: opaque here, made and read by the AMQP
/// layer, so that a copy of the delivery can be published unchanged.
#[derive(Clone, Default)]
pub struct Original {
    properties: Option<Arc<dyn Any + Send + Sync>>,
    /// Encoded bytes of all the properties as received, headers included.
    property_bytes: usize,
    /// Encoded bytes of the header table alone, and its entries.
    header_bytes: usize,
    header_count: usize,
    /// The original headers are left off (they did not fit with the reason).
    headers_dropped: bool,
}

/// What a kept copy may add to the original's encoded properties besides its own headers:
/// a message id where there was none, and the properties moved into headers (`expiration`,
/// `user_id`, `CC`) gaining a header name and type.
const COPY_ALLOWANCE: usize = 512;

/// The headers a kept copy adds to the original's.
pub const ADDED_HEADERS: [&str; 2] = [ERROR_HEADER, DROPPED_HEADER];

impl Original {
    /// Keep `properties` (as the AMQP layer types them), with their encoded size in bytes:
    /// all of them, the header table alone, and its number of entries.
    pub fn new<P: Any + Send + Sync>(
        properties: P,
        property_bytes: usize,
        header_bytes: usize,
        header_count: usize,
    ) -> Original {
        Original {
            properties: Some(Arc::new(properties)),
            property_bytes,
            header_bytes,
            header_count,
            headers_dropped: false,
        }
    }

    /// The properties, if they were kept and are of type `P`.
    pub fn properties<P: Any>(&self) -> Option<&P> {
        self.properties.as_deref().and_then(|p| p.downcast_ref::<P>())
    }

    /// Whether the original headers are to be left off.
    pub fn headers_dropped(&self) -> bool {
        self.headers_dropped
    }

    /// The encoded size of a copy's properties, its own headers being `headers` (of which
    /// only [`ADDED_HEADERS`] are added to the original's); None when nothing was kept.
    pub(super) fn copy_bytes(&self, headers: &super::Headers) -> Option<usize> {
        self.properties.as_ref()?;
        let mut added = headers.clone();
        added.retain(|k, _| ADDED_HEADERS.contains(&k.as_str()));
        let kept = if self.headers_dropped {
            self.property_bytes.saturating_sub(self.header_bytes)
        } else {
            self.property_bytes
        };
        Some(kept + super::headers_bytes(&added) + COPY_ALLOWANCE)
    }
}

impl std::fmt::Debug for Original {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Original")
            .field("kept", &self.properties.is_some())
            .field("headers_dropped", &self.headers_dropped)
            .finish()
    }
}

impl PartialEq for Original {
    fn eq(&self, other: &Original) -> bool {
        let same = match (&self.properties, &other.properties) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same && self.headers_dropped == other.headers_dropped
    }
}

/// The delivery as it came (`body` is its body, moved or copied by the caller), for the
/// failed queue `to`, with `reason` in [`ERROR_HEADER`] and `id` as its message id. Headers that would not fit beside the reason (an AMQP frame holds
/// the properties) are left off and counted in [`DROPPED_HEADER`].
pub fn failed_copy(d: &Delivery, body: Vec<u8>, id: &str, reason: &str, to: &str) -> Message {
    let mut headers = d.headers.clone();
    headers.insert(ERROR_HEADER.into(), HeaderValue::Str(header_text(reason)));
    let mut msg = Message {
        kind: kind_of(d),
        content_type: d.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
        message_id: id.to_string(),
        headers,
        body,
        label: format!("failed message {id}"),
        route: Route {
            routing_key: Some(to.to_string()),
            correlation_id: d.correlation_id.clone(),
            reply_to: None,
        },
        original: d.original.clone(),
        ticket: 0,
    };
    if msg.oversized_properties().is_some() {
        // The input's own headers are what does not fit: keep only the reason.
        let dropped = match msg.original.properties {
            Some(_) => msg.original.header_count,
            None => msg.headers.len() - 1,
        };
        msg.headers.retain(|k, _| k == ERROR_HEADER);
        msg.headers.insert(
            DROPPED_HEADER.into(),
            HeaderValue::Int(i64::try_from(dropped).unwrap_or(i64::MAX)),
        );
        msg.original.headers_dropped = true;
    }
    msg
}

/// A message taken back from a failed queue, as its producer sent it, for queue `to`: the
/// delivery's properties and headers as they came (the AMQP layer reads them whole and
/// leaves [`ADDED_HEADERS`] off), under its own message id `id`, so consumers that dedupe by
/// id still can (a failed message was never stored, so the same id is new to them).
pub fn requeued_copy(d: &Delivery, body: Vec<u8>, id: &str, to: &str, label: String) -> Message {
    let mut headers = d.headers.clone();
    headers.retain(|k, _| !ADDED_HEADERS.contains(&k.as_str()));
    Message {
        kind: kind_of(d),
        content_type: d.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
        message_id: id.to_string(),
        headers,
        body,
        label,
        route: Route {
            routing_key: Some(to.to_string()),
            correlation_id: d.correlation_id.clone(),
            reply_to: d.reply_to.clone(),
        },
        original: d.original.clone(),
        ticket: 0,
    }
}

/// The data kind a delivery says it is (tabular when it names none).
fn kind_of(d: &Delivery) -> Kind {
    match d.kind.as_deref() {
        Some("image") => Kind::Image,
        Some("text") => Kind::Text,
        _ => Kind::Tabular,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MAX_PROPERTY_BYTES;

    fn delivery() -> Delivery {
        let mut headers = crate::codec::Headers::new();
        headers.insert("source".into(), HeaderValue::Str("a.csv".into()));
        Delivery {
            body: b"not json".to_vec(),
            content_type: Some("text/plain".into()),
            message_id: Some("m1".into()),
            kind: Some("text".into()),
            headers,
            correlation_id: Some("c1".into()),
            ..Delivery::default()
        }
    }

    #[test]
    fn a_failed_copy_is_the_delivery_plus_the_reason() {
        let msg = failed_copy(&delivery(), b"not json".to_vec(), "m1", "not JSON", "q.failed");
        assert_eq!(msg.body, b"not json");
        assert_eq!(msg.content_type, "text/plain");
        assert_eq!(msg.kind, Kind::Text);
        assert_eq!(msg.message_id, "m1");
        assert_eq!(msg.route.routing_key.as_deref(), Some("q.failed"));
        assert_eq!(msg.route.correlation_id.as_deref(), Some("c1"));
        assert_eq!(msg.headers.get("source"), Some(&HeaderValue::Str("a.csv".into())));
        assert_eq!(msg.headers.get(ERROR_HEADER), Some(&HeaderValue::Str("not JSON".into())));
        assert!(!msg.original.headers_dropped());
    }

    #[test]
    fn headers_that_do_not_fit_beside_the_reason_are_left_off_and_counted() {
        let mut d = delivery();
        d.headers.insert("big".into(), HeaderValue::Str("h".repeat(MAX_PROPERTY_BYTES - 300)));
        let msg = failed_copy(&d, d.body.clone(), "m1", &"r".repeat(1_000), "q.failed");
        assert_eq!(msg.headers.len(), 2, "{:?}", msg.headers.keys());
        assert_eq!(msg.headers.get(DROPPED_HEADER), Some(&HeaderValue::Int(2)));
        assert!(msg.original.headers_dropped());
        assert_eq!(msg.oversized_properties(), None);
    }

    #[test]
    fn a_requeued_copy_is_the_failed_message_without_the_failure() {
        let failed = failed_copy(&delivery(), b"x".to_vec(), "m1", "not JSON", "q.failed");
        let mut d = delivery();
        d.headers = failed.headers;
        d.headers.insert(DROPPED_HEADER.into(), HeaderValue::Int(2));
        let msg = requeued_copy(&d, b"x".to_vec(), "m1", "q", "failed message m1".into());
        assert_eq!(msg.message_id, "m1", "the same id: consumers' dedupe still works");
        assert_eq!(msg.route.routing_key.as_deref(), Some("q"));
        assert_eq!(msg.route.correlation_id.as_deref(), Some("c1"));
        assert_eq!(msg.kind, Kind::Text);
        assert_eq!(msg.content_type, "text/plain");
        assert_eq!(msg.headers.keys().collect::<Vec<_>>(), ["source"]);
        assert_eq!(msg.label, "failed message m1");
    }

    #[test]
    fn the_original_properties_decide_whether_a_copy_fits() {
        let mut d = delivery();
        // Properties as received near the frame limit, nearly all of it headers.
        d.original = Original::new((), MAX_PROPERTY_BYTES - 100, MAX_PROPERTY_BYTES - 2_000, 9);
        let msg = failed_copy(&d, d.body.clone(), "m1", "why", "q.failed");
        assert!(msg.original.headers_dropped(), "the original's own headers do not fit");
        assert_eq!(msg.headers.get(DROPPED_HEADER), Some(&HeaderValue::Int(9)));
        assert_eq!(msg.oversized_properties(), None);
        assert_eq!(msg.original.properties::<()>(), Some(&()));
        assert_eq!(msg.original.properties::<u8>(), None);
        // Small properties: the copy keeps them.
        d.original = Original::new((), 300, 100, 2);
        let msg = failed_copy(&d, d.body.clone(), "m1", "why", "q.failed");
        assert!(!msg.original.headers_dropped());
    }
}

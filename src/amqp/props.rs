//! Message properties and header field tables <-> the codec's plain types.

use crate::codec::{Delivery, HeaderValue, Headers, Message, Original};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::time::{SystemTime, UNIX_EPOCH};

/// The AMQP properties mqdemo publishes a message with (wire format 1); for a copy of a
/// delivery (the failed queue), the delivery's own (see [`as_received`]).
pub fn properties(msg: &Message) -> AmqpProperties {
    if let Some(props) = msg.original.properties::<AmqpProperties>() {
        return as_received(props, msg);
    }
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut props = AmqpProperties::default();
    if let Some(id) = &msg.route.correlation_id {
        props = props.with_correlation_id(id.clone());
    }
    if let Some(to) = &msg.route.reply_to {
        props = props.with_reply_to(to.clone());
    }
    props
        .with_delivery_mode(2)
        .with_content_type(msg.content_type.clone())
        .with_type_(msg.kind.as_str().to_string())
        .with_app_id("mqdemo".to_string())
        .with_timestamp(timestamp)
        .with_message_id(msg.message_id.clone())
        .with_headers(to_field_table(&msg.headers))
}

/// A delivery's properties as they came, with the message's headers (the reason) added, its
/// message id, and two changes a kept copy needs, as RabbitMQ makes when it dead-letters: it
/// is persistent, and it does not expire (the `expiration` moves to a header).
fn as_received(props: &AmqpProperties, msg: &Message) -> AmqpProperties {
    let mut table = match (msg.original.headers_dropped(), props.headers()) {
        (false, Some(h)) => h.clone(),
        _ => FieldTable::new(),
    };
    table.extend(to_field_table(&msg.headers));
    if let Some(exp) = props.expiration() {
        table.insert(ORIGINAL_EXPIRATION.into(), AmqpValue::LongString(exp.clone()));
    }
    let mut out = AmqpProperties::default();
    // Every property but the ones replaced below, as received.
    if let Some(v) = props.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = props.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = props.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = props.type_() {
        out = out.with_type_(v.clone());
    }
    if let Some(v) = props.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out.with_delivery_mode(2).with_message_id(msg.message_id.clone()).with_headers(table)
}

/// The header a kept copy's original `expiration` moves to.
pub const ORIGINAL_EXPIRATION: &str = "x-mqdemo-original-expiration";

fn to_field_table(headers: &Headers) -> FieldTable {
    headers
        .iter()
        .map(|(k, v)| {
            let value = match v {
                HeaderValue::Int(i) => AmqpValue::LongLongInt(*i),
                HeaderValue::Str(s) => AmqpValue::LongString(s.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

fn from_field_table(table: Option<&FieldTable>) -> Headers {
    let mut headers = Headers::new();
    for (k, v) in table.into_iter().flatten() {
        let value = match v {
            AmqpValue::LongString(s) => HeaderValue::Str(s.clone()),
            AmqpValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
            AmqpValue::LongLongInt(i) => HeaderValue::Int(*i),
            _ => continue,
        };
        headers.insert(k.clone(), value);
    }
    headers
}

/// Encoded bytes of a header value of a type [`Delivery::headers`] leaves out (an upper
/// bound: RabbitMQ's field encoding, with every number as 8 bytes).
fn unmodelled_bytes(name: &str, v: &AmqpValue) -> usize {
    fn value(v: &AmqpValue) -> usize {
        1 + match v {
            AmqpValue::LongString(s) => 4 + s.len(),
            AmqpValue::ByteArray(b) => 4 + b.len(),
            AmqpValue::FieldArray(a) => 4 + a.iter().map(value).sum::<usize>(),
            AmqpValue::FieldTable(t) => {
                4 + t.iter().map(|(k, v)| 1 + k.len() + value(v)).sum::<usize>()
            }
            _ => 8,
        }
    }
    match v {
        AmqpValue::LongString(_)
        | AmqpValue::ShortShortInt(_)
        | AmqpValue::ShortShortUInt(_)
        | AmqpValue::ShortInt(_)
        | AmqpValue::ShortUInt(_)
        | AmqpValue::LongInt(_)
        | AmqpValue::LongUInt(_)
        | AmqpValue::LongLongInt(_) => 0,
        _ => 1 + name.len() + value(v),
    }
}

/// A received amiquip delivery as the codec's [`Delivery`] (the body and the properties are
/// moved out; the properties are kept whole in [`Delivery::original`]).
pub(super) fn delivery(d: &mut amiquip::Delivery) -> Delivery {
    let props = std::mem::take(&mut d.properties);
    let unmodelled = props.headers().iter().flatten().map(|(k, v)| unmodelled_bytes(k, v)).sum();
    let delivery = Delivery {
        body: std::mem::take(&mut d.body),
        content_type: props.content_type().clone(),
        message_id: props.message_id().clone(),
        kind: props.type_().clone(),
        headers: from_field_table(props.headers().as_ref()),
        redelivered: d.redelivered,
        correlation_id: props.correlation_id().clone(),
        reply_to: props.reply_to().clone(),
        original: Original::default(),
    };
    Delivery { original: Original::new(props, unmodelled), ..delivery }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_field_table() {
        let mut h = Headers::new();
        h.insert("row".into(), HeaderValue::Int(7));
        h.insert("source".into(), HeaderValue::Str("a.csv".into()));
        assert_eq!(from_field_table(Some(&to_field_table(&h))), h);
    }
}

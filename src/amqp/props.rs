//! Message properties and header field tables <-> the codec's plain types.

use crate::codec::{ADDED_HEADERS, Delivery, HeaderValue, Headers, Message, Original};
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

/// A delivery's properties as they came, with the reason added (the headers named in
/// [`ADDED_HEADERS`], nothing else of the message's: the original header values keep their
/// types) and its message id. A kept copy changes what RabbitMQ's own dead-lettering would,
/// and what the broker would refuse from mqdemo: it is persistent; `expiration` (it would
/// expire), `user_id` (the broker accepts only the publisher's own) and the `CC` header
/// (it would route the copy to those queues again, its own input among them) move to
/// `x-mqdemo-original-*` headers.
fn as_received(props: &AmqpProperties, msg: &Message) -> AmqpProperties {
    let mut table = match (msg.original.headers_dropped(), props.headers()) {
        (false, Some(h)) => h.clone(),
        _ => FieldTable::new(),
    };
    for (name, moved) in [("CC", "x-mqdemo-original-cc"), ("BCC", "x-mqdemo-original-bcc")] {
        if let Some(v) = table.remove(name) {
            table.insert(moved.into(), v);
        }
    }
    let added = msg.headers.iter().filter(|(k, _)| ADDED_HEADERS.contains(&k.as_str()));
    table.extend(added.map(|(k, v)| (k.clone(), field_value(v))));
    if let Some(exp) = props.expiration() {
        table.insert(ORIGINAL_EXPIRATION.into(), AmqpValue::LongString(exp.clone()));
    }
    if let Some(user) = props.user_id() {
        table.insert("x-mqdemo-original-user-id".into(), AmqpValue::LongString(user.clone()));
    }
    let mut out = AmqpProperties::default();
    // Every property but the ones replaced or moved, as received.
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
    if let Some(v) = props.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out.with_delivery_mode(2).with_message_id(msg.message_id.clone()).with_headers(table)
}

/// The header a kept copy's original `expiration` moves to.
pub(super) const ORIGINAL_EXPIRATION: &str = "x-mqdemo-original-expiration";

fn field_value(v: &HeaderValue) -> AmqpValue {
    match v {
        HeaderValue::Int(i) => AmqpValue::LongLongInt(*i),
        HeaderValue::Str(s) => AmqpValue::LongString(s.clone()),
    }
}

fn to_field_table(headers: &Headers) -> FieldTable {
    headers.iter().map(|(k, v)| (k.clone(), field_value(v))).collect()
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

/// Encoded bytes of a field value, its type octet included (AMQP 0-9-1 as RabbitMQ
/// encodes it).
fn value_bytes(v: &AmqpValue) -> usize {
    1 + match v {
        AmqpValue::Boolean(_) | AmqpValue::ShortShortInt(_) | AmqpValue::ShortShortUInt(_) => 1,
        AmqpValue::ShortInt(_) | AmqpValue::ShortUInt(_) => 2,
        AmqpValue::LongInt(_) | AmqpValue::LongUInt(_) | AmqpValue::Float(_) => 4,
        AmqpValue::LongLongInt(_) | AmqpValue::Double(_) | AmqpValue::Timestamp(_) => 8,
        AmqpValue::DecimalValue(_) => 5,
        AmqpValue::LongString(s) => 4 + s.len(),
        AmqpValue::ByteArray(b) => 4 + b.len(),
        AmqpValue::FieldArray(a) => 4 + a.iter().map(value_bytes).sum::<usize>(),
        AmqpValue::FieldTable(t) => table_bytes(t),
        AmqpValue::Void => 0,
    }
}

/// Encoded bytes of a field table.
fn table_bytes(t: &FieldTable) -> usize {
    4 + t.iter().map(|(k, v)| 1 + k.len() + value_bytes(v)).sum::<usize>()
}

/// Encoded bytes of a property set (flags, every property present, the header table).
pub(super) fn properties_bytes(p: &AmqpProperties) -> usize {
    let short = |s: &Option<String>| s.as_ref().map_or(0, |s| 1 + s.len());
    2 + short(p.content_type())
        + short(p.content_encoding())
        + p.headers().as_ref().map_or(0, table_bytes)
        + p.delivery_mode().map_or(0, |_| 1)
        + p.priority().map_or(0, |_| 1)
        + short(p.correlation_id())
        + short(p.reply_to())
        + short(p.expiration())
        + short(p.message_id())
        + p.timestamp().map_or(0, |_| 8)
        + short(p.type_())
        + short(p.user_id())
        + short(p.app_id())
        + short(p.cluster_id())
}

/// A received amiquip delivery as the codec's [`Delivery`] (the body and the properties are
/// moved out; the properties are kept whole in [`Delivery::original`]).
pub(super) fn delivery(d: &mut amiquip::Delivery) -> Delivery {
    let props = std::mem::take(&mut d.properties);
    let (header_bytes, header_count) =
        props.headers().as_ref().map_or((0, 0), |h| (table_bytes(h), h.len()));
    let property_bytes = properties_bytes(&props);
    let delivery = Delivery {
        body: std::mem::take(&mut d.body),
        content_type: props.content_type().clone(),
        message_id: props.message_id().clone(),
        kind: props.type_().clone(),
        headers: from_field_table(props.headers().as_ref()),
        redelivered: d.redelivered,
        correlation_id: props.correlation_id().clone(),
        reply_to: props.reply_to().clone(),
        exchange: std::mem::take(&mut d.exchange),
        routing_key: std::mem::take(&mut d.routing_key),
        original: Original::default(),
    };
    let original = Original::new(props, property_bytes, header_bytes, header_count);
    Delivery { original, ..delivery }
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

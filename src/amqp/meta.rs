//! A delivery's properties and headers, every AMQP field type included, as the envelope's
//! plain types ([`crate::codec::envelope::Meta`]).

use crate::codec::envelope::{Field, Meta, Properties};
use crate::codec::{Delivery, HeaderValue};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};

/// Nesting (tables in arrays in tables...) followed this deep; deeper values are written as
/// a string saying so, so that a hostile header cannot exhaust a worker's stack.
const MAX_DEPTH: usize = 64;

/// Everything about `d` but its body: its properties and headers as they came (when the
/// AMQP layer kept them), where it was published, whether it was redelivered.
pub fn meta(d: &Delivery) -> Meta {
    let (properties, headers) = match d.original.properties::<AmqpProperties>() {
        Some(p) => (properties(p), p.headers().as_ref().map(|h| table(h, 0)).unwrap_or_default()),
        None => (from_delivery(d), plain_headers(d)),
    };
    Meta {
        properties,
        headers,
        exchange: d.exchange.clone(),
        routing_key: d.routing_key.clone(),
        redelivered: d.redelivered,
    }
}

fn properties(p: &AmqpProperties) -> Properties {
    Properties {
        message_id: p.message_id().clone(),
        content_type: p.content_type().clone(),
        content_encoding: p.content_encoding().clone(),
        kind: p.type_().clone(),
        app_id: p.app_id().clone(),
        timestamp: *p.timestamp(),
        correlation_id: p.correlation_id().clone(),
        reply_to: p.reply_to().clone(),
        priority: *p.priority(),
        delivery_mode: *p.delivery_mode(),
        expiration: p.expiration().clone(),
        user_id: p.user_id().clone(),
        cluster_id: p.cluster_id().clone(),
    }
}

/// What the codec's delivery carries, for one made without the broker's properties.
fn from_delivery(d: &Delivery) -> Properties {
    Properties {
        message_id: d.message_id.clone(),
        content_type: d.content_type.clone(),
        kind: d.kind.clone(),
        correlation_id: d.correlation_id.clone(),
        reply_to: d.reply_to.clone(),
        ..Properties::default()
    }
}

fn plain_headers(d: &Delivery) -> Vec<(String, Field)> {
    let field = |v: &HeaderValue| match v {
        HeaderValue::Int(i) => Field::Int(*i),
        HeaderValue::Str(s) => Field::Str(s.clone()),
    };
    d.headers.iter().map(|(k, v)| (k.clone(), field(v))).collect()
}

fn table(t: &FieldTable, depth: usize) -> Vec<(String, Field)> {
    t.iter().map(|(k, v)| (k.clone(), field(v, depth))).collect()
}

fn field(v: &AmqpValue, depth: usize) -> Field {
    if depth >= MAX_DEPTH && matches!(v, AmqpValue::FieldArray(_) | AmqpValue::FieldTable(_)) {
        return Field::Str(format!("[nested deeper than {MAX_DEPTH} levels]"));
    }
    match v {
        AmqpValue::Boolean(b) => Field::Bool(*b),
        AmqpValue::ShortShortInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::ShortShortUInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::ShortInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::ShortUInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::LongInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::LongUInt(i) => Field::Int(i64::from(*i)),
        AmqpValue::LongLongInt(i) => Field::Int(*i),
        AmqpValue::Float(x) => Field::Float(*x),
        AmqpValue::Double(x) => Field::Double(*x),
        AmqpValue::DecimalValue(d) => decimal(d.scale, d.value),
        AmqpValue::LongString(s) => Field::Str(s.clone()),
        AmqpValue::ByteArray(b) => Field::Bytes(b.clone()),
        AmqpValue::Timestamp(t) => Field::Timestamp(*t),
        AmqpValue::FieldArray(a) => Field::Array(a.iter().map(|v| field(v, depth + 1)).collect()),
        AmqpValue::FieldTable(t) => Field::Table(table(t, depth + 1)),
        AmqpValue::Void => Field::Void,
    }
}

/// A decimal: RabbitMQ (and pika) encode its value as a signed 32-bit integer, which amiquip
/// reads unsigned.
fn decimal(scale: u8, value: u32) -> Field {
    Field::Decimal { scale, value: i32::from_be_bytes(value.to_be_bytes()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Original;

    #[test]
    fn every_amqp_type_is_kept() {
        let mut h = FieldTable::new();
        h.insert("u".into(), AmqpValue::LongUInt(u32::MAX));
        h.insert("x".into(), AmqpValue::ByteArray(vec![1, 2]));
        let props = AmqpProperties::default().with_headers(h).with_priority(3);
        let d = Delivery {
            exchange: "ex".into(),
            original: Original::new(props, 0, 0, 0),
            ..Delivery::default()
        };
        let m = meta(&d);
        assert_eq!(m.properties.priority, Some(3));
        assert_eq!(m.exchange, "ex");
        assert!(m.headers.contains(&("u".into(), Field::Int(i64::from(u32::MAX)))));
        assert!(m.headers.contains(&("x".into(), Field::Bytes(vec![1, 2]))));
        assert_eq!(decimal(2, u32::MAX), Field::Decimal { scale: 2, value: -1 });
    }

    #[test]
    fn deep_nesting_is_cut() {
        let mut v = AmqpValue::Void;
        for _ in 0..(MAX_DEPTH * 3) {
            v = AmqpValue::FieldArray(vec![v]);
        }
        let mut f = &field(&v, 0);
        let mut depth = 0;
        while let Field::Array(items) = f {
            f = &items[0];
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);
        assert!(matches!(f, Field::Str(s) if s.contains("deeper")));
    }
}

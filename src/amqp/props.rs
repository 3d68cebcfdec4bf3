//! Message properties and header field tables <-> the codec's plain types.

use crate::codec::{Delivery, HeaderValue, Headers, Message};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::time::{SystemTime, UNIX_EPOCH};

/// The AMQP properties mqdemo publishes a message with (wire format 1).
pub fn properties(msg: &Message) -> AmqpProperties {
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

/// A received amiquip delivery as the codec's [`Delivery`] (the body is moved out).
pub(super) fn delivery(d: &mut amiquip::Delivery) -> Delivery {
    let props = &d.properties;
    Delivery {
        body: std::mem::take(&mut d.body),
        content_type: props.content_type().clone(),
        message_id: props.message_id().clone(),
        kind: props.type_().clone(),
        headers: from_field_table(props.headers().as_ref()),
        redelivered: d.redelivered,
        correlation_id: props.correlation_id().clone(),
        reply_to: props.reply_to().clone(),
    }
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

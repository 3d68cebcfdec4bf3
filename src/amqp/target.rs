//! Where a producer's messages go and what the user adds to each (`produce --exchange`,
//! `--routing-key`, `--header`, `--property`), laid over wire format 1's properties.
//!
//! The wire format owns `message_id` (dedupe), `delivery_mode` (persistent: nothing
//! confirmed is lost), `content_type` and the headers the codecs write; `config::publish`
//! refuses those before anything connects, so here the user's values are simply applied.

use super::endpoint::Endpoint;
use super::error::{explain, fatal};
use super::props::{properties, properties_bytes};
use super::topology::exchange_error;
use crate::codec::{MAX_PROPERTY_BYTES, Message};
use amiquip::{AmqpProperties, AmqpValue};
use color_eyre::eyre::Report;

/// A header value given on the command line, with its AMQP field-table type.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderField {
    /// Signed 64-bit integer (`l`).
    Int(i64),
    /// Boolean (`t`).
    Bool(bool),
    /// 64-bit float (`d`).
    Float(f64),
    /// UTF-8 long string (`S`).
    Str(String),
}

impl HeaderField {
    fn amqp(&self) -> AmqpValue {
        match self {
            HeaderField::Int(i) => AmqpValue::LongLongInt(*i),
            HeaderField::Bool(b) => AmqpValue::Boolean(*b),
            HeaderField::Float(f) => AmqpValue::Double(*f),
            HeaderField::Str(s) => AmqpValue::LongString(s.clone()),
        }
    }
}

/// The AMQP properties a user may set on every message (`--property NAME=VALUE`); None
/// leaves mqdemo's own value (or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyOverrides {
    /// `priority` (0-255; RabbitMQ honours it on queues declared with `x-max-priority`).
    pub priority: Option<u8>,
    /// `expiration`: a per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `type` (mqdemo's default: the data kind).
    pub type_: Option<String>,
    /// `app_id` (mqdemo's default: `mqdemo`).
    pub app_id: Option<String>,
    /// `user_id` (RabbitMQ accepts only the connecting user's name).
    pub user_id: Option<String>,
    /// `timestamp`, seconds since the Unix epoch (mqdemo's default: the time of publishing).
    pub timestamp: Option<u64>,
}

/// Where messages go and what is added to each. The default is mqdemo's own: the default
/// exchange, routed by the name of the producer's first queue, nothing added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    /// The exchange the user named (`Some("")`: the default exchange, named explicitly);
    /// None: the default exchange, to the producer's own queue.
    pub exchange: Option<String>,
    /// Routing key of messages that carry none of their own; None: the first queue's name.
    pub routing_key: Option<String>,
    /// Headers added to every message, in the order given (names are unique).
    pub headers: Vec<(String, HeaderField)>,
    /// Properties set on every message.
    pub properties: PropertyOverrides,
}

impl Target {
    /// The exchange's name ("" for the default exchange).
    pub fn exchange_name(&self) -> &str {
        self.exchange.as_deref().unwrap_or("")
    }

    /// Nothing is added to mqdemo's own properties.
    fn adds_nothing(&self) -> bool {
        self.headers.is_empty() && self.properties == PropertyOverrides::default()
    }

    /// `props` with the user's properties set and headers added (a header the message
    /// already has keeps its value: the codec's headers are the wire format).
    pub(super) fn apply(&self, props: AmqpProperties) -> AmqpProperties {
        if self.adds_nothing() {
            return props;
        }
        let mut table = props.headers().clone().unwrap_or_default();
        for (name, value) in &self.headers {
            table.entry(name.clone()).or_insert_with(|| value.amqp());
        }
        let p = &self.properties;
        let mut props = props.with_headers(table);
        if let Some(v) = p.priority {
            props = props.with_priority(v);
        }
        if let Some(v) = &p.expiration {
            props = props.with_expiration(v.clone());
        }
        if let Some(v) = &p.correlation_id {
            props = props.with_correlation_id(v.clone());
        }
        if let Some(v) = &p.reply_to {
            props = props.with_reply_to(v.clone());
        }
        if let Some(v) = &p.type_ {
            props = props.with_type_(v.clone());
        }
        if let Some(v) = &p.app_id {
            props = props.with_app_id(v.clone());
        }
        if let Some(v) = &p.user_id {
            props = props.with_user_id(v.clone());
        }
        if let Some(v) = p.timestamp {
            props = props.with_timestamp(v);
        }
        props
    }

    /// The properties `msg` is published with.
    pub(super) fn properties(&self, msg: &Message) -> AmqpProperties {
        self.apply(properties(msg))
    }

    /// The encoded size of `msg`'s properties with the user's additions, when over
    /// [`MAX_PROPERTY_BYTES`] (the broker would close the connection over it).
    pub(super) fn oversized(&self, msg: &Message) -> Option<usize> {
        if self.adds_nothing() {
            return None;
        }
        let n = properties_bytes(&self.properties(msg)) + FRAME_FIELDS;
        (n > MAX_PROPERTY_BYTES).then_some(n)
    }

    /// Bytes the user's headers and properties take in a message's content header, alone.
    pub fn added_bytes(&self) -> usize {
        properties_bytes(&self.apply(AmqpProperties::default()))
    }

    /// The error that stops a run whose messages the target routes to no queue (312
    /// NO_ROUTE) with routing key `key`; `label` names the first of them.
    pub(super) fn routes_nowhere(&self, key: &str, label: &str) -> Report {
        fatal(match self.exchange_name() {
            "" => format!(
                "no queue named '{key}' for the default exchange to route to ({label} came back \
                 312 NO_ROUTE); create the queue, or give --queue {key} for mqdemo to declare it"
            ),
            exchange => format!(
                "exchange '{exchange}' routes routing key '{key}' to no queue ({label} came back \
                 312 NO_ROUTE); bind a queue to '{exchange}' for that key (mqdemo creates no \
                 bindings), or check --exchange and --routing-key"
            ),
        })
    }

    /// Why the broker closed a channel publishing to this target, in the terms of what the
    /// user gave (`--property user_id`, `--exchange`).
    pub(super) fn closed(&self, e: amiquip::Error, ep: &Endpoint) -> Report {
        if let amiquip::Error::ServerClosedChannel { code: 406, message, .. } = &e
            && let Some(user) = &self.properties.user_id
            && message.contains("user_id")
        {
            return fatal(format!(
                "--property user_id={user}: RabbitMQ accepts only the name of the user \
                         mqdemo logs in as ({}); drop it, or log in as {user} in --url",
                ep.scrub(message)
            ));
        }
        match self.exchange_name() {
            "" => explain(e, ep, "publishing"),
            exchange => exchange_error(e, exchange, ep),
        }
    }
}

/// A content header frame's own fields around the properties (frame header and end, class,
/// weight, body size).
const FRAME_FIELDS: usize = 22;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{HeaderValue, Kind, Original, Route};

    fn message() -> Message {
        let mut headers = crate::codec::Headers::new();
        headers.insert("source".into(), HeaderValue::Str("a.csv".into()));
        Message {
            kind: Kind::Tabular,
            content_type: "application/json".into(),
            message_id: "m1".into(),
            headers,
            body: b"{}".to_vec(),
            label: "a.csv:1".into(),
            route: Route::default(),
            original: Original::default(),
            ticket: 0,
        }
    }

    #[test]
    fn the_default_target_changes_nothing() {
        let msg = message();
        // The timestamp is the time of publishing: set both to one value.
        let at = |p: AmqpProperties| p.with_timestamp(0);
        assert_eq!(at(Target::default().properties(&msg)), at(properties(&msg)));
        assert_eq!(Target::default().oversized(&msg), None);
    }

    #[test]
    fn user_values_are_added_and_the_wire_format_kept() {
        let target = Target {
            headers: vec![
                ("model".into(), HeaderField::Str("v2".into())),
                ("n".into(), HeaderField::Int(7)),
                ("ok".into(), HeaderField::Bool(true)),
                ("w".into(), HeaderField::Float(0.5)),
                ("source".into(), HeaderField::Str("not the codec's".into())),
            ],
            properties: PropertyOverrides {
                priority: Some(9),
                expiration: Some("60000".into()),
                type_: Some("order.created".into()),
                timestamp: Some(1_700_000_000),
                ..PropertyOverrides::default()
            },
            ..Target::default()
        };
        let p = target.properties(&message());
        let h = p.headers().clone().unwrap_or_default();
        assert_eq!(h.get("model"), Some(&AmqpValue::LongString("v2".into())));
        assert_eq!(h.get("n"), Some(&AmqpValue::LongLongInt(7)));
        assert_eq!(h.get("ok"), Some(&AmqpValue::Boolean(true)));
        assert_eq!(h.get("w"), Some(&AmqpValue::Double(0.5)));
        assert_eq!(h.get("source"), Some(&AmqpValue::LongString("a.csv".into())));
        assert_eq!(p.priority(), &Some(9));
        assert_eq!(p.expiration().as_deref(), Some("60000"));
        assert_eq!(p.type_().as_deref(), Some("order.created"));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(p.message_id().as_deref(), Some("m1"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.app_id().as_deref(), Some("mqdemo"));
    }

    #[test]
    fn headers_past_a_frame_are_told() {
        let big = |n: usize| Target {
            headers: vec![("big".into(), HeaderField::Str("x".repeat(n)))],
            ..Target::default()
        };
        assert_eq!(big(1000).oversized(&message()), None);
        assert!(big(MAX_PROPERTY_BYTES).oversized(&message()).is_some());
        assert!(big(1000).added_bytes() > 1000);
    }
}

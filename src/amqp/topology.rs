//! Queue declaration: durable, with no arguments unless options ask for them.

use super::endpoint::Endpoint;
use super::error::{explain, fatal, lost};
use amiquip::{
    AmqpValue, Channel, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions,
};
use color_eyre::eyre::{Report, Result};

/// Exchange that dead-lettered messages go through (direct, durable).
pub(super) const DEAD_LETTER_EXCHANGE: &str = "mqdemo.dead-letter";

/// Queue type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queue.
    Classic,
    /// Replicated quorum queue.
    Quorum,
    /// Append-only stream: read from an offset, kept after it is read.
    Stream,
}

/// What a queue should look like. With every option unset the queue is declared durable with
/// no arguments, so a queue made by pika's `queue_declare(durable=True)` is accepted as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// `x-queue-type`, when asked for.
    pub queue_type: Option<QueueType>,
    /// Dead-letter queue: rejected messages go there.
    pub dead_letter_queue: Option<String>,
    /// `x-max-length`, with `x-overflow: reject-publish` (publishers get nacks when full).
    pub max_length: Option<u64>,
    /// `x-delivery-limit` for quorum queues: a message redelivered this often is
    /// dead-lettered (or dropped) instead of looping forever.
    pub delivery_limit: Option<u64>,
    /// `x-max-age` of a stream (`7D`, `12h`: the broker's own units, checked by config).
    pub max_age: Option<String>,
    /// `x-max-length-bytes` of a stream: the oldest segments go beyond this size.
    pub max_length_bytes: Option<u64>,
}

impl QueueSpec {
    /// A durable queue with no arguments.
    pub fn plain(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_string(),
            queue_type: None,
            dead_letter_queue: None,
            max_length: None,
            delivery_limit: None,
            max_age: None,
            max_length_bytes: None,
        }
    }

    /// Whether the queue is a stream (read from offsets, never nacked).
    pub fn is_stream(&self) -> bool {
        self.queue_type == Some(QueueType::Stream)
    }

    /// The `x-` arguments these options ask for.
    pub fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::new();
        let mut put = |k: &str, v: AmqpValue| {
            args.insert(k.to_string(), v);
        };
        match self.queue_type {
            Some(QueueType::Quorum) => put("x-queue-type", AmqpValue::LongString("quorum".into())),
            Some(QueueType::Classic) => {
                put("x-queue-type", AmqpValue::LongString("classic".into()))
            }
            Some(QueueType::Stream) => put("x-queue-type", AmqpValue::LongString("stream".into())),
            None => {}
        }
        if let Some(dlq) = &self.dead_letter_queue {
            put("x-dead-letter-exchange", AmqpValue::LongString(DEAD_LETTER_EXCHANGE.into()));
            put("x-dead-letter-routing-key", AmqpValue::LongString(dlq.clone()));
        }
        if let Some(n) = self.max_length {
            put("x-max-length", AmqpValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)));
            put("x-overflow", AmqpValue::LongString("reject-publish".into()));
        }
        if let Some(age) = &self.max_age {
            put("x-max-age", AmqpValue::LongString(age.clone()));
        }
        if let Some(n) = self.max_length_bytes {
            put("x-max-length-bytes", AmqpValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)));
        }
        if let (Some(QueueType::Quorum), Some(n)) = (self.queue_type, self.delivery_limit) {
            put("x-delivery-limit", AmqpValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)));
        }
        args
    }
}

/// Declare the queue (and its dead-letter exchange and queue), returning its ready count and
/// consumer count.
pub(super) fn declare(channel: &Channel, spec: &QueueSpec, ep: &Endpoint) -> Result<(u32, u32)> {
    if let Some(dlq) = &spec.dead_letter_queue {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(ExchangeType::Direct, DEAD_LETTER_EXCHANGE, durable)
            .map_err(|e| explain(e, ep, "declaring the dead-letter exchange"))?;
        let plain = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(dlq.clone(), plain).map_err(|e| declare_error(e, dlq, ep, false))?;
        channel
            .queue_bind(dlq.clone(), DEAD_LETTER_EXCHANGE, dlq.clone(), FieldTable::new())
            .map_err(|e| explain(e, ep, "binding the dead-letter queue"))?;
    }
    let options = QueueDeclareOptions {
        durable: true,
        arguments: spec.arguments(),
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(spec.name.clone(), options)
        .map_err(|e| declare_error(e, &spec.name, ep, spec.is_stream()))?;
    Ok((q.declared_message_count().unwrap_or(0), q.declared_consumer_count().unwrap_or(0)))
}

fn declare_error(e: amiquip::Error, queue: &str, ep: &Endpoint, stream: bool) -> Report {
    match e {
        amiquip::Error::ServerClosedChannel { code: 406, message, .. } => fatal(format!(
            "queue '{queue}' already exists with other settings ({message}); match them with \
             --queue-type / --dead-letter-queue / --max-length / --max-age / \
             --max-length-bytes, use another --queue, or delete \
             it with `rabbitmqctl delete_queue {queue}` if it is yours"
        )),
        amiquip::Error::ServerClosedChannel { code: 403, message, .. } => fatal(format!(
            "not allowed to declare queue '{queue}' ({message}); check the user's permissions \
             on the vhost in --url"
        )),
        // A declare creates a missing queue, so a 404 means it exists on a node that is down
        // or stopping (a classic queue on a cluster). Retryable: the node may come back.
        amiquip::Error::ServerClosedChannel { code: 404, message, .. } => {
            lost(unavailable(queue, &message, stream))
        }
        other => explain(other, ep, "declaring the queue"),
    }
}

/// Check that the exchange `name` exists (a passive declare), before anything is published
/// to it: publishing to a missing exchange closes the channel only after the publish.
pub(super) fn check_exchange(channel: &Channel, name: &str, ep: &Endpoint) -> Result<()> {
    channel.exchange_declare_passive(name).map(drop).map_err(|e| exchange_error(e, name, ep))
}

/// What to say when the broker closed a channel that publishes to exchange `name`: a missing
/// exchange (404 "no exchange") or no permission to it are the user's to fix.
pub(super) fn exchange_error(e: amiquip::Error, name: &str, ep: &Endpoint) -> Report {
    match e {
        amiquip::Error::ServerClosedChannel { code: 404, message, .. }
            if message.contains("no exchange") =>
        {
            fatal(format!(
                "exchange '{name}' does not exist ({}); check --exchange, or declare it first \
                 (your application, the management UI, or `rabbitmqadmin declare exchange \
                 name={name} type=topic durable=true`): mqdemo does not create exchanges",
                ep.scrub(&message)
            ))
        }
        amiquip::Error::ServerClosedChannel { code: 403, message, .. } => fatal(format!(
            "not allowed to publish to exchange '{name}' ({}); an internal exchange takes \
             messages only from other exchanges, else check the user's write permission on \
             the vhost in --url",
            ep.scrub(&message)
        )),
        other => explain(other, ep, &format!("publishing to exchange '{name}'")),
    }
}

/// Whether the 404 of a passive declare means there is no such queue (rather than that it
/// exists on a node that is down: "home node ... is down or inaccessible", or stopping:
/// "process is stopped by supervisor").
pub(super) fn no_such_queue(message: &str) -> bool {
    message.contains("no queue")
}

/// What to say when the queue's node is down.
pub(super) fn unavailable(queue: &str, message: &str, stream: bool) -> String {
    if stream {
        return format!(
            "stream '{queue}' is unavailable ({message}): its node is down or its leader is \
             not elected yet after a restart; it comes back once a majority of its replicas \
             run (on one node: once that node's stream has recovered)"
        );
    }
    format!(
        "queue '{queue}' is unavailable ({message}): a classic queue lives on one node and is \
         unavailable while that node is down; on a cluster use --queue-type quorum (replicated)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_queue_has_no_arguments() {
        assert!(QueueSpec::plain("q").arguments().is_empty());
    }

    #[test]
    fn options_become_x_arguments() {
        let spec = QueueSpec {
            queue_type: Some(QueueType::Quorum),
            dead_letter_queue: Some("dlq".into()),
            max_length: Some(10),
            delivery_limit: Some(5),
            ..QueueSpec::plain("q")
        };
        let args = spec.arguments();
        assert_eq!(args.get("x-queue-type"), Some(&AmqpValue::LongString("quorum".into())));
        assert_eq!(
            args.get("x-dead-letter-routing-key"),
            Some(&AmqpValue::LongString("dlq".into()))
        );
        assert_eq!(args.get("x-overflow"), Some(&AmqpValue::LongString("reject-publish".into())));
        assert_eq!(args.get("x-max-length"), Some(&AmqpValue::LongLongInt(10)));
        assert_eq!(args.get("x-delivery-limit"), Some(&AmqpValue::LongLongInt(5)));
    }

    #[test]
    fn a_stream_that_is_down_is_not_explained_as_a_classic_queue() {
        let stream = unavailable("s", "home node down", true);
        assert!(stream.starts_with("stream 's' is unavailable"), "{stream}");
        assert!(!stream.contains("classic") && !stream.contains("quorum"), "{stream}");
        let classic = unavailable("q", "home node down", false);
        assert!(classic.contains("--queue-type quorum"), "{classic}");
    }

    #[test]
    fn a_stream_gets_its_type_and_retention() {
        let spec = QueueSpec {
            queue_type: Some(QueueType::Stream),
            max_age: Some("7D".into()),
            max_length_bytes: Some(1_000_000),
            delivery_limit: Some(20),
            ..QueueSpec::plain("s")
        };
        let args = spec.arguments();
        assert_eq!(args.get("x-queue-type"), Some(&AmqpValue::LongString("stream".into())));
        assert_eq!(args.get("x-max-age"), Some(&AmqpValue::LongString("7D".into())));
        assert_eq!(args.get("x-max-length-bytes"), Some(&AmqpValue::LongLongInt(1_000_000)));
        assert_eq!(args.get("x-delivery-limit"), None, "quorum only");
        assert!(spec.is_stream());
    }
}

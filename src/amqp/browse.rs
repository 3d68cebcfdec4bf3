//! Reading a queue without consuming it for good: messages are taken one at a time with
//! `basic.get` and held unacknowledged, each then either acked (taken for good) or, at the
//! end, all released back to the queue at once (nack with requeue).
//!
//! Holding every message taken until the end is what keeps the reading finite and free of
//! repeats: a released message goes back to the head of the queue, so releasing as we went
//! would hand the same message out again. What is held costs the broker a little memory per
//! message and us none (bodies are handed over, only the delivery tag is kept), so the
//! caller bounds how many it takes.

use super::endpoint::Endpoint;
use super::error::{explain, fatal, lost};
use super::props::delivery;
use super::session::{QueueInfo, Session};
use super::topology::{no_such_queue, unavailable};
use crate::codec::Delivery;
use amiquip::{AmqpProperties, AmqpValue, Channel, FieldTable};
use color_eyre::eyre::Result;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// A queue being read message by message (see the module doc).
pub struct Browser {
    session: Session,
    channel: Channel,
    queue: String,
    /// Headers removed from every message taken (the requeued copy is published without
    /// them).
    leave_off: &'static [&'static str],
    /// A message came with `x-delivery-count`: a quorum queue (see [`Browser::release`]).
    counts_deliveries: bool,
    /// Ready messages when the browser opened.
    depth_at_open: u32,
    /// Messages acked (taken for good) since.
    acked: u32,
}

/// The longest [`Browser::release`] waits for a quorum queue to have its messages back.
const QUORUM_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// The header a quorum queue adds to every delivery: how often it was delivered before.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// One message taken from the queue, held until [`Browser::ack`] or [`Browser::release`].
pub struct Browsed {
    /// The message, without the headers the browser leaves off (its properties kept whole
    /// in [`Delivery::original`], so a copy can be published as it came).
    pub delivery: Delivery,
    /// Every property present, as JSON, under its AMQP name (`message_id`, `timestamp`...).
    pub properties: Map<String, Value>,
    /// Every header as it came (any AMQP type), as JSON.
    pub headers: Map<String, Value>,
    /// The exchange it was last published to ("" for the default exchange).
    pub exchange: String,
    /// The routing key it was last published with.
    pub routing_key: String,
    /// Whether the broker has handed it out before.
    pub redelivered: bool,
    /// What acks it.
    pub mark: Mark,
}

/// The delivery tag of a held message (what [`Browser::ack`] takes).
pub struct Mark(amiquip::Delivery);

impl Browser {
    /// Connect to the first endpoint that answers and look `queue` up without creating it
    /// (a passive declare): None when there is no such queue.
    pub fn open(
        endpoints: &[Endpoint],
        queue: &str,
        leave_off: &'static [&'static str],
    ) -> Result<Option<(Browser, QueueInfo)>> {
        let (mut session, _) = Session::open_first(endpoints)?;
        let Some(info) = look_up(&mut session, queue)? else {
            let _ = session.close();
            return Ok(None);
        };
        let channel = session.channel()?;
        let browser = Browser {
            session,
            channel,
            queue: queue.to_string(),
            leave_off,
            counts_deliveries: false,
            depth_at_open: info.messages,
            acked: 0,
        };
        Ok(Some((browser, info)))
    }

    /// Look another queue up without creating it: None when there is no such queue.
    pub fn look_up(&mut self, queue: &str) -> Result<Option<QueueInfo>> {
        look_up(&mut self.session, queue)
    }

    /// Take the next message (held, unacked), or None when the queue has no more ready.
    pub fn get(&mut self) -> Result<Option<Browsed>> {
        let ep = self.session.endpoint();
        let got = self.channel.basic_get(self.queue.clone(), false).map_err(|e| match e {
            amiquip::Error::ServerClosedConnection { code: 540, message } => fatal(format!(
                "queue '{}' cannot be read one message at a time ({message}): a stream is \
                 read by consuming it from an offset; failed queues are classic or quorum \
                 queues",
                self.queue
            )),
            e => explain(e, ep, &format!("reading queue '{}'", self.queue)),
        })?;
        let Some(got) = got else { return Ok(None) };
        let mut d = got.delivery;
        let properties = properties_json(&d.properties);
        let headers = d.properties.headers().as_ref().map_or_else(Map::new, table_json);
        self.counts_deliveries |= headers.contains_key(DELIVERY_COUNT);
        if let Some(mut table) = d.properties.headers().clone() {
            let before = table.len();
            table.retain(|k, _| !self.leave_off.contains(&k.as_str()));
            if table.len() != before {
                d.properties = std::mem::take(&mut d.properties).with_headers(table);
            }
        }
        let delivery = delivery(&mut d);
        Ok(Some(Browsed {
            delivery,
            properties,
            headers,
            exchange: std::mem::take(&mut d.exchange),
            routing_key: std::mem::take(&mut d.routing_key),
            redelivered: d.redelivered,
            mark: Mark(d),
        }))
    }

    /// Take a held message for good.
    pub fn ack(&mut self, mark: Mark) -> Result<()> {
        let ep = self.session.endpoint();
        mark.0.ack(&self.channel).map_err(|e| explain(e, ep, "acknowledging a message"))?;
        self.acked = self.acked.saturating_add(1);
        Ok(())
    }

    /// Put every message still held back into the queue, where it was, and disconnect.
    ///
    /// A classic queue: by closing the channel. The queue then takes back everything the
    /// channel held in one go, in place, before the close is answered (10,000 messages in
    /// about 10 ms here), where a nack (`basic.nack` with requeue) costs time that grows
    /// with the square of the count (10,000: 4 s, 20,000: 18 s, all of it spent inside the
    /// queue, which serves nobody meanwhile).
    ///
    /// A quorum queue (its deliveries carry [`DELIVERY_COUNT`]) puts back what a closed
    /// channel held in no particular order, so there they are nacked first (which keeps
    /// their order); it takes them back asynchronously, so its depth is then watched until
    /// it is as deep as at the start, less what was acked (for a few seconds at most: other
    /// consumers may have taken some), so that a `requeue` run at once after a `show` sees
    /// them all.
    pub fn release(self) -> Result<()> {
        let Browser {
            mut session, channel, queue, counts_deliveries, depth_at_open, acked, ..
        } = self;
        let ep = session.endpoint().clone();
        // A quorum queue takes back what a closed channel held in no particular order, and
        // what is nacked in the order nacked.
        let nacked = if counts_deliveries { channel.nack_all(true) } else { Ok(()) };
        let closed = nacked
            .and_then(|()| channel.close())
            .map_err(|e| explain(e, &ep, "releasing the messages"));
        let want = depth_at_open.saturating_sub(acked);
        let settled = match (&closed, counts_deliveries) {
            (Ok(()), true) => wait_for_depth(&mut session, &queue, want),
            _ => Ok(()),
        };
        let _ = session.close();
        closed.and(settled)
    }
}

/// Until `queue` holds `want` messages, or for [`QUORUM_RELEASE_WAIT`].
fn wait_for_depth(session: &mut Session, queue: &str, want: u32) -> Result<()> {
    let deadline = Instant::now() + QUORUM_RELEASE_WAIT;
    loop {
        let ready = look_up(session, queue)?.map_or(0, |q| q.messages);
        if ready >= want || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A passive declare on a channel of its own (a missing queue closes the channel).
fn look_up(session: &mut Session, queue: &str) -> Result<Option<QueueInfo>> {
    let channel = session.channel()?;
    let ep = session.endpoint();
    match channel.queue_declare_passive(queue) {
        Ok(q) => {
            let info = QueueInfo {
                messages: q.declared_message_count().unwrap_or(0),
                consumers: q.declared_consumer_count().unwrap_or(0),
            };
            let _ = channel.close();
            Ok(Some(info))
        }
        Err(amiquip::Error::ServerClosedChannel { code: 404, message, .. }) => {
            if no_such_queue(&message) {
                Ok(None)
            } else {
                Err(lost(unavailable(queue, &message, false)))
            }
        }
        Err(e) => Err(explain(e, ep, &format!("looking up queue '{queue}'"))),
    }
}

/// The properties present, as JSON under their AMQP names.
fn properties_json(p: &AmqpProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    };
    text("message_id", p.message_id());
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("type", p.type_());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    let mut number = |k: &str, v: Option<u64>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::from(v));
        }
    };
    number("timestamp", *p.timestamp());
    number("delivery_mode", p.delivery_mode().map(u64::from));
    number("priority", p.priority().map(u64::from));
    m
}

/// A field table as a JSON object.
fn table_json(t: &FieldTable) -> Map<String, Value> {
    t.iter().map(|(k, v)| (k.clone(), value_json(v))).collect()
}

/// An AMQP field value as JSON: numbers, strings, booleans, arrays and tables as they are;
/// a decimal as its text, bytes as lowercase hex, a float that JSON cannot hold as null.
fn value_json(v: &AmqpValue) -> Value {
    match v {
        AmqpValue::Boolean(b) => Value::Bool(*b),
        AmqpValue::ShortShortInt(i) => Value::from(*i),
        AmqpValue::ShortShortUInt(i) => Value::from(*i),
        AmqpValue::ShortInt(i) => Value::from(*i),
        AmqpValue::ShortUInt(i) => Value::from(*i),
        AmqpValue::LongInt(i) => Value::from(*i),
        AmqpValue::LongUInt(i) => Value::from(*i),
        AmqpValue::LongLongInt(i) => Value::from(*i),
        AmqpValue::Timestamp(t) => Value::from(*t),
        AmqpValue::Float(f) => Value::from(f64::from(*f)),
        AmqpValue::Double(f) => Value::from(*f),
        AmqpValue::DecimalValue(d) => Value::String(decimal_text(d.value, d.scale)),
        AmqpValue::LongString(s) => Value::String(s.clone()),
        AmqpValue::ByteArray(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        AmqpValue::FieldArray(a) => Value::Array(a.iter().map(value_json).collect()),
        AmqpValue::FieldTable(t) => Value::Object(table_json(t)),
        AmqpValue::Void => Value::Null,
    }
}

/// `value` scaled down by 10^`scale`, as decimal text (12345, 2 -> "123.45").
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, frac) = padded.split_at(padded.len() - scale);
    format!("{whole}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_type_becomes_json() {
        let mut inner = FieldTable::new();
        inner.insert("queue".into(), AmqpValue::LongString("q".into()));
        let mut t = FieldTable::new();
        t.insert("b".into(), AmqpValue::Boolean(true));
        t.insert("i".into(), AmqpValue::ShortShortInt(-3));
        t.insert("u".into(), AmqpValue::LongUInt(7));
        t.insert("f".into(), AmqpValue::Double(1.5));
        t.insert("nan".into(), AmqpValue::Float(f32::NAN));
        t.insert("bytes".into(), AmqpValue::ByteArray(vec![0, 255]));
        t.insert("x-death".into(), AmqpValue::FieldArray(vec![AmqpValue::FieldTable(inner)]));
        let json = Value::Object(table_json(&t));
        assert_eq!(
            json,
            serde_json::json!({"b": true, "i": -3, "u": 7, "f": 1.5, "nan": null,
                "bytes": "00ff", "x-death": [{"queue": "q"}]})
        );
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(decimal_text(12_345, 2), "123.45");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(7, 0), "7");
    }

    #[test]
    fn only_present_properties_are_listed() {
        let p = AmqpProperties::default().with_message_id("m1".into()).with_timestamp(9);
        assert_eq!(
            Value::Object(properties_json(&p)),
            serde_json::json!({"message_id": "m1", "timestamp": 9})
        );
    }
}

//! The only module that talks to RabbitMQ (and the only one that imports amiquip).
//!
//! It turns a URL into a connection with a deadline, declares queues, publishes with
//! publisher confirms over a bounded window, runs the consumer loop, and translates broker
//! errors into what the user should do. It knows nothing of CSV, images or files.

use crate::codec::{Delivery, HeaderValue, Headers, Message};
use amiquip::{
    AmqpProperties, AmqpValue, Channel, Confirm, ConfirmSmoother, Connection, ConsumerMessage,
    ConsumerOptions, FieldTable, Publish, QueueDeclareOptions, QueueDeleteOptions, Return,
};
use color_eyre::eyre::{Report, Result, eyre};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use url::Url;

/// Heartbeat asked for when the URL names none: a dead peer is noticed in ~2 heartbeats.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How to start a broker, for errors that mean "nothing answers".
pub const START_BROKER_HINT: &str = "start one with `docker compose up -d rabbitmq` or the \
     distribution's `rabbitmq-server -detached`, or point --url / AMQP_URL at yours";

/// A broker address: the URL amiquip gets and the masked one people see.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    masked: String,
    password: Option<String>,
    timeout: Duration,
}

/// The URL given is not usable (bad usage, exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

impl Endpoint {
    /// Parse `url`, replace its host with `host` when given, and add a connection timeout and
    /// heartbeat unless the URL sets them.
    pub fn parse(url: &str, host: Option<&str>, timeout: Duration) -> Result<Endpoint, BadUrl> {
        let mut parsed = Url::parse(url).map_err(|e| {
            BadUrl(format!(
                "--url {}: {e}; expected amqp://USER:PASS@HOST:PORT/VHOST",
                mask_text(url, None)
            ))
        })?;
        let password = parsed.password().map(str::to_string);
        let masked_input = mask_url(&parsed);
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(BadUrl(format!(
                "--url {masked_input}: scheme must be amqp:// or amqps://"
            )));
        }
        if let Some(host) = host {
            parsed.set_host(Some(host)).map_err(|e| {
                BadUrl(format!(
                    "--rabbitmq-server {host}: not a valid host name ({e})"
                ))
            })?;
        }
        let known = [
            "heartbeat",
            "channel_max",
            "connection_timeout",
            "auth_mechanism",
        ];
        let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if let Some(bad) = keys.iter().find(|k| !known.contains(&k.as_str())) {
            return Err(BadUrl(format!(
                "--url {masked_input}: query parameter `{bad}` is not supported; use heartbeat, \
                 channel_max, connection_timeout or auth_mechanism"
            )));
        }
        let mut timeout = timeout;
        {
            let mut q = parsed.query_pairs_mut();
            if !keys.iter().any(|k| k == "connection_timeout") {
                q.append_pair("connection_timeout", &timeout.as_millis().to_string());
            }
            if !keys.iter().any(|k| k == "heartbeat") {
                q.append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
            }
        }
        if let Some(ms) = parsed
            .query_pairs()
            .find(|(k, _)| k == "connection_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            timeout = Duration::from_millis(ms);
        }
        let masked = mask_url(&strip_query(&parsed));
        Ok(Endpoint {
            url: parsed.into(),
            masked,
            password,
            timeout,
        })
    }

    /// The URL with the password replaced by `****`, without the query.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    fn scrub(&self, text: &str) -> String {
        mask_text(text, self.password.as_deref())
    }
}

fn strip_query(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_query(None);
    u
}

fn mask_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    u.to_string()
}

/// Replace the password (raw or percent-encoded) and any `user:pass@` in free text.
fn mask_text(text: &str, password: Option<&str>) -> String {
    let mut out = text.to_string();
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out = out.replace(p, "****");
        let decoded = url::form_urlencoded::parse(format!("x={p}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned());
        if let Some(d) = decoded.filter(|d| !d.is_empty()) {
            out = out.replace(&d, "****");
        }
    }
    // Belt and braces for URLs we did not parse: amqp://user:secret@host -> amqp://user:****@host
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let end = tail.find(['/', ' ', '?', '\n', ')']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                result.push_str(&authority[..colon]);
                result.push_str(":****");
                result.push_str(&authority[at..]);
            }
            _ => result.push_str(authority),
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

/// An open connection to the broker.
pub struct Session {
    conn: Connection,
    endpoint: Endpoint,
}

/// What the broker said about a queue when it was declared.
#[derive(Debug, Clone, Copy)]
pub struct QueueInfo {
    /// Ready messages.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

impl Session {
    /// Connect, within the endpoint's timeout.
    pub fn open(endpoint: &Endpoint) -> Result<Session> {
        let conn = Connection::insecure_open(&endpoint.url)
            .map_err(|e| explain(e, endpoint, "connecting"))?;
        Ok(Session {
            conn,
            endpoint: endpoint.clone(),
        })
    }

    /// The endpoint this session is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Declare `queue` durable, with no extra arguments, so a queue made elsewhere with
    /// `durable=True` is accepted as it is.
    pub fn declare_queue(&mut self, queue: &str) -> Result<QueueInfo> {
        let channel = self.channel()?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let q = channel.queue_declare(queue, options).map_err(|e| match e {
            amiquip::Error::ServerClosedChannel {
                code: 406, message, ..
            } => eyre!(
                "queue '{queue}' already exists with other settings ({message}); use another \
                 --queue, or delete it with `rabbitmqctl delete_queue {queue}` if it is yours"
            ),
            amiquip::Error::ServerClosedChannel {
                code: 403, message, ..
            } => eyre!(
                "not allowed to declare queue '{queue}' ({message}); check the user's \
                 permissions on the vhost in --url"
            ),
            other => explain(other, &self.endpoint, "declaring the queue"),
        })?;
        let info = QueueInfo {
            messages: q.declared_message_count().unwrap_or(0),
            consumers: q.declared_consumer_count().unwrap_or(0),
        };
        let _ = channel.close();
        Ok(info)
    }

    /// Delete `queue` (used by `demo` and tests for their own queues).
    pub fn delete_queue(&mut self, queue: &str) -> Result<()> {
        let channel = self.channel()?;
        channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .map_err(|e| explain(e, &self.endpoint, "deleting the queue"))?;
        let _ = channel.close();
        Ok(())
    }

    /// A publisher on a new channel, with confirms enabled.
    pub fn publisher(&mut self, queue: &str, options: PublisherOptions) -> Result<Publisher> {
        let channel = self.channel()?;
        let ep = self.endpoint.clone();
        // Listen before enabling, or early confirms can be missed.
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| explain(e, &ep, "publishing"))?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| explain(e, &ep, "publishing"))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| explain(e, &ep, "publishing"))?;
        Ok(Publisher {
            channel,
            endpoint: ep,
            queue: queue.to_string(),
            confirms,
            returns,
            smoother: ConfirmSmoother::new(),
            next_tag: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
            options,
            returned: HashMap::new(),
            report: PublishReport::default(),
        })
    }

    /// Consume `queue` until a limit is reached, handing every delivery to `handler`, which
    /// must have durably stored it before the loop acks it.
    pub fn consume(
        &mut self,
        queue: &str,
        prefetch: u16,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<ConsumeOutcome> {
        let channel = self.channel()?;
        let ep = self.endpoint.clone();
        channel
            .qos(0, prefetch, false)
            .map_err(|e| explain(e, &ep, "setting QoS"))?;
        let consumer = channel
            .basic_consume(queue, ConsumerOptions::default())
            .map_err(|e| explain(e, &ep, "starting the consumer"))?;
        let mut state = ConsumeState {
            channel: &channel,
            endpoint: &ep,
            last: None,
            unacked: 0,
            ack_every: u64::from(prefetch / 2).max(1),
            outcome: ConsumeOutcome::default(),
        };
        let result = state.run(consumer.receiver(), limits, handler);
        let outcome = state.outcome;
        // amiquip answers basic.cancel to us BEFORE it tells the consumer's receiver; if that
        // receiver is gone by then, its I/O thread dies (EventLoopClientDropped). Keep a clone
        // alive until the channel close round trip proves the I/O thread is past it.
        let keep_alive = consumer.receiver().clone();
        let _ = consumer.cancel();
        drop(consumer);
        let closed = channel.close();
        drop(keep_alive);
        result?;
        closed.map_err(|e| explain(e, &ep, "closing the channel"))?;
        Ok(outcome)
    }

    /// Close the connection, reporting a failure to close (amiquip's Drop would hide it).
    pub fn close(self) -> Result<()> {
        let ep = self.endpoint;
        self.conn
            .close()
            .map_err(|e| explain(e, &ep, "closing the connection"))
    }

    fn channel(&mut self) -> Result<Channel> {
        self.conn
            .open_channel(None)
            .map_err(|e| explain(e, &self.endpoint, "opening a channel"))
    }
}

/// Publisher settings.
#[derive(Debug, Clone, Copy)]
pub struct PublisherOptions {
    /// Most messages published and not yet confirmed.
    pub window: usize,
    /// Most body bytes published and not yet confirmed (a window of large images).
    pub window_bytes: usize,
    /// How long to wait for a confirm before the connection counts as lost.
    pub confirm_timeout: Duration,
}

/// What became of the published messages.
#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    /// Messages the broker confirmed (acked and not returned).
    pub confirmed: u64,
    /// Body bytes of those messages.
    pub confirmed_bytes: u64,
    /// Messages the broker refused (nack) or returned as unroutable: (label, reason).
    pub refused: Vec<(String, String)>,
    /// Messages published but never confirmed (connection lost or confirm timeout).
    pub unconfirmed: Vec<String>,
}

/// Publishes persistent, mandatory messages to one queue with a bounded confirm window.
pub struct Publisher {
    channel: Channel,
    endpoint: Endpoint,
    queue: String,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    smoother: ConfirmSmoother,
    next_tag: u64,
    /// Published, not yet confirmed, in delivery-tag order: what a reconnect re-publishes.
    pending: VecDeque<(u64, Message)>,
    pending_bytes: usize,
    options: PublisherOptions,
    /// message_id -> reply text of messages the broker returned.
    returned: HashMap<String, String>,
    report: PublishReport,
}

impl Publisher {
    /// Publish one message, first waiting for confirms while the window is full.
    pub fn publish(&mut self, msg: Message) -> Result<()> {
        while !self.pending.is_empty()
            && (self.pending.len() >= self.options.window
                || self.pending_bytes + msg.body.len() > self.options.window_bytes)
        {
            self.wait_for_confirm()?;
        }
        let publish = Publish {
            body: &msg.body,
            routing_key: self.queue.clone(),
            mandatory: true,
            immediate: false,
            properties: properties(&msg),
        };
        if let Err(e) = self.channel.basic_publish("", publish) {
            return Err(self.channel_failure(e));
        }
        self.pending_bytes += msg.body.len();
        self.pending.push_back((self.next_tag, msg));
        self.next_tag += 1;
        self.poll_confirms()
    }

    /// Confirmed so far.
    pub fn report(&self) -> &PublishReport {
        &self.report
    }

    /// Wait for every outstanding confirm, close the channel, and report.
    pub fn finish(mut self) -> (PublishReport, Result<()>) {
        let mut result = Ok(());
        while !self.pending.is_empty() {
            if let Err(e) = self.wait_for_confirm() {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = self
                .channel
                .close()
                .map_err(|e| explain(e, &self.endpoint, "closing"));
        }
        let mut report = self.report;
        report
            .unconfirmed
            .extend(self.pending.into_iter().map(|(_, m)| m.label));
        (report, result)
    }

    fn poll_confirms(&mut self) -> Result<()> {
        loop {
            match self.confirms.try_recv() {
                Ok(c) => self.settle(c),
                Err(crossbeam_channel::TryRecvError::Empty) => return Ok(()),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Err(self.lost());
                }
            }
        }
    }

    fn wait_for_confirm(&mut self) -> Result<()> {
        match self.confirms.recv_timeout(self.options.confirm_timeout) {
            Ok(c) => {
                self.settle(c);
                self.poll_confirms()
            }
            Err(RecvTimeoutError::Timeout) => Err(eyre!(
                "no publisher confirm from {} for {:.0} s with {} message(s) outstanding; the \
                 connection is treated as lost (raise --confirm-timeout if the broker is just slow)",
                self.endpoint.masked(),
                self.options.confirm_timeout.as_secs_f64(),
                self.pending.len()
            )),
            Err(RecvTimeoutError::Disconnected) => Err(self.lost()),
        }
    }

    fn settle(&mut self, confirm: Confirm) {
        // A Return arrives before the ack of the same message: collect them first.
        while let Ok(ret) = self.returns.try_recv() {
            if let Some(id) = ret.properties.message_id() {
                let why = format!(
                    "returned by the broker: {} {}",
                    ret.reply_code, ret.reply_text
                );
                self.returned.insert(id.clone(), why);
            }
        }
        let smoothed: Vec<Confirm> = self.smoother.process(confirm).collect();
        for c in smoothed {
            let (tag, acked) = match c {
                Confirm::Ack(p) => (p.delivery_tag, true),
                Confirm::Nack(p) => (p.delivery_tag, false),
            };
            let Some(pos) = self.pending.iter().position(|(t, _)| *t == tag) else {
                continue;
            };
            let Some((_, msg)) = self.pending.remove(pos) else {
                continue;
            };
            self.pending_bytes -= msg.body.len();
            if let Some(why) = self.returned.remove(&msg.message_id) {
                self.report.refused.push((msg.label, why));
            } else if acked {
                self.report.confirmed += 1;
                self.report.confirmed_bytes += msg.body.len() as u64;
            } else {
                self.report.refused.push((
                    msg.label,
                    "nacked by the broker (e.g. queue full with x-overflow reject-publish)".into(),
                ));
            }
        }
    }

    /// The confirm stream ended: drain what arrived, then ask the channel why it closed.
    fn lost(&mut self) -> Report {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        match self.channel.queue_declare_passive(self.queue.clone()) {
            Err(e) => explain(e, &self.endpoint, "publishing"),
            Ok(_) => eyre!(
                "lost the publisher-confirm stream from {}",
                self.endpoint.masked()
            ),
        }
    }

    fn channel_failure(&mut self, e: amiquip::Error) -> Report {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        explain(e, &self.endpoint, "publishing")
    }
}

fn properties(msg: &Message) -> AmqpProperties {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    AmqpProperties::default()
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

/// What to do with a delivery once the handler has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Stored durably: ack it.
    Ack,
    /// Cannot be decoded or stored: reject without requeue (dead-letter where configured).
    Reject,
}

/// Where deliveries go; the consumer loop's one place where a delivery is handled.
pub trait Handler {
    /// Store one delivery. An error stops the consumer; the delivery is requeued.
    fn handle(&mut self, delivery: Delivery) -> Result<Disposition>;
    /// Make everything handled so far durable (flush / fsync) before it is acked.
    fn flush(&mut self) -> Result<()>;
}

/// When the consumer loop stops.
pub struct ConsumeLimits<'a> {
    /// After this many deliveries.
    pub count: Option<u64>,
    /// After this long with no delivery.
    pub idle: Option<Duration>,
    /// When this is set (SIGINT/SIGTERM).
    pub stop: &'a AtomicBool,
}

/// Why the consumer stopped, and what it saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsumeOutcome {
    /// Deliveries received.
    pub received: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries rejected without requeue.
    pub rejected: u64,
    /// Stopped by a signal.
    pub interrupted: bool,
}

struct ConsumeState<'a> {
    channel: &'a Channel,
    endpoint: &'a Endpoint,
    /// The newest handled delivery not yet acked: one `ack_multiple` covers all before it.
    last: Option<amiquip::Delivery>,
    unacked: u64,
    ack_every: u64,
    outcome: ConsumeOutcome,
}

const TICK: Duration = Duration::from_millis(100);

impl ConsumeState<'_> {
    fn run(
        &mut self,
        rx: &Receiver<ConsumerMessage>,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<()> {
        let mut last_seen = Instant::now();
        loop {
            if limits.stop.load(Ordering::SeqCst) {
                self.outcome.interrupted = true;
                break;
            }
            if limits.count.is_some_and(|n| self.outcome.received >= n) {
                break;
            }
            let wait = match limits.idle {
                Some(idle) => match idle.checked_sub(last_seen.elapsed()) {
                    Some(left) => left.min(TICK),
                    None => break,
                },
                None => TICK,
            };
            match rx.recv_timeout(wait) {
                Ok(ConsumerMessage::Delivery(d)) => {
                    last_seen = Instant::now();
                    self.delivered(d, handler, rx.is_empty())?;
                }
                Ok(other) => return Err(self.ended(other)),
                Err(RecvTimeoutError::Timeout) => self.ack_pending(handler)?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(eyre!(
                        "lost the connection to {} while consuming (broker stopped, network cut \
                         or missed heartbeats); unacked messages stay in the queue",
                        self.endpoint.masked()
                    ));
                }
            }
        }
        self.ack_pending(handler)
    }

    fn delivered(
        &mut self,
        mut d: amiquip::Delivery,
        handler: &mut dyn Handler,
        caught_up: bool,
    ) -> Result<()> {
        self.outcome.received += 1;
        let props = &d.properties;
        let ours = Delivery {
            body: std::mem::take(&mut d.body),
            content_type: props.content_type().clone(),
            message_id: props.message_id().clone(),
            kind: props.type_().clone(),
            headers: from_field_table(props.headers().as_ref()),
            redelivered: d.redelivered,
        };
        match handler.handle(ours) {
            Ok(Disposition::Ack) => {
                self.last = Some(d);
                self.unacked += 1;
                if caught_up || self.unacked >= self.ack_every {
                    self.ack_pending(handler)?;
                }
                Ok(())
            }
            Ok(Disposition::Reject) => {
                self.ack_pending(handler)?;
                d.reject(self.channel, false)
                    .map_err(|e| explain(e, self.endpoint, "rejecting"))?;
                self.outcome.rejected += 1;
                Ok(())
            }
            Err(e) => {
                let _ = self.ack_pending(handler);
                let _ = d.nack(self.channel, true);
                Err(e)
            }
        }
    }

    fn ack_pending(&mut self, handler: &mut dyn Handler) -> Result<()> {
        let Some(last) = self.last.take() else {
            return Ok(());
        };
        handler.flush()?;
        last.ack_multiple(self.channel)
            .map_err(|e| explain(e, self.endpoint, "acking"))?;
        self.outcome.acked += self.unacked;
        self.unacked = 0;
        Ok(())
    }

    fn ended(&self, msg: ConsumerMessage) -> Report {
        match msg {
            ConsumerMessage::ServerCancelled => {
                eyre!("the broker cancelled the consumer: the queue was deleted while consuming")
            }
            ConsumerMessage::ServerClosedChannel(e)
            | ConsumerMessage::ServerClosedConnection(e) => explain(e, self.endpoint, "consuming"),
            ConsumerMessage::ClientCancelled
            | ConsumerMessage::ClientClosedChannel
            | ConsumerMessage::ClientClosedConnection => eyre!("the consumer was closed"),
            ConsumerMessage::Delivery(_) => eyre!("unexpected delivery"),
        }
    }
}

/// Translate an amiquip error into what the user should do. Never echoes the password.
fn explain(err: amiquip::Error, ep: &Endpoint, doing: &str) -> Report {
    use amiquip::Error as E;
    let at = ep.masked();
    match err {
        E::FailedToConnect { source, .. }
        | E::IoErrorWritingSocket { source }
        | E::IoErrorReadingSocket { source }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            eyre!("no RabbitMQ answers at {at} (connection refused); {START_BROKER_HINT}")
        }
        E::FailedToConnect { source, .. } => {
            eyre!("cannot connect to RabbitMQ at {at}: {source}; {START_BROKER_HINT}")
        }
        E::ResolveUrlToSocketAddr { source, .. } => {
            eyre!(
                "cannot resolve the host of {at}: {source}; check the host in --url / --rabbitmq-server"
            )
        }
        E::UrlNoSocketAddrs { .. } => {
            eyre!(
                "the host of {at} resolves to no address; check the host in --url / --rabbitmq-server"
            )
        }
        E::ConnectionTimeout => eyre!(
            "RabbitMQ at {at} did not complete the AMQP handshake within {:.1} s; check that \
             --url names a RabbitMQ AMQP port (5672, or 5671 for amqps://), or raise --connect-timeout",
            ep.timeout.as_secs_f64()
        ),
        E::InvalidCredentials => eyre!(
            "RabbitMQ at {at} refused the login (ACCESS_REFUSED); check the user and password in \
             --url / AMQP_URL"
        ),
        E::ServerClosedConnection { code: 530, message } => eyre!(
            "RabbitMQ at {at} refused the vhost ({}); check the vhost at the end of --url \
             (`/%2f` is the default vhost `/`) and the user's permissions",
            ep.scrub(&message)
        ),
        E::ServerClosedConnection { code: 403, message } => eyre!(
            "RabbitMQ at {at} refused access ({}); check the user, password and permissions",
            ep.scrub(&message)
        ),
        E::ServerClosedConnection { code: 320, message } => eyre!(
            "RabbitMQ at {at} closed the connection while {doing} ({}): the broker is shutting \
             down or an operator closed it",
            ep.scrub(&message)
        ),
        E::ServerClosedConnection { code, message } => eyre!(
            "RabbitMQ at {at} closed the connection while {doing} ({code} {})",
            ep.scrub(&message)
        ),
        E::ServerClosedChannel {
            code: 406, message, ..
        } if message.contains("message size") => {
            eyre!(
                "the broker refused a message as too large while {doing} ({}); lower \
                 --max-message-size to skip such items, or raise max_message_size in rabbitmq.conf",
                ep.scrub(&message)
            )
        }
        E::ServerClosedChannel { code, message, .. } => {
            eyre!(
                "the broker closed the channel while {doing} ({code} {})",
                ep.scrub(&message)
            )
        }
        E::MissedServerHeartbeats => eyre!(
            "lost the connection to {at} while {doing}: missed heartbeats (network or broker stalled)"
        ),
        E::TlsHandshake { source } => eyre!(
            "TLS handshake with {at} failed: {}; check that the port speaks TLS (usually 5671) \
             and that the server certificate is trusted",
            ep.scrub(&source.to_string())
        ),
        ref e @ (E::UnexpectedSocketClose | E::EventLoopDropped | E::EventLoopClientDropped) => {
            eyre!(
                "lost the connection to {at} while {doing} (broker stopped or network cut) [{e:?}]"
            )
        }
        other => eyre!(
            "RabbitMQ error at {at} while {doing}: {}",
            ep.scrub(&other.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url, None, Duration::from_secs(5)).expect("valid url")
    }

    #[test]
    fn masks_the_password() {
        let e = ep("amqp://user:s3cret@host:5672/%2f");
        assert_eq!(e.masked(), "amqp://user:****@host:5672/%2f");
        assert!(
            !e.scrub("failed amqp://user:s3cret@host/ s3cret")
                .contains("s3cret")
        );
        assert_eq!(
            mask_text("x amqp://a:b@h:1/v y", None),
            "x amqp://a:****@h:1/v y"
        );
    }

    #[test]
    fn adds_timeout_and_heartbeat_unless_given() {
        let e = ep("amqp://guest:guest@localhost:5672/%2f");
        assert!(e.url.contains("connection_timeout=5000"), "{}", e.url);
        assert!(e.url.contains("heartbeat=10"), "{}", e.url);
        let e = ep("amqp://localhost/%2f?heartbeat=3&connection_timeout=700");
        assert_eq!(e.timeout, Duration::from_millis(700));
        assert!(!e.url.contains("heartbeat=10"), "{}", e.url);
    }

    #[test]
    fn rabbitmq_server_replaces_the_host() {
        let e = Endpoint::parse(
            "amqp://u:p@localhost:5672/%2f",
            Some("rabbit"),
            Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(e.masked(), "amqp://u:****@rabbit:5672/%2f");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_the_password() {
        for bad in ["http://u:pw@h/", "amqp://u:pw@h/?foo=1", "not a url"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(!err.0.contains(":pw@"), "{}", err.0);
        }
    }

    #[test]
    fn headers_survive_the_field_table() {
        let mut h = Headers::new();
        h.insert("row".into(), HeaderValue::Int(7));
        h.insert("source".into(), HeaderValue::Str("a.csv".into()));
        assert_eq!(from_field_table(Some(&to_field_table(&h))), h);
    }
}

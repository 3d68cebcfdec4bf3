//! Confirmed publishing: a bounded window of unconfirmed messages per channel
//! ([`Publisher`]), and a [`Producer`] that survives lost connections by reconnecting and
//! re-publishing everything the broker had not confirmed (same message ids: at-least-once).

use super::props::properties;
use super::retry::{LinkEvent, Retry, reconnect};
use super::session::Session;
use super::topology::QueueSpec;
use super::{Endpoint, TICK, discard, explain, fatal, lost};
use crate::codec::Message;
use crate::signals::sleep_unless_stopped;
use amiquip::{Channel, Confirm, ConnectionBlockedNotification, Publish, Return};
use color_eyre::eyre::{Report, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Publisher settings.
#[derive(Debug, Clone, Copy)]
pub struct PublisherOptions {
    /// Most messages published and not yet confirmed.
    pub window: usize,
    /// Most body bytes published and not yet confirmed. Kept under amiquip's write buffer
    /// limit (see `session::tuning`) so `publish` never stalls inside amiquip during a broker
    /// alarm.
    pub window_bytes: usize,
    /// How long to wait for a confirm before the connection counts as lost.
    pub confirm_timeout: Duration,
}

/// What became of the messages.
#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    /// Messages the broker confirmed (acked and not returned).
    pub confirmed: u64,
    /// Body bytes of those messages.
    pub confirmed_bytes: u64,
    /// Messages the broker refused for good (nacked with no retry left, or returned as
    /// unroutable): (label, reason).
    pub refused: Vec<(String, String)>,
    /// Messages read but never confirmed (the run stopped first): labels.
    pub unconfirmed: Vec<String>,
    /// Messages published again after a reconnect or a nack.
    pub republished: u64,
}

impl PublishReport {
    fn absorb(&mut self, other: PublishReport) {
        self.confirmed += other.confirmed;
        self.confirmed_bytes += other.confirmed_bytes;
        self.refused.extend(other.refused);
        self.unconfirmed.extend(other.unconfirmed);
        self.republished += other.republished;
    }
}

/// What waits need: the stop flag, how long to keep trying, and where events go.
struct Ctx<'a> {
    stop: &'a AtomicBool,
    retry: Retry,
    on_event: &'a dyn Fn(LinkEvent),
}

/// Remove and return what one confirm settles from `pending` (strictly increasing tags): with
/// `multiple`, every pending tag up to and including `tag`; without, `tag` alone. Tags
/// settled before are no longer pending, so a late or repeated confirm settles nothing twice
/// and never changes a nack into an ack.
fn take_settled<T>(pending: &mut VecDeque<(u64, T)>, tag: u64, multiple: bool) -> Vec<T> {
    if multiple {
        let n = pending.partition_point(|(t, _)| *t <= tag);
        return pending.drain(..n).map(|(_, m)| m).collect();
    }
    match pending.binary_search_by_key(&tag, |(t, _)| *t) {
        Ok(i) => pending.remove(i).map(|(_, m)| m).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

/// AMQP reply code of a mandatory message that no queue took.
const NO_ROUTE: u16 = 312;

/// Publishes persistent, mandatory messages to one queue on one channel.
struct Publisher {
    channel: Channel,
    endpoint: Endpoint,
    queue: String,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    blocked_rx: Receiver<ConnectionBlockedNotification>,
    blocked: Option<(String, Instant)>,
    next_tag: u64,
    /// Published, not yet confirmed, in delivery-tag order: what a reconnect re-publishes.
    pending: VecDeque<(u64, Message)>,
    pending_bytes: usize,
    options: PublisherOptions,
    retry_nacks: bool,
    /// message_id -> (reply code, reason), for messages the broker returned (the ack follows
    /// the return).
    returned: HashMap<String, (u16, String)>,
    /// The queues this producer declares: a message to one of them that comes back
    /// unroutable is worth retrying; a reply to a client's reply queue that is gone is not.
    declared: Vec<String>,
    /// Nacked (or unroutable) messages to publish again after a pause.
    nacked: Vec<Message>,
    /// A declared queue that some message came back from 312 NO_ROUTE since the last retry.
    unroutable: Option<String>,
    report: PublishReport,
}

impl Publisher {
    fn new(
        session: &mut Session,
        queues: &[QueueSpec],
        options: PublisherOptions,
        retry_nacks: bool,
    ) -> Result<Publisher> {
        let channel = session.channel()?;
        let ep = session.endpoint().clone();
        // Listen before enabling, or early confirms can be missed.
        let confirms =
            channel.listen_for_publisher_confirms().map_err(|e| explain(e, &ep, "publishing"))?;
        let returns = channel.listen_for_returns().map_err(|e| explain(e, &ep, "publishing"))?;
        channel.enable_publisher_confirms().map_err(|e| explain(e, &ep, "publishing"))?;
        Ok(Publisher {
            channel,
            endpoint: ep,
            queue: queues.first().map_or_else(String::new, |s| s.name.clone()),
            declared: queues.iter().map(|s| s.name.clone()).collect(),
            confirms,
            returns,
            blocked_rx: session.blocked_notices(),
            blocked: None,
            next_tag: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
            options,
            retry_nacks,
            returned: HashMap::new(),
            nacked: Vec::new(),
            unroutable: None,
            report: PublishReport::default(),
        })
    }

    /// Publish one message once the window has room. On error the message is either handed
    /// back (never sent) or kept in `pending` (sent, unconfirmed).
    fn send(&mut self, msg: Message, ctx: &Ctx<'_>) -> Result<(), (Report, Option<Box<Message>>)> {
        if let Err(e) = self.make_room(msg.body.len(), ctx) {
            return Err((e, Some(Box::new(msg))));
        }
        let publish = Publish {
            body: &msg.body,
            routing_key: msg.route.routing_key.clone().unwrap_or_else(|| self.queue.clone()),
            mandatory: true,
            immediate: false,
            properties: properties(&msg),
        };
        let sent = self.channel.basic_publish("", publish);
        self.pending_bytes += msg.body.len();
        self.pending.push_back((self.next_tag, msg));
        self.next_tag += 1;
        if let Err(e) = sent {
            return Err((self.channel_failure(e), None));
        }
        self.poll_confirms().map_err(|e| (e, None))
    }

    fn make_room(&mut self, len: usize, ctx: &Ctx<'_>) -> Result<()> {
        self.wait_while_blocked(ctx)?;
        while !self.pending.is_empty()
            && (self.pending.len() >= self.options.window
                || self.pending_bytes + len > self.options.window_bytes)
        {
            self.wait_for_confirm(ctx)?;
        }
        Ok(())
    }

    /// Wait until everything published is confirmed.
    fn wait_all(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        while !self.pending.is_empty() {
            self.wait_for_confirm(ctx)?;
        }
        Ok(())
    }

    fn poll_blocked(&mut self, ctx: &Ctx<'_>) {
        while let Ok(note) = self.blocked_rx.try_recv() {
            match note {
                ConnectionBlockedNotification::Blocked(reason) => {
                    (ctx.on_event)(LinkEvent::Blocked(reason.clone()));
                    self.blocked = Some((reason, Instant::now()));
                }
                ConnectionBlockedNotification::Unblocked => {
                    (ctx.on_event)(LinkEvent::Unblocked);
                    self.blocked = None;
                }
            }
        }
    }

    /// While the broker blocks this connection, publish nothing (so amiquip's own buffer never
    /// fills and stalls us); give up on a signal or after --retry-for.
    fn wait_while_blocked(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        self.poll_blocked(ctx);
        while self.blocked.is_some() {
            self.check_blocked_limits(ctx)?;
            std::thread::sleep(TICK);
            self.poll_confirms()?;
            self.poll_blocked(ctx);
        }
        Ok(())
    }

    fn check_blocked_limits(&self, ctx: &Ctx<'_>) -> Result<()> {
        let Some((reason, since)) = &self.blocked else {
            return Ok(());
        };
        if ctx.stop.load(Ordering::SeqCst) {
            return Err(fatal(format!(
                "stopped by a signal while the broker blocked publishing ({reason})"
            )));
        }
        if since.elapsed() > ctx.retry.retry_for {
            return Err(fatal(format!(
                "the broker at {} blocked publishing for over {:.0} s ({reason}: a memory or disk \
                 alarm); free memory or disk on the broker, or raise --retry-for",
                self.endpoint.masked(),
                ctx.retry.retry_for.as_secs_f64()
            )));
        }
        Ok(())
    }

    fn wait_for_confirm(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let mut quiet = Duration::ZERO;
        loop {
            match self.confirms.recv_timeout(TICK) {
                Ok(c) => {
                    self.settle(c);
                    return self.poll_confirms();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.lost_stream()),
            }
            self.poll_blocked(ctx);
            if self.blocked.is_some() {
                self.check_blocked_limits(ctx)?;
                continue;
            }
            quiet += TICK;
            if quiet >= self.options.confirm_timeout {
                return Err(lost(format!(
                    "no publisher confirm from {} for {:.0} s with {} message(s) outstanding; the \
                     connection is treated as lost (raise --confirm-timeout if the broker is just slow)",
                    self.endpoint.masked(),
                    self.options.confirm_timeout.as_secs_f64(),
                    self.pending.len()
                )));
            }
        }
    }

    fn poll_confirms(&mut self) -> Result<()> {
        loop {
            match self.confirms.try_recv() {
                Ok(c) => self.settle(c),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(self.lost_stream()),
            }
        }
    }

    fn settle(&mut self, confirm: Confirm) {
        // A Return arrives before the ack of the same message: collect them first.
        while let Ok(ret) = self.returns.try_recv() {
            if let Some(id) = ret.properties.message_id() {
                let why = format!("returned by the broker: {} {}", ret.reply_code, ret.reply_text);
                self.returned.insert(id.clone(), (ret.reply_code, why));
            }
        }
        // Settled here, not by amiquip's ConfirmSmoother: it turns a nack into an ack when a
        // later `multiple` ack covers the nacked tag (reject-publish nacks come at once, acks
        // wait for the disk), which counted refused messages as confirmed.
        let (payload, acked) = match confirm {
            Confirm::Ack(p) => (p, true),
            Confirm::Nack(p) => (p, false),
        };
        for msg in take_settled(&mut self.pending, payload.delivery_tag, payload.multiple) {
            self.pending_bytes -= msg.body.len();
            if let Some((code, why)) = self.returned.remove(&msg.message_id) {
                // 312 NO_ROUTE: no queue took it, e.g. a classic queue whose node is down.
                // Like a nack, it is worth trying again while --retry-for lasts.
                let to = msg.route.routing_key.as_ref().unwrap_or(&self.queue);
                if code == NO_ROUTE && self.retry_nacks && self.declared.contains(to) {
                    self.unroutable = Some(to.clone());
                    self.nacked.push(msg);
                } else {
                    self.report.refused.push((msg.label, why));
                }
            } else if acked {
                self.report.confirmed += 1;
                self.report.confirmed_bytes += msg.body.len() as u64;
            } else if self.retry_nacks {
                self.nacked.push(msg);
            } else {
                self.report.refused.push((
                    msg.label,
                    "nacked by the broker (e.g. queue full with x-overflow reject-publish)".into(),
                ));
            }
        }
    }

    /// The confirm stream ended: drain what arrived, then ask the channel why it closed.
    fn lost_stream(&mut self) -> Report {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        let why = if self.queue.is_empty() {
            Ok(())
        } else {
            self.channel.queue_declare_passive(self.queue.clone()).map(drop)
        };
        match why {
            Err(e) => explain(e, &self.endpoint, "publishing"),
            Ok(()) => {
                lost(format!("lost the publisher-confirm stream from {}", self.endpoint.masked()))
            }
        }
    }

    fn channel_failure(&mut self, e: amiquip::Error) -> Report {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        explain(e, &self.endpoint, "publishing")
    }

    /// Hand back everything not confirmed, in publish order, and the channel (not closed:
    /// on a blocked or dead connection that could hang; the caller decides).
    fn into_unconfirmed(mut self) -> (PublishReport, Vec<Message>, Channel) {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        let mut msgs: Vec<Message> =
            std::mem::take(&mut self.pending).into_iter().map(|(_, m)| m).collect();
        msgs.append(&mut self.nacked);
        let report = std::mem::take(&mut self.report);
        (report, msgs, self.channel)
    }
}

/// A publisher that survives lost connections: it reconnects (rotating through the
/// endpoints, with backoff, for up to `retry.retry_for`), re-publishes what was not
/// confirmed, retries nacked messages after a pause, and pauses while the broker blocks.
pub struct Producer {
    endpoints: Vec<Endpoint>,
    current: usize,
    /// Declared on every connection; the first is where messages without a routing key go.
    specs: Vec<QueueSpec>,
    options: PublisherOptions,
    retry: Retry,
    stop: std::sync::Arc<AtomicBool>,
    on_event: Box<dyn Fn(LinkEvent) + Send>,
    live: Option<(Session, Publisher)>,
    /// Read but not yet handed to a live channel (includes what a reconnect re-publishes).
    backlog: VecDeque<Message>,
    /// Totals of channels that are gone.
    done: PublishReport,
    nack_delay: Duration,
    nack_since: Option<Instant>,
    /// Since when the live channel has had nacks and no confirm (None after a confirm or a
    /// reconnect).
    channel_nacked_since: Option<Instant>,
    confirmed_at_nack: u64,
    gave_up: bool,
    /// Refusals already handed out by [`Producer::flush`] (still part of the final report).
    refused_total: Vec<(String, String)>,
    /// Since when connections have been lost with messages unconfirmed and no confirm in
    /// between (a message the broker kills the connection for, again and again), and the
    /// confirm count at the last loss.
    failing_since: Option<Instant>,
    confirmed_at_loss: u64,
    losses: u64,
}

/// Declare every queue of `specs` on `session` and open a confirming publisher whose default
/// routing key is the first one's name.
fn declare_and_publish(
    session: &mut Session,
    specs: &[QueueSpec],
    options: PublisherOptions,
    retry: &Retry,
) -> Result<Publisher> {
    for spec in specs {
        session.declare_queue(spec)?;
    }
    Publisher::new(session, specs, options, !retry.retry_for.is_zero())
}

/// A channel that has had nothing but nacks for this long is replaced by a fresh connection
/// (the next --url). After the node of a quorum queue's leader is killed, a producer that
/// is on a survivor within ~0.1 s often gets every publish of that channel nacked for the
/// channel's life (RabbitMQ 3.10's quorum-queue client keeps registering the publisher with
/// the dead leader), while a channel opened seconds later works: `failover_loop` with
/// MQDEMO_FAILOVER_KILL showed it in 4 of 6 runs. A queue that is merely full costs one
/// reconnect per period; --retry-for still bounds the whole wait, and reconnects never
/// reset it.
const STUCK_CHANNEL: Duration = Duration::from_secs(10);

/// First pause after the broker nacks (queue full); doubles up to 5 s.
const FIRST_NACK_DELAY: Duration = Duration::from_millis(100);

impl Producer {
    /// Connect (the first endpoint that answers), declare the queue and enable confirms.
    pub fn open(
        endpoints: &[Endpoint],
        spec: &QueueSpec,
        options: PublisherOptions,
        retry: Retry,
        stop: std::sync::Arc<AtomicBool>,
        on_event: Box<dyn Fn(LinkEvent) + Send>,
    ) -> Result<Producer> {
        Producer::open_many(endpoints, std::slice::from_ref(spec), options, retry, stop, on_event)
    }

    /// Like [`Producer::open`], declaring every queue of `specs`; messages without a
    /// routing key go to the first (with none, every message must carry one).
    pub fn open_many(
        endpoints: &[Endpoint],
        specs: &[QueueSpec],
        options: PublisherOptions,
        retry: Retry,
        stop: std::sync::Arc<AtomicBool>,
        on_event: Box<dyn Fn(LinkEvent) + Send>,
    ) -> Result<Producer> {
        let (mut session, current) = Session::open_first(endpoints)?;
        let publisher = declare_and_publish(&mut session, specs, options, &retry)?;
        Ok(Producer {
            endpoints: endpoints.to_vec(),
            current,
            specs: specs.to_vec(),
            options,
            retry,
            stop,
            on_event,
            live: Some((session, publisher)),
            backlog: VecDeque::new(),
            done: PublishReport::default(),
            nack_delay: FIRST_NACK_DELAY,
            nack_since: None,
            channel_nacked_since: None,
            confirmed_at_nack: 0,
            gave_up: false,
            refused_total: Vec::new(),
            failing_since: None,
            confirmed_at_loss: 0,
            losses: 0,
        })
    }

    /// Publish one message (blocks while the confirm window is full or the broker blocks).
    pub fn publish(&mut self, msg: Message) -> Result<()> {
        if let Some(n) = msg.oversized_properties() {
            // Sent, the broker would close the connection (FRAME_ERROR) on every attempt.
            return Err(fatal(format!(
                "{}: its properties and headers take {n} bytes, more than fit in one AMQP \
                 frame ({} bytes); it was not published",
                msg.label,
                crate::codec::MAX_PROPERTY_BYTES
            )));
        }
        self.backlog.push_back(msg);
        let r = self.drain();
        self.gave_up = r.is_err();
        r
    }

    /// Confirmed messages and bytes so far.
    pub fn confirmed(&self) -> (u64, u64) {
        let live = self
            .live
            .as_ref()
            .map_or((0, 0), |(_, p)| (p.report.confirmed, p.report.confirmed_bytes));
        (self.done.confirmed + live.0, self.done.confirmed_bytes + live.1)
    }

    /// Wait until everything published so far is confirmed (reconnecting and re-publishing
    /// if needed), keeping the connection open. Messages the broker refused for good since
    /// the last call are returned: (label, reason).
    pub fn flush(&mut self) -> Result<Vec<(String, String)>> {
        let r = self.settle_all();
        self.gave_up = r.is_err();
        r?;
        let mut refused = std::mem::take(&mut self.done.refused);
        if let Some((_, p)) = self.live.as_mut() {
            refused.append(&mut p.report.refused);
        }
        self.refused_total.extend(refused.iter().cloned());
        Ok(refused)
    }

    fn settle_all(&mut self) -> Result<()> {
        loop {
            self.drain()?;
            let waited = match self.live.as_mut() {
                Some((_, p)) => {
                    let ctx =
                        Ctx { stop: &self.stop, retry: self.retry, on_event: &*self.on_event };
                    p.wait_all(&ctx)
                }
                None => return Err(fatal("not connected to the broker".into())),
            };
            match waited {
                Ok(()) => {
                    if !self.retry_nacked()? {
                        return Ok(());
                    }
                }
                Err(e) => self.recover(e)?,
            }
        }
    }

    /// Wait for every outstanding confirm (reconnecting if needed), close, and report. After a
    /// failed `publish` or a signal during a broker block, it gives up at once instead.
    pub fn finish(mut self) -> (PublishReport, Result<()>) {
        if self.gave_up {
            return self.abandon(None);
        }
        if let Err(e) = self.settle_all() {
            return self.abandon(Some(e));
        }
        let Some((session, publisher)) = self.live.take() else {
            return self.abandon(None);
        };
        let mut report = std::mem::take(&mut self.done);
        let Publisher { channel, report: last, endpoint, .. } = publisher;
        report.absorb(last);
        report.refused.splice(0..0, std::mem::take(&mut self.refused_total));
        let closed = channel.close().map_err(|e| explain(e, &endpoint, "closing the channel"));
        let _ = session.close();
        (report, closed)
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(msg) = self.backlog.pop_front() {
            let Some((_, publisher)) = self.live.as_mut() else {
                self.backlog.push_front(msg);
                return Err(fatal("not connected to the broker".into()));
            };
            let ctx = Ctx { stop: &self.stop, retry: self.retry, on_event: &*self.on_event };
            if let Err((e, unsent)) = publisher.send(msg, &ctx) {
                if let Some(m) = unsent {
                    self.backlog.push_front(*m);
                }
                self.recover(e)?;
            }
            self.retry_nacked()?;
        }
        Ok(())
    }

    /// Put nacked messages back at the front of the backlog after a growing pause; true if
    /// there were any. Past --retry-for of nothing but nacks, they are refused for good. A
    /// channel that keeps refusing is replaced (see [`STUCK_CHANNEL`]), and one whose messages
    /// came back unroutable reconnects at once to declare the queue again.
    fn retry_nacked(&mut self) -> Result<bool> {
        let confirmed = self.confirmed().0;
        let Some((_, publisher)) = self.live.as_mut() else {
            return Ok(false);
        };
        let nacked = std::mem::take(&mut publisher.nacked);
        if confirmed > self.confirmed_at_nack {
            self.confirmed_at_nack = confirmed;
            self.nack_since = None;
            self.channel_nacked_since = None;
            if nacked.is_empty() {
                self.nack_delay = FIRST_NACK_DELAY;
            }
        }
        if nacked.is_empty() {
            return Ok(false);
        }
        let unroutable = std::mem::take(&mut publisher.unroutable);
        let since = *self.nack_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.retry.retry_for || self.stop.load(Ordering::SeqCst) {
            for m in nacked {
                publisher.report.refused.push((
                    m.label,
                    "refused by the broker (nacked: queue full or unavailable; or returned \
                     unroutable) for longer than --retry-for"
                        .into(),
                ));
            }
            return Ok(false);
        }
        (self.on_event)(LinkEvent::Backoff { messages: nacked.len(), delay: self.nack_delay });
        sleep_unless_stopped(self.nack_delay, &self.stop);
        self.nack_delay = (self.nack_delay * 2).min(Duration::from_secs(5));
        self.done.republished += nacked.len() as u64;
        for m in nacked.into_iter().rev() {
            self.backlog.push_front(m);
        }
        let stuck = self.channel_nacked_since.get_or_insert_with(Instant::now).elapsed();
        if let Some(queue) = unroutable {
            self.recycle(format!(
                "messages to queue {queue:?} came back unroutable (312 NO_ROUTE: the queue was \
                 deleted, or its node is down)"
            ))?;
        } else if stuck >= STUCK_CHANNEL {
            self.recycle(format!(
                "the broker nacked every message on this connection for {:.0} s (a full queue, \
                 or a channel left stuck by a failover); trying a fresh connection",
                stuck.as_secs_f64()
            ))?;
        }
        Ok(true)
    }

    /// After a lost connection: keep what was not confirmed, reconnect, and queue it for
    /// re-publishing ahead of new messages.
    fn recover(&mut self, error: Report) -> Result<()> {
        self.replace_link(error, false)
    }

    /// Like [`Producer::recover`], for a connection that still works but should be replaced:
    /// it is closed properly, on a thread of its own so a close that hangs cannot stall us.
    fn recycle(&mut self, why: String) -> Result<()> {
        self.replace_link(lost(why), true)
    }

    fn replace_link(&mut self, mut error: Report, healthy: bool) -> Result<()> {
        self.channel_nacked_since = None;
        if let Some((session, publisher)) = self.live.take() {
            let (report, msgs, channel) = publisher.into_unconfirmed();
            self.done.absorb(report);
            self.done.republished += msgs.len() as u64;
            for m in msgs.into_iter().rev() {
                self.backlog.push_front(m);
            }
            if healthy {
                // Closed, channel first: a forgotten channel keeps its file descriptors.
                let closing = move || {
                    let _ = channel.close();
                    let _ = session.close();
                };
                let _ = std::thread::Builder::new().name("mqdemo-close".into()).spawn(closing);
            } else {
                std::mem::forget(channel);
                error = discard(session, error, false);
            }
        }
        if self.stop.load(Ordering::SeqCst) {
            return Err(error.wrap_err("not reconnecting: stopped by a signal"));
        }
        if let Some(why) = self.count_loss() {
            return Err(fatal(format!("{why}; the last time: {error:#}")));
        }
        let (specs, options, retry) = (self.specs.clone(), self.options, self.retry);
        let live = reconnect(
            &self.endpoints,
            &mut self.current,
            self.retry,
            &self.stop,
            error,
            &*self.on_event,
            |ep| {
                let mut session = Session::open(ep)?;
                let publisher = declare_and_publish(&mut session, &specs, options, &retry)?;
                Ok((session, publisher))
            },
        )?;
        self.live = Some(live);
        Ok(())
    }

    /// Reconnects that each succeed never end on their own when the broker closes the
    /// connection again for the same message: lost links with nothing confirmed between
    /// them count toward --retry-for like a failed reconnect. Why to give up, if it is time.
    fn count_loss(&mut self) -> Option<String> {
        let confirmed = self.confirmed().0;
        if confirmed > self.confirmed_at_loss || self.backlog.is_empty() {
            self.failing_since = None;
            self.losses = 0;
        }
        self.confirmed_at_loss = confirmed;
        self.losses += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if self.losses < 2 || since.elapsed() <= self.retry.retry_for {
            return None;
        }
        let first = self.backlog.front().map_or("-", |m| m.label.as_str());
        Some(format!(
            "lost the connection {} times in {:.0} s while publishing ({first} first) with \
             nothing confirmed in between; giving up (--retry-for {} s); the broker's log says \
             why it closed the connection",
            self.losses,
            since.elapsed().as_secs_f64(),
            self.retry.retry_for.as_secs_f64()
        ))
    }

    /// Stop now: everything not confirmed is reported as such; connections are let go
    /// without a close handshake (it could block during a broker alarm).
    fn abandon(mut self, error: Option<Report>) -> (PublishReport, Result<()>) {
        let mut report = std::mem::take(&mut self.done);
        report.refused.splice(0..0, std::mem::take(&mut self.refused_total));
        if let Some((session, publisher)) = self.live.take() {
            let (last, msgs, channel) = publisher.into_unconfirmed();
            std::mem::forget(channel);
            report.absorb(last);
            report.unconfirmed.extend(msgs.into_iter().map(|m| m.label));
            std::mem::forget(session);
        }
        report.unconfirmed.extend(self.backlog.drain(..).map(|m| m.label));
        (report, error.map_or(Ok(()), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::take_settled;
    use std::collections::VecDeque;

    fn pending(tags: &[u64]) -> VecDeque<(u64, u64)> {
        tags.iter().map(|&t| (t, t)).collect()
    }

    #[test]
    fn a_nack_before_a_multiple_ack_stays_a_nack() {
        let mut p = pending(&[1, 2, 3, 4, 5]);
        // The broker nacks 2 and 4 at once (queue full), then acks up to 5 with `multiple`.
        assert_eq!(take_settled(&mut p, 2, false), [2]);
        assert_eq!(take_settled(&mut p, 4, false), [4]);
        assert_eq!(take_settled(&mut p, 5, true), [1, 3, 5], "the ack settles only what is left");
        assert!(p.is_empty());
    }

    #[test]
    fn a_confirm_settles_nothing_twice() {
        let mut p = pending(&[1, 2, 3]);
        assert_eq!(take_settled(&mut p, 2, true), [1, 2]);
        assert!(take_settled(&mut p, 2, true).is_empty(), "a repeated multiple ack");
        assert!(take_settled(&mut p, 1, false).is_empty(), "a late single confirm");
        assert_eq!(take_settled(&mut p, 9, false), Vec::<u64>::new(), "an unknown tag");
        assert_eq!(take_settled(&mut p, 3, false), [3]);
    }

    #[test]
    fn a_multiple_confirm_stops_at_its_tag() {
        let mut p = pending(&[3, 4, 7, 8]);
        assert_eq!(take_settled(&mut p, 5, true), [3, 4]);
        assert_eq!(p.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [7, 8]);
    }
}

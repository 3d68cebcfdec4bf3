//! Confirmed publishing on one channel ([`Publisher`]): a bounded window of unconfirmed
//! messages, confirms and returns settled per message, nacks kept for a retry. What survives
//! a lost connection is [`super::producer::Producer`]'s.

use super::TICK;
use super::endpoint::Endpoint;
use super::error::{explain, fatal, lost};
use super::retry::{LinkEvent, Retry};
use super::session::Session;
use super::target::Target;
use super::topology::{QueueSpec, check_exchange};
use crate::codec::Message;
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
    /// Most body bytes published and not yet confirmed. The connection's write buffer is
    /// sized from it (`PublisherOptions::write_buffer`) so `publish` never stalls inside
    /// amiquip during a broker alarm.
    pub window_bytes: usize,
    /// How long to wait for a confirm before the connection counts as lost.
    pub confirm_timeout: Duration,
}

impl PublisherOptions {
    /// Bytes amiquip may buffer for the socket on a publisher's connection: twice the
    /// in-flight byte window, so the window always fits with room to spare.
    pub(super) fn write_buffer(&self) -> usize {
        self.window_bytes.saturating_mul(2)
    }
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
    pub(super) fn absorb(&mut self, other: PublishReport) {
        self.confirmed += other.confirmed;
        self.confirmed_bytes += other.confirmed_bytes;
        self.refused.extend(other.refused);
        self.unconfirmed.extend(other.unconfirmed);
        self.republished += other.republished;
    }
}

/// What waits need: the stop flag, how long to keep trying, and where events go.
pub(super) struct Ctx<'a> {
    pub(super) stop: &'a AtomicBool,
    pub(super) retry: Retry,
    pub(super) on_event: &'a dyn Fn(LinkEvent),
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

/// Publishes persistent, mandatory messages to one queue (or the user's exchange) on one
/// channel.
pub(super) struct Publisher {
    pub(super) channel: Channel,
    pub(super) endpoint: Endpoint,
    /// The first declared queue ("" when none is).
    queue: String,
    /// Where messages without a routing key of their own go, and what they carry.
    target: Target,
    /// Their routing key: the target's, else the first queue's name.
    default_key: String,
    /// The first message to the target that no queue took (312 NO_ROUTE) where retrying
    /// cannot help (the user's exchange or routing key): the run stops with why.
    unroutable_target: Option<String>,
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
    pub(super) nacked: Vec<Message>,
    /// A declared queue that some message came back from 312 NO_ROUTE since the last retry.
    pub(super) unroutable: Option<String>,
    pub(super) report: PublishReport,
    /// Published, confirmed and nacked counts and confirm times (`--metrics-addr`).
    meter: Option<crate::metrics::Meter>,
}

impl Publisher {
    pub(super) fn new(
        session: &mut Session,
        queues: &[QueueSpec],
        options: PublisherOptions,
        retry_nacks: bool,
        target: &Target,
    ) -> Result<Publisher> {
        let channel = session.channel()?;
        let ep = session.endpoint().clone();
        if !target.exchange_name().is_empty() {
            check_exchange(&channel, target.exchange_name(), &ep)?;
        }
        // Listen before enabling, or early confirms can be missed.
        let confirms =
            channel.listen_for_publisher_confirms().map_err(|e| explain(e, &ep, "publishing"))?;
        let returns = channel.listen_for_returns().map_err(|e| explain(e, &ep, "publishing"))?;
        channel.enable_publisher_confirms().map_err(|e| explain(e, &ep, "publishing"))?;
        let queue = queues.first().map_or_else(String::new, |s| s.name.clone());
        let declared: Vec<String> = queues.iter().map(|s| s.name.clone()).collect();
        Ok(Publisher {
            channel,
            endpoint: ep,
            default_key: target.routing_key.clone().unwrap_or_else(|| queue.clone()),
            queue,
            target: target.clone(),
            unroutable_target: None,
            meter: crate::metrics::Meter::new(&declared),
            declared,
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
    pub(super) fn send(
        &mut self,
        msg: Message,
        ctx: &Ctx<'_>,
    ) -> Result<(), (Report, Option<Box<Message>>)> {
        if let Err(e) = self.make_room(msg.body.len(), ctx) {
            return Err((e, Some(Box::new(msg))));
        }
        // A message with a routing key of its own (a reply, a failed copy) names a queue:
        // it goes through the default exchange.
        let (exchange, routing_key) = match &msg.route.routing_key {
            Some(key) => ("", key.clone()),
            None => (self.target.exchange_name(), self.default_key.clone()),
        };
        let publish = Publish {
            body: &msg.body,
            routing_key,
            mandatory: true,
            immediate: false,
            properties: self.target.properties(&msg),
        };
        let sent = self.channel.basic_publish(exchange, publish);
        if let Some(meter) = &mut self.meter {
            let key = msg.route.routing_key.as_ref().unwrap_or(&self.default_key);
            meter.published(self.next_tag, key);
        }
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
    pub(super) fn wait_all(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        while !self.pending.is_empty() {
            self.wait_for_confirm(ctx)?;
        }
        Ok(())
    }

    /// Wait until no message with a ticket below `ticket` waits for its confirm.
    pub(super) fn wait_below(&mut self, ticket: u64, ctx: &Ctx<'_>) -> Result<()> {
        while self.pending.iter().any(|(_, m)| m.ticket < ticket) {
            self.wait_for_confirm(ctx)?;
        }
        Ok(())
    }

    /// Take in the confirms that have come, without waiting.
    pub(super) fn poll(&mut self) -> Result<()> {
        self.poll_confirms()
    }

    /// The smallest ticket of a message sent on this channel whose fate is open: waiting for
    /// its confirm, or nacked and to be sent again.
    pub(super) fn oldest_open(&self) -> Option<u64> {
        let pending = self.pending.iter().map(|(_, m)| m.ticket);
        pending.chain(self.nacked.iter().map(|m| m.ticket)).min()
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
                Err(TryRecvError::Empty) => return self.check_routed(),
                Err(TryRecvError::Disconnected) => return Err(self.lost_stream()),
            }
        }
    }

    /// Stop the run when the target routed a message nowhere and retrying cannot help:
    /// every message of a run has the same exchange and routing key, so the rest would go
    /// nowhere too.
    fn check_routed(&mut self) -> Result<()> {
        let Some(label) = self.unroutable_target.take() else {
            return Ok(());
        };
        Err(self.target.routes_nowhere(&self.default_key, &label))
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
        if let Some(meter) = &mut self.meter {
            let times = take_settled(&mut meter.sent, payload.delivery_tag, payload.multiple);
            meter.settled(times, acked);
        }
        for msg in take_settled(&mut self.pending, payload.delivery_tag, payload.multiple) {
            self.pending_bytes -= msg.body.len();
            if let Some((code, why)) = self.returned.remove(&msg.message_id) {
                // 312 NO_ROUTE: no queue took it, e.g. a classic queue whose node is down.
                // Like a nack, it is worth trying again while --retry-for lasts, when it went
                // to a queue this producer declares through the default exchange.
                let own = msg.route.routing_key.is_some();
                let to = msg.route.routing_key.as_ref().unwrap_or(&self.default_key);
                let by_name = own || self.target.exchange_name().is_empty();
                if code == NO_ROUTE && self.retry_nacks && by_name && self.declared.contains(to) {
                    self.unroutable = Some(to.clone());
                    self.nacked.push(msg);
                } else {
                    if code == NO_ROUTE && !own && self.target.exchange.is_some() {
                        self.unroutable_target.get_or_insert_with(|| msg.label.clone());
                    }
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
        // On a closed channel any call returns why the broker closed it.
        let exchange = self.target.exchange_name().to_string();
        let why = if !exchange.is_empty() {
            self.channel.exchange_declare_passive(exchange.clone()).map(drop)
        } else if self.queue.is_empty() {
            Ok(())
        } else {
            self.channel.queue_declare_passive(self.queue.clone()).map(drop)
        };
        match why {
            Err(e) => self.closed(e),
            Ok(()) => {
                lost(format!("lost the publisher-confirm stream from {}", self.endpoint.masked()))
            }
        }
    }

    fn channel_failure(&mut self, e: amiquip::Error) -> Report {
        while let Ok(c) = self.confirms.try_recv() {
            self.settle(c);
        }
        self.closed(e)
    }

    /// Why the broker closed the channel, in the terms of what the user gave.
    fn closed(&self, e: amiquip::Error) -> Report {
        self.target.closed(e, &self.endpoint)
    }

    /// Hand back everything not confirmed, in publish order, and the channel (not closed:
    /// on a blocked or dead connection that could hang; the caller decides).
    pub(super) fn into_unconfirmed(mut self) -> (PublishReport, Vec<Message>, Channel) {
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

#[cfg(test)]
mod tests;

//! A [`Producer`]: confirmed publishing that survives lost connections by reconnecting and
//! re-publishing everything the broker had not confirmed (same message ids: at-least-once),
//! retries nacked messages after a growing pause, and replaces channels that stay stuck.

use super::endpoint::Endpoint;
use super::error::{discard, explain, fatal, lost};
use super::publisher::{Ctx, PublishReport, Publisher, PublisherOptions};
use super::retry::sleep_unless_stopped;
use super::retry::{LinkEvent, Retry, reconnect};
use super::session::Session;
use super::target::Target;
use super::topology::QueueSpec;
use crate::codec::Message;
use color_eyre::eyre::{Report, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A publisher that survives lost connections: it reconnects (rotating through the
/// endpoints, with backoff, for up to `retry.retry_for`), re-publishes what was not
/// confirmed, retries nacked messages after a pause, and pauses while the broker blocks.
pub struct Producer {
    endpoints: Vec<Endpoint>,
    current: usize,
    /// Declared on every connection; the first is where messages without a routing key go,
    /// unless the target names another.
    specs: Vec<QueueSpec>,
    /// Exchange, routing key and additions for messages without a routing key of their own.
    target: Target,
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
    /// The ticket the next message gets (see [`Producer::settled_below`]).
    next_ticket: u64,
    /// The last look for confirms found the channel failed (a flush recovers it).
    poll_failed: bool,
}

/// Declare every queue of `specs` on `session` and open a confirming publisher to `target`
/// (by default: the first queue, through the default exchange).
fn declare_and_publish(
    session: &mut Session,
    specs: &[QueueSpec],
    target: &Target,
    options: PublisherOptions,
    retry: &Retry,
) -> Result<Publisher> {
    for spec in specs {
        session.declare_queue(spec)?;
    }
    Publisher::new(session, specs, options, !retry.retry_for.is_zero(), target)
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
        let target = Target::default();
        Producer::open_to(endpoints, specs, target, options, retry, stop, on_event)
    }

    /// Like [`Producer::open_many`], publishing messages without a routing key of their own
    /// to `target` (an exchange that must exist, a routing key, headers and properties
    /// added to every message). A message the target routes to no queue stops the run,
    /// unless it went by the default exchange to one of `specs` (then it is retried).
    pub fn open_to(
        endpoints: &[Endpoint],
        specs: &[QueueSpec],
        target: Target,
        options: PublisherOptions,
        retry: Retry,
        stop: std::sync::Arc<AtomicBool>,
        on_event: Box<dyn Fn(LinkEvent) + Send>,
    ) -> Result<Producer> {
        let (mut session, current) =
            Session::open_first_buffered(endpoints, options.write_buffer())?;
        let publisher = declare_and_publish(&mut session, specs, &target, options, &retry)?;
        Ok(Producer {
            endpoints: endpoints.to_vec(),
            current,
            specs: specs.to_vec(),
            target,
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
            next_ticket: 0,
            poll_failed: false,
        })
    }

    /// Publish one message (blocks while the confirm window is full or the broker blocks).
    pub fn publish(&mut self, mut msg: Message) -> Result<()> {
        if let Some(n) = msg.oversized_properties().or_else(|| self.target.oversized(&msg)) {
            // Sent, the broker would close the connection (FRAME_ERROR) on every attempt.
            return Err(fatal(format!(
                "{}: its properties and headers take {n} bytes, more than fit in one AMQP \
                 frame ({} bytes); it was not published",
                msg.label,
                crate::codec::MAX_PROPERTY_BYTES
            )));
        }
        msg.ticket = self.next_ticket;
        self.next_ticket += 1;
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
        Ok(self.take_refused())
    }

    /// Messages refused for good since the last call.
    fn take_refused(&mut self) -> Vec<(String, String)> {
        let mut refused = std::mem::take(&mut self.done.refused);
        if let Some((_, p)) = self.live.as_mut() {
            refused.append(&mut p.report.refused);
        }
        self.refused_total.extend(refused.iter().cloned());
        refused
    }

    /// The ticket the next message published gets: every message published so far has a
    /// smaller one.
    pub fn ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Every message with a ticket below this one is settled (confirmed, or refused for
    /// good: [`Producer::flush_through`] hands those out); taking in the confirms that have
    /// come, without waiting. A lost connection shows at the next publish or flush.
    pub fn settled_below(&mut self) -> u64 {
        if let Some((_, p)) = self.live.as_mut() {
            self.poll_failed = p.poll().is_err();
        }
        let live = self.live.as_ref().and_then(|(_, p)| p.oldest_open());
        let backlog = self.backlog.iter().map(|m| m.ticket);
        backlog.chain(live).min().unwrap_or(self.next_ticket)
    }

    /// Whether the messages published need more than confirms coming in to be settled: some
    /// were nacked (to be sent again after a pause, or refused past --retry-for), wait to
    /// be sent, or the connection failed; only a flush does that.
    pub fn needs_flush(&self) -> bool {
        self.poll_failed
            || !self.backlog.is_empty()
            || self.live.as_ref().is_none_or(|(_, p)| !p.nacked.is_empty())
    }

    /// Whether the broker refused messages for good that no flush has handed out yet.
    pub fn has_refusals(&self) -> bool {
        !self.done.refused.is_empty()
            || self.live.as_ref().is_some_and(|(_, p)| !p.report.refused.is_empty())
    }

    /// Like [`Producer::flush`], waiting only for the messages with a ticket below `ticket`.
    pub fn flush_through(&mut self, ticket: u64) -> Result<Vec<(String, String)>> {
        let r = self.settle_through(ticket);
        self.gave_up = r.is_err();
        r?;
        Ok(self.take_refused())
    }

    fn settle_through(&mut self, ticket: u64) -> Result<()> {
        while self.settled_below() < ticket {
            self.drain()?;
            let waited = match self.live.as_mut() {
                Some((_, p)) => {
                    let ctx =
                        Ctx { stop: &self.stop, retry: self.retry, on_event: &*self.on_event };
                    p.wait_below(ticket, &ctx)
                }
                None => return Err(fatal("not connected to the broker".into())),
            };
            match waited {
                Ok(()) => {
                    self.retry_nacked()?;
                }
                Err(e) => self.recover(e)?,
            }
        }
        Ok(())
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
        // Counted as re-published once a new connection takes them, not before.
        let mut moved = 0;
        if let Some((session, publisher)) = self.live.take() {
            let (report, msgs, channel) = publisher.into_unconfirmed();
            self.done.absorb(report);
            moved = msgs.len() as u64;
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
        let target = self.target.clone();
        let live = reconnect(
            &self.endpoints,
            &mut self.current,
            self.retry,
            &self.stop,
            error,
            &*self.on_event,
            |ep| {
                let mut session = Session::open(ep, options.write_buffer())?;
                let publisher =
                    declare_and_publish(&mut session, &specs, &target, options, &retry)?;
                Ok((session, publisher))
            },
        )?;
        self.live = Some(live);
        self.done.republished += moved;
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

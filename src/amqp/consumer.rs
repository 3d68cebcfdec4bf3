//! The consumer loop: deliveries to a [`Handler`], acks only after the handler made them
//! durable, and reconnects after a lost connection.

use super::TICK;
use super::endpoint::Endpoint;
use super::error::{close_and_retry, discard, explain, fatal, lost};
use super::prefetch::prefetch_for;
use super::probe::{Plan, refusal};
use super::props::delivery;
use super::retry::{LinkEvent, Retry, reconnect};
use super::session::{Session, UNWINDOWED_WRITE_BUFFER};
use super::stream::{
    Anchor, Clock, Cursor, Identity, Offset, StreamRead, Until, identity, now_ms, position,
};
use super::topology::{QueueSpec, no_such_queue, unavailable};
use crate::codec::Delivery;
use amiquip::{Channel, ConsumerMessage, ConsumerOptions};
use color_eyre::eyre::{Report, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to do with a delivery once the handler has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Stored durably: ack it.
    Ack,
    /// Cannot be decoded or stored, for this reason: reject without requeue (dead-lettered
    /// where the queue has a dead-letter exchange).
    Reject(String),
}

/// Where deliveries go; the consumer loop's one place where a delivery is handled.
pub trait Handler {
    /// Store one delivery. An error stops the consumer; the delivery is requeued. The
    /// delivery is the handler's to take apart (e.g. its body, for a copy) once it is done.
    fn handle(&mut self, delivery: &mut Delivery) -> Result<Disposition>;
    /// Make everything handled so far durable (flush / fsync) before it is acked.
    fn flush(&mut self) -> Result<()>;
    /// Called when no delivery came for a moment: a chance to notice trouble while idle
    /// (an error stops the consumer).
    fn idle(&mut self) -> Result<()> {
        Ok(())
    }
    /// How many of the newest deliveries the handler holds without having handled them yet
    /// (a micro-batch filling up). They are not acked (an ack covers every delivery before
    /// it): the consumer acks only up to the newest handled one.
    fn held(&self) -> usize {
        0
    }
    /// When what the handler holds is due (its `idle` handles it then): the consumer waits
    /// no longer than this for the next delivery.
    fn due(&self) -> Option<Instant> {
        None
    }
    /// The run ends (--count, --idle-timeout): handle what is held now.
    fn complete(&mut self) -> Result<()> {
        Ok(())
    }
    /// The run ends (also on a signal): make durable what is handled but still held until
    /// it is (answers awaiting their confirms), so it is acked now.
    fn confirm(&mut self) -> Result<()> {
        Ok(())
    }
    /// The channel was lost: the deliveries the handler holds will come again, so it lets
    /// go of them without handling them.
    fn dropped(&mut self) {}
    /// Reading a stream: the next `flush` makes every delivery up to this stream offset
    /// durable (a sink that keeps its checkpoint with its data stores it in that flush);
    /// `mark`: what identifies the message at `offset` (and the replay's anchor) when a
    /// checkpoint is kept, for a resumed run to check.
    fn covers(&mut self, _offset: u64, _mark: Option<&Identity>) {}
}

/// When the consumer loop stops.
pub struct ConsumeLimits<'a> {
    /// After this many deliveries.
    pub count: Option<u64>,
    /// After this long with no delivery.
    pub idle: Option<Duration>,
    /// When this is set (SIGINT/SIGTERM).
    pub stop: &'a AtomicBool,
    /// Deliveries taken so far, shared by every worker so `count` is a total.
    pub claimed: &'a AtomicU64,
    /// Set when another worker failed: stop like on a signal.
    pub halt: &'a AtomicBool,
    /// Bytes of message bodies this worker may hold (prefetched and in hand): the prefetch
    /// is lowered until prefetch x the largest body seen fits (see `prefetch_for`).
    pub held_bytes: u64,
    /// The queue is a stream: where to start and stop reading it.
    pub stream: Option<&'a StreamRead>,
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
    /// Stopped at --until: the stream offset of the first message past it.
    pub until: Option<u64>,
    /// Stream messages retention dropped between where a consumer asked to start and the
    /// first message it got (never read, by anyone here).
    pub dropped: u64,
}

/// How a consumer's run on one prefetch ended.
enum Flow {
    /// A limit, a signal or the end: close.
    Done,
    /// The bodies' sizes ask for another prefetch: re-consume on the same channel.
    Resize,
}

/// A stream delivery's offset, and its identity when a checkpoint keeps it (taken before
/// the handler takes the delivery apart).
type Place = (u64, Option<String>);

struct ConsumeState<'a> {
    channel: &'a Channel,
    /// The channel's connection: a stream's `--until TIME` is placed on a channel of its own.
    session: &'a mut Session,
    endpoint: &'a Endpoint,
    queue: &'a str,
    /// The newest handled delivery not yet acked (and its stream place): one
    /// `ack_multiple` covers all before it.
    last: Option<(amiquip::Delivery, Option<Place>)>,
    /// Deliveries the handler holds unhandled (`Handler::held`), oldest first: all newer
    /// than `last`.
    held: std::collections::VecDeque<(amiquip::Delivery, Option<Place>)>,
    /// Reading a stream: how, and where this consumer is.
    stream: Option<&'a StreamRead>,
    cursor: Cursor,
    /// Where the first consumer on this channel starts reading the stream.
    start: Offset,
    /// Where the run stops (--until, as probed; a time is placed once the clock passes it).
    until: Option<Until>,
    /// The replay's anchor, kept with each checkpoint: the checkpoint's (checked by the
    /// probe), else the first message this run reads.
    anchor: Option<Anchor>,
    /// The offset the current stream consumer asked for, until its first delivery.
    expect: Option<u64>,
    /// Set (for the other workers) as soon as the handler fails, before its messages are
    /// given back: a worker still running must not take them up and fail them again.
    halt: &'a AtomicBool,
    unacked: u64,
    ack_every: u64,
    outcome: ConsumeOutcome,
    /// --prefetch: the most ever asked for.
    max_prefetch: u16,
    /// The prefetch the current consumer was started with.
    prefetch: u16,
    /// The largest body seen by this worker (kept across reconnects).
    largest: Option<u64>,
    /// Bytes of bodies this worker may hold.
    held_bytes: u64,
}

impl<'a> ConsumeState<'a> {
    /// Consume until done, re-consuming on the same channel whenever the bodies' sizes ask
    /// for another prefetch: with `global = false` a new prefetch applies only to consumers
    /// started after it (and RabbitMQ has no prefetch_size). Deliveries the broker sent before
    /// a cancel are handled and acked as usual. Returns a receiver to keep until the channel
    /// is closed (see [`consume_once`]).
    fn consume(
        &mut self,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<Receiver<ConsumerMessage>> {
        let ep = self.endpoint;
        // Up from the first consumer on, through re-consumes for a new prefetch (`/ready`).
        let mut consuming = crate::metrics::Up::consuming(false);
        let mut start = self.start;
        loop {
            let prefetch = self.wanted();
            self.channel.qos(0, prefetch, false).map_err(|e| explain(e, ep, "setting QoS"))?;
            self.prefetch = prefetch;
            self.ack_every = u64::from(prefetch / 2).max(1);
            let options = match self.stream {
                Some(_) => {
                    self.cursor.starting(start);
                    self.expect = match start {
                        Offset::At(n) => Some(n),
                        _ => None,
                    };
                    ConsumerOptions { arguments: start.arguments(), ..Default::default() }
                }
                None => ConsumerOptions::default(),
            };
            let consumer = self
                .channel
                .basic_consume(self.queue, options)
                .map_err(|e| explain(e, ep, "starting the consumer"))?;
            consuming.set(true);
            let flow = self.run(consumer.receiver(), limits, handler).and_then(|flow| match flow {
                Flow::Done => Ok(Flow::Done),
                Flow::Resize => self.resize(&consumer, limits, handler),
            });
            match flow {
                // The cancel is confirmed: dropping it is safe. Every delivery it sent is
                // handled: a stream is read on from the next one.
                Ok(Flow::Resize) => start = self.cursor.same_channel(start),
                Ok(Flow::Done) => {
                    // amiquip answers basic.cancel to us BEFORE it tells the consumer's
                    // receiver; if that receiver is gone by then, its I/O thread dies
                    // (EventLoopClientDropped). The caller keeps this clone until the channel
                    // close round trip proves the I/O thread is past it.
                    let keep_alive = consumer.receiver().clone();
                    let _ = consumer.cancel();
                    return Ok(keep_alive);
                }
                Err(e) => {
                    // In-flight deliveries are dropped, not acked: after a reconnect the same
                    // channel id could receive the ack and close with "unknown delivery tag".
                    std::mem::forget(consumer);
                    return Err(e);
                }
            }
        }
    }

    /// Cancel the consumer to start another with a new prefetch: handle what the broker sent
    /// before the cancel, until amiquip confirms it. Handled deliveries stay ackable on the
    /// channel: they are acked as usual (not first: a sink may wait, e.g. for a pipe's
    /// reader, and the next deliveries should not).
    fn resize(
        &mut self,
        consumer: &amiquip::Consumer<'a>,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<Flow> {
        consumer.cancel().map_err(|e| explain(e, self.endpoint, "cancelling the consumer"))?;
        let rx = consumer.receiver();
        loop {
            match rx.recv_timeout(TICK) {
                Ok(ConsumerMessage::Delivery(d)) => {
                    if self.past_until(&d, limits, handler)? || !self.take(limits) {
                        // Left unacked: it goes back to the queue when the channel closes.
                        return self.finish(handler).map(|()| Flow::Done);
                    }
                    self.delivered(d, handler)?;
                }
                Ok(ConsumerMessage::ClientCancelled) => return Ok(Flow::Resize),
                Ok(other) => return Err(self.ended(other)),
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopped(limits) {
                        return self.finish(handler).map(|()| Flow::Done);
                    }
                    self.ack_pending(handler)?;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.lost()),
            }
        }
    }

    /// The prefetch the bodies seen so far ask for.
    fn wanted(&self) -> u16 {
        prefetch_for(self.max_prefetch, self.held_bytes, self.largest)
    }

    /// A signal or another worker's failure: stop.
    fn stopped(&mut self, limits: &ConsumeLimits<'_>) -> bool {
        let stop = limits.stop.load(Ordering::SeqCst) || limits.halt.load(Ordering::SeqCst);
        self.outcome.interrupted |= stop;
        stop
    }

    /// Claim one more delivery under --count (and no signal); false: leave it unacked.
    fn take(&mut self, limits: &ConsumeLimits<'_>) -> bool {
        if self.stopped(limits) {
            return false;
        }
        let taken = limits.claimed.fetch_add(1, Ordering::SeqCst) + 1;
        // Another worker may have taken the last one.
        limits.count.is_none_or(|n| taken <= n)
    }

    fn lost(&self) -> Report {
        lost(format!(
            "lost the connection to {} while consuming (broker stopped, network cut or missed \
             heartbeats); unacked messages stay in the queue",
            self.endpoint.masked()
        ))
    }

    fn run(
        &mut self,
        rx: &Receiver<ConsumerMessage>,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<Flow> {
        let mut last_seen = Instant::now();
        loop {
            if self.stopped(limits) {
                break;
            }
            if limits.count.is_some_and(|n| limits.claimed.load(Ordering::SeqCst) >= n) {
                break;
            }
            if self.wanted() != self.prefetch {
                return Ok(Flow::Resize);
            }
            let wait = match limits.idle {
                Some(idle) => match idle.checked_sub(last_seen.elapsed()) {
                    Some(left) => left.min(TICK),
                    None => break,
                },
                None => TICK,
            };
            // With stored-but-unacked deliveries, wait only briefly: a busy stream is acked
            // (and its sink flushed) in batches, a quiet one within a few milliseconds.
            let wait = if self.unacked > 0 { wait.min(ACK_DELAY) } else { wait };
            let wait = match handler.due() {
                Some(due) => wait.min(due.saturating_duration_since(Instant::now())),
                None => wait,
            };
            match rx.recv_timeout(wait) {
                Ok(ConsumerMessage::Delivery(d)) => {
                    if self.past_until(&d, limits, handler)? || !self.take(limits) {
                        // Left unacked: it goes back to the queue when the channel closes.
                        break;
                    }
                    self.delivered(d, handler)?;
                    // Idle means no message in hand and none arriving: the time spent
                    // handling this one (a model at work) is not idle.
                    last_seen = Instant::now();
                }
                Ok(other) => return Err(self.ended(other)),
                Err(RecvTimeoutError::Timeout) => {
                    self.ack_pending(handler)?;
                    if let Err(e) = handler.idle() {
                        self.halt.store(true, Ordering::SeqCst);
                        // What was handled before stays handled.
                        self.keep_handled(handler);
                        return Err(e);
                    }
                    // A batch that came due is handled now: ack it.
                    self.sync_held(handler);
                    self.ack_pending(handler)?;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.lost()),
            }
        }
        self.finish(handler).map(|()| Flow::Done)
    }

    /// Reading a stream to --until: whether `d` is past it (the run ends before it). When it
    /// cannot tell, the run stops with the reason, keeping what was handled before `d`
    /// (acked, and in the checkpoint).
    fn past_until(
        &mut self,
        d: &amiquip::Delivery,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<bool> {
        let offset = position(d);
        let end = match self.until {
            None => return Ok(false),
            Some(Until::Offset(n)) => n,
            Some(Until::Time(ms)) => match self.place_until(ms, offset, limits, handler)? {
                Some(n) => n,
                None => return Ok(false),
            },
        };
        let Some(o) = offset else {
            self.finish(handler)?;
            return Err(fatal("a message came without an x-stream-offset header".into()));
        };
        if o >= end {
            self.outcome.until = Some(o);
        }
        Ok(o >= end)
    }

    /// `--until TIME` not placed in the stream yet, a delivery at `offset` in hand. While our
    /// clock is before TIME (by [`super::stream::CLOCK_SKEW_MS`]), the delivery was stored
    /// before TIME: None, it is in the window, whatever `timestamp` its producer stamped
    /// (the broker stored it before it was received). Near TIME, wait until it is past on
    /// the broker's clock too (None if a signal stops the run meanwhile); then place TIME in
    /// the stream, as the probe places an end already past when the run starts, and end by
    /// that offset from now on (every delivery handled so far was stored before TIME, so
    /// before it). A stream that cannot place it stops the run (what was handled is kept):
    /// never a guess.
    fn place_until(
        &mut self,
        ms: u64,
        offset: Option<u64>,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<Option<u64>> {
        loop {
            match Clock::at(now_ms(), ms) {
                Clock::Before => return Ok(None),
                Clock::Past => break,
                Clock::Near if self.stopped(limits) => return Ok(None),
                Clock::Near => std::thread::sleep(TICK),
            }
        }
        let placed = offset
            .map_or(Ok(None), |o| super::probe::place_until(self.session, self.queue, ms, Some(o)));
        match placed {
            Ok(Some(n)) => {
                self.until = Some(Until::Offset(n));
                Ok(Some(n))
            }
            Ok(None) => {
                self.finish(handler)?;
                Err(fatal(format!(
                    "cannot place --until in stream '{}': its clock has passed the time, but the \
                     broker sent nothing at or after it nor from the stream's last chunk; what \
                     was read before is kept; run again, or give --until offset:N",
                    self.queue
                )))
            }
            Err(e) => {
                // A lost connection: the run reconnects and places it again.
                let _ = self.finish(handler);
                Err(e)
            }
        }
    }

    fn delivered(&mut self, mut d: amiquip::Delivery, handler: &mut dyn Handler) -> Result<()> {
        self.outcome.received += 1;
        crate::metrics::received();
        let size = d.body.len() as u64;
        self.largest = Some(self.largest.map_or(size, |l| l.max(size)));
        let offset = match self.stream {
            Some(_) => position(&d),
            None => None,
        };
        if let Some(o) = offset {
            if let Some(asked) = self.expect.take() {
                if o < asked
                    && let Some(read) = self.stream
                {
                    let why = format!("its next message is offset {o}");
                    return Err(fatal(refusal(self.queue, read, asked.max(1), &why)));
                }
                self.outcome.dropped += o - asked;
            }
            self.cursor.first.get_or_insert(o);
            self.cursor.received = Some(o);
        }
        let checkpointed = self.stream.is_some_and(|s| s.checkpoint.is_some());
        let place = offset.map(|o| (o, checkpointed.then(|| identity(&d))));
        if let (None, Some((o, Some(id)))) = (&self.anchor, &place) {
            self.anchor = Some(Anchor { offset: *o, id: id.clone() });
        }
        let mut ours = delivery(&mut d);
        let mut result = handler.handle(&mut ours);
        if self.stream.is_some()
            && let Ok(Disposition::Reject(_)) = result
        {
            // A stream takes no reject (RabbitMQ closes the connection for one), and drops
            // nothing anyway: the message is passed over, counted, and stays in the stream.
            self.outcome.rejected += 1;
            result = Ok(Disposition::Ack);
        }
        if matches!(result, Ok(Disposition::Ack)) {
            self.held.push_back((d, place));
            self.sync_held(handler);
            // Before a change of prefetch the ack waits: a sink may block in flush (a
            // pipe's reader), and the next deliveries should not wait for it.
            if self.unacked >= self.ack_every && self.wanted() == self.prefetch {
                self.ack_pending(handler)?;
            }
            return Ok(());
        }
        // What the handler still holds (or failed to handle) is older than `d`: it comes
        // back with it (the nack below), or when the channel closes.
        self.sync_held(handler);
        match result {
            Ok(Disposition::Reject(_)) => {
                self.ack_pending(handler)?;
                d.reject(self.channel, false)
                    .map_err(|e| explain(e, self.endpoint, "rejecting"))?;
                self.outcome.rejected += 1;
                crate::metrics::released(1);
                Ok(())
            }
            Err(e) => {
                self.halt.store(true, Ordering::SeqCst);
                self.keep_handled(handler);
                if self.stream.is_none() {
                    // (A stream keeps it anyway, and takes no nack.)
                    let _ = d.nack(self.channel, true);
                }
                Err(e)
            }
            Ok(Disposition::Ack) => Ok(()),
        }
    }

    /// The run stops on an error: what was handled is acked (once durable), the rest stays.
    fn keep_handled(&mut self, handler: &mut dyn Handler) {
        let _ = handler.confirm();
        self.sync_held(handler);
        let _ = self.ack_pending(handler);
    }

    /// The deliveries the handler no longer holds are handled: the newest becomes `last`.
    fn sync_held(&mut self, handler: &dyn Handler) {
        while self.held.len() > handler.held() {
            if let Some(d) = self.held.pop_front() {
                self.last = Some(d);
                self.unacked += 1;
            }
        }
    }

    /// The run ends: what the handler holds is handled now (unless a signal or another
    /// worker's failure stopped the run: then it stays unacked, and comes again), and
    /// everything handled is acked.
    fn finish(&mut self, handler: &mut dyn Handler) -> Result<()> {
        if !self.outcome.interrupted && !self.held.is_empty() {
            let completed = handler.complete();
            self.sync_held(handler);
            if let Err(e) = completed {
                self.halt.store(true, Ordering::SeqCst);
                self.keep_handled(handler);
                return Err(e);
            }
        }
        let confirmed = handler.confirm();
        self.sync_held(handler);
        if let Err(e) = confirmed {
            self.halt.store(true, Ordering::SeqCst);
            return Err(e);
        }
        self.ack_pending(handler)
    }

    fn ack_pending(&mut self, handler: &mut dyn Handler) -> Result<()> {
        let Some((last, place)) = self.last.take() else {
            return Ok(());
        };
        let mark = match &place {
            Some((_, Some(id))) => Some(Identity { id: id.clone(), anchor: self.anchor.clone() }),
            _ => None,
        };
        if let Some((o, _)) = &place {
            handler.covers(*o, mark.as_ref());
        }
        handler.flush()?;
        last.ack_multiple(self.channel).map_err(|e| explain(e, self.endpoint, "acking"))?;
        self.outcome.acked += self.unacked;
        crate::metrics::acked(self.unacked);
        self.unacked = 0;
        if let Some((o, _)) = place {
            self.cursor.acked = Some(o);
            if let (Some(checkpoint), Some(mark)) =
                (self.stream.and_then(|s| s.checkpoint.as_ref()), &mark)
            {
                checkpoint.save(o, mark)?;
            }
        }
        Ok(())
    }

    fn ended(&self, msg: ConsumerMessage) -> Report {
        match msg {
            ConsumerMessage::ServerCancelled => self.cancelled(),
            ConsumerMessage::ServerClosedChannel(e)
            | ConsumerMessage::ServerClosedConnection(e) => explain(e, self.endpoint, "consuming"),
            ConsumerMessage::ClientCancelled
            | ConsumerMessage::ClientClosedChannel
            | ConsumerMessage::ClientClosedConnection => fatal("the consumer was closed".into()),
            ConsumerMessage::Delivery(_) => fatal("unexpected delivery".into()),
        }
    }

    /// The broker cancelled the consumer: the queue was deleted (fatal), or its node went
    /// down (a classic queue on a cluster: retry until it is back). A passive declare tells
    /// which.
    fn cancelled(&self) -> Report {
        match self.channel.queue_declare_passive(self.queue) {
            Ok(_) => close_and_retry(format!(
                "the broker cancelled the consumer of '{}', which still exists",
                self.queue
            )),
            Err(amiquip::Error::ServerClosedChannel { code: 404, message, .. })
                if no_such_queue(&message) =>
            {
                fatal(format!(
                    "the broker cancelled the consumer: the queue was deleted while consuming \
                     ({message})"
                ))
            }
            Err(amiquip::Error::ServerClosedChannel { code: 404, message, .. }) => {
                close_and_retry(unavailable(self.queue, &message, self.stream.is_some()))
            }
            Err(e) => explain(e, self.endpoint, "checking the queue after the broker cancelled"),
        }
    }
}

/// Longest a stored delivery waits for its ack when no further delivery arrives.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Consume until a limit is reached, the stop flag is set, or the connection is lost for
/// longer than `retry.retry_for`. After a reconnect, deliveries that were handled but not yet
/// acked come again: handlers drop them by message id.
pub fn consume(
    endpoints: &[Endpoint],
    spec: &QueueSpec,
    prefetch: u16,
    limits: &ConsumeLimits<'_>,
    handler: &mut dyn Handler,
    retry: Retry,
    on_event: &dyn Fn(LinkEvent),
) -> Result<(ConsumeOutcome, Result<()>)> {
    // The first connection and declare are checked inputs: failing them stops the run at once.
    let (mut session, mut current) = Session::open_first(endpoints)?;
    let mut connected = crate::metrics::Up::connected(true);
    let info = session.declare_queue(spec)?;
    on_event(LinkEvent::Queued(info.messages));
    let mut total = ConsumeOutcome::default();
    let mut largest = None;
    let mut cursor = Cursor::default();
    // Reading a stream: where it starts and stops, once probed (again after a reconnect
    // when a probe did not complete).
    let mut plan: Option<Plan> = None;
    let mut probes = 0;
    loop {
        let left = ConsumeLimits {
            count: limits.count,
            idle: limits.idle,
            stop: limits.stop,
            claimed: limits.claimed,
            halt: limits.halt,
            held_bytes: limits.held_bytes,
            stream: limits.stream,
        };
        let probed = match limits.stream {
            Some(read) if plan.is_none() => {
                probes += 1;
                probe_and_record(&mut session, &spec.name, read).map(|p| plan = Some(p))
            }
            _ => Ok(()),
        };
        let result = probed.and_then(|()| {
            let at = Position { largest: &mut largest, cursor: &mut cursor, plan: &mut plan };
            let (outcome, result) =
                consume_once(&mut session, &spec.name, prefetch, &left, handler, at);
            total.add(outcome);
            result
        });
        let Err(error) = result else {
            let _ = session.close();
            return Ok((total, Ok(())));
        };
        let error = discard(session, error, true);
        connected.set(false);
        // Whatever the handler still holds was not acked: it comes again.
        handler.dropped();
        if limits.stop.load(Ordering::SeqCst) {
            return Ok((total, Err(error)));
        }
        if limits.stream.is_some() && plan.is_none() && probes >= PROBE_TRIES {
            let why = format!(
                "could not check stream '{}' before reading it ({probes} tries, each on a new \
                 connection); run again once the connection to the broker is steady",
                spec.name
            );
            return Ok((total, Err(error.wrap_err(why))));
        }
        let reopened =
            reconnect(endpoints, &mut current, retry, limits.stop, error, on_event, |ep| {
                let mut s = Session::open(ep, UNWINDOWED_WRITE_BUFFER)?;
                s.declare_queue(spec)?;
                Ok(s)
            });
        match reopened {
            Ok(s) => {
                session = s;
                connected.set(true);
            }
            Err(e) => return Ok((total, Err(e))),
        }
    }
}

impl ConsumeOutcome {
    fn add(&mut self, o: ConsumeOutcome) {
        self.received += o.received;
        self.acked += o.acked;
        self.rejected += o.rejected;
        self.interrupted |= o.interrupted;
        self.until = self.until.or(o.until);
        self.dropped += o.dropped;
    }
}

/// How many connections a stream's probe is tried on before the run gives up.
const PROBE_TRIES: u32 = 3;

/// Probe the stream a run reads; a first run then saves where it starts (only now: a start
/// the probe refuses is never kept, so the corrected --offset applies on the next run).
fn probe_and_record(session: &mut Session, queue: &str, read: &StreamRead) -> Result<Plan> {
    let plan = super::probe::plan(session, queue, read)?;
    if read.resumed_from.is_none()
        && let Some(checkpoint) = &read.checkpoint
    {
        checkpoint.save_start(plan.start)?;
    }
    Ok(plan)
}

/// What a worker keeps across reconnects: the largest body seen, where it is in a stream,
/// and the stream's probed plan.
struct Position<'p> {
    largest: &'p mut Option<u64>,
    cursor: &'p mut Cursor,
    plan: &'p mut Option<Plan>,
}

/// One consumer on one channel of `session` (re-consumed when the prefetch changes);
/// `at` is kept across reconnects.
fn consume_once(
    session: &mut Session,
    queue: &str,
    prefetch: u16,
    limits: &ConsumeLimits<'_>,
    handler: &mut dyn Handler,
    at: Position<'_>,
) -> (ConsumeOutcome, Result<()>) {
    let ep = session.endpoint().clone();
    let channel = match session.channel() {
        Ok(c) => c,
        Err(e) => return (ConsumeOutcome::default(), Err(e)),
    };
    let plan = at.plan.clone();
    let mut state = ConsumeState {
        channel: &channel,
        session,
        endpoint: &ep,
        queue,
        last: None,
        held: std::collections::VecDeque::new(),
        halt: limits.halt,
        unacked: 0,
        ack_every: 1,
        outcome: ConsumeOutcome::default(),
        max_prefetch: prefetch,
        prefetch: 0,
        largest: *at.largest,
        held_bytes: limits.held_bytes,
        stream: limits.stream,
        cursor: *at.cursor,
        expect: None,
        start: match (limits.stream, &plan) {
            (Some(_), Some(plan)) => at.cursor.new_connection(plan.start),
            (Some(s), None) => at.cursor.new_connection(s.start),
            (None, _) => Offset::Next,
        },
        until: plan.as_ref().map_or_else(|| limits.stream.and_then(|s| s.until), |p| p.until),
        anchor: plan.and_then(|p| p.anchor),
    };
    let result = state.consume(limits, handler);
    let outcome = state.outcome;
    // Handled but not acked (the connection was lost, or the run stopped): back to the queue.
    crate::metrics::released(outcome.received.saturating_sub(outcome.acked + outcome.rejected));
    *at.largest = state.largest;
    *at.cursor = state.cursor;
    // An --until time placed meanwhile stays placed after a reconnect.
    if let Some(p) = at.plan.as_mut() {
        p.until = state.until;
        p.anchor.clone_from(&state.anchor);
    }
    let keep_alive = match result {
        Ok(rx) => rx,
        Err(e) => {
            // Nothing more is sent on this channel (see ConsumeState::consume).
            std::mem::forget(channel);
            return (outcome, Err(e));
        }
    };
    let closed = channel.close().map_err(|e| explain(e, &ep, "closing the channel"));
    drop(keep_alive);
    (outcome, closed)
}

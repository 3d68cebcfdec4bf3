//! The consumer loop: deliveries to a [`Handler`], acks only after the handler made them
//! durable, and reconnects after a lost connection.

use super::props::delivery;
use super::retry::{LinkEvent, Retry, reconnect};
use super::session::Session;
use super::topology::{QueueSpec, no_such_queue, unavailable};
use super::{Endpoint, LinkError, TICK, discard, explain, fatal, lost};
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
    /// Deliveries taken so far, shared by every worker so `count` is a total.
    pub claimed: &'a AtomicU64,
    /// Set when another worker failed: stop like on a signal.
    pub halt: &'a AtomicBool,
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
    queue: &'a str,
    /// The newest handled delivery not yet acked: one `ack_multiple` covers all before it.
    last: Option<amiquip::Delivery>,
    unacked: u64,
    ack_every: u64,
    outcome: ConsumeOutcome,
}

impl ConsumeState<'_> {
    fn run(
        &mut self,
        rx: &Receiver<ConsumerMessage>,
        limits: &ConsumeLimits<'_>,
        handler: &mut dyn Handler,
    ) -> Result<()> {
        let mut last_seen = Instant::now();
        loop {
            if limits.stop.load(Ordering::SeqCst) || limits.halt.load(Ordering::SeqCst) {
                self.outcome.interrupted = true;
                break;
            }
            if limits.count.is_some_and(|n| limits.claimed.load(Ordering::SeqCst) >= n) {
                break;
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
            match rx.recv_timeout(wait) {
                Ok(ConsumerMessage::Delivery(d)) => {
                    let taken = limits.claimed.fetch_add(1, Ordering::SeqCst) + 1;
                    if limits.count.is_some_and(|n| taken > n) {
                        // Another worker took the last one: leave this delivery unacked; it
                        // goes back to the queue when the channel closes.
                        break;
                    }
                    last_seen = Instant::now();
                    self.delivered(d, handler)?;
                }
                Ok(other) => return Err(self.ended(other)),
                Err(RecvTimeoutError::Timeout) => self.ack_pending(handler)?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(lost(format!(
                        "lost the connection to {} while consuming (broker stopped, network cut \
                         or missed heartbeats); unacked messages stay in the queue",
                        self.endpoint.masked()
                    )));
                }
            }
        }
        self.ack_pending(handler)
    }

    fn delivered(&mut self, mut d: amiquip::Delivery, handler: &mut dyn Handler) -> Result<()> {
        self.outcome.received += 1;
        let ours = delivery(&mut d);
        match handler.handle(ours) {
            Ok(Disposition::Ack) => {
                self.last = Some(d);
                self.unacked += 1;
                if self.unacked >= self.ack_every {
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
        last.ack_multiple(self.channel).map_err(|e| explain(e, self.endpoint, "acking"))?;
        self.outcome.acked += self.unacked;
        self.unacked = 0;
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
            Ok(_) => retry_on_healthy_link(format!(
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
                retry_on_healthy_link(unavailable(self.queue, &message))
            }
            Err(e) => explain(e, self.endpoint, "checking the queue after the broker cancelled"),
        }
    }
}

/// A retryable error on a connection that is itself fine: marked like an ended I/O loop so
/// that `discard` closes the connection (quick, as it is healthy) instead of leaking it.
fn retry_on_healthy_link(message: String) -> Report {
    Report::new(LinkError { retryable: true, io_loop_ended: true, message })
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
    session.declare_queue(spec)?;
    let mut total = ConsumeOutcome::default();
    loop {
        let left = ConsumeLimits {
            count: limits.count,
            idle: limits.idle,
            stop: limits.stop,
            claimed: limits.claimed,
            halt: limits.halt,
        };
        let (outcome, result) = consume_once(&mut session, &spec.name, prefetch, &left, handler);
        total.add(outcome);
        let Err(error) = result else {
            let _ = session.close();
            return Ok((total, Ok(())));
        };
        let error = discard(session, error, true);
        if limits.stop.load(Ordering::SeqCst) {
            return Ok((total, Err(error)));
        }
        let reopened =
            reconnect(endpoints, &mut current, retry, limits.stop, error, on_event, |ep| {
                let mut s = Session::open(ep)?;
                s.declare_queue(spec)?;
                Ok(s)
            });
        match reopened {
            Ok(s) => session = s,
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
    }
}

/// One consumer on one channel of `session`.
fn consume_once(
    session: &mut Session,
    queue: &str,
    prefetch: u16,
    limits: &ConsumeLimits<'_>,
    handler: &mut dyn Handler,
) -> (ConsumeOutcome, Result<()>) {
    let ep = session.endpoint().clone();
    let channel = match session.channel() {
        Ok(c) => c,
        Err(e) => return (ConsumeOutcome::default(), Err(e)),
    };
    if let Err(e) = channel.qos(0, prefetch, false) {
        return (ConsumeOutcome::default(), Err(explain(e, &ep, "setting QoS")));
    }
    let consumer = match channel.basic_consume(queue, ConsumerOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            return (ConsumeOutcome::default(), Err(explain(e, &ep, "starting the consumer")));
        }
    };
    let mut state = ConsumeState {
        channel: &channel,
        endpoint: &ep,
        queue,
        last: None,
        unacked: 0,
        ack_every: u64::from(prefetch / 2).max(1),
        outcome: ConsumeOutcome::default(),
    };
    let result = state.run(consumer.receiver(), limits, handler);
    let outcome = state.outcome;
    if result.is_err() {
        // In-flight deliveries are dropped, not acked: after a reconnect the same channel id
        // could receive the ack and close with "unknown delivery tag".
        std::mem::forget(consumer);
        std::mem::forget(channel);
        return (outcome, result);
    }
    // amiquip answers basic.cancel to us BEFORE it tells the consumer's receiver; if that
    // receiver is gone by then, its I/O thread dies (EventLoopClientDropped). Keep a clone
    // alive until the channel close round trip proves the I/O thread is past it.
    let keep_alive = consumer.receiver().clone();
    let _ = consumer.cancel();
    drop(consumer);
    let closed = channel.close().map_err(|e| explain(e, &ep, "closing the channel"));
    drop(keep_alive);
    (outcome, closed)
}

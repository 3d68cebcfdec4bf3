//! The failed queue around a consumer's handler.

use super::{CountingHandler, link_events};
use crate::amqp::{Disposition, Handler, Identity, Producer, QueueSpec};
use crate::codec::{Delivery, failed_copy, header_text, unique_id};
use crate::config::{ConsumeConfig, Global};
use crate::output::Reporter;
use color_eyre::eyre::{Result, WrapErr, eyre};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// One worker's handler with the failed queue around it: a message the handler cannot use
/// is published to the failed queue as it came, with the reason, and acked only once the
/// broker confirmed that copy (the consumer flushes before it acks). Without a failed
/// queue (--no-failed-queue) it is rejected without requeue. The failed queue's connection
/// is opened (and the queue declared) at the first failed message: a run with none has no
/// idle connection to lose, and declares no queue it does not need.
pub(super) struct Keeper<'h> {
    inner: &'h mut (dyn CountingHandler + Send),
    failed: Option<FailedQueue<'h>>,
    reporter: Reporter,
}

/// Where a worker's failed messages go.
struct FailedQueue<'h> {
    spec: &'h QueueSpec,
    global: &'h Global,
    stop: Arc<AtomicBool>,
    producer: Option<Producer>,
}

impl FailedQueue<'_> {
    fn producer(&mut self, reporter: &Reporter) -> Result<&mut Producer> {
        let producer = match self.producer.take() {
            Some(p) => p,
            None => Producer::open_many(
                &self.global.endpoints,
                std::slice::from_ref(self.spec),
                crate::config::default_publisher(),
                self.global.retry,
                Arc::clone(&self.stop),
                Box::new(link_events(reporter.clone())),
            )
            .wrap_err_with(|| {
                format!(
                    "cannot send failed messages to {q}; name another queue with \
                     --failed-queue NAME (or reject them with --no-failed-queue); the message \
                     stays in the queue",
                    q = self.spec.name
                )
            })?,
        };
        Ok(self.producer.insert(producer))
    }
}

impl<'h> Keeper<'h> {
    pub(super) fn new(
        global: &'h Global,
        cfg: &'h ConsumeConfig,
        stop: &Arc<AtomicBool>,
        inner: &'h mut (dyn CountingHandler + Send),
        reporter: &Reporter,
    ) -> Keeper<'h> {
        let failed = cfg.failed.as_ref().map(|spec| FailedQueue {
            spec,
            global,
            stop: Arc::clone(stop),
            producer: None,
        });
        Keeper { inner, failed, reporter: reporter.clone() }
    }

    /// How many copies the broker confirmed, and an error if any was not. (Acks wait for
    /// the confirms, so that happens only when the run stopped early; a connection lost
    /// after its last confirm is no loss.)
    pub(super) fn close(self) -> (u64, Result<()>) {
        let Some(producer) = self.failed.and_then(|f| f.producer) else { return (0, Ok(())) };
        let (report, _closed) = producer.finish();
        let sent = report.confirmed;
        match report.unconfirmed.len() {
            0 => (sent, Ok(())),
            n => (
                sent,
                Err(eyre!("{n} failed messages were not confirmed; their originals stay queued")),
            ),
        }
    }
}

impl Handler for Keeper<'_> {
    fn handle(&mut self, d: &mut Delivery) -> Result<Disposition> {
        let why = match self.inner.handle(d)? {
            Disposition::Reject(why) => why,
            stored => return Ok(stored),
        };
        crate::metrics::failed();
        let Some(failed) = &mut self.failed else {
            self.reporter.warn(&format!("rejected message {}: {why}", d.id_or_hash()));
            return Ok(Disposition::Reject(why));
        };
        // Without a message id the copy gets a fresh one (never merged with another's).
        let id = d.assigned_id().map_or_else(unique_id, str::to_string);
        let queue = failed.spec.name.clone();
        self.reporter
            .warn(&format!("message {id} failed ({}); sending it to {queue}", header_text(&why)));
        let body = std::mem::take(&mut d.body);
        failed.producer(&self.reporter)?.publish(failed_copy(d, body, &id, &why, &queue))?;
        Ok(Disposition::Ack)
    }

    /// The failed copies are confirmed first, then the sink is made durable: a sink that
    /// keeps a stream checkpoint with its data (`--checkpoint sqlite`) must not move it past
    /// a message whose copy the broker has not confirmed.
    fn flush(&mut self) -> Result<()> {
        if let Some(producer) = self.failed.as_mut().and_then(|f| f.producer.as_mut())
            && let Some((label, why)) = producer.flush()?.into_iter().next()
        {
            return Err(eyre!(
                "{label} was refused by the broker ({why}); stopping without acking it (it \
                 stays in the queue)"
            ));
        }
        self.inner.flush()
    }

    fn covers(&mut self, offset: u64, mark: Option<&Identity>) {
        self.inner.covers(offset, mark);
    }

    fn idle(&mut self) -> Result<()> {
        self.inner.idle()?;
        // The count the throttle held back, shown now that nothing is arriving.
        self.reporter.catch_up(|| self.inner.counts().status(self.reporter.elapsed()));
        Ok(())
    }
}

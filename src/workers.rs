//! The worker pool every consumer runs on (`consume`, and `pipe`/`serve` through their
//! stage): N competing consumers on threads, each with its own connection, channel and
//! prefetch, and the dedupe of redelivered message ids they each keep.

use crate::amqp::{self, ConsumeLimits, ConsumeOutcome, Handler};
use crate::codec::Delivery;
use crate::config::Global;
use crate::output::{Reporter, link_events};
use color_eyre::eyre::{Result, eyre};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};

/// What the workers of [`drive`] consume, and when they stop.
pub(crate) struct Workload<'a> {
    pub queue: &'a amqp::QueueSpec,
    pub prefetch: u16,
    pub count: Option<u64>,
    pub idle: Option<std::time::Duration>,
    /// The queue is a stream: where to start and stop.
    pub stream: Option<&'a amqp::StreamRead>,
}

/// Run one consumer per handler, each on its own thread, connection and channel, until the
/// shared --count, --idle-timeout, a signal, or one worker's failure (which stops the
/// others). Returns the summed outcome and the first error.
pub(crate) fn drive(
    global: &Global,
    work: &Workload<'_>,
    stop: &AtomicBool,
    handlers: &mut [&mut (dyn Handler + Send)],
    reporter: &Reporter,
) -> Result<(ConsumeOutcome, Option<color_eyre::eyre::Report>)> {
    let (claimed, halt) = (AtomicU64::new(0), AtomicBool::new(false));
    crate::metrics::expect_workers(handlers.len());
    // --prefetch-bytes bounds the process: each worker holds its share.
    let workers = u64::try_from(handlers.len()).unwrap_or(u64::MAX).max(1);
    let limits = ConsumeLimits {
        count: work.count,
        idle: work.idle,
        stop,
        claimed: &claimed,
        halt: &halt,
        held_bytes: (global.prefetch_bytes / workers).max(1),
        stream: work.stream,
    };
    let results: Vec<Result<(ConsumeOutcome, Result<()>)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = handlers
            .iter_mut()
            .map(|h| {
                let (limits, reporter, halt) = (&limits, reporter.clone(), &halt);
                scope.spawn(move || {
                    let on_event = link_events(reporter);
                    let r = amqp::consume(
                        &global.endpoints,
                        work.queue,
                        work.prefetch,
                        limits,
                        &mut **h,
                        global.retry,
                        &on_event,
                    );
                    if !matches!(r, Ok((_, Ok(())))) {
                        // One worker failed: the others stop too, instead of waiting forever.
                        halt.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err(eyre!("a consumer worker panicked"))))
            .collect()
    });
    reporter.finish();
    let mut outcome = ConsumeOutcome::default();
    let mut error = None;
    for r in results {
        let (o, res) = r?;
        outcome.rejected += o.rejected;
        outcome.received += o.received;
        outcome.acked += o.acked;
        outcome.until = outcome.until.or(o.until);
        outcome.dropped += o.dropped;
        if let Err(e) = res {
            error.get_or_insert(e);
        }
    }
    Ok((outcome, error))
}

/// Message ids handled recently, to drop redeliveries and re-publishes (bounded memory: the
/// oldest ids are forgotten first).
pub(crate) struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

/// Ids remembered: at ~100 bytes each, about 10 MB.
const SEEN_CAPACITY: usize = 100_000;

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds { set: HashSet::new(), order: VecDeque::new(), capacity: SEEN_CAPACITY }
    }
}

impl SeenIds {
    /// Whether `d` was handled already; never for a delivery without a message id.
    pub(crate) fn contains(&self, d: &Delivery) -> bool {
        d.assigned_id().is_some_and(|id| self.set.contains(id))
    }

    /// Forget `d`'s id: it was not handled after all (it went to the failed queue), so the
    /// same id coming back (`failed requeue`) is work to do, not a duplicate. (Its place in
    /// the age order stays until it ages out: O(1), and the memory bound holds.)
    pub(crate) fn forget(&mut self, d: &Delivery) {
        if let Some(id) = d.assigned_id() {
            self.set.remove(id);
        }
    }

    /// Forget the message id `id` (see [`SeenIds::forget`]).
    pub(crate) fn forget_id(&mut self, id: &str) {
        self.set.remove(id);
    }

    pub(crate) fn insert(&mut self, d: &Delivery) {
        let Some(id) = d.assigned_id() else {
            return;
        };
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Delivery {
        Delivery { message_id: Some(id.into()), ..Delivery::default() }
    }

    #[test]
    fn seen_ids_forget_the_oldest_beyond_capacity() {
        let mut seen = SeenIds { capacity: 2, ..SeenIds::default() };
        for id in ["a", "b", "c"] {
            seen.insert(&with_id(id));
        }
        assert!(!seen.contains(&with_id("a")));
        assert!(seen.contains(&with_id("b")) && seen.contains(&with_id("c")));
        assert!(!seen.contains(&Delivery::default()), "no id, never a duplicate");
    }

    #[test]
    fn a_forgotten_id_is_new_again() {
        let mut seen = SeenIds { capacity: 2, ..SeenIds::default() };
        seen.insert(&with_id("a"));
        seen.forget(&with_id("a"));
        assert!(!seen.contains(&with_id("a")));
        seen.insert(&with_id("a"));
        assert!(seen.contains(&with_id("a")), "seen again once handled");
        for id in ["b", "c", "d"] {
            seen.insert(&with_id(id));
        }
        assert!(seen.set.len() <= 2, "still bounded");
    }
}

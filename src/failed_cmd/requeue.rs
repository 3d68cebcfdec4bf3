//! `failed requeue`: each failed message is taken (held unacked), published to the queue it
//! came from as its producer sent it, and acked in the failed queue only once the broker
//! confirmed the copy. A stop at any point (a signal, a lost connection, SIGKILL) leaves
//! every message in one queue or the other, at worst in both.
//!
//! The run takes at most the messages the failed queue held when it started: a message that
//! fails again while this runs comes back behind them and is not taken a second time.

use super::show::printable;
use super::{Done, no_failed_queue};
use crate::amqp::{Browser, DELIVERY_COUNT, Mark, Producer};
use crate::codec::{ADDED_HEADERS, DROPPED_HEADER, requeued_copy, unique_id};
use crate::config::{Global, default_publisher};
use crate::output::{Progress, Reporter, link_events};
use color_eyre::eyre::{Report, Result, eyre};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Headers a requeued copy is published without: the failure (see
/// [`crate::codec::ADDED_HEADERS`]) and the failed queue's own delivery count (a quorum
/// queue's; the queue it goes to counts afresh).
const LEAVE_OFF: [&str; 3] = [ADDED_HEADERS[0], ADDED_HEADERS[1], DELIVERY_COUNT];

/// Copies published, not yet acked in the failed queue, before the producer is flushed.
const BATCH: usize = 512;

/// Where and how many.
struct Move<'a> {
    from: &'a str,
    to: &'a str,
    /// The most messages taken.
    limit: u64,
    /// Confirmed copies whose failed message was acked.
    moved: u64,
    /// Published, waiting for confirms: the label of each copy and what acks its original.
    batch: Vec<(String, Mark)>,
}

/// Move up to `count` messages (default: those in `from` now) from `from` to `to`.
pub(super) fn run(
    global: &Global,
    from: &str,
    to: &str,
    count: Option<u64>,
    stop: &Arc<AtomicBool>,
) -> Result<Done> {
    let Some((mut browser, info)) = Browser::open(&global.endpoints, from, &LEAVE_OFF)? else {
        return Err(no_failed_queue(from));
    };
    if browser.look_up(to)?.is_none() {
        let _ = browser.release();
        return Err(eyre!(
            "queue '{to}' does not exist, so the messages of {from} cannot go back to it; start \
             the consumer that declares it (e.g. `mqdemo consume tabular --queue {to}`), or name \
             another queue with --to QUEUE"
        ));
    }
    let depth = u64::from(info.messages);
    let limit = count.map_or(depth, |c| c.min(depth));
    let mut mv = Move { from, to, limit, moved: 0, batch: Vec::new() };
    let reporter = Reporter::new(!global.quiet, Progress::Open, &format!("{from} → {to}"));
    let error = match limit {
        // Nothing to move, as far as the depth says; one look still finds a queue that
        // cannot be read a message at a time (a stream reports depth 0).
        0 => browser.get().err(),
        _ => move_all(global, &mut browser, &mut mv, stop, &reporter).err(),
    };
    reporter.finish();
    // Whatever was taken and not acked (refused, or unconfirmed when the run stopped) goes
    // back where it was.
    let released = browser.release();
    if let (None, Err(e)) = (&error, released) {
        reporter.warn(&format!(
            "could not release the messages not requeued ({e}); the broker puts them back in \
             {from} as the connection closes"
        ));
    }
    Ok(Done {
        summary: summary(&mv, depth, stop.load(Ordering::SeqCst)),
        clean: error.is_none(),
        error,
    })
}

/// The summary line.
fn summary(mv: &Move<'_>, depth: u64, stopped: bool) -> String {
    if depth == 0 {
        return format!("mqdemo: no failed messages in {}", mv.from);
    }
    let left = depth.saturating_sub(mv.moved);
    let tail = match left {
        0 => String::new(),
        n if stopped => format!("; stopped by a signal, {n} left in {}", mv.from),
        n => format!("; {n} left in {}", mv.from),
    };
    format!("mqdemo: requeued {} messages from {} to {}{tail}", mv.moved, mv.from, mv.to)
}

/// Take, publish and ack until the limit, an empty queue, a signal or an error; the batch
/// in flight is settled on the way out whatever stopped it.
fn move_all(
    global: &Global,
    browser: &mut Browser,
    mv: &mut Move<'_>,
    stop: &Arc<AtomicBool>,
    reporter: &Reporter,
) -> Result<()> {
    let mut producer = Producer::open_many(
        &global.endpoints,
        &[],
        default_publisher(),
        global.retry,
        Arc::clone(stop),
        Box::new(link_events(reporter.clone())),
    )?;
    let taken = take(browser, &mut producer, mv, stop, reporter);
    let settled = settle(browser, &mut producer, mv, reporter);
    let (_, finished) = producer.finish();
    taken.and(settled).and(finished)
}

fn take(
    browser: &mut Browser,
    producer: &mut Producer,
    mv: &mut Move<'_>,
    stop: &AtomicBool,
    reporter: &Reporter,
) -> Result<()> {
    let mut taken = 0;
    while taken < mv.limit && !stop.load(Ordering::SeqCst) {
        let Some(mut b) = browser.get()? else { break };
        taken += 1;
        let d = &mut b.delivery;
        // A message from elsewhere may have no id: it gets one of its own (never merged).
        let id = d.assigned_id().map_or_else(unique_id, str::to_string);
        // Named on a terminal: its control characters shown, never acted on.
        let shown = printable(&id);
        if let Some(n) = b.headers.get(DROPPED_HEADER) {
            let n = printable(&n.to_string());
            reporter.warn(&format!(
                "message {shown} lost {n} of its headers when it failed (they did not fit beside \
                 the reason); it is requeued without them"
            ));
        }
        let label = format!("failed message {shown} (#{taken} of {})", mv.from);
        let body = std::mem::take(&mut d.body);
        producer.publish(requeued_copy(d, body, &id, mv.to, label.clone()))?;
        mv.batch.push((label, b.mark));
        if mv.batch.len() >= BATCH {
            settle(browser, producer, mv, reporter)?;
        }
    }
    Ok(())
}

/// Wait for the confirms of the batch, then ack the failed message of each confirmed copy;
/// one the broker refused stays (it is released at the end) and stops the run.
fn settle(
    browser: &mut Browser,
    producer: &mut Producer,
    mv: &mut Move<'_>,
    reporter: &Reporter,
) -> Result<()> {
    if mv.batch.is_empty() {
        return Ok(());
    }
    let refused = producer.flush()?;
    for (label, mark) in mv.batch.drain(..) {
        if refused.iter().all(|(l, _)| *l != label) {
            browser.ack(mark)?;
            mv.moved += 1;
        }
    }
    let moved = mv.moved;
    reporter.status(|| format!("{moved} requeued"));
    match refused.into_iter().next() {
        None => Ok(()),
        Some((label, why)) => Err(refusal(&label, &why, mv)),
    }
}

fn refusal(label: &str, why: &str, mv: &Move<'_>) -> Report {
    eyre!(
        "{label} was refused by the broker on its way to {} ({why}); it stays in {}, and so \
         does every message after it",
        mv.to,
        mv.from
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(n: u64) -> Move<'static> {
        Move { from: "q.failed", to: "q", limit: 5, moved: n, batch: Vec::new() }
    }

    #[test]
    fn the_summary_says_how_many_moved_and_how_many_are_left() {
        assert_eq!(summary(&moved(5), 5, false), "mqdemo: requeued 5 messages from q.failed to q");
        assert_eq!(
            summary(&moved(2), 5, false),
            "mqdemo: requeued 2 messages from q.failed to q; 3 left in q.failed"
        );
        assert!(summary(&moved(2), 5, true).ends_with("; stopped by a signal, 3 left in q.failed"));
        assert_eq!(summary(&moved(0), 0, false), "mqdemo: no failed messages in q.failed");
    }
}

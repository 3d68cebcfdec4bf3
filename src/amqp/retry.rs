//! Reconnecting after a lost connection: exponential backoff with jitter, rotating through
//! every `--url`, for at most `--retry-for`.

use super::endpoint::Endpoint;
use super::error::is_retryable;
use color_eyre::eyre::{Report, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// First pause before reconnecting; doubles on every failure up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between reconnect attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// How hard to try after a failure.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Give up after this long without success (0 = fail at once).
    pub retry_for: Duration,
}

/// Something people should see about the link to the broker.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// The connection was lost; the next attempt comes after `delay`.
    Reconnecting {
        /// 1-based attempt number.
        attempt: u32,
        /// Why the last connection or attempt failed.
        reason: String,
        /// Pause before the attempt.
        delay: Duration,
    },
    /// Connected again to this (masked) URL; `resent` unconfirmed messages re-published.
    Reconnected {
        /// Masked URL.
        url: String,
    },
    /// A consumer's queue held this many ready messages when the run started.
    Queued(u32),
    /// The broker blocked publishing (memory or disk alarm).
    Blocked(String),
    /// The broker lifted the block.
    Unblocked,
    /// The queue is full (nacks): publishing pauses for `delay`.
    Backoff {
        /// Nacked messages waiting to be re-published.
        messages: usize,
        /// Pause before re-publishing.
        delay: Duration,
    },
}

/// `d` scaled by a pseudo-random factor in [0.5, 1.5), so many clients do not reconnect in
/// lock step.
pub(super) fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    d.mul_f64(0.5 + mixed as f64 / 1024.0)
}

/// Try `connect` on the endpoints in turn, starting after `*current`, until it succeeds,
/// a non-retryable error comes, `stop` is set, or `retry.retry_for` has passed since `lost`.
pub(super) fn reconnect<T>(
    endpoints: &[Endpoint],
    current: &mut usize,
    retry: Retry,
    stop: &AtomicBool,
    first_error: Report,
    on_event: &dyn Fn(LinkEvent),
    mut connect: impl FnMut(&Endpoint) -> Result<T>,
) -> Result<T> {
    if retry.retry_for.is_zero() || !is_retryable(&first_error) {
        return Err(first_error);
    }
    let deadline = Instant::now() + retry.retry_for;
    let mut delay = FIRST_DELAY;
    let mut last = first_error;
    for attempt in 1.. {
        if Instant::now() >= deadline {
            break;
        }
        let pause = jitter(delay).min(deadline.saturating_duration_since(Instant::now()));
        on_event(LinkEvent::Reconnecting { attempt, reason: last.to_string(), delay: pause });
        if !sleep_unless_stopped(pause, stop) {
            return Err(last.wrap_err("stopped by a signal while reconnecting"));
        }
        *current = (*current + 1) % endpoints.len().max(1);
        let ep = &endpoints[*current];
        match connect(ep) {
            Ok(t) => {
                crate::metrics::reconnected();
                on_event(LinkEvent::Reconnected { url: ep.masked().to_string() });
                return Ok(t);
            }
            Err(e) if is_retryable(&e) => last = e,
            Err(e) => return Err(e),
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
    Err(last.wrap_err(format!(
        "gave up reconnecting after {:.0} s (--retry-for)",
        retry.retry_for.as_secs_f64()
    )))
}

/// Sleep for `d`, waking early when `stop` is set; false if it was.
pub(crate) fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500), "{j:?}");
        }
    }

    #[test]
    fn sleep_returns_early_when_stopped() {
        let stop = AtomicBool::new(true);
        let started = Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(10), &stop));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

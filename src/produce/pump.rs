//! The pump: hands messages to the publisher, one at a time, honouring --interval and
//! signals, and counts what it skips.

use super::too_large;
use crate::amqp::Producer;
use crate::amqp::sleep_unless_stopped;
use crate::codec::Message;
use crate::output::{Reporter, rate_text};
use color_eyre::eyre::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Hands messages to the publisher, one at a time, honouring --interval and signals.
pub(super) struct Pump<'a> {
    pub(super) producer: Producer,
    pub(super) reporter: Reporter,
    pub(super) stop: &'a AtomicBool,
    pub(super) interval: Duration,
    pub(super) max_size: u64,
    pub(super) skipped: u64,
    pub(super) sent: u64,
    pub(super) started: Instant,
    /// "padded N short rows with nulls" (CSV), for the summary.
    pub(super) padded_note: String,
    /// --new-ids: mixed into every message id.
    pub(super) run_id: Option<String>,
}

impl Pump<'_> {
    /// Publish rows already taken from the input, even after a stop signal (no pause).
    pub(super) fn send_held(&mut self, msg: Message) -> Result<()> {
        if let Some(msg) = self.sendable(msg) {
            self.producer.publish(msg)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Publish; Ok(false) when the run should stop reading input (signal).
    pub(super) fn send(&mut self, msg: Message) -> Result<bool> {
        let Some(msg) = self.sendable(msg) else { return Ok(self.keep_going()) };
        if self.sent > 0 && !self.interval.is_zero() {
            self.pause();
        }
        if !self.keep_going() {
            return Ok(false);
        }
        self.producer.publish(msg)?;
        self.sent += 1;
        self.show_status();
        Ok(self.keep_going())
    }

    /// The message with its run's id (--new-ids, stdin); None when it is too large to send
    /// (skipped and named).
    fn sendable(&mut self, mut msg: Message) -> Option<Message> {
        if let Some(run) = &self.run_id {
            msg.message_id = crate::codec::run_message_id(run, &msg.message_id);
        }
        if msg.body.len() as u64 > self.max_size {
            self.skip(&msg.label, &too_large(msg.body.len() as u64, self.max_size));
            return None;
        }
        Some(msg)
    }

    /// "12,000 msgs (4.1 MiB) confirmed, 8,100 msg/s" on the progress bar.
    pub(super) fn show_status(&self) {
        self.reporter.status(|| {
            let (confirmed, bytes) = self.producer.confirmed();
            rate_text("confirmed", confirmed, bytes, self.started.elapsed())
        });
    }

    pub(super) fn skip(&mut self, what: &str, why: &str) {
        self.skipped += 1;
        self.reporter.warn(&format!("skipped {what}: {why}"));
    }

    pub(super) fn keep_going(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sleep for --interval, waking early on a signal.
    pub(super) fn pause(&self) {
        sleep_unless_stopped(self.interval, self.stop);
    }
}

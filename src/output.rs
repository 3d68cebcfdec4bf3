//! What people see on stderr: progress bars, warnings and the one-line summary.
//! stdout is data only and is never written here.

use crate::amqp::LinkEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// The run's voice on stderr: a progress bar (hidden when quiet or not a terminal) and
/// warnings printed above it.
#[derive(Clone)]
pub(crate) struct Reporter {
    bar: ProgressBar,
    /// When the status text was last set (updates are throttled).
    last_status: Cell<Option<Instant>>,
}

/// What the progress bar counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Progress {
    /// Bytes of an input file (length known).
    Bytes(u64),
    /// Items (files) with a known total.
    Items(u64),
    /// Nothing known about the total.
    Open,
}

impl Reporter {
    /// A reporter whose bar is drawn only when `show` and stderr is a terminal.
    pub(crate) fn new(show: bool, progress: Progress, what: &str) -> Reporter {
        if !show || !std::io::stderr().is_terminal() {
            return Reporter::hidden();
        }
        let (len, template) = match progress {
            Progress::Bytes(n) => (
                Some(n),
                "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} read, {msg} ETA {eta}",
            ),
            Progress::Items(n) => {
                (Some(n), "{spinner} {prefix} [{bar:30}] {pos}/{len} files, {msg} ETA {eta}")
            }
            Progress::Open => (None, "{spinner} {prefix} {msg} {elapsed}"),
        };
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Reporter { bar, last_status: Cell::new(None) }
    }

    /// A reporter that draws nothing (warnings still print).
    pub(crate) fn hidden() -> Reporter {
        Reporter { bar: ProgressBar::hidden(), last_status: Cell::new(None) }
    }

    /// Set the bar's position (bytes read or items done).
    pub(crate) fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Advance the bar.
    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Show a status such as "1234 msgs (2.1 MiB) confirmed"; `msg` is only called when
    /// the bar is visible and the last update is over 100 ms old.
    pub(crate) fn status(&self, msg: impl FnOnce() -> String) {
        if self.bar.is_hidden() {
            return;
        }
        let now = Instant::now();
        if self.last_status.get().is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        self.last_status.set(Some(now));
        self.bar.set_message(msg());
    }

    /// Show a state change ("blocked by broker") on the bar at once.
    pub(crate) fn status_now(&self, msg: String) {
        self.last_status.set(Some(Instant::now()));
        self.bar.set_message(msg);
    }

    /// Print a warning line above the bar.
    pub(crate) fn warn(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("mqdemo: {msg}"));
    }

    /// Remove the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Show reconnects, broker blocks and queue-full back-off on stderr and the progress bar.
pub(crate) fn link_events(reporter: Reporter) -> impl Fn(LinkEvent) {
    move |event| match event {
        LinkEvent::Reconnecting { attempt, reason, delay } => {
            reporter.warn(&format!(
                "{reason}; reconnecting in {:.1} s (attempt {attempt})",
                delay.as_secs_f64()
            ));
            reporter.status_now(format!("reconnecting (attempt {attempt})"));
        }
        LinkEvent::Reconnected { url } => {
            reporter.warn(&format!(
                "reconnected to {url}; resuming (unconfirmed messages are sent again)"
            ));
        }
        LinkEvent::Blocked(reason) => {
            reporter.warn(&format!(
                "blocked by broker ({reason}): publishing paused until the alarm clears"
            ));
            reporter.status_now(format!("blocked by broker ({reason})"));
        }
        LinkEvent::Unblocked => reporter.warn("unblocked by broker: publishing resumed"),
        LinkEvent::Backoff { messages, delay } => {
            if delay <= Duration::from_millis(100) {
                reporter.warn(&format!(
                    "the broker refused {messages} message(s) (nacked: queue full or its node \
                     unavailable; or returned: no such queue); backing off and retrying"
                ));
            }
            reporter.status_now(format!(
                "refused: retrying {messages} in {:.1} s",
                delay.as_secs_f64()
            ));
        }
    }
}

/// How a run (produce, consume, pipe, serve, request) ended: the summary always, and the
/// error that stopped it early (connection lost, confirm timeout, ...), if any.
pub(crate) struct Outcome {
    /// Counts for the summary line.
    pub summary: Summary,
    /// What stopped the run early, if anything.
    pub error: Option<color_eyre::eyre::Report>,
}

/// The one-line summary every run ends with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    /// "produced" / "consumed".
    pub verb: &'static str,
    /// Messages confirmed (producers) or handled (consumers).
    pub messages: u64,
    /// Body bytes of those messages.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Input items skipped (bad rows, non-images, too large).
    pub skipped: u64,
    /// Messages that failed (nacked, returned, unconfirmed, rejected).
    pub failed: u64,
    /// Where the failed messages went ("sent to q.failed"), if anywhere.
    pub failed_to: Option<String>,
    /// Extra, kind-specific counts ("written 6, duplicates 0").
    pub extra: String,
}

impl Summary {
    /// Messages per second.
    pub(crate) fn rate(&self) -> f64 {
        per_sec(self.messages as f64, self.elapsed)
    }

    /// The summary line.
    pub(crate) fn line(&self) -> String {
        let extra = if self.extra.is_empty() { String::new() } else { format!("{}; ", self.extra) };
        let failed_to = match &self.failed_to {
            Some(to) if self.failed > 0 => format!(" ({to})"),
            _ => String::new(),
        };
        format!(
            "mqdemo: {} {} messages ({}) in {:.3} s, {:.0} msg/s, {}/s; {}skipped {}, failed {}{}",
            self.verb,
            self.messages,
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64(),
            self.rate(),
            human_bytes(per_sec(self.bytes as f64, self.elapsed) as u64),
            extra,
            self.skipped,
            self.failed,
            failed_to
        )
    }

    /// True when nothing was skipped or failed.
    pub(crate) fn clean(&self) -> bool {
        self.skipped == 0 && self.failed == 0
    }
}

fn per_sec(n: f64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n / s } else { 0.0 }
}

/// 1536 -> "1.5 KiB".
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn summary_line_has_every_count() {
        let s = Summary {
            verb: "produced",
            messages: 300,
            bytes: 2048,
            elapsed: Duration::from_secs(2),
            skipped: 1,
            failed: 2,
            failed_to: None,
            extra: String::new(),
        };
        assert_eq!(
            s.line(),
            "mqdemo: produced 300 messages (2.0 KiB) in 2.000 s, 150 msg/s, 1.0 KiB/s; skipped 1, failed 2"
        );
        assert!(!s.clean());
        let s = Summary { failed_to: Some("sent to q.failed".into()), ..s };
        assert!(s.line().ends_with("failed 2 (sent to q.failed)"), "{}", s.line());
        let s = Summary { failed: 0, ..s };
        assert!(s.line().ends_with("failed 0"), "named only when something went there");
    }
}

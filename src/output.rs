//! What people see on stderr: progress bars, warnings and the one-line summary.
//! stdout is data only and is never written here.

use crate::amqp::LinkEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The run's voice on stderr: a progress bar (hidden when quiet or not a terminal) and
/// warnings printed above it.
#[derive(Clone)]
pub(crate) struct Reporter {
    bar: ProgressBar,
    /// When the status text was last set, shared by every clone (updates are throttled).
    throttle: Arc<Throttle>,
}

/// Status updates at most every 100 ms, and none lost for good: one dropped by the
/// throttle is made up at the next idle moment (`catch_up`), so the bar never stays on a
/// count older than what was done.
struct Throttle {
    start: Instant,
    /// Milliseconds after `start` of the last update; u64::MAX before the first.
    last_ms: AtomicU64,
    /// An update was dropped since the last one shown.
    pending: AtomicBool,
}

impl Throttle {
    fn new() -> Arc<Throttle> {
        Arc::new(Throttle {
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            pending: AtomicBool::new(false),
        })
    }

    /// Whether an update may be shown now (and if so, it is counted as shown).
    fn allow(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < 100 {
            self.pending.store(true, Ordering::Relaxed);
            return false;
        }
        self.shown(now);
        true
    }

    fn shown(&self, now_ms: u64) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
    }
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
        // The status comes last as {wide_msg}: cut to what the terminal has left, so the
        // line fits (80 columns: 40 or more for the status) and never wraps.
        let len = match progress {
            Progress::Bytes(n) | Progress::Items(n) => Some(n),
            Progress::Open => None,
        };
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(style(progress));
        bar.set_prefix(short(what, PREFIX_CHARS));
        bar.enable_steady_tick(Duration::from_millis(200));
        Reporter { bar, throttle: Throttle::new() }
    }

    /// A reporter that draws nothing (warnings still print).
    pub(crate) fn hidden() -> Reporter {
        Reporter { bar: ProgressBar::hidden(), throttle: Throttle::new() }
    }

    /// A consumer's queue held `messages` at the start: with no other total known, the bar
    /// counts down to them (more may arrive; the bar then stays full).
    pub(crate) fn queued(&self, messages: u32) {
        if self.bar.is_hidden() || self.bar.length().is_some() || messages == 0 {
            return;
        }
        let total = self.bar.position() + u64::from(messages);
        self.bar.set_length(total);
        self.bar.set_style(style(Progress::Items(total)));
    }

    /// Time since the reporter was made (for rates on the bar).
    pub(crate) fn elapsed(&self) -> Duration {
        self.throttle.start.elapsed()
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
        if self.bar.is_hidden() || !self.throttle.allow() {
            return;
        }
        self.bar.set_message(msg());
    }

    /// Show the status an update dropped by the throttle would have shown; called when
    /// the run is idle (no message for a moment), so the bar ends on the true count.
    pub(crate) fn catch_up(&self, msg: impl FnOnce() -> String) {
        if self.bar.is_hidden() || !self.throttle.pending.load(Ordering::Relaxed) {
            return;
        }
        self.throttle.shown(self.throttle.start.elapsed().as_millis() as u64);
        self.bar.set_message(msg());
    }

    /// Show a state change ("blocked by broker") on the bar at once.
    pub(crate) fn status_now(&self, msg: String) {
        self.throttle.shown(self.throttle.start.elapsed().as_millis() as u64);
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
        LinkEvent::Queued(messages) => reporter.queued(messages),
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
    /// Kind-specific counts by name ("rows", "duplicates"): on the line when not zero, in
    /// the JSON summary always.
    pub counts: Vec<(&'static str, u64)>,
    /// Text after the counts ("p50 3.1 ms, ..."), if any.
    pub note: String,
}

impl Summary {
    /// Messages per second.
    pub(crate) fn rate(&self) -> f64 {
        per_sec(self.messages as f64, self.elapsed)
    }

    /// The summary line: problems first, then what was done, then the counts that are not
    /// zero.
    pub(crate) fn line(&self) -> String {
        let mut problems = Vec::new();
        if self.failed > 0 {
            let to = self.failed_to.as_ref().map(|to| format!(" ({to})")).unwrap_or_default();
            problems.push(format!("failed {}{to}", self.failed));
        }
        if self.skipped > 0 {
            problems.push(format!("skipped {}", self.skipped));
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let mut parts = Vec::new();
        if !problems.is_empty() {
            parts.push(problems.join(", "));
        }
        parts.push(format!(
            "{} {} messages ({}) in {:.3} s, {:.0} msg/s, {}/s",
            self.verb,
            self.messages,
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64(),
            self.rate(),
            human_bytes(per_sec(self.bytes as f64, self.elapsed) as u64),
        ));
        if !counts.is_empty() {
            parts.push(counts.join(", "));
        }
        if !self.note.is_empty() {
            parts.push(self.note.clone());
        }
        format!("mqdemo: {}", parts.join("; "))
    }

    /// The counters as one JSON object (`--summary-json`), zeros included; `error` is the
    /// first line of what stopped the run, if anything did.
    pub(crate) fn json(&self, error: Option<&str>) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("ok".into(), (self.clean() && error.is_none()).into());
        obj.insert("verb".into(), self.verb.into());
        obj.insert("messages".into(), self.messages.into());
        obj.insert("bytes".into(), self.bytes.into());
        obj.insert("seconds".into(), self.elapsed.as_secs_f64().into());
        obj.insert("messages_per_second".into(), self.rate().into());
        obj.insert("skipped".into(), self.skipped.into());
        obj.insert("failed".into(), self.failed.into());
        let to = self.failed_to.as_deref().map(|t| t.trim_start_matches("sent to "));
        obj.insert("failed_queue".into(), to.filter(|_| self.failed > 0).into());
        for (name, n) in &self.counts {
            obj.insert(name.replace([' ', '-'], "_"), (*n).into());
        }
        obj.insert("note".into(), Some(self.note.as_str()).filter(|n| !n.is_empty()).into());
        obj.insert("error".into(), error.into());
        serde_json::Value::Object(obj)
    }

    /// True when nothing was skipped or failed.
    pub(crate) fn clean(&self) -> bool {
        self.skipped == 0 && self.failed == 0
    }
}

/// The bar's look. The status comes last, as {wide_msg}: cut to what the terminal has
/// left, so the line fits (in 80 columns, 40 or more for the status) and never wraps.
fn style(progress: Progress) -> ProgressStyle {
    let template = match progress {
        Progress::Bytes(_) => "{spinner} {prefix} [{bar:12}] {percent:>3}% {eta:>3} {wide_msg}",
        Progress::Items(_) => "{spinner} {prefix} [{bar:12}] {pos}/{len} {eta:>3} {wide_msg}",
        Progress::Open => "{spinner} {prefix} {elapsed:>3} {wide_msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The most of a queue name the bar shows (the rest of 80 columns is for the counts).
const PREFIX_CHARS: usize = 20;

/// `text` cut to `max` characters, the cut marked with `…`.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// "1234 msgs, 812 msg/s, 2.1 MiB stored": the counts on a progress bar, most telling
/// first (the end is what a narrow terminal cuts).
pub(crate) fn rate_text(what: &str, messages: u64, bytes: u64, elapsed: Duration) -> String {
    format!(
        "{messages} msgs, {:.0} msg/s, {} {what}",
        per_sec(messages as f64, elapsed),
        human_bytes(bytes)
    )
}

pub(crate) fn per_sec(n: f64, d: Duration) -> f64 {
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

    fn summary(skipped: u64, failed: u64) -> Summary {
        Summary {
            verb: "produced",
            messages: 300,
            bytes: 2048,
            elapsed: Duration::from_secs(2),
            skipped,
            failed,
            failed_to: None,
            counts: vec![("rows", 300), ("duplicates", 0)],
            note: String::new(),
        }
    }

    #[test]
    fn summary_line_leads_with_problems_and_leaves_out_zeros() {
        let s = summary(1, 2);
        assert_eq!(
            s.line(),
            "mqdemo: failed 2, skipped 1; produced 300 messages (2.0 KiB) in 2.000 s, 150 msg/s, \
             1.0 KiB/s; rows 300"
        );
        assert!(!s.clean());
        let s = Summary { failed_to: Some("sent to q.failed".into()), ..s };
        assert!(s.line().starts_with("mqdemo: failed 2 (sent to q.failed), skipped 1; "));
        let clean = summary(0, 0);
        assert_eq!(
            clean.line(),
            "mqdemo: produced 300 messages (2.0 KiB) in 2.000 s, 150 msg/s, 1.0 KiB/s; rows 300"
        );
        assert!(clean.clean());
    }

    #[test]
    fn summary_json_has_every_counter_zeros_included() {
        let s = Summary { failed_to: Some("sent to q.failed".into()), ..summary(0, 2) };
        let j = s.json(None);
        assert_eq!(j["messages"], 300);
        assert_eq!(j["skipped"], 0);
        assert_eq!(j["failed"], 2);
        assert_eq!(j["failed_queue"], "q.failed");
        assert_eq!(j["duplicates"], 0);
        assert_eq!(j["ok"], false);
        assert_eq!(j["error"], serde_json::Value::Null);
        let s = Summary { counts: vec![("model restarts", 1), ("re-published", 2)], ..s };
        let j = s.json(Some("lost"));
        assert_eq!((j["model_restarts"].clone(), j["re_published"].clone()), (1.into(), 2.into()));
        assert_eq!(j["error"], "lost");
    }
}

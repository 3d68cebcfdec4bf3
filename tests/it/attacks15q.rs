//! Attacks on 51ed31c (pipe/serve --batch-size: an answered batch is held back from the ack
//! until the producer says its answers are settled, `Stage::confirming`, and released by
//! `Stage::release`). Real broker, real binary, real model processes.

use crate::stage_kit::{drain, pipe, publish_indexed, rows};
use crate::support::{TestQueue, held, s, wait_until};
use std::process::Command;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(60);

/// A json-batch echo model that appends the size of every batch it is handed to `log`.
fn logging_echo(log: &std::path::Path) -> String {
    format!(
        "python3 -c 'import sys, json\nfor l in sys.stdin:\n    b = json.loads(l)\n    \
         open(\"{}\", \"a\").write(str(len(b)) + \"\\n\")\n    print(l.strip(), flush=True)'",
        s(log)
    )
}

/// Calls the model logged (see [`logging_echo`]).
fn calls(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// A pipe's input queue, its output queue and its failed queue (`<input>.failed`).
fn trio(name: &str) -> (TestQueue, TestQueue, TestQueue) {
    let from = TestQueue::new(&format!("{name}-in"));
    let to = TestQueue::new(&format!("{name}-out"));
    let failed = TestQueue::named(format!("{}.failed", from.name));
    (from, to, failed)
}

/// `rabbitmqctl -q --no-table-headers ARGS`, its stdout.
fn ctl_lines(args: &[&str]) -> String {
    let out =
        Command::new("rabbitmqctl").args(["-q"]).args(args).output().expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The connection (its Erlang pid) of the consumer on `queue`, if there is one.
fn consumer_connection(queue: &str) -> Option<String> {
    let consumers =
        ctl_lines(&["list_consumers", "--no-table-headers", "queue_name", "channel_pid"]);
    let channel = consumers.lines().find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next() == Some(queue)).then(|| cols.next().unwrap_or("").trim().to_string())
    })?;
    let channels = ctl_lines(&["list_channels", "--no-table-headers", "pid", "connection"]);
    channels.lines().find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next().map(str::trim) == Some(channel.as_str()))
            .then(|| cols.next().unwrap_or("").trim().to_string())
    })
}

/// Close the connection of the consumer on `queue` from the broker's side (320
/// CONNECTION_FORCED); the pipe's publishing connection is left alone. A run that stopped
/// meanwhile (a refusal ends it) has no consumer left to cut: nothing is done then.
fn cut_consumer(queue: &str) {
    let Some(conn) = consumer_connection(queue) else { return };
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &conn, "attacks15q: consumer cut"])
        .status();
}

/// Whether `queue` has a consumer.
fn has_consumer(queue: &str) -> bool {
    consumer_connection(queue).is_some()
}

/// The smallest `held(queue)` seen while polling for `period` (ready + unacked messages).
fn lowest_held(queue: &str, period: Duration) -> u64 {
    let until = Instant::now() + period;
    let mut lowest = u64::MAX;
    while Instant::now() < until {
        if let Some(n) = held(queue) {
            lowest = lowest.min(n);
            if n == 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lowest
}

/// Defect: an answered batch held in `confirming` whose consumer connection is lost is
/// forgotten (`dropped` clears `confirming`), while its ids stay in `seen`; when its inputs
/// come again they are repeats, acked at once, and the ack's flush waits only for tickets
/// below `released`, which never covered that batch. So the inputs are acked while their
/// answers are still unconfirmed: here the output queue refuses every answer (max-length 0,
/// reject-publish), yet the inputs of the batches held are acked and gone: nothing of them is anywhere.
/// Cause: src/stage.rs:834 (`dropped` clears `confirming` without keeping its tickets) and
/// src/stage.rs:724-732 (a repeat is acked without waiting for its answers' confirms;
/// `flush` waits only through `released`, src/stage.rs:882).
#[test]
fn repeats_after_a_consumer_reconnect_are_acked_before_their_answers_are_confirmed() {
    let (from, mut to, _failed) = trio("q15-drop");
    // The output queue takes nothing: every answer is nacked, never confirmed.
    to.set_policy(r#"{"max-length":0,"overflow":"reject-publish"}"#);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let inputs = rows(6);
    publish_indexed(&from, &inputs, None);
    let run = pipe(
        &from,
        &to,
        &logging_echo(&log),
        &["--framing", "json-batch", "--batch-size", "2", "--batch-wait", "0.05"],
    )
    .watch();
    // The third batch at the model: the first one's answers are published (before the
    // second call's, which came before this one), so it is held in `confirming`.
    wait_until(RUN, "three model calls", || calls(&log) >= 3);
    wait_until(RUN, "the pipe's consumer", || has_consumer(&from.name));
    assert_eq!(held(&from.name), Some(6), "{}", run.stderr());
    cut_consumer(&from.name);
    // The consumer back (the producer may have reconnected too: a channel with only nacks),
    // unless the stage is busy retrying the nacked answers (as a flush before an ack does,
    // up to --retry-for): then the cut is noticed later, and nothing may be acked anyway.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let err = run.stderr();
        if err.find("consumer cut").is_some_and(|at| err[at..].contains("reconnected")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The inputs come again as repeats; none of their answers can ever be confirmed, so
    // none of them may be acked.
    let lowest = lowest_held(&from.name, Duration::from_secs(5));
    run.signal("TERM");
    let out = run.finish(RUN);
    let answers = drain(&to).len();
    assert_eq!(
        lowest,
        6,
        "inputs acked with no answer confirmed ({answers} answers in the output queue, \
         {} inputs left; exit {:?}):\n{}",
        from.depth(),
        out.code(),
        out.stderr
    );
}

/// Defect: a run whose answers the broker refused for good can end with exit 0 and a
/// summary saying every request was served: the refusals the producer reports when the
/// stage closes (`Producer::finish`, after `--retry-for` of nacks) are never looked at,
/// only its unconfirmed messages are counted. Here `serve` (json-batch, batches of 2) answers
/// four requests whose results queue takes nothing (max-length 0, reject-publish); the
/// consumer's connection is cut while the answered batches are held confirming, the
/// requests come again as repeats and are acked (see the test above), and the refusals come
/// out only at the close: "served 4 messages; answered 4", no failure, exit 0, while no
/// result exists and no request is left.
/// Cause: src/stage.rs:97-98 (`stage.close()`'s `report.refused` is ignored; only
/// `report.unconfirmed` counts as not delivered), reached through src/stage.rs:834.
#[test]
fn answers_refused_at_the_close_leave_exit_zero_and_every_request_served() {
    let requests = TestQueue::new("q15-close-rq");
    let replies = TestQueue::new("q15-close-rp");
    let mut results = TestQueue::new("q15-close-rs");
    let _failed = TestQueue::named(format!("{}.failed", requests.name));
    results.set_policy(r#"{"max-length":0,"overflow":"reject-publish"}"#);
    // The replies' queue exists (and is allowed), so every reply is confirmed: it shows
    // when a batch's answers are published.
    publish_indexed(&replies, &[], None);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let inputs = rows(4);
    publish_indexed(&requests, &inputs, Some(&replies.name));
    let exec = logging_echo(&log);
    let run = crate::support::mqdemo(&[
        "serve",
        "--queue",
        &requests.name,
        "--results-queue",
        &results.name,
        "--allow-reply-to",
        &replies.name,
        "--exec",
        &exec,
        "--framing",
        "json-batch",
        "--batch-size",
        "2",
        "--batch-wait",
        "0.05",
        "--idle-timeout",
        "4",
        "--retry-for",
        "2",
    ])
    .watch();
    // Both batches answered: their replies confirmed, their results nacked (held). A run
    // that stops on the refusal first (a held batch's nacks are retried and refused past
    // --retry-for) has nothing to cut.
    wait_until(RUN, "four replies, or the run stopped", || {
        replies.depth() == 4 || run.stderr().contains("error:")
    });
    if !run.stderr().contains("error:") {
        wait_until(RUN, "the serve's consumer", || has_consumer(&requests.name));
        cut_consumer(&requests.name);
    }
    let out = run.finish(RUN);
    let results_kept = drain(&results).len();
    let left = requests.depth() as usize;
    assert!(
        out.code() != Some(0) || left + results_kept == 4,
        "exit 0 with {results_kept} results delivered and {left} requests left of 4:\n{}",
        out.stderr
    );
}

/// Defect: answers of a held batch that the broker nacks are never sent again, and never
/// refused, while no further message is published: `release` (every FLIGHT_POLL) only
/// polls for confirms (`settled_below`), and the retry of nacked messages
/// (`Producer::retry_nacked`) runs only inside a publish or a flush, which no longer come
/// for a held batch. So a pipe whose output queue is full keeps its last batches unacked
/// and unanswered forever: one "refused ... retrying" line, then silence; never refused
/// past --retry-for 2 s, no error, no exit after 30 s. (Before 51ed31c a flush came before
/// each ack, and it retries nacked messages and refuses them past --retry-for.)
/// Cause: src/stage.rs:564-576 (`release` never drives the producer) with
/// src/amqp/producer.rs:211-218 (`settled_below` counts nacked messages as open without
/// retrying or refusing them).
#[test]
fn nacked_answers_of_a_held_batch_are_never_retried_nor_refused() {
    let (from, mut to, _failed) = trio("q15-stall");
    to.set_policy(r#"{"max-length":0,"overflow":"reject-publish"}"#);
    publish_indexed(&from, &rows(4), None);
    let child = pipe(
        &from,
        &to,
        "python3 -c 'import sys\nfor l in sys.stdin: print(l.strip(), flush=True)'",
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "2",
            "--batch-wait",
            "0.05",
            "--retry-for",
            "2",
        ],
    )
    .spawn();
    // Nacked for --retry-for (2 s): the run must stop with the refusal, inputs unacked.
    let out = crate::support::wait(child, Duration::from_secs(30));
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert_eq!(from.depth(), 4, "{}", out.stderr);
}

//! Attacks on the confirm hold of pipelined micro-batches (00796e4: answered batches held in
//! `Stage::confirming` until their answers are confirmed; after a lost consumer channel the
//! repeats are acked only behind `released`). Real broker, real binary, real model processes.

use crate::stage_kit::rows;
use crate::support::{count_after, mqdemo, s, wait_until};
use amiquip::{AmqpProperties, Publish, QueueDeclareOptions};
use std::path::Path;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

/// A json-batch echo model that appends the size of every batch it is handed to `log` and
/// takes `secs` over each.
fn slow_echo(log: &Path, secs: f64) -> String {
    format!(
        "python3 -c 'import sys, json, time\nfor l in sys.stdin:\n    b = json.loads(l)\n    \
         open(\"{}\", \"a\").write(str(len(b)) + \"\\n\")\n    time.sleep({secs})\n    \
         print(l.strip(), flush=True)'",
        s(log)
    )
}

/// Calls the model logged (see [`slow_echo`]).
fn calls(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// Publish `n` rows to `queue` (declared durable) on the node at `url`, ids `queue-i`.
fn publish_rows_at(url: &str, queue: &str, n: usize) {
    let mut conn = amiquip::Connection::insecure_open(url).expect("private node");
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare(queue, QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    for (i, body) in rows(n).iter().enumerate() {
        let props =
            AmqpProperties::default().with_message_id(format!("{queue}-{i}")).with_delivery_mode(2);
        ch.basic_publish("", Publish::with_properties(body, queue, props)).expect("publish");
    }
    let _ = conn.close();
}

/// Defect: a SIGTERM while answered batches wait for their confirms during a memory alarm
/// ends the run with a summary that matches no queue. Here 8 inputs, batches of 2, the
/// broker blocks publishing: the summary says "failed 3 (sent to in.failed); piped 2
/// messages", yet every one of the 8 inputs is still in `in` (none was acked) and
/// `in.failed` is empty. The batches held in `confirming` are forgotten by `dropped()` (the
/// consume loop ends with the stop error) but stay counted as piped, and their unconfirmed
/// answers are added to `failed` and said to be "sent to in.failed".
/// Cause: src/stage.rs:87-89 (only `batch` and `in_flight` are taken off `messages`, not the
/// batches `dropped`, src/stage.rs:924-927, let go unacked) and src/stage.rs:98,118-119
/// (unconfirmed answers counted as failed messages "sent to" the failed queue).
#[test]
fn a_signal_during_a_memory_alarm_reports_piped_and_failed_messages_no_queue_has() {
    let broker = crate::broker::PrivateBroker::start("r15-alarm-term");
    let url = broker.url();
    let n = 8;
    publish_rows_at(&url, "in", n);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    // Publishing is blocked from the start: every answer waits for a confirm.
    broker.set_memory_alarm(true);
    let run = mqdemo(&[
        "--url",
        &url,
        "pipe",
        "--from",
        "in",
        "--to",
        "out",
        "--exec",
        &slow_echo(&log, 0.05),
        "--framing",
        "json-batch",
        "--batch-size",
        "2",
        "--batch-wait",
        "0.05",
        "--retry-for",
        "30",
    ])
    .watch();
    wait_until(RUN, "two model calls", || calls(&log) >= 2);
    run.wait_for("blocked by broker", RUN);
    std::thread::sleep(Duration::from_secs(2));
    run.signal("TERM");
    let out = run.finish(Duration::from_secs(15));
    broker.set_memory_alarm(false);
    let left = broker.queue_depth("in") as usize;
    let failed_queue = broker.queue_depth("in.failed");
    let piped = count_after(&out.stderr, "piped") as usize;
    let failed = count_after(&out.stderr, "failed");
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        piped == n - left && failed == failed_queue,
        "summary: piped {piped}, failed {failed} (sent to in.failed); queues: {} of {n} \
         inputs acked, {failed_queue} in in.failed:\n{}",
        n - left,
        out.stderr
    );
}

//! Attacks on pipelined micro-batching (`pipe`/`serve --batch-size`, b0c3966): batch k+1 is
//! written to the model right after batch k's answer is taken, before k's answers are
//! published, so a batch is "in flight" while the next one fills. Real broker, real binary,
//! real model processes. Each test shows a defect and fails on the code it was written
//! against.

use crate::stage_kit::{drain, header_int, now_ms, pipe, publish_indexed, publish_request, rows};
use crate::support::{TestQueue, mqdemo, s, wait_until};
use amiquip::{AmqpProperties, Publish, QueueDeclareOptions};
use std::path::Path;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

/// A pipe's input queue, its output queue and its failed queue (`<input>.failed`).
fn trio(name: &str) -> (TestQueue, TestQueue, TestQueue) {
    let from = TestQueue::new(&format!("{name}-in"));
    let to = TestQueue::new(&format!("{name}-out"));
    let failed = TestQueue::named(format!("{}.failed", from.name));
    (from, to, failed)
}

/// The lines a model logged, one per call.
fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

/// A json-batch model that logs each batch it is handed (the line as is) to `log`, takes
/// `secs` over it, then echoes it.
fn slow_echo(log: &Path, secs: f64) -> String {
    format!(
        "python3 -c 'import sys, time\nfor l in sys.stdin:\n    \
         open(\"{}\", \"a\").write(l)\n    time.sleep({secs})\n    \
         print(l.strip(), flush=True)'",
        s(log)
    )
}

/// Defect: a SIGTERM that comes while mqdemo waits for the answer to the batch in flight,
/// with the next batch already full, still hands that next batch to the model once the
/// answer is in: the model computes a whole batch after the stop signal, whose answers are
/// thrown away (the stage closes the model's stdin and kills it), and the run ends only once
/// the model has been given up to EXIT_GRACE more. Docs (models.md): on a signal a batch
/// "stays queued (none of it has reached the model)"; a signal lets the model finish the
/// message in hand, not start on more.
/// Cause: src/stage.rs:506 and 519 (`advance` launches `next` without looking at the stop flag;
/// `collect` returned the landed batch's answer within STOP_GRACE, so nothing stopped it).
#[test]
fn a_signal_while_waiting_for_the_batch_in_flight_hands_the_model_no_new_batch() {
    let (from, to, _failed) = trio("p15-term");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let inputs = rows(20);
    publish_indexed(&from, &inputs, None);
    let exec = slow_echo(&log, 2.0);
    let run = pipe(
        &from,
        &to,
        &exec,
        &["--framing", "json-batch", "--batch-size", "4", "--batch-wait", "0.1"],
    )
    .watch();
    // The first batch is with the model; the second fills at once (20 queued) and mqdemo
    // waits for the first one's answer.
    wait_until(RUN, "the model to take the first batch", || calls(&log).len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    run.signal("TERM");
    let out = run.finish(RUN);
    let handed = calls(&log);
    assert_eq!(
        handed.len(),
        1,
        "batches handed to the model after SIGTERM (exit {:?}): {handed:?}\n{}",
        out.code(),
        out.stderr
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(to.depth() + from.depth(), 20, "{}", out.stderr);
}

/// Defect: `serve` calls the model for requests already past their deadline. A batch is
/// sorted (expired requests set aside) when it fills, but with the batch before it still at
/// the model it is handed over only once that one's answer is in: whatever expired while
/// mqdemo waited goes to the model all the same. Docs (DESIGN.md, models.md): "the model is
/// never called for an expired request". (Its answer is then dropped as late, so the model's
/// work is wasted and, for a model with effects, done for a client that gave up.)
/// Cause: src/stage.rs:448 (`run_batch` sorts at fill time) with src/stage.rs:497 and 519
/// (`advance` then waits in `collect` for the batch in flight before `launch`, which does not
/// look at the deadlines again).
#[test]
fn serve_never_hands_the_model_a_request_that_expired_while_the_batch_before_was_in_flight() {
    let q = TestQueue::new("p15-dl");
    let results = TestQueue::new("p15-dl-results");
    let failed = TestQueue::new("p15-dl-failed");
    let _default_failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    // Two requests with a long deadline (the first batch, 2 s at the model), then two whose
    // deadline passes a second from now (the second batch: full at once, not expired yet).
    let now = now_ms();
    publish_request(&q, br#"{"k":0}"#, now + 600_000, 0);
    publish_request(&q, br#"{"k":1}"#, now + 600_000, 1);
    publish_request(&q, br#"{"k":2}"#, now_ms() + 1000, 2);
    publish_request(&q, br#"{"k":3}"#, now_ms() + 1000, 3);
    let exec = slow_echo(&log, 2.0);
    let out = mqdemo(&[
        "serve",
        "--queue",
        &q.name,
        "--results-queue",
        &results.name,
        "--failed-queue",
        &failed.name,
        "--exec",
        &exec,
        "--framing",
        "json-batch",
        "--batch-size",
        "2",
        "--batch-wait",
        "1",
        "--count",
        "4",
    ])
    .run();
    let answers = drain(&results);
    let answered: Vec<i64> = answers.iter().filter_map(|a| header_int(a, "k")).collect();
    assert_eq!(answered, vec![0, 1], "{}", out.stderr);
    let handed = calls(&log);
    assert!(
        handed.iter().all(|c| !c.contains("\"k\":2") && !c.contains("\"k\":3")),
        "the model was handed expired requests: {handed:?}\n{}",
        out.stderr
    );
    assert_eq!(failed.depth(), 2, "{}", out.stderr);
}

/// Defect: a batch whose model answered in milliseconds goes to the failed queue as timed
/// out ("no answer within N s (--exec-timeout)") and the model is killed, when publishing the
/// batch before it was held up longer than --exec-timeout (here a memory alarm blocks
/// publishing). The next batch is written to the model before the answers of the one before
/// are published, and its --exec-timeout deadline runs from that write: the wait for the
/// broker is charged to the model, and `receive` looks at the deadline before it looks at
/// the answer that has long been there. Promise: --exec-timeout is "seconds the child may
/// take for one message"; a good model's inputs are not failed.
/// Cause: src/child/mod.rs:243 (`send` fixes the deadline at the write) with
/// src/child/mod.rs:287-292 (`wait_answer` gives up on the clock before taking an answer
/// already received) and src/stage.rs:519 and 527-534 (`advance` publishes the landed batch
/// after `launch`).
#[test]
fn an_answer_that_came_in_time_is_not_failed_because_publishing_was_blocked() {
    let broker = crate::broker::PrivateBroker::start("p15-alarm");
    let url = broker.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let gate = dir.path().join("gate");
    {
        let mut conn = amiquip::Connection::insecure_open(&url).expect("private broker");
        let ch = conn.open_channel(None).expect("channel");
        ch.queue_declare("in", QueueDeclareOptions { durable: true, ..Default::default() })
            .expect("declare");
        for (i, body) in rows(12).iter().enumerate() {
            let props = AmqpProperties::default().with_message_id(format!("in-{i}"));
            ch.basic_publish("", Publish::with_properties(body, "in", props)).expect("publish");
        }
        let _ = conn.close();
    }
    // The first batch waits for the gate; every other one is answered at once. Each answer
    // is logged when written.
    let exec = format!(
        "python3 -c 'import sys, os, time\nn = 0\nfor l in sys.stdin:\n    n += 1\n    \
         while n == 1 and not os.path.exists(\"{gate}\"): time.sleep(0.05)\n    \
         print(l.strip(), flush=True)\n    open(\"{log}\", \"a\").write(\"answered\\n\")'",
        gate = s(&gate),
        log = s(&log)
    );
    let run = mqdemo(&[
        "--url",
        &url,
        "pipe",
        "--from",
        "in",
        "--to",
        "out",
        "--exec",
        &exec,
        "--framing",
        "json-batch",
        "--batch-size",
        "4",
        "--batch-wait",
        "0.1",
        "--exec-timeout",
        "10",
        "--idle-timeout",
        "3",
    ])
    .watch();
    // The second batch is full and waits for the first one's answer.
    wait_until(RUN, "both batches queued at mqdemo", || broker.ready("in") == 0);
    broker.set_memory_alarm(true);
    std::fs::write(&gate, b"go").expect("gate");
    // The model answers the next batch at once; mqdemo is blocked publishing the answers
    // of the batch before it meanwhile.
    wait_until(RUN, "the model to answer two batches", || calls(&log).len() >= 2);
    std::thread::sleep(Duration::from_secs(12));
    broker.set_memory_alarm(false);
    let out = run.finish(RUN);
    let failed = broker.queue_depth("in.failed");
    assert_eq!(
        failed,
        0,
        "answered batch failed as timed out (exit {:?}):\n{}",
        out.code(),
        out.stderr
    );
    assert_eq!(broker.queue_depth("out"), 12, "{}", out.stderr);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

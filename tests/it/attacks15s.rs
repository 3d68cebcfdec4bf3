//! Last attacks on pipelined micro-batches and their confirm hold (answered batches held in
//! `Stage::confirming` until their answers are confirmed): confirms slowed by a memory alarm
//! on a private node, repeats held along, a consumer connection cut, a signal. Real broker,
//! real binary, real model processes. Each test shows a defect and fails on the code it was
//! written against.

use crate::broker::PrivateBroker;
use crate::support::{Watched, count_after, mqdemo, s, wait_until};
use amiquip::{AmqpProperties, Publish, QueueDeclareOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(90);

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

/// Publish the inputs `ks` to `in` (durable) on the private node, body `{"i":k}`, id `in-k`:
/// the same k twice is a repeat.
fn publish_inputs(broker: &PrivateBroker, ks: impl IntoIterator<Item = usize>) {
    let mut conn = amiquip::Connection::insecure_open(&broker.url()).expect("private node");
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare("in", QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    for k in ks {
        let props =
            AmqpProperties::default().with_message_id(format!("in-{k}")).with_delivery_mode(2);
        let body = format!("{{\"i\":{k}}}");
        ch.basic_publish("", Publish::with_properties(body.as_bytes(), "in", props))
            .expect("publish");
    }
    let _ = conn.close();
}

/// `pipe --from in --to out --workers W`, json-batch batches of 4, on the private node.
fn pipe(broker: &PrivateBroker, exec: &str, workers: &str, extra: &[&str]) -> Watched {
    let url = broker.url();
    let mut args = vec![
        "--url",
        &url,
        "pipe",
        "--from",
        "in",
        "--to",
        "out",
        "--exec",
        exec,
        "--workers",
        workers,
        "--framing",
        "json-batch",
        "--batch-size",
        "4",
        "--batch-wait",
        "0.05",
        "--retry-for",
        "120",
    ];
    args.extend_from_slice(extra);
    mqdemo(&args).watch()
}

/// The connection (its Erlang pid) of the consumer on `queue` of the private node.
fn consumer_connection(broker: &PrivateBroker, queue: &str) -> Option<String> {
    let text = |args: &[&str]| String::from_utf8_lossy(&broker.ctl(args).stdout).into_owned();
    let consumers =
        text(&["-q", "list_consumers", "--no-table-headers", "queue_name", "channel_pid"]);
    let channel = consumers.lines().find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next() == Some(queue)).then(|| cols.next().unwrap_or("").trim().to_string())
    })?;
    let channels = text(&["-q", "list_channels", "--no-table-headers", "pid", "connection"]);
    channels.lines().find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next().map(str::trim) == Some(channel.as_str()))
            .then(|| cols.next().unwrap_or("").trim().to_string())
    })
}

/// Defect: repeats (ids seen before) held back from the ack with answered batches waiting for
/// their confirms are counted as duplicates when they arrive, so a SIGTERM during a memory
/// alarm ends with a summary counting duplicates that were never acked: 24 inputs each
/// published twice (1 worker, batches of 4), the run is stopped while the broker blocks
/// publishing: "piped 8 messages ...; answered 8, duplicates 19, answers unconfirmed 5",
/// yet only 16 of the 48 messages were acked (8 inputs, 8 repeats): 11 of the 19
/// "duplicates" are still in the queue. Docs (metrics.md): acked = messages + duplicates
/// (+ failed).
/// Cause: src/stage.rs:860 (a repeat is counted at arrival, while `held` keeps its ack back)
/// with src/stage.rs:107-117 (the summary takes the unacked batches off `messages` only, never
/// the repeats held with them).
#[test]
fn s15_term_with_repeats_held_counts_only_acked_duplicates() {
    let broker = PrivateBroker::start("s15-dup-term");
    let n = 24;
    publish_inputs(&broker, (0..n).flat_map(|k| [k, k]));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let run = pipe(&broker, &slow_echo(&log, 0.4), "1", &[]);
    wait_until(RUN, "two model calls", || calls(&log) >= 2);
    broker.set_memory_alarm(true);
    run.wait_for("blocked", RUN);
    run.signal("TERM");
    let out = run.finish(Duration::from_secs(30));
    broker.set_memory_alarm(false);
    let left = broker.queue_depth("in") as usize;
    let piped = count_after(&out.stderr, "piped") as usize;
    let duplicates = count_after(&out.stderr, "duplicates") as usize;
    assert_eq!(
        piped + duplicates,
        2 * n - left,
        "summary: piped {piped} + duplicates {duplicates}; queue: {} of {} acked:\n{}",
        2 * n - left,
        2 * n,
        out.stderr
    );
}

/// Defect: after the consumer's connection is cut while answered batches (with repeats held
/// along) wait for their confirms under a memory alarm, the summary counts far more
/// duplicates than there are messages: 16 inputs each published twice (32 messages, 1
/// worker, batches of 4), the run ends normally with every message acked, and says
/// "piped 16 messages ...; answered 16, duplicates 40" (28 in another run: 56 or 44 for
/// 32 messages acked). The repeats held unacked were counted when first delivered;
/// `dropped` lets them go (they come again and are counted again) but takes back only the
/// batches' counts; and inputs let go by the hold but not yet acked (acks go every
/// prefetch/2) come again as repeats, counted as piped and as duplicates. Docs
/// (metrics.md): acked = messages + duplicates (+ failed).
/// Cause: src/stage.rs:860 (counted at arrival) with src/stage.rs:971-980 (`dropped` resets
/// `riders` and forgets `confirming`, whose `held` includes repeats, without taking their
/// duplicates back; `Counts::take_back`, src/stage.rs:69-77, has no duplicates).
///
/// Partly fixed: repeats held with unacked batches are no longer counted. Still open (and
/// older than batching, for every consumer): a message handled and confirmed but not yet
/// acked when the channel is lost comes again and is counted a second time, as a repeat.
#[test]
#[ignore = "known gap (issue 15): a handled message whose ack a lost channel took is counted again as a repeat"]
fn s15_consumer_cut_with_repeats_held_counts_each_acked_message_once() {
    let broker = PrivateBroker::start("s15-dup-cut");
    let n = 16;
    publish_inputs(&broker, (0..n).flat_map(|k| [k, k]));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let run = pipe(&broker, &slow_echo(&log, 0.6), "1", &["--idle-timeout", "4"]);
    wait_until(RUN, "two model calls", || calls(&log) >= 2);
    broker.set_memory_alarm(true);
    run.wait_for("blocked", RUN);
    let conn = consumer_connection(&broker, "in").expect("the pipe's consumer");
    let _ = broker.ctl(&["-q", "close_connection", &conn, "attacks15s: consumer cut"]);
    let cut = Instant::now();
    wait_until(RUN, "the consumer back", || {
        if cut.elapsed() > Duration::from_secs(3) {
            broker.set_memory_alarm(false);
        }
        let err = run.stderr();
        err.find("consumer cut").is_some_and(|at| err[at..].contains("reconnected"))
    });
    broker.set_memory_alarm(false);
    let out = run.finish(RUN);
    let left = broker.queue_depth("in") as usize;
    let piped = count_after(&out.stderr, "piped") as usize;
    let duplicates = count_after(&out.stderr, "duplicates") as usize;
    assert!(
        left == 0 && piped + duplicates == 2 * n,
        "summary: piped {piped} + duplicates {duplicates}; queue: {} of {} acked (exit {:?}):\n{}",
        2 * n - left,
        2 * n,
        out.code(),
        out.stderr
    );
}

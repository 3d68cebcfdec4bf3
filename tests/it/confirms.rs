//! Publisher confirms against a bounded queue (`x-overflow reject-publish`) that a consumer
//! drains at the same time: nacks arrive at once, acks of persistent messages wait for the
//! disk, so a `multiple` ack often covers tags nacked before it. A nack is never a confirm.

use crate::support::{TestQueue, connect, count_after, csv_rows, mqdemo, s};
use amiquip::{ConsumerMessage, ConsumerOptions, QueueDeclareOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ROWS: usize = 20_000;
const BOUND: &str = r#"{"max-length":100,"overflow":"reject-publish"}"#;

/// A raw consumer that keeps a queue drained and counts what arrives, by body.
struct Drainer {
    done: Arc<AtomicBool>,
    handle: JoinHandle<HashMap<Vec<u8>, u32>>,
}

impl Drainer {
    fn start(queue: &str) -> Drainer {
        Drainer::start_paced(queue, Duration::ZERO)
    }

    /// A drainer that takes at most one message per `pause`: slower than any producer, so
    /// a bounded queue stays full and acks and nacks keep interleaving.
    fn start_paced(queue: &str, pause: Duration) -> Drainer {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, name) = (Arc::clone(&done), queue.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut conn = connect();
            let ch = conn.open_channel(None).expect("channel");
            // Paced: one unacked message at a time, so the broker cannot push the queue
            // into this client's memory; else as fast as the broker sends.
            ch.qos(0, if pause.is_zero() { 500 } else { 1 }, false).expect("qos");
            let q = ch
                .queue_declare(&name, QueueDeclareOptions { durable: true, ..Default::default() })
                .expect("declare");
            let consumer = q.consume(ConsumerOptions::default()).expect("consume");
            let _ = ready_tx.send(());
            let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
            loop {
                match consumer.receiver().recv_timeout(Duration::from_millis(300)) {
                    Ok(ConsumerMessage::Delivery(d)) => {
                        std::thread::sleep(pause);
                        *seen.entry(d.body.clone()).or_default() += 1;
                        consumer.ack(d).expect("ack");
                    }
                    Ok(_) => break,
                    // Done only once the queue holds nothing, ready or on its way to this
                    // consumer: a pause in deliveries on a loaded machine is not the end.
                    Err(_)
                        if flag.load(Ordering::SeqCst)
                            && ready(&ch, &name) == 0
                            && crate::support::held(&name).unwrap_or(0) == 0 =>
                    {
                        break;
                    }
                    Err(_) => {}
                }
            }
            let _ = consumer.cancel();
            let _ = conn.close();
            seen
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("drainer consuming");
        Drainer { done, handle }
    }

    /// Stop once the queue has been quiet for a moment; the bodies received, with counts.
    fn finish(self) -> HashMap<Vec<u8>, u32> {
        self.done.store(true, Ordering::SeqCst);
        self.handle.join().expect("drainer thread")
    }
}

/// Messages ready in `queue` (not counting those delivered and unacked); 0 once it is gone.
fn ready(ch: &amiquip::Channel, queue: &str) -> u32 {
    ch.queue_declare_passive(queue).map_or(0, |q| q.declared_message_count().unwrap_or(0))
}

/// A queue bounded to 100 messages by policy, so producers need no extra arguments.
fn bounded(test: &str) -> TestQueue {
    let mut q = TestQueue::new(test);
    q.set_policy(BOUND);
    q
}

/// Which of 1..=n are not in `ids` (sorted): how many, and the first few.
fn missing(ids: &[u64], n: usize) -> (usize, Vec<u64>) {
    let have: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let gone: Vec<u64> = (1..=n as u64).filter(|i| !have.contains(i)).collect();
    (gone.len(), gone.into_iter().take(5).collect())
}

/// The `ID` of each received JSON row.
fn row_ids(bodies: &HashMap<Vec<u8>, u32>) -> Vec<u64> {
    let mut ids: Vec<u64> = bodies
        .keys()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).expect("JSON row");
            v["ID"].as_u64().expect("numeric ID")
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// 20,000 rows with `--retry-for 0` (every nack final) into a bounded queue drained by a
/// consumer taking one message per `pause`: the report must split exactly into what the
/// queue received (produced) and what it refused (failed). Returns (produced, failed).
fn nacks_are_final(test: &str, pause: Duration) -> (u64, u64) {
    let q = bounded(test);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=ROWS);
    let drain = Drainer::start_paced(&q.name, pause);
    let out =
        mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--retry-for", "0"])
            .run();
    let received = drain.finish();
    let produced = count_after(&out.stderr, "produced");
    let failed = count_after(&out.stderr, "failed");
    let ids = row_ids(&received);
    eprintln!("{test}: produced {produced}, failed {failed}, received {}", ids.len());
    let code = if failed > 0 { 1 } else { 0 };
    assert_eq!(
        out.code(),
        Some(code),
        "refused rows (only) make the exit status 1:\n{}",
        out.stderr
    );
    assert_eq!(produced + failed, ROWS as u64, "every row is produced or failed:\n{}", out.stderr);
    assert_eq!(ids.len() as u64, produced, "every row reported produced is in the queue");
    (produced, failed)
}

#[test]
fn nacked_rows_are_failed_never_produced() {
    // A drainer as fast as it can: acks and nacks interleave most when the producer is just
    // faster than it (the case that lost 575 rows reported produced). On a loaded machine
    // the drainer may keep up and nothing is refused; the accounting is checked either way.
    nacks_are_final("nack-final", Duration::ZERO);
}

#[test]
fn a_full_queue_refuses_rows_that_are_failed_not_produced() {
    // A drainer slower than any producer: the queue stays full, so refusals are certain.
    let (_, failed) = nacks_are_final("nack-full", Duration::from_millis(2));
    assert!(failed > 0, "the bounded queue refused nothing, so nothing was tested");
}

#[test]
fn nacked_rows_are_retried_until_the_consumer_makes_room() {
    let q = bounded("nack-retry");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=ROWS);
    let drain = Drainer::start(&q.name);
    let out = mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name]).run();
    let received = drain.finish();
    let ids = row_ids(&received);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(count_after(&out.stderr, "produced"), ROWS as u64, "{}", out.stderr);
    assert_eq!(missing(&ids, ROWS), (0, vec![]), "rows reported produced that never arrived");
}

#[test]
fn nacked_lines_are_retried_never_lost() {
    let q = bounded("nack-lines");
    let dir = tempfile::tempdir().expect("tempdir");
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).expect("mkdir");
    let lines = 10_000;
    let body: String = (1..=lines).map(|i| format!("line {i}\n")).collect();
    std::fs::write(texts.join("big.txt"), body).expect("write");
    let drain = Drainer::start(&q.name);
    let args = ["produce", "text", "--directory", s(&texts), "--queue", &q.name];
    let out = mqdemo(&[&args[..], &["--split", "line"]].concat()).run();
    let received = drain.finish();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let missing: Vec<usize> =
        (1..=lines).filter(|i| !received.contains_key(format!("line {i}\n").as_bytes())).collect();
    assert!(
        missing.is_empty(),
        "{} lines never arrived, e.g. {:?}",
        missing.len(),
        &missing[..5.min(missing.len())]
    );
}

#[test]
fn pipe_acks_no_input_whose_answer_was_nacked() {
    let input = TestQueue::new("nack-pipe-in");
    let output = bounded("nack-pipe-out");
    let failed = TestQueue::named(format!("{}.failed", input.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 5_000;
    let csv = csv_rows(dir.path(), "rows.csv", 1..=rows);
    mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &input.name]).run().expect_code(0);
    let drain = Drainer::start(&output.name);
    let started = Instant::now();
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", "cat"];
    let out = mqdemo(&[&args[..], &["--idle-timeout", "3"]].concat()).run();
    let received = drain.finish();
    eprintln!("pipe took {:?}", started.elapsed());
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(input.depth(), 0, "every input handled");
    assert_eq!(failed.depth(), 0, "no input failed");
    let ids = row_ids(&received);
    assert_eq!(missing(&ids, rows), (0, vec![]), "acked inputs whose answer never arrived");
}

#[test]
fn rows_returned_unroutable_are_retried_once_the_queue_is_back() {
    // The queue is deleted mid-stream: what the broker returns (312 NO_ROUTE) is published
    // again after the producer reconnects and declares the queue anew, never counted failed.
    let q = TestQueue::new("no-route");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=ROWS);
    let args = ["produce", "tabular", "--file", s(&csv), "--queue", &q.name];
    let producer = mqdemo(&[&args[..], &["--interval", "0.0002"]].concat()).watch();
    crate::support::wait_until(Duration::from_secs(30), "3,000 rows queued", || q.depth() >= 3_000);
    q.delete();
    let out = producer.finish(Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(count_after(&out.stderr, "produced"), ROWS as u64, "{}", out.stderr);
    let ids = row_ids(&Drainer::start(&q.name).finish());
    let first = *ids.first().expect("rows after the deletion");
    assert!(first > 1, "the deletion took the first rows with it");
    let (gaps, some) = missing(&ids, ROWS);
    assert_eq!(gaps as u64, first - 1, "rows after the deletion missing: {some:?}");
}

#[test]
fn a_connection_that_only_gets_nacks_is_replaced_and_nothing_is_lost() {
    // A full queue and no consumer: nothing but nacks. After a while the producer tries a
    // fresh connection (after a failover a channel was seen nacking for minutes while a new
    // one published fine); the retry budget is not reset by it, and every row arrives.
    let q = bounded("nack-recycle");
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 300;
    let csv = csv_rows(dir.path(), "rows.csv", 1..=rows);
    let producer = mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name]).watch();
    producer.wait_for("trying a fresh connection", Duration::from_secs(40));
    producer.wait_for("reconnected to", Duration::from_secs(20));
    let drain = Drainer::start(&q.name);
    let out = producer.finish(Duration::from_secs(60));
    let ids = row_ids(&drain.finish());
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(count_after(&out.stderr, "produced"), rows as u64, "{}", out.stderr);
    assert_eq!(missing(&ids, rows), (0, vec![]), "rows that never arrived");
}

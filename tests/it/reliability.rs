//! Reliability on the shared broker: dead letters, queue types, full queues, signals,
//! duplicate suppression.

use crate::support::{TestQueue, data, mqdemo, produce_sample, s, wait, wait_until};
use amiquip::AmqpProperties;
use std::process::Command;
use std::time::Duration;

fn queue_type(name: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}\t")).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn undecodable_messages_go_to_the_dead_letter_queue() {
    let q = TestQueue::new("dlx");
    let dlq = TestQueue::new("dlx-dead");
    // Declare with the dead-letter arguments first, then publish as a foreign producer would.
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--dead-letter-queue",
        &dlq.name,
        "--idle-timeout",
        "0.2",
    ])
    .run()
    .expect_code(0);
    let mut conn = crate::support::connect();
    let ch = conn.open_channel(None).expect("channel");
    for body in [&b"not json"[..], br#"{"a":1}"#] {
        ch.basic_publish(
            "",
            amiquip::Publish::with_properties(body, q.name.clone(), AmqpProperties::default()),
        )
        .expect("publish");
    }
    let _ = conn.close();
    let out = mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--dead-letter-queue",
        &dlq.name,
        "--count",
        "2",
    ])
    .run()
    .expect_code(1)
    .stderr_has(&format!("sent to {}", dlq.name));
    assert_eq!(out.stdout, "{\"a\":1}\n");
    wait_until(Duration::from_secs(10), "dead-lettered message", || dlq.depth() == 1);
    let dead = dlq.get().expect("dead letter");
    assert_eq!(dead.body, b"not json");
}

#[test]
fn queue_type_quorum_declares_a_quorum_queue() {
    let q = TestQueue::new("quorum");
    produce_sample(&q, &["--queue-type", "quorum", "--num-records", "20"]).run().expect_code(0);
    assert_eq!(queue_type(&q.name), "quorum");
    let out = mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--queue-type",
        "quorum",
        "--count",
        "20",
    ])
    .run()
    .expect_code(0);
    assert_eq!(out.stdout.lines().count(), 20);
}

#[test]
fn full_queue_makes_the_producer_back_off_until_a_consumer_drains_it() {
    let q = TestQueue::new("full");
    let producer = produce_sample(&q, &["--max-length", "10", "--num-records", "60"]).spawn();
    wait_until(Duration::from_secs(20), "queue filled to its limit", || q.depth() >= 10);
    let consumed =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--max-length", "10", "--count", "60"])
            .run()
            .expect_code(0);
    let out = wait(producer, Duration::from_secs(60)).expect_code(0);
    assert!(
        out.stderr.contains("queue full") && out.stderr.contains("produced 60 messages"),
        "{}",
        out.stderr
    );
    let mut ids: Vec<i64> = consumed
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["ID"].as_i64().expect("id")
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=60).collect::<Vec<_>>(), "every row exactly once");
}

#[test]
fn sigterm_stops_a_producer_with_an_exact_report() {
    let q = TestQueue::new("stop");
    let child = produce_sample(&q, &["--interval", "0.02"]).spawn();
    wait_until(Duration::from_secs(20), "some rows confirmed", || q.depth() >= 20);
    let status =
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let out = wait(child, Duration::from_secs(20)).expect_code(0);
    let produced: u32 = out
        .stderr
        .split("produced ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {}", out.stderr));
    assert!(produced < 300, "stopped early: {}", out.stderr);
    assert_eq!(q.depth(), produced, "the summary counts exactly what is in the queue");
}

#[test]
fn redelivered_and_republished_messages_are_dropped_by_id() {
    let q = TestQueue::new("dedupe");
    for _ in 0..2 {
        produce_sample(&q, &["--num-records", "30"]).run().expect_code(0);
    }
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "60"])
        .run()
        .expect_code(0)
        .stderr_has("duplicates 30");
    assert_eq!(out.stdout.lines().count(), 30);
}

#[test]
fn items_over_the_message_size_limit_are_skipped_before_sending() {
    let q = TestQueue::new("toobig");
    let images = data("images");
    let out = mqdemo(&[
        "produce",
        "image",
        "--directory",
        s(&images),
        "--queue",
        &q.name,
        "--max-message-size",
        "2500",
    ])
    .run()
    .expect_code(1);
    assert!(
        out.stderr.contains("over the 2.4 KiB message size limit")
            && out.stderr.contains("max_message_size"),
        "{}",
        out.stderr
    );
    let skipped = out.stderr.matches("skipped ").count() - 1; // minus the summary's "skipped N"
    assert!(skipped >= 1, "{}", out.stderr);
    assert_eq!(q.depth() as usize, 6 - skipped);
}

#[test]
fn the_next_url_is_tried_when_the_first_does_not_answer() {
    let q = TestQueue::new("twourls");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dead_url = format!("amqp://guest:guest@127.0.0.1:{dead}/%2f");
    let good = crate::support::url();
    let texts = data("texts");
    mqdemo(&[
        "--url",
        &dead_url,
        "--url",
        &good,
        "produce",
        "text",
        "--directory",
        s(&texts),
        "--queue",
        &q.name,
    ])
    .run()
    .expect_code(0);
    assert_eq!(q.depth(), 4);
}

//! Every consumer keeps what it cannot use: the message goes, as it came plus the reason, to
//! a failed queue (default `<queue>.failed`), confirmed before the original is acked.

use crate::support::{TestQueue, consume_files, mqdemo};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};

/// Properties another producer (pika, amqp-publish) might set, with header types mqdemo does
/// not model.
fn foreign_props(id: &str) -> AmqpProperties {
    let mut h = FieldTable::new();
    h.insert("source".into(), AmqpValue::LongString("sensor-7".into()));
    h.insert("calibrated".into(), AmqpValue::Boolean(true));
    h.insert("gain".into(), AmqpValue::Double(1.5));
    AmqpProperties::default()
        .with_message_id(id.into())
        .with_content_type("text/plain".into())
        .with_app_id("amqp-publish".into())
        .with_timestamp(1_700_000_000)
        .with_priority(3)
        .with_correlation_id("corr-1".into())
        .with_expiration("600000".into())
        .with_headers(h)
}

fn header<'a>(d: &'a amiquip::Delivery, name: &str) -> Option<&'a AmqpValue> {
    d.properties.headers().as_ref().and_then(|h| h.get(name))
}

fn error_of(d: &amiquip::Delivery) -> String {
    match header(d, "x-mqdemo-error") {
        Some(AmqpValue::LongString(s)) => s.clone(),
        other => panic!("no x-mqdemo-error header: {other:?}"),
    }
}

#[test]
fn a_body_that_is_not_json_is_kept_as_it_came_in_the_failed_queue() {
    let q = TestQueue::new("keep-nonjson");
    q.publish_raw(b"this is not json", foreign_props("m1"));
    q.publish_raw(br#"{"a":1}"#, AmqpProperties::default());
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "2"])
        .run()
        .expect_code(1)
        .stderr_has(&format!("message m1 sent to {}.failed", q.name))
        .stderr_has(&format!("failed 1 (sent to {}.failed)", q.name));
    assert_eq!(out.stdout, "{\"a\":1}\n");
    assert_eq!(q.depth(), 0, "both messages were handled");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let kept = failed.get().expect("the undecodable message is kept");
    assert_eq!(kept.body, b"this is not json");
    let p = &kept.properties;
    assert_eq!(p.message_id().as_deref(), Some("m1"));
    assert_eq!(p.content_type().as_deref(), Some("text/plain"));
    assert_eq!(p.app_id().as_deref(), Some("amqp-publish"), "the producer's, not mqdemo's");
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(*p.priority(), Some(3));
    assert_eq!(p.correlation_id().as_deref(), Some("corr-1"));
    assert_eq!(*p.delivery_mode(), Some(2), "kept persistently");
    assert_eq!(p.expiration().as_deref(), None, "a kept copy does not expire");
    assert_eq!(
        header(&kept, "x-mqdemo-original-expiration"),
        Some(&AmqpValue::LongString("600000".into()))
    );
    assert_eq!(header(&kept, "calibrated"), Some(&AmqpValue::Boolean(true)));
    assert_eq!(header(&kept, "gain"), Some(&AmqpValue::Double(1.5)));
    assert_eq!(header(&kept, "source"), Some(&AmqpValue::LongString("sensor-7".into())));
    assert!(error_of(&kept).contains("JSON"), "{}", error_of(&kept));
    assert!(failed.get().is_none(), "kept once");
}

#[test]
fn a_row_with_a_column_the_csv_header_lacks_is_kept() {
    let q = TestQueue::new("keep-column");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("rows.csv");
    q.publish_raw(br#"{"a":1,"b":2}"#, AmqpProperties::default().with_message_id("r1".into()));
    q.publish_raw(br#"{"a":3,"z":4}"#, AmqpProperties::default().with_message_id("r2".into()));
    q.publish_raw(br#"{"a":5,"b":6}"#, AmqpProperties::default().with_message_id("r3".into()));
    let csv_arg = csv.to_string_lossy().to_string();
    let args = ["consume", "tabular", "--queue", &q.name, "--format", "csv", "--output", &csv_arg];
    let mut args = args.to_vec();
    args.extend(["--idle-timeout", "1"]);
    mqdemo(&args).run().expect_code(1).stderr_has("message r2 sent to");
    assert_eq!(std::fs::read_to_string(&csv).expect("csv"), "a,b\n1,2\n5,6\n");
    assert_eq!(q.depth(), 0);
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let kept = failed.get().expect("the misfit row is kept");
    assert_eq!(kept.body, br#"{"a":3,"z":4}"#);
    assert!(error_of(&kept).contains('z'), "names the column: {}", error_of(&kept));
}

#[test]
fn a_file_whose_body_does_not_match_its_sha256_is_kept() {
    let q = TestQueue::new("keep-sha");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = FieldTable::new();
    h.insert("source".into(), AmqpValue::LongString("a.txt".into()));
    h.insert("sha256".into(), AmqpValue::LongString("00".repeat(32)));
    q.publish_raw(b"hello", AmqpProperties::default().with_headers(h).with_message_id("f1".into()));
    consume_files(&q, "text", dir.path(), &["--count", "1"])
        .run()
        .expect_code(1)
        .stderr_has("message f1 sent to");
    assert!(!dir.path().join("a.txt").exists());
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let kept = failed.get().expect("kept");
    assert_eq!(kept.body, b"hello");
    assert!(error_of(&kept).contains("sha256"));
}

#[test]
fn the_failed_queue_can_be_named_or_given_up_explicitly() {
    let q = TestQueue::new("keep-named");
    let mine = TestQueue::new("keep-named-mine");
    q.publish_raw(b"nope", AmqpProperties::default().with_message_id("n1".into()));
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "1",
        "--failed-queue",
        &mine.name,
    ])
    .run()
    .expect_code(1)
    .stderr_has(&format!("(sent to {})", mine.name));
    assert_eq!(mine.depth(), 1);
    assert_eq!(TestQueue::named(format!("{}.failed", q.name)).depth(), 0);

    q.publish_raw(b"nope", AmqpProperties::default().with_message_id("n2".into()));
    mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "1", "--no-failed-queue"])
        .run()
        .expect_code(1)
        .stderr_has("rejected message n2");
    assert_eq!(q.depth(), 0, "rejected without requeue: the user asked for it");
    assert_eq!(mine.depth(), 1, "nothing more kept");

    let both =
        ["consume", "tabular", "--queue", &q.name, "--no-failed-queue", "--failed-queue", "x"];
    let out = mqdemo(&both).run().expect_code(2);
    assert!(out.stderr.contains("--failed-queue"), "{}", out.stderr);
    let same = ["consume", "tabular", "--queue", &q.name, "--failed-queue", &q.name];
    let out = mqdemo(&same).run().expect_code(2);
    assert!(out.first_error_line().contains("--failed-queue"), "{}", out.stderr);
}

#[test]
fn with_a_dead_letter_queue_failed_messages_go_there() {
    let q = TestQueue::new("keep-dlq");
    let dlq = TestQueue::new("keep-dlq-target");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("note.txt"), "not json").expect("write");
    let dir_arg = dir.path().to_string_lossy().to_string();
    let with_dlq = ["--queue", q.name.as_str(), "--dead-letter-queue", dlq.name.as_str()];
    // A text file sent into a queue read as tabular: its body is not JSON.
    let mut produce = vec!["produce", "text", "--directory", &dir_arg];
    produce.extend(with_dlq);
    mqdemo(&produce).run().expect_code(0);
    let mut consume = vec!["consume", "tabular", "--count", "1"];
    consume.extend(with_dlq);
    mqdemo(&consume).run().expect_code(1).stderr_has(&format!("(sent to {})", dlq.name));
    let kept = dlq.get().expect("in the dead-letter queue");
    assert_eq!(kept.body, b"not json");
    assert!(!error_of(&kept).is_empty());
    assert_eq!(header(&kept, "x-death"), None, "published by mqdemo, not dead-lettered");
    assert_eq!(TestQueue::named(format!("{}.failed", q.name)).depth(), 0);
}

#[test]
fn a_failed_copy_the_broker_refuses_leaves_the_message_in_its_queue() {
    let q = TestQueue::new("keep-refused");
    let mut failed = TestQueue::named(format!("{}.failed", q.name));
    failed.set_policy(r#"{"max-length":0,"overflow":"reject-publish"}"#);
    q.publish_raw(b"not json", AmqpProperties::default().with_message_id("x1".into()));
    let out =
        mqdemo(&["--retry-for", "1", "consume", "tabular", "--queue", &q.name, "--count", "1"])
            .run();
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(q.depth(), 1, "never acked without a confirmed copy:\n{}", out.stderr);
    assert_eq!(failed.depth(), 0);
}

//! Every consumer keeps what it cannot use: the message goes, as it came plus the reason, to
//! a failed queue (default `<queue>.failed`), confirmed before the original is acked.

use crate::support::header_of as header;
use crate::support::{TestQueue, consume_files, mqdemo};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};

/// Properties another producer (pika, amqp-publish) might set, with header types mqdemo does
/// not model.
fn foreign_props(id: &str) -> AmqpProperties {
    let mut h = FieldTable::new();
    h.insert("source".into(), AmqpValue::LongString("sensor-7".into()));
    h.insert("calibrated".into(), AmqpValue::Boolean(true));
    h.insert("gain".into(), AmqpValue::Double(1.5));
    h.insert("count".into(), AmqpValue::LongInt(7));
    h.insert("level".into(), AmqpValue::ShortShortUInt(200));
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
        .stderr_has("message m1 failed (body is not JSON")
        .stderr_has(&format!("sending it to {}.failed", q.name))
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
    assert_eq!(header(&kept, "count"), Some(&AmqpValue::LongInt(7)), "integer types kept");
    assert_eq!(header(&kept, "level"), Some(&AmqpValue::ShortShortUInt(200)));
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
    mqdemo(&args).run().expect_code(1).stderr_has("message r2 failed");
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
        .stderr_has("message f1 failed");
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

/// A raw publish with `props` to `queue` (declared plainly), as `user:password`.
fn publish_as(user: &str, queue: &str, body: &[u8], props: AmqpProperties) {
    let url = crate::support::url().replacen("guest:guest", user, 1);
    let mut conn = amiquip::Connection::insecure_open(&url).expect("connect");
    let ch = conn.open_channel(None).expect("channel");
    let durable = amiquip::QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue, durable).expect("declare");
    ch.basic_publish("", amiquip::Publish::with_properties(body, queue, props)).expect("publish");
    let _ = conn.close();
}

#[test]
fn a_cc_header_naming_the_input_does_not_bring_the_copy_back() {
    let q = TestQueue::new("keep-cc");
    let mut h = FieldTable::new();
    h.insert("CC".into(), AmqpValue::FieldArray(vec![AmqpValue::LongString(q.name.clone())]));
    q.publish_raw(
        b"not json",
        AmqpProperties::default().with_message_id("c1".into()).with_headers(h),
    );
    let run = mqdemo(&["consume", "tabular", "--queue", &q.name, "--idle-timeout", "1"]).spawn();
    let out = crate::support::wait(run, std::time::Duration::from_secs(30));
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(q.depth(), 0, "the copy did not come back");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    assert_eq!(failed.depth(), 1, "one copy:\n{}", out.stderr);
    let kept = failed.get().expect("kept");
    assert_eq!(header(&kept, "CC"), None, "not routed again");
    assert!(header(&kept, "x-mqdemo-original-cc").is_some(), "but recorded");
}

#[test]
fn properties_near_the_frame_limit_still_make_a_copy_the_broker_takes() {
    let q = TestQueue::new("keep-frame");
    let long = "p".repeat(255);
    let mut h = FieldTable::new();
    // With the long properties below the whole set is ~130.9 KB: the broker accepts it
    // (frame_max 131,072), and the copy, with a reason besides, must still fit.
    h.insert("pad".into(), AmqpValue::LongString("x".repeat(129_650)));
    let props = AmqpProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding(long.clone())
        .with_priority(1)
        .with_expiration("99999999".into())
        .with_message_id("big1".into())
        .with_timestamp(5)
        .with_type_(long.clone())
        .with_app_id(long.clone())
        .with_cluster_id(long)
        .with_headers(h);
    q.publish_raw(b"not json", props);
    let run =
        mqdemo(&["--retry-for", "3", "consume", "tabular", "--queue", &q.name, "--count", "1"]);
    let out = run.run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(q.depth(), 0, "kept, not stuck at the head of the queue:\n{}", out.stderr);
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let kept = failed.get().expect("kept");
    assert_eq!(kept.body, b"not json");
    assert_eq!(header(&kept, "pad"), None, "the headers that did not fit are left off");
    assert_eq!(header(&kept, "x-mqdemo-dropped-headers"), Some(&AmqpValue::LongLongInt(1)));
    assert!(!error_of(&kept).is_empty());
}

/// A broker user of this test's own, deleted on drop.
struct TempUser(String);

impl TempUser {
    fn new(name: &str) -> TempUser {
        let ctl = |args: &[&str]| {
            let ok = std::process::Command::new("rabbitmqctl").arg("-q").args(args).status();
            assert!(ok.is_ok_and(|s| s.success()), "rabbitmqctl {args:?}");
        };
        ctl(&["add_user", name, "pw"]);
        ctl(&["set_permissions", name, ".*", ".*", ".*"]);
        TempUser(name.to_string())
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new("rabbitmqctl").args(["-q", "delete_user", &self.0]).status();
    }
}

#[test]
fn a_user_id_set_by_another_user_does_not_block_the_copy() {
    let q = TestQueue::new("keep-userid");
    let user = TempUser::new(&format!("it-alice-{}", std::process::id()));
    let props = AmqpProperties::default().with_message_id("u1".into()).with_user_id(user.0.clone());
    publish_as(&format!("{}:pw", user.0), &q.name, b"not json", props);
    let out =
        mqdemo(&["--retry-for", "3", "consume", "tabular", "--queue", &q.name, "--count", "1"])
            .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(q.depth(), 0, "{}", out.stderr);
    let kept = TestQueue::named(format!("{}.failed", q.name)).get().expect("kept");
    assert_eq!(kept.properties.user_id().as_deref(), None);
    assert_eq!(
        header(&kept, "x-mqdemo-original-user-id"),
        Some(&AmqpValue::LongString(user.0.clone()))
    );
}

#[test]
fn a_failed_queue_that_cannot_be_declared_names_the_way_out() {
    let q = TestQueue::new("keep-clash");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    // The failed queue exists with arguments mqdemo would not give it.
    let mut conn = crate::support::connect();
    let ch = conn.open_channel(None).expect("channel");
    let mut args = FieldTable::new();
    args.insert("x-max-length".into(), AmqpValue::LongLongInt(5));
    let opts =
        amiquip::QueueDeclareOptions { durable: true, arguments: args, ..Default::default() };
    ch.queue_declare(failed.name.clone(), opts).expect("declare");
    let _ = conn.close();
    q.publish_raw(b"not json", AmqpProperties::default().with_message_id("k1".into()));
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "1"]).run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let first = out.stderr.lines().find(|l| l.starts_with("mqdemo: error:")).unwrap_or("");
    assert!(first.contains("--failed-queue") && first.contains(&failed.name), "{}", out.stderr);
    assert_eq!(q.depth(), 1, "the message stays");
}

//! Messages from other producers, poison bodies and hostile headers.

use crate::support::{TestQueue, consume_files, mqdemo, tree};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};

fn with_source(source: &str) -> AmqpProperties {
    let mut h = FieldTable::new();
    h.insert("source".into(), AmqpValue::LongString(source.into()));
    AmqpProperties::default().with_headers(h).with_content_type("image/png".into())
}

#[test]
fn undecodable_tabular_body_is_kept_aside_and_the_consumer_goes_on() {
    let q = TestQueue::new("poison-tab");
    q.publish_raw(b"this is not json", AmqpProperties::default());
    q.publish_raw(br#"{"a":1}"#, AmqpProperties::default());
    q.publish_raw(b"[1,2,3]", AmqpProperties::default());
    q.publish_raw(br#"[{"a":2},{"a":3}]"#, AmqpProperties::default());
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "4"])
        .run()
        .expect_code(1)
        .stderr_has(&format!("sent to {}.failed", q.name));
    assert_eq!(out.stdout, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    assert_eq!(q.depth(), 0, "failed messages are not requeued");
    assert_eq!(TestQueue::named(format!("{}.failed", q.name)).depth(), 2, "but kept");
}

#[test]
fn foreign_messages_are_named_from_message_id_or_body_hash() {
    let q = TestQueue::new("foreign");
    let out = tempfile::tempdir().expect("tempdir");
    q.publish_raw(b"\x89PNG fake", AmqpProperties::default().with_content_type("image/png".into()));
    q.publish_raw(b"plain", AmqpProperties::default().with_message_id("order-42".into()));
    q.publish_raw(
        b"hello",
        AmqpProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("../../evil".into()),
    );
    consume_files(&q, "image", out.path(), &["--count", "3"]).run().expect_code(0);
    let files = tree(out.path());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let hash = mqdemo::codec::sha256_hex(b"\x89PNG fake");
    assert!(names.contains(&format!("{}.png", &hash[..32]).as_str()), "{names:?}");
    assert!(names.contains(&"order-42.bin"), "{names:?}");
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| !n.contains("..") && !n.contains('/')), "{names:?}");
}

#[test]
fn consumer_never_writes_outside_output_dir() {
    let q = TestQueue::new("hostile");
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("out");
    let long = "x".repeat(300);
    let hostile = [
        "../../x.png",
        "/etc/passwd",
        "a/./../../b.png",
        "nul\0byte.png",
        &long,
        "CON",
        "com1.png",
        "..",
        "a/../../../c.png",
    ];
    for (i, src) in hostile.iter().enumerate() {
        q.publish_raw(format!("body {i}").as_bytes(), with_source(src));
    }
    let output = consume_files(&q, "image", &out, &["--count", &hostile.len().to_string()])
        .run()
        .expect_code(0)
        .stderr_has("unsafe source header");
    let files = tree(root.path());
    assert_eq!(
        files.len(),
        hostile.len(),
        "{:?}\n{}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>(),
        output.stderr
    );
    assert!(
        files.iter().all(|(name, _)| name.starts_with("out/") && name.matches('/').count() == 1)
    );
}

#[test]
fn existing_file_with_other_content_is_never_overwritten() {
    let q = TestQueue::new("clobber");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(out.path().join("cat.png"), b"precious").expect("seed");
    q.publish_raw(b"new content", with_source("cat.png"));
    consume_files(&q, "image", out.path(), &["--count", "1"])
        .run()
        .expect_code(0)
        .stderr_has("exists with other content");
    assert_eq!(std::fs::read(out.path().join("cat.png")).expect("read"), b"precious");
    let files = tree(out.path());
    assert_eq!(files.len(), 2);
    assert!(files.iter().any(|(_, b)| b == b"new content"));
}

#[test]
fn body_that_does_not_match_its_sha256_is_rejected() {
    let q = TestQueue::new("sha");
    let out = tempfile::tempdir().expect("tempdir");
    let publish = |source: &str, body: &[u8], sha: String| {
        let mut h = FieldTable::new();
        h.insert("source".into(), AmqpValue::LongString(source.into()));
        h.insert("sha256".into(), AmqpValue::LongString(sha));
        q.publish_raw(body, AmqpProperties::default().with_headers(h));
    };
    // Small and large (checked on a second thread while written) corrupt bodies, around a
    // good large file that shares their commit group.
    let big = vec![7u8; 2 * 1024 * 1024];
    publish("a.png", b"corrupted", "00".repeat(32));
    publish("good.png", &big, mqdemo::codec::sha256_hex(&big));
    publish("b.png", &vec![8u8; 2 * 1024 * 1024], mqdemo::codec::sha256_hex(&big));
    let run = consume_files(&q, "image", out.path(), &["--count", "3"]).run().expect_code(1);
    assert_eq!(run.stderr.matches("does not match its sha256").count(), 2, "{}", run.stderr);
    let files = tree(out.path());
    assert_eq!(files.len(), 1, "only the intact file is written, no temporary file is left");
    assert_eq!(files[0], ("good.png".to_string(), big));
    assert_eq!(q.depth(), 0);
}

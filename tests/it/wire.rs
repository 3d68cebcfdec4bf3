//! Wire format version 1, read back with a plain AMQP client.

use crate::support::header;
use crate::support::{TestQueue, data, mqdemo, produce_sample, s};
use amiquip::AmqpValue;

fn assert_common(d: &amiquip::Delivery, kind: &str, content_type: &str) {
    let p = &d.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(p.content_type().as_deref(), Some(content_type));
    assert_eq!(p.type_().as_deref(), Some(kind));
    assert_eq!(p.app_id().as_deref(), Some("mqdemo"));
    assert!(p.timestamp().is_some_and(|t| t > 1_600_000_000));
    assert_eq!(p.message_id().as_ref().map(String::len), Some(32));
}

#[test]
fn tabular_message_has_properties_and_typed_headers() {
    let q = TestQueue::new("wire-tab");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name, "--num-records", "2"])
        .run()
        .expect_code(0);
    let d = q.get().expect("message 1");
    assert_common(&d, "tabular", "application/json");
    assert_eq!(header(&d, "source"), &AmqpValue::LongString("tabular_data.csv".into()));
    assert_eq!(header(&d, "row"), &AmqpValue::LongLongInt(1));
    let body: serde_json::Value = serde_json::from_slice(&d.body).expect("json body");
    assert_eq!(body["ID"], serde_json::json!(1));
    let d2 = q.get().expect("message 2");
    assert_eq!(header(&d2, "row"), &AmqpValue::LongLongInt(2));
}

#[test]
fn message_ids_are_deterministic_across_runs() {
    let q = TestQueue::new("wire-ids");
    for _ in 0..2 {
        produce_sample(&q, &["--num-records", "3"]).run().expect_code(0);
    }
    let ids: Vec<String> = (0..6)
        .map(|_| q.get().expect("msg").properties.message_id().clone().expect("id"))
        .collect();
    assert_eq!(ids[..3], ids[3..]);
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn image_message_carries_size_hash_and_dimensions() {
    let q = TestQueue::new("wire-img");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let png = std::fs::read(data("images/gradient.png")).expect("png");
    std::fs::write(dir.path().join("sub/g.png"), &png).expect("write");
    mqdemo(&["produce", "image", "--directory", s(dir.path()), "--queue", &q.name])
        .run()
        .expect_code(0);
    let d = q.get().expect("message");
    assert_common(&d, "image", "image/png");
    assert_eq!(d.body, png);
    assert_eq!(header(&d, "source"), &AmqpValue::LongString("sub/g.png".into()));
    assert_eq!(header(&d, "size"), &AmqpValue::LongLongInt(png.len() as i64));
    assert_eq!(header(&d, "width"), &AmqpValue::LongLongInt(64));
    assert_eq!(header(&d, "height"), &AmqpValue::LongLongInt(48));
    let AmqpValue::LongString(sha) = header(&d, "sha256") else { panic!("sha256 is a string") };
    assert_eq!(sha.len(), 64);
    assert!(sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

#[test]
fn text_line_messages_carry_line_numbers_and_terminators() {
    let q = TestQueue::new("wire-text");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.txt"), "one\r\ntwo").expect("write");
    mqdemo(&[
        "produce",
        "text",
        "--directory",
        s(dir.path()),
        "--split",
        "line",
        "--queue",
        &q.name,
    ])
    .run()
    .expect_code(0);
    let first = q.get().expect("line 1");
    assert_common(&first, "text", "text/plain; charset=utf-8");
    assert_eq!(first.body, b"one\r\n");
    assert_eq!(header(&first, "line"), &AmqpValue::LongLongInt(1));
    let second = q.get().expect("line 2");
    assert_eq!(second.body, b"two");
    assert_eq!(header(&second, "line"), &AmqpValue::LongLongInt(2));
    assert!(q.get().is_none());
}

//! The ML plumbing: the SQLite results sink, `pipe` stages with a model child, `serve` and
//! `request`.

use crate::support::{TestQueue, mqdemo};
use amiquip::AmqpProperties;

fn sqlite_rows(db: &std::path::Path, table: &str) -> Vec<(String, i64, String)> {
    let conn = rusqlite::Connection::open(db).expect("open results db");
    let sql = format!("SELECT message_id, row, label FROM {table} ORDER BY row");
    let mut stmt = conn.prepare(&sql).expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn sqlite_results_are_stored_once_even_when_redelivered() {
    let q = TestQueue::new("sqlite");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("results.db");
    let props = |id: &str| AmqpProperties::default().with_message_id(id.into());
    q.publish_raw(br#"{"row":1,"label":"ok","score":0.1}"#, props("m1"));
    q.publish_raw(br#"{"row":2,"label":"fraud","score":0.9}"#, props("m2"));
    // A redelivery of m1 (same id, as after a lost ack) and a batch of two rows.
    q.publish_raw(br#"{"row":1,"label":"ok","score":0.1}"#, props("m1"));
    q.publish_raw(br#"[{"row":3,"label":"ok"},{"row":4,"label":"ok"}]"#, props("b1"));
    let db_arg = db.to_str().expect("utf8 path");
    let consume = |count: &str| {
        let args = ["consume", "tabular", "--queue", &q.name, "--sqlite", db_arg];
        mqdemo(&[&args[..], &["--table", "predictions", "--count", count]].concat()).run()
    };
    let out = consume("4").expect_code(0);
    assert!(out.stderr.contains("rows 4, duplicates 1"), "{}", out.stderr);
    // A second consumer run sees m2 redelivered (as after a crash before the ack).
    q.publish_raw(br#"{"row":2,"label":"fraud","score":0.9}"#, props("m2"));
    consume("1").expect_code(0).stderr_has("duplicates 1");
    let rows = sqlite_rows(&db, "predictions");
    assert_eq!(
        rows,
        [
            ("m1".to_string(), 1, "ok".to_string()),
            ("m2".to_string(), 2, "fraud".to_string()),
            ("b1#1".to_string(), 3, "ok".to_string()),
            ("b1#2".to_string(), 4, "ok".to_string()),
        ]
    );
    assert_eq!(q.depth(), 0);
}

//! Storing what other producers send: content SQLite cannot hold fails that one message
//! (never the queue), and repeats without a message id are data, never merged — in
//! `consume --sqlite`, in `pipe` answers, in `serve` results and in the failed queue.

use crate::support::{TestQueue, mqdemo, s, wait_until};
use amiquip::{AmqpProperties, Publish};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn with_id(id: &str) -> AmqpProperties {
    AmqpProperties::default().with_message_id(id.into())
}

/// Publish to an existing queue without declaring it (it may have arguments).
fn publish(q: &TestQueue, body: &[u8], props: AmqpProperties) {
    let mut conn = crate::support::connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.basic_publish("", Publish::with_properties(body, q.name.clone(), props)).expect("publish");
    let _ = ch.close();
    let _ = conn.close();
}

/// `consume tabular --sqlite db --table t` on `q`, with `extra` arguments.
fn consume_sqlite(q: &TestQueue, db: &Path, extra: &[&str]) -> crate::support::Mqdemo {
    let args = ["consume", "tabular", "--queue", &q.name, "--sqlite", s(db), "--table", "t"];
    mqdemo(&[&args[..], extra].concat())
}

fn columns(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("open results db");
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('t')").expect("prepare");
    stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("columns")
}

fn ids_and_rows(db: &Path) -> Vec<(String, Option<i64>)> {
    let conn = rusqlite::Connection::open(db).expect("open results db");
    let mut stmt = conn.prepare("SELECT message_id, row FROM t ORDER BY rowid").expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A JSON object with `n` keys `{prefix}0..` (and a `row`).
fn wide_row(row: i64, prefix: &str, n: usize) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("row".into(), row.into());
    for i in 0..n {
        m.insert(format!("{prefix}{i}"), i.into());
    }
    serde_json::to_vec(&m).expect("json")
}

/// Declare `q` with a dead-letter queue the way a consumer with --dead-letter-queue does.
fn declare_with_dead_letters(q: &TestQueue, dlq: &TestQueue) {
    let args = ["consume", "tabular", "--queue", &q.name, "--dead-letter-queue", &dlq.name];
    mqdemo(&[&args[..], &["--idle-timeout", "0.2"]].concat()).run().expect_code(0);
}

#[test]
fn sqlite_dead_letters_a_key_with_nul_alone_and_stores_the_messages_behind_it() {
    let (q, dlq) = (TestQueue::new("sql-nul"), TestQueue::new("sql-nul-dead"));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    declare_with_dead_letters(&q, &dlq);
    publish(&q, br#"{"row":1,"label":"ok"}"#, with_id("m1"));
    publish(&q, b"{\"row\":2,\"a\\u0000b\":1}", with_id("m2"));
    publish(&q, br#"{"row":3,"label":"ok"}"#, with_id("m3"));
    let out = consume_sqlite(&q, &db, &["--dead-letter-queue", &dlq.name, "--count", "3"])
        .run()
        .expect_code(1)
        .stderr_has("message m2 failed (")
        .stderr_has("NUL");
    assert!(
        out.stderr.contains("mqdemo: failed 1 (sent to") && out.stderr.contains("; rows 2\n"),
        "{}",
        out.stderr
    );
    assert_eq!(ids_and_rows(&db), [("m1".into(), Some(1)), ("m3".into(), Some(3))]);
    assert_eq!(columns(&db), ["message_id", "row", "label"]);
    assert_eq!(q.depth(), 0, "nothing requeued");
    wait_until(Duration::from_secs(10), "the dead letter", || dlq.depth() == 1);
    assert_eq!(dlq.get().expect("dead letter").body, b"{\"row\":2,\"a\\u0000b\":1}");
}

#[test]
fn sqlite_refuses_rows_too_wide_and_commits_nothing_of_a_refused_message() {
    let q = TestQueue::new("sql-wide");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    q.publish_raw(br#"{"row":1,"label":"ok"}"#, with_id("m1"));
    // 2,000 keys + message_id: more than SQLite's 2,000 columns.
    q.publish_raw(&wide_row(2, "k", 1999), with_id("m2"));
    // 1,001 new columns in one message: over the per-message cap of 1,000.
    q.publish_raw(&wide_row(3, "c", 1001), with_id("m3"));
    // A batch whose second row cannot be stored: its first row and column stay out too.
    q.publish_raw(b"[{\"row\":4,\"fresh\":1},{\"row\":5,\"bad\\u0000\":1}]", with_id("m4"));
    q.publish_raw(br#"{"row":6,"label":"ok"}"#, with_id("m5"));
    let out = consume_sqlite(&q, &db, &["--count", "5"]).run().expect_code(1);
    for id in ["m2", "m3", "m4"] {
        assert!(out.stderr.contains(&format!("message {id} failed (")), "{id}: {}", out.stderr);
    }
    assert!(
        out.stderr.contains("m3 failed (it would add 1001 columns to t; at most 1000"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("mqdemo: failed 3 (sent to") && out.stderr.contains("; rows 2\n"),
        "{}",
        out.stderr
    );
    assert_eq!(columns(&db), ["message_id", "row", "label"], "no junk columns committed");
    assert_eq!(ids_and_rows(&db), [("m1".into(), Some(1)), ("m5".into(), Some(6))]);
    assert_eq!(q.depth(), 0, "nothing requeued");
    // The widest row SQLite can hold still goes in, across messages within the cap.
    q.publish_raw(&wide_row(7, "a", 1000), with_id("m6"));
    // (the 1,000 new columns of m6 are the cap, not over it)
    q.publish_raw(&wide_row(8, "b", 997), with_id("m7"));
    // Then the table is full: a new key is refused, known ones still go in.
    q.publish_raw(br#"{"row":9,"z":1}"#, with_id("m8"));
    q.publish_raw(br#"{"row":10,"a1":1}"#, with_id("m9"));
    let out = consume_sqlite(&q, &db, &["--count", "4"])
        .run()
        .expect_code(1)
        .stderr_has("message m8 failed (")
        .stderr_has("(t would need 2001 columns");
    assert!(
        out.stderr.contains("mqdemo: failed 1 (sent to") && out.stderr.contains("; rows 3\n"),
        "{}",
        out.stderr
    );
    assert_eq!(columns(&db).len(), 2000);
    assert_eq!(ids_and_rows(&db).len(), 5);
}

#[test]
fn sqlite_stores_identical_id_less_readings_as_separate_rows() {
    let q = TestQueue::new("sql-noid");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    let reading = br#"{"sensor":"t1","row":7}"#;
    for _ in 0..3 {
        q.publish_raw(reading, AmqpProperties::default());
    }
    // An empty message_id is no id either.
    q.publish_raw(reading, with_id(""));
    for _ in 0..2 {
        q.publish_raw(br#"[{"row":8},{"row":8}]"#, AmqpProperties::default());
    }
    // With an id, a repeat is a redelivery: stored once.
    q.publish_raw(br#"{"row":9}"#, with_id("r9"));
    q.publish_raw(br#"{"row":9}"#, with_id("r9"));
    let out = consume_sqlite(&q, &db, &["--count", "8"]).run().expect_code(0);
    assert!(out.stderr.contains("rows 9, duplicates 1"), "{}", out.stderr);
    let stored = ids_and_rows(&db);
    let rows: Vec<Option<i64>> = stored.iter().map(|r| r.1).collect();
    assert_eq!(rows, [7, 7, 7, 7, 8, 8, 8, 8, 9].map(Some));
    let ids: HashSet<&str> = stored.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids.len(), 9, "every id-less row has its own key: {stored:?}");
    let body_hash = &mqdemo::codec::sha256_hex(reading)[..32];
    assert!(ids.iter().all(|id| !id.contains(body_hash)), "{stored:?}");
}

/// The message ids of every message in `q` (taken off it).
fn drain_ids(q: &TestQueue, n: usize) -> Vec<Option<String>> {
    wait_until(Duration::from_secs(10), "the answers", || q.depth() as usize >= n);
    std::iter::from_fn(|| q.get()).map(|d| d.properties.message_id().clone()).collect()
}

fn assert_distinct_ids(ids: &[Option<String>], n: usize) {
    assert_eq!(ids.len(), n, "{ids:?}");
    let set: HashSet<&str> = ids.iter().map(|i| i.as_deref().expect("an id")).collect();
    assert_eq!(set.len(), n, "answers to different deliveries share an id: {ids:?}");
}

#[test]
fn pipe_answers_to_identical_id_less_inputs_are_never_merged() {
    let (input, output) = (TestQueue::new("pipe-noid-in"), TestQueue::new("pipe-noid-out"));
    let _failed = TestQueue::named(format!("{}.failed", input.name));
    let reading = br#"{"sensor":"t1","value":21.5}"#;
    for _ in 0..3 {
        input.publish_raw(reading, AmqpProperties::default());
    }
    // With an id, a repeat is a redelivery: answered once.
    input.publish_raw(reading, with_id("r1"));
    input.publish_raw(reading, with_id("r1"));
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", "cat"];
    let out = mqdemo(&[&args[..], &["--count", "5"]].concat()).run().expect_code(0);
    assert!(out.stderr.contains("; answered 4, duplicates 1\n"), "{}", out.stderr);
    // Downstream, a consumer keeps all four (it drops repeats by id).
    let rows = mqdemo(&["consume", "tabular", "--queue", &output.name, "--count", "4"])
        .run()
        .expect_code(0);
    assert_eq!(rows.stdout.lines().count(), 4, "{}", rows.stderr);
    assert!(!rows.stderr.contains("duplicates"), "zero counts are left out: {}", rows.stderr);
}

#[test]
fn serve_results_of_identical_id_less_requests_are_never_merged() {
    let (requests, results) = (TestQueue::new("serve-noid"), TestQueue::new("serve-noid-res"));
    let _failed = TestQueue::named(format!("{}.failed", requests.name));
    for _ in 0..3 {
        requests.publish_raw(br#"{"x":1}"#, AmqpProperties::default());
    }
    let args = ["serve", "--queue", &requests.name, "--results-queue", &results.name];
    mqdemo(&[&args[..], &["--exec", "cat", "--count", "3"]].concat()).run().expect_code(0);
    assert_distinct_ids(&drain_ids(&results, 3), 3);
}

#[test]
fn failed_copies_of_identical_id_less_inputs_are_never_merged() {
    let (input, output) = (TestQueue::new("pipe-noid-f"), TestQueue::new("pipe-noid-f-out"));
    let failed = TestQueue::named(format!("{}.failed", input.name));
    let model = r#"while IFS= read -r l; do case "$l" in *bad*) echo "no" >&2; exit 3;; esac; printf '%s\n' "$l"; done"#;
    // A good one first: a model that dies before any answer cannot start (the run stops).
    for body in [&br#"{"good":1}"#[..], br#"{"bad":1}"#, br#"{"bad":1}"#] {
        input.publish_raw(body, AmqpProperties::default());
    }
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", model];
    mqdemo(&[&args[..], &["--count", "3"]].concat()).run().expect_code(1);
    assert_distinct_ids(&drain_ids(&failed, 2), 2);
}

#[test]
fn sqlite_a_locked_database_stops_the_run_and_requeues_the_message() {
    let q = TestQueue::new("sql-locked");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    q.publish_raw(br#"{"row":1}"#, with_id("m1"));
    let run = consume_sqlite(&q, &db, &["--count", "2"]).watch();
    wait_until(Duration::from_secs(20), "the first row committed", || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
            .is_ok_and(|n| n == 1)
    });
    // Another writer holds the database: not the message's fault.
    let locker = rusqlite::Connection::open(&db).expect("open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    q.publish_raw(br#"{"row":2}"#, with_id("m2"));
    let out = run.finish(Duration::from_secs(40)).expect_code(1).stderr_has("locked");
    assert!(!out.stderr.contains("rejected message"), "{}", out.stderr);
    locker.execute_batch("ROLLBACK").expect("unlock");
    assert_eq!(q.depth(), 1, "the message stays in the queue");
    assert_eq!(ids_and_rows(&db), [("m1".into(), Some(1))]);
}

#[test]
fn sqlite_ids_that_look_like_batch_row_keys_are_not_merged() {
    let q = TestQueue::new("sql-prefix");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    // Row 1 of batch "b" and the single message "b#1" are different messages.
    q.publish_raw(br#"[{"row":1},{"row":2}]"#, with_id("b"));
    q.publish_raw(br#"{"row":3}"#, with_id("b#1"));
    q.publish_raw(br#"[{"row":4}]"#, with_id("b#2"));
    q.publish_raw(br#"{"row":5}"#, with_id("b#2#1"));
    let long = "p".repeat(250);
    q.publish_raw(br#"{"row":6}"#, with_id(&format!("{long}1")));
    q.publish_raw(br#"{"row":7}"#, with_id(&format!("{long}2")));
    let out = consume_sqlite(&q, &db, &["--count", "6"]).run().expect_code(0);
    assert!(out.stderr.contains("; rows 7\n"), "{}", out.stderr);
    let rows: Vec<Option<i64>> = ids_and_rows(&db).iter().map(|r| r.1).collect();
    assert_eq!(rows, [1, 2, 3, 4, 5, 6, 7].map(Some));
}

#[test]
fn sqlite_rejects_a_key_too_long_for_a_column_name_alone() {
    let q = TestQueue::new("sql-longkey");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    let key = "k".repeat(100_000);
    q.publish_raw(format!(r#"{{"row":1,"{key}":1}}"#).as_bytes(), with_id("m1"));
    q.publish_raw(br#"{"row":2}"#, with_id("m2"));
    consume_sqlite(&q, &db, &["--count", "2"])
        .run()
        .expect_code(1)
        .stderr_has("message m1 failed (")
        .stderr_has("(the key \"kkkk");
    assert_eq!(columns(&db), ["message_id", "row"]);
    assert_eq!(ids_and_rows(&db), [("m2".into(), Some(2))]);
}

//! The ML plumbing: the SQLite results sink, `pipe` stages with a model child, `serve` and
//! `request`.

use crate::support::{
    TestQueue, consume_files, count_files, csv_rows, data, mqdemo, produce_sample, s, tree, wait,
};
use amiquip::AmqpProperties;
use std::time::Duration;

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

/// A model in sh: echoes each line, but dies (exit 3, a reason on stderr) on row `bad`.
fn crashing_model(bad: u32) -> String {
    format!(
        r#"while IFS= read -r l; do case "$l" in *'"ID":{bad},'*) echo "ValueError: cannot score row {bad}" >&2; exit 3;; esac; printf '%s\n' "$l"; done"#
    )
}

fn ids_in(jsonl: &str) -> Vec<i64> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["ID"].as_i64().expect("ID")
        })
        .collect()
}

#[test]
fn pipe_survives_a_crashing_model_and_sends_the_failing_message_to_the_failed_queue() {
    let (input, output) = (TestQueue::new("pipe-in"), TestQueue::new("pipe-out"));
    let failed = TestQueue::named(format!("{}.failed", input.name));
    produce_sample(&input, &["--num-records", "50"]).run().expect_code(0);
    let model = crashing_model(7);
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", &model];
    let out = mqdemo(&[&args[..], &["--count", "50"]].concat())
        .run()
        .expect_code(1)
        .stderr_has("ValueError: cannot score row 7");
    assert!(out.stderr.contains("answered 49"), "{}", out.stderr);
    assert!(out.stderr.contains("model restarts 1"), "{}", out.stderr);
    // Nothing lost: 49 answers, 1 failed message with its reason, the input drained.
    assert_eq!(input.depth(), 0);
    assert_eq!(failed.depth(), 1);
    let dead = failed.get().expect("the failed message");
    let reason = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.get("x-mqdemo-error").cloned())
        .expect("x-mqdemo-error header");
    assert!(format!("{reason:?}").contains("cannot score row 7"), "{reason:?}");
    assert!(String::from_utf8_lossy(&dead.body).contains("\"ID\":7,"));
    let rows = mqdemo(&["consume", "tabular", "--queue", &output.name, "--count", "49"])
        .run()
        .expect_code(0);
    let mut ids = ids_in(&rows.stdout);
    ids.sort_unstable();
    assert_eq!(ids, (1..=50).filter(|i| *i != 7).collect::<Vec<_>>());
}

#[test]
fn a_model_that_cannot_start_stops_the_pipe_and_leaves_the_input_queued() {
    let (input, output) = (TestQueue::new("pipe-bad-in"), TestQueue::new("pipe-bad-out"));
    let failed = TestQueue::named(format!("{}.failed", input.name));
    produce_sample(&input, &["--num-records", "3"]).run().expect_code(0);
    let out = mqdemo(&[
        "pipe",
        "--from",
        &input.name,
        "--to",
        &output.name,
        "--exec",
        "no-such-model-xyz --serve",
        "--idle-timeout",
        "2",
    ])
    .run()
    .expect_code(1);
    let error = out.stderr.lines().find(|l| l.starts_with("mqdemo: error:")).unwrap_or_default();
    assert!(error.contains("--exec") && error.contains("fix the command"), "{}", out.stderr);
    assert!(error.contains("not found"), "the reason from the child's stderr: {error}");
    assert_eq!(input.depth(), 3, "nothing taken off the input");
    assert_eq!(failed.depth(), 0, "a broken model is not the messages' fault");
}

#[test]
fn pipe_frames_carry_images_untouched() {
    let (input, output) = (TestQueue::new("pipe-img-in"), TestQueue::new("pipe-img-out"));
    let _failed = TestQueue::named(format!("{}.failed", input.name));
    let images = data("images");
    mqdemo(&["produce", "image", "--directory", s(&images), "--queue", &input.name])
        .run()
        .expect_code(0);
    let n = count_files(&images).to_string();
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", "cat"];
    mqdemo(&[&args[..], &["--framing", "frames", "--count", &n]].concat()).run().expect_code(0);
    let dir = tempfile::tempdir().expect("tempdir");
    consume_files(&output, "image", dir.path(), &["--count", &n]).run().expect_code(0);
    assert_eq!(tree(dir.path()), tree(&images));
}

#[test]
fn two_request_clients_at_once_each_get_only_their_own_replies_and_results_are_stored() {
    let (requests, results) = (TestQueue::new("serve-req"), TestQueue::new("serve-res"));
    let _failed = TestQueue::named(format!("{}.failed", requests.name));
    let server = mqdemo(&[
        "serve",
        "--queue",
        &requests.name,
        "--results-queue",
        &results.name,
        "--exec",
        "cat",
        "--count",
        "200",
    ])
    .watch();
    // Two clients with different rows: the echo model's replies show whose they are.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = csv_rows(dir.path(), "other.csv", 1001..=1100);
    let sample_path = data("tabular_data.csv");
    let client = |file: &std::path::Path, concurrency: &str| {
        mqdemo(&[
            "request",
            "--queue",
            &requests.name,
            "--file",
            s(file),
            "--num-records",
            "100",
            "--concurrency",
            concurrency,
        ])
        .spawn()
    };
    let (a, b) = (client(&sample_path, "10"), client(&other, "1"));
    let (a, b) = (wait(a, Duration::from_secs(60)), wait(b, Duration::from_secs(60)));
    let (a, b) = (a.expect_code(0), b.expect_code(0));
    assert_eq!(ids_in(&a.stdout), (1..=100).collect::<Vec<_>>(), "client A, in request order");
    assert_eq!(ids_in(&b.stdout), (1001..=1100).collect::<Vec<_>>(), "client B");
    assert!(a.stderr.contains("latency p50"), "{}", a.stderr);
    server.finish(Duration::from_secs(30)).expect_code(0);
    // Every answer also went to the results queue: one row per request in SQLite.
    let db = dir.path().join("results.db");
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &results.name,
        "--sqlite",
        s(&db),
        "--table",
        "predictions",
        "--count",
        "200",
    ])
    .run()
    .expect_code(0);
    let conn = rusqlite::Connection::open(&db).expect("open results db");
    let n: i64 =
        conn.query_row("SELECT count(*) FROM predictions", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 200);
}

#[test]
fn pipe_workers_run_one_model_child_each() {
    let (input, output) = (TestQueue::new("pipe-w-in"), TestQueue::new("pipe-w-out"));
    let _failed = TestQueue::named(format!("{}.failed", input.name));
    produce_sample(&input, &["--num-records", "30"]).run().expect_code(0);
    // Each child answers with its own process id, slowly enough (50 ms) that all three
    // workers are consuming long before the 30 messages are done.
    let model = r#"while IFS= read -r l; do sleep 0.05; echo "{\"pid\":$$}"; done"#;
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", model];
    let extra = ["--workers", "3", "--prefetch", "1", "--count", "30"];
    mqdemo(&[&args[..], &extra[..]].concat()).run().expect_code(0);
    let rows = mqdemo(&["consume", "tabular", "--queue", &output.name, "--count", "30"])
        .run()
        .expect_code(0);
    let pids: std::collections::HashSet<&str> = rows.stdout.lines().collect();
    assert_eq!(rows.stdout.lines().count(), 30);
    assert_eq!(pids.len(), 3, "three children shared the work: {pids:?}");
}

#[test]
fn pipe_killed_mid_stream_and_restarted_loses_nothing() {
    let (input, output) = (TestQueue::new("pipe-kill-in"), TestQueue::new("pipe-kill-out"));
    let _failed = TestQueue::named(format!("{}.failed", input.name));
    produce_sample(&input, &["--num-records", "200"]).run().expect_code(0);
    // A slow echo model, so the kill lands mid-stream with answers published but not all
    // of their inputs acked.
    let model = r#"while IFS= read -r l; do sleep 0.01; printf '%s\n' "$l"; done"#;
    let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", model];
    let first = mqdemo(&[&args[..], &["--prefetch", "50"]].concat()).watch();
    crate::support::wait_until(Duration::from_secs(60), "some answers", || output.depth() >= 30);
    first.signal("KILL");
    let killed = first.finish(Duration::from_secs(10));
    assert_ne!(killed.code(), Some(0));
    let left = input.depth();
    assert!(left > 0 && left < 200, "killed mid-stream: {left} inputs left");
    // The restarted stage takes up what was not acked; answers repeated by it carry the
    // same message ids, which the consumer drops.
    mqdemo(&[&args[..], &["--idle-timeout", "2"]].concat()).run().expect_code(0);
    assert_eq!(input.depth(), 0);
    let n = output.depth().to_string();
    let rows = mqdemo(&["consume", "tabular", "--queue", &output.name, "--count", &n])
        .run()
        .expect_code(0);
    let mut ids = ids_in(&rows.stdout);
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>(), "every row exactly once after dedupe");
    eprintln!("pipe kill: {left} inputs left at the kill, {n} answers in the queue, 200 distinct");
}

//! Issue 16: stream queues, offsets, --until and checkpoints, against the real broker.

use crate::proxy::Proxy;
use crate::replay_kit::rfc3339;
use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--queue Q --queue-type stream`.
fn stream(q: &TestQueue) -> Vec<String> {
    vec!["--queue".into(), q.name.clone(), "--queue-type".into(), "stream".into()]
}

/// `more`'s command words, then the `base` flags, then the rest of `more`.
fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    let words = more.iter().take_while(|a| !a.starts_with('-')).count();
    let (command, flags) = more.split_at(words);
    command
        .iter()
        .copied()
        .chain(base.iter().map(String::as_str))
        .chain(flags.iter().copied())
        .collect()
}

/// Rows with IDs `ids` into stream `q` (confirmed).
fn produce_rows(q: &TestQueue, dir: &Path, name: &str, ids: std::ops::RangeInclusive<usize>) {
    let file = csv_rows(dir, name, ids);
    let base = stream(q);
    mqdemo(&args(&base, &["produce", "tabular", "--file", s(&file), "-q"])).run().expect_code(0);
}

/// The `ID` of each JSON line.
fn ids(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["ID"].as_u64().expect("an ID")
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// Wait until a new wall-clock second begins; its start, in Unix seconds.
fn next_second() -> u64 {
    let this = now_ms() / 1000;
    wait_until(Duration::from_secs(3), "the next second", || now_ms() / 1000 > this);
    now_ms() / 1000
}

#[test]
fn retention_flags_reach_the_broker_and_stream_misuse_is_refused() {
    let q = TestQueue::new("retention16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let base = stream(&q);
    let file = csv_rows(dir, "rows.csv", 1..=3);
    let retention = ["--max-age", "7D", "--max-length-bytes", "5000000", "-q"];
    let mut run = args(&base, &["produce", "tabular", "--file", s(&file)]);
    run.extend(retention);
    mqdemo(&run).run().expect_code(0);
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "arguments"])
        .output()
        .expect("rabbitmqctl");
    let listed = String::from_utf8_lossy(&out.stdout);
    let line = listed.lines().find(|l| l.starts_with(&format!("{}\t", q.name))).expect("listed");
    for arg in [r#"{"x-queue-type","stream"}"#, r#"{"x-max-age","7D"}"#] {
        assert!(line.contains(arg), "{arg} missing: {line}");
    }
    assert!(line.contains(r#""x-max-length-bytes",5000000"#), "{line}");

    // What a stream cannot do is refused before anything is declared, naming the fix.
    let refused: [(&[&str], &str); 8] = [
        (&["consume", "tabular", "--dead-letter-queue", "dlq"], "--dead-letter-queue"),
        (&["consume", "tabular", "--max-length", "10"], "--max-length-bytes or --max-age"),
        (&["consume", "tabular", "--workers", "2"], "--workers 1"),
        (&["consume", "tabular", "--no-failed-queue"], "--failed-queue"),
        (&["consume", "tabular", "--checkpoint", "sqlite"], "--sqlite FILE"),
        (&["consume", "tabular", "--max-age", "7 days"], "7D or 12h"),
        (&["consume", "tabular", "--offset", "soon"], "RFC 3339"),
        (&["consume", "tabular", "--until", "1000"], "offset:N"),
    ];
    for (extra, fix) in refused {
        let mut a = args(&base, extra);
        a.extend(["--count", "1"]);
        let out = mqdemo(&a).run().expect_code(2);
        assert!(out.first_error_line().contains(fix), "{extra:?}: {}", out.stderr);
    }
    // Offsets belong to streams.
    let classic = ["consume", "tabular", "--queue", "it-never-declared16", "--offset", "first"];
    let out = mqdemo(&classic).run().expect_code(2);
    assert!(out.first_error_line().contains("add --queue-type stream"), "{}", out.stderr);
    assert!(!queue_exists("it-never-declared16"));
}

#[test]
fn replaying_from_first_twice_gives_identical_output() {
    let q = TestQueue::new("twice16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_rows(&q, dir, "rows.csv", 1..=50);
    let base = stream(&q);
    let read = args(&base, &["consume", "tabular", "--offset", "first", "--count", "50", "-q"]);
    let first = mqdemo(&read).run().expect_code(0);
    let second = mqdemo(&read).run().expect_code(0);
    assert_eq!(ids(&first.stdout), (1..=50).collect::<Vec<_>>());
    assert_eq!(first.stdout.as_bytes(), second.stdout.as_bytes(), "byte-identical replays");
    // The stream still holds them all: a third reader starting at offset 45 gets the last 5.
    let tail = mqdemo(&args(&base, &["consume", "tabular", "--offset", "45", "--count", "5"]))
        .run()
        .expect_code(0);
    assert_eq!(ids(&tail.stdout), (46..=50).collect::<Vec<_>>());
}

#[test]
fn an_offset_by_time_starts_at_the_first_message_stored_after_it_and_until_stops_before_it() {
    let q = TestQueue::new("time16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_rows(&q, dir, "a.csv", 1..=20);
    // A second boundary after the first batch: every chunk of it is older than `t`.
    let t = rfc3339(next_second());
    produce_rows(&q, dir, "b.csv", 21..=40);
    let base = stream(&q);

    let from = mqdemo(&args(&base, &["consume", "tabular", "--offset", &t, "--count", "20"]))
        .run()
        .expect_code(0);
    assert_eq!(ids(&from.stdout), (21..=40).collect::<Vec<_>>(), "from {t}");

    // The window before `t` ends by itself (no --count, no --idle-timeout).
    let window = args(&base, &["consume", "tabular", "--offset", "first", "--until", &t]);
    let before = mqdemo(&window).run().expect_code(0);
    assert_eq!(ids(&before.stdout), (1..=20).collect::<Vec<_>>(), "until {t}");
    assert!(before.stderr.contains("stopped at --until, before offset 20"), "{}", before.stderr);

    // --until offset:N is exclusive, and a window from N on takes up exactly there.
    let until = args(&base, &["consume", "tabular", "--offset", "5", "--until", "offset:12"]);
    let part = mqdemo(&until).run().expect_code(0);
    assert_eq!(ids(&part.stdout), (6..=12).collect::<Vec<_>>());
}

#[test]
fn a_checkpoint_file_resumes_where_the_last_run_stopped() {
    let q = TestQueue::new("ckpt16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_rows(&q, dir, "rows.csv", 1..=1000);
    let (ckpt, out) = (dir.join("run.ckpt"), dir.join("rows.jsonl"));
    let base = stream(&q);
    let common = ["consume", "tabular", "--checkpoint", s(&ckpt), "--output", s(&out), "-q"];
    let mut first = args(&base, &common);
    first.extend(["--offset", "first", "--count", "400"]);
    mqdemo(&first).run().expect_code(0);
    let saved = std::fs::read_to_string(&ckpt).expect("checkpoint written");
    assert!(saved.contains("\"offset\":399"), "{saved}");
    // The rest: no --offset, the checkpoint says where (and --offset would not override it).
    let mut rest = args(&base, &common);
    rest.extend(["--offset", "first", "--count", "600"]);
    let resumed = mqdemo(&rest).run().expect_code(0);
    assert!(resumed.stderr.contains("resuming"), "{}", resumed.stderr);
    let all = ids(&std::fs::read_to_string(&out).expect("rows"));
    assert_eq!(all, (1..=1000).collect::<Vec<_>>(), "each row once, in order");

    // Another stream's checkpoint is refused, naming the fix.
    let other = TestQueue::new("ckpt16other");
    let wrong = stream(&other);
    let a = args(&wrong, &["consume", "tabular", "--checkpoint", s(&ckpt), "--count", "1"]);
    let out = mqdemo(&a).run().expect_code(1);
    assert!(out.stderr.contains("belongs to queue"), "{}", out.stderr);
}

/// Rows per ID in the results table.
fn stored_ids(db: &Path) -> BTreeMap<u64, u64> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn.prepare("SELECT \"ID\", count(*) FROM results GROUP BY 1").expect("sql");
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// SIGKILL a consumer once its checkpoint has passed `offset`, then resume it: every row is
/// stored exactly once. `checkpoint`: a file, or `sqlite` (in the database itself).
fn killed_and_resumed(test: &str, sqlite_checkpoint: bool) {
    let q = TestQueue::new(test);
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_rows(&q, dir, "rows.csv", 1..=1000);
    let (db, file) = (dir.join("rows.db"), dir.join("run.ckpt"));
    let checkpoint = if sqlite_checkpoint { "sqlite".to_string() } else { s(&file).to_string() };
    let base = stream(&q);
    // One message per ack, so the run is slow enough to be killed in the middle.
    let common = ["consume", "tabular", "--sqlite", s(&db), "--checkpoint", &checkpoint];
    let mut first = args(&base, &common);
    first.extend(["--offset", "first", "--prefetch", "1", "-q"]);
    let run = mqdemo(&first).watch();
    let saved = |db: &Path| -> Option<u64> {
        if sqlite_checkpoint {
            let conn = rusqlite::Connection::open(db).ok()?;
            conn.query_row("SELECT \"offset\" FROM _mq_checkpoints", [], |r| r.get::<_, i64>(0))
                .ok()
                .map(|o| o as u64)
        } else {
            let text = std::fs::read_to_string(&file).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["offset"].as_u64()
        }
    };
    wait_until(Duration::from_secs(60), "the checkpoint passes offset 100", || {
        saved(&db).is_some_and(|o| o >= 100)
    });
    run.signal("KILL");
    let killed = run.finish(Duration::from_secs(10));
    assert!(killed.code().is_none(), "killed by the signal");
    let at_kill = saved(&db).expect("a checkpoint");
    assert!(at_kill < 999, "killed mid-way, at {at_kill}");

    let mut rest = args(&base, &common);
    rest.extend(["--idle-timeout", "3"]);
    let resumed = mqdemo(&rest).run().expect_code(0);
    assert!(resumed.stderr.contains(&format!("at offset {}", at_kill + 1)), "{}", resumed.stderr);
    let stored = stored_ids(&db);
    assert_eq!(stored.len(), 1000, "every row");
    assert!(stored.values().all(|n| *n == 1), "each once");
    assert_eq!(saved(&db), Some(999));
}

#[test]
fn a_sigkilled_run_resumes_from_its_checkpoint_file_with_every_row_once() {
    killed_and_resumed("kill16file", false);
}

#[test]
fn a_sigkilled_run_resumes_from_the_checkpoint_kept_in_its_sqlite_database() {
    killed_and_resumed("kill16db", true);
}

#[test]
fn a_lost_connection_resumes_after_the_last_message_read_not_at_next() {
    let q = TestQueue::new("cut16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let out = dir.join("rows.jsonl");
    let port = url().rsplit_once(':').and_then(|(_, p)| p.split('/').next()?.parse().ok());
    let proxy = Proxy::start(port.unwrap_or(5672));
    let base = stream(&q);
    let proxied = proxy.url();
    let mut read = vec!["--url", &proxied];
    read.extend(args(&base, &["consume", "tabular", "--output", s(&out)]));
    read.extend(["--offset", "next", "--idle-timeout", "10"]);
    let run = mqdemo(&read).watch();
    wait_until(Duration::from_secs(20), "the consumer attaches", || {
        crate::attacks16::consumers(&q.name) > 0
    });
    // The consumer is attached at `next` once the first rows arrive.
    let lines = || std::fs::read_to_string(&out).map_or(0, |t| t.lines().count());
    produce_rows(&q, dir, "a.csv", 1..=100);
    wait_until(Duration::from_secs(20), "the first rows are written", || lines() == 100);
    proxy.cut();
    // Written while the consumer is away: a consumer that came back at `next` would skip them.
    produce_rows(&q, dir, "b.csv", 101..=200);
    wait_until(Duration::from_secs(30), "the rest is written", || lines() >= 200);
    run.signal("TERM");
    let done = run.finish(Duration::from_secs(20));
    assert!(done.stderr.contains("reconnect"), "{}", done.stderr);
    let got = ids(&std::fs::read_to_string(&out).expect("rows"));
    assert_eq!(got, (1..=200).collect::<Vec<_>>(), "nothing skipped, nothing twice");
}

#[test]
fn a_pipe_reads_a_stream_and_its_answers_carry_the_input_offset() {
    let (input, output) = (TestQueue::new("pipe16in"), TestQueue::new("pipe16out"));
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_rows(&input, dir, "rows.csv", 1..=20);
    let ckpt = dir.join("pipe.ckpt");
    let pipe = [
        "pipe",
        "--from",
        &input.name,
        "--to",
        &output.name,
        "--queue-type",
        "stream",
        "--exec",
        "cat",
        "--offset",
        "first",
        "--until",
        "offset:15",
        "--checkpoint",
        s(&ckpt),
    ];
    let out = mqdemo(&pipe).run().expect_code(0);
    assert!(out.stderr.contains("stopped at --until"), "{}", out.stderr);
    assert!(std::fs::read_to_string(&ckpt).expect("checkpoint").contains("\"offset\":14"));
    let base = stream(&output);
    let read = args(&base, &["consume", "tabular", "--format", "envelope", "--offset", "first"]);
    let mut read = read;
    read.extend(["--count", "15", "-q"]);
    let answers = mqdemo(&read).run().expect_code(0);
    let offsets: Vec<(i64, i64)> = answers
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("envelope");
            let h = &v["headers"];
            let input = h["x-mqdemo-input-offset"].as_i64().expect("input offset header");
            (input, h["x-stream-offset"].as_i64().expect("its own offset"))
        })
        .collect();
    assert_eq!(offsets, (0..15).map(|i| (i, i)).collect::<Vec<_>>());
    drop(output);
}

#[test]
fn a_message_that_cannot_be_used_goes_to_the_failed_queue_and_the_stream_reads_on() {
    let q = TestQueue::new("bad16");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let text = dir.join("texts");
    std::fs::create_dir_all(&text).expect("dir");
    std::fs::write(text.join("notes.txt"), "not json\nnor this\n").expect("text");
    let base = stream(&q);
    let produce = args(&base, &["produce", "text", "--directory", s(&text), "--split", "line"]);
    mqdemo(&produce).run().expect_code(0);
    produce_rows(&q, dir, "rows.csv", 1..=3);
    let read = args(&base, &["consume", "tabular", "--offset", "first", "--count", "5"]);
    let out = mqdemo(&read).run().expect_code(1);
    assert_eq!(ids(&out.stdout), vec![1, 2, 3], "{}", out.stderr);
    assert!(out.stderr.contains("failed 2"), "{}", out.stderr);
    assert_eq!(failed.depth(), 2, "both copies confirmed in the failed queue");
}

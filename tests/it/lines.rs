//! `--split line` files end to end (each arrives as the file it was, never merged, never
//! dropped, never appended to a file mqdemo did not start) and content that cannot be
//! stored (a name that cannot be made unique) failing its own message only.

use crate::support::{TestQueue, consume_files, count_after, mqdemo, s, tree, wait_until};
use amiquip::{AmqpProperties, AmqpValue, FieldTable, Publish, QueueDeclareOptions};
use std::path::Path;
use std::time::Duration;

/// `mqdemo produce text --split line` of `dir` into `q`; must succeed.
fn produce_lines(dir: &Path, q: &TestQueue) {
    mqdemo(&["produce", "text", "--directory", s(dir), "--split", "line", "--queue", &q.name])
        .run()
        .expect_code(0);
}

/// `n` numbered lines, `prefix1\n` .. `prefixN\n`.
fn numbered(prefix: &str, n: usize) -> String {
    (1..=n).map(|i| format!("{prefix}{i}\n")).collect()
}

/// Visible files under `root` (hidden staging files left out), as (name, text).
fn visible(root: &Path) -> Vec<(String, String)> {
    tree(root)
        .into_iter()
        .filter(|(n, _)| !n.rsplit('/').next().is_some_and(|f| f.starts_with('.')))
        .map(|(n, b)| (n, String::from_utf8_lossy(&b).into_owned()))
        .collect()
}

/// Hidden mqdemo files (staging, temporaries) left directly in `root`.
fn hidden(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mqdemo"))
        .collect()
}

/// Every message of `from` (taken off it) re-published to `to` in a shuffled order, with
/// its properties: deliveries out of order, as nack retries and requeues make them.
fn move_shuffled(from: &TestQueue, to: &TestQueue, seed: u64) -> usize {
    let mut conn = crate::support::connect();
    let ch = conn.open_channel(None).expect("channel");
    let mut all = Vec::new();
    while let Some(g) = ch.basic_get(from.name.clone(), true).expect("basic_get") {
        all.push((g.delivery.body, g.delivery.properties));
    }
    // Fisher-Yates with a fixed LCG: the same order on every run.
    let mut x = seed;
    for i in (1..all.len()).rev() {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        all.swap(i, (x >> 33) as usize % (i + 1));
    }
    ch.queue_declare(to.name.clone(), QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    for (body, props) in &all {
        ch.basic_publish("", Publish::with_properties(body, to.name.clone(), props.clone()))
            .expect("publish");
    }
    let _ = ch.close();
    let _ = conn.close();
    let n = all.len();
    wait_until(Duration::from_secs(20), "shuffled messages in the queue", || {
        to.depth() as usize == n
    });
    n
}

/// A text message as another producer (or an older mqdemo) would send it.
fn raw_text(q: &TestQueue, body: &str, id: Option<&str>, headers: &[(&str, AmqpValue)]) {
    let mut h = FieldTable::new();
    for (k, v) in headers {
        h.insert((*k).to_string(), v.clone());
    }
    let mut props =
        AmqpProperties::default().with_content_type("text/plain".into()).with_headers(h);
    if let Some(id) = id {
        props = props.with_message_id(id.to_string());
    }
    q.publish_raw(body.as_bytes(), props);
}

fn source(s: &str) -> (&'static str, AmqpValue) {
    ("source", AmqpValue::LongString(s.into()))
}

#[test]
fn same_name_files_never_merge_and_no_line_is_dropped() {
    let q = TestQueue::new("lines-same-name");
    let (one, two) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tmp"));
    let a = numbered("a", 3);
    let b = numbered("b", 5);
    std::fs::write(one.path().join("notes.txt"), &a).expect("write");
    std::fs::write(two.path().join("notes.txt"), &b).expect("write");
    produce_lines(one.path(), &q);
    produce_lines(two.path(), &q);
    // The same file edited and produced again.
    let edited = format!("{a}a4 added later\n");
    std::fs::write(one.path().join("notes.txt"), &edited).expect("write");
    produce_lines(one.path(), &q);
    let out = tempfile::tempdir().expect("tempdir");
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    let mut got: Vec<String> = visible(out.path()).into_iter().map(|(_, t)| t).collect();
    got.sort();
    let mut want = vec![a.clone(), b.clone(), edited.clone()];
    want.sort();
    assert_eq!(got, want, "three produced files, three files; stderr:\n{}", res.stderr);
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
    assert!(hidden(out.path()).is_empty(), "{:?}", hidden(out.path()));
}

#[test]
fn line_workers_keep_every_file_intact() {
    let q = TestQueue::new("lines-workers");
    let src = tempfile::tempdir().expect("tempdir");
    for f in 0..5 {
        std::fs::write(src.path().join(format!("f{f}.txt")), numbered(&format!("f{f} line "), 400))
            .expect("write");
    }
    produce_lines(src.path(), &q);
    let out = tempfile::tempdir().expect("tempdir");
    let res = consume_files(
        &q,
        "text",
        out.path(),
        &["--workers", "4", "--prefetch", "8", "--idle-timeout", "3"],
    )
    .run();
    let scrambled: Vec<String> = tree(src.path())
        .into_iter()
        .filter(|(name, bytes)| std::fs::read(out.path().join(name)).ok().as_ref() != Some(bytes))
        .map(|(name, _)| name)
        .collect();
    assert!(
        scrambled.is_empty(),
        "{} of 5 files differ: {scrambled:?}\n{}",
        scrambled.len(),
        res.stderr
    );
    assert_eq!(visible(out.path()).len(), 5);
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
}

#[test]
fn lines_arriving_shuffled_are_all_written_in_order() {
    let (staged, q) = (TestQueue::new("lines-order-src"), TestQueue::new("lines-order"));
    let src = tempfile::tempdir().expect("tempdir");
    let text = numbered("line ", 5_000);
    std::fs::write(src.path().join("big.txt"), &text).expect("write");
    produce_lines(src.path(), &staged);
    assert_eq!(move_shuffled(&staged, &q, 7), 5_000);
    let out = tempfile::tempdir().expect("tempdir");
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "3"]).run();
    let got = std::fs::read_to_string(out.path().join("big.txt")).unwrap_or_default();
    assert!(
        got == text,
        "{} of 5000 lines written, in order: {}; stderr:\n{}",
        got.lines().count(),
        got.lines().zip(text.lines()).all(|(g, w)| g == w),
        res.stderr
    );
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
    assert_eq!(visible(out.path()).len(), 1);
}

#[test]
fn lines_never_append_to_a_file_mqdemo_did_not_start() {
    let q = TestQueue::new("lines-foreign");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(out.path().join("user.txt"), "the user's own file\n").expect("seed");
    std::fs::write(out.path().join("report.txt"), "another user file\n").expect("seed");
    // An older producer's (or another producer's) line 2, naming the user's file.
    raw_text(
        &q,
        "injected\n",
        Some("legacy-2"),
        &[source("user.txt"), ("line", AmqpValue::LongLongInt(2))],
    );
    // A current producer's file of the same name as the other user file.
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("report.txt"), numbered("r", 4)).expect("write");
    produce_lines(src.path(), &q);
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    let files: std::collections::HashMap<String, String> =
        visible(out.path()).into_iter().collect();
    assert_eq!(files.get("user.txt").map(String::as_str), Some("the user's own file\n"));
    assert_eq!(files.get("report.txt").map(String::as_str), Some("another user file\n"));
    assert_eq!(files.get("user.line-2.txt").map(String::as_str), Some("injected\n"), "{files:?}");
    let report: Vec<&String> = files
        .iter()
        .filter(|(n, _)| n.starts_with("report.") && *n != "report.txt")
        .map(|(_, t)| t)
        .collect();
    assert_eq!(report, [&numbered("r", 4)], "{files:?}\n{}", res.stderr);
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
}

#[test]
fn colliding_alternative_names_never_block_the_queue() {
    let q = TestQueue::new("lines-collide");
    let out = tempfile::tempdir().expect("tempdir");
    // Third-party ids sharing their first 12 characters, one source, three contents.
    for (i, id) in
        ["order-2024-000001", "order-2024-000002", "order-2024-000003"].iter().enumerate()
    {
        raw_text(&q, &format!("order {i}\n"), Some(id), &[source("orders.txt")]);
    }
    raw_text(&q, "good\n", Some("good-1"), &[source("good.txt")]);
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    let names: Vec<String> = visible(out.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 4, "{names:?}\n{}", res.stderr);
    assert!(names.contains(&"good.txt".to_string()), "{names:?}");
    assert!(names.contains(&"orders.order-2024-000003.txt".to_string()), "{names:?}");
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
    assert_eq!(q.depth(), 0);
}

#[test]
fn a_name_that_cannot_be_made_unique_fails_that_message_alone() {
    let q = TestQueue::new("lines-unplaceable");
    let out = tempfile::tempdir().expect("tempdir");
    // Other content under every name mqdemo may use for `x.txt` of id `blocked-id`.
    let mut names = vec!["x.txt".to_string(), "x.blocked-id.txt".to_string()];
    names.extend((2..=100).map(|n| format!("x.blocked-id.{n}.txt")));
    for n in &names {
        std::fs::write(out.path().join(n), "other content\n").expect("seed");
    }
    raw_text(&q, "cannot be stored\n", Some("blocked-id"), &[source("x.txt")]);
    raw_text(&q, "good\n", Some("good-1"), &[source("good.txt")]);
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    assert_eq!(
        std::fs::read_to_string(out.path().join("good.txt")).ok().as_deref(),
        Some("good\n"),
        "the message behind is stored; stderr:\n{}",
        res.stderr
    );
    let res = res.expect_code(1).stderr_has("x.txt");
    assert_eq!(count_after(&res.stderr, "failed"), 1, "{}", res.stderr);
    assert_eq!(q.depth(), 0, "rejected, not requeued");
}

#[test]
fn a_line_fallback_name_that_is_a_directory_does_not_block_the_queue() {
    let q = TestQueue::new("lines-fallback-dir");
    let out = tempfile::tempdir().expect("tempdir");
    // An unsafe source: the file is named from the id, and a directory has that name.
    std::fs::create_dir(out.path().join("line-1.txt")).expect("mkdir");
    raw_text(
        &q,
        "one\n",
        Some("line-1"),
        &[source("../escape.txt"), ("line", AmqpValue::LongLongInt(1))],
    );
    raw_text(&q, "good\n", Some("good-1"), &[source("good.txt")]);
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    let files = visible(out.path());
    assert!(
        files.iter().any(|(n, t)| n == "good.txt" && t == "good\n"),
        "{files:?}\n{}",
        res.stderr
    );
    assert!(
        files.iter().any(|(n, t)| n != "good.txt" && t == "one\n"),
        "{files:?}\n{}",
        res.stderr
    );
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
    assert_eq!(q.depth(), 0);
}

#[test]
fn an_incomplete_line_file_is_reported_kept_and_finished_by_the_next_run() {
    let q = TestQueue::new("lines-incomplete");
    let src = tempfile::tempdir().expect("tempdir");
    let text = numbered("l", 10);
    std::fs::write(src.path().join("half.txt"), &text).expect("write");
    produce_lines(src.path(), &q);
    let out = tempfile::tempdir().expect("tempdir");
    let first = consume_files(&q, "text", out.path(), &["--count", "6"]).run();
    assert!(visible(out.path()).is_empty(), "no partial file under a final name");
    let first = first.expect_code(1).stderr_has("half.txt").stderr_has("6 of 10 lines");
    assert!(!hidden(out.path()).is_empty(), "the lines received are kept; {}", first.stderr);
    consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run().expect_code(0);
    assert_eq!(visible(out.path()), [("half.txt".to_string(), text)]);
    assert!(hidden(out.path()).is_empty(), "{:?}", hidden(out.path()));
}

#[test]
fn a_line_consumer_with_workers_killed_mid_file_finishes_it_after_a_restart() {
    let q = TestQueue::new("lines-kill");
    let src = tempfile::tempdir().expect("tempdir");
    let text = numbered("a fairly long line of text, number ", 60_000);
    std::fs::write(src.path().join("big.txt"), &text).expect("write");
    std::fs::write(src.path().join("small.txt"), numbered("s", 3)).expect("write");
    // 60,000 confirmed publishes: more than the default run deadline on a loaded CI machine.
    mqdemo(&[
        "produce",
        "text",
        "--directory",
        s(src.path()),
        "--split",
        "line",
        "--queue",
        &q.name,
    ])
    .watch()
    .finish(Duration::from_secs(240))
    .expect_code(0);
    let total = q.depth();
    let out = tempfile::tempdir().expect("tempdir");
    let consumer =
        consume_files(&q, "text", out.path(), &["--prefetch", "100", "--workers", "4"]).watch();
    wait_until(Duration::from_secs(60), "a third of the lines consumed", || {
        q.depth() < total * 2 / 3
    });
    consumer.signal("KILL");
    let _ = consumer.finish(Duration::from_secs(10));
    assert!(!out.path().join("big.txt").exists(), "no partial file under a final name");
    consume_files(&q, "text", out.path(), &["--idle-timeout", "3"]).run().expect_code(0);
    assert_eq!(tree(out.path()), tree(src.path()), "hidden: {:?}", hidden(out.path()));
}

#[test]
fn line_messages_name_their_file_identity_and_offset() {
    let q = TestQueue::new("lines-wire");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.txt"), "one\r\ntwo").expect("write");
    produce_lines(dir.path(), &q);
    let file_sha = mqdemo::codec::sha256_hex(b"one\r\ntwo");
    for (offset, body) in [(0, "one\r\n"), (5, "two")] {
        let d = q.get().expect("a line");
        let h = d.properties.headers().clone().expect("headers");
        assert_eq!(d.body, body.as_bytes());
        assert_eq!(h.get("file_sha256"), Some(&AmqpValue::LongString(file_sha.clone())));
        assert_eq!(h.get("file_size"), Some(&AmqpValue::LongLongInt(8)));
        assert_eq!(h.get("lines"), Some(&AmqpValue::LongLongInt(2)));
        assert_eq!(h.get("offset"), Some(&AmqpValue::LongLongInt(offset)));
    }
}

#[test]
fn symlinks_in_the_output_directory_are_never_written_through() {
    let q = TestQueue::new("lines-symlinks");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("victim.txt"), "keep me\n").expect("seed");
    let out = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path().join("victim.txt"), out.path().join("notes.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(outside.path(), out.path().join("sub")).expect("symlink");
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(src.path().join("sub")).expect("mkdir");
    std::fs::write(src.path().join("notes.txt"), numbered("n", 3)).expect("write");
    std::fs::write(src.path().join("sub/x.txt"), numbered("x", 3)).expect("write");
    produce_lines(src.path(), &q);
    let res = consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run();
    assert_eq!(tree(outside.path()), [("victim.txt".to_string(), b"keep me\n".to_vec())]);
    let mut got: Vec<String> = visible(out.path()).into_iter().map(|(_, t)| t).collect();
    got.sort();
    assert_eq!(got, [numbered("n", 3), numbered("x", 3)], "{}", res.stderr);
    assert_eq!(res.code(), Some(0), "{}", res.stderr);
}

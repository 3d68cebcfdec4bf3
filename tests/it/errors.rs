//! Bad input: one clear first line, a non-zero exit, never a hang or a leaked password.

use crate::support::{TestQueue, data, mqdemo, produce_sample, s};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn with_url(url: &str, args: &[&str]) -> crate::support::Output {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    mqdemo(&all).run()
}

#[test]
fn refused_connection_says_how_to_start_a_broker() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = with_url(&url, &["consume", "text", "--count", "1"]).expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains("connection refused") && first.contains("rabbitmq-server"), "{first}");
}

#[test]
fn demo_without_a_broker_says_how_to_start_one() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = with_url(&url, &["demo"]).expect_code(1);
    let first = out.first_error_line();
    assert!(
        first.contains("docker compose") && first.contains("rabbitmq-server -detached"),
        "{first}"
    );
}

#[test]
fn silent_port_times_out_within_the_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let out = with_url(
        &url,
        &["--connect-timeout", "1.5", "produce", "text", "--directory", s(&data("texts"))],
    )
    .expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(
        out.first_error_line().contains("did not complete the AMQP handshake"),
        "{}",
        out.stderr
    );
    drop(listener);
}

#[test]
fn wrong_password_is_explained_and_never_printed() {
    let base = url::Url::parse(&crate::support::url()).expect("url");
    let mut bad = base.clone();
    bad.set_password(Some("s3cretpw-xyz")).expect("password");
    let out = with_url(bad.as_str(), &["consume", "text", "--count", "1"]).expect_code(1);
    assert!(out.first_error_line().contains("check the user and password"), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cretpw-xyz"), "{}", out.stderr);
    assert!(out.stderr.contains("****"), "{}", out.stderr);
}

#[test]
fn missing_vhost_is_explained() {
    let mut bad = url::Url::parse(&crate::support::url()).expect("url");
    bad.set_path("/no-such-vhost-mqdemo");
    let out = with_url(bad.as_str(), &["consume", "text", "--count", "1"]).expect_code(1);
    assert!(out.first_error_line().contains("vhost"), "{}", out.stderr);
}

#[test]
fn missing_inputs_stop_before_connecting() {
    let out = mqdemo(&["produce", "tabular", "--file", "/nonexistent/x.csv"]).run().expect_code(1);
    assert!(
        out.first_error_line().contains("/nonexistent/x.csv")
            && out.first_error_line().contains("--file"),
        "{}",
        out.stderr
    );
    let out = mqdemo(&["produce", "image", "--directory", "/nonexistent/dir"]).run().expect_code(1);
    assert!(out.first_error_line().contains("--directory"), "{}", out.stderr);
    assert!(!out.stderr.contains("BACKTRACE"), "{}", out.stderr);
}

#[test]
fn ml_commands_check_their_inputs_before_connecting() {
    // Nothing listens on port 1: the input's error must come first.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let out =
        mqdemo(&["--url", dead, "request", "--file", "/nonexistent/rows.csv"]).run().expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains("/nonexistent/rows.csv") && first.contains("--file"), "{}", out.stderr);
    let out = mqdemo(&["--url", dead, "consume", "tabular", "--sqlite", "/nonexistent/dir/r.db"])
        .run()
        .expect_code(1);
    assert!(out.first_error_line().contains("--sqlite"), "{}", out.stderr);
    let usage = [
        &["consume", "tabular", "--sqlite", "r.db", "--table", "1x"][..],
        &["consume", "tabular", "--sqlite", "r.db", "--output", "rows.jsonl"],
        &["pipe", "--from", "a", "--to", "a", "--exec", "cat"],
        &["pipe", "--from", "a", "--to", "b", "--exec", " "],
        &["pipe", "--from", "a", "--to", "b", "--exec", "cat", "--failed-queue", "b"],
        &["serve", "--queue", "q", "--results-queue", "q", "--exec", "cat"],
        &["request", "--file", "x.csv", "--timeout", "0"],
    ];
    for args in usage {
        let out = mqdemo(&[&["--url", dead][..], args].concat()).run();
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.first_error_line().starts_with("mqdemo: error:")
                || out.first_error_line().starts_with("error:"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn bad_usage_exits_two() {
    mqdemo(&["produce", "tabular"]).run().expect_code(2);
    mqdemo(&["consume", "text", "--idle-timeout", "-1"]).run().expect_code(2);
    mqdemo(&["--url", "http://localhost", "demo"]).run().expect_code(2).stderr_has("amqp://");
}

#[test]
fn malformed_csv_row_is_skipped_and_named() {
    let q = TestQueue::new("badrow");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    // Line 3 is longer than the header (a shorter one would be padded with nulls).
    std::fs::write(&csv, b"a,b\n1,2\n3,4,5\n4,5\n6,\xff\n7,8\n").expect("write");
    let out =
        mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name]).run().expect_code(1);
    assert!(out.stderr.contains("bad.csv line 3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("bad.csv line 5") && out.stderr.contains("UTF-8"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("produced 3 messages") && out.stderr.contains("skipped 2"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 3);
}

#[test]
fn non_image_and_non_utf8_files_are_skipped_and_counted() {
    let q = TestQueue::new("skip");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(data("images/gradient.png"), dir.path().join("ok.png")).expect("copy");
    std::fs::write(dir.path().join("notes.txt"), "not an image").expect("write");
    let out = mqdemo(&["produce", "image", "--directory", s(dir.path()), "--queue", &q.name])
        .run()
        .expect_code(1);
    assert!(out.stderr.contains("notes.txt: not an image"), "{}", out.stderr);
    assert!(
        out.stderr.contains("produced 1 messages") && out.stderr.contains("skipped 1"),
        "{}",
        out.stderr
    );

    let q = TestQueue::new("skip-text");
    let texts = tempfile::tempdir().expect("tempdir");
    std::fs::write(texts.path().join("good.txt"), "fine\n").expect("write");
    std::fs::write(texts.path().join("latin1.txt"), b"line one\ncaf\xe9\n").expect("write");
    for split in ["file", "line"] {
        let out = mqdemo(&[
            "produce",
            "text",
            "--directory",
            s(texts.path()),
            "--split",
            split,
            "--queue",
            &q.name,
        ])
        .run()
        .expect_code(1);
        assert!(
            out.stderr.contains("latin1.txt") && out.stderr.contains("line 2"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(q.depth(), 2, "only good.txt was sent, once per run");
}

#[test]
fn queue_declared_elsewhere_with_other_arguments_stops_the_run() {
    let q = TestQueue::new("otherargs");
    let mut conn = crate::support::connect();
    let ch = conn.open_channel(None).expect("channel");
    let mut args = amiquip::FieldTable::new();
    args.insert("x-max-length".into(), amiquip::AmqpValue::LongInt(10));
    ch.queue_declare(
        q.name.clone(),
        amiquip::QueueDeclareOptions { durable: true, arguments: args, ..Default::default() },
    )
    .expect("declare with args");
    let _ = conn.close();
    let out = mqdemo(&["produce", "text", "--directory", s(&data("texts")), "--queue", &q.name])
        .run()
        .expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains(&q.name) && first.contains("other settings"), "{}", out.stderr);
}

#[test]
fn nacked_messages_are_reported_and_fail_the_run() {
    let mut q = TestQueue::new("nack");
    q.set_policy(r#"{"max-length":5,"overflow":"reject-publish"}"#);
    let out =
        produce_sample(&q, &["--num-records", "12", "--confirm-window", "1", "--retry-for", "0"])
            .run()
            .expect_code(1);
    assert!(out.stderr.contains("nacked by the broker"), "{}", out.stderr);
    assert!(
        out.stderr.contains("produced 5 messages") && out.stderr.contains("failed 7"),
        "{}",
        out.stderr
    );
}

#[test]
fn request_from_a_directory_names_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().to_string();
    let out = mqdemo(&["request", "--queue", "it-never-served", "--file", &d, "--timeout", "1"])
        .run()
        .expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains(&d) && first.contains("--file"), "{}", out.stderr);
}

//! `--metrics-addr` (issue 15): the real endpoint scraped over HTTP while a real run goes on;
//! its counts equal what the run reports; `/ready` follows the broker; bad addresses are
//! usage errors.

use crate::broker::PrivateBroker;
use crate::support::{TestQueue, data, mqdemo, produce_sample, s, wait_until};
use amiquip::AmqpProperties;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// `GET path` on 127.0.0.1:port: (status, body); None while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((status, body))
}

/// The value of the series `name` (e.g. `mqdemo_connected` or
/// `mqdemo_messages_acked_total{queue="q"}`) in a scrape; None when absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A scrape of /metrics (empty while nothing answers).
fn scrape(port: u16) -> String {
    match http_get(port, "/metrics") {
        Some((200, body)) => body,
        _ => String::new(),
    }
}

fn counter(text: &str, name: &str, queue: &str) -> u64 {
    value(text, &format!("mqdemo_{name}_total{{queue=\"{queue}\"}}")).unwrap_or(-1.0) as u64
}

fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("summary json written");
    serde_json::from_str(&text).expect("summary json")
}

fn props(id: &str) -> AmqpProperties {
    AmqpProperties::default().with_message_id(id.into()).with_delivery_mode(2)
}

#[test]
fn metrics15_consume_counts_equal_its_summary() {
    let q = TestQueue::new("metrics15-consume");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, json) = (dir.path().join("rows.jsonl"), dir.path().join("summary.json"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = ["consume", "tabular", "--queue", &q.name, "--output", s(&out)];
    let run = mqdemo(&[&args[..], &["--metrics-addr", &addr, "--summary-json", s(&json)]].concat())
        .watch();
    wait_until(DEADLINE, "/ready 200", || http_get(port, "/ready").is_some_and(|r| r.0 == 200));
    produce_sample(&q, &["-q"]).run().expect_code(0);
    // Two that cannot be used (not JSON), and a repeat of a message already stored.
    q.publish_raw(b"not json", props("bad-1"));
    q.publish_raw(b"{broken", props("bad-2"));
    q.publish_raw(br#"{"a":1}"#, props("dup"));
    q.publish_raw(br#"{"a":1}"#, props("dup"));
    let total = 304;
    let mut text = String::new();
    wait_until(DEADLINE, "every delivery acked in /metrics", || {
        text = scrape(port);
        counter(&text, "messages_acked", &q.name) == total
    });
    assert_eq!(counter(&text, "messages_received", &q.name), total, "{text}");
    assert_eq!(value(&text, &format!("mqdemo_in_flight{{queue=\"{}\"}}", q.name)), Some(0.0));
    assert_eq!(value(&text, "mqdemo_connected"), Some(1.0), "{text}");
    assert_eq!(http_get(port, "/live").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/nothing").map(|r| r.0), Some(404));
    run.signal("TERM");
    run.finish(DEADLINE).expect_code(1); // two failed messages: exit 1
    let sum = summary(&json);
    assert_eq!(sum["messages"], 301, "{sum}");
    assert_eq!(
        counter(&text, "messages_duplicate", &q.name),
        sum["duplicates"].as_u64().unwrap_or(0)
    );
    assert_eq!(counter(&text, "messages_failed", &q.name), sum["failed"].as_u64().unwrap_or(0));
    assert_eq!(sum["failed"], 2, "{sum}");
    assert_eq!(sum["duplicates"], 1, "{sum}");
    // The failed copies were published to the failed queue with confirms.
    assert_eq!(counter(&text, "messages_published", &failed.name), 2, "{text}");
    assert_eq!(counter(&text, "messages_confirmed", &failed.name), 2, "{text}");
    assert_eq!(counter(&text, "messages_nacked", &failed.name), 0, "{text}");
    let confirms = format!("mqdemo_confirm_seconds_count{{queue=\"{}\"}}", failed.name);
    assert_eq!(value(&text, &confirms), Some(2.0), "{text}");
}

#[test]
fn metrics15_pipe_counts_equal_its_summary() {
    let text = pipe_run(&[]);
    assert_eq!(value(&text, "mqdemo_model_call_seconds_count"), Some(300.0), "{text}");
    assert_eq!(value(&text, "mqdemo_batch_size_bucket{le=\"1\"}"), Some(300.0), "{text}");
}

#[test]
fn metrics15_batched_pipe_counts_calls_and_batch_sizes() {
    // `cat` echoes the JSON array line: as many answers as inputs, in order.
    let text = pipe_run(&["--framing", "json-batch", "--batch-size", "50", "--batch-wait", "1"]);
    let calls = value(&text, "mqdemo_model_call_seconds_count").unwrap_or(0.0);
    assert_eq!(value(&text, "mqdemo_batch_size_count"), Some(calls), "{text}");
    assert_eq!(value(&text, "mqdemo_batch_size_sum"), Some(300.0), "{text}");
    assert!((6.0..300.0).contains(&calls), "batches of up to 50: {calls} calls\n{text}");
}

/// `pipe --exec cat` with `extra` over the 300 sample rows, scraped until every input is
/// acked; checks the counts against the summary and returns the last scrape.
fn pipe_run(extra: &[&str]) -> String {
    let input = TestQueue::new("metrics15-pipe-in");
    let output = TestQueue::new("metrics15-pipe-out");
    let _failed = TestQueue::named(format!("{}.failed", input.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("summary.json");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "pipe",
        "--from",
        &input.name,
        "--to",
        &output.name,
        "--exec",
        "cat",
        "--metrics-addr",
        &addr,
        "--summary-json",
        s(&json),
    ];
    let run = mqdemo(&[&args[..], extra].concat()).watch();
    wait_until(DEADLINE, "/ready 200", || http_get(port, "/ready").is_some_and(|r| r.0 == 200));
    produce_sample(&input, &["-q"]).run().expect_code(0);
    let mut text = String::new();
    wait_until(DEADLINE, "300 inputs acked in /metrics", || {
        text = scrape(port);
        counter(&text, "messages_acked", &input.name) == 300
    });
    run.signal("TERM");
    run.finish(DEADLINE).expect_code(0);
    let sum = summary(&json);
    assert_eq!(sum["messages"], 300, "{sum}");
    let answered = sum["answered"].as_u64().unwrap_or(0);
    assert_eq!(answered, 300, "{sum}");
    assert_eq!(counter(&text, "messages_received", &input.name), 300, "{text}");
    assert_eq!(counter(&text, "messages_published", &output.name), answered, "{text}");
    assert_eq!(counter(&text, "messages_confirmed", &output.name), answered, "{text}");
    assert_eq!(counter(&text, "messages_failed", &input.name), 0, "{text}");
    assert_eq!(output.depth(), 300);
    text
}

#[test]
fn metrics15_ready_is_503_while_the_broker_is_stopped() {
    let broker = PrivateBroker::start("metrics15");
    let url = broker.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let run = mqdemo(&[
        "--url",
        &url,
        "consume",
        "text",
        "--queue",
        "m15",
        "--workers",
        "2",
        "--output-directory",
        s(&dir.path().join("out")),
        "--metrics-addr",
        &addr,
    ])
    .watch();
    let ready = || http_get(port, "/ready").map(|r| r.0);
    wait_until(DEADLINE, "/ready 200", || ready() == Some(200));
    assert_eq!(value(&scrape(port), "mqdemo_connected"), Some(1.0));
    broker.stop();
    wait_until(DEADLINE, "/ready 503 with the broker down", || ready() == Some(503));
    assert_eq!(value(&scrape(port), "mqdemo_connected"), Some(0.0));
    assert_eq!(http_get(port, "/live").map(|r| r.0), Some(200), "alive while reconnecting");
    broker.start_again();
    wait_until(Duration::from_secs(120), "/ready 200 after the broker is back", || {
        ready() == Some(200)
    });
    let text = scrape(port);
    assert_eq!(value(&text, "mqdemo_connected"), Some(1.0), "{text}");
    assert!(value(&text, "mqdemo_reconnects_total").is_some_and(|n| n >= 2.0), "{text}");
    run.signal("TERM");
    run.finish(DEADLINE).expect_code(0);
}

#[test]
fn metrics15_bad_addresses_are_usage_errors() {
    for bad in ["9090", "localhost", "127.0.0.1:0", "127.0.0.1:http"] {
        let out = mqdemo(&["consume", "tabular", "--metrics-addr", bad]).run().expect_code(2);
        let first = out.first_error_line();
        assert!(first.contains("--metrics-addr") && first.contains("HOST:PORT"), "{first}");
    }
    // Only the long-running commands take it.
    let file = data("tabular_data.csv");
    let args = ["produce", "tabular", "--file", s(&file), "--metrics-addr", "127.0.0.1:9090"];
    mqdemo(&args).run().expect_code(2).stderr_has("--metrics-addr");
}

#[test]
fn metrics15_a_taken_port_stops_the_run_before_a_message_is_taken() {
    let q = TestQueue::new("metrics15-taken");
    produce_sample(&q, &["--num-records", "5", "-q"]).run().expect_code(0);
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let never = TestQueue::named(format!("{}-never", q.name));
    for args in [
        vec!["consume", "tabular", "--queue", &q.name, "--metrics-addr", &addr],
        vec![
            "pipe",
            "--from",
            &q.name,
            "--to",
            &never.name,
            "--exec",
            "cat",
            "--metrics-addr",
            &addr,
        ],
    ] {
        let out = mqdemo(&args).run().expect_code(1);
        let first = out.first_error_line();
        assert!(first.contains(&format!("--metrics-addr {addr}")), "{first}");
        assert!(first.contains("free port"), "{first}");
        assert!(out.stdout.is_empty(), "no row taken: {}", out.stdout);
    }
    assert_eq!(q.depth(), 5, "every message still queued");
    assert!(!crate::support::queue_exists(&never.name), "pipe declared nothing");
}

#[test]
fn metrics15_serve_counts_expired_requests() {
    let q = TestQueue::new("metrics15-serve");
    let _failed = TestQueue::named(format!("{}.failed", q.name));
    let results = TestQueue::new("metrics15-results");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("summary.json");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = ["serve", "--queue", &q.name, "--results-queue", &results.name, "--exec", "cat"];
    let more = ["--metrics-addr", &addr, "--summary-json", s(&json)];
    let run = mqdemo(&[&args[..], &more].concat()).watch();
    wait_until(DEADLINE, "/ready 200", || http_get(port, "/ready").is_some_and(|r| r.0 == 200));
    // Two requests whose client gave up long ago, and one still wanted.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for (id, deadline) in [("old-1", now - 60_000), ("old-2", now - 1), ("new", now + 600_000)] {
        let mut h = amiquip::FieldTable::new();
        h.insert("x-mqdemo-deadline".into(), amiquip::AmqpValue::LongLongInt(deadline));
        q.publish_raw(br#"{"x":1}"#, props(id).with_headers(h));
    }
    let mut text = String::new();
    wait_until(DEADLINE, "3 requests acked in /metrics", || {
        text = scrape(port);
        counter(&text, "messages_acked", &q.name) == 3
    });
    run.signal("TERM");
    run.finish(DEADLINE).expect_code(0);
    let sum = summary(&json);
    assert_eq!(sum["expired"], 2, "{sum}");
    assert_eq!(counter(&text, "requests_expired", &q.name), 2, "{text}");
    assert_eq!(counter(&text, "messages_confirmed", &results.name), 1, "{text}");
    assert_eq!(value(&text, "mqdemo_model_call_seconds_count"), Some(1.0), "{text}");
    // No reply_to: no series of its own, and the shared one untouched.
    assert_eq!(counter(&text, "messages_published", "(reply_to)"), 0, "{text}");
}

// The endpoint against hostile clients: whatever one client does, a scrape of /live by
// another answers at once, and the server's threads, memory and descriptors stay bounded.

/// How long a scrape may take while a hostile client is at work.
const PROMPT: Duration = Duration::from_secs(2);

/// `GET path` that must answer within `within` (connect, send and read): the status.
fn status_within(port: u16, path: &str, within: Duration) -> Option<u16> {
    let started = std::time::Instant::now();
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    stream.set_write_timeout(Some(within)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split(' ').nth(1)?.parse().ok()?;
    (started.elapsed() <= within).then_some(status)
}

/// Assert /live answers 200 within PROMPT.
fn assert_live(port: u16, during: &str) {
    assert_eq!(status_within(port, "/live", PROMPT), Some(200), "/live within {PROMPT:?} {during}");
}

/// A `consume tabular` run with `--metrics-addr` on `port`, ready.
struct Target {
    q: TestQueue,
    port: u16,
    run: crate::support::Watched,
    _dir: tempfile::TempDir,
}

/// `consume tabular` with `--metrics-addr` on a free port, run by `wrapper` (or directly),
/// once /ready answers 200.
fn hostile_target(name: &str, wrapper: &[&str]) -> Target {
    let q = TestQueue::new(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let out = dir.path().join("rows.jsonl");
    let args = ["consume", "tabular", "--queue", &q.name, "--output", s(&out)];
    let args = [&args[..], &["--metrics-addr", &addr]].concat();
    let run = if wrapper.is_empty() {
        mqdemo(&args)
    } else {
        crate::support::mqdemo_under(wrapper, &args)
    }
    .watch();
    wait_until(DEADLINE, "/ready 200", || http_get(port, "/ready").is_some_and(|r| r.0 == 200));
    Target { q, port, run, _dir: dir }
}

impl Target {
    /// Stop the run with SIGTERM: it exits 0 (no failed message).
    fn stop(self) {
        self.run.signal("TERM");
        self.run.finish(DEADLINE).expect_code(0);
    }
}

/// `n` connections to `port` (each may fail once the server is out of descriptors).
fn connections(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = ([127, 0, 0, 1], port).into();
    let patience = Duration::from_millis(250);
    (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, patience).ok()).collect()
}

/// The process's thread count.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("Threads:")).expect("Threads line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("thread count")
}

#[test]
fn metrics15_idle_connections_past_the_open_file_limit_leave_live_answering() {
    // 64 descriptors: more than the process (about 13) and the server's 16 connections
    // hold; 24: fewer, so the server's own accepts fail with EMFILE.
    for limit in [64, 24] {
        let nofile = format!("--nofile={limit}:{limit}");
        let t = hostile_target("metrics15-fds", &["prlimit", &nofile, "--"]);
        let (q, port) = (&t.q, t.port);
        // Far more than the process's descriptors, held open and silent.
        let idle = connections(port, 200);
        assert!(idle.len() > 64, "only {} connections made", idle.len());
        assert_live(port, &format!("with 200 idle connections and {limit} descriptors"));
        // The run itself still works: rows are consumed and counted.
        produce_sample(q, &["--num-records", "5", "-q"]).run().expect_code(0);
        wait_until(DEADLINE, "5 rows acked in /metrics", || {
            counter(&scrape(port), "messages_acked", &q.name) == 5
        });
        drop(idle);
        let more = connections(port, 200);
        assert_live(port, "after a second wave of idle connections");
        drop(more);
        t.stop();
    }
}

#[test]
fn metrics15_a_client_that_never_reads_its_answers_stalls_nothing() {
    let t = hostile_target("metrics15-noread", &[]);
    let port = t.port;
    let mut hog = connections(port, 1).pop().expect("a connection");
    hog.set_write_timeout(Some(PROMPT)).expect("write timeout");
    // 10,000 pipelined scrapes (tens of MB of answers), none of them read.
    let requests = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(10_000);
    let _ = hog.write_all(requests.as_bytes()); // refused or timed out: either is fine
    assert_live(port, "while a client does not read its answers");
    assert_live(port, "again");
    drop(hog);
    t.stop();
}

#[test]
fn metrics15_an_endless_header_is_refused_without_growing_memory() {
    let t = hostile_target("metrics15-header", &[]);
    let (port, pid) = (t.port, t.run.id());
    let rss = || crate::support::status_kib(pid, "VmRSS:").expect("VmRSS") * 1024;
    let before = rss();
    let mut hog = connections(port, 1).pop().expect("a connection");
    hog.set_write_timeout(Some(Duration::from_millis(200))).expect("write timeout");
    hog.write_all(b"GET /live HTTP/1.1\r\nX-Endless: ").expect("request line");
    let chunk = vec![b'a'; 64 * 1024];
    let limit = 64 << 20;
    let (mut sent, started) = (0usize, std::time::Instant::now());
    // Until the server cuts it off, or has taken `limit` bytes (within a minute).
    let refused = loop {
        if sent >= limit || started.elapsed() > DEADLINE {
            break false;
        }
        match hog.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let grown = rss().saturating_sub(before);
    assert!(refused, "the server took {sent} bytes of one header line");
    assert!(grown < 16 << 20, "resident memory grew by {grown} bytes");
    assert_live(port, "after an endless header");
    t.stop();
}

#[test]
fn metrics15_slow_clients_take_no_thread_each_nor_block_live() {
    let t = hostile_target("metrics15-slowloris", &[]);
    let (port, pid) = (t.port, t.run.id());
    let before = threads(pid);
    let mut slow = connections(port, 100);
    let mut most = before;
    // Each sends its request a byte at a time, never finishing, for two seconds.
    for byte in b"GET /live HTTP/1.1\r\nX-Slow: ".iter().take(8) {
        for s in &mut slow {
            let _ = s.write_all(&[*byte]);
        }
        std::thread::sleep(Duration::from_millis(250)); // the pace of the attack
        most = most.max(threads(pid));
    }
    assert!(most <= before, "{before} threads before, {most} with 100 slow clients");
    assert_live(port, "with 100 slow clients connected");
    drop(slow);
    t.stop();
}

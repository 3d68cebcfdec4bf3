//! Rows to a pipe: acked only once the next program has read them.

use crate::support::{TestQueue, csv_rows, mqdemo, s, url};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn rows_a_pipe_reader_never_read_stay_queued() {
    let q = TestQueue::new("handoff");
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 5_000;
    let csv = csv_rows(dir.path(), "rows.csv", 1..=rows);
    mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name]).run().expect_code(0);
    // `head -c 1000` reads 1,000 bytes (a few rows of ~300 bytes) and exits.
    let mut head = Command::new("head")
        .args(["-c", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("head runs");
    let pipe = head.stdin.take().expect("head's stdin");
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_mqdemo"))
        .args(["consume", "tabular", "--queue", &q.name, "--count", &rows.to_string()])
        .env("AMQP_URL", url())
        .stdin(Stdio::null())
        .stdout(Stdio::from(pipe))
        .stderr(Stdio::piped())
        .spawn()
        .expect("mqdemo runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = consumer.try_wait().expect("try_wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "consumer still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = head.wait();
    assert_eq!(status.code(), Some(0), "a closed pipe is a normal end");
    let lost = rows as u32 - q.depth();
    // At most the rows whose bytes head took (1,000 bytes, rows of over 100 bytes each).
    assert!(lost <= 10, "{lost} rows acked though head read only 1,000 bytes");
}

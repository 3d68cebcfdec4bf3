//! Fourth attack on issue 16 (stream replay), after ead78b2: where --checkpoint points
//! (not a regular file), and the resume probe on a stream being written to.

use crate::replay_kit::{attack_queue, on_stream};
use crate::support::*;
use amiquip::{AmqpProperties, Publish};
use std::path::Path;
use std::time::Duration;

fn produce(q: &TestQueue, dir: &Path, ids: std::ops::RangeInclusive<u64>) {
    crate::replay_kit::produce(q, dir, "rows.csv", ids);
}

/// Defect: `--checkpoint FIFO` hangs forever, and SIGTERM does not end it. The checkpoint
/// is read with std::fs::read before anything else; opening a FIFO for reading blocks until
/// a writer appears. Seen by hand: `timeout 15 mqdemo consume ... --checkpoint fifo` was
/// still running 11 minutes later (timeout's SIGTERM ignored: the main thread is stuck in
/// open(2)). Promise: bad input -> one-line error, never hangs.
/// Cause: src/checkpoint.rs:60 (`load_with_id` reads any path; src/config/stream.rs accepts
/// a --checkpoint that is not a regular file: only `is_dir` is refused).
#[test]
fn a_fifo_as_checkpoint_is_refused_not_a_hang() {
    let (_failed, q) = attack_queue("atk4", "fifo");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, 1..=3);
    let fifo = dir.join("ckpt.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let mut a = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&fifo)]);
    a.extend(["--offset", "first", "--count", "1", "-q"]);
    // `wait` kills it and fails past the deadline.
    let out = wait(mqdemo(&a).spawn(), Duration::from_secs(20));
    assert_ne!(out.code(), Some(0), "a FIFO checkpoint accepted:\n{}", out.stderr);
    assert!(out.first_error_line().contains("--checkpoint"), "{}", out.stderr);
}

/// Defect (suspected): the resume probe for `--offset N` past the end reads from `last`
/// until offset N-1 or a 300 ms gap; a stream written to every 100 ms never gives that
/// gap, so the run neither refuses nor reads while the producer goes on.
/// Cause: src/amqp/probe.rs `check_place` / `consume_from` (PROBE_GAP reset on every
/// delivery, no overall deadline).
#[test]
fn an_offset_past_the_end_of_a_stream_being_written_is_refused_promptly() {
    let (_failed, q) = attack_queue("atk4", "busy");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    produce(&q, tmpdir.path(), 1..=3);
    let name = q.name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        let started = std::time::Instant::now();
        let mut i = 100u64;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst)
            && started.elapsed() < Duration::from_secs(40)
        {
            let body = format!("{{\"ID\":{i},\"v\":\"w\"}}");
            let p = AmqpProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(format!("w{i}"));
            let _ =
                ch.basic_publish("", Publish::with_properties(body.as_bytes(), name.clone(), p));
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = conn.close();
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut a = on_stream(&q, &["consume", "tabular"], &["--offset", "1000000"]);
    a.extend(["--idle-timeout", "2", "-q"]);
    let started = std::time::Instant::now();
    let out = wait(mqdemo(&a).spawn(), Duration::from_secs(60));
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(took < Duration::from_secs(15), "refused only after {took:?}:\n{}", out.stderr);
}

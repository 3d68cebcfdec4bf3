//! Memory is bounded by bytes, not only by counts: what a consumer holds prefetched, what a
//! batch message decodes to, and how much of a long line a producer reads. Peak memory is
//! the child's VmHWM in /proc, read until it exits.

use crate::support::{Peak, TestQueue, mqdemo, status_kib, wait_until};
use amiquip::{AmqpProperties, Publish, QueueDeclareOptions};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Publish `bodies` to `q` on one connection, as another producer would (the channel close
/// returns once the broker has taken them).
fn publish_all(q: &TestQueue, bodies: impl Iterator<Item = Vec<u8>>) {
    let mut conn = crate::support::connect();
    let mut ch = conn.open_channel(None).expect("channel");
    // A queue mqdemo declared (with arguments) is taken as it is.
    if ch.queue_declare_passive(q.name.clone()).is_err() {
        ch = conn.open_channel(None).expect("channel");
        ch.queue_declare(
            q.name.clone(),
            QueueDeclareOptions { durable: true, ..Default::default() },
        )
        .expect("declare");
    }
    for body in bodies {
        let props = AmqpProperties::default().with_content_type("application/json".into());
        ch.basic_publish("", Publish::with_properties(&body, q.name.clone(), props))
            .expect("publish");
    }

    ch.close().expect("channel close");
    let _ = conn.close();
}

/// The prefetch_count of the consumer on `queue`, once there is one.
fn consumer_prefetch(queue: &str) -> u64 {
    let mut prefetch = None;
    wait_until(Duration::from_secs(30), "a consumer on the queue", || {
        let out = Command::new("rabbitmqctl")
            .args(["list_consumers", "-q", "--no-table-headers", "queue_name", "prefetch_count"])
            .output()
            .expect("rabbitmqctl runs");
        prefetch = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .and_then(|(_, n)| n.trim().parse().ok());
        prefetch.is_some()
    });
    prefetch.unwrap_or(0)
}

/// A JSON row of about `size` bytes.
fn big_row(i: usize, size: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"i":{i},"pad":""#).into_bytes();
    body.resize(size - 2, b'a');
    body.extend_from_slice(b"\"}");
    body
}

#[test]
fn consumer_holds_prefetched_bodies_within_the_byte_bound() {
    const N: usize = 40;
    const BODY: usize = 4 << 20;
    const BOUND: u64 = 16 * MIB;
    let q = TestQueue::new("held-bytes");
    publish_all(&q, (0..N).map(|i| big_row(i, BODY)));
    // stdout is not read yet: the consumer blocks writing the first row, and whatever the
    // broker sends meanwhile is held in memory.
    let bound = BOUND.to_string();
    let args = ["-q", "consume", "tabular", "--queue", &q.name, "--prefetch-bytes", &bound];
    let mut child = mqdemo(&[&args[..], &["--count", "40"]].concat()).spawn();
    let peak = Peak::watch(child.id());
    // Everything the broker will send while the consumer is stuck: its prefetch...
    let sent = consumer_prefetch(&q.name).min(N as u64);
    wait_until(Duration::from_secs(30), "the broker to send the prefetch", || {
        N as u64 - u64::from(q.depth()) >= sent
    });
    // ...and read off the socket into memory.
    wait_until(Duration::from_secs(30), "the consumer to read what was sent", || {
        status_kib(child.id(), "VmRSS:").unwrap_or(0) * 1024 >= sent * BODY as u64
    });
    let limit = BOUND + 48 * MIB;
    let held = peak.now();
    let stdout = child.stdout.take().expect("stdout");
    let rows = std::thread::spawn(move || {
        let mut n = 0;
        for line in std::io::BufRead::split(std::io::BufReader::new(stdout), b'\n') {
            n += usize::from(line.is_ok_and(|l| l.starts_with(b"{\"i\":")));
        }
        n
    });
    let crate::support::Output { status, stderr, .. } =
        crate::support::wait(child, Duration::from_secs(60));
    let code = status.code();
    let total = peak.total();
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert_eq!(rows.join().expect("reader"), N, "every row written");
    assert!(
        held < limit && total < limit,
        "peak {} MiB while stuck ({sent} prefetched), {} MiB over the run: over the \
         --prefetch-bytes {} MiB bound + 48 MiB",
        held / MIB,
        total / MIB,
        BOUND / MIB
    );
    eprintln!("peak {} MiB while stuck, {} MiB over the run", held / MIB, total / MIB);
}

/// A batch body (a JSON array of row objects) of about `size` bytes of short fields: the
/// shape that decodes to many times its size.
fn wide_batch(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 200);
    body.push(b'[');
    let mut i = 0u64;
    while body.len() < size {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(
            format!(r#"{{"id":{i},"a":1,"b":"x","c":null,"d":2.5,"e":"yz","f":true,"g":7}}"#)
                .as_bytes(),
        );
        i += 1;
    }
    body.push(b']');
    body
}

#[test]
fn a_batch_that_decodes_beyond_the_bound_is_rejected_alone() {
    const BOUND: u64 = 64 * MIB;
    let q = TestQueue::new("decoded-bytes");
    let dlq = TestQueue::named(format!("{}-dead", q.name));
    let small = br#"[{"id":1,"a":1,"b":"x","c":null,"d":2.5,"e":"yz","f":true,"g":7}]"#.to_vec();
    // The declare with its dead-letter arguments comes first, from a consumer that stops.
    let declare = ["--dead-letter-queue", &dlq.name, "--idle-timeout", "0.1"];
    mqdemo(&[&["consume", "tabular", "--queue", &q.name][..], &declare].concat())
        .run()
        .expect_code(0);
    let big = wide_batch(50 << 20);
    publish_all(&q, [big, small].into_iter());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rows.csv");
    let bound = BOUND.to_string();
    let (out_run, peak) = mqdemo(&[
        "-q",
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--dead-letter-queue",
        &dlq.name,
        "--format",
        "csv",
        "--output",
        crate::support::s(&out),
        "--prefetch-bytes",
        &bound,
        "--count",
        "2",
    ])
    .run_peak(Duration::from_secs(120));
    let (code, stderr) = (out_run.code(), out_run.stderr);
    eprintln!("peak {} MiB", peak / MIB);
    assert_eq!(code, Some(1), "the rejected batch fails the run; stderr:\n{stderr}");
    assert!(stderr.contains("; sending it to "), "named with the reason:\n{stderr}");
    let csv = std::fs::read_to_string(&out).expect("rows.csv");
    assert_eq!(csv.lines().count(), 2, "the small batch after it is written:\n{csv}");
    assert_eq!(dlq.depth(), 1, "the big batch is dead-lettered");
    assert!(
        peak < 50 * MIB + BOUND + 64 * MIB,
        "peak {} MiB: a 50 MiB batch decoded beyond the {} MiB bound",
        peak / MIB,
        BOUND / MIB
    );
}

/// `DIR/NAME`: 300 MB of `a` on line 1, then a short line.
fn long_line_file(dir: &std::path::Path, name: &str, head: &[u8]) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    f.write_all(head).expect("write");
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..300 {
        f.write_all(&chunk).expect("write");
    }
    f.write_all(b"\nnext line\n").expect("write");
    f.flush().expect("flush");
    path
}

#[test]
fn a_file_with_a_300_mb_line_is_skipped_without_the_line_being_held() {
    let q = TestQueue::new("long-line");
    let dir = tempfile::tempdir().expect("tempdir");
    long_line_file(dir.path(), "long.txt", b"");
    let args = ["produce", "text", "--split", "line", "--queue", &q.name, "--directory"];
    let (out, peak) = mqdemo(&[&args[..], &[crate::support::s(dir.path())]].concat())
        .run_peak(Duration::from_secs(120));
    let (code, stderr) = (out.code(), out.stderr);
    eprintln!("peak {} MiB", peak / MIB);
    assert!(peak < 64 * MIB, "peak {} MiB reading a 300 MB line", peak / MIB);
    assert_eq!(code, Some(1), "a skipped file fails the run; stderr:\n{stderr}");
    assert!(stderr.contains("long.txt") && stderr.contains("line 1"), "not named:\n{stderr}");
    // None of its lines is sent: they could never make the whole file at a consumer.
    assert!(q.get().is_none(), "a line of a skipped file was sent");
}

//! Defects found by attacking confirms settled by mqdemo, nacked and returned messages
//! retried with reconnects, and rows to a pipe acked once read: each test here failed
//! before its fix. Queues are named `atk-...` and deleted on drop.

use crate::support::{TestQueue, connect, csv_rows, mqdemo, s, url, wait_until};
use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A queue named `atk-<test>-<pid>`, deleted on drop.
fn atk_queue(test: &str) -> TestQueue {
    TestQueue::named(format!("atk-{test}-{}", std::process::id()))
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqdemo"));
    cmd.env("AMQP_URL", url()).env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    cmd
}

fn term(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
}

/// Wait up to `deadline` for the exit; None (and the child killed) if it did not come.
fn exit_within(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the consumer has written rows the reader has not read: from then on it is
/// stuck, writing into a full pipe or waiting for the reader before its ack.
fn wait_pipe_written(reader: &impl std::os::fd::AsFd) {
    wait_until(Duration::from_secs(30), "rows in the pipe", || {
        rustix::io::ioctl_fionread(reader).is_ok_and(|n| n > 0)
    });
}

fn pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Promise 3: one SIGTERM ends `consume tabular` promptly even when the stdout reader
/// stalls. It does not when the rows of one ack batch exceed the pipe's 64 KiB: the
/// consumer sits in write(2) (SA_RESTART) and never looks at the stop flag. Default
/// --prefetch with batched messages (produce --batch-size 100) is enough.
#[test]
fn sigterm_ends_consume_to_a_stalled_pipe_reader() {
    let q = atk_queue("stall");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=20_000);
    let args = ["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--batch-size", "100"];
    mqdemo(&args).run().expect_code(0);
    // A reader that never reads: we hold the read end and do nothing with it.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut consumer = bin()
        .args(["consume", "tabular", "--queue", &q.name])
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::null())
        .spawn()
        .expect("mqdemo runs");
    wait_pipe_written(&reader);
    term(&consumer);
    let started = Instant::now();
    let status = exit_within(&mut consumer, Duration::from_secs(15));
    drop(reader);
    assert!(
        status.is_some(),
        "consume to a stalled pipe reader still running 15 s after one SIGTERM (stuck in write)"
    );
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
    assert_eq!(q.depth(), 200, "nothing the reader never read is acked");
}

/// Same with single-row messages and a larger --prefetch (ack batch 1,000 rows ~ 300 KiB).
#[test]
fn sigterm_ends_consume_with_large_prefetch_to_a_stalled_pipe_reader() {
    let q = atk_queue("stall-pf");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=5_000);
    mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name]).run().expect_code(0);
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut consumer = bin()
        .args(["consume", "tabular", "--queue", &q.name, "--prefetch", "2000"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::null())
        .spawn()
        .expect("mqdemo runs");
    wait_pipe_written(&reader);
    term(&consumer);
    let status = exit_within(&mut consumer, Duration::from_secs(15));
    drop(reader);
    assert!(status.is_some(), "still running 15 s after one SIGTERM");
    assert_eq!(q.depth(), 5_000);
}

/// Promise 2 / DESIGN (serve): a reply whose client left (its exclusive reply queue is gone,
/// 312 NO_ROUTE) must fail on its own. Since 40a3211 it is retried with a reconnect every
/// few seconds for the whole --retry-for (300 s by default) and the service answers nobody
/// else meanwhile: here a live client's request waits > 20 s (11 s with --retry-for 10).
#[test]
fn serve_keeps_answering_after_a_client_left_before_its_reply() {
    let q = atk_queue("serve");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare(&q.name, QueueDeclareOptions { durable: true, ..Default::default() })
        .expect("declare");
    // Client 1 asks and leaves: its exclusive reply queue goes with its connection.
    {
        let mut gone = connect();
        let gch = gone.open_channel(None).expect("channel");
        let rq = gch
            .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() })
            .expect("reply queue");
        let props = AmqpProperties::default()
            .with_reply_to(rq.name().to_string())
            .with_correlation_id("gone".into())
            .with_message_id("atk-req-gone".into());
        gch.basic_publish("", Publish::with_properties(b"{\"x\":1}", q.name.clone(), props))
            .expect("publish");
        drop(rq);
        let _ = gone.close();
    }
    let mut serve = bin()
        .args(["serve", "--queue", &q.name, "--exec", "cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve runs");
    let mut serve_err = serve.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = serve_err.read_to_string(&mut s);
        s
    });
    // Serve has taken client 1's request (and its reply is refused) before client 2 asks.
    wait_until(Duration::from_secs(20), "serve to take the first request", || q.depth() == 0);
    // Client 2 is still there.
    let rq = ch
        .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() })
        .expect("reply queue");
    let consumer =
        rq.consume(ConsumerOptions { no_ack: true, ..Default::default() }).expect("consume");
    let props = AmqpProperties::default()
        .with_reply_to(rq.name().to_string())
        .with_correlation_id("live".into())
        .with_message_id("atk-req-live".into());
    ch.basic_publish("", Publish::with_properties(b"{\"x\":2}", q.name.clone(), props))
        .expect("publish");
    let asked = Instant::now();
    let got = consumer.receiver().recv_timeout(Duration::from_secs(20));
    let waited = asked.elapsed();
    term(&serve);
    let _ = exit_within(&mut serve, Duration::from_secs(15));
    let stderr = err_reader.join().unwrap_or_default();
    let _ = consumer.cancel();
    let _ = conn.close();
    drop(failed);
    let reconnects = stderr.matches("reconnected to").count();
    assert!(
        matches!(got, Ok(ConsumerMessage::Delivery(_))),
        "a live client got no reply within {waited:?}: serve reconnected {reconnects} times \
         retrying the reply to a client that left; stderr:\n{}",
        stderr.lines().take(6).collect::<Vec<_>>().join("\n")
    );
}

/// Promise 2: no leak from replaced connections. Every reconnect leaves the old channel
/// `mem::forget`-ed (Publisher::into_unconfirmed), keeping 2 pipe fds of amiquip's event loop
/// open; a producer sitting on a full queue is recycled every ~10 s, so fds grow for as
/// long as it waits (serve with departed clients: EMFILE under `ulimit -n 40` in 44 s).
#[test]
fn a_producer_on_a_full_queue_leaks_no_file_descriptors() {
    let q = atk_queue("fdleak");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=300);
    let producer = mqdemo(&[
        "produce",
        "tabular",
        "--file",
        s(&csv),
        "--queue",
        &q.name,
        "--max-length",
        "100",
        "--retry-for",
        "60",
    ])
    .watch();
    producer.wait_for("trying a fresh connection", Duration::from_secs(30));
    producer.wait_for("reconnected to", Duration::from_secs(30));
    let first = pipe_fds(producer.id());
    let count = |s: &str| s.matches("reconnected to").count();
    wait_until(Duration::from_secs(60), "3 more connection replacements", || {
        count(&producer.stderr()) >= 4
    });
    // The old connections are closed on a thread of their own: give that a deadline.
    let pid = producer.id();
    let settled = Instant::now();
    while pipe_fds(pid) > first && settled.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let later = pipe_fds(pid);
    producer.signal("TERM");
    let _ = producer.finish(Duration::from_secs(20));
    assert!(later <= first, "pipe fds grew from {first} to {later} over 3 connection replacements");
}

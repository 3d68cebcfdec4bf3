//! Attacks on issue 16 (stream replay): each test shows a way a replay or a resumed run
//! skips a message, or moves a checkpoint past one not yet handled.

use crate::proxy::Proxy;
use crate::replay_kit::{ids, on_stream, synced_before_checkpoint};
use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Produce `file` into stream `q` (confirmed); `extra`: e.g. retention flags.
fn produce_file(q: &TestQueue, file: &Path, extra: &[&str]) {
    let mut a = on_stream(q, &["produce", "tabular"], &["--file", s(file), "-q"]);
    a.extend(extra);
    mqdemo(&a).run().expect_code(0);
}

/// The offset saved in a checkpoint file, if there is one.
fn checkpoint(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["offset"].as_u64()
}

/// A CSV `ID,v` with these rows.
fn rows(dir: &Path, name: &str, rows: &[(u64, &str)]) -> std::path::PathBuf {
    let mut text = String::from("ID,v\n");
    for (id, v) in rows {
        text.push_str(&format!("{id},{v}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write csv");
    path
}

/// Defect: with `pipe --batch-size N --framing json-batch`, a duplicate (same message id,
/// e.g. a producer that ran twice) arriving while a partial batch is held is "handled" at
/// once; the consumer then takes the OLDEST held delivery as handled, acks up to it and
/// moves the checkpoint past it although the model never answered it. A SIGTERM (or a kill)
/// before the batch is due loses that message for good: the resumed run starts after it.
#[test]
fn a_duplicate_during_a_held_batch_does_not_move_the_checkpoint_past_it() {
    let (input, output) = (TestQueue::new("dupbatch16in"), TestQueue::new("dupbatch16out"));
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    // Offsets 0,1: IDs 1,2 (a full batch of 2); 2: ID 3 (held, batch not full); 3,4: IDs 1,2
    // again (a.csv produced twice: the same message ids).
    let a = rows(dir, "a.csv", &[(1, "p"), (2, "q")]);
    let b = rows(dir, "b.csv", &[(3, "r")]);
    for f in [&a, &b, &a] {
        produce_file(&input, f, &[]);
    }
    let ckpt = dir.join("pipe.ckpt");
    let pipe = |more: &[&str]| {
        let mut p = vec![
            "pipe",
            "--from",
            input.name.as_str(),
            "--to",
            output.name.as_str(),
            "--queue-type",
            "stream",
            "--exec",
            "cat",
            "--framing",
            "json-batch",
            "--batch-size",
            "2",
            "--checkpoint",
            s(&ckpt),
        ];
        p.extend(more);
        p.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    // The batch [ID 3] waits a minute for a second member: SIGTERM comes first.
    let first = pipe(&["--offset", "first", "--batch-wait", "60"]);
    let run = mqdemo(&first.iter().map(String::as_str).collect::<Vec<_>>()).watch();
    wait_until(Duration::from_secs(20), "the first batch is acked", || checkpoint(&ckpt).is_some());
    // Watch the checkpoint for a while: ID 3 (offset 2) is held unanswered all along.
    let started = Instant::now();
    let mut highest = 0;
    while started.elapsed() < Duration::from_secs(3) {
        highest = highest.max(checkpoint(&ckpt).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    run.signal("TERM");
    let stopped = run.finish(Duration::from_secs(20));
    // Resume from the checkpoint; the batch is now sent after a second.
    let rest = pipe(&["--batch-wait", "1", "--idle-timeout", "4"]);
    mqdemo(&rest.iter().map(String::as_str).collect::<Vec<_>>()).run().expect_code(0);
    let read = on_stream(
        &output,
        &["consume", "tabular"],
        &["--offset", "first", "--idle-timeout", "3", "-q"],
    );
    let answers = mqdemo(&read).run();
    let mut answered = ids(&answers.stdout);
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(
        answered,
        vec![1, 2, 3],
        "every input answered at least once (checkpoint seen at {highest} while ID 3 at \
         offset 2 was held)\nfirst run: {}",
        stopped.stderr
    );
    assert!(
        highest < 2,
        "the checkpoint reached offset {highest} while the message at offset 2 (ID 3) was \
         held in an unanswered batch\nfirst run: {}",
        stopped.stderr
    );
}

/// Defect: a stream consumer that starts at `next` (the default) and loses its connection
/// before its first message reconnects at `next` again: whatever was written to the stream
/// while it was away is skipped. (Once a message is received it resumes at an offset; the
/// replay16 test covers that case only.)
#[test]
fn a_consumer_at_next_that_loses_its_connection_before_any_message_skips_none() {
    let q = TestQueue::new("nextcut16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    // Declared as a stream first (with one old row the consumer must NOT get: it is before
    // `next`).
    produce_file(&q, &rows(dir, "old.csv", &[(0, "old")]), &[]);
    let out = dir.join("rows.jsonl");
    let port = url().rsplit_once(':').and_then(|(_, p)| p.split('/').next()?.parse().ok());
    let proxy = Proxy::start(port.unwrap_or(5672));
    let proxied = proxy.url();
    let mut read = vec!["--url", proxied.as_str()];
    read.extend(on_stream(&q, &["consume", "tabular"], &["--output", s(&out)]));
    read.extend(["--idle-timeout", "60"]);
    let run = mqdemo(&read).watch();
    // Let the consumer's basic.consume reach the broker before the freeze.
    wait_until(Duration::from_secs(20), "the stream has a consumer", || consumers(&q.name) > 0);
    proxy.freeze();
    run.wait_for("heartbeat", Duration::from_secs(30));
    // Written while the consumer is away (directly, not through the proxy).
    produce_file(&q, &rows(dir, "away.csv", &[(1, "a"), (2, "b"), (3, "c")]), &[]);
    proxy.thaw();
    run.wait_for("reconnected", Duration::from_secs(60));
    // A marker row, written again (same message id: the consumer keeps one) until the new
    // consumer has it: then it is attached, and had it started at an offset it has the rest.
    let after = rows(dir, "after.csv", &[(4, "d")]);
    let has_marker = || ids(&std::fs::read_to_string(&out).unwrap_or_default()).contains(&4);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_marker() {
        assert!(Instant::now() < deadline, "the consumer never came back:\n{}", run.stderr());
        produce_file(&q, &after, &[]);
        let sent = Instant::now();
        while !has_marker() && sent.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    run.signal("TERM");
    let done = run.finish(Duration::from_secs(20));
    // It comes back at the second it started at `next`: the old row, written in that second
    // too, may come with the rest (at least once).
    let got: Vec<u64> = ids(&std::fs::read_to_string(&out).unwrap_or_default())
        .into_iter()
        .filter(|id| *id != 0)
        .collect();
    assert_eq!(got, vec![1, 2, 3, 4], "rows written while reconnecting skipped:\n{}", done.stderr);
}

/// Consumers of `queue` on the broker (rabbitmqctl).
pub fn consumers(queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "consumers"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.split('\t').next() == Some(queue))
        .and_then(|l| l.split('\t').nth(1)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Defect: a run resumed from a checkpoint whose next offsets were dropped by retention
/// (--max-length-bytes / --max-age) starts at the oldest message kept, silently: hundreds
/// of messages are skipped and the run exits 0 with nothing said. The gap is visible (the
/// first offset delivered is past the one asked for): it should be reported and counted as
/// skipped (exit 1, DESIGN: "1 anything failed or was skipped").
///
/// Ignored in CI: with 2 KB segments truncating under retention, RabbitMQ 3.10 sometimes
/// hands a reader attached at a truncated offset nothing for seconds (seen under CI load:
/// "consumed 0 messages" within the idle timeout). It passes run alone; run with --ignored.
#[test]
#[ignore = "timing-dependent on the broker's segment truncation under load; run with --ignored"]
fn a_resume_whose_offsets_retention_dropped_says_what_it_skipped() {
    let mut q = TestQueue::new("retgap16");
    // Small segments, so retention drops old ones within the test.
    q.set_policy(r#"{"stream-max-segment-size-bytes":2000}"#);
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let retention = ["--max-length-bytes", "6000"];
    let pad = "x".repeat(50);
    let early: Vec<(u64, &str)> = (1..=10).map(|i| (i, pad.as_str())).collect();
    produce_file(&q, &rows(dir, "early.csv", &early), &retention);
    let ckpt = dir.join("run.ckpt");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--offset", "first", "--count", "5", "-q"]);
    first.extend(retention);
    let got = mqdemo(&first).run().expect_code(0);
    assert_eq!(ids(&got.stdout), vec![1, 2, 3, 4, 5]);
    assert_eq!(checkpoint(&ckpt), Some(4));
    // Much more than the retention keeps: offsets 5.. are dropped with their segments.
    let late: Vec<(u64, &str)> = (11..=400).map(|i| (i, pad.as_str())).collect();
    produce_file(&q, &rows(dir, "late.csv", &late), &retention);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    rest.extend(["--idle-timeout", "3"]);
    rest.extend(retention);
    let resumed = mqdemo(&rest).run();
    let got = ids(&resumed.stdout);
    assert!(
        got.first().is_some_and(|id| *id > 6),
        "retention did not drop offset 5: {got:?}\n{}",
        resumed.stderr
    );
    assert_eq!(
        resumed.code(),
        Some(1),
        "{} messages after the checkpoint were skipped (retention) and the run exited {:?}:\n{}",
        got[0] - 6,
        resumed.code(),
        resumed.stderr
    );
    assert!(resumed.stderr.contains("retention"), "the skip is not explained:\n{}", resumed.stderr);
}

/// Defect: a checkpoint past the end of the stream (the stream was deleted and declared
/// again, or the checkpoint is from another vhost/broker) makes the run wait at an offset
/// that does not exist yet: every message the stream holds is silently skipped and the run
/// exits 0 after --idle-timeout having consumed nothing. It should be an error naming the
/// checkpoint and the fix (delete it, or give --offset).
#[test]
fn a_checkpoint_past_the_end_of_the_stream_is_an_error() {
    let q = TestQueue::new("recreated16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let ckpt = dir.join("run.ckpt");
    let many: Vec<(u64, &str)> = (1..=50).map(|i| (i, "v")).collect();
    produce_file(&q, &rows(dir, "many.csv", &many), &[]);
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--offset", "first", "--count", "50", "-q"]);
    mqdemo(&first).run().expect_code(0);
    assert_eq!(checkpoint(&ckpt), Some(49));
    // The stream is deleted and declared again: its offsets start from 0.
    q.delete();
    let fresh: Vec<(u64, &str)> = (101..=105).map(|i| (i, "w")).collect();
    produce_file(&q, &rows(dir, "fresh.csv", &fresh), &[]);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    rest.extend(["--idle-timeout", "3"]);
    let resumed = mqdemo(&rest).run();
    assert!(
        resumed.code() != Some(0) || ids(&resumed.stdout) == vec![101, 102, 103, 104, 105],
        "the 5 messages of the stream were skipped (checkpoint 49, stream ends at 4) and the \
         run exited 0:\n{}",
        resumed.stderr
    );
    if resumed.code() != Some(0) {
        assert!(resumed.first_error_line().contains("checkpoint"), "{}", resumed.stderr);
    }
}

/// The same root cause on a classic queue (batch15's feature, made worse by replays, where a
/// producer run twice is common): the duplicate makes the consumer ack the held, unanswered
/// message, and a SIGTERM before its batch is due loses it (the run exits 0).
#[test]
fn a_duplicate_during_a_held_batch_does_not_ack_it_on_a_classic_queue() {
    let (input, output) = (TestQueue::new("dupbatchc16in"), TestQueue::new("dupbatchc16out"));
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let a = rows(dir, "a.csv", &[(1, "p"), (2, "q")]);
    let b = rows(dir, "b.csv", &[(3, "r")]);
    for f in [&a, &b, &a] {
        let a = ["produce", "tabular", "--queue", input.name.as_str(), "--file", s(f), "-q"];
        mqdemo(&a).run().expect_code(0);
    }
    let pipe = |wait: &'static str, more: &[&'static str]| {
        let mut p = vec!["pipe", "--from", input.name.as_str(), "--to", output.name.as_str()];
        p.extend(["--exec", "cat", "--framing", "json-batch", "--batch-size", "2"]);
        p.extend(["--batch-wait", wait]);
        p.extend(more);
        mqdemo(&p)
    };
    let run = pipe("60", &[]).watch();
    // The first batch (IDs 1, 2) is answered; ID 3 waits for a second member.
    wait_until(Duration::from_secs(20), "the first answers", || output.depth() >= 2);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.signal("TERM");
    let stopped = run.finish(Duration::from_secs(20));
    pipe("1", &["--idle-timeout", "4"]).run().expect_code(0);
    let mut answered = Vec::new();
    while let Some(d) = output.get() {
        answered.extend(ids(&String::from_utf8_lossy(&d.body)));
    }
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(answered, vec![1, 2, 3], "ID 3 acked unanswered; first run: {}", stopped.stderr);
}

/// Cosmetic: the --workers refusal for streams carries runs of spaces from a string
/// continuation without a backslash.
#[test]
fn the_stream_workers_refusal_is_one_clean_line() {
    let q = TestQueue::new("workers16");
    let a = on_stream(&q, &["pipe"], &[]);
    let mut a: Vec<&str> =
        a.into_iter().map(|w| if w == "--queue" { "--from" } else { w }).collect();
    a.extend(["--to", "it-workers16-never", "--exec", "cat", "--workers", "2", "--count", "1"]);
    let out = mqdemo(&a).run().expect_code(2);
    let line = out.first_error_line();
    assert!(line.contains("--workers 1"), "{}", out.stderr);
    assert!(!line.contains("  "), "runs of spaces in: {line}");
}

/// Defect: with `--output FILE` the rows are written (write(2)) but never fsynced, while the
/// checkpoint file after them is fsynced and renamed into place: after an OS crash or power
/// loss the checkpoint can be durable past rows that are not, and the resumed run starts
/// after rows the file lost. Shown with strace: no fsync/fdatasync of the output file
/// before the checkpoint's rename.
#[test]
fn the_rows_are_synced_before_the_checkpoint_that_covers_them() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        panic!("this test needs strace (apt-get install strace)");
    }
    let q = TestQueue::new("fsync16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce_file(&q, &rows(dir, "rows.csv", &[(1, "a"), (2, "b"), (3, "c")]), &[]);
    let (ckpt, out, trace) = (dir.join("run.ckpt"), dir.join("rows.jsonl"), dir.join("trace"));
    let mut read = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    read.extend(["--output", s(&out), "--offset", "first", "--count", "3", "-q"]);
    let status = std::process::Command::new("strace")
        .args(["-f", "-o", s(&trace)])
        .arg("-e")
        .arg("trace=openat,fsync,fdatasync,rename,renameat,renameat2,sync_file_range")
        .arg(bin_path())
        .args(["--url", &url()])
        .args(&read)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace runs");
    assert!(status.success(), "the consume under strace failed");
    assert_eq!(ids(&std::fs::read_to_string(&out).expect("rows")), vec![1, 2, 3]);
    let (synced, calls) = synced_before_checkpoint(&trace, "run.ckpt");
    assert!(synced, "no fdatasync of the rows before the checkpoint:\n{calls}");
}

/// Defect (message): a stream on a single node killed (SIGKILL) and started again stays
/// `down` for minutes here (RabbitMQ 3.10); the consumer retries (fine) but explains each
/// attempt as "a classic queue lives on one node ... use --queue-type quorum", which is the
/// wrong cause and the wrong fix for a stream.
/// (A graceful stop and start of the node mid-replay held up: every row once.)
///
/// A private node and up to two minutes of CI time: the wording itself is checked by the
/// unit test `amqp::topology::tests::a_stream_that_is_down_is_not_explained_as_a_classic_queue`.
#[test]
#[ignore = "slow (a private node, up to 2 min); run with --ignored"]
fn a_stream_whose_node_restarted_is_not_explained_as_a_classic_queue() {
    let broker = crate::broker::PrivateBroker::start("replaykill16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let many: Vec<(u64, &str)> = (1..=3000).map(|i| (i, "v")).collect();
    let file = rows(dir, "many.csv", &many);
    let url = broker.url();
    let base = ["--url", url.as_str()];
    let mut p = base.to_vec();
    p.extend(["produce", "tabular", "--queue", "s", "--queue-type", "stream", "--file", s(&file)]);
    p.push("-q");
    mqdemo(&p).run().expect_code(0);
    let db = dir.join("rows.db");
    let mut c = base.to_vec();
    c.extend(["consume", "tabular", "--queue", "s", "--queue-type", "stream", "--sqlite"]);
    c.extend([s(&db), "--checkpoint", "sqlite", "--offset", "first", "--prefetch", "20"]);
    c.extend(["--idle-timeout", "8"]);
    let run = mqdemo(&c).watch();
    let saved = || -> Option<i64> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        conn.query_row("SELECT \"offset\" FROM _mq_checkpoints", [], |r| r.get(0)).ok()
    };
    wait_until(Duration::from_secs(60), "the checkpoint passes 300", || {
        saved().is_some_and(|o| o >= 300)
    });
    broker.kill();
    broker.start_again();
    // The stream may be down for minutes after the node's restart (its wording is what is
    // checked), or back at once (then nothing is explained at all).
    wait_until(Duration::from_secs(120), "the stream explained or the consumer back", || {
        let err = run.stderr();
        err.contains("unavailable") || err.contains("reconnected to")
    });
    run.signal("TERM");
    let done = run.finish(Duration::from_secs(30));
    let line = done.stderr.lines().find(|l| l.contains("unavailable")).unwrap_or_default();
    assert!(!line.contains("classic queue"), "a stream explained as a classic queue: {line}");
    assert!(!line.contains("--queue-type quorum"), "the wrong fix for a stream: {line}");
}

/// Defect: a checkpointed run that received nothing (e.g. `--idle-timeout` on a quiet
/// stream) saves no checkpoint, so the next run starts at `next` again (the default
/// --offset) and silently skips everything written between the two runs (exit 0). Either
/// the first run refuses to start without an explicit --offset, or the second run gets
/// every row written after the first one began.
#[test]
fn a_checkpointed_run_that_received_nothing_does_not_lose_the_rows_written_after_it() {
    let q = TestQueue::new("emptyckpt16");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let ckpt = dir.join("run.ckpt");
    // The stream exists (a row from before any run: not expected).
    produce_file(&q, &rows(dir, "old.csv", &[(0, "old")]), &[]);
    let mut read = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    read.extend(["--idle-timeout", "2"]);
    let first = mqdemo(&read).run();
    if first.code() == Some(2) {
        assert!(first.stderr.contains("--offset"), "{}", first.stderr);
        return;
    }
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    produce_file(&q, &rows(dir, "new.csv", &[(1, "a"), (2, "b"), (3, "c")]), &[]);
    let second = mqdemo(&read).run();
    // A run that acked nothing saved the second it started at `next`: a message of that
    // second written before it (the old row, ID 0) may come too (at least once).
    let got: Vec<u64> = ids(&second.stdout).into_iter().filter(|id| *id != 0).collect();
    assert_eq!(
        got,
        vec![1, 2, 3],
        "rows written between two checkpointed runs skipped (first run saved no checkpoint: \
         {}):\n{}",
        ckpt.exists(),
        second.stderr
    );
}

//! Second attack on issue 16 (stream replay): start records, the end-of-stream probe,
//! `--until` windows. Each test shows a replay that skips messages (or cannot be recovered
//! the way its error says) against the real binary and broker.

use crate::replay_kit::{
    ids, now_secs, on_stream, publish_rows, rfc3339, stored, synced_before_checkpoint,
};
use crate::support::*;
use amiquip::AmqpProperties;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A stream queue of this attack (`atk-...`), deleted on drop.
fn atk_queue(name: &str) -> TestQueue {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let _ = url();
    TestQueue::named(format!("atk-{name}-{}-{n}", std::process::id()))
}

/// A CSV `ID,v` with these IDs.
fn rows(dir: &Path, name: &str, ids: impl IntoIterator<Item = u64>) -> PathBuf {
    let mut text = String::from("ID,v\n");
    for id in ids {
        text.push_str(&format!("{id},v{id}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write csv");
    path
}

/// Produce `ids` into stream `q` with mqdemo (confirmed).
fn produce(q: &TestQueue, dir: &Path, name: &str, ids: impl IntoIterator<Item = u64>) {
    let file = rows(dir, name, ids);
    mqdemo(&on_stream(q, &["produce", "tabular"], &["--file", s(&file), "-q"]))
        .run()
        .expect_code(0);
}

/// Defect: `--checkpoint sqlite` writes no start record. The first-attack fix (a first run
/// saves where it started before it acks anything, so that a run that acks nothing does not
/// make the next run skip what was written meanwhile) was made for `--checkpoint FILE` only:
/// with the checkpoint kept in the database, a first run at `next` that received nothing (a
/// quiet stream, `--idle-timeout`) leaves no checkpoint, the second run starts at `next`
/// again, and every row written between the two runs is skipped (exit 0).
/// Cause: src/checkpoint.rs `reading` (lines 132-134 and 151-156): `save_start` is called only for
/// a checkpoint file (`file` is None for `Checkpoint::Sqlite`).
#[test]
fn a_sqlite_checkpointed_run_that_received_nothing_does_not_lose_the_rows_written_after_it() {
    let q = atk_queue("sqlnext");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    // The stream exists, with a row from before any run (not expected: it is before `next`).
    produce(&q, dir, "old.csv", [0]);
    let db = dir.join("rows.db");
    let mut read = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
    read.extend(["--checkpoint", "sqlite", "--idle-timeout", "2"]);
    let first = mqdemo(&read).run();
    if first.code() == Some(2) {
        // Refusing a first run without --offset would also be an answer.
        assert!(first.stderr.contains("--offset"), "{}", first.stderr);
        return;
    }
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    produce(&q, dir, "new.csv", [1, 2, 3]);
    let second = mqdemo(&read).run();
    let got: Vec<u64> = stored(&db).into_iter().filter(|id| *id != 0).collect();
    assert_eq!(
        got,
        vec![1, 2, 3],
        "rows written between two runs with --checkpoint sqlite skipped (the first run \
         received nothing and saved no start):\nsecond run: {}",
        second.stderr
    );
}

/// Defect: `--offset last` with a checkpoint file: the start record of the first run is
/// `{"since": <now>}`, the same as for `next`. But `last` starts at the last chunk, written
/// BEFORE now. A first run killed (SIGKILL, a crash) while handling that chunk, before its
/// first ack, leaves `since: now`; the resumed run reads only what was written after that
/// second, so the messages the first run was handling (the last chunk) are never handled.
/// docs/replay.md: "Every message after the checkpoint is read again, so nothing is lost,
/// whatever stopped the run (SIGKILL included)".
/// Cause: src/checkpoint.rs:73 (`Offset::Next | Offset::Last => since: now`); the same
/// mapping for a reconnect before the first delivery: src/amqp/stream.rs:126
/// (`Cursor::starting` treats `last` like `next`).
#[test]
fn a_first_run_at_last_killed_before_its_first_ack_loses_nothing_on_resume() {
    let (input, output) = (atk_queue("lastin"), atk_queue("lastout"));
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&input, dir, "rows.csv", 1..=5);
    // The first run starts in a later second than the chunks were written.
    let written = now_secs();
    wait_until(Duration::from_secs(5), "a later second", || now_secs() >= written + 2);
    let ckpt = dir.join("pipe.ckpt");
    let mark = dir.join("model.pid");
    let pipe = |exec: &str, more: &[&str]| -> Vec<String> {
        let mut p = vec!["pipe", "--from", input.name.as_str(), "--to", output.name.as_str()];
        p.extend(["--queue-type", "stream", "--checkpoint", s(&ckpt), "--exec", exec]);
        p.extend(more);
        p.iter().map(|x| x.to_string()).collect()
    };
    // A model that takes its first input and then works on it for a long time.
    let slow = format!("sh -c 'read line; echo $$ > {}; exec sleep 30'", s(&mark));
    let first = pipe(&slow, &["--offset", "last"]);
    let run = mqdemo(&first.iter().map(String::as_str).collect::<Vec<_>>()).watch();
    wait_until(Duration::from_secs(20), "the model has its first input", || {
        std::fs::read_to_string(&mark).is_ok_and(|t| t.ends_with('\n'))
    });
    let saved = std::fs::read_to_string(&ckpt).unwrap_or_default();
    run.signal("KILL");
    let killed = run.finish(Duration::from_secs(10));
    if let Ok(pid) = std::fs::read_to_string(&mark) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    // The same checkpoint, a model that answers at once.
    let rest = pipe("cat", &["--offset", "last", "--idle-timeout", "3"]);
    let resumed = mqdemo(&rest.iter().map(String::as_str).collect::<Vec<_>>()).run();
    let read = on_stream(&output, &["consume", "tabular"], &["--offset", "first"]);
    let mut read = read;
    read.extend(["--idle-timeout", "3", "-q"]);
    let answers = mqdemo(&read).run();
    let answered = ids(&answers.stdout);
    assert!(
        answered.contains(&5),
        "the last chunk (with ID 5), which the killed first run was handling, was never \
         answered after the resume (answers: {answered:?}); checkpoint when killed: \
         {saved}\nfirst run: {}\nresumed run: {}",
        killed.stderr,
        resumed.stderr
    );
}

/// Defect: a first run given a wrong `--offset N` (past the stream's end: a typo, another
/// environment's number) writes its start record `{"offset": N-1}` BEFORE the probe finds
/// that the stream does not reach N. The run stops with an error that blames a checkpoint
/// ("it was deleted and declared again, or the checkpoint is another broker's") and says
/// "delete the --checkpoint file (or give --offset)". Giving the corrected --offset, as it
/// says, does nothing: the checkpoint the failed run wrote (having read nothing) now wins
/// over every --offset, and the run fails the same way forever.
/// Cause: src/checkpoint.rs:151-156 (`save_start` before the run has checked or read
/// anything) with the probe in src/amqp/consumer.rs:518-522 coming after it; the wording in
/// src/amqp/stream.rs:187-192.
#[test]
fn a_first_run_with_an_offset_past_the_end_does_not_pin_its_checkpoint() {
    let q = atk_queue("pin");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=10);
    let ckpt = dir.join("run.ckpt");
    let mut wrong = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    wrong.extend(["--offset", "5000", "--idle-timeout", "3", "-q"]);
    let first = mqdemo(&wrong).run();
    assert_ne!(first.code(), Some(0), "offset 5000 of a 10-message stream: {}", first.stderr);
    // The fix the error names: give --offset (the first run read nothing).
    let mut fixed = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    fixed.extend(["--offset", "first", "--idle-timeout", "3", "-q"]);
    let second = mqdemo(&fixed).run();
    assert_eq!(
        (second.code(), ids(&second.stdout)),
        (Some(0), (1..=10).collect::<Vec<_>>()),
        "after a first run that failed on --offset 5000 and read nothing, the corrected \
         --offset first is ignored (checkpoint now: {:?})\nfirst run: {}\nsecond run: {}",
        std::fs::read_to_string(&ckpt).unwrap_or_default(),
        first.stderr,
        second.stderr
    );
}

/// The same with `--checkpoint sqlite`: its start record too is written only once the
/// stream is checked (a first merge wrote it before the probe, pinning the wrong offset).
#[test]
fn a_first_sqlite_run_with_an_offset_past_the_end_does_not_pin_its_checkpoint() {
    let q = atk_queue("pin-sql");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=10);
    let db = dir.join("rows.db");
    let run = |offset: &str| {
        let mut a = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
        a.extend(["--checkpoint", "sqlite", "--offset", offset, "--idle-timeout", "3", "-q"]);
        mqdemo(&a).run()
    };
    let first = run("5000");
    assert_ne!(first.code(), Some(0), "offset 5000 of a 10-message stream: {}", first.stderr);
    let second = run("first");
    assert_eq!(second.code(), Some(0), "{}", second.stderr);
    assert_eq!(stored(&db), (1..=10).collect::<Vec<_>>(), "first run: {}", first.stderr);
}

/// Defect: the probe before reading from a checkpoint checks only that the stream is long
/// enough (its last chunk reaches offset N-1). A stream deleted and declared again that
/// already holds more messages than the checkpoint (a producer refilled it before the
/// replay resumed) passes: the resumed run reads the NEW stream from the old checkpoint's
/// offset, silently skipping its first messages, and exits 0. The checkpoint could carry
/// what identifies the message at its offset (its message id, or timestamp) and the probe
/// compare it with what the stream holds there.
/// Cause: src/amqp/stream.rs:155-198 (`check_reaches` compares offsets only), and the
/// checkpoint format in src/checkpoint.rs:81-83.
#[test]
fn a_recreated_stream_longer_than_the_checkpoint_is_not_read_from_the_middle() {
    let q = atk_queue("refilled");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "old.csv", 1..=5);
    let ckpt = dir.join("run.ckpt");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--offset", "first", "--count", "3", "-q"]);
    let got = mqdemo(&first).run().expect_code(0);
    assert_eq!(ids(&got.stdout), vec![1, 2, 3]);
    // Deleted and declared again, and refilled with 10 new rows before the replay resumes.
    q.delete();
    produce(&q, dir, "new.csv", 101..=110);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    rest.extend(["--idle-timeout", "3", "-q"]);
    let resumed = mqdemo(&rest).run();
    let got = ids(&resumed.stdout);
    assert!(
        resumed.code() != Some(0) || got == (101..=110).collect::<Vec<_>>(),
        "the resumed run read another stream from the old checkpoint's offset: got {got:?} \
         (101..=103 skipped), exit 0:\n{}",
        resumed.stderr
    );
}

/// The same with `--checkpoint sqlite` (found open after the fix above, which covered
/// checkpoint files only): the database's checkpoint keeps its message's identity too, so a
/// recreated, refilled stream is refused rather than read from the old offset.
#[test]
fn a_recreated_stream_behind_a_sqlite_checkpoint_is_not_read_from_the_middle() {
    let q = atk_queue("refilled-sql");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "old.csv", 1..=5);
    let db = dir.join("rows.db");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
    first.extend(["--checkpoint", "sqlite", "--offset", "first", "--count", "3", "-q"]);
    mqdemo(&first).run().expect_code(0);
    assert_eq!(stored(&db), vec![1, 2, 3]);
    q.delete();
    produce(&q, dir, "new.csv", 101..=110);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
    rest.extend(["--checkpoint", "sqlite", "--idle-timeout", "3", "-q"]);
    let resumed = mqdemo(&rest).run();
    let got: Vec<u64> = stored(&db).into_iter().filter(|id| *id > 100).collect();
    assert!(
        resumed.code() != Some(0) || got == (101..=110).collect::<Vec<_>>(),
        "the resumed run read another stream from the old checkpoint's offset: got {got:?}, \
         exit 0:\n{}",
        resumed.stderr
    );
    assert!(resumed.stderr.contains("does not hold the message"), "{}", resumed.stderr);
}

/// Defect: back-to-back time windows (`--offset T1 --until T2`, then `--offset T2 --until
/// T3`, as the README's "one hour of it" suggests) skip messages whose `timestamp` property
/// is ahead of the broker's clock (another producer on a host whose clock is a few seconds
/// ahead, or one that stamps messages with their event time). `--until T2` stops at the
/// first message STAMPED at or after T2, while `--offset T2` starts at the first chunk the
/// broker STORED at or after T2: a message stored before T2 but stamped after it is in
/// neither window. (Both runs exit 0.) Resolving `--until TIME` to the offset where a
/// consumer attached at that time starts (a probe, like the one for the stream's end) would
/// make windows meet exactly.
/// Cause: src/amqp/stream.rs:64-75 (`Until::Time` compares the producer's timestamp) vs.
/// src/amqp/stream.rs:32 (`Offset::Time`: the broker's chunk time).
#[test]
fn back_to_back_time_windows_read_every_message_once() {
    let q = atk_queue("windows");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "a.csv", 1..=3);
    let t1 = now_secs().saturating_sub(5);
    // Another producer whose clock is 10 s ahead: stored now, stamped 10 s later.
    let ahead = now_secs() + 10;
    publish_rows(&q, &[(4, "raw4"), (5, "raw5")], |_| {
        AmqpProperties::default().with_timestamp(ahead)
    });
    produce(&q, dir, "b.csv", 6..=7);
    // T2: after everything above was stored, before the skewed stamps.
    let stored_at = now_secs();
    wait_until(Duration::from_secs(5), "a later second", || now_secs() >= stored_at + 2);
    let t2 = now_secs();
    wait_until(Duration::from_secs(5), "the second after T2", || now_secs() > t2);
    produce(&q, dir, "c.csv", 8..=9);
    let (t1, t2) = (rfc3339(t1), rfc3339(t2));
    let window = |from: &str, until: Option<&str>| {
        let mut a = on_stream(&q, &["consume", "tabular"], &["--offset", from]);
        let until_args: Vec<&str> = until.map(|u| vec!["--until", u]).unwrap_or_default();
        a.extend(until_args);
        a.extend(["--idle-timeout", "3", "-q"]);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let w1 = window(&t1, Some(&t2));
    let w2 = window(&t2, None);
    let one = mqdemo(&w1.iter().map(String::as_str).collect::<Vec<_>>()).run();
    let two = mqdemo(&w2.iter().map(String::as_str).collect::<Vec<_>>()).run();
    let mut all: Vec<u64> = ids(&one.stdout).into_iter().chain(ids(&two.stdout)).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (1..=9).collect::<Vec<_>>(),
        "[{t1}, {t2}) then [{t2}, ...): first window {:?} (exit {:?}), second {:?} (exit \
         {:?})\nfirst: {}\nsecond: {}",
        ids(&one.stdout),
        one.code(),
        ids(&two.stdout),
        two.code(),
        one.stderr,
        two.stderr
    );
}

/// Defect (duplicates after an error stop): `--until TIME` met a message without a
/// `timestamp` (another producer's) and stopped with an error, leaving the rows it wrote
/// before that message unacked and the checkpoint behind them, so the fix the error named
/// (`--until offset:N`) wrote them a second time into the same --output file.
/// Since an `--until` time ahead of the clock ends by the broker's clock (a message received
/// before the time was stored before it, whatever its producer stamped; the time becomes an
/// offset once the clock passes it), a message without a `timestamp` no longer stops the
/// run: the window reads it, and every row is written once, also by a rerun of the same
/// command (resumed from the checkpoint).
#[test]
fn an_until_ahead_of_the_clock_reads_a_message_without_a_timestamp_once() {
    let q = atk_queue("nostamp");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    publish_rows(&q, &[(4, "raw4")], |_| AmqpProperties::default());
    produce(&q, dir, "more.csv", 5..=6);
    let (ckpt, out) = (dir.join("run.ckpt"), dir.join("rows.jsonl"));
    let future = rfc3339(now_secs() + 3600);
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--output", s(&out), "--offset", "first", "--until", &future]);
    first.extend(["--idle-timeout", "3"]);
    let read = mqdemo(&first).run();
    assert_eq!(read.code(), Some(0), "{}", read.stderr);
    let saved = std::fs::read_to_string(&ckpt).unwrap_or_default();
    assert!(saved.contains("\"offset\":5"), "{saved}");
    let again = mqdemo(&first).run();
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    let got = ids(&std::fs::read_to_string(&out).unwrap_or_default());
    assert_eq!(
        got,
        (1..=6).collect::<Vec<_>>(),
        "checkpoint after the first run: {saved:?}\nfirst run: {}\nsecond run: {}",
        read.stderr,
        again.stderr
    );
}

/// Defect (wrong fix in the error): `--checkpoint` naming the same file as `--output` (or
/// as `--sqlite`) is not refused as a usage error. The output is opened first, so the
/// checkpoint load then reads the rows (or the SQLite database) and says "is not a
/// checkpoint mqdemo wrote ...; give another --checkpoint, or delete it to start from
/// --offset": following the second half deletes the user's results. It should be refused
/// up front (exit 2) naming both flags.
/// Cause: src/config/stream.rs:53-72 (`stream_config` never compares the checkpoint path
/// with the run's output paths); the wording in src/checkpoint.rs:48-51.
#[test]
fn a_checkpoint_on_the_output_file_is_refused_without_advising_to_delete_it() {
    let q = atk_queue("sameout");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let out = dir.join("rows.jsonl");
    // Results of an earlier run, kept in the file.
    std::fs::write(&out, "{\"ID\":100,\"v\":\"earlier\"}\n").expect("write");
    let db = dir.join("rows.db");
    let as_output = ["--output", s(&out), "--checkpoint", s(&out)];
    let as_sqlite = ["--sqlite", s(&db), "--checkpoint", s(&db)];
    for flags in [as_output, as_sqlite] {
        let mut a = on_stream(&q, &["consume", "tabular"], &flags);
        a.extend(["--offset", "first", "--count", "3"]);
        let run = mqdemo(&a).run();
        let line = run.first_error_line();
        assert!(
            run.code() == Some(2) && !line.contains("delete it") && line.contains(flags[0]),
            "{flags:?}: exit {:?}, and the fix offered deletes the results:\n{}",
            run.code(),
            run.stderr
        );
    }
    assert!(std::fs::read_to_string(&out).expect("rows").contains("earlier"));
}

/// Defect (wording): a first run whose start record cannot be written (the --checkpoint's
/// directory does not exist) stops before reading anything, but says "(the messages are
/// acked: a rerun starts from the checkpoint before)": nothing was read, nothing acked.
/// Cause: src/checkpoint.rs:105-108 (one message for `save_start` and `save`).
#[test]
fn a_start_record_that_cannot_be_written_does_not_claim_messages_were_acked() {
    let q = atk_queue("nodir");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let ckpt = dir.join("missing-dir").join("run.ckpt");
    let mut a = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    a.extend(["--offset", "first", "--idle-timeout", "2"]);
    let run = mqdemo(&a).run();
    assert_ne!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "it read before it could keep its place: {}", run.stdout);
    let line = run.first_error_line();
    assert!(line.contains("missing-dir"), "{}", run.stderr);
    assert!(!line.contains("acked"), "nothing was acked, yet: {line}");
}

/// Defect: `--checkpoint sqlite` keeps one offset per STREAM in the database, not per
/// table. Replaying a stream "into a new results table" (docs/replay.md's first use case)
/// in the same database with `--table NEW` resumes from the old table's checkpoint: the new
/// table silently misses every row the old one got, and the run exits 0 (only a "resuming"
/// line, with "--offset is for a run with none").
/// Cause: src/results_db.rs:60-90 and :252-270 (`_mq_checkpoints` keyed by queue only), the
/// lookup in src/checkpoint.rs:132-134.
#[test]
fn a_sqlite_checkpoint_belongs_to_its_table_not_to_the_whole_database() {
    let q = atk_queue("tables");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=8);
    let db = dir.join("results.db");
    let into = |table: &'static str, more: &[&'static str]| {
        let mut a = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
        a.extend(["--table", table, "--checkpoint", "sqlite", "--offset", "first"]);
        a.extend(more);
        a.push("-q");
        mqdemo(&a).run()
    };
    into("old_scores", &["--count", "8"]).expect_code(0);
    // The same stream again, from first, into a new table of the same database.
    let again = into("new_scores", &["--idle-timeout", "3"]);
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let count = |t: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap_or(0)
    };
    assert_eq!(count("old_scores"), 8);
    assert_eq!(
        count("new_scores"),
        8,
        "a replay into a new table resumed from the old table's checkpoint (exit {:?}):\n{}",
        again.code(),
        again.stderr
    );
}

/// Defect: the probe lets an EMPTY recreated stream pass (no last chunk within 2 s: the run
/// waits at the checkpoint's offset, as documented). When the stream is then refilled, the
/// waiting run gets the new messages only from the old checkpoint's offset on: the first
/// ones are silently skipped, exit 0. Nothing ever checks that the message at the
/// checkpoint's offset is the one that was handled (re-reading it at N-1 and comparing its
/// message id would catch this and the refilled case above).
/// Cause: src/amqp/stream.rs:193-196 (`None => Ok(())`) and src/amqp/consumer.rs:355-366
/// (only a first delivery BELOW the offset asked for is caught).
#[test]
fn a_resume_waiting_on_an_empty_recreated_stream_does_not_skip_its_first_messages() {
    let q = atk_queue("emptyrec");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "old.csv", 1..=5);
    let ckpt = dir.join("run.ckpt");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--offset", "first", "--count", "5", "-q"]);
    assert_eq!(ids(&mqdemo(&first).run().expect_code(0).stdout), (1..=5).collect::<Vec<_>>());
    // Deleted and declared again, empty (a consumer with no checkpoint declares it).
    q.delete();
    let declare = on_stream(&q, &["consume", "tabular"], &["--idle-timeout", "1", "-q"]);
    mqdemo(&declare).run().expect_code(0);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    rest.extend(["--idle-timeout", "6", "-q"]);
    let run = mqdemo(&rest).watch();
    // Past the probe's wait: the run is attached at offset 5 of the empty stream (or,
    // since the fix, refused; either way the refill below must come after the probe, which
    // no broker state shows apart from the run's own consumer, so a fixed pause it is).
    std::thread::sleep(Duration::from_secs(4));
    produce(&q, dir, "new.csv", 101..=110);
    let resumed = run.finish(Duration::from_secs(60));
    let got = ids(&resumed.stdout);
    assert!(
        resumed.code() != Some(0) || got == (101..=110).collect::<Vec<_>>(),
        "the refilled stream was read from the old checkpoint's offset: got {got:?}, exit \
         0:\n{}",
        resumed.stderr
    );
}

/// Defect (corrupt checkpoint taken as none): a `--checkpoint sqlite` offset that is not a
/// stream offset (negative: written by another tool, or a hand edit) is read as "no
/// checkpoint", so the run starts from --offset (default `next`) and silently skips what
/// was written since, exit 0. A checkpoint file with the same value is refused with "is not
/// a checkpoint mqdemo wrote"; the database's should be too.
/// Cause: src/results_db.rs:85 (`u64::try_from(o).ok()` turns a bad value into None).
#[test]
fn a_negative_sqlite_checkpoint_is_refused_not_ignored() {
    let q = atk_queue("sqlneg");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let db = dir.join("rows.db");
    let mut read = on_stream(&q, &["consume", "tabular"], &["--sqlite", s(&db)]);
    read.extend(["--checkpoint", "sqlite", "--idle-timeout", "2", "-q"]);
    let mut first = read.clone();
    first.extend(["--offset", "first"]);
    mqdemo(&first).run().expect_code(0);
    assert_eq!(stored(&db), vec![1, 2, 3]);
    let conn = rusqlite::Connection::open(&db).expect("open db");
    conn.execute("UPDATE _mq_checkpoints SET \"offset\" = -7", []).expect("hand edit");
    drop(conn);
    produce(&q, dir, "more.csv", 4..=6);
    let second = mqdemo(&read).run();
    assert!(
        second.code() != Some(0) || stored(&db) == (1..=6).collect::<Vec<_>>(),
        "a checkpoint of -7 was taken as none: rows 4..6 skipped ({:?}), exit 0:\n{}",
        stored(&db),
        second.stderr
    );
}

/// Defect (bad input accepted): an inverted window, `--until` before `--offset` (bounds
/// swapped, a typo in the date), reads nothing and exits 0 as if the window were done
/// ("stopped at --until, before offset 5"). Both are known before anything is read (for
/// offsets, and for two times); it should be refused (exit 2) naming both flags.
/// Cause: src/config/stream.rs:51-52 (`--offset` and `--until` parsed, never compared).
#[test]
fn an_until_before_the_offset_is_refused() {
    let q = atk_queue("inverted");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=10);
    let (later, earlier) = (rfc3339(now_secs() - 60), rfc3339(now_secs() - 7200));
    let windows: [[&str; 4]; 2] =
        [["--offset", "5", "--until", "offset:3"], ["--offset", &later, "--until", &earlier]];
    for w in windows {
        let mut a = on_stream(&q, &["consume", "tabular"], &w);
        a.extend(["--idle-timeout", "3"]);
        let run = mqdemo(&a).run();
        assert!(
            run.code() == Some(2) && run.first_error_line().contains("--until"),
            "{w:?}: an empty window by construction, exit {:?}:\n{}",
            run.code(),
            run.stderr
        );
    }
}

/// Defect (durability, the attacks16 fsync fix is --output only): `consume ... --checkpoint
/// FILE > rows.jsonl` (stdout redirected to a file, as the README's examples do) writes the
/// rows with write(2) but never syncs them, while the checkpoint after them is fsynced and
/// renamed into place: after an OS crash or power loss the checkpoint can be durable past
/// rows that are not, and the resumed run starts after rows the file lost. When stdout is a
/// regular file it can be fdatasynced like an --output file. Shown with strace: no
/// fsync/fdatasync of fd 1 before the checkpoint's rename.
/// Cause: src/consume/rows.rs:42-51 (`sync` is set only for an --output path).
#[test]
fn rows_on_a_redirected_stdout_are_synced_before_the_checkpoint() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("this test needs strace (apt-get install strace)");
    }
    let q = atk_queue("stdoutsync");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let (ckpt, out, trace) = (dir.join("run.ckpt"), dir.join("rows.jsonl"), dir.join("trace"));
    let mut read = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    read.extend(["--offset", "first", "--count", "3", "-q"]);
    let status = Command::new("strace")
        .args(["-f", "-o", s(&trace), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2"])
        .arg(bin_path())
        .args(["--url", &url()])
        .args(&read)
        .stdout(std::fs::File::create(&out).expect("rows file"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace runs");
    assert!(status.success(), "the consume under strace failed");
    assert_eq!(ids(&std::fs::read_to_string(&out).expect("rows")), vec![1, 2, 3]);
    let (synced, calls) = synced_before_checkpoint(&trace, "run.ckpt");
    assert!(synced, "stdout (a file) never synced before the checkpoint:\n{calls}");
}

/// Defect: the end-of-stream probe runs once, on the first connection, and any trouble in
/// it passes ("not the probe's to judge"). A connection lost while it runs (here: cut by the
/// proxy exactly when the probe's basic.consume is sent) makes the run reconnect and read
/// from the checkpoint's offset with no probe at all: a checkpoint past the end of a
/// recreated stream, which the probe exists to refuse, is then waited at silently, and the
/// run exits 0 having skipped the whole stream.
/// Cause: src/amqp/consumer.rs:518-522 (probe before the loop only, not after a reconnect
/// that still starts at an offset nothing was received from) and src/amqp/stream.rs:163-168
/// (a failed probe is a pass).
#[test]
fn a_connection_lost_during_the_probe_does_not_skip_it() {
    let q = atk_queue("probecut");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "old.csv", 1..=50);
    let ckpt = dir.join("run.ckpt");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--offset", "first", "--count", "50", "-q"]);
    mqdemo(&first).run().expect_code(0);
    // Deleted and declared again: 5 messages, offsets 0..4; the checkpoint says 49.
    q.delete();
    produce(&q, dir, "new.csv", 101..=105);
    let port = url().rsplit_once(':').and_then(|(_, p)| p.split('/').next()?.parse().ok());
    let proxy = crate::proxy::Proxy::start(port.unwrap_or(5672));
    // The probe's consume asks for `x-stream-offset: last`; the reader's own asks for 50.
    proxy.poison(b"x-stream-offsetS\x00\x00\x00\x04last");
    let proxied = proxy.url();
    let mut rest = vec!["--url", proxied.as_str()];
    rest.extend(on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]));
    rest.extend(["--idle-timeout", "5"]);
    let resumed = mqdemo(&rest).run();
    let got = ids(&resumed.stdout);
    assert!(
        resumed.code() != Some(0) || got == (101..=105).collect::<Vec<_>>(),
        "after a reconnect the checkpoint past the end was waited at silently: got {got:?}, \
         exit 0 ({} connections):\n{}",
        proxy.accepted(),
        resumed.stderr
    );
}

/// The fix's own check of the case above on both probes: since checkpoints name their
/// message, a resume probes the stream's oldest message (`first`) and then the
/// checkpoint's offset, not its last chunk, so the poison above no longer meets a probe.
/// Here the connection is cut on the `first` probe of a checkpoint with an id, and on the
/// `last` probe of a checkpoint an older version wrote (no id): the run must not wait
/// silently past the end of the recreated stream either way.
#[test]
fn a_connection_lost_during_either_probe_does_not_skip_it() {
    let cases: [(&[u8], bool); 2] = [
        (b"x-stream-offsetS\x00\x00\x00\x05first", true),
        (b"x-stream-offsetS\x00\x00\x00\x04last", false),
    ];
    for (poison, with_id) in cases {
        let q = atk_queue("probecut2");
        let tmpdir = tempfile::tempdir().expect("tempdir");
        let dir = tmpdir.path();
        produce(&q, dir, "old.csv", 1..=50);
        let ckpt = dir.join("run.ckpt");
        let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
        first.extend(["--offset", "first", "--count", "50", "-q"]);
        mqdemo(&first).run().expect_code(0);
        if !with_id {
            let old = format!("{{\"queue\":\"{}\",\"offset\":49}}\n", q.name);
            std::fs::write(&ckpt, old).expect("an older checkpoint");
        }
        q.delete();
        produce(&q, dir, "new.csv", 101..=105);
        let port = url().rsplit_once(':').and_then(|(_, p)| p.split('/').next()?.parse().ok());
        let proxy = crate::proxy::Proxy::start(port.unwrap_or(5672));
        proxy.poison(poison);
        let proxied = proxy.url();
        let mut rest = vec!["--url", proxied.as_str()];
        rest.extend(on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]));
        rest.extend(["--idle-timeout", "5"]);
        let resumed = mqdemo(&rest).run();
        let got = ids(&resumed.stdout);
        assert!(
            resumed.code() != Some(0) || got == (101..=105).collect::<Vec<_>>(),
            "id in the checkpoint: {with_id}; got {got:?}, exit 0 ({} connections):\n{}",
            proxy.accepted(),
            resumed.stderr
        );
        assert!(proxy.accepted() > 1, "the probe was not retried:\n{}", resumed.stderr);
        assert!(resumed.stderr.contains("3 tries"), "{}", resumed.stderr);
    }
}

//! Sixth attack on issue 16 (stream replay and `--sqlite`), after 7bba904 (every write
//! transaction begun IMMEDIATE, the switch to WAL retried for the 10 s busy timeout): another
//! program holding the results database past that timeout; and the message that stops a
//! live `--until TIME` window. Each test fails on the current code against the real binary
//! (and broker).

use crate::support::*;
use std::path::Path;
use std::time::Duration;

/// A classic queue of this attack holding the 3 rows `ID,v` 1..=3 (deleted on drop).
fn queue_of_three(test: &str, dir: &Path) -> TestQueue {
    let q = TestQueue::new(test);
    let csv = dir.join("rows.csv");
    std::fs::write(&csv, "ID,v\n1,a\n2,b\n3,c\n").expect("write csv");
    mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "-q"])
        .run()
        .expect_code(0);
    wait_until(Duration::from_secs(10), "3 messages in the queue", || q.depth() == 3);
    q
}

/// `consume tabular --queue q --sqlite db --count 3`, run while `hold` (another program's
/// connection with a lock on `db`) is kept, and the lock released once the run is over.
fn consume_while_held(q: &TestQueue, db: &Path, hold: rusqlite::Connection) -> Output {
    let child = mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--sqlite",
        s(db),
        "--count",
        "3",
        "--idle-timeout",
        "30",
    ])
    .spawn();
    let out = wait(child, Duration::from_secs(60));
    hold.execute_batch("COMMIT").expect("release the lock");
    out
}

/// Defect: a results database another program keeps write-locked for longer than the busy
/// timeout (10 s) stops the run with an error that names neither the database nor the lock
/// nor how long was waited: `cannot store message 582c...; it stays in the queue` / `cannot
/// start an SQLite transaction` / `database is locked`. The WAL switch, failing for the same
/// reason, says `another connection kept it locked for 10 s`; the ack batch's `BEGIN
/// IMMEDIATE` (the same 10 s wait) says nothing of the kind, so the user cannot tell which
/// file to look at or that another program is the cause (nothing was acked: that held up).
/// DESIGN.md: "Bad input gets an error whose first line names the input and the fix".
/// Cause: src/results_db.rs:186 and :254 (`sqlite::begin(..).wrap_err("cannot start an
/// SQLite transaction")`: an SQLITE_BUSY after the busy timeout is not told apart, unlike
/// `setup` in src/results_db/sqlite.rs:34-42).
#[test]
fn a_database_locked_past_the_busy_timeout_names_the_database_and_the_lock() {
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let q = queue_of_three("atk16f-locked", dir);
    let db = dir.join("held.db");
    let hold = rusqlite::Connection::open(&db).expect("open db");
    hold.execute_batch(
        "PRAGMA journal_mode=WAL; \
         CREATE TABLE results (message_id TEXT PRIMARY KEY NOT NULL); \
         BEGIN IMMEDIATE; CREATE TABLE other (x);",
    )
    .expect("another writer");
    let out = consume_while_held(&q, &db, hold);
    assert_ne!(out.code(), Some(0), "the write lock was held throughout:\n{}", out.stderr);
    assert_eq!(q.depth(), 3, "nothing acked:\n{}", out.stderr);
    assert!(
        out.stderr.contains(s(&db)) && out.stderr.contains("10 s"),
        "the error names neither the database {} nor the other connection's lock held past \
         the 10 s wait:\n{}",
        db.display(),
        out.stderr
    );
}

/// Defect: a results database in SQLite's default (rollback) journal mode on which another
/// program holds a read transaction (a long report query) for longer than 10 s stops the run
/// with the first line `cannot open DB; is it an SQLite database you may write?`: the wrong
/// fix (the file is an SQLite database the run may write; permissions and format are fine).
/// Only the second line says `another connection kept it locked for 10 s`. The switch to
/// WAL needs the database to itself; a reader is enough to keep it from it.
/// DESIGN.md: "Bad input gets an error whose first line names the input and the fix".
/// Cause: src/results_db.rs:98-100 (every error of `sqlite::setup` is wrapped in "is it an
/// SQLite database you may write?", the lock timeout of src/results_db/sqlite.rs:34-42
/// included).
#[test]
fn a_reader_keeping_the_database_from_wal_is_named_on_the_first_line() {
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    let q = queue_of_three("atk16f-reader", dir);
    let db = dir.join("read.db");
    let hold = rusqlite::Connection::open(&db).expect("open db");
    hold.execute_batch("CREATE TABLE results (message_id TEXT PRIMARY KEY NOT NULL);")
        .expect("a rollback-mode database");
    hold.execute_batch("BEGIN").expect("a read transaction");
    let rows: i64 =
        hold.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).expect("a read");
    assert_eq!(rows, 0);
    let out = consume_while_held(&q, &db, hold);
    assert_ne!(out.code(), Some(0), "the read lock was held throughout:\n{}", out.stderr);
    assert_eq!(q.depth(), 3, "nothing acked:\n{}", out.stderr);
    let first = out.first_error_line();
    assert!(
        first.contains("locked") && !first.contains("is it an SQLite database you may write"),
        "the first line names the wrong fix for another program's lock:\n{}",
        out.stderr
    );
}

/// Defect: the error that stops a live `--until TIME` window the broker cannot place
/// (`cannot place --until in stream 'Q': its clock has passed the time, but the broker sent
/// nothing at or after it ...`) has a run of 22 spaces in the middle of its first line,
/// between "but the" and "broker", and another before "was read": the string continues on
/// the next source lines without the `\` that drops their indentation (the defect
/// 3dff9f4 fixed in src/amqp/probe.rs, left here). Checked in the binary under test: the
/// message is reached only when the broker serves nothing from the time nor from the
/// stream's last chunk (RabbitMQ 3.10 truncating segments), not made on demand.
/// Cause: src/amqp/consumer.rs:414 (the `format!` of `place_until`'s `Ok(None)` arm).
#[test]
fn the_until_placement_error_has_no_run_of_spaces() {
    let bin = std::fs::read(bin_path()).expect("the binary under test");
    let needle: &[u8] = b"its clock has passed the time, but the";
    let at = bin
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the --until placement message in the binary");
    let rest = &bin[at + needle.len()..];
    let text: String = rest
        .iter()
        .take(300)
        .take_while(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|&b| b as char)
        .collect();
    assert!(!format!("but the{text}").contains("   "), "the message, as printed: 'but the{text}'");
}

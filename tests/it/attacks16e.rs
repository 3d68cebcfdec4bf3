//! Fifth attack on issue 16 (stream replay), after 722e832: large bodies in the probes that
//! check where a run starts and ends, and several results tables of one SQLite database
//! with `--checkpoint sqlite` (runs one after the other and at the same time, an older
//! checkpoint table without the `id` column). Each test fails on the current code against
//! the real binary and broker.

use crate::replay_kit::{attack_queue, on_stream, produce};
use crate::support::*;
use amiquip::{AmqpProperties, Publish};
use std::path::Path;
use std::time::{Duration, Instant};

/// Publish `bodies` to `q` as another producer (persistent, a message id each), one at a
/// time, each confirmed.
fn publish(q: &TestQueue, bodies: &[(String, Vec<u8>)]) {
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.enable_publisher_confirms().expect("confirms");
    let confirms = ch.listen_for_publisher_confirms().expect("listen");
    for (id, body) in bodies {
        let p = AmqpProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(id.clone())
            .with_delivery_mode(2);
        ch.basic_publish("", Publish::with_properties(body, q.name.clone(), p)).expect("publish");
        match confirms.recv_timeout(Duration::from_secs(60)).expect("a confirm") {
            amiquip::Confirm::Ack(_) => {}
            amiquip::Confirm::Nack(p) => panic!("nacked: {p:?}"),
        }
    }
    let _ = ch.close();
    let _ = conn.close();
}

/// A JSON row `{"ID":id,"v":"aaa..."}` of about `size` bytes.
fn row(id: u64, size: usize) -> Vec<u8> {
    format!("{{\"ID\":{id},\"v\":\"{}\"}}", "a".repeat(size)).into_bytes()
}

/// Whether process `pid` has `file` open and its main thread is asleep in nanosleep (35) or
/// clock_nanosleep (230): waiting out a lock in SQLite's busy handler.
fn waiting_on(pid: u32, file: &Path) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let asleep = matches!(syscall.split_whitespace().next(), Some("35" | "230"));
    let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == file)))
        .unwrap_or(false);
    asleep && holds
}

/// Wait (20 s at most) until every child has either exited or is waiting on `db`'s lock
/// (seen on three polls in a row, 50 ms apart: the busy handler sleeps at most 100 ms).
fn until_exited_or_waiting(children: &mut [std::process::Child], db: &Path) {
    let db = db.canonicalize().expect("db path");
    let mut in_a_row = 0;
    wait_until(Duration::from_secs(20), "the runs to wait on the database lock", || {
        let all = children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))) || waiting_on(c.id(), &db));
        in_a_row = if all { in_a_row + 1 } else { 0 };
        in_a_row >= 3
    });
}

/// Defect: two results tables of one database filled at the same time, each with
/// `--checkpoint sqlite`, lose a run to "database is locked". Run A reads a stream of
/// messages it cannot use (another producer's text lines: each goes to the failed queue and
/// the place moves past it) into table a while run B stores rows into table b. A's ack batch
/// then has no rows: its transaction begins with a read (`ensure` looks at the checkpoint
/// table's shape) and only then writes the checkpoint row. In WAL mode a read transaction
/// that must become a write transaction while another connection holds the write lock gets
/// SQLITE_BUSY at once: the busy timeout (10 s) is never used for an upgrade. A stops after
/// ~128 of 2000 messages with `cannot save the checkpoint: database is locked` (3 of 3 by
/// hand), and the copies it made to the failed queue are made again by the rerun.
/// docs/replay.md: "one row per stream and results table, so --table NEW replays the stream
/// into a new table ... whatever the other tables' replays reached".
/// Cause: src/results_db.rs:229-235 (`checkpoint` opens a deferred `BEGIN`) with
/// src/results_db/checkpoints.rs:257 (`ensure` reads before the upsert of :258-267); the
/// transaction is never begun IMMEDIATE.
#[test]
fn two_tables_filled_at_once_both_keep_their_place_through_unusable_messages() {
    let (failed_a, qa) = attack_queue("atk5", "lockedA");
    let (_failed_b, qb) = attack_queue("atk5", "lockedB");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&qb, dir, "rows.csv", 1..=20_000);
    std::fs::create_dir(dir.join("txt")).expect("dir");
    let lines: String = (1..=2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.join("txt/lines.txt"), lines).expect("text");
    let mut text = on_stream(&qa, &["produce", "text"], &["--directory"]);
    let txt = dir.join("txt");
    text.extend([s(&txt), "--split", "line", "-q"]);
    mqdemo(&text).run().expect_code(0);
    let db = dir.join("both.db");
    let run = |q: &TestQueue, table: &str| {
        let flags = ["--sqlite", s(&db), "--table", table, "--checkpoint", "sqlite"];
        let mut a: Vec<String> =
            on_stream(q, &["consume", "tabular"], &flags).iter().map(|x| x.to_string()).collect();
        a.extend(["--offset", "first", "--idle-timeout", "3", "-q"].map(String::from));
        mqdemo(&a.iter().map(String::as_str).collect::<Vec<_>>()).spawn()
    };
    let (a, b) = (run(&qa, "a"), run(&qb, "b"));
    let (a, b) = (wait(a, Duration::from_secs(120)), wait(b, Duration::from_secs(120)));
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let place = |table: &str| -> Option<i64> {
        conn.query_row(
            "SELECT \"offset\" FROM _mq_checkpoints WHERE \"table\" = ?1",
            [table],
            |r| r.get(0),
        )
        .ok()
        .flatten()
    };
    let rows_b: i64 =
        conn.query_row("SELECT count(DISTINCT \"ID\") FROM b", [], |r| r.get(0)).unwrap_or(0);
    assert!(
        !a.stderr.contains("cannot save the checkpoint")
            && place("a") == Some(1999)
            && failed_a.depth() == 2000,
        "run A (table a, 2000 unusable messages) exit {:?}, checkpoint {:?}, {} copies in the \
         failed queue; run B (table b) exit {:?}, {rows_b} rows, checkpoint {:?}\nA: {}",
        a.code(),
        place("a"),
        failed_a.depth(),
        b.code(),
        place("b"),
        a.stderr.lines().filter(|l| !l.contains("body is not JSON")).collect::<Vec<_>>().join("\n")
    );
    assert_eq!((b.code(), rows_b, place("b")), (Some(0), 20_000, Some(19_999)), "{}", b.stderr);
}

/// The older checkpoint table keyed by stream and table, without `id`, with a row `from =
/// first` for each of tables a and b (both made, empty), in WAL mode.
fn db_without_id(db: &Path, queue: &str) {
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; \
         CREATE TABLE a (message_id TEXT PRIMARY KEY NOT NULL); \
         CREATE TABLE b (message_id TEXT PRIMARY KEY NOT NULL); \
         CREATE TABLE _mq_checkpoints (queue TEXT NOT NULL, \"table\" TEXT NOT NULL, \
         \"offset\" INTEGER, since INTEGER, \"from\" TEXT, PRIMARY KEY (queue, \"table\")); \
         INSERT INTO _mq_checkpoints (queue, \"table\", \"from\") VALUES ('{queue}', 'a', \
         'first'), ('{queue}', 'b', 'first');"
    ))
    .expect("older checkpoint table");
}

/// Defect: two runs (tables a and b) opening at once a database whose `_mq_checkpoints`
/// lacks the `id` column (made by the mqdemo before checkpoints kept their message's
/// identity) both see the column missing and both `ALTER TABLE ... ADD COLUMN id`: the
/// second fails with `cannot add the id column to the checkpoint table: duplicate column
/// name: id` (exit 1) before reading anything. Made deterministic here by holding the write
/// lock (another writer of the database, for well under the runs' 10 s busy timeout) while
/// both start: both pass the look and wait at the ALTER; 5 of 5 by hand.
/// Cause: src/results_db/checkpoints.rs:143-150 (`add_id`: a look, then an ALTER, outside
/// any transaction, called from `resume_point` at :171 and `ensure` at :57; unlike
/// `migrate`'s `BEGIN IMMEDIATE` at :105).
#[test]
fn two_runs_adding_the_id_column_at_once_both_resume() {
    let (_failed, q) = attack_queue("atk5", "addid");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let db = dir.join("old.db");
    db_without_id(&db, &q.name);
    let lock = rusqlite::Connection::open(&db).expect("open db");
    lock.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    let mut runs: Vec<std::process::Child> = ["a", "b"]
        .iter()
        .map(|table| {
            let flags = ["--sqlite", s(&db), "--table", table, "--checkpoint", "sqlite"];
            let mut a = on_stream(&q, &["consume", "tabular"], &flags);
            a.extend(["--count", "3", "-q"]);
            mqdemo(&a).spawn()
        })
        .collect();
    until_exited_or_waiting(&mut runs, &db);
    lock.execute_batch("COMMIT").expect("release");
    let outs: Vec<Output> = runs.into_iter().map(|c| wait(c, Duration::from_secs(60))).collect();
    let bad: Vec<String> = outs
        .iter()
        .zip(["a", "b"])
        .filter(|(o, _)| o.code() != Some(0))
        .map(|(o, t)| format!("table {t}: exit {:?}\n{}", o.code(), o.stderr))
        .collect();
    assert!(bad.is_empty(), "a run failed to start:\n{}", bad.join("\n"));
}

/// Defect: a run whose `--sqlite` database is new and being written by another connection
/// (the second of two runs started at once on a new database: 2 of 30 pairs by hand, and the
/// first of a series of SIGKILLed pairs twice) fails at once with `cannot open ...; is it an
/// SQLite database you may write? database is locked`, though the other writer is done a
/// moment later and the run sets a 10 s busy timeout. `PRAGMA journal_mode=WAL` on a
/// database in the rollback mode reads it, then must write: SQLite returns SQLITE_BUSY for
/// that upgrade at once, busy timeout or not. Made deterministic here by holding a write
/// transaction (BEGIN IMMEDIATE) on the new file while the run starts, released as soon as
/// the run has either failed or is waiting for it.
/// Cause: src/results_db.rs:81-84 (the setup batch, journal_mode first; an SQLITE_BUSY from
/// it is not retried), the same in src/results_db/checkpoints.rs:274-277.
#[test]
fn a_run_on_a_new_database_waits_for_another_writer() {
    let (_failed, q) = attack_queue("atk5", "newdb");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "rows.csv", 1..=3);
    let db = dir.join("new.db");
    let other = rusqlite::Connection::open(&db).expect("open db");
    other.execute_batch("BEGIN IMMEDIATE; CREATE TABLE other (x)").expect("writing");
    let flags = ["--sqlite", s(&db), "--table", "a", "--checkpoint", "sqlite"];
    let mut a = on_stream(&q, &["consume", "tabular"], &flags);
    a.extend(["--offset", "first", "--count", "3", "-q"]);
    let mut runs = vec![mqdemo(&a).spawn()];
    let started = Instant::now();
    until_exited_or_waiting(&mut runs, &db);
    let held = started.elapsed();
    other.execute_batch("COMMIT").expect("done writing");
    let out = wait(runs.pop().expect("the run"), Duration::from_secs(60));
    assert_eq!(
        out.code(),
        Some(0),
        "the other writer held the new database for {held:?} (the run's busy timeout is 10 \
         s):\n{}",
        out.stderr
    );
}

/// A TCP proxy from 127.0.0.1 to the test broker whose broker-to-client direction carries
/// at most `rate` bytes a second (a slower link than localhost's); stops accepting on drop,
/// and each link ends when either side closes.
struct SlowLink {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl SlowLink {
    fn start(rate: u64) -> SlowLink {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let broker = url::Url::parse(&url()).expect("url");
        let upstream = format!(
            "{}:{}",
            broker.host_str().unwrap_or("localhost"),
            broker.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let pump = |mut from: TcpStream, mut to: TcpStream, rate: Option<u64>| {
            use std::io::{Read, Write};
            let started = Instant::now();
            let mut sent = 0u64;
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(early) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(early);
                    }
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        };
        let acceptor = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).expect("blocking");
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || pump(client, server, None));
                std::thread::spawn(move || pump(s2, c2, Some(rate)));
            }
        });
        SlowLink { port, stop, acceptor: Some(acceptor) }
    }

    fn url(&self) -> String {
        let mut u = url::Url::parse(&url()).expect("url");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.port)).expect("port");
        u.to_string()
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Defect: a resume whose stream begins with a large message is refused as "empty" when the
/// link to the broker is not fast enough to bring that message within 2 s. The resume check
/// (the checkpoint names its message) first reads the stream's oldest message and takes no
/// complete delivery within PROBE_FIRST (2 s) for "it sent no message within 2 s from its
/// first offset (it is empty, or the broker is not serving it yet: then run again)". A
/// 100 MB message over a 25 MB/s link (200 Mbit/s) needs 4 s: exit 1, row 3 never read,
/// and running again, as the error says, fails the same way every time. The stream is
/// there and serving; what the probe waited for was the body, not the broker. (On
/// localhost the same resume passes in 0.85 s, peak 115 MiB.)
/// Cause: src/amqp/probe.rs:16 and :110-114 (`check_message`: no delivery within
/// PROBE_FIRST is taken as an empty stream; `consume_from` at :171 cannot tell a body still
/// arriving from nothing sent).
#[test]
fn a_resume_over_a_slower_link_is_not_refused_for_a_large_oldest_message() {
    let (_failed, q) = attack_queue("atk5", "slowbig");
    let tmpdir = tempfile::tempdir().expect("tempdir");
    let dir = tmpdir.path();
    produce(&q, dir, "none.csv", []);
    publish(
        &q,
        &[
            ("big-1".into(), row(1, 100 << 20)),
            ("small-2".into(), row(2, 10)),
            ("small-3".into(), row(3, 10)),
        ],
    );
    let link = SlowLink::start(25 << 20);
    let link_url = link.url();
    let ckpt = dir.join("run.ckpt");
    let mut first = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    first.extend(["--url", link_url.as_str(), "--offset", "1", "--count", "1", "-q"]);
    let one = mqdemo(&first).run();
    assert_eq!(
        (one.code(), crate::replay_kit::ids(&one.stdout)),
        (Some(0), vec![2]),
        "{}",
        one.stderr
    );
    // The link carries the message: read without a checkpoint (no check), it comes whole.
    let whole = dir.join("whole.jsonl");
    let mut plain = on_stream(&q, &["consume", "tabular"], &["--output", s(&whole)]);
    plain.extend(["--url", link_url.as_str(), "--offset", "first", "--count", "1", "-q"]);
    let read = wait(mqdemo(&plain).spawn(), Duration::from_secs(120));
    let size = std::fs::metadata(&whole).map_or(0, |m| m.len());
    assert!(read.code() == Some(0) && size > 100 << 20, "{size} bytes:\n{}", read.stderr);
    let mut rest = on_stream(&q, &["consume", "tabular"], &["--checkpoint", s(&ckpt)]);
    rest.extend(["--url", link_url.as_str(), "--count", "1", "-q"]);
    let started = Instant::now();
    let two = wait(mqdemo(&rest).spawn(), Duration::from_secs(120));
    assert_eq!(
        (two.code(), crate::replay_kit::ids(&two.stdout)),
        (Some(0), vec![3]),
        "the resumed run, over a 25 MB/s link, after {:?}:\n{}",
        started.elapsed(),
        two.stderr
    );
}

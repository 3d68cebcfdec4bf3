//! Connections to a results database that other runs (other `--table`s, another replay) may
//! be writing at the same time: every wait for another writer goes through SQLite's busy
//! timeout or, where SQLite does not use it, a retry bounded by the same time.
//!
//! SQLite calls its busy handler only for a lock taken by a statement that holds none yet. A
//! read that must become a write (a deferred `BEGIN` that reads first, `PRAGMA
//! journal_mode=WAL` on a database in rollback mode) gets SQLITE_BUSY at once while another
//! connection writes. So every write transaction here begins `IMMEDIATE` (the write lock
//! first, waited for), and the switch to WAL is retried.

use color_eyre::eyre::{Result, WrapErr, eyre};
use rusqlite::{Connection, ErrorCode};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a run waits for another connection's write lock.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Open `path` (creating it) for reading and writing.
pub(super) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).wrap_err_with(|| {
        format!("cannot open SQLite database {}; check the --sqlite path", path.display())
    })?;
    Ok(conn)
}

/// Another connection held a lock past the busy timeout (the text says so).
#[derive(Debug)]
pub(super) struct Locked(pub(super) String);

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Locked {}

/// Set a connection up: the busy timeout first (so everything after it waits for other
/// writers), `synchronous=FULL`, then WAL, retried while another connection holds a lock
/// the switch needs, for up to [`BUSY_TIMEOUT`].
pub(super) fn setup(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let deadline = Instant::now() + BUSY_TIMEOUT;
    retry_busy(deadline, || conn.execute_batch("PRAGMA journal_mode=WAL;")).map_err(|e| {
        if is_busy(&e) {
            eyre!(Locked(format!(
                "another connection kept it locked for {} s (a program reading or writing it); \
                 stop it or use another file ({e})",
                BUSY_TIMEOUT.as_secs()
            )))
        } else {
            eyre!(e)
        }
    })
}

/// Run `f` in a write transaction: begun `IMMEDIATE` here (waiting for another writer's
/// lock) and committed when `f` succeeds, rolled back when it fails. Inside a transaction
/// the caller already began (`IMMEDIATE`, see [`begin`]), `f` simply runs in it.
pub(super) fn write_locked<T, E>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    if !conn.is_autocommit() {
        return f();
    }
    begin(conn)?;
    match f() {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            // Only when the transaction is still open: SQLite may have rolled it back.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// Begin a write transaction holding the write lock from its first statement, so nothing it
/// reads first can make a later write fail at once with SQLITE_BUSY.
pub(super) fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
}

/// Begin a write transaction on the database at `path`; past the busy timeout, an error
/// that names the database and the other program's lock.
pub(super) fn begin_on(conn: &Connection, path: &std::path::Path) -> Result<()> {
    begin(conn).map_err(|e| {
        if is_busy(&e) {
            eyre!(
                "the --sqlite database {} stayed locked by another connection for {} s (another \
                 mqdemo or program writing it); stop it or use another file ({e})",
                path.display(),
                BUSY_TIMEOUT.as_secs()
            )
        } else {
            eyre!(e).wrap_err(format!("cannot start an SQLite transaction on {}", path.display()))
        }
    })
}

/// Whether `e` is another connection's lock (SQLITE_BUSY or SQLITE_LOCKED).
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// The pause before retry `attempt` (0-based): 5 ms, doubling, at most 100 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(5u64.saturating_mul(1 << attempt.min(5)).min(100))
}

/// Run `op` until it succeeds, fails otherwise than busy, or `deadline` has passed (then its
/// last error).
fn retry_busy<T>(
    deadline: Instant,
    mut op: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                let pause =
                    backoff(attempt).min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(pause);
                attempt = attempt.saturating_add(1);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
    }

    #[test]
    fn the_backoff_doubles_from_5_ms_to_at_most_100_ms() {
        let pauses: Vec<u64> = (0..8).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 100, 100, 100]);
        assert_eq!(backoff(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn busy_is_retried_until_it_passes_or_the_deadline_and_nothing_else_is() {
        let mut calls = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = retry_busy(deadline, || {
            calls += 1;
            if calls < 4 { Err(busy()) } else { Ok(calls) }
        });
        assert_eq!(got.expect("passes"), 4);

        let mut calls = 0;
        let started = Instant::now();
        let got: rusqlite::Result<()> = retry_busy(started + Duration::from_millis(150), || {
            calls += 1;
            Err(busy())
        });
        assert!(got.as_ref().is_err_and(is_busy), "{got:?}");
        assert!(started.elapsed() >= Duration::from_millis(150) && calls > 2, "{calls}");

        let mut calls = 0;
        let got: rusqlite::Result<()> = retry_busy(deadline, || {
            calls += 1;
            Err(rusqlite::Error::InvalidQuery)
        });
        assert!(got.is_err() && calls == 1);
    }

    #[test]
    fn a_new_database_another_connection_is_writing_is_switched_to_wal_once_it_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new.db");
        let other = Connection::open(&path).expect("open");
        other.execute_batch("BEGIN IMMEDIATE; CREATE TABLE other (x)").expect("writing");
        let done = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("COMMIT").expect("commit");
        });
        let conn = open(&path).expect("open");
        setup(&conn).expect("waits for the other writer");
        done.join().expect("other writer");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_write_transaction_is_committed_or_rolled_back_and_nests_in_the_callers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("t.db")).expect("open");
        setup(&conn).expect("setup");
        let made: rusqlite::Result<()> =
            write_locked(&conn, || conn.execute_batch("CREATE TABLE t (x)"));
        made.expect("made");
        let failed: rusqlite::Result<()> = write_locked(&conn, || {
            conn.execute_batch("INSERT INTO t VALUES (1)")?;
            Err(rusqlite::Error::InvalidQuery)
        });
        assert!(failed.is_err() && conn.is_autocommit());
        begin(&conn).expect("begin");
        let inner: rusqlite::Result<()> =
            write_locked(&conn, || conn.execute_batch("INSERT INTO t VALUES (2)"));
        inner.expect("inside the caller's");
        assert!(!conn.is_autocommit(), "the caller's transaction is the caller's to end");
        conn.execute_batch("COMMIT").expect("commit");
        let rows: i64 = conn.query_row("SELECT sum(x) FROM t", [], |r| r.get(0)).expect("rows");
        assert_eq!(rows, 2);
    }
}

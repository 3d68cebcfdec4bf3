//! `--checkpoint sqlite`: where each results table's replay of a stream resumes, kept in the
//! table `_mq_checkpoints` of the same database, one row per (stream, results table).
//!
//! A row holds one of: `offset` (the last message whose rows are committed, saved in the
//! same transaction as the rows, with `id`, the identity of that message, for a resumed run
//! to check that the stream still holds it there), `since` (a first run's start at `next`/`last`/a time, Unix
//! seconds) or `from` = `first`, written before a first run reads anything, so a run that
//! commits nothing does not make the next one skip what was written meanwhile.
//!
//! Before tables were part of the key (one offset per stream for the whole database), the
//! table had `queue` as its only key. Such a table is migrated when the database holds one
//! results table (its rows are that table's); with several, which one they belong to is not
//! known, and a run with `--checkpoint sqlite` is refused with the saved offsets and the fix.

use crate::amqp::Offset;
use crate::checkpoint::Start;
use color_eyre::eyre::{Result, WrapErr, bail};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// The table of checkpoints.
pub(super) const CHECKPOINTS: &str = "_mq_checkpoints";

/// The key of a results table: SQLite's table names are case-insensitive (ASCII).
fn table_key(table: &str) -> String {
    table.to_ascii_lowercase()
}

/// The shape of the checkpoint table in a database.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// No checkpoint table yet.
    Missing,
    /// Keyed by stream and results table.
    Current,
    /// Keyed by stream only (an older mqdemo).
    PerDatabase,
}

fn shape(conn: &Connection) -> rusqlite::Result<Shape> {
    let sql = format!("SELECT name FROM pragma_table_info('{CHECKPOINTS}')");
    let mut stmt = conn.prepare(&sql)?;
    let columns =
        stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(match columns {
        c if c.is_empty() => Shape::Missing,
        c if c.iter().any(|n| n.eq_ignore_ascii_case("table")) => Shape::Current,
        _ => Shape::PerDatabase,
    })
}

/// Create the checkpoint table unless it is there; refuse one of the older shape that
/// [`migrate`] could not attribute.
fn ensure(conn: &Connection, path: &Path) -> Result<()> {
    let cannot = || format!("cannot read {}; is it an SQLite database?", path.display());
    match shape(conn).wrap_err_with(cannot)? {
        Shape::Current => add_id(conn).wrap_err("cannot add the id column to the checkpoint table"),
        Shape::Missing => conn
            .execute_batch(&create_sql(CHECKPOINTS))
            .wrap_err("cannot create the checkpoint table"),
        Shape::PerDatabase => bail!(per_database_refusal(conn, path)),
    }
}

/// The error for a checkpoint table of the older shape in a database of several tables.
fn per_database_refusal(conn: &Connection, path: &Path) -> String {
    let saved: Vec<String> = conn
        .prepare(&format!("SELECT queue, \"offset\" FROM {CHECKPOINTS} ORDER BY 1"))
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(format!("'{}' at {}", r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect()
        })
        .unwrap_or_default();
    let tables = results_tables(conn).unwrap_or_default().join(", ");
    format!(
        "{db}: its {CHECKPOINTS} is an older mqdemo's (one offset per stream for the whole \
         database) and the database holds the tables {tables}, so which one it belongs to is \
         not known; drop it (sqlite3 {db} 'DROP TABLE {CHECKPOINTS}') and give the first run \
         of each table --offset (saved: {saved}; resume at the next offset)",
        db = path.display(),
        saved = saved.join(", ")
    )
}

/// The results tables in a database (every table but SQLite's and mqdemo's own).
fn results_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' \
         ESCAPE '\\' AND name NOT LIKE '\\_mq\\_%' ESCAPE '\\' ORDER BY 1",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Migrate a checkpoint table of the older shape (keyed by stream only) when the database
/// holds exactly one results table: its rows are that table's. Otherwise it is left as it
/// is (a run with `--checkpoint sqlite` then refuses it; see [`ensure`]).
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    if shape(conn)? != Shape::PerDatabase {
        return Ok(());
    }
    // Holding the write lock from the first look, so two runs opening the database at once
    // migrate it once.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = migrate_locked(conn);
    let ended = conn.execute_batch(if done.is_ok() { "COMMIT" } else { "ROLLBACK" });
    done.and(ended)
}

fn migrate_locked(conn: &Connection) -> rusqlite::Result<()> {
    if shape(conn)? != Shape::PerDatabase {
        return Ok(());
    }
    let tables = results_tables(conn)?;
    let [table] = tables.as_slice() else {
        return Ok(());
    };
    conn.execute_batch(&create_sql("_mq_checkpoints_new"))?;
    conn.execute(
        &format!(
            "INSERT INTO _mq_checkpoints_new (queue, \"table\", \"offset\") \
             SELECT queue, ?1, \"offset\" FROM {CHECKPOINTS}"
        ),
        [table_key(table)],
    )?;
    conn.execute_batch(&format!(
        "DROP TABLE {CHECKPOINTS}; ALTER TABLE _mq_checkpoints_new RENAME TO {CHECKPOINTS};"
    ))
}

/// The statement creating a checkpoint table of the current shape named `name`.
fn create_sql(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (queue TEXT NOT NULL, \"table\" TEXT NOT NULL, \
         \"offset\" INTEGER, since INTEGER, \"from\" TEXT, id TEXT, \
         PRIMARY KEY (queue, \"table\"))"
    )
}

/// A checkpoint table keyed by table but made before checkpoints kept their message's
/// identity gets the `id` column (NULL: such a row is checked only for the offset).
fn add_id(conn: &Connection) -> rusqlite::Result<()> {
    let sql = format!("SELECT 1 FROM pragma_table_info('{CHECKPOINTS}') WHERE name = 'id'");
    let has: Option<i64> = conn.query_row(&sql, [], |r| r.get(0)).optional()?;
    if has.is_none() {
        conn.execute_batch(&format!("ALTER TABLE {CHECKPOINTS} ADD COLUMN id TEXT"))?;
    }
    Ok(())
}

/// Where the replay of stream `queue` into `table` of the database at `path` resumes; None
/// when it has no checkpoint there (or there is no database yet).
/// With an offset, the identity of the message there when it was saved (see
/// [`crate::amqp::identity`]).
pub(crate) fn resume_point(
    path: &Path,
    queue: &str,
    table: &str,
) -> Result<Option<(Offset, Option<String>)>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = open(path)?;
    let cannot = || format!("cannot read {}; is it an SQLite database?", path.display());
    match shape(&conn).wrap_err_with(cannot)? {
        Shape::Missing => return Ok(None),
        Shape::PerDatabase => bail!(per_database_refusal(&conn, path)),
        Shape::Current => {}
    }
    add_id(&conn).wrap_err("cannot add the id column to the checkpoint table")?;
    let sql = format!(
        "SELECT \"offset\", since, \"from\", id FROM {CHECKPOINTS} \
         WHERE queue = ?1 AND \"table\" = ?2"
    );
    let row = conn
        .query_row(&sql, params![queue, table_key(table)], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()
        .wrap_err_with(|| {
            format!(
                "cannot read the checkpoint of '{queue}' for table {table} in {}",
                path.display()
            )
        })?;
    let Some((offset, since, from, id)) = row else {
        return Ok(None);
    };
    let resume = match (offset, since, from.as_deref()) {
        (Some(o), _, _) => u64::try_from(o).ok().map(|o| Offset::At(o.saturating_add(1))),
        (None, Some(t), _) => u64::try_from(t).ok().map(Offset::Time),
        (None, None, Some("first")) => Some(Offset::First),
        (None, None, _) => None,
    };
    // Not a place in a stream (another tool, a hand edit): taken as none, the run would
    // start from --offset and skip what was written since.
    let id = if matches!(resume, Some(Offset::At(_))) { id } else { None };
    resume.map(|r| Some((r, id))).ok_or_else(|| {
        color_eyre::eyre::eyre!(
            "the checkpoint of '{queue}' for table {table} in {} is not one mqdemo wrote \
             (offset {}, since {}, from {}); correct that row of {CHECKPOINTS}, or remove it to \
             start from --offset",
            path.display(),
            shown(offset),
            shown(since),
            from.as_deref().unwrap_or("NULL")
        )
    })
}

fn shown(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".into(), |v| v.to_string())
}

/// A first run's start, saved (durably) before it reads anything.
pub(crate) fn save_start(path: &Path, queue: &str, table: &str, start: Start) -> Result<()> {
    let conn = open(path)?;
    ensure(&conn, path)?;
    let (offset, since, from) = match start {
        Start::First => (None, None, Some("first")),
        Start::After(o) => (Some(i64::try_from(o).unwrap_or(i64::MAX)), None, None),
        Start::Since(t) => (None, Some(i64::try_from(t).unwrap_or(i64::MAX)), None),
    };
    let upsert = format!(
        "INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\", since, \"from\") \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(queue, \"table\") DO UPDATE SET \
         \"offset\" = excluded.\"offset\", since = excluded.since, \"from\" = excluded.\"from\", \
         id = NULL"
    );
    conn.execute(&upsert, params![queue, table_key(table), offset, since, from])
        .map(drop)
        .wrap_err_with(|| {
            format!(
                "cannot save where the run starts in {} before reading; is it an SQLite \
                 database you may write? (nothing was read yet)",
                path.display()
            )
        })
}

/// Save `offset` (and `id`, the identity of its message) as the checkpoint of `queue` into
/// `table`, inside the caller's transaction.
pub(super) fn save(
    conn: &Connection,
    path: &Path,
    queue: &str,
    table: &str,
    offset: u64,
    id: Option<&str>,
) -> Result<()> {
    ensure(conn, path)?;
    let upsert = format!(
        "INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\", id) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(queue, \"table\") DO UPDATE SET \"offset\" = excluded.\"offset\", \
         since = NULL, \"from\" = NULL, id = excluded.id"
    );
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    conn.prepare_cached(&upsert)
        .and_then(|mut s| s.execute(params![queue, table_key(table), offset, id]))
        .map(drop)
        .wrap_err("cannot save the checkpoint")
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).wrap_err_with(|| {
        format!("cannot open SQLite database {}; check the --sqlite path", path.display())
    })?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;",
    )
    .wrap_err_with(|| format!("cannot read {}; is it an SQLite database?", path.display()))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.db");
        let conn = open(&path).expect("open");
        (dir, path, conn)
    }

    #[test]
    fn each_table_has_its_own_checkpoint_and_start() {
        let (_dir, path, conn) = db();
        assert_eq!(resume_point(&path, "events", "a").expect("none"), None);
        save_start(&path, "events", "a", Start::Since(1_700_000_000)).expect("start");
        assert_eq!(
            resume_point(&path, "events", "a").expect("a"),
            Some((Offset::Time(1_700_000_000), None))
        );
        assert_eq!(resume_point(&path, "events", "b").expect("b"), None);
        save(&conn, &path, "events", "A", 41, Some("id:m41")).expect("save");
        assert_eq!(
            resume_point(&path, "events", "a").expect("a"),
            Some((Offset::At(42), Some("id:m41".to_string())))
        );
        save_start(&path, "events", "b", Start::First).expect("start");
        assert_eq!(resume_point(&path, "events", "b").expect("b"), Some((Offset::First, None)));
        save_start(&path, "events", "b", Start::After(9)).expect("start");
        assert_eq!(resume_point(&path, "events", "b").expect("b"), Some((Offset::At(10), None)));
        assert_eq!(resume_point(&path, "other", "a").expect("other"), None);
    }

    #[test]
    fn a_checkpoint_that_is_no_place_in_a_stream_is_refused() {
        let (_dir, path, conn) = db();
        for bad in ["\"offset\" = -7", "since = -1", "\"from\" = 'last'"] {
            save(&conn, &path, "events", "a", 3, None).expect("save");
            let edit = format!(
                "UPDATE {CHECKPOINTS} SET \"offset\" = NULL, since = NULL, \"from\" = NULL; \
                 UPDATE {CHECKPOINTS} SET {bad}"
            );
            conn.execute_batch(&edit).expect("hand edit");
            let err = resume_point(&path, "events", "a").expect_err(bad);
            assert!(format!("{err}").contains("not one mqdemo wrote"), "{err}");
        }
    }

    #[test]
    fn an_older_per_database_checkpoint_goes_to_the_only_table_or_is_refused() {
        let old = format!(
            "CREATE TABLE {CHECKPOINTS} (queue TEXT PRIMARY KEY NOT NULL, \"offset\" INTEGER \
             NOT NULL); INSERT INTO {CHECKPOINTS} VALUES ('events', 41);"
        );
        let (_dir, path, conn) = db();
        conn.execute_batch(&old).expect("old shape");
        conn.execute_batch("CREATE TABLE scores (message_id TEXT)").expect("table");
        migrate(&conn).expect("migrate");
        let moved = resume_point(&path, "events", "Scores").expect("moved");
        assert_eq!(moved, Some((Offset::At(42), None)));
        assert_eq!(resume_point(&path, "events", "other").expect("other"), None);

        let (_dir, path, conn) = db();
        conn.execute_batch(&old).expect("old shape");
        conn.execute_batch("CREATE TABLE a (x); CREATE TABLE b (x)").expect("tables");
        migrate(&conn).expect("left as it is");
        let err = format!("{}", resume_point(&path, "events", "a").expect_err("refused"));
        assert!(err.contains("a, b") && err.contains("'events' at 41"), "{err}");
        assert!(!err.contains("delete"), "{err}");
        assert!(save_start(&path, "events", "a", Start::First).is_err());
    }

    #[test]
    fn a_table_made_before_ids_were_kept_gets_the_column() {
        let (_dir, path, conn) = db();
        let made = format!(
            "CREATE TABLE {CHECKPOINTS} (queue TEXT NOT NULL, \"table\" TEXT NOT NULL, \
             \"offset\" INTEGER, since INTEGER, \"from\" TEXT, PRIMARY KEY (queue, \"table\")); \
             INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\") VALUES ('events', 'a', 4);"
        );
        conn.execute_batch(&made).expect("without id");
        let found = resume_point(&path, "events", "a").expect("read");
        assert_eq!(found, Some((Offset::At(5), None)));
        save(&conn, &path, "events", "a", 9, Some("sha256:ab")).expect("save");
        let found = resume_point(&path, "events", "a").expect("read");
        assert_eq!(found, Some((Offset::At(10), Some("sha256:ab".to_string()))));
    }
}

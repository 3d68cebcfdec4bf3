//! `--checkpoint sqlite`: where each results table's replay of a stream resumes, kept in the
//! table `_mq_checkpoints` of the same database, one row per (stream, results table).
//!
//! A row holds one of: `offset` (the last message whose rows are committed, saved in the
//! same transaction as the rows, with `id`, the identity of that message, and
//! `anchor_offset`/`anchor_id`, an earlier message of the same replay, for a resumed run
//! to check that the stream still holds them there), `since` (a first run's start at `next`/`last`/a time, Unix
//! seconds) or `from` = `first`, written before a first run reads anything, so a run that
//! commits nothing does not make the next one skip what was written meanwhile.
//!
//! Before tables were part of the key (one offset per stream for the whole database), the
//! table had `queue` as its only key. Such a table is migrated when the database holds one
//! results table (its rows are that table's); with several, which one they belong to is not
//! known, and a run with `--checkpoint sqlite` is refused with the saved offsets and the fix.

use super::sqlite::{self, write_locked};
use crate::amqp::{Anchor, Identity, Offset};
use crate::checkpoint::{Saved, Start};
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
        Shape::Current => {
            add_columns(conn).wrap_err("cannot add the id columns to the checkpoint table")
        }
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
    write_locked(conn, || migrate_locked(conn))
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
         \"offset\" INTEGER, since INTEGER, \"from\" TEXT, id TEXT, anchor_offset INTEGER, \
         anchor_id TEXT, PRIMARY KEY (queue, \"table\"))"
    )
}

/// The columns a checkpoint table of the current shape may lack, with their types: `id`
/// (made before checkpoints kept their message's identity), `anchor_offset` and
/// `anchor_id` (before they kept the replay's anchor).
const ADDED_COLUMNS: [(&str, &str); 3] =
    [("id", "TEXT"), ("anchor_offset", "INTEGER"), ("anchor_id", "TEXT")];

/// Which of [`ADDED_COLUMNS`] the checkpoint table lacks.
fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<(&'static str, &'static str)>> {
    let sql = format!("SELECT 1 FROM pragma_table_info('{CHECKPOINTS}') WHERE name = ?1");
    let mut missing = Vec::new();
    for (name, kind) in ADDED_COLUMNS {
        let has: Option<i64> = conn.query_row(&sql, [name], |r| r.get(0)).optional()?;
        if has.is_none() {
            missing.push((name, kind));
        }
    }
    Ok(missing)
}

/// A checkpoint table keyed by table but made before some of [`ADDED_COLUMNS`] gets them
/// (NULL: such a row is checked for what it has). Looked for again under the write lock,
/// so two runs opening such a table at once add each column once.
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    if missing_columns(conn)?.is_empty() {
        return Ok(());
    }
    write_locked(conn, || {
        for (name, kind) in missing_columns(conn)? {
            conn.execute_batch(&format!("ALTER TABLE {CHECKPOINTS} ADD COLUMN {name} {kind}"))?;
        }
        Ok(())
    })
}

/// Where the replay of stream `queue` into `table` of the database at `path` resumes; None
/// when it has no checkpoint there (or there is no database yet). With an offset, what
/// identified the message there when it was saved (see [`crate::amqp::Identity`]).
pub(crate) fn resume_point(path: &Path, queue: &str, table: &str) -> Result<Option<Saved>> {
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
    add_columns(&conn).wrap_err("cannot add the id columns to the checkpoint table")?;
    let sql = format!(
        "SELECT \"offset\", since, \"from\", id, anchor_offset, anchor_id FROM {CHECKPOINTS} \
         WHERE queue = ?1 AND \"table\" = ?2"
    );
    let row = conn
        .query_row(&sql, params![queue, table_key(table)], |r| {
            Ok(Row {
                offset: r.get(0)?,
                since: r.get(1)?,
                from: r.get(2)?,
                id: r.get(3)?,
                anchor_offset: r.get(4)?,
                anchor_id: r.get(5)?,
            })
        })
        .optional()
        .wrap_err_with(|| {
            format!(
                "cannot read the checkpoint of '{queue}' for table {table} in {}",
                path.display()
            )
        })?;
    let Some(row) = row else {
        return Ok(None);
    };
    // Not a place in a stream (another tool, a hand edit): taken as none, the run would
    // start from --offset and skip what was written since.
    row.saved().map(Some).ok_or_else(|| {
        color_eyre::eyre::eyre!(
            "the checkpoint of '{queue}' for table {table} in {} is not one mqdemo wrote \
             (offset {}, since {}, from {}, anchor_offset {}); correct that row of \
             {CHECKPOINTS}, or remove it to start from --offset",
            path.display(),
            shown(row.offset),
            shown(row.since),
            row.from.as_deref().unwrap_or("NULL"),
            shown(row.anchor_offset)
        )
    })
}

/// One row of the checkpoint table, as stored.
struct Row {
    offset: Option<i64>,
    since: Option<i64>,
    from: Option<String>,
    id: Option<String>,
    anchor_offset: Option<i64>,
    anchor_id: Option<String>,
}

impl Row {
    /// What the row saved; None: it is no place in a stream (or its anchor is none).
    fn saved(&self) -> Option<Saved> {
        let resume = match (self.offset, self.since, self.from.as_deref()) {
            (Some(o), _, _) => Offset::At(u64::try_from(o).ok()?.saturating_add(1)),
            (None, Some(t), _) => Offset::Time(u64::try_from(t).ok()?),
            (None, None, Some("first")) => Offset::First,
            (None, None, _) => return None,
        };
        let anchor = match (self.anchor_offset, &self.anchor_id) {
            (Some(o), Some(id)) => Some(Anchor { offset: u64::try_from(o).ok()?, id: id.clone() }),
            (None, None) => None,
            _ => return None,
        };
        let mark = match (resume, &self.id) {
            (Offset::At(_), Some(id)) => Some(Identity { id: id.clone(), anchor }),
            _ => None,
        };
        Some(Saved { resume, mark })
    }
}

fn shown(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".into(), |v| v.to_string())
}

/// A first run's start, saved (durably) before it reads anything.
pub(crate) fn save_start(path: &Path, queue: &str, table: &str, start: Start) -> Result<()> {
    let conn = open(path)?;
    let (offset, since, from) = match start {
        Start::First => (None, None, Some("first")),
        Start::After(o) => (Some(i64::try_from(o).unwrap_or(i64::MAX)), None, None),
        Start::Since(t) => (None, Some(i64::try_from(t).unwrap_or(i64::MAX)), None),
    };
    let upsert = format!(
        "INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\", since, \"from\") \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(queue, \"table\") DO UPDATE SET \
         \"offset\" = excluded.\"offset\", since = excluded.since, \"from\" = excluded.\"from\", \
         id = NULL, anchor_offset = NULL, anchor_id = NULL"
    );
    write_locked(&conn, || {
        ensure(&conn, path)?;
        conn.execute(&upsert, params![queue, table_key(table), offset, since, from])
            .map(drop)
            .wrap_err_with(|| {
                format!(
                    "cannot save where the run starts in {} before reading; is it an SQLite \
                     database you may write? (nothing was read yet)",
                    path.display()
                )
            })
    })
}

/// Save `offset` (and `mark`, what identifies its message) as the checkpoint of `queue`
/// into `table`, inside the caller's transaction (begun `IMMEDIATE`: [`ensure`] reads
/// before the upsert writes).
pub(super) fn save(
    conn: &Connection,
    path: &Path,
    queue: &str,
    table: &str,
    offset: u64,
    mark: Option<&Identity>,
) -> Result<()> {
    ensure(conn, path)?;
    let upsert = format!(
        "INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\", id, anchor_offset, anchor_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(queue, \"table\") DO UPDATE SET \
         \"offset\" = excluded.\"offset\", since = NULL, \"from\" = NULL, id = excluded.id, \
         anchor_offset = excluded.anchor_offset, anchor_id = excluded.anchor_id"
    );
    let long = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let id = mark.map(|m| m.id.as_str());
    let anchor = mark.and_then(|m| m.anchor.as_ref());
    let (anchor_offset, anchor_id) = (anchor.map(|a| long(a.offset)), anchor.map(|a| &a.id));
    conn.prepare_cached(&upsert)
        .and_then(|mut s| {
            s.execute(params![queue, table_key(table), long(offset), id, anchor_offset, anchor_id])
        })
        .map(drop)
        .wrap_err("cannot save the checkpoint")
}

fn open(path: &Path) -> Result<Connection> {
    let conn = sqlite::open(path)?;
    sqlite::setup(&conn)
        .wrap_err_with(|| format!("cannot read {}; is it an SQLite database?", path.display()))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str) -> Identity {
        Identity { id: id.to_string(), anchor: None }
    }

    /// What `resume_point` gives for `resume`, with `id` and no anchor.
    fn saved(resume: Offset, id: Option<&str>) -> Saved {
        Saved { resume, mark: id.map(mark) }
    }

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
            Some(saved(Offset::Time(1_700_000_000), None))
        );
        assert_eq!(resume_point(&path, "events", "b").expect("b"), None);
        save(&conn, &path, "events", "A", 41, Some(&mark("id:m41"))).expect("save");
        assert_eq!(
            resume_point(&path, "events", "a").expect("a"),
            Some(saved(Offset::At(42), Some("id:m41")))
        );
        save_start(&path, "events", "b", Start::First).expect("start");
        assert_eq!(
            resume_point(&path, "events", "b").expect("b"),
            Some(saved(Offset::First, None))
        );
        save_start(&path, "events", "b", Start::After(9)).expect("start");
        assert_eq!(
            resume_point(&path, "events", "b").expect("b"),
            Some(saved(Offset::At(10), None))
        );
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
        assert_eq!(moved, Some(saved(Offset::At(42), None)));
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
        assert_eq!(found, Some(saved(Offset::At(5), None)));
        save(&conn, &path, "events", "a", 9, Some(&mark("sha256:ab"))).expect("save");
        let found = resume_point(&path, "events", "a").expect("read");
        assert_eq!(found, Some(saved(Offset::At(10), Some("sha256:ab"))));
    }

    #[test]
    fn an_anchor_is_kept_with_the_checkpoint_and_a_table_without_its_columns_gets_them() {
        let (_dir, path, conn) = db();
        let made = format!(
            "CREATE TABLE {CHECKPOINTS} (queue TEXT NOT NULL, \"table\" TEXT NOT NULL, \
             \"offset\" INTEGER, since INTEGER, \"from\" TEXT, id TEXT, \
             PRIMARY KEY (queue, \"table\")); \
             INSERT INTO {CHECKPOINTS} (queue, \"table\", \"offset\", id) \
             VALUES ('events', 'a', 4, 'id:m4');"
        );
        conn.execute_batch(&made).expect("without anchor columns");
        let found = resume_point(&path, "events", "a").expect("read");
        assert_eq!(found, Some(saved(Offset::At(5), Some("id:m4"))));
        let anchored = Identity {
            id: "sha256:bb".to_string(),
            anchor: Some(Anchor { offset: 2, id: "sha256:aa".to_string() }),
        };
        save(&conn, &path, "events", "a", 9, Some(&anchored)).expect("save");
        let found = resume_point(&path, "events", "a").expect("read");
        assert_eq!(found, Some(Saved { resume: Offset::At(10), mark: Some(anchored) }));
        // A start record names no message: the anchor goes with the id.
        save_start(&path, "events", "a", Start::First).expect("start");
        assert_eq!(
            resume_point(&path, "events", "a").expect("read"),
            Some(saved(Offset::First, None))
        );
        // An anchor that is no place in a stream is refused, like the offset.
        save(&conn, &path, "events", "a", 9, Some(&mark("id:x"))).expect("save");
        for bad in ["anchor_offset = -1, anchor_id = 'x'", "anchor_offset = 1"] {
            conn.execute_batch(&format!("UPDATE {CHECKPOINTS} SET {bad}")).expect("hand edit");
            let err = resume_point(&path, "events", "a").expect_err(bad);
            assert!(format!("{err}").contains("not one mqdemo wrote"), "{err}");
            conn.execute_batch(&format!(
                "UPDATE {CHECKPOINTS} SET anchor_offset = NULL, anchor_id = NULL"
            ))
            .expect("undo");
        }
    }
}

//! The results database of `consume tabular --sqlite FILE --table NAME`: one SQLite row per
//! received row, a column per JSON key (added as new keys appear), and `message_id` as the
//! primary key, so a redelivered message is stored once.
//!
//! Rows are inserted inside one transaction per ack batch; [`ResultsDb::commit`] makes them
//! durable (WAL, `synchronous=FULL`) before the consumer acks.

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use rusqlite::{Connection, params_from_iter, types::Value as Sql};
use serde_json::{Map, Value};
use std::path::Path;

/// The primary-key column: the AMQP message id (`ID#N` for row N of a batch message; see
/// [`row_key`]), or
/// [`NO_ID_PREFIX`] and a fresh unique id for a row of a delivery without one.
pub const ID_COLUMN: &str = "message_id";

/// How the keys of rows from a delivery without a message id begin (then 32 fresh hex
/// digits): such a delivery is never merged with another, however alike their bodies are.
pub const NO_ID_PREFIX: &str = "noid-";

/// SQLite's limit on the columns of a table, [`ID_COLUMN`] included (`SQLITE_MAX_COLUMN` of
/// the bundled SQLite).
pub const MAX_COLUMNS: usize = 2000;

/// New columns one message may add: half of SQLite's limit, so one stray message (a JSON
/// object of word counts, say) cannot use up the table, while a wide data set (784 pixels
/// and a label) still creates all its columns with its first row.
pub const MAX_NEW_COLUMNS: usize = 1000;

/// Longest key stored as a column name, in bytes: SQLite re-parses the table's whole
/// schema on every `ALTER TABLE`, so a few megabyte-long keys would slow every later
/// message (and every open) to a crawl.
pub const MAX_KEY_BYTES: usize = 1024;

/// The primary key of a stored row: the message id, with `#N` appended for row N of a batch
/// message. A `#` inside the id is doubled, so a batch's row keys never equal another
/// message's id (`b#1` is row 1 of batch `b`; the message `b#1` is stored as `b##1`).
pub fn row_key(message_id: &str, batch_row: Option<usize>) -> String {
    let id = message_id.replace('#', "##");
    match batch_row {
        Some(n) => format!("{id}#{n}"),
        None => id,
    }
}

/// What became of one message's rows.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored; the number of rows inserted (0: all were there already, a redelivery).
    Rows(u64),
    /// This message cannot be stored (the reason); nothing of it was kept.
    Refused(String),
}

/// An open results table.
pub struct ResultsDb {
    conn: Connection,
    table: String,
    /// Columns in table order (lowercased for lookups: SQLite names are case-insensitive).
    columns: Vec<String>,
    in_transaction: bool,
}

/// Why a table name is refused, or None when it is a plain identifier.
pub fn check_table_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if !plain {
        return Some(format!(
            "--table {name:?}: use letters, digits and _ (not starting with a digit), e.g. predictions"
        ));
    }
    name.to_ascii_lowercase()
        .starts_with("sqlite_")
        .then(|| format!("--table {name}: names starting with sqlite_ are reserved by SQLite"))
}

/// Why one row cannot be stored whatever the table holds, or None.
fn refuse_row(row: &Map<String, Value>) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    for key in row.keys() {
        if key.contains('\0') {
            return Some(format!("the key {key:?} contains NUL, which SQLite column names cannot"));
        }
        if key.len() > MAX_KEY_BYTES {
            let start: String = key.chars().take(40).collect();
            return Some(format!(
                "the key {start:?}... is {} bytes long; column names are at most \
                 {MAX_KEY_BYTES} bytes",
                key.len()
            ));
        }
        let lower = key.to_ascii_lowercase();
        if lower == ID_COLUMN {
            return Some(format!(
                "the row has a {key:?} field, but --sqlite keeps the message id in that column"
            ));
        }
        if !seen.insert(lower) {
            return Some(format!(
                "fields differ only in letter case ({key:?}); SQLite columns cannot"
            ));
        }
    }
    None
}

/// The reason when `e` is about this message's content rather than the database (which
/// stops the run with the message requeued): a value too big, too many columns or
/// variables (a safety net behind [`ResultsDb::refuse`]).
fn refusal(e: &rusqlite::Error) -> Option<String> {
    use rusqlite::ErrorCode::{TooBig, Unknown};
    let rusqlite::Error::SqliteFailure(f, msg) = e else {
        return None;
    };
    let text = msg.as_deref().unwrap_or("");
    let content = f.code == TooBig
        || (f.code == Unknown
            && (text.starts_with("too many columns")
                || text.starts_with("too many SQL variables")));
    content.then(|| format!("SQLite cannot store it: {}", msg.as_deref().unwrap_or("too big")))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl ResultsDb {
    /// Open (creating if needed) `path` and the table `table` in it.
    pub fn open(path: &Path, table: &str) -> Result<ResultsDb> {
        if let Some(why) = check_table_name(table) {
            bail!(why);
        }
        let conn = Connection::open(path).wrap_err_with(|| {
            format!("cannot open SQLite database {}; check the --sqlite path", path.display())
        })?;
        let setup = format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;
             CREATE TABLE IF NOT EXISTS {} ({} TEXT PRIMARY KEY NOT NULL);",
            quote(table),
            ID_COLUMN
        );
        conn.execute_batch(&setup).wrap_err_with(|| {
            format!(
                "cannot create table {table} in {}; is it an SQLite database you may write?",
                path.display()
            )
        })?;
        let mut db = ResultsDb {
            conn,
            table: table.to_string(),
            columns: Vec::new(),
            in_transaction: false,
        };
        db.columns = db.read_columns()?;
        if !db.columns.iter().any(|c| c == ID_COLUMN) {
            bail!(
                "table {table} in {} has no {ID_COLUMN} column; pick another --table",
                path.display()
            );
        }
        Ok(db)
    }

    fn read_columns(&self) -> Result<Vec<String>> {
        let sql = format!("PRAGMA table_info({})", quote(&self.table));
        let mut stmt = self.conn.prepare(&sql).wrap_err("cannot read the table's columns")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .wrap_err("cannot read the table's columns")?
            .collect::<Result<Vec<_>, _>>()
            .wrap_err("cannot read the table's columns")?;
        Ok(names.into_iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    /// Why the rows of one message cannot be stored in this table, or None. Checked before
    /// anything is written, so a refused message leaves nothing behind: a key SQLite cannot
    /// hold (NUL), one that clashes with the id column or, in letter case only, with another
    /// key of its row; more new columns than [`MAX_NEW_COLUMNS`], or more than SQLite's
    /// [`MAX_COLUMNS`] in all.
    pub fn refuse(&self, rows: &[Map<String, Value>]) -> Option<String> {
        let mut new = std::collections::HashSet::new();
        for row in rows {
            if let Some(why) = refuse_row(row) {
                return Some(why);
            }
            new.extend(
                row.keys().map(|k| k.to_ascii_lowercase()).filter(|k| !self.columns.contains(k)),
            );
        }
        if new.len() > MAX_NEW_COLUMNS {
            return Some(format!(
                "it would add {} columns to {}; at most {MAX_NEW_COLUMNS} new columns are \
                 added per message",
                new.len(),
                self.table
            ));
        }
        let total = self.columns.len() + new.len();
        (total > MAX_COLUMNS).then(|| {
            format!(
                "{} would need {total} columns ({} now, {} new); SQLite holds at most \
                 {MAX_COLUMNS}, {ID_COLUMN} included",
                self.table,
                self.columns.len(),
                new.len()
            )
        })
    }

    /// Store the rows of one message, each under its key, all or nothing: inside the ack
    /// batch's transaction, under a savepoint that is rolled back (new columns included)
    /// when any row fails. A key already in the table is a redelivery and is skipped.
    /// Call [`ResultsDb::refuse`] first.
    pub fn store(&mut self, rows: &[(String, &Map<String, Value>)]) -> Result<Stored> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN").wrap_err("cannot start an SQLite transaction")?;
            self.in_transaction = true;
        }
        self.conn
            .execute_batch("SAVEPOINT message")
            .wrap_err("cannot start an SQLite savepoint")?;
        let known = self.columns.len();
        let mut inserted = 0;
        let mut failure = None;
        for (key, row) in rows {
            match self.insert(key, row) {
                Ok(new) => inserted += u64::from(new),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(error) = failure else {
            self.conn.execute_batch("RELEASE message").wrap_err("cannot release a savepoint")?;
            return Ok(Stored::Rows(inserted));
        };
        // Nothing of this message stays: its rows and the columns it added go. (When SQLite
        // already rolled back the whole transaction, the savepoint is gone; commit() then
        // refuses the batch.)
        self.columns.truncate(known);
        self.conn
            .execute_batch("ROLLBACK TO message; RELEASE message")
            .map_err(|e| eyre!(e).wrap_err(format!("after {error}, cannot roll back")))?;
        match refusal(&error) {
            Some(why) => Ok(Stored::Refused(why)),
            None => Err(error.into()),
        }
    }

    /// Insert `row` under `id` unless a row with that id is already there (a redelivery).
    /// True when inserted.
    fn insert(&mut self, id: &str, row: &Map<String, Value>) -> rusqlite::Result<bool> {
        for key in row.keys() {
            let lower = key.to_ascii_lowercase();
            if !self.columns.contains(&lower) {
                let sql = format!("ALTER TABLE {} ADD COLUMN {}", quote(&self.table), quote(key));
                self.conn.execute(&sql, [])?;
                self.columns.push(lower);
            }
        }
        let mut names = vec![ID_COLUMN.to_string()];
        names.extend(row.keys().map(|k| quote(k)));
        let marks = vec!["?"; names.len()].join(",");
        let sql = format!(
            "INSERT OR IGNORE INTO {} ({}) VALUES ({marks})",
            quote(&self.table),
            names.join(",")
        );
        let values = std::iter::once(Sql::Text(id.to_string())).chain(row.values().map(to_sql));
        let changed = self.conn.prepare_cached(&sql)?.execute(params_from_iter(values))?;
        Ok(changed == 1)
    }

    /// Make everything inserted so far durable.
    pub fn commit(&mut self) -> Result<()> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        if self.conn.is_autocommit() {
            // SQLite rolled the transaction back itself (disk full, I/O error): the rows of
            // this ack batch are not stored, so they must not be acked.
            self.columns = self.read_columns()?;
            bail!("SQLite rolled back the transaction after an error; nothing was acked");
        }
        let committed = self.conn.execute_batch("COMMIT");
        self.in_transaction = !self.conn.is_autocommit();
        committed.wrap_err("cannot commit to the SQLite database")
    }
}

/// JSON value -> SQLite value: numbers stay numbers (integers as INTEGER), booleans become
/// 0/1, null NULL, arrays and objects their JSON text.
fn to_sql(v: &Value) -> Sql {
    match v {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Sql::Integer(i),
            (None, Some(f)) if n.is_f64() => Sql::Real(f),
            _ => Sql::Text(n.to_string()),
        },
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test rows are objects"),
        }
    }

    /// Store one single-row message; true when inserted.
    fn one(db: &mut ResultsDb, id: &str, row: Value) -> bool {
        let row = obj(row);
        assert_eq!(db.refuse(std::slice::from_ref(&row)), None);
        match db.store(&[(id.to_string(), &row)]).expect("store") {
            Stored::Rows(n) => n == 1,
            Stored::Refused(why) => panic!("refused: {why}"),
        }
    }

    fn names(db: &ResultsDb) -> Vec<String> {
        db.read_columns().expect("columns")
    }

    fn count(db: &ResultsDb) -> i64 {
        let sql = format!("SELECT count(*) FROM {}", quote(&db.table));
        db.conn.query_row(&sql, [], |r| r.get(0)).expect("count")
    }

    #[test]
    fn rows_are_stored_once_with_typed_columns_added_as_keys_appear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.db");
        let mut db = ResultsDb::open(&path, "predictions").expect("open");
        assert!(one(&mut db, "a", json!({"row": 1, "score": 0.25, "label": "ok"})));
        assert!(!one(&mut db, "a", json!({"row": 1, "score": 0.25})));
        assert!(one(&mut db, "b", json!({"row": 2, "flag": true, "x": null})));
        db.commit().expect("commit");
        drop(db);
        // Reopening finds the columns and the rows; a redelivery is still ignored.
        let mut db = ResultsDb::open(&path, "predictions").expect("reopen");
        assert!(!one(&mut db, "b", json!({"row": 2})));
        db.commit().expect("commit");
        type Stored = (String, i64, Option<f64>, Option<String>, Option<i64>);
        let rows: Vec<Stored> = db
            .conn
            .prepare("SELECT message_id, row, score, label, flag FROM predictions ORDER BY 1")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [
                ("a".into(), 1, Some(0.25), Some("ok".into()), None),
                ("b".into(), 2, None, None, Some(1)),
            ]
        );
    }

    #[test]
    fn hostile_names_are_refused_or_quoted() {
        assert!(check_table_name("predictions").is_none());
        for bad in ["", "1abc", "a;DROP TABLE x", "a b", "sqlite_master", "\"q\""] {
            assert!(check_table_name(bad).is_some(), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = ResultsDb::open(&dir.path().join("r.db"), "t").expect("open");
        assert!(one(&mut db, "1", json!({"we\"ird; DROP TABLE t; --": 1, "with space": "x"})));
        assert!(one(&mut db, "2", json!({"": 1, " ": 2, "'": 3, "\u{202e}": 4, "é": 5, "É": 6})));
        assert!(one(&mut db, "3", json!({"k".repeat(MAX_KEY_BYTES): 1})));
        db.commit().expect("commit");
        for bad in [
            json!({"Message_ID": 1}),
            json!({"a": 1, "A": 2}),
            json!({"a\u{0}b": 1}),
            json!({"\u{0}": 1}),
            json!({"k".repeat(MAX_KEY_BYTES + 1): 1}),
        ] {
            assert!(db.refuse(&[obj(bad.clone())]).is_some(), "{bad}");
        }
    }

    #[test]
    fn row_keys_of_batches_never_equal_another_message_id() {
        assert_eq!(row_key("b", None), "b");
        assert_eq!(row_key("b", Some(1)), "b#1");
        assert_eq!(row_key("b#1", None), "b##1");
        let ids = ["b", "b#", "b#1", "b##1", "#", "##", "1", "b#1#1", ""];
        let mut keys = std::collections::HashSet::new();
        for id in ids {
            assert!(keys.insert(row_key(id, None)), "{id:?}");
            for n in [1, 2, 11] {
                assert!(keys.insert(row_key(id, Some(n))), "{id:?} row {n}");
            }
        }
    }

    #[test]
    fn keys_differing_in_case_across_messages_share_one_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = ResultsDb::open(&dir.path().join("r.db"), "t").expect("open");
        assert!(one(&mut db, "1", json!({"Score": 1})));
        assert!(one(&mut db, "2", json!({"score": 2})));
        // Two rows of one batch, one column.
        let rows = [obj(json!({"NEW": 1})), obj(json!({"new": 2}))];
        assert_eq!(db.refuse(&rows), None);
        db.commit().expect("commit");
        assert_eq!(names(&db), ["message_id", "score"]);
    }

    /// A row of `n` keys `{prefix}0..`.
    fn wide(prefix: &str, n: usize) -> Map<String, Value> {
        (0..n).map(|i| (format!("{prefix}{i}"), Value::from(i))).collect()
    }

    #[test]
    fn columns_are_capped_per_message_and_by_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = ResultsDb::open(&dir.path().join("r.db"), "t").expect("open");
        assert!(db.refuse(&[wide("a", MAX_NEW_COLUMNS + 1)]).is_some_and(|w| w.contains("new")));
        // Across the rows of one batch too.
        let batch = [wide("a", MAX_NEW_COLUMNS), wide("b", 1)];
        assert!(db.refuse(&batch).is_some());
        let full = wide("a", MAX_NEW_COLUMNS);
        assert_eq!(db.refuse(std::slice::from_ref(&full)), None);
        assert_eq!(db.store(&[("1".into(), &full)]).expect("store"), Stored::Rows(1));
        let rest = wide("b", MAX_COLUMNS - 1 - MAX_NEW_COLUMNS);
        let over = wide("b", MAX_COLUMNS - MAX_NEW_COLUMNS);
        assert!(db.refuse(std::slice::from_ref(&over)).is_some_and(|w| w.contains("SQLite")));
        assert_eq!(db.refuse(std::slice::from_ref(&rest)), None);
        assert_eq!(db.store(&[("2".into(), &rest)]).expect("store"), Stored::Rows(1));
        db.commit().expect("commit");
        assert_eq!(names(&db).len(), MAX_COLUMNS);
        // Full: old columns still take rows, a new one is refused.
        assert_eq!(db.refuse(&[obj(json!({"a0": 1}))]), None);
        assert!(db.refuse(&[obj(json!({"z": 1}))]).is_some());
    }

    #[test]
    fn a_message_that_fails_midway_leaves_no_rows_and_no_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = ResultsDb::open(&dir.path().join("r.db"), "t").expect("open");
        assert!(one(&mut db, "before", json!({"row": 0})));
        // Past refuse(): SQLite's own limit is the safety net, and it rolls back the lot.
        let (good, huge) = (obj(json!({"row": 1, "fresh": 1})), wide("k", MAX_COLUMNS));
        let stored = db.store(&[("m#1".into(), &good), ("m#2".into(), &huge)]).expect("store");
        assert!(
            matches!(&stored, Stored::Refused(w) if w.contains("too many columns")),
            "{stored:?}"
        );
        assert!(one(&mut db, "after", json!({"row": 2})));
        db.commit().expect("commit");
        assert_eq!(names(&db), ["message_id", "row"]);
        assert_eq!(count(&db), 2);
        // The column cache follows the rollback: the key can come back later.
        assert!(one(&mut db, "later", json!({"fresh": 3})));
        db.commit().expect("commit");
        assert_eq!(names(&db), ["message_id", "row", "fresh"]);
    }
}

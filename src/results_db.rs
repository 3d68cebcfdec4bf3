//! The results database of `consume tabular --sqlite FILE --table NAME`: one SQLite row per
//! received row, a column per JSON key (added as new keys appear), and `message_id` as the
//! primary key, so a redelivered message is stored once.
//!
//! Rows are inserted inside one transaction per ack batch; [`ResultsDb::commit`] makes them
//! durable (WAL, `synchronous=FULL`) before the consumer acks.

use color_eyre::eyre::{Result, WrapErr, bail};
use rusqlite::{Connection, params_from_iter, types::Value as Sql};
use serde_json::{Map, Value};
use std::path::Path;

/// The primary-key column: the AMQP message id (`ID#N` for row N of a batch message).
pub const ID_COLUMN: &str = "message_id";

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

    /// Why `row` cannot be stored (a key that clashes with the id column or another key),
    /// or None.
    pub fn refuse(row: &Map<String, Value>) -> Option<String> {
        let mut seen = std::collections::HashSet::new();
        for key in row.keys() {
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

    /// Insert `row` under `id` unless a row with that id is already there (a redelivery).
    /// True when inserted. Call [`ResultsDb::refuse`] first.
    pub fn insert(&mut self, id: &str, row: &Map<String, Value>) -> Result<bool> {
        for key in row.keys() {
            let lower = key.to_ascii_lowercase();
            if !self.columns.contains(&lower) {
                let sql = format!("ALTER TABLE {} ADD COLUMN {}", quote(&self.table), quote(key));
                self.conn
                    .execute(&sql, [])
                    .wrap_err_with(|| format!("cannot add column {key:?} to {}", self.table))?;
                self.columns.push(lower);
            }
        }
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN").wrap_err("cannot start an SQLite transaction")?;
            self.in_transaction = true;
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
        let mut stmt =
            self.conn.prepare_cached(&sql).wrap_err("cannot prepare the SQLite insert")?;
        let changed = stmt
            .execute(params_from_iter(values))
            .wrap_err_with(|| format!("cannot insert into {}", self.table))?;
        Ok(changed == 1)
    }

    /// Make everything inserted so far durable.
    pub fn commit(&mut self) -> Result<()> {
        if self.in_transaction {
            self.conn.execute_batch("COMMIT").wrap_err("cannot commit to the SQLite database")?;
            self.in_transaction = false;
        }
        Ok(())
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

    #[test]
    fn rows_are_stored_once_with_typed_columns_added_as_keys_appear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.db");
        let mut db = ResultsDb::open(&path, "predictions").expect("open");
        assert!(db.insert("a", &obj(json!({"row": 1, "score": 0.25, "label": "ok"}))).expect("1"));
        assert!(!db.insert("a", &obj(json!({"row": 1, "score": 0.25}))).expect("again"));
        assert!(db.insert("b", &obj(json!({"row": 2, "flag": true, "x": null}))).expect("2"));
        db.commit().expect("commit");
        drop(db);
        // Reopening finds the columns and the rows; a redelivery is still ignored.
        let mut db = ResultsDb::open(&path, "predictions").expect("reopen");
        assert!(!db.insert("b", &obj(json!({"row": 2}))).expect("dup after reopen"));
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
        let odd = obj(json!({"we\"ird; DROP TABLE t; --": 1, "with space": "x"}));
        assert!(ResultsDb::refuse(&odd).is_none());
        assert!(db.insert("1", &odd).expect("insert"));
        db.commit().expect("commit");
        assert!(ResultsDb::refuse(&obj(json!({"Message_ID": 1}))).is_some());
        assert!(ResultsDb::refuse(&obj(json!({"a": 1, "A": 2}))).is_some());
    }
}

//! The results database of `consume tabular --sqlite FILE --table NAME`: one SQLite row per
//! received row, a column per JSON key (added as new keys appear), and `message_id` as the
//! primary key, so a redelivered message is stored once.
//!
//! Rows are inserted inside one transaction per ack batch, begun `IMMEDIATE` (other runs may
//! write other tables of the database: see `sqlite`); [`ResultsDb::commit`] makes them
//! durable (WAL, `synchronous=FULL`) before the consumer acks.

mod checkpoints;
mod schema;
mod sqlite;

pub(crate) use checkpoints::{resume_point, save_start};
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use rusqlite::{Connection, params_from_iter, types::Value as Sql};
pub(crate) use schema::check_table_name;
use schema::{quote, refusal, refuse_row, to_sql};
use serde_json::{Map, Value};
use std::path::Path;

/// The primary-key column: the AMQP message id (`ID#N` for row N of a batch message; see
/// [`row_key`]), or
/// [`NO_ID_PREFIX`] and a fresh unique id for a row of a delivery without one (read from a
/// stream: [`stream_row_key`]).
pub(crate) const ID_COLUMN: &str = "message_id";

/// How the keys of rows from a delivery without a message id begin (then 32 fresh hex
/// digits): such a delivery is never merged with another, however alike their bodies are.
pub(crate) const NO_ID_PREFIX: &str = "noid-";

/// SQLite's limit on the columns of a table, [`ID_COLUMN`] included (`SQLITE_MAX_COLUMN` of
/// the bundled SQLite).
pub(crate) const MAX_COLUMNS: usize = 2000;

/// New columns one message may add: half of SQLite's limit, so one stray message (a JSON
/// object of word counts, say) cannot use up the table, while a wide data set (784 pixels
/// and a label) still creates all its columns with its first row.
pub(crate) const MAX_NEW_COLUMNS: usize = 1000;

/// Longest key stored as a column name, in bytes: SQLite re-parses the table's whole
/// schema on every `ALTER TABLE`, so a few megabyte-long keys would slow every later
/// message (and every open) to a crawl.
pub(crate) const MAX_KEY_BYTES: usize = 1024;

/// The primary key of a stored row: the message id, with `#N` appended for row N of a batch
/// message. A `#` inside the id is doubled, so a batch's row keys never equal another
/// message's id (`b#1` is row 1 of batch `b`; the message `b#1` is stored as `b##1`).
pub(crate) fn row_key(message_id: &str, batch_row: Option<usize>) -> String {
    let id = message_id.replace('#', "##");
    match batch_row {
        Some(n) => format!("{id}#{n}"),
        None => id,
    }
}

/// How the key of a row read from a stream without a message id begins: `#` and a letter,
/// which no [`row_key`] ever starts with (there every `#` of the id is doubled, and the only
/// single `#` is the one before a batch row's number: `#s` is never one).
pub(crate) const STREAM_KEY_PREFIX: &str = "#stream:";

/// The primary key of row `row` (1-based) of a message read from stream `queue` at `offset`
/// without a message id: the same each time that message is read (a resumed run after a
/// SIGKILL stores it once), and never the key of a message with an id, whatever id a sender
/// chooses (see [`STREAM_KEY_PREFIX`]). The body's hash is part of it, so the message another
/// stream of the same name (deleted and declared again) holds at the same offset is a row of
/// its own unless its body is the same too. The queue comes last: it may hold any character,
/// every field before it has a fixed alphabet without `:`.
pub(crate) fn stream_row_key(queue: &str, offset: u64, body_sha256: &str, row: usize) -> String {
    format!("{STREAM_KEY_PREFIX}{offset}:{row}:{body_sha256}:{queue}")
}

/// What became of one message's rows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Stored; the number of rows inserted (0: all were there already, a redelivery).
    Rows(u64),
    /// This message cannot be stored (the reason); nothing of it was kept.
    Refused(String),
}

/// An open results table.
pub(crate) struct ResultsDb {
    conn: Connection,
    path: std::path::PathBuf,
    table: String,
    /// Columns in table order (lowercased for lookups: SQLite names are case-insensitive).
    columns: Vec<String>,
    in_transaction: bool,
}

impl ResultsDb {
    /// Open (creating if needed) `path` and the table `table` in it.
    pub(crate) fn open(path: &Path, table: &str) -> Result<ResultsDb> {
        if let Some(why) = check_table_name(table) {
            bail!(why);
        }
        let conn = sqlite::open(path)?;
        sqlite::setup(&conn).map_err(|e| match e.downcast_ref::<sqlite::Locked>() {
            Some(locked) => eyre!("cannot open {}: {locked}", path.display()),
            None => e.wrap_err(format!(
                "cannot open {}; is it an SQLite database you may write?",
                path.display()
            )),
        })?;
        // Before this run's table is created: an older checkpoint table's rows belong to the
        // one results table there was.
        checkpoints::migrate(&conn).wrap_err_with(|| {
            format!("cannot upgrade the checkpoint table of {}", path.display())
        })?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} ({} TEXT PRIMARY KEY NOT NULL);",
            quote(table),
            ID_COLUMN
        );
        conn.execute_batch(&create).wrap_err_with(|| {
            format!(
                "cannot create table {table} in {}; is it an SQLite database you may write?",
                path.display()
            )
        })?;
        let mut db = ResultsDb {
            conn,
            path: path.to_path_buf(),
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
    pub(crate) fn refuse(&self, rows: &[Map<String, Value>]) -> Option<String> {
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
    pub(crate) fn store(&mut self, rows: &[(String, &Map<String, Value>)]) -> Result<Stored> {
        if !self.in_transaction {
            sqlite::begin_on(&self.conn, &self.path)?;
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

    /// Save `offset` as the checkpoint of stream `queue` into this table, in the transaction
    /// the next [`ResultsDb::commit`] commits, with the rows.
    pub(crate) fn checkpoint(
        &mut self,
        queue: &str,
        offset: u64,
        mark: Option<&crate::amqp::Identity>,
    ) -> Result<()> {
        if !self.in_transaction {
            sqlite::begin_on(&self.conn, &self.path)?;
            self.in_transaction = true;
        }
        checkpoints::save(&self.conn, &self.path, queue, &self.table, offset, mark)
    }

    /// Make everything inserted so far durable.
    pub(crate) fn commit(&mut self) -> Result<()> {
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

#[cfg(test)]
mod tests;

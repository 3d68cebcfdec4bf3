//! What SQLite can hold: table names, a row's keys as column names, values as SQLite
//! values, and which SQLite errors are about a message's content.

use super::{ID_COLUMN, MAX_KEY_BYTES};
use rusqlite::types::Value as Sql;
use serde_json::{Map, Value};

/// Why a table name is refused, or None when it is a plain identifier.
pub(crate) fn check_table_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if !plain {
        return Some(format!(
            "--table {name:?}: use letters, digits and _ (not starting with a digit), e.g. predictions"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("_mq_") {
        return Some(format!("--table {name}: names starting with _mq_ are mqdemo's own"));
    }
    lower
        .starts_with("sqlite_")
        .then(|| format!("--table {name}: names starting with sqlite_ are reserved by SQLite"))
}

/// Why one row cannot be stored whatever the table holds, or None.
pub(super) fn refuse_row(row: &Map<String, Value>) -> Option<String> {
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
/// variables (a safety net behind [`super::ResultsDb::refuse`]).
pub(super) fn refusal(e: &rusqlite::Error) -> Option<String> {
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

pub(super) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// JSON value -> SQLite value: numbers stay numbers (integers as INTEGER), booleans become
/// 0/1, null NULL, arrays and objects their JSON text.
pub(super) fn to_sql(v: &Value) -> Sql {
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

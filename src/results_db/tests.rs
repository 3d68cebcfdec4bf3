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
fn stream_keys_of_messages_without_ids_never_equal_a_message_ids_key() {
    let hash = crate::codec::sha256_hex(b"{\"a\":1}");
    let key = stream_row_key("events", 7, &hash, 1);
    assert_eq!(key, format!("#stream:7:1:{hash}:events"));
    assert_eq!(key, stream_row_key("events", 7, &hash, 1), "the same each time it is read");
    // A sender choosing the derived key (or its parts) as its message id gets another key.
    for id in [key.as_str(), "#stream:7:1", "stream:7:1", "#"] {
        for row in [None, Some(1), Some(7)] {
            assert_ne!(row_key(id, row), key, "{id:?} {row:?}");
            assert!(!row_key(id, row).starts_with(STREAM_KEY_PREFIX), "{id:?} {row:?}");
        }
    }
    // Every part tells two messages apart; a queue with `:` in its name stays apart too.
    let other = crate::codec::sha256_hex(b"{\"a\":2}");
    let keys = [
        stream_row_key("events", 7, &hash, 2),
        stream_row_key("events", 8, &hash, 1),
        stream_row_key("events", 7, &other, 1),
        stream_row_key("events2", 7, &hash, 1),
        stream_row_key("ev:7:1", 7, &hash, 1),
    ];
    let distinct: std::collections::HashSet<&String> = keys.iter().chain([&key]).collect();
    assert_eq!(distinct.len(), keys.len() + 1);
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
    assert!(matches!(&stored, Stored::Refused(w) if w.contains("too many columns")), "{stored:?}");
    assert!(one(&mut db, "after", json!({"row": 2})));
    db.commit().expect("commit");
    assert_eq!(names(&db), ["message_id", "row"]);
    assert_eq!(count(&db), 2);
    // The column cache follows the rollback: the key can come back later.
    assert!(one(&mut db, "later", json!({"fresh": 3})));
    db.commit().expect("commit");
    assert_eq!(names(&db), ["message_id", "row", "fresh"]);
}

//! Unit tests of the producers' pure parts.

use super::files::{READ_AHEAD_BYTES, ReadAhead, open_listed};
use super::lines::{Utf8Check, read_line_within};
use super::tabular::Batch;
use crate::codec::{HeaderValue, tabular, text};
use csv::StringRecord;
use std::io::BufReader;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn a_listed_file_replaced_by_a_fifo_or_symlink_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fifo, link) = (dir.path().join("f"), dir.path().join("l"));
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    std::fs::write(dir.path().join("a"), "a").expect("write");
    std::os::unix::fs::symlink(dir.path().join("a"), &link).expect("symlink");
    let (tx, rx) = std::sync::mpsc::channel();
    let paths = [fifo, link, dir.path().join("a")];
    std::thread::spawn(move || {
        let _ = tx.send(paths.map(|p| open_listed(&p).is_ok()));
    });
    let opened = rx.recv_timeout(Duration::from_secs(10)).expect("open_listed blocked");
    assert_eq!(opened, [false, false, true]);
}

#[test]
fn utf8_is_checked_across_pieces_with_the_line_of_the_bad_byte() {
    let text = "a\né\n€ x\n😀\n".as_bytes();
    for size in 1..=text.len() {
        let mut check = Utf8Check::default();
        for piece in text.chunks(size) {
            assert_eq!(check.feed(piece), Ok(()), "pieces of {size}");
        }
        assert_eq!(check.finish(), Ok(()));
    }
    let bad = b"ok\nstill\nbad \xff here\n";
    for size in 1..=bad.len() {
        let mut check = Utf8Check::default();
        let got = bad.chunks(size).map(|p| check.feed(p)).find(Result::is_err);
        assert_eq!(got, Some(Err(3)), "pieces of {size}");
    }
    let mut cut = Utf8Check::default();
    assert_eq!(cut.feed(b"a\n\xe2\x82"), Ok(()));
    assert_eq!(cut.finish(), Err(2), "a character cut off by the end of the file");
}

#[test]
fn a_long_line_is_counted_but_kept_only_to_the_limit() {
    let data = b"0123456789\nab\n";
    let mut reader = BufReader::with_capacity(4, &data[..]);
    let mut digest = text::FileDigest::default();
    let mut line = Vec::new();
    assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(11));
    assert_eq!(line, b"012345", "the limit + 1 bytes: enough to tell it is over");
    line.clear();
    assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(3));
    assert_eq!(line, b"ab\n");
    assert_eq!(read_line_within(&mut reader, 5, &mut line, &mut digest).ok(), Some(0));
    let mut whole = text::FileDigest::default();
    whole.update(data);
    assert!(digest.finish() == whole.finish(), "every byte is digested");
}

fn encoder() -> tabular::Encoder {
    tabular::Encoder::new("data.csv", ["a", "b"])
}

/// A CSV row into the batch as `produce tabular` adds one: encoded first, added if it can be.
fn add(
    batch: &mut Batch,
    enc: &tabular::Encoder,
    record: &StringRecord,
    row: u64,
) -> Result<(), tabular::RowError> {
    let mut object = Vec::new();
    enc.write_object(record, &mut object)?;
    batch.add_object(&object, row);
    Ok(())
}

#[test]
fn a_batch_is_one_json_array_named_by_its_first_row_and_count() {
    let enc = encoder();
    let mut batch = Batch::default();
    assert!(batch.take(&enc).is_none(), "an empty batch is no message");
    for (row, fields) in [(3, ["1", "x"]), (4, ["2", ""]), (5, ["3.5", "z"])] {
        add(&mut batch, &enc, &StringRecord::from(fields.to_vec()), row).expect("fits");
    }
    let msg = batch.take(&enc).expect("three rows");
    assert_eq!(
        String::from_utf8(msg.body).expect("utf-8"),
        r#"[{"a":1,"b":"x"},{"a":2,"b":null},{"a":3.5,"b":"z"}]"#
    );
    assert_eq!(msg.label, "data.csv rows 3-5");
    assert!(matches!(msg.headers.get("row"), Some(HeaderValue::Int(3))));
    assert!(matches!(msg.headers.get("rows"), Some(HeaderValue::Int(3))));
    assert!(batch.take(&enc).is_none(), "taking empties the batch");
    // The next batch starts afresh: its own first row, its own `[`.
    add(&mut batch, &enc, &StringRecord::from(vec!["9"]), 7).expect("short rows are padded");
    let msg = batch.take(&enc).expect("one row");
    assert_eq!(msg.body, br#"[{"a":9,"b":null}]"#);
    assert_eq!(msg.label, "data.csv rows 7-7");
}

#[test]
fn a_row_the_batch_cannot_take_leaves_it_as_it_was() {
    let enc = encoder();
    let wide = StringRecord::from(vec!["1", "2", "3"]);
    let mut batch = Batch::default();
    assert!(add(&mut batch, &enc, &wide, 1).is_err(), "wider than the header");
    assert!(batch.take(&enc).is_none(), "a refused first row leaves no `[` behind");
    add(&mut batch, &enc, &StringRecord::from(vec!["1", "2"]), 2).expect("fits");
    assert!(add(&mut batch, &enc, &wide, 3).is_err());
    add(&mut batch, &enc, &StringRecord::from(vec!["4", "5"]), 4).expect("fits");
    let msg = batch.take(&enc).expect("two rows");
    assert_eq!(msg.body, br#"[{"a":1,"b":2},{"a":4,"b":5}]"#);
    assert_eq!(msg.label, "data.csv rows 2-3", "named by its first row and its count");
}

#[test]
fn read_ahead_always_grants_one_file_even_over_the_limit() {
    let budget = ReadAhead::default();
    assert!(budget.take(READ_AHEAD_BYTES * 3), "nothing queued: a large file still goes");
    budget.give(READ_AHEAD_BYTES * 3);
    assert!(budget.take(READ_AHEAD_BYTES), "room again once given back");
    budget.give(READ_AHEAD_BYTES + 5);
    assert!(budget.take(0), "giving back more than taken saturates at zero");
}

#[test]
fn read_ahead_waits_above_the_limit_until_bytes_are_given_back() {
    let budget = ReadAhead::default();
    assert!(budget.take(READ_AHEAD_BYTES - 1));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(budget.take(3));
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "over the limit: waits");
        budget.give(1);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "still over: waits");
        budget.give(READ_AHEAD_BYTES - 2);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true), "room: granted");
    });
}

#[test]
fn read_ahead_releases_a_waiting_reader_when_the_publisher_goes() {
    let budget = ReadAhead::default();
    assert!(budget.take(READ_AHEAD_BYTES));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(budget.take(1));
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "waits");
        drop(budget.closer());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(false), "released, told to stop");
    });
    assert!(!budget.take(0), "nothing more once the publisher has gone");
}

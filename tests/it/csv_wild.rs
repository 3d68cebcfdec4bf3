//! CSV files as people really have them (tests/data/: excerpts of scikit-learn's, Debian's
//! and the csv crate's files): no header, a metadata first line, other separators, other
//! encodings, short rows, duplicate column names, unterminated quotes, empty files, and CSV
//! output appended to a file that already has a header. Nothing is ever lost silently.

use crate::support::{TestQueue, count_after, mqdemo, s, wait};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file under tests/data.
fn wild(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A broker nobody listens on: an input error must come before any connection attempt.
const DEAD_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn produce(q: &TestQueue, file: &Path, extra: &[&str]) -> crate::support::Output {
    let mut args = vec!["produce", "tabular", "--file", s(file), "--queue", &q.name];
    args.extend_from_slice(extra);
    mqdemo(&args).run()
}

/// Every row in the queue as a JSON object (consumes `n` messages).
fn objects(q: &TestQueue, n: usize) -> Vec<Map<String, Value>> {
    let count = n.to_string();
    let out =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", &count]).run().expect_code(0);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect()
}

fn keys(o: &Map<String, Value>) -> Vec<&str> {
    o.keys().map(String::as_str).collect()
}

/// "0", "1", ... "n-1": the column names of --no-header.
fn positions(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Lines of stderr that name one skipped item (not the summary).
fn skip_lines(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("mqdemo: skipped ")).count()
}

#[test]
fn duplicate_column_names_are_refused_with_the_fix_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dup.csv");
    std::fs::write(&file, "id,val,val\n1,a,b\n2,c,d\n").expect("write");
    let out =
        mqdemo(&["--url", DEAD_URL, "produce", "tabular", "--file", s(&file)]).run().expect_code(1);
    let first = out.first_error_line();
    assert!(
        first.contains("dup.csv line 1")
            && first.contains("\"val\" (columns 2, 3)")
            && first.contains("--no-header"),
        "{}",
        out.stderr
    );
    // request reads CSV the same way, and refuses the same file before connecting.
    let out = mqdemo(&["--url", DEAD_URL, "request", "--file", s(&file)]).run().expect_code(1);
    assert!(out.first_error_line().contains("\"val\" (columns 2, 3)"), "{}", out.stderr);
}

#[test]
fn headerless_digits_are_refused_then_sent_whole_with_no_header() {
    // scikit-learn's digits.csv has no header: its first row, taken as one, repeats "0",
    // "5", "13"... and 65 columns collapsed into 16 on the consumer side.
    let q = TestQueue::new("wild-digits");
    let file = wild("sklearn_digits_head.csv");
    let out = produce(&q, &file, &[]).expect_code(1);
    assert!(
        out.first_error_line().contains("sklearn_digits_head.csv line 1")
            && out.first_error_line().contains("--no-header"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 0, "nothing sent from a refused file");

    produce(&q, &file, &["--no-header"]).expect_code(0).stderr_has("produced 5 messages");
    let rows = objects(&q, 5);
    assert_eq!(rows.len(), 5);
    for row in &rows {
        assert_eq!(keys(row), positions(65), "columns named by position, like pandas header=None");
    }
    assert_eq!(rows[0]["2"], serde_json::json!(5));
    assert_eq!(rows[4]["64"], serde_json::json!(4), "the last column (the label) is kept");

    // consume --format csv --no-header gives the headerless file back, byte for byte.
    produce(&q, &file, &["--no-header"]).expect_code(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let back = dir.path().join("digits.csv");
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "5",
        "--format",
        "csv",
        "--no-header",
        "--output",
        s(&back),
    ])
    .run()
    .expect_code(0);
    assert_eq!(std::fs::read(&back).expect("output"), std::fs::read(&file).expect("input"));
}

#[test]
fn metadata_first_line_stops_with_one_error_and_the_skip_rows_hint() {
    // breast_cancer.csv starts with `569,30,malignant,benign`: every 31-field row was skipped
    // as ragged, one stderr line each.
    let q = TestQueue::new("wild-cancer");
    let file = wild("sklearn_breast_cancer_head.csv");
    let out = produce(&q, &file, &[]).expect_code(1);
    assert_eq!(skip_lines(&out.stderr), 0, "one error, not a line per row:\n{}", out.stderr);
    let first = out.first_error_line();
    assert!(
        first.contains("sklearn_breast_cancer_head.csv")
            && first.contains("31 fields")
            && first.contains("--skip-rows 1")
            && first.contains("--no-header"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 0);

    produce(&q, &file, &["--skip-rows", "1", "--no-header"])
        .expect_code(0)
        .stderr_has("produced 30 messages");
    let rows = objects(&q, 30);
    assert_eq!(keys(&rows[0]), positions(31));
    assert_eq!(rows[0]["0"], serde_json::json!(17.99));
    assert_eq!(rows[29]["30"], serde_json::json!(0));
}

#[test]
fn skipped_lines_still_count_in_the_line_numbers_named() {
    let q = TestQueue::new("wild-skip-lines");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("meta.csv");
    std::fs::write(&file, "# exported 2024-01-01\n# by hand\na,b\n1,2\n3,4,5\n6,7\n").expect("w");
    let out = produce(&q, &file, &["--skip-rows", "2"]).expect_code(1);
    assert!(out.stderr.contains("meta.csv line 5: row has 3 fields"), "{}", out.stderr);
    assert!(out.stderr.contains("produced 2 messages"), "{}", out.stderr);
    let rows = objects(&q, 2);
    assert_eq!(keys(&rows[0]), ["a", "b"]);
    // More lines skipped than the file has: an error, not "produced 0".
    let out = produce(&q, &file, &["--skip-rows", "9"]).expect_code(1);
    assert!(
        out.first_error_line().contains("meta.csv")
            && out.first_error_line().contains("--skip-rows"),
        "{}",
        out.stderr
    );
}

#[test]
fn short_rows_are_padded_with_nulls_and_counted_longer_rows_stay_errors() {
    // Debian's distro-info CSVs leave out trailing empty fields: 15 of 22 rows are short.
    let q = TestQueue::new("wild-debian");
    let file = wild("debian_distro_info.csv");
    let out = produce(&q, &file, &[]).expect_code(0);
    assert!(out.stderr.contains("produced 22 messages"), "{}", out.stderr);
    assert!(out.stderr.contains("padded 15 short rows"), "{}", out.stderr);
    let rows = objects(&q, 22);
    let header =
        ["version", "codename", "series", "created", "release", "eol", "eol-lts", "eol-elts"];
    for row in &rows {
        assert_eq!(keys(row), header);
    }
    let sid = rows.iter().find(|r| r["codename"] == "Sid").expect("Sid row");
    assert_eq!(sid["version"], Value::Null);
    assert_eq!(sid["created"], "1993-08-16");
    assert_eq!(sid["release"], Value::Null, "padded with null");
    assert_eq!(rows[0]["version"], serde_json::json!(1.1));

    let dir = tempfile::tempdir().expect("tempdir");
    let long = dir.path().join("long.csv");
    std::fs::write(&long, "a,b\n1,2\n3,4,5\n6\n").expect("write");
    let out = produce(&q, &long, &[]).expect_code(1);
    assert!(out.stderr.contains("long.csv line 3: row has 3 fields but the header has 2"));
    assert!(out.stderr.contains("produced 2 messages") && out.stderr.contains("skipped 1"));
    assert!(out.stderr.contains("padded 1 short row"), "{}", out.stderr);
    assert_eq!(q.depth(), 2);
}

/// Produce `file` with `--delimiter delim` and consume it back as CSV with the same one.
fn round_trip_with_delimiter(q: &TestQueue, file: &Path, delim: &str, rows: usize) -> Vec<u8> {
    produce(q, file, &["--delimiter", delim]).expect_code(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let back = dir.path().join("back.csv");
    let count = rows.to_string();
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        &count,
        "--format",
        "csv",
        "--delimiter",
        delim,
        "--output",
        s(&back),
    ])
    .run()
    .expect_code(0);
    std::fs::read(&back).expect("output")
}

#[test]
fn delimiter_reads_semicolons_tabs_colons_and_spaces() {
    let q = TestQueue::new("wild-delim");
    let dir = tempfile::tempdir().expect("tempdir");
    // A European spreadsheet export: `;` between fields, decimal commas stay strings.
    let semi = dir.path().join("semi.csv");
    std::fs::write(&semi, "name;price\nA;1,5\n\"B;C\";2\n").expect("write");
    produce(&q, &semi, &["--delimiter", ";"]).expect_code(0);
    let rows = objects(&q, 2);
    assert_eq!(keys(&rows[0]), ["name", "price"]);
    assert_eq!(rows[0]["price"], "1,5");
    assert_eq!(rows[1]["name"], "B;C");

    let tsv = dir.path().join("iris.tsv");
    std::fs::write(&tsv, "sepal length\tspecies\n5.1\tIris setosa\n4.9\tIris, setosa\n")
        .expect("write");
    for spelling in ["tab", "\\t", "\t"] {
        produce(&q, &tsv, &["--delimiter", spelling]).expect_code(0);
        let rows = objects(&q, 2);
        assert_eq!(keys(&rows[0]), ["sepal length", "species"], "--delimiter {spelling:?}");
        assert_eq!(rows[1]["species"], "Iris, setosa");
    }
    let back = round_trip_with_delimiter(&q, &tsv, "tab", 2);
    assert_eq!(back, std::fs::read(&tsv).expect("input"), "TSV out as it came in");

    let colon = wild("csv_smallpop_colon.csv");
    let back = round_trip_with_delimiter(&q, &colon, ":", 10);
    assert_eq!(back, std::fs::read(&colon).expect("input"));

    let spaces = wild("sklearn_linnerud_exercise.csv");
    produce(&q, &spaces, &["--delimiter", " "]).expect_code(0).stderr_has("produced 20 messages");
    let rows = objects(&q, 20);
    assert_eq!(keys(&rows[0]), ["Chins", "Situps", "Jumps"]);
    assert_eq!(rows[0]["Situps"], serde_json::json!(162));

    for bad in ["ab", "\"", "", "é"] {
        let out = produce(&q, &semi, &["--delimiter", bad]).expect_code(2);
        assert!(out.first_error_line().contains("--delimiter"), "{bad:?}: {}", out.stderr);
    }
}

#[test]
fn latin1_rows_are_named_with_the_encoding_hint_and_read_with_encoding() {
    // The csv crate's uspop-latin1.csv: line 4 is `Õakman` in Latin-1.
    let q = TestQueue::new("wild-latin1");
    let file = wild("csv_uspop_latin1_head.csv");
    let out = produce(&q, &file, &[]).expect_code(1);
    assert!(
        out.stderr.contains("csv_uspop_latin1_head.csv line 4: not valid UTF-8")
            && out.stderr.contains("--encoding latin1"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 10);
    q.delete();

    for label in ["latin1", "windows-1252", "ISO-8859-1"] {
        produce(&q, &file, &["--encoding", label]).expect_code(0).stderr_has("produced 11");
        let rows = objects(&q, 11);
        assert_eq!(rows[2]["City"], "Õakman", "--encoding {label}");
        assert_eq!(rows[2]["Latitude"], serde_json::json!(33.7133333));
    }
    let out = produce(&q, &file, &["--encoding", "klingon"]).expect_code(2);
    assert!(out.first_error_line().contains("--encoding klingon"), "{}", out.stderr);

    // A file in another encoding from its first row on: one error with the hint, not a
    // skipped line per row.
    let dir = tempfile::tempdir().expect("tempdir");
    let french = dir.path().join("villes.csv");
    let mut bytes = b"ville;pr\xe9fecture\n".to_vec();
    for i in 0..30 {
        bytes.extend_from_slice(b"Ch\xe2teau "); // â as one Latin-1 byte
        bytes.extend_from_slice(format!("{i};oui\n").as_bytes());
    }
    std::fs::write(&french, &bytes).expect("write");
    let out = produce(&q, &french, &["--delimiter", ";"]).expect_code(1);
    assert_eq!(skip_lines(&out.stderr), 0, "{}", out.stderr);
    assert!(
        out.first_error_line().contains("villes.csv line 1")
            && out.first_error_line().contains("--encoding"),
        "{}",
        out.stderr
    );
    produce(&q, &french, &["--delimiter", ";", "--encoding", "latin1"])
        .expect_code(0)
        .stderr_has("produced 30 messages");
    assert_eq!(objects(&q, 30)[7]["ville"], "Château 7");
}

#[test]
fn unterminated_quote_is_an_error_naming_the_line_where_it_began() {
    // It used to swallow every later row into one field, exit 0.
    let q = TestQueue::new("wild-quote");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("quote.csv");
    std::fs::write(&file, "a,b\n1,ok\n2,\"x\n3,y\n4,z\n").expect("write");
    let out = produce(&q, &file, &[]).expect_code(1);
    assert!(
        out.stderr.contains("quote.csv line 3") && out.stderr.contains("never closed"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 1, "the rows before it are sent, nothing after");
    // A quoted field with a line break that does close is data.
    std::fs::write(&file, "a,b\n1,\"two\nlines\"\n2,\"say \"\"hi\"\"\"\n").expect("write");
    produce(&q, &file, &[]).expect_code(0).stderr_has("produced 2 messages");
}

#[test]
fn a_row_longer_than_the_limit_is_an_error_naming_its_line() {
    let q = TestQueue::new("wild-longline");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("long.csv");
    let mut text = String::from("a,b\n1,x\n2,");
    text.push_str(&"y".repeat(3_000_000));
    text.push_str("\n3,z\n");
    std::fs::write(&file, text).expect("write");
    let out = produce(&q, &file, &["--max-message-size", "1000000"]).expect_code(1);
    assert!(
        out.stderr.contains("long.csv line 3: a row longer than")
            && out.stderr.contains("--max-message-size"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 1);
}

#[test]
fn an_empty_file_is_an_error_not_produced_zero() {
    let q = TestQueue::new("wild-empty");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in
        [("empty.csv", &b""[..]), ("blank.csv", b"\n\r\n\n"), ("bom.csv", b"\xef\xbb\xbf")]
    {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        for extra in [&[][..], &["--no-header"]] {
            let out = produce(&q, &file, extra).expect_code(1);
            assert!(
                out.first_error_line().contains(name) && out.first_error_line().contains("empty"),
                "{name} {extra:?}: {}",
                out.stderr
            );
        }
    }
    // A header and no rows is an empty table, not an error.
    let file = dir.path().join("header.csv");
    std::fs::write(&file, "a,b\n").expect("write");
    produce(&q, &file, &[]).expect_code(0).stderr_has("produced 0 messages");
}

#[test]
fn consume_csv_appends_under_the_existing_header_and_rejects_what_cannot_fit() {
    let q = TestQueue::new("wild-existing");
    let dlq = TestQueue::new("wild-existing-dlq");
    let dir = tempfile::tempdir().expect("tempdir");
    let dl = ["--dead-letter-queue", dlq.name.as_str()];
    let rows = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).expect("write");
        f
    };
    // In order: a row with fewer columns than the file, one that fits it exactly, one
    // with a column the file does not have.
    produce(&q, &rows("ab.csv", "a,b\n1,2\n"), &dl).expect_code(0);
    produce(&q, &rows("abc.csv", "a,b,c\n3,4,5\n"), &dl).expect_code(0);
    produce(&q, &rows("ad.csv", "a,d\n6,7\n"), &dl).expect_code(0);
    // The file someone already has: other column order, no newline after its last row.
    let out = dir.path().join("out.csv");
    std::fs::write(&out, "b,a,c\n0,9,8").expect("write");
    let run = mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "3",
        "--format",
        "csv",
        "--output",
        s(&out),
        "--dead-letter-queue",
        &dlq.name,
    ])
    .run()
    .expect_code(1);
    assert_eq!(std::fs::read_to_string(&out).expect("out"), "b,a,c\n0,9,8\n2,1,\n4,3,5\n");
    assert!(run.stderr.contains("\"d\"") && run.stderr.contains("out.csv"), "{}", run.stderr);
    assert_eq!(count_after(&run.stderr, "failed"), 1, "{}", run.stderr);
    assert_eq!(q.depth(), 0);
    assert_eq!(dlq.depth(), 1, "the row that cannot fit is dead-lettered, not dropped");
}

#[test]
fn consume_csv_takes_every_column_of_the_first_batch_from_another_producer() {
    // Another producer's first message is a batch whose second object has a column the
    // first lacks: that column must not be dropped on the way into the CSV header.
    let q = TestQueue::new("wild-batch-cols");
    q.publish_raw(br#"[{"a":1},{"a":2,"b":3}]"#, Default::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.csv");
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "1",
        "--format",
        "csv",
        "--output",
        s(&out),
    ])
    .run()
    .expect_code(0);
    assert_eq!(std::fs::read_to_string(&out).expect("out"), "a,b\n1,\n2,3\n");
}

#[test]
fn request_reads_csv_with_the_same_options() {
    let requests = TestQueue::new("wild-req");
    let _failed = TestQueue::named(format!("{}.failed", requests.name));
    let server =
        mqdemo(&["serve", "--queue", &requests.name, "--exec", "cat", "--count", "38"]).watch();
    let digits = wild("sklearn_digits_head.csv");
    let client = |file: &Path, extra: &[&str]| {
        let mut args = vec!["request", "--queue", &requests.name, "--file", s(file)];
        args.extend_from_slice(extra);
        wait(mqdemo(&args).spawn(), Duration::from_secs(60))
    };
    let out = client(&digits, &["--no-header"]).expect_code(0);
    let replies: Vec<Map<String, Value>> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("json reply")).collect();
    assert_eq!(replies.len(), 5);
    assert_eq!(keys(&replies[0]), positions(65));
    let latin = wild("csv_uspop_latin1_head.csv");
    let out = client(&latin, &["--encoding", "latin1", "--delimiter", ","]).expect_code(0);
    assert!(out.stdout.contains("\"Õakman\""), "{}", out.stdout);
    let out = client(&wild("debian_distro_info.csv"), &[]).expect_code(0);
    assert_eq!(out.stdout.lines().count(), 22);
    assert!(out.stderr.contains("padded 15 short rows"), "{}", out.stderr);
    server.finish(Duration::from_secs(30)).expect_code(0);
}

#[test]
fn byte_order_marks_are_not_data() {
    let q = TestQueue::new("wild-bom");
    let dir = tempfile::tempdir().expect("tempdir");
    // Excel's "CSV UTF-8": a BOM, then a quoted first header field.
    let utf8 = dir.path().join("excel.csv");
    std::fs::write(&utf8, b"\xef\xbb\xbf\"id\",name\n1,\"x\"\n").expect("write");
    produce(&q, &utf8, &[]).expect_code(0);
    assert_eq!(keys(&objects(&q, 1)[0]), ["id", "name"]);
    // Excel's "Unicode text": UTF-16LE with a BOM, tab-separated; no --encoding needed.
    let utf16 = dir.path().join("excel.txt");
    let mut bytes = vec![0xff, 0xfe];
    for unit in "id\tville\r\n1\tCh\u{e2}teau\r\n".encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    std::fs::write(&utf16, bytes).expect("write");
    produce(&q, &utf16, &["--delimiter", "tab"]).expect_code(0);
    let rows = objects(&q, 1);
    assert_eq!(keys(&rows[0]), ["id", "ville"]);
    assert_eq!(rows[0]["ville"], "Château");
}

#[test]
fn rows_appended_to_a_file_without_a_final_line_break_start_on_a_new_line() {
    let q = TestQueue::new("wild-append-jsonl");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rows.csv");
    std::fs::write(&file, "a\n1\n").expect("write");
    produce(&q, &file, &[]).expect_code(0);
    let out = dir.path().join("rows.jsonl");
    std::fs::write(&out, "{\"a\":0}").expect("write");
    mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "1", "--output", s(&out)])
        .run()
        .expect_code(0);
    assert_eq!(std::fs::read_to_string(&out).expect("out"), "{\"a\":0}\n{\"a\":1}\n");
}

#[test]
fn utf16_without_a_byte_order_mark_is_refused_with_the_encoding_hint() {
    // Found by attack: UTF-16LE text without a BOM was sent as keys like "n\0a\0m\0e\0",
    // plus a phantom padded row, exit 0.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("u16.csv");
    let text: Vec<u8> =
        "name,score\nann,1\nbob,2\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
    std::fs::write(&file, text).expect("write");
    let out =
        mqdemo(&["--url", DEAD_URL, "produce", "tabular", "--file", s(&file)]).run().expect_code(1);
    let first = out.first_error_line();
    assert!(
        first.contains("u16.csv line 1") && first.contains("--encoding utf-16le"),
        "{}",
        out.stderr
    );
    // Big-endian gets the big-endian label (found by attack: the little-endian one was
    // named first, and following it read the file as one garbage header, exit 0).
    let be_file = dir.path().join("u16be.csv");
    let be: Vec<u8> = "name,score\nann,1\n".encode_utf16().flat_map(u16::to_be_bytes).collect();
    std::fs::write(&be_file, be).expect("write");
    let out = mqdemo(&["--url", DEAD_URL, "produce", "tabular", "--file", s(&be_file)])
        .run()
        .expect_code(1);
    assert!(out.first_error_line().contains("--encoding utf-16be"), "{}", out.stderr);
    // With the label it is read as what it is.
    let q = TestQueue::new("wild-utf16");
    produce(&q, &file, &["--encoding", "utf-16le"])
        .expect_code(0)
        .stderr_has("produced 2 messages");
}

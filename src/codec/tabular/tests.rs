//! The tabular codec: typing, round trips, batches, raw objects.

use super::*;
use crate::codec::tests::assert_round_trip;

#[test]
fn a_batch_is_decoded_within_a_memory_limit() {
    let body = br#"[{"a":1,"b":"xy"},{"a":2,"b":null}]"#;
    let rows = decode_within(body, 1 << 20).expect("fits");
    assert_eq!(rows, decode(body).expect("decodes"));
    let one = row_bytes(&rows[0]);
    assert!(one > 2 * 176 && one < 1_000, "estimate {one}");
    let err = decode_within(body, one + 10).expect_err("two rows do not fit");
    assert!(err.0.contains("by row 2") && err.0.contains("--prefetch-bytes"), "{}", err.0);
    let err = decode_within(br#"{"a":1}"#, 10).expect_err("a single object is measured too");
    assert!(err.0.contains("by row 1"), "{}", err.0);
    let mixed = br#"[{"a":1},2]"#;
    assert_eq!(decode_within(mixed, 1 << 20), decode(mixed), "the same error as decode");
    assert!(decode_within(b"[{\"a\":1}", 1 << 20).is_err(), "not JSON");
    assert_eq!(decode_within(b"[]", 1 << 20), Ok(vec![]));
}

#[test]
fn values_are_typed_losslessly() {
    assert_eq!(type_value(""), Typed::Null);
    for n in ["0", "42", "-7", "1.5", "-0.25", "100.0", "9223372036854775807", "1e+16", "0.0001"] {
        assert_eq!(type_value(n), Typed::Number(n), "{n}");
    }
    for s in [
        "007",
        "1.50",
        "1e5",
        "1e16",
        "-0",
        "+5",
        "NaN",
        "inf",
        "1e999",
        "9223372036854775808",
        "18446744073709551616",
        "1.",
        ".5",
        "0x10",
        "1_000",
        " 1",
        "abc",
        "-",
        "--1",
        "1-2",
    ] {
        assert_eq!(type_value(s), Typed::Str(s), "{s}");
    }
}

fn decode_rows(d: &crate::codec::Delivery) -> Vec<Vec<String>> {
    decode(&d.body)
        .expect("decodes")
        .iter()
        .map(|m| m.values().map(|v| csv_field(v).into_owned()).collect())
        .collect()
}

#[test]
fn row_round_trips_through_json() {
    let enc = Encoder::new("data.csv", ["ID", "name", "score", "note", "zip"]);
    let fields = ["1", "Zoë \"Z\"", "0.5", "", "007"];
    let msg = enc.encode_row(&StringRecord::from(fields.to_vec()), 3).expect("encodes");
    assert_eq!(
        std::str::from_utf8(&msg.body).expect("utf8"),
        r#"{"ID":1,"name":"Zoë \"Z\"","score":0.5,"note":null,"zip":"007"}"#
    );
    assert_eq!(msg.headers.get("row"), Some(&HeaderValue::Int(3)));
    assert_eq!(msg.headers.get("source"), Some(&HeaderValue::Str("data.csv".into())));
    let expected = vec![fields.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    assert_round_trip(&msg, CONTENT_TYPE, decode_rows, expected);
}

#[test]
fn batch_decodes_to_one_row_per_object() {
    let enc = Encoder::new("d.csv", ["a", "b"]);
    let mut body = b"[".to_vec();
    enc.write_object(&StringRecord::from(vec!["1", "x"]), &mut body).expect("row");
    body.push(b',');
    enc.write_object(&StringRecord::from(vec!["2", ""]), &mut body).expect("row");
    body.push(b']');
    let msg = enc.encode_batch(body, 1, 2);
    assert_eq!(msg.headers.get("rows"), Some(&HeaderValue::Int(2)));
    let expected = vec![vec!["1".to_string(), "x".into()], vec!["2".into(), "".into()]];
    assert_round_trip(&msg, CONTENT_TYPE, decode_rows, expected);
}

#[test]
fn longer_row_is_an_error_shorter_row_is_padded_with_nulls() {
    let enc = Encoder::new("d.csv", ["a", "b", "c"]);
    let err = enc.encode_row(&StringRecord::from(vec!["1", "2", "3", "4"]), 1);
    assert!(err.expect_err("long row").0.contains("4 fields but the header has 3"));
    let short = StringRecord::from(vec!["1"]);
    assert!(enc.is_short(&short));
    let msg = enc.encode_row(&short, 1).expect("short row");
    assert_eq!(msg.body, br#"{"a":1,"b":null,"c":null}"#);
    let empty = StringRecord::new();
    assert_eq!(enc.encode_row(&empty, 1).expect("empty").body, br#"{"a":null,"b":null,"c":null}"#);
}

#[test]
fn duplicate_columns_are_named_with_their_positions() {
    assert_eq!(duplicate_columns(["id", "val", "val"]), vec![("val".to_string(), vec![2, 3])]);
    let digits = ["0", "0", "5", "13", "0", "5"];
    assert_eq!(
        duplicate_columns(digits),
        vec![("0".to_string(), vec![1, 2, 5]), ("5".to_string(), vec![3, 6])]
    );
    assert!(duplicate_columns(["a", "b", "A", ""]).is_empty(), "case matters, as in JSON");
    assert_eq!(positional_columns(3), ["0", "1", "2"]);
}

#[test]
fn repeat_pass_changes_the_id_but_not_the_body() {
    let mut enc = Encoder::new("d.csv", ["a"]);
    let first = enc.encode_row(&StringRecord::from(vec!["1"]), 1).expect("row");
    enc.set_pass(1);
    let second = enc.encode_row(&StringRecord::from(vec!["1"]), 1).expect("row");
    assert_eq!(first.body, second.body);
    assert_ne!(first.message_id, second.message_id);
}

#[test]
fn raw_objects_keep_the_original_text() {
    let one = br#" {"a": 1.50, "b":"x"}"#;
    assert_eq!(raw_objects(one), Ok(Some(vec![r#"{"a": 1.50, "b":"x"}"#])));
    let batch = br#"[{"a":1},{"a":2}]"#;
    assert_eq!(raw_objects(batch), Ok(Some(vec![r#"{"a":1}"#, r#"{"a":2}"#])));
    assert_eq!(raw_objects(b"{\n\"a\": 1\n}"), Ok(None), "multi-line objects are re-serialised");
    for bad in [&b"[1]"[..], b"[]", b"{", b"42", b"nope", b""] {
        assert!(raw_objects(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn non_tabular_bodies_are_decode_errors() {
    for body in [&b"not json"[..], b"42", b"\"s\"", b"[1,2]", b"", b"{\"a\":1"] {
        assert!(decode(body).is_err(), "{:?}", String::from_utf8_lossy(body));
    }
}

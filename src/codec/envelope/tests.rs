use super::*;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde_json::Value;

fn line(meta: &Meta, body: &[u8]) -> Value {
    let bytes = encode(meta, body);
    assert!(!bytes.contains(&b'\n'), "one line: {}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).expect("the envelope is JSON")
}

fn with_type(ct: &str) -> Meta {
    Meta {
        properties: Properties { content_type: Some(ct.into()), ..Properties::default() },
        ..Meta::default()
    }
}

/// The body bytes back from an envelope, and which key held them.
fn body_of(v: &Value) -> (&'static str, Vec<u8>) {
    if let Some(t) = v.get("body_text") {
        return ("body_text", t.as_str().expect("a string").as_bytes().to_vec());
    }
    if let Some(b) = v.get("body_base64") {
        return ("body_base64", STANDARD.decode(b.as_str().expect("a string")).expect("base64"));
    }
    ("body", serde_json::to_vec(&v["body"]).expect("json"))
}

#[test]
fn a_bare_delivery_has_empty_properties_and_headers() {
    let v = line(&Meta::default(), b"");
    assert_eq!(v["properties"], serde_json::json!({}));
    assert_eq!(v["headers"], serde_json::json!({}));
    assert_eq!(v["exchange"], "");
    assert_eq!(v["redelivered"], false);
    assert_eq!(v["body_text"], "", "an empty body is empty text");
}

#[test]
fn only_present_properties_are_written_in_a_fixed_order() {
    let meta = Meta {
        properties: Properties {
            message_id: Some("m1".into()),
            kind: Some("image".into()),
            timestamp: Some(1_700_000_000),
            priority: Some(9),
            delivery_mode: Some(2),
            expiration: Some("60000".into()),
            ..Properties::default()
        },
        exchange: "ex".into(),
        routing_key: "rk".into(),
        redelivered: true,
        ..Meta::default()
    };
    let text = String::from_utf8(encode(&meta, b"{}")).expect("utf-8");
    assert!(
        text.starts_with(
            "{\"properties\":{\"message_id\":\"m1\",\"type\":\"image\",\"expiration\":\"60000\",\
             \"timestamp\":1700000000,\"priority\":9,\"delivery_mode\":2},\"headers\":{},\
             \"exchange\":\"ex\",\"routing_key\":\"rk\",\"redelivered\":true,\"body\":{}}"
        ),
        "{text}"
    );
}

#[test]
fn every_header_type_maps_to_json() {
    let nested = vec![("inner".to_string(), Field::Array(vec![Field::Int(1), Field::Void]))];
    let meta = Meta {
        headers: vec![
            ("s".into(), Field::Str("a \"b\"\n".into())),
            ("i8".into(), Field::Int(-128)),
            ("i64".into(), Field::Int(i64::MAX)),
            ("t".into(), Field::Bool(true)),
            ("f".into(), Field::Float(0.1)),
            ("d".into(), Field::Double(1e300)),
            ("nan".into(), Field::Double(f64::NAN)),
            ("inf".into(), Field::Float(f32::NEG_INFINITY)),
            ("dec".into(), Field::Decimal { scale: 2, value: -5 }),
            ("ts".into(), Field::Timestamp(1_700_000_000)),
            ("x".into(), Field::Bytes(vec![0, 255, 10])),
            ("table".into(), Field::Table(nested)),
            ("void".into(), Field::Void),
        ],
        ..Meta::default()
    };
    let text = String::from_utf8(encode(&meta, b"")).expect("utf-8");
    let v: Value = serde_json::from_str(&text).expect("json");
    let h = &v["headers"];
    assert_eq!(h["s"], "a \"b\"\n");
    assert_eq!(h["i8"], -128);
    assert_eq!(h["i64"], i64::MAX);
    assert_eq!(h["t"], true);
    assert!(text.contains("\"f\":0.1,"), "f32 in its shortest form: {text}");
    assert!(text.contains("\"d\":1e300,"), "{text}");
    assert_eq!(h["nan"], "NaN");
    assert_eq!(h["inf"], "-Infinity");
    assert!(text.contains("\"dec\":-0.05,"), "decimals exact: {text}");
    assert_eq!(h["ts"], 1_700_000_000);
    assert_eq!(h["x"]["base64"], STANDARD.encode([0, 255, 10]));
    assert_eq!(h["table"], serde_json::json!({"inner": [1, null]}));
    assert_eq!(h["void"], Value::Null);
    let order: Vec<&String> = h.as_object().expect("object").keys().collect();
    assert_eq!(order.first().map(|s| s.as_str()), Some("s"), "the table's order is kept");
}

#[test]
fn decimals_are_exact() {
    assert_eq!(decimal(0, 42), "42");
    assert_eq!(decimal(2, 1234), "12.34");
    assert_eq!(decimal(3, 5), "0.005");
    assert_eq!(decimal(1, -15), "-1.5");
    assert_eq!(decimal(2, i32::MIN), "-21474836.48");
    assert_eq!(
        serde_json::from_str::<Value>(&decimal(255, 7)).map(|v| v.is_number()).ok(),
        Some(true)
    );
}

#[test]
fn a_json_body_is_kept_exactly_on_one_line() {
    let body = br#"{"big": 123456789012345678901234567890, "x": 1.10, "s": "a b"}"#;
    let text = String::from_utf8(encode(&Meta::default(), body)).expect("utf-8");
    assert!(text.ends_with(&format!("\"body\":{}}}", String::from_utf8_lossy(body))), "{text}");
    let pretty = b"{\n  \"a\": [1,\r\n 2.50],\n  \"s\": \"x \\\" y\\n\"\n}\n";
    let text = String::from_utf8(encode(&Meta::default(), pretty)).expect("utf-8");
    assert!(text.ends_with(r#""body":{"a":[1,2.50],"s":"x \" y\n"}}"#), "{text}");
}

#[test]
fn the_content_type_decides_between_json_and_text() {
    let v = line(&with_type("text/plain; charset=utf-8"), b"42\n");
    assert_eq!(v["body_text"], "42\n", "a text file is text, whatever it looks like");
    let v = line(&with_type("application/json"), b"42");
    assert_eq!(v["body"], 42);
    let v = line(&Meta::default(), b"hello");
    assert_eq!(v["body_text"], "hello");
    let png = b"\x89PNG\r\n\x1a\n\0\0";
    let v = line(&with_type("image/png"), png);
    assert_eq!(body_of(&v), ("body_base64", png.to_vec()));
    let v = line(&with_type("TEXT/CSV"), b"\xff\xfe");
    assert_eq!(body_of(&v).0, "body_base64", "text that is not UTF-8 is bytes");
}

proptest! {
    #[test]
    fn any_body_comes_back_from_its_envelope(
        body in proptest::collection::vec(any::<u8>(), 0..200),
        ct in proptest::option::of("(text/plain|application/json|image/png|x)"),
    ) {
        let meta = Meta { properties: Properties { content_type: ct, ..Properties::default() }, ..Meta::default() };
        let v = line(&meta, &body);
        let (key, back) = body_of(&v);
        if key == "body" {
            let want: Value = serde_json::from_slice(&body).expect("was json");
            prop_assert_eq!(v["body"].clone(), want);
        } else {
            prop_assert_eq!(back, body);
        }
    }

    #[test]
    fn json_bodies_stay_json(s in "[ \n]{0,3}\\{\"k\":[ \n]{0,2}\"[a-z ]{0,8}\"\\}[ \n]{0,3}") {
        let v = line(&Meta::default(), s.as_bytes());
        let want: Value = serde_json::from_str(&s).expect("json");
        prop_assert_eq!(v["body"].clone(), want);
    }
}

#[test]
fn a_body_nested_deeper_than_readers_take_goes_as_text() {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert_eq!(nesting(deep.as_bytes()), 5000);
    assert_eq!(nesting(br#"{"a":"[[[[","b":[{"c":"\"]"}]}"#), 3);
    let mut out = Vec::new();
    write_body(&mut out, Some("application/json"), deep.as_bytes());
    let line = String::from_utf8(out).expect("utf-8");
    assert!(line.starts_with("\"body_text\":"), "{}", &line[..40]);
    let mut out = Vec::new();
    let shallow = format!("{}{}", "[".repeat(100), "]".repeat(100));
    write_body(&mut out, Some("application/json"), shallow.as_bytes());
    assert!(out.starts_with(b"\"body\":["));
}

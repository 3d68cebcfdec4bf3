//! `--exchange`, `--routing-key`, `--header` and `--property` validation.

use super::*;
use crate::cli::Cli;
use crate::config::{Action, Config};
use clap::Parser;

/// The checked `Publish` of `produce tabular --file x.csv ARGS`, or the usage error's text.
fn publish_of(args: &[&str]) -> Result<Publish, String> {
    let mut all = vec!["mqdemo", "produce", "tabular", "--file", "x.csv"];
    all.extend_from_slice(args);
    match Config::from_cli(Cli::try_parse_from(all).expect("parses")) {
        Ok(Config { action: Action::Produce(p), .. }) => Ok(p.publish),
        Ok(_) => panic!("not a produce config"),
        Err(e) => Err(e.0),
    }
}

fn headers(args: &[&str]) -> Vec<(String, HeaderField)> {
    let mut all = Vec::new();
    for a in args {
        all.extend(["--header", a]);
    }
    publish_of(&all).expect("valid headers").target.headers
}

fn refused(args: &[&str], needles: &[&str]) {
    let err = publish_of(args).expect_err("refused");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn without_flags_nothing_changes() {
    assert_eq!(publish_of(&[]).expect("plain"), Publish::default());
}

#[test]
fn header_values_are_typed_as_written() {
    let h = headers(&["n=42", "neg=-7", "zip=007", "plus=+1", "t=true", "f=false", "T=True"]);
    let h2 = headers(&["dec=1.5", "empty=", "eq=a=b", "big=9223372036854775808"]);
    let want = [
        ("n", HeaderField::Int(42)),
        ("neg", HeaderField::Int(-7)),
        ("zip", HeaderField::Str("007".into())),
        ("plus", HeaderField::Str("+1".into())),
        ("t", HeaderField::Bool(true)),
        ("f", HeaderField::Bool(false)),
        ("T", HeaderField::Str("True".into())),
        ("dec", HeaderField::Str("1.5".into())),
        ("empty", HeaderField::Str(String::new())),
        ("eq", HeaderField::Str("a=b".into())),
        ("big", HeaderField::Str("9223372036854775808".into())),
    ];
    let got: Vec<_> = h.into_iter().chain(h2).collect();
    let want: Vec<_> = want.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    assert_eq!(got, want);
}

#[test]
fn a_type_suffix_picks_the_type() {
    let h = headers(&["s:str=42", "n:int=007", "b:bool=TRUE", "w:float=0.25", "urn:x:string=v"]);
    assert_eq!(
        h,
        [
            ("s".to_string(), HeaderField::Str("42".into())),
            ("n".to_string(), HeaderField::Int(7)),
            ("b".to_string(), HeaderField::Bool(true)),
            ("w".to_string(), HeaderField::Float(0.25)),
            ("urn:x".to_string(), HeaderField::Str("v".into())),
        ]
    );
    refused(&["--header", "n:int=seven"], &["--header n:int=seven", "whole number"]);
    refused(&["--header", "b:bool=yes"], &["true or false"]);
    refused(&["--header", "w:float=NaN"], &["finite"]);
    refused(&["--header", "a:b=1"], &["unknown type \"b\"", "NAME:str=VALUE"]);
    refused(&["--header", "model"], &["--header model", "NAME=VALUE"]);
    refused(&["--header", "=v"], &["1 to 255 bytes"]);
    refused(&["--header", "m=1", "--header", "m=2"], &["--header m", "twice"]);
}

/// Every header a codec writes, from real encodes of each kind.
fn codec_headers() -> Vec<String> {
    use crate::codec::{image, tabular, text};
    let row = tabular::Encoder::new("a.csv", ["x"]);
    let fields = csv::StringRecord::from(vec!["1"]);
    let mut msgs = vec![
        row.encode_row(&fields, 1).expect("row"),
        row.encode_batch(b"[{}]".to_vec(), 1, 1),
        text::encode_file("a.txt", b"hi\n".to_vec()).expect("text"),
    ];
    let mut digest = text::FileDigest::default();
    digest.update(b"hi\n");
    msgs.push(text::encode_line("a.txt", &digest.finish(), 1, 0, b"hi\n".to_vec()).expect("line"));
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    msgs.push(image::encode("a.gif", gif).expect("image"));
    msgs.iter().flat_map(|m| m.headers.keys().cloned()).collect()
}

#[test]
fn every_header_of_the_wire_format_is_refused() {
    let names = codec_headers();
    for name in ["source", "row", "rows", "sha256", "line", "file_sha256", "width", "height"] {
        assert!(names.iter().any(|n| n == name), "the encodes cover {name}: {names:?}");
    }
    for name in names {
        refused(&["--header", &format!("{name}=x")], &[&format!("\"{name}\""), "wire format"]);
    }
    refused(&["--header", "x-mqdemo-error=x"], &["wire format"]);
    refused(&["--header", "X-MQDEMO-Deadline:int=5"], &["wire format"]);
    refused(&["--header", "CC=q2"], &["array of routing keys"]);
    // Names that only look alike are the user's.
    assert_eq!(headers(&["Source=x", "x-mqdemo=1"]).len(), 2);
}

#[test]
fn properties_are_checked_before_connecting() {
    let p = publish_of(&[
        "--property",
        "priority=255",
        "--property",
        "expiration=4294967295",
        "--property",
        "correlation-id=c1",
        "--property",
        "TYPE=order.created",
        "--property",
        "timestamp=1700000000",
        "--property",
        "delivery_mode=2",
    ])
    .expect("valid")
    .target
    .properties;
    assert_eq!(p.priority, Some(255));
    assert_eq!(p.expiration.as_deref(), Some("4294967295"));
    assert_eq!(p.correlation_id.as_deref(), Some("c1"));
    assert_eq!(p.type_.as_deref(), Some("order.created"));
    assert_eq!(p.timestamp, Some(1_700_000_000));
    for bad in ["256", "-1", "", "high"] {
        refused(&["--property", &format!("priority={bad}")], &["0 to 255"]);
    }
    for bad in ["4294967296", "-1", "1.5", "", " 5", "1e3"] {
        refused(&["--property", &format!("expiration={bad}")], &["milliseconds"]);
    }
    refused(&["--property", "timestamp=now"], &["seconds since"]);
    let empty = publish_of(&["--property", "app_id="]).expect("an empty string is a value");
    assert_eq!(empty.target.properties.app_id.as_deref(), Some(""));
}

#[test]
fn wire_format_properties_are_refused_with_the_reason() {
    refused(&["--property", "message_id=m1"], &["--property message_id=m1", "--new-ids"]);
    refused(&["--property", "delivery_mode=1"], &["persistent", "lost on a broker restart"]);
    refused(&["--property", "content_type=text/csv"], &["wire format"]);
    refused(&["--property", "headers=x"], &["--header"]);
    refused(&["--property", "cluster_id=x"], &["unknown property", SETTABLE]);
    refused(&["--property", "priority"], &["NAME=VALUE"]);
    refused(&["--property", "priority=1", "--property", "priority=2"], &["twice"]);
    refused(&["--property", &format!("reply_to={}", "q".repeat(256))], &["at most 255"]);
    refused(&["--property", "reply_to=amq.rabbitmq.reply-to"], &["direct reply-to", "request"]);
}

#[test]
fn the_exchange_decides_what_is_declared_and_routed() {
    let p = publish_of(&["--exchange", "events"]).expect("exchange");
    assert_eq!(p.target.exchange.as_deref(), Some("events"));
    assert_eq!(p.target.routing_key.as_deref(), Some("alicpp_records"), "the queue name");
    assert!(!p.declare_queue, "no --queue: nothing declared");
    let p = publish_of(&["--exchange", "events", "--queue", "q", "--routing-key", "a.b"])
        .expect("exchange and queue");
    assert_eq!(p.target.routing_key.as_deref(), Some("a.b"));
    assert!(p.declare_queue);
    let p = publish_of(&["--exchange", "amq.default", "--routing-key", "q"]).expect("default");
    assert_eq!(p.target.exchange.as_deref(), Some(""));
    refused(&["--routing-key", "a.b"], &["--routing-key a.b", "--exchange"]);
    refused(&["--exchange", "e", "--max-length", "5"], &["--max-length", "--queue NAME"]);
    refused(&["--exchange", &"e".repeat(256)], &["at most 255"]);
    refused(&["--header", &format!("big={}", "x".repeat(MAX_PROPERTY_BYTES))], &["one AMQP frame"]);
}

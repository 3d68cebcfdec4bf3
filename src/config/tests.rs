//! Validation tests.

use super::urls::broker_urls;
use super::values::{delimiter, encoding};
use super::*;
use clap::Parser;
use std::path::Path;

fn config(args: &[&str]) -> Result<Config, UsageError> {
    let mut all = vec!["mqdemo"];
    all.extend_from_slice(args);
    Config::from_cli(Cli::try_parse_from(all).expect("parses"))
}

#[test]
fn url_lists_split_only_where_a_new_url_begins() {
    assert_eq!(split_urls("amqp://a,amqp://b,amqps://c"), ["amqp://a", "amqp://b", "amqps://c"]);
    // A comma, `@` or `amqp` inside a password stays in its URL.
    assert_eq!(
        split_urls("amqp://u:a,b@h1/%2f,AMQPS://u:x@amqp,y@h2"),
        ["amqp://u:a,b@h1/%2f", "AMQPS://u:x@amqp,y@h2"]
    );
    assert_eq!(split_urls("amqp://u:p,,q@h"), ["amqp://u:p,,q@h"]);
    // A file: one URL a line, trailing newline and blank lines ignored.
    assert_eq!(split_urls("amqp://a\r\namqp://b\n\n"), ["amqp://a", "amqp://b"]);
    assert_eq!(split_urls(" amqp://a , amqp://b ,"), ["amqp://a", "amqp://b"]);
    assert!(split_urls("\n").is_empty());
}

#[test]
fn url_and_url_file_are_not_both_taken() {
    let err = broker_urls(&["amqp://h".into()], Some(Path::new("f"))).expect_err("both");
    assert!(err.0.contains("--url-file"), "{}", err.0);
    assert_eq!(broker_urls(&[], None).expect("default"), [cli::DEFAULT_URL]);
}

#[test]
fn defaults_follow_the_original_demo() {
    let Ok(Config { action: Action::Consume(c), .. }) = config(&["consume", "image"]) else {
        panic!("consume image");
    };
    assert_eq!(c.queue, QueueSpec { delivery_limit: Some(20), ..QueueSpec::plain("image_queue") });
    assert!(
        matches!(c.sink, SinkConfig::Directory(ref d) if d == &PathBuf::from("received_images"))
    );
    let Ok(Config { action: Action::Produce(p), .. }) =
        config(&["produce", "tabular", "--file", "a.csv"])
    else {
        panic!("produce tabular");
    };
    assert_eq!(p.queue.name, "alicpp_records");
    assert!(p.queue.arguments().is_empty(), "no arguments unless asked for");
}

#[test]
fn bad_values_are_usage_errors() {
    assert!(config(&["consume", "text", "--idle-timeout", "0"]).is_err());
    // A negative duration is refused while parsing, naming the accepted forms.
    let err = Cli::try_parse_from(["mqdemo", "produce", "text", "--interval=-1"]).expect_err("-1");
    assert!(err.to_string().contains("500ms, 5s, 2m"), "{err}");
    assert!(config(&["produce", "text", "--queue", ""]).is_err());
    assert!(config(&["produce", "text", "--queue", "amq.x"]).is_err());
    assert!(config(&["--url", "http://x", "demo"]).is_err());
}

#[test]
fn csv_delimiters_and_encodings() {
    for (given, want) in [(";", b';'), ("|", b'|'), ("tab", b'\t'), ("\\t", b'\t'), ("\t", b'\t')] {
        assert_eq!(delimiter(given).ok(), Some(want), "{given:?}");
    }
    for bad in ["", ";;", "\"", "\n", "é"] {
        assert!(delimiter(bad).is_err(), "{bad:?}");
    }
    assert_eq!(encoding("latin1").ok().flatten(), Some(encoding_rs::WINDOWS_1252));
    assert_eq!(encoding("UTF-8").ok(), Some(None));
    assert!(encoding("klingon").is_err() && encoding("iso-2022-kr").is_err());
    assert!(config(&["consume", "tabular", "--no-header"]).is_err(), "needs --format csv");
    let Ok(Config { action: Action::Consume(c), .. }) =
        config(&["consume", "tabular", "--format", "csv", "--delimiter", "tab"])
    else {
        panic!("consume csv");
    };
    assert!(matches!(
        c.sink,
        SinkConfig::Rows { format: RowFormat::Csv { delimiter: b'\t', header: true }, .. }
    ));
}

#[test]
fn rows_format_and_the_csv_only_flags_are_checked() {
    let format = |args: &[&str]| -> Result<CsvFormat, UsageError> {
        let mut all = vec!["produce", "tabular", "--file", "x"];
        all.extend_from_slice(args);
        match config(&all)?.action {
            Action::Produce(ProduceConfig { source: Source::Csv { format, .. }, .. }) => Ok(format),
            _ => panic!("produce tabular"),
        }
    };
    let detected = format(&[]).expect("plain");
    assert_eq!((detected.rows, detected.csv_flag), (RowsFormat::Detect, None));
    let tsv = format(&["--delimiter", "tab", "--no-header"]).expect("csv flags");
    assert_eq!((tsv.rows, tsv.csv_flag), (RowsFormat::Detect, Some("--no-header")));
    assert_eq!(format(&["--format", "csv"]).expect("csv").rows, RowsFormat::Csv);
    let jsonl = format(&["--format", "jsonl", "--skip-rows", "2"]).expect("skip-rows is fine");
    assert_eq!((jsonl.rows, jsonl.skip_rows), (RowsFormat::Jsonl, 2));
    for flag in [&["--no-header"][..], &["--delimiter", ";"], &["--encoding", "latin1"]] {
        let err = format(&[&["--format", "jsonl"][..], flag].concat()).expect_err("csv only");
        assert!(err.0.starts_with(flag[0]) && err.0.contains(&format!("drop {}", flag[0])));
    }
}

#[test]
fn stdin_is_read_once_so_repeat_is_refused_and_globs_are_checked() {
    let err = config(&["produce", "tabular", "--file", "-", "--repeat"]).expect_err("repeat");
    assert!(err.0.starts_with("--repeat with --file -"), "{}", err.0);
    assert!(config(&["produce", "tabular", "--file", "-"]).is_ok());
    let err = config(&["produce", "image", "--include", "a{b"]).expect_err("bad glob");
    assert!(err.0.starts_with("--include \"a{b\""), "{}", err.0);
    let err = config(&["produce", "text", "--include", "*.txt", "--include", "["]).expect_err("[");
    assert!(err.0.starts_with("--include \"[\""), "{}", err.0);
}

#[test]
fn metrics_addr_is_host_and_port_on_the_long_running_commands() {
    let global = |args: &[&str]| config(args).map(|c| c.global.metrics_addr);
    let addr = global(&["consume", "text", "--metrics-addr", "127.0.0.1:9090"]).expect("valid");
    assert_eq!(addr, Some("127.0.0.1:9090".parse().expect("addr")));
    let v6 =
        global(&["pipe", "--from", "a", "--to", "b", "--exec", "cat", "--metrics-addr", "[::1]:9"]);
    assert_eq!(v6.expect("valid"), Some("[::1]:9".parse().expect("addr")));
    let named = global(&["serve", "--exec", "cat", "--metrics-addr", "localhost:9090"]);
    assert!(named.expect("localhost resolves").is_some_and(|a| a.port() == 9090));
    assert_eq!(global(&["consume", "tabular"]).expect("off by default"), None);
    for bad in ["9090", ":9090", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "no such host!:1"]
    {
        let err = global(&["consume", "tabular", "--metrics-addr", bad]).expect_err(bad);
        assert!(err.0.starts_with(&format!("--metrics-addr {bad:?}:")), "{}", err.0);
        assert!(err.0.contains("e.g. --metrics-addr 127.0.0.1:9090"), "{}", err.0);
    }
}

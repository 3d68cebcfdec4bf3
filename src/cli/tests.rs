//! Parsing tests of the command line.

use super::*;
use clap::CommandFactory;

#[test]
fn verify_cli() {
    Cli::command().debug_assert();
}

#[test]
fn original_demo_spellings_parse() {
    let cli = Cli::try_parse_from([
        "mqdemo",
        "--rabbitmq_server",
        "rabbit",
        "produce",
        "tabular",
        "--file",
        "x.csv",
        "--queue_name",
        "q",
        "--num_records",
        "5",
    ])
    .expect("original spellings parse");
    assert_eq!(cli.global.rabbitmq_server.as_deref(), Some("rabbit"));
    let Command::Produce(ProduceCommand::Tabular(t)) = cli.command else {
        panic!("wrong command");
    };
    assert_eq!(t.num_records, Some(5));
    assert_eq!(t.common.queue.as_deref(), Some("q"));
}

#[test]
fn url_may_repeat_and_is_kept_whole() {
    // Lists are split by config::split_urls, which knows where a new URL begins.
    let cli = Cli::try_parse_from([
        "mqdemo",
        "--url",
        "amqp://a",
        "--url",
        "amqp://u:x,y@b,amqp://c",
        "demo",
    ])
    .expect("parses");
    assert_eq!(cli.global.url, ["amqp://a", "amqp://u:x,y@b,amqp://c"]);
}

#[test]
fn global_flags_after_subcommand() {
    let cli = Cli::try_parse_from([
        "mqdemo",
        "consume",
        "image",
        "--output_directory",
        "out",
        "--url",
        "amqp://h",
        "-q",
    ])
    .expect("parses");
    assert_eq!(cli.global.url, ["amqp://h"]);
    assert!(cli.global.quiet);
}

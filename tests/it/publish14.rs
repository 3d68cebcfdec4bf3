//! Issue 14, item 4: publishing like a RabbitMQ user: `produce --exchange --routing-key
//! --header --property`, against exchanges and bindings made here with a plain AMQP client.

use crate::support::header_of as header;
use crate::support::queue_exists as exists;
use crate::support::{TestQueue, connect, data, mqdemo, s, url, wait_until};
use amiquip::{AmqpValue, ExchangeDeclareOptions, ExchangeType, FieldTable};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// An exchange no other test uses, deleted on drop.
struct TestExchange {
    name: String,
}

impl TestExchange {
    fn new(test: &str, kind: ExchangeType) -> TestExchange {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("it-x-{test}-{}-{n}", std::process::id());
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        ch.exchange_declare(kind, name.clone(), ExchangeDeclareOptions::default())
            .expect("declare exchange");
        let _ = conn.close();
        TestExchange { name }
    }

    /// Declare `q` (durable, as mqdemo does) and bind it with `key` and `args`.
    fn bind(&self, q: &TestQueue, key: &str, args: FieldTable) {
        let mut conn = connect();
        let ch = conn.open_channel(None).expect("channel");
        let durable = amiquip::QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(q.name.clone(), durable).expect("declare queue");
        ch.queue_bind(q.name.clone(), self.name.clone(), key, args).expect("bind");
        let _ = conn.close();
    }

    fn delete(&self) {
        let mut conn = connect();
        if let Ok(ch) = conn.open_channel(None) {
            let _ = ch.exchange_delete(self.name.clone(), Default::default());
        }
        let _ = conn.close();
    }
}

impl Drop for TestExchange {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `produce tabular` of the sample's first `rows` rows with `extra` arguments.
fn produce_rows(rows: &str, extra: &[&str]) -> crate::support::Mqdemo {
    let file = data("tabular_data.csv");
    let mut args = vec!["produce", "tabular", "--file", s(&file), "--num-records", rows];
    args.extend_from_slice(extra);
    mqdemo(&args)
}

#[test]
fn fanout_direct_and_topic_exchanges_route_every_message_to_each_bound_queue() {
    let cases = [
        (ExchangeType::Fanout, ["", ""], "anything"),
        (ExchangeType::Direct, ["k", "k"], "k"),
        (ExchangeType::Topic, ["sensors.*.temp", "sensors.#"], "sensors.eu.temp"),
    ];
    for (kind, keys, key) in cases {
        let x = TestExchange::new("route", kind);
        let (a, b) = (TestQueue::new("route-a"), TestQueue::new("route-b"));
        x.bind(&a, keys[0], FieldTable::new());
        x.bind(&b, keys[1], FieldTable::new());
        // Without --queue nothing is declared: the routing key names no queue.
        let unused = TestQueue::new("route-none");
        produce_rows("5", &["--exchange", &x.name, "--routing-key", key])
            .run()
            .expect_code(0)
            .stderr_has("produced 5 messages");
        for q in [&a, &b] {
            assert_eq!(q.depth(), 5, "{} via {}", q.name, x.name);
            let d = q.get().expect("a message");
            assert_eq!(header(&d, "row"), Some(&AmqpValue::LongLongInt(1)));
        }
        assert!(!exists(&unused.name));
        // The routing key defaults to the queue name (here: the default, not declared).
        if key == "anything" {
            produce_rows("2", &["--exchange", &x.name]).run().expect_code(0);
            assert_eq!((a.depth(), b.depth()), (6, 6));
        }
    }
}

#[test]
fn image_and_text_producers_publish_to_an_exchange_too() {
    let x = TestExchange::new("files", ExchangeType::Fanout);
    let (a, b) = (TestQueue::new("files-a"), TestQueue::new("files-b"));
    x.bind(&a, "", FieldTable::new());
    x.bind(&b, "", FieldTable::new());
    let images = data("images");
    mqdemo(&["produce", "image", "--directory", s(&images), "--exchange", &x.name])
        .run()
        .expect_code(0);
    let texts = data("texts");
    let text = ["produce", "text", "--directory", s(&texts), "--split", "line"];
    mqdemo(&[&text[..], &["--exchange", &x.name, "--header", "set=train"]].concat())
        .run()
        .expect_code(0);
    assert!(a.depth() > 5 && a.depth() == b.depth(), "{} {}", a.depth(), b.depth());
    let d = a.get().expect("an image");
    assert!(d.properties.content_type().as_deref().is_some_and(|t| t.starts_with("image/")));
}

/// The user name mqdemo logs in as (RabbitMQ accepts only it as user_id).
fn login() -> String {
    let parsed = url::Url::parse(&url()).expect("AMQP_URL");
    match parsed.username() {
        "" => "guest".into(),
        user => user.into(),
    }
}

#[test]
fn headers_and_properties_reach_the_consumer_exactly() {
    let q = TestQueue::new("props");
    let user = login();
    let user_id = format!("user_id={user}");
    produce_rows(
        "2",
        &[
            "--queue",
            &q.name,
            "--header",
            "model=v2",
            "--header",
            "n=42",
            "--header",
            "zip=007",
            "--header",
            "ok=true",
            "--header",
            "w:float=0.25",
            "--header",
            "id:str=42",
            "--header",
            "urn:x:str=a=b",
            "--property",
            "priority=7",
            "--property",
            "expiration=600000",
            "--property",
            "correlation_id=batch-1",
            "--property",
            "reply-to=answers",
            "--property",
            "type=order.created",
            "--property",
            "app_id=ingest",
            "--property",
            &user_id,
            "--property",
            "timestamp=1700000000",
        ],
    )
    .run()
    .expect_code(0);
    let d = q.get().expect("a message");
    let want = [
        ("model", AmqpValue::LongString("v2".into())),
        ("n", AmqpValue::LongLongInt(42)),
        ("zip", AmqpValue::LongString("007".into())),
        ("ok", AmqpValue::Boolean(true)),
        ("w", AmqpValue::Double(0.25)),
        ("id", AmqpValue::LongString("42".into())),
        ("urn:x", AmqpValue::LongString("a=b".into())),
        ("source", AmqpValue::LongString("tabular_data.csv".into())),
        ("row", AmqpValue::LongLongInt(1)),
    ];
    for (name, value) in want {
        assert_eq!(header(&d, name), Some(&value), "header {name}");
    }
    let p = &d.properties;
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.expiration().as_deref(), Some("600000"));
    assert_eq!(p.correlation_id().as_deref(), Some("batch-1"));
    assert_eq!(p.reply_to().as_deref(), Some("answers"));
    assert_eq!(p.type_().as_deref(), Some("order.created"));
    assert_eq!(p.app_id().as_deref(), Some("ingest"));
    assert_eq!(p.user_id().as_deref(), Some(user.as_str()));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    // The wire format is kept: persistent, typed content, a deterministic id.
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(p.content_type().as_deref(), Some("application/json"));
    assert_eq!(p.message_id().as_ref().map(String::len), Some(32));
}

#[test]
fn a_headers_exchange_routes_by_the_typed_values() {
    let x = TestExchange::new("match", ExchangeType::Headers);
    let q = TestQueue::new("match");
    let mut args = FieldTable::new();
    args.insert("x-match".into(), AmqpValue::LongString("all".into()));
    args.insert("model".into(), AmqpValue::LongString("v2".into()));
    args.insert("shard".into(), AmqpValue::LongLongInt(3));
    x.bind(&q, "", args);
    produce_rows("3", &["--exchange", &x.name, "--header", "model=v2", "--header", "shard=3"])
        .run()
        .expect_code(0);
    assert_eq!(q.depth(), 3);
    // The string "3" is not the integer 3: nothing matches, and the run says so.
    let typed = ["--header", "model=v2", "--header", "shard:str=3"];
    let out = produce_rows("3", &[&["--exchange", x.name.as_str()][..], &typed].concat())
        .run()
        .expect_code(1);
    assert!(out.stderr.contains(&format!("exchange '{}' routes", x.name)), "{}", out.stderr);
    assert_eq!(q.depth(), 3);
}

#[test]
fn a_missing_exchange_is_named_with_the_fix_before_anything_is_read() {
    let name = format!("it-x-missing-{}", std::process::id());
    let out = produce_rows("3", &["--exchange", &name]).run().expect_code(1);
    let first = out.first_error_line();
    let missing = format!("exchange '{name}' does not exist");
    for needle in [missing.as_str(), "--exchange", "declare it"] {
        assert!(first.contains(needle), "first line lacks {needle:?}:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("produced"), "it stops before producing:\n{}", out.stderr);
}

/// A run to an exchange and key that route nowhere ends, promptly, naming both.
fn routes_nowhere(extra: &[&str], exchange: &str, key: &str) {
    let started = Instant::now();
    let mut args = vec!["--exchange", exchange, "--routing-key", key];
    args.extend_from_slice(extra);
    let out = produce_rows("300", &args).run().expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let last = out.stderr.lines().last().unwrap_or("");
    let error = if exchange.is_empty() || exchange == "amq.default" {
        format!("no queue named '{key}' for the default exchange")
    } else {
        format!("exchange '{exchange}' routes routing key '{key}' to no queue")
    };
    assert!(last.contains(&error) && last.contains("NO_ROUTE"), "{}", out.stderr);
    let named = out.stderr.lines().filter(|l| l.contains("not delivered:")).count();
    assert!(named <= 10, "{named} refused messages named one by one:\n{}", out.stderr);
    assert!(!out.stderr.contains("produced 300"), "{}", out.stderr);
}

#[test]
fn an_exchange_that_routes_nowhere_ends_with_a_clear_error_not_a_hang() {
    let x = TestExchange::new("nowhere", ExchangeType::Direct);
    let q = TestQueue::new("nowhere");
    x.bind(&q, "bound", FieldTable::new());
    routes_nowhere(&[], &x.name, "unbound");
    routes_nowhere(&["--retry-for", "0"], &x.name, "unbound");
    assert_eq!(q.depth(), 0);
    // The default exchange named explicitly, to a queue that does not exist.
    let absent = TestQueue::new("absent");
    routes_nowhere(&[], "", &absent.name);
    routes_nowhere(&[], "amq.default", &absent.name);
    assert!(!exists(&absent.name));
}

#[test]
fn with_exchange_and_queue_the_queue_is_declared_but_not_bound() {
    let x = TestExchange::new("nobind", ExchangeType::Direct);
    let q = TestQueue::new("nobind");
    let out = produce_rows("2", &["--exchange", &x.name, "--queue", &q.name]).run();
    let out = out.expect_code(1);
    assert!(exists(&q.name), "declared");
    assert_eq!(q.depth(), 0, "not bound: {}", out.stderr);
    assert!(out.stderr.contains("mqdemo creates no bindings"), "{}", out.stderr);
    // Bound by its owner, the same command delivers (the routing key is the queue name).
    x.bind(&q, &q.name, FieldTable::new());
    produce_rows("2", &["--exchange", &x.name, "--queue", &q.name]).run().expect_code(0);
    assert_eq!(q.depth(), 2);
}

#[test]
fn an_exchange_deleted_mid_run_stops_it_naming_the_exchange() {
    let x = TestExchange::new("gone", ExchangeType::Fanout);
    let q = TestQueue::new("gone");
    x.bind(&q, "", FieldTable::new());
    let run = produce_rows("300", &["--exchange", &x.name, "--interval", "0.05"]).watch();
    wait_until(Duration::from_secs(20), "first rows routed", || q.depth() >= 2);
    x.delete();
    let out = run.finish(Duration::from_secs(20)).expect_code(1);
    let error = format!("exchange '{}' does not exist", x.name);
    assert!(out.stderr.contains(&error), "{}", out.stderr);
    assert!(!out.stderr.contains("produced 300"), "{}", out.stderr);
}

#[test]
fn bad_publishing_options_are_usage_errors_before_connecting() {
    // Nothing listens on port 1: a run that connected would fail differently.
    let cases: [(&[&str], &str); 9] = [
        (&["--header", "source=x"], "--header source=x: \"source\" is a header of mqdemo's"),
        (&["--header", "x-mqdemo-error=x"], "wire format"),
        (&["--property", "bogus=1"], "the ones you can set are: priority, expiration"),
        (&["--property", "priority=300"], "--property priority=300: give a whole number"),
        (&["--property", "expiration=-5"], "milliseconds"),
        (&["--property", "message_id=abc"], "--new-ids"),
        (&["--property", "delivery_mode=1"], "persistent"),
        (&["--routing-key", "k"], "--routing-key k: only with --exchange"),
        (&["--property", "reply_to=amq.rabbitmq.reply-to"], "direct reply-to"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--url", "amqp://127.0.0.1:1/%2f"];
        args.extend_from_slice(extra);
        let out = produce_rows("1", &args).run().expect_code(2);
        assert!(out.first_error_line().contains(needle), "{extra:?}:\n{}", out.stderr);
    }
}

#[test]
fn a_user_id_the_broker_refuses_is_named() {
    let q = TestQueue::new("userid");
    let out = produce_rows("2", &["--queue", &q.name, "--property", "user_id=it-nobody"]).run();
    let out = out.expect_code(1);
    assert!(
        out.stderr.contains("--property user_id=it-nobody: RabbitMQ accepts only"),
        "{}",
        out.stderr
    );
    assert_eq!(q.depth(), 0);
}

#[test]
fn an_internal_exchange_is_refused_naming_it() {
    let name = format!("it-x-internal-{}", std::process::id());
    let x = TestExchange { name: name.clone() };
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    ch.exchange_declare(ExchangeType::Fanout, name.clone(), internal).expect("declare");
    let _ = conn.close();
    let out = produce_rows("3", &["--exchange", &x.name]).run().expect_code(1);
    let refused = format!("not allowed to publish to exchange '{name}'");
    assert!(out.stderr.contains(&refused) && out.stderr.contains("internal"), "{}", out.stderr);
}

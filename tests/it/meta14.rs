//! Issue 14, item 3 (metadata out): `consume tabular --format envelope` on any queue,
//! `--with-meta` columns that trace a model's answer to its input file, and a model that
//! receives the message's headers (`pipe --framing envelope`). Real broker, real binary,
//! real python3 models.

use crate::stage_kit::pipe;
use crate::support::{TestQueue, data, mqdemo, s, tree, wait};
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Copies of the sample images under names with spaces, unicode and a subdirectory.
fn image_dir(root: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = root.join("imgs");
    let picks = [
        ("gradient.png", "my gradient.png"),
        ("cat_like.jpg", "chat-é.jpg"),
        ("shapes/circle.png", "shapes/circle.png"),
    ];
    for (from, to) in picks {
        let target = dir.join(to);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(data("images").join(from), target).expect("copy image");
    }
    tree(&dir)
}

fn produce_images(root: &Path, q: &TestQueue) {
    let dir = root.join("imgs");
    mqdemo(&["produce", "image", "--directory", s(&dir), "--queue", &q.name]).run().expect_code(0);
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
}

/// A python3 model in `dir`, run as `python3 PATH`.
fn model(dir: &Path, name: &str, code: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, code).expect("write model");
    format!("python3 '{}'", s(&path))
}

#[test]
fn envelope_reads_an_image_queue_whole_once_per_message() {
    let q = TestQueue::new("env-img");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = image_dir(dir.path());
    produce_images(dir.path(), &q);
    produce_images(dir.path(), &q); // the same messages again: written once
    let out_file = dir.path().join("env.jsonl");
    let args = ["consume", "tabular", "--queue", &q.name, "--format", "envelope"];
    let extra = ["--output", s(&out_file), "--idle-timeout", "2", "--workers", "2"];
    mqdemo(&[&args[..], &extra].concat()).run().expect_code(0);
    let lines = json_lines(&std::fs::read_to_string(&out_file).expect("output"));
    assert_eq!(lines.len(), files.len(), "one line per distinct message");
    for m in &lines {
        let source = m["headers"]["source"].as_str().expect("source header");
        let (_, bytes) = files.iter().find(|(name, _)| name == source).expect("a produced file");
        let body = STANDARD.decode(m["body_base64"].as_str().expect("base64 body")).expect("b64");
        assert_eq!(&body, bytes, "{source}: the body is the file");
        assert_eq!(m["properties"]["type"], "image");
        assert_eq!(m["properties"]["delivery_mode"], 2);
        assert!(m["properties"]["timestamp"].is_u64());
        assert_eq!(m["headers"]["size"], bytes.len());
        assert_eq!(m["routing_key"], q.name.as_str());
        assert_eq!(m["exchange"], "");
    }
    assert_eq!(q.depth(), 0, "every message acked");
}

#[test]
fn envelope_maps_every_header_type_and_any_producers_body() {
    let q = TestQueue::new("env-any");
    let mut nested = FieldTable::new();
    nested.insert("deep".into(), AmqpValue::FieldArray(vec![AmqpValue::Boolean(false)]));
    let mut h = FieldTable::new();
    h.insert("str".into(), AmqpValue::LongString("héllo\n".into()));
    h.insert("i8".into(), AmqpValue::ShortShortInt(-5));
    h.insert("u32".into(), AmqpValue::LongUInt(u32::MAX));
    h.insert("i64".into(), AmqpValue::LongLongInt(i64::MIN));
    h.insert("bool".into(), AmqpValue::Boolean(true));
    h.insert("f32".into(), AmqpValue::Float(0.25));
    h.insert("f64".into(), AmqpValue::Double(-1.5e300));
    h.insert("ts".into(), AmqpValue::Timestamp(1_700_000_000));
    h.insert("bytes".into(), AmqpValue::ByteArray(vec![0, 1, 254, 255]));
    h.insert("table".into(), AmqpValue::FieldTable(nested));
    h.insert("void".into(), AmqpValue::Void);
    let props = AmqpProperties::default()
        .with_headers(h)
        .with_message_id("m-json".into())
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_reply_to("somewhere".into())
        .with_priority(7)
        .with_expiration("600000".into())
        .with_user_id("guest".into())
        .with_app_id("pika".into());
    let json = br#"{"id": 12345678901234567890123, "score": 0.10}"#;
    q.publish_raw(json, props);
    q.publish_raw(b"\xff\xd8\xff binary", AmqpProperties::default()); // nothing set
    q.publish_raw(b"42\n", AmqpProperties::default().with_content_type("text/plain".into()));
    let args = ["consume", "tabular", "--queue", &q.name, "--format", "envelope", "--count", "3"];
    let out = mqdemo(&args).run().expect_code(0);
    let first = out.stdout.lines().next().expect("a line");
    assert!(
        first.ends_with(r#""body":{"id": 12345678901234567890123, "score": 0.10}}"#),
        "the JSON body's own text: {first}"
    );
    let lines = json_lines(&out.stdout);
    let p = &lines[0]["properties"];
    assert_eq!(p["message_id"], "m-json");
    assert_eq!(p["correlation_id"], "c-1");
    assert_eq!((p["priority"].as_u64(), p["expiration"].as_str()), (Some(7), Some("600000")));
    assert_eq!((p["user_id"].as_str(), p["app_id"].as_str()), (Some("guest"), Some("pika")));
    let h = &lines[0]["headers"];
    assert_eq!(h["str"], "héllo\n");
    assert_eq!((h["i8"].as_i64(), h["u32"].as_u64()), (Some(-5), Some(u64::from(u32::MAX))));
    assert_eq!(h["i64"].as_i64(), Some(i64::MIN));
    assert_eq!((h["bool"].as_bool(), h["f32"].as_f64()), (Some(true), Some(0.25)));
    assert_eq!((h["f64"].as_f64(), h["ts"].as_u64()), (Some(-1.5e300), Some(1_700_000_000)));
    assert_eq!(h["bytes"]["base64"], STANDARD.encode([0, 1, 254, 255]));
    assert_eq!(h["table"], serde_json::json!({"deep": [false]}));
    assert!(h["void"].is_null());
    assert_eq!(lines[1]["properties"], serde_json::json!({}));
    assert_eq!(lines[1]["headers"], serde_json::json!({}));
    assert_eq!(lines[1]["body_base64"], STANDARD.encode(b"\xff\xd8\xff binary"));
    assert_eq!(lines[2]["body_text"], "42\n", "text stays text");
}

#[test]
fn envelope_refuses_with_meta_and_csv_shaping() {
    for extra in [&["--with-meta"][..], &["--delimiter", ";"]] {
        let args = ["consume", "tabular", "--format", "envelope"];
        let out = mqdemo(&[&args[..], extra].concat()).run().expect_code(2);
        assert!(out.first_error_line().contains(extra[0]), "{}", out.stderr);
    }
}

/// The issue's case: an image classification result must be traceable to its file. The
/// answers of a frames model keep the input's `source` header, and --with-meta stores it.
#[test]
fn sqlite_with_meta_traces_each_answer_to_its_image_file() {
    let (images, labels) = (TestQueue::new("meta-img"), TestQueue::new("meta-labels"));
    let dir = tempfile::tempdir().expect("tempdir");
    let files = image_dir(dir.path());
    produce_images(dir.path(), &images);
    let exec = model(
        dir.path(),
        "frames.py",
        "import json, struct, sys\n\
         i, o = sys.stdin.buffer, sys.stdout.buffer\n\
         while True:\n\
         \x20   head = i.read(4)\n\
         \x20   if len(head) < 4: break\n\
         \x20   body = i.read(struct.unpack('>I', head)[0])\n\
         \x20   out = json.dumps({'label': 'cat', 'bytes': len(body)}).encode()\n\
         \x20   o.write(struct.pack('>I', len(out)) + out); o.flush()\n",
    );
    let n = files.len().to_string();
    pipe(&images, &labels, &exec, &["--framing", "frames", "--count", &n]).run().expect_code(0);
    let db = dir.path().join("results.db");
    let args = ["consume", "tabular", "--queue", &labels.name, "--sqlite", s(&db)];
    mqdemo(&[&args[..], &["--with-meta", "--count", &n]].concat()).run().expect_code(0);
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let sql = "SELECT _mq_source, bytes, _mq_message_id, _mq_received_at, _mq_row, \
               _mq_correlation_id FROM results ORDER BY _mq_source";
    let mut stmt = conn.prepare(sql).expect("the meta columns exist");
    type Row = (String, i64, String, String, Option<i64>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), files.len());
    for ((source, bytes, id, at, row, corr), (name, content)) in rows.iter().zip(&files) {
        assert_eq!(source, name, "the answer names its image file");
        assert_eq!(*bytes, content.len() as i64, "{name}: the model saw this file");
        assert_eq!(id.len(), 32, "the answer's message id");
        assert!(at.ends_with('Z') && at.len() == 24, "RFC 3339 UTC with ms: {at}");
        assert_eq!((row, corr), (&None, &None), "images have no row, no correlation id");
    }
}

#[test]
fn with_meta_numbers_batch_rows_and_keeps_json_text() {
    let q = TestQueue::new("meta-jsonl");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("in put.csv");
    std::fs::write(&csv, "id,x\n1,0.10\n2,2.5\n3,\n4,007\n5,9\n").expect("csv");
    let args = ["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--batch-size", "2"];
    mqdemo(&args).run().expect_code(0);
    let args = ["consume", "tabular", "--queue", &q.name, "--with-meta", "--count", "3"];
    let out = mqdemo(&args).run().expect_code(0);
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5);
    for (i, row) in lines.iter().enumerate() {
        assert_eq!(row["_mq_row"], i + 1, "each row's own data row: {row}");
        assert_eq!(row["_mq_source"], "in put.csv");
        assert_eq!(row["id"], i + 1);
    }
    assert!(out.stdout.starts_with(r#"{"id":1,"x":"0.10","_mq_source""#), "{}", out.stdout);
    assert_eq!(lines[0]["_mq_message_id"], lines[1]["_mq_message_id"], "one batch message");
}

#[test]
fn with_meta_sends_a_row_with_a_meta_field_to_the_failed_queue() {
    let q = TestQueue::new("meta-clash");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("r.db");
    let id = |i: &str| AmqpProperties::default().with_message_id(i.into());
    q.publish_raw(br#"{"a":1}"#, id("ok1"));
    q.publish_raw(br#"{"a":2,"_MQ_Source":"mine"}"#, id("clash"));
    q.publish_raw(br#"{"a":3}"#, id("ok2"));
    let args = ["consume", "tabular", "--queue", &q.name, "--sqlite", s(&db), "--with-meta"];
    let out = mqdemo(&[&args[..], &["--count", "3"]].concat())
        .run()
        .expect_code(1)
        .stderr_has("_MQ_Source");
    let kept = failed.get().expect("the clashing message is kept");
    assert_eq!(kept.properties.message_id().as_deref(), Some("clash"), "{}", out.stderr);
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let n: i64 = conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 2, "the rows around it are stored");
}

/// A model that gets the headers: each answer names the file it was asked about.
#[test]
fn a_model_with_envelope_framing_echoes_each_input_file_name() {
    let (images, answers) = (TestQueue::new("envpipe-in"), TestQueue::new("envpipe-out"));
    let dir = tempfile::tempdir().expect("tempdir");
    let files = image_dir(dir.path());
    produce_images(dir.path(), &images);
    let exec = model(
        dir.path(),
        "echo source.py",
        "import base64, json, sys\n\
         for line in sys.stdin:\n\
         \x20   m = json.loads(line)\n\
         \x20   body = base64.b64decode(m['body_base64'])\n\
         \x20   print(json.dumps({'file': m['headers']['source'], 'bytes': len(body),\n\
         \x20                     'type': m['properties']['type']}), flush=True)\n",
    );
    let n = files.len().to_string();
    pipe(&images, &answers, &exec, &["--framing", "envelope", "--count", &n]).run().expect_code(0);
    let args = ["consume", "tabular", "--queue", &answers.name, "--count", &n];
    let out = mqdemo(&args).run().expect_code(0);
    let mut got: Vec<(String, u64)> = json_lines(&out.stdout)
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "image");
            (a["file"].as_str().expect("file").to_string(), a["bytes"].as_u64().expect("n"))
        })
        .collect();
    got.sort();
    let want: Vec<(String, u64)> =
        files.iter().map(|(name, bytes)| (name.clone(), bytes.len() as u64)).collect();
    assert_eq!(got, want, "every answer names its own file");
}

/// `consume --format envelope | head -c 1000`: a closed pipe ends the run with exit 0, and
/// the envelopes nobody read stay queued.
#[test]
fn envelopes_a_pipe_reader_never_read_stay_queued() {
    let q = TestQueue::new("env-head");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = image_dir(dir.path());
    for _ in 0..3 {
        // New ids each time: 3 x 3 distinct messages of over 600 bytes of envelope each.
        let imgs = dir.path().join("imgs");
        let args = ["produce", "image", "--directory", s(&imgs), "--queue", &q.name, "--new-ids"];
        mqdemo(&args).run().expect_code(0);
    }
    let total = 3 * files.len() as u32;
    let mut head = Command::new("head")
        .args(["-c", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("head runs");
    let pipe = head.stdin.take().expect("head's stdin");
    let consumer = Command::new(crate::support::bin_path())
        .args(["consume", "tabular", "--queue", &q.name, "--format", "envelope"])
        .args(["--count", &total.to_string()])
        .env("AMQP_URL", crate::support::url())
        .stdin(Stdio::null())
        .stdout(Stdio::from(pipe))
        .stderr(Stdio::piped())
        .spawn()
        .expect("mqdemo runs");
    let out = wait(consumer, Duration::from_secs(60));
    let _ = head.wait();
    assert_eq!(out.code(), Some(0), "a closed pipe is a normal end: {}", out.stderr);
    let taken = total - q.depth();
    assert!(taken <= 2, "{taken} envelopes acked though head read only 1,000 bytes");
}

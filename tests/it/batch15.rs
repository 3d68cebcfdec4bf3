//! Issue 15, items 1 and 2: micro-batches (`pipe`/`serve --batch-size N`, `--framing
//! json-batch` and batched `frames`) and request deadlines (`request --timeout` sets
//! `expiration` and `x-mqdemo-deadline`; `serve` never answers a request past it). Real
//! broker, real binary, real model processes.

use crate::stage_kit::{
    drain, header_int, header_str, now_ms, pipe, publish_indexed, publish_request, rows, shifted,
};
use crate::support::{TestQueue, held, mqdemo, s, wait_until};
use amiquip::AmqpProperties;
use std::path::Path;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(60);

/// A pipe's input queue, its output queue and its failed queue (`<input>.failed`).
fn trio(name: &str) -> (TestQueue, TestQueue, TestQueue) {
    let from = TestQueue::new(&format!("{name}-in"));
    let to = TestQueue::new(&format!("{name}-out"));
    let failed = TestQueue::named(format!("{}.failed", from.name));
    (from, to, failed)
}

/// A temporary directory and the file in it a model logs its calls to.
fn call_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    (dir, log)
}

/// A json-batch model that echoes each input as its answer and appends the size of every
/// batch it was handed to `log` (one line per call).
fn logging_echo(log: &Path) -> String {
    format!(
        "python3 -c 'import sys, json\nfor l in sys.stdin:\n    b = json.loads(l)\n    \
         open(\"{}\", \"a\").write(str(len(b)) + \"\\n\")\n    print(json.dumps(b, separators=(\",\", \":\")), flush=True)'",
        s(log)
    )
}

fn batch_sizes(log: &Path) -> Vec<usize> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a batch size"))
        .collect()
}

/// Every input answered once, with its own answer, and nothing left behind.
fn assert_all_answered_once(answers: &[amiquip::Delivery], inputs: &[Vec<u8>], stderr: &str) {
    let bad = shifted(answers, inputs);
    assert!(bad.is_empty(), "answers given to the wrong input: {bad:?}\n{stderr}");
    let mut ks: Vec<i64> = answers.iter().filter_map(|a| header_int(a, "k")).collect();
    ks.sort_unstable();
    let want: Vec<i64> = (0..inputs.len() as i64).collect();
    assert_eq!(ks, want, "every input answered exactly once\n{stderr}");
}

#[test]
fn json_batches_fill_up_to_the_batch_size_and_answer_every_row_once() {
    let (from, to, _failed) = trio("jb");
    let (_dir, log) = call_log();
    let inputs = rows(300);
    publish_indexed(&from, &inputs, None);
    let out = pipe(
        &from,
        &to,
        &logging_echo(&log),
        &["--framing", "json-batch", "--batch-size", "16", "--batch-wait", "1s", "--count", "300"],
    )
    .run()
    .expect_code(0);
    let answers = drain(&to);
    assert_all_answered_once(&answers, &inputs, &out.stderr);
    let sizes = batch_sizes(&log);
    assert_eq!(sizes.iter().sum::<usize>(), 300, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 16), "a batch over --batch-size: {sizes:?}");
    // With 300 messages queued and a second to fill, batches are full.
    assert!(sizes.iter().filter(|&&n| n == 16).count() >= 17, "batches not filled: {sizes:?}");
    assert_eq!(from.depth(), 0);
    assert!(out.stderr.contains("answered 300"), "{}", out.stderr);
}

/// A batch that cannot fill is handed over once its oldest message has waited --batch-wait,
/// not when the run ends.
#[test]
fn a_batch_that_cannot_fill_goes_to_the_model_after_the_batch_wait() {
    let (from, to, _failed) = trio("jb-wait");
    let (_dir, log) = call_log();
    let exec = logging_echo(&log);
    let run = pipe(
        &from,
        &to,
        &exec,
        &["--framing", "json-batch", "--batch-size", "64", "--batch-wait", "200ms"],
    )
    .watch();
    let inputs = rows(5);
    // Once the consumer is up (its queue declared), five messages: a batch of 64 never fills.
    wait_until(RUN, "the pipe's consumer", || {
        std::process::Command::new("rabbitmqctl")
            .args(["list_consumers", "-q"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&from.name))
    });
    let sent = Instant::now();
    publish_indexed(&from, &inputs, None);
    wait_until(RUN, "five answers", || to.depth() == 5);
    let took = sent.elapsed();
    run.signal("TERM");
    let out = run.finish(RUN);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(took >= Duration::from_millis(150), "answered before the batch wait: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(batch_sizes(&log).iter().sum::<usize>(), 5);
    assert_all_answered_once(&drain(&to), &inputs, &out.stderr);
}

/// A wrong answer count, or an answer that is not JSON, fails the whole batch: every input
/// of it goes to the failed queue with the reason; the other batches are answered.
#[test]
fn a_wrong_answer_count_or_bad_json_fails_the_whole_batch() {
    let (from, to, failed) = trio("jb-bad");
    let mut inputs = rows(40);
    inputs[5] = br#"{"i":5,"drop":true}"#.to_vec();
    inputs[25] = br#"{"i":25,"garble":true}"#.to_vec();
    publish_indexed(&from, &inputs, None);
    // Batches of 10 (all 40 are queued before the run): [0..10) answers one short,
    // [20..30) answers garbage, the others echo.
    let model = "python3 -c 'import sys, json\nfor l in sys.stdin:\n    b = json.loads(l)\n    \
                 if any(r.get(\"drop\") for r in b): b = b[1:]\n    \
                 if any(r.get(\"garble\") for r in b): print(\"[{oops\", flush=True); continue\n    \
                 print(json.dumps(b, separators=(\",\", \":\")), flush=True)'";
    let out = pipe(
        &from,
        &to,
        model,
        &["--framing", "json-batch", "--batch-size", "10", "--batch-wait", "2s", "--count", "40"],
    )
    .run();
    assert_eq!(out.code(), Some(1), "failed inputs make exit 1: {}", out.stderr);
    let answers = drain(&to);
    let failures = drain(&failed);
    assert_eq!(answers.len(), 20, "{}", out.stderr);
    assert!(shifted(&answers, &inputs).is_empty());
    assert_eq!(failures.len(), 20, "{}", out.stderr);
    let mut failed_ks: Vec<i64> = failures.iter().filter_map(|f| header_int(f, "k")).collect();
    failed_ks.sort_unstable();
    let want: Vec<i64> = (0..10).chain(20..30).collect();
    assert_eq!(failed_ks, want);
    let reasons: Vec<String> =
        failures.iter().filter_map(|f| header_str(f, "x-mqdemo-error")).collect();
    assert!(reasons.iter().any(|r| r.contains("9 answers to a batch of 10")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a JSON array")), "{reasons:?}");
    for f in &failures {
        assert_eq!(f.body, inputs[header_int(f, "k").expect("k") as usize], "kept unchanged");
    }
    assert_eq!(from.depth(), 0);
}

/// Batched frames: a count, then the frames, both ways; a binary body goes through
/// untouched and a zero-length answer frame means no output.
#[test]
fn frame_batches_carry_binary_bodies_and_count_both_ways() {
    let (from, to, failed) = trio("fb");
    let mut inputs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i, 0, 255, b'\n', i]).collect();
    inputs[7] = vec![]; // answered with nothing
    publish_indexed(&from, &inputs, None);
    // Echo every frame (an empty one stays empty: no output); log each batch's count.
    let (_dir, log) = call_log();
    let model = format!(
        "python3 -c 'import sys, struct\ni, o = sys.stdin.buffer, sys.stdout.buffer\n\
         def rd(n):\n    b = i.read(n)\n    if len(b) < n: sys.exit(0)\n    return b\n\
         while True:\n    (k,) = struct.unpack(\">I\", rd(4))\n    \
         fs = [rd(struct.unpack(\">I\", rd(4))[0]) for _ in range(k)]\n    \
         open(\"{}\", \"a\").write(str(k) + \"\\n\")\n    o.write(struct.pack(\">I\", k))\n    \
         [o.write(struct.pack(\">I\", len(f)) + f) for f in fs]\n    o.flush()'",
        s(&log)
    );
    let out = pipe(
        &from,
        &to,
        &model,
        &["--framing", "frames", "--batch-size", "8", "--batch-wait", "1s", "--count", "50"],
    )
    .run()
    .expect_code(0);
    let answers = drain(&to);
    assert_eq!(answers.len(), 49, "{}", out.stderr);
    assert!(shifted(&answers, &inputs).is_empty(), "binary bodies unchanged, in order");
    assert!(out.stderr.contains("no answer 1"), "{}", out.stderr);
    assert_eq!(failed.depth(), 0);
    let sizes = batch_sizes(&log);
    assert_eq!(sizes.iter().sum::<usize>(), 50);
    assert!(sizes.iter().all(|&n| n <= 8) && sizes.contains(&8), "{sizes:?}");

    // The same shape answered with one frame too few fails the batch.
    publish_indexed(&from, &inputs[..4], None);
    let short = "python3 -c 'import sys, struct\ni, o = sys.stdin.buffer, sys.stdout.buffer\n\
                 while True:\n    h = i.read(4)\n    if len(h) < 4: break\n    \
                 (k,) = struct.unpack(\">I\", h)\n    \
                 fs = [i.read(struct.unpack(\">I\", i.read(4))[0]) for _ in range(k)]\n    \
                 o.write(struct.pack(\">I\", k - 1))\n    \
                 [o.write(struct.pack(\">I\", len(f)) + f) for f in fs[1:]]\n    o.flush()'";
    let out = pipe(
        &from,
        &to,
        short,
        &["--framing", "frames", "--batch-size", "4", "--batch-wait", "1s", "--count", "4"],
    )
    .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(to.depth(), 0, "nothing of a failed batch is published");
    let failures = drain(&failed);
    assert_eq!(failures.len(), 4, "{}", out.stderr);
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.contains("3 frames to a batch of 4"), "{why}");
}

/// A batch's inputs are acked only once their answers are confirmed: killed while the model
/// works on a batch, mqdemo leaves every input of it in the queue.
#[test]
fn a_batch_in_the_model_when_mqdemo_is_killed_stays_queued() {
    let (from, to, _failed) = trio("jb-kill");
    let dir = tempfile::tempdir().expect("tempdir");
    let took = dir.path().join("took");
    let inputs = rows(12);
    publish_indexed(&from, &inputs, None);
    // The model says it has the batch, then takes its time (its pid kept, to end it).
    let model = format!(
        "echo $$ > {took}.pid; while read l; do echo got > {took}; sleep 30; echo \"$l\"; done",
        took = s(&took)
    );
    let run = pipe(
        &from,
        &to,
        &model,
        &["--framing", "json-batch", "--batch-size", "12", "--batch-wait", "5s"],
    )
    .watch();
    wait_until(RUN, "the model to take the batch", || took.exists());
    run.signal("KILL");
    let _ = run.finish(RUN);
    if let Ok(pid) = std::fs::read_to_string(dir.path().join("took.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", pid.trim())])
            .status();
        let _ = std::process::Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    wait_until(RUN, "every input back in the queue", || from.depth() == 12);
    assert_eq!(to.depth(), 0);
}

/// --workers 2: each worker batches on its own, and every message is answered once.
#[test]
fn workers_batch_on_their_own_and_answer_every_message_once() {
    let (from, to, _failed) = trio("jb-workers");
    let (_dir, log) = call_log();
    let inputs = rows(400);
    publish_indexed(&from, &inputs, None);
    let out = pipe(
        &from,
        &to,
        &logging_echo(&log),
        &["--framing", "json-batch", "--batch-size", "32", "--workers", "2", "--count", "400"],
    )
    .run()
    .expect_code(0);
    assert_all_answered_once(&drain(&to), &inputs, &out.stderr);
    let sizes = batch_sizes(&log);
    assert_eq!(sizes.iter().sum::<usize>(), 400);
    assert!(sizes.iter().all(|&n| n <= 32), "{sizes:?}");
}

/// --count with batches: exactly N inputs are taken; the rest stay queued.
#[test]
fn count_stops_a_batching_pipe_after_exactly_n_inputs() {
    let (from, to, _failed) = trio("jb-count");
    let inputs = rows(100);
    publish_indexed(&from, &inputs, None);
    let out = pipe(
        &from,
        &to,
        "cat",
        &["--framing", "json-batch", "--batch-size", "16", "--count", "50"],
    )
    .run()
    .expect_code(0);
    assert_eq!(to.depth(), 50, "{}", out.stderr);
    assert_eq!(from.depth(), 50);
}

#[test]
fn batch_size_needs_a_batch_framing() {
    for framing in ["lines", "envelope"] {
        let out = mqdemo(&[
            "pipe",
            "--from",
            "x-bs-in",
            "--to",
            "x-bs-out",
            "--exec",
            "cat",
            "--framing",
            framing,
            "--batch-size",
            "8",
        ])
        .run()
        .expect_code(2);
        let first = out.first_error_line();
        assert!(first.contains("--batch-size 8") && first.contains("json-batch"), "{first}");
    }
    let out = mqdemo(&["serve", "--exec", "cat", "--batch-size", "0"]).run().expect_code(2);
    assert!(out.stderr.contains("--batch-size"), "{}", out.stderr);
}

// ---- deadlines ----

/// The issue's case: a model that takes 1 s per call, 20 requests with --timeout 0.5 and
/// --concurrency 20: the model is called for at most a few, every request is reported as
/// timed out, no answer arrives late, and the queue ends empty.
#[test]
fn serve_does_not_compute_requests_whose_client_gave_up() {
    let q = TestQueue::new("dl-req");
    let results = TestQueue::new("dl-results");
    let _failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = dir.path().join("calls");
    let csv = dir.path().join("r.csv");
    let mut text = String::from("id,v\n");
    for i in 0..20 {
        text.push_str(&format!("{i},{}\n", i * 2));
    }
    std::fs::write(&csv, text).expect("csv");
    let model = format!("while read l; do echo x >> {}; sleep 1; echo \"$l\"; done", s(&calls));
    let serve =
        mqdemo(&["serve", "--queue", &q.name, "--results-queue", &results.name, "--exec", &model])
            .watch();
    wait_until(RUN, "serve's consumer", || {
        std::process::Command::new("rabbitmqctl")
            .args(["list_consumers", "-q"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&q.name))
    });
    let out = mqdemo(&[
        "request",
        "--queue",
        &q.name,
        "--file",
        s(&csv),
        "--timeout",
        "0.5",
        "--concurrency",
        "20",
    ])
    .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let timeouts = out.stdout.lines().filter(|l| l.contains("no reply within 0.5 s")).count();
    assert_eq!(timeouts, 20, "every request reported as timed out:\n{}", out.stdout);
    // Everything serve took is handled (acked) before it is stopped.
    wait_until(RUN, "every request handled", || crate::support::held(&q.name) == Some(0));
    serve.signal("TERM");
    let served = serve.finish(RUN);
    assert_eq!(served.code(), Some(0), "{}", served.stderr);
    let called = std::fs::read_to_string(&calls).unwrap_or_default().lines().count();
    assert!(called <= 3, "the model computed {called} expired requests:\n{}", served.stderr);
    assert_eq!(results.depth(), 0, "an answer was sent after its deadline");
    assert_eq!(q.depth(), 0);
}

/// `request --timeout` sets the AMQP expiration and x-mqdemo-deadline on each request.
#[test]
fn request_timeout_sets_expiration_and_the_deadline_header() {
    let q = TestQueue::new("dl-props");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("r.csv");
    std::fs::write(&csv, "id\n1\n").expect("csv");
    let before = now_ms();
    let req =
        mqdemo(&["request", "--queue", &q.name, "--file", s(&csv), "--timeout", "20"]).watch();
    wait_until(RUN, "the request in the queue", || q.depth() == 1);
    let d = q.get().expect("the request");
    req.signal("TERM");
    let _ = req.finish(RUN);
    assert_eq!(d.properties.expiration().as_deref(), Some("20000"));
    let deadline = header_int(&d, "x-mqdemo-deadline").expect("deadline header");
    assert!(deadline >= before + 20_000 && deadline <= now_ms() + 20_000, "{deadline}");
}

/// A request already past its deadline is never handed to the model; with --failed-queue
/// it is kept there with the reason, and nothing is answered (in batches too).
#[test]
fn expired_requests_skip_the_model_and_go_to_the_given_failed_queue() {
    for batched in [false, true] {
        let q = TestQueue::new("dl-exp");
        let results = TestQueue::new("dl-exp-results");
        let failed = TestQueue::new("dl-exp-failed");
        let default_failed = TestQueue::named(format!("{}.failed", q.name));
        let dir = tempfile::tempdir().expect("tempdir");
        let calls = dir.path().join("calls");
        let now = now_ms();
        publish_request(&q, br#"{"a":0}"#, now - 1000, 0);
        publish_request(&q, br#"{"a":1}"#, now + 600_000, 1);
        publish_request(&q, br#"{"a":2}"#, now - 5, 2);
        let model = format!("while read l; do echo x >> {}; echo \"$l\"; done", s(&calls));
        let mut args = vec![
            "serve",
            "--queue",
            &q.name,
            "--results-queue",
            &results.name,
            "--failed-queue",
            &failed.name,
            "--exec",
            &model,
            "--count",
            "3",
        ];
        if batched {
            args.extend(["--framing", "json-batch", "--batch-size", "4", "--batch-wait", "1s"]);
        }
        let out = mqdemo(&args).run().expect_code(0);
        assert!(out.stderr.contains("expired 2"), "{}", out.stderr);
        let answers = drain(&results);
        assert_eq!(answers.len(), 1, "{}", out.stderr);
        assert_eq!(header_int(&answers[0], "k"), Some(1));
        let called = std::fs::read_to_string(&calls).unwrap_or_default().lines().count();
        assert_eq!(called, 1, "batched={batched}");
        let kept = drain(&failed);
        assert_eq!(kept.len(), 2);
        for k in &kept {
            assert_eq!(header_str(k, "x-mqdemo-error").as_deref(), Some("deadline passed"));
        }
        assert_eq!(default_failed.depth(), 0);
        assert_eq!(q.depth(), 0);
    }
    // Without --failed-queue an expired request is acked and counted, not kept.
    let q = TestQueue::new("dl-drop");
    let default_failed = TestQueue::named(format!("{}.failed", q.name));
    publish_request(&q, br#"{"a":0}"#, now_ms() - 1000, 0);
    let out = mqdemo(&["serve", "--queue", &q.name, "--exec", "cat", "--count", "1"])
        .run()
        .expect_code(0);
    assert!(out.stderr.contains("expired 1"), "{}", out.stderr);
    assert_eq!(default_failed.depth(), 0);
    assert_eq!(q.depth(), 0);
}

// ---- found by attacking the above ----

/// A batch that stops the run (the third failed call in a row) left every unacked message
/// queued, including those already answered or copied to the failed queue: 40 queued after
/// 16 answers and 16 failed copies, so id-less inputs were answered twice. Now only the
/// batch that stopped the run stays.
#[test]
fn a_batch_that_stops_the_run_leaves_only_itself_queued() {
    let (from, to, failed) = trio("jb-stop");
    let inputs = rows(40);
    publish_indexed(&from, &inputs, None);
    // Two good calls, then one answer too few, every time.
    let model = "python3 -c 'import sys, json\nn = 0\nfor l in sys.stdin:\n    \
                 b = json.loads(l)\n    n += 1\n    \
                 print(json.dumps(b if n <= 2 else b[1:], separators=(\",\", \":\")), flush=True)'";
    let out = pipe(
        &from,
        &to,
        model,
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "8",
            "--batch-wait",
            "2s",
            "--idle-timeout",
            "3",
        ],
    )
    .run();
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("failed on 3 calls in a row"), "{}", out.stderr);
    assert_eq!(to.depth(), 16, "{}", out.stderr);
    assert_eq!(failed.depth(), 16, "{}", out.stderr);
    assert_eq!(from.depth(), 8, "only the batch that stopped the run stays:\n{}", out.stderr);
}

/// In json-batch, --max-answer-bytes bounds the whole answer line: a legitimate batch over
/// it was blamed on logs printed to stdout. The error now names the limit and the fix.
#[test]
fn a_batch_answer_over_max_answer_bytes_names_the_limit_and_the_fix() {
    let (from, to, _failed) = trio("jb-fat");
    publish_indexed(&from, &rows(8), None);
    let model = "python3 -c 'import sys, json\nfor l in sys.stdin:\n    \
                 print(json.dumps([{\"pad\": \"x\" * 200} for r in json.loads(l)]), flush=True)'";
    let out = pipe(
        &from,
        &to,
        model,
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "8",
            "--batch-wait",
            "1s",
            "--max-answer-bytes",
            "1000",
            "--idle-timeout",
            "2",
        ],
    )
    .run();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("raise --max-answer-bytes or lower --batch-size"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("print logs to stderr"), "{}", out.stderr);
}

/// A deadline that cannot be Unix milliseconds (seconds, negative, text) was taken as long
/// past, and the request dropped without a word. Now it is served, with a warning.
#[test]
fn a_deadline_that_is_not_unix_milliseconds_is_served_with_a_warning() {
    let q = TestQueue::new("dl-bad");
    let results = TestQueue::new("dl-bad-results");
    let _failed = TestQueue::named(format!("{}.failed", q.name));
    let in_a_minute_in_seconds = now_ms() / 1000 + 60;
    publish_request(&q, br#"{"a":0}"#, in_a_minute_in_seconds, 0);
    publish_request(&q, br#"{"a":1}"#, -5, 1);
    let out = mqdemo(&[
        "serve",
        "--queue",
        &q.name,
        "--results-queue",
        &results.name,
        "--exec",
        "cat",
        "--count",
        "2",
    ])
    .run()
    .expect_code(0);
    assert_eq!(results.depth(), 2, "{}", out.stderr);
    assert!(!out.stderr.contains("expired"), "{}", out.stderr);
    let warned = out.stderr.matches("is not a Unix time in milliseconds").count();
    assert_eq!(warned, 2, "{}", out.stderr);
}

/// --batch-wait 0 handed the model batches of 1 even with many messages already received;
/// now a due batch takes along what has come.
#[test]
fn batch_wait_zero_still_takes_what_has_already_come() {
    let (from, to, _failed) = trio("jb-zero");
    let (_dir, log) = call_log();
    publish_indexed(&from, &rows(200), None);
    pipe(
        &from,
        &to,
        &logging_echo(&log),
        &["--framing", "json-batch", "--batch-size", "16", "--batch-wait", "0", "--count", "200"],
    )
    .run()
    .expect_code(0);
    let sizes = batch_sizes(&log);
    assert_eq!(sizes.iter().sum::<usize>(), 200);
    assert!(sizes.len() < 100, "mostly batches of one: {sizes:?}");
}

/// A message of a batch that failed alone (a body json-batch cannot carry) went to the
/// failed queue at once; when the model call then stopped the run, it stayed queued too,
/// so a rerun failed it twice, and the summary counted the queued batch as piped.
#[test]
fn a_batch_that_stops_the_run_goes_back_whole_and_uncounted() {
    let (from, to, failed) = trio("jb-whole");
    let mut inputs = rows(12);
    inputs[9] = vec![0xff, 0xfe];
    publish_indexed(&from, &inputs, None);
    let out = pipe(
        &from,
        &to,
        "while read l; do echo '[]'; done",
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "4",
            "--batch-wait",
            "2s",
            "--idle-timeout",
            "3",
        ],
    )
    .run();
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("the batch's 4 messages stay"), "{}", out.stderr);
    let failures = drain(&failed);
    assert_eq!(failures.len(), 8, "{}", out.stderr);
    assert!(failures.iter().all(|f| f.body != inputs[9]), "failed and still queued");
    assert_eq!(from.depth(), 4);
    assert!(out.stderr.contains("piped 8 messages"), "{}", out.stderr);
}

/// With --workers 2, the batch that stopped the run went back to the queue while the other
/// worker still ran: it took those messages up and failed them (the "stays in" of the
/// error was not true). The others now halt before the batch is given back, and a partial
/// batch they hold stays queued.
#[test]
fn a_batch_that_stops_the_run_stays_queued_with_workers_too() {
    let (from, to, failed) = trio("jb-halt");
    let mut inputs = rows(28);
    for (k, body) in inputs.iter_mut().enumerate().take(20).skip(8) {
        *body = format!("{{\"fail\":{k}}}").into_bytes();
    }
    publish_indexed(&from, &inputs, None);
    // Answers one too many whenever a batch holds a failing row.
    let model = "python3 -c 'import sys, json\nfor l in sys.stdin:\n    b = json.loads(l)\n    \
                 extra = [None] if any(\"fail\" in r for r in b) else []\n    \
                 print(json.dumps(b + extra, separators=(\",\", \":\")), flush=True)'";
    let out = pipe(
        &from,
        &to,
        model,
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "4",
            "--batch-wait",
            "500ms",
            "--workers",
            "2",
            "--idle-timeout",
            "2",
        ],
    )
    .run();
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    let failures = drain(&failed).len();
    let answered = drain(&to).len();
    let left = drain(&from).len();
    assert_eq!(answered + failures + left, 28, "{}", out.stderr);
    assert!(out.stderr.contains("the batch's 4 messages stay"), "{}", out.stderr);
    assert!(left >= 4, "the stopping batch was taken up again: {left} left\n{}", out.stderr);
}

/// A repeat of an earlier message (same id) arriving while a batch fills is acked at once
/// by the stage, without a model call. The consumer acks up to the newest delivery the stage
/// no longer holds, so the repeat must count as held with the batch: else the oldest
/// message of the batch is acked unanswered, and a kill then loses it.
#[test]
fn a_repeat_arriving_while_a_batch_fills_does_not_get_the_batch_acked() {
    let (from, to, _failed) = trio("riders");
    let (_dir, log) = call_log();
    let props = |id: &str| AmqpProperties::default().with_message_id(id.to_string());
    from.publish_raw(br#"{"n":1}"#, props("a"));
    from.publish_raw(br#"{"n":2}"#, props("c"));
    let exec = logging_echo(&log);
    let run = mqdemo(&[
        "pipe",
        "--from",
        &from.name,
        "--to",
        &to.name,
        "--framing",
        "json-batch",
        "--batch-size",
        "2",
        "--batch-wait",
        "60",
        "--exec",
        &exec,
    ])
    .watch();
    wait_until(Duration::from_secs(30), "the first batch is answered", || to.depth() == 2);
    from.publish_raw(br#"{"n":3}"#, props("b"));
    wait_until(Duration::from_secs(10), "b is taken into a batch", || from.depth() == 0);
    from.publish_raw(br#"{"n":1}"#, props("a"));
    wait_until(Duration::from_secs(10), "the repeat is delivered", || from.depth() == 0);
    // An ack of b, if one comes, comes within milliseconds (the consumer acks when idle).
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline && held(&from.name) == Some(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.signal("KILL");
    let _ = run.finish(Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "b and the repeat back in the queue", || from.depth() == 2);
    assert_eq!(batch_sizes(&log), vec![2], "b was never answered");
}

// ---- pipelined batches: the model works on one while the last one's answers go out ----

/// `--idle-timeout` counts only time with no message in hand: a batch at a slow model when
/// the queue runs dry is answered before the run ends, and every input is acked.
#[test]
fn idle_timeout_waits_for_the_batch_at_the_model() {
    let (from, to, _failed) = trio("jb-idle-flight");
    let inputs = rows(8);
    publish_indexed(&from, &inputs, None);
    let model = "python3 -c 'import sys, time\nfor l in sys.stdin:\n    time.sleep(1.5)\n    \
                 print(l.strip(), flush=True)'";
    let out = pipe(
        &from,
        &to,
        model,
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "4",
            "--batch-wait",
            "5s",
            "--idle-timeout",
            "1",
        ],
    )
    .run()
    .expect_code(0);
    assert_all_answered_once(&drain(&to), &inputs, &out.stderr);
    assert!(out.stderr.contains("answered 8"), "{}", out.stderr);
    assert_eq!(from.depth(), 0, "{}", out.stderr);
}

/// A model that writes a stray line after answering a batch (a log line on stdout, a
/// moment later) cannot be trusted with the next one, which is already filled: that batch
/// goes to the failed queue, the next stays queued unseen, and the run stops.
#[test]
fn a_stray_line_after_a_batch_stops_before_the_next_reaches_the_model() {
    let (from, to, failed) = trio("jb-stray");
    let (_dir, log) = call_log();
    let inputs = rows(12);
    publish_indexed(&from, &inputs, None);
    let model = format!(
        "python3 -c 'import sys, time\nfor l in sys.stdin:\n    open(\"{}\", \"a\").write(\"call\\n\")\n    \
         print(l.strip(), flush=True)\n    time.sleep(0.2)\n    print(\"loaded\", flush=True)'",
        s(&log)
    );
    let out = pipe(
        &from,
        &to,
        &model,
        &[
            "--framing",
            "json-batch",
            "--batch-size",
            "4",
            "--batch-wait",
            "5s",
            "--idle-timeout",
            "3",
        ],
    )
    .run();
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("print logs to stderr"), "{}", out.stderr);
    assert_eq!(to.depth(), 0, "no answer of the batch with a stray line is published");
    assert_eq!(failed.depth(), 4, "{}", out.stderr);
    assert_eq!(from.depth(), 8, "{}", out.stderr);
    assert_eq!(call_count(&log), 1, "the next batch never reached the model");
}

fn call_count(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

//! The model and the sender are untrusted (DESIGN, "The user's model"): a model that talks
//! out of turn never gets an answer attributed to the wrong input, never hangs a stage,
//! never grows mqdemo's memory without bound, and is killed with its whole process group on
//! every way out; a message the broker refuses fails alone; `serve` answers only reply
//! queues. Real broker, real binary, real child processes.

use crate::stage_kit::{drain, header_int, header_str, pipe, publish_indexed, rows, shifted};
use crate::support::{TestQueue, connect, mqdemo, wait, wait_until};
use amiquip::{AmqpProperties, AmqpValue, FieldTable, Publish, QueueDeclareOptions};
use std::process::Command;
use std::time::{Duration, Instant};

/// Processes whose command line contains `marker` (the model's `sh -c` and its children).
fn processes_with(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", marker]).output().expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_string)
        .collect()
}

fn no_process_left(marker: &str) {
    // The kill is synchronous, the reaping by init is not: allow it a moment.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "the model outlived mqdemo: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 1: a banner on stdout (`print("model loaded")`) made every answer the previous
/// input's, with exit 0. Now the model is stopped for speaking first, nothing is answered
/// wrongly, and nothing is lost.
#[test]
fn a_model_that_prints_a_banner_never_shifts_answers() {
    let from = TestQueue::new("banner-in");
    let to = TestQueue::new("banner-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    let inputs = rows(6);
    publish_indexed(&from, &inputs, None);
    let out = pipe(&from, &to, "echo 'model v1 loaded'; cat", &["--idle-timeout", "2"]).run();
    let answers = drain(&to);
    let bad = shifted(&answers, &inputs);
    assert!(bad.is_empty(), "answers given to the wrong input: {bad:?}\n{}", out.stderr);
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("print logs to stderr"), "{}", out.stderr);
    let (left, gone) = (from.depth() as usize, failed.depth() as usize);
    assert_eq!(left + gone + answers.len(), inputs.len(), "lost: {}", out.stderr);
}

/// Item 1: a model that logs one line to stdout per input (Python's print, flushed with the
/// answer) gave each input the log line; now those inputs fail with the reason.
#[test]
fn a_model_that_logs_to_stdout_fails_those_inputs_and_answers_none_wrongly() {
    let from = TestQueue::new("chatty-in");
    let to = TestQueue::new("chatty-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    let inputs = rows(8);
    publish_indexed(&from, &inputs, None);
    let model = "python3 -u -c 'import sys\nfor l in sys.stdin:\n    \
                 sys.stdout.write(\"working on \" + l.strip() + \"\\n\" + l)\n    \
                 sys.stdout.flush()'";
    let out = pipe(&from, &to, model, &["--idle-timeout", "2"]).run();
    let answers = drain(&to);
    let bad = shifted(&answers, &inputs);
    assert!(bad.is_empty(), "answers given to the wrong input: {bad:?}\n{}", out.stderr);
    let failures = drain(&failed);
    assert!(!failures.is_empty(), "nothing failed:\n{}", out.stderr);
    for f in &failures {
        let why = header_str(f, "x-mqdemo-error").unwrap_or_default();
        assert!(why.contains("print logs to stderr"), "reason: {why}");
    }
    assert_ne!(out.code(), Some(0));
    assert_eq!(from.depth() as usize + failures.len() + answers.len(), inputs.len());
}

/// Item 2: a model that never reads its stdin and a body over the pipe buffer hung `pipe`
/// for good (--exec-timeout did not cover the write). Now the write has the deadline, the
/// input fails with the reason, and the model's whole group is gone.
#[test]
fn a_model_that_does_not_read_cannot_hang_the_write() {
    let from = TestQueue::new("noread-in");
    let to = TestQueue::new("noread-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    let marker = format!("sleep 601.{}", std::process::id());
    publish_indexed(&from, &[vec![b'a'; 300_000]], None);
    let model = marker.clone();
    let started = Instant::now();
    let child = pipe(&from, &to, &model, &["--exec-timeout", "2", "--idle-timeout", "1"]).spawn();
    let out = wait(child, Duration::from_secs(40));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let failures = drain(&failed);
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.contains("--exec-timeout"), "reason: {why}");
    no_process_left(&marker);
}

/// Item 2: one SIGTERM did not stop a stage whose model hung; now it ends within the stop
/// grace, the input stays queued, and the model's group is killed.
#[test]
fn one_sigterm_ends_a_stage_whose_model_hangs() {
    let from = TestQueue::new("hang-in");
    let to = TestQueue::new("hang-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    let marker = format!("sleep 602.{}", std::process::id());
    publish_indexed(&from, &[vec![b'a'; 300_000]], None);
    let model = marker.clone();
    let run = pipe(&from, &to, &model, &[]).watch();
    wait_until(Duration::from_secs(20), "the input to be taken", || from.depth() == 0);
    let asked = Instant::now();
    run.signal("TERM");
    let out = run.finish(Duration::from_secs(20));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?} to end the stage");
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    wait_until(Duration::from_secs(10), "the input back in its queue", || from.depth() == 1);
    no_process_left(&marker);
}

/// Item 2: a second signal exits at once, and kills the model too (it used to be left
/// running in its own process group).
#[test]
fn a_second_signal_kills_the_model_with_mqdemo() {
    let from = TestQueue::new("twice-in");
    let to = TestQueue::new("twice-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    let marker = format!("sleep 603.{}", std::process::id());
    publish_indexed(&from, &rows(1), None);
    let model = format!("trap '' TERM INT; {marker}");
    let run = pipe(&from, &to, &model, &[]).watch();
    wait_until(Duration::from_secs(20), "the input to be taken", || from.depth() == 0);
    // Two different signals: two of the same, sent back to back, may merge into one.
    run.signal("TERM");
    run.signal("INT");
    let out = run.finish(Duration::from_secs(10));
    assert_eq!(out.code(), Some(130), "{}", out.stderr);
    no_process_left(&marker);
    wait_until(Duration::from_secs(10), "the input back in its queue", || from.depth() == 1);
}

/// Item 2: one non-UTF-8 byte on the model's stderr made mqdemo stop reading it; the model
/// then died of SIGPIPE ("closed its stdout"). Now its stderr is shown lossily.
#[test]
fn a_model_with_binary_stderr_keeps_answering() {
    let from = TestQueue::new("binerr-in");
    let to = TestQueue::new("binerr-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    let inputs = rows(10);
    publish_indexed(&from, &inputs, None);
    let model =
        r"while IFS= read -r l; do printf 'bad \377\376 byte\n' >&2; printf '%s\n' $l; done";
    let out = pipe(&from, &to, model, &["--idle-timeout", "2"]).run();
    let answers = drain(&to);
    assert_eq!(answers.len(), inputs.len(), "{}", out.stderr);
    assert!(shifted(&answers, &inputs).is_empty());
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("bad \u{fffd}\u{fffd} byte"), "{}", out.stderr);
}

/// Item 2: a model writing 400 MB without a line break grew mqdemo by as much. Now the
/// answer is cut at --max-answer-bytes (default 128 MiB), and the input fails.
#[test]
fn an_endless_answer_is_bounded_and_fails_the_input() {
    let from = TestQueue::new("endless-in");
    let to = TestQueue::new("endless-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    publish_indexed(&from, &rows(1), None);
    let model = "read l; head -c 400000000 /dev/zero | tr '\\0' a; echo";
    let (out, peak) =
        pipe(&from, &to, model, &["--idle-timeout", "2"]).run_peak(Duration::from_secs(120));
    assert!(peak < 250 << 20, "mqdemo peaked at {} MB:\n{}", peak >> 20, out.stderr);
    let failures = drain(&failed);
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.contains("--max-answer-bytes"), "reason: {why}");
    assert_eq!(to.depth(), 0);
}

/// Item 2: stderr without a line break grew mqdemo too; now each stderr line is cut at
/// --max-stderr-line, and the model goes on.
#[test]
fn an_endless_stderr_line_is_cut() {
    let from = TestQueue::new("errflood-in");
    let to = TestQueue::new("errflood-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    publish_indexed(&from, &rows(1), None);
    let model = "read l; head -c 300000000 /dev/zero | tr '\\0' e >&2; echo >&2; echo \"$l\"";
    let (out, peak) =
        pipe(&from, &to, model, &["--idle-timeout", "2"]).run_peak(Duration::from_secs(120));
    assert!(peak < 150 << 20, "mqdemo peaked at {} MB", peak >> 20);
    assert_eq!(out.code(), Some(0), "{}", &out.stderr[..out.stderr.len().min(2000)]);
    assert!(out.stderr.contains("more bytes cut"), "no cut line");
    assert!(out.stderr.len() < 100_000, "stderr of {} bytes", out.stderr.len());
    assert_eq!(to.depth(), 1);
}

/// Item 3: a model whose last stderr line is 300 KB (copied into x-mqdemo-error) made the
/// failed copy too large for a frame: the broker closed the connection, mqdemo reconnected
/// and re-sent, about five times a second, forever. Now the header is cut to 4 KiB.
#[test]
fn a_huge_failure_reason_is_cut_and_never_loops() {
    let from = TestQueue::new("bigwhy-in");
    let to = TestQueue::new("bigwhy-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    // One answer first: a model that dies before any answer cannot start (the run stops).
    publish_indexed(&from, &rows(2), None);
    let model =
        "read l; echo \"$l\"; read l; head -c 300000 /dev/zero | tr '\\0' e >&2; echo >&2; exit 1";
    let child =
        pipe(&from, &to, model, &["--idle-timeout", "2", "--max-stderr-line", "1000000"]).spawn();
    let out = wait(child, Duration::from_secs(60));
    assert!(!out.stderr.contains("reconnected"), "{}", &out.stderr[out.stderr.len() - 2000..]);
    let failures = drain(&failed);
    assert_eq!(failures.len(), 1, "failed copies: {}", failures.len());
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.len() <= 4096 && why.contains("exit status: 1"), "reason of {} bytes", why.len());
}

/// Item 3: an input whose headers leave no room in a frame for the answer's (the answer
/// inherits them) looped on reconnects; now that input fails alone, with its headers left
/// off the failed copy, and the next input is answered.
#[test]
fn an_input_whose_answer_cannot_fit_a_frame_fails_alone() {
    let from = TestQueue::new("bighdr-in");
    let to = TestQueue::new("bighdr-out");
    let failed = TestQueue::named(format!("{}.failed", from.name));
    let mut conn = connect();
    let ch = conn.open_channel(None).expect("channel");
    ch.queue_declare(
        from.name.clone(),
        QueueDeclareOptions { durable: true, ..Default::default() },
    )
    .expect("declare");
    let mut h = FieldTable::new();
    h.insert("big".into(), AmqpValue::LongString("h".repeat(130_990)));
    let props = AmqpProperties::default().with_headers(h);
    ch.basic_publish("", Publish::with_properties(b"{\"i\":0}", from.name.clone(), props))
        .expect("publish");
    let props = AmqpProperties::default().with_message_id("small".into());
    ch.basic_publish("", Publish::with_properties(b"{\"i\":1}", from.name.clone(), props))
        .expect("publish");
    let _ = ch.close();
    let _ = conn.close();
    let child = pipe(&from, &to, "cat", &["--idle-timeout", "2", "--retry-for", "20"]).spawn();
    let out = wait(child, Duration::from_secs(60));
    let reconnects = out.stderr.matches("reconnected").count();
    assert!(reconnects == 0, "reconnected {reconnects} times:\n{}", out.stderr);
    let failures = drain(&failed);
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.contains("frame"), "reason: {why}");
    // The input's own header is what did not fit: left off the failed copy, and counted.
    assert_eq!(header_int(&failures[0], "x-mqdemo-dropped-headers"), Some(1));
    assert!(header_str(&failures[0], "big").is_none(), "the oversized header was kept");
    let answers = drain(&to);
    assert_eq!(answers.len(), 1, "{}", out.stderr);
    assert_eq!(answers[0].body, b"{\"i\":1}");
}

fn serve(q: &TestQueue, extra: &[&str]) -> crate::support::Mqdemo {
    let mut args = vec!["serve", "--queue", &q.name, "--exec", "cat", "--idle-timeout", "2"];
    args.extend_from_slice(extra);
    mqdemo(&args)
}

/// Item 6: serve published the model's answer into any queue a request named in reply_to,
/// under serve's credentials. Now it answers only reply queues unless --allow-reply-to
/// names the queue; the request fails with the reason.
#[test]
fn serve_answers_only_reply_queues() {
    let q = TestQueue::new("replyto");
    let victim = TestQueue::new("victim");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    victim.publish_raw(b"existing", AmqpProperties::default());
    let _ = victim.get();
    publish_indexed(&q, &rows(1), Some(&victim.name));
    let out = serve(&q, &[]).run();
    assert_eq!(victim.depth(), 0, "serve published into {}:\n{}", victim.name, out.stderr);
    let failures = drain(&failed);
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let why = header_str(&failures[0], "x-mqdemo-error").unwrap_or_default();
    assert!(why.contains("--allow-reply-to"), "reason: {why}");
    assert_ne!(out.code(), Some(0));
    // Allowed by name, it is answered.
    publish_indexed(&q, &rows(1), Some(&victim.name));
    let pattern = format!("{}*", victim.name);
    let out = serve(&q, &["--allow-reply-to", &pattern]).run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(victim.depth(), 1);
}

/// Item 6: a request with no reply_to, served with no --results-queue, was counted
/// "answered" and its answer dropped. Now it fails, to the failed queue.
#[test]
fn a_request_with_nowhere_to_answer_is_failed() {
    let q = TestQueue::new("noreply");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    publish_indexed(&q, &rows(1), None);
    let out = serve(&q, &[]).run();
    assert_eq!(failed.depth(), 1, "{}", out.stderr);
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("failed 1"), "{}", out.stderr);
}

/// Item 6: `request` stopped at one ragged CSV row and threw away the replies already
/// served. Now the row is skipped and named, every other row is answered.
#[test]
fn request_skips_a_ragged_row_and_keeps_every_reply() {
    let q = TestQueue::new("ragged");
    let _failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("in.csv");
    let mut text = String::from("a,b\n");
    for i in 0..50 {
        text.push_str(&format!("{i},x\n"));
        if i == 30 {
            text.push_str("1,2,3,4\n");
        }
    }
    std::fs::write(&csv, text).expect("write csv");
    let server = mqdemo(&["serve", "--queue", &q.name, "--exec", "cat"]).watch();
    let out =
        mqdemo(&["request", "--queue", &q.name, "--file", csv.to_str().expect("utf-8")]).run();
    server.signal("TERM");
    let _ = server.finish(Duration::from_secs(20));
    // A line per row, in order: 50 answers and, in the bad row's place, an error object.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 51, "{}", out.stderr);
    assert!(lines[31].contains("\"error\"") && lines[31].contains("line 33"), "{}", lines[31]);
    assert!(lines[32].contains("\"31\"") || lines[32].contains(":31"), "{}", lines[32]);
    assert!(out.stderr.contains("line 33"), "the bad row is not named:\n{}", out.stderr);
    assert_ne!(out.code(), Some(0));
}

/// Item 4: the model inherited AMQP_URL, password included. Now broker credentials are
/// removed from its environment (the test runs mqdemo with AMQP_URL set).
#[test]
fn the_model_never_sees_the_broker_credentials() {
    let from = TestQueue::new("env-in");
    let to = TestQueue::new("env-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    publish_indexed(&from, &rows(1), None);
    let model = r#"while IFS= read -r l; do printf '{"url":"%s","file":"%s"}\n' "${AMQP_URL:-none}" "${AMQP_URL_FILE:-none}"; done"#;
    let out = pipe(&from, &to, model, &["--idle-timeout", "1"]).run();
    let answers = drain(&to);
    assert_eq!(answers.len(), 1, "{}", out.stderr);
    assert_eq!(String::from_utf8_lossy(&answers[0].body), r#"{"url":"none","file":"none"}"#);
}

/// Issue 12 item 3: a model that cannot start (a missing script, an import error: any exit
/// status) moved messages to the failed queue before the run stopped. Now the run stops at
/// once with the reason and every message stays queued.
#[test]
fn a_model_that_cannot_start_stops_the_run_with_every_message_queued() {
    for model in [
        "python3 /nonexistent/missing-model.py",
        "read l; echo 'ModuleNotFoundError: No module named torch' >&2; exit 2",
    ] {
        let from = TestQueue::new("nostart-in");
        let to = TestQueue::new("nostart-out");
        let failed = TestQueue::named(format!("{}.failed", from.name));
        publish_indexed(&from, &rows(5), None);
        let out = pipe(&from, &to, model, &["--idle-timeout", "3"]).run();
        assert_eq!(out.code(), Some(1), "{model}: {}", out.stderr);
        assert!(out.stderr.contains("cannot run"), "{model}: {}", out.stderr);
        wait_until(Duration::from_secs(10), "every message back in the queue", || {
            from.depth() == 5
        });
        assert_eq!(failed.depth(), 0, "{model}: messages moved to the failed queue");
        assert_eq!(to.depth(), 0);
    }
}

/// Issue 12 item 3: with an empty queue, a model that died at start left `pipe` waiting
/// forever. Now a dead model is noticed while idle, and the run stops with the reason.
#[test]
fn a_model_that_dies_while_the_queue_is_empty_stops_the_run() {
    let from = TestQueue::new("deadidle-in");
    let to = TestQueue::new("deadidle-out");
    let _failed = TestQueue::named(format!("{}.failed", from.name));
    publish_indexed(&from, &[], None);
    let model = "sleep 0.3; echo 'ImportError: cannot import name model' >&2; exit 1";
    let started = Instant::now();
    let child = pipe(&from, &to, model, &[]).spawn();
    let out = wait(child, Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("ImportError"), "the reason is not given:\n{}", out.stderr);
}

/// Issue 12 item 4: when the model failed on a request, serve sent no reply, so `request`
/// waited its whole --timeout and then asked whether serve was running. Now serve replies
/// with the reason at once and request prints an error object in that request's place.
#[test]
fn a_failed_request_reaches_its_client_at_once() {
    let q = TestQueue::new("errreply");
    let failed = TestQueue::named(format!("{}.failed", q.name));
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "a,b\n1,ok\n2,boom\n3,ok\n").expect("write csv");
    // Fails (exit 3) on the row holding "boom"; echoes the others.
    let model = r#"while IFS= read -r l; do case "$l" in *boom*) echo "ValueError: boom" >&2; exit 3;; esac; printf '%s\n' "$l"; done"#;
    let server = mqdemo(&["serve", "--queue", &q.name, "--exec", model]).watch();
    let started = Instant::now();
    let out = mqdemo(&[
        "request",
        "--queue",
        &q.name,
        "--file",
        crate::support::s(&csv),
        "--concurrency",
        "1",
    ])
    .run();
    let took = started.elapsed();
    server.signal("TERM");
    let _ = server.finish(Duration::from_secs(20));
    assert!(took < Duration::from_secs(15), "request took {took:?}: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}\n{}", out.stdout, out.stderr);
    assert!(lines[0].contains("\"ok\""), "{}", lines[0]);
    assert!(
        lines[1].contains("\"error\"") && lines[1].contains("ValueError: boom"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("\"ok\""), "{}", lines[2]);
    assert!(out.stderr.contains("failed 1"), "{}", out.stderr);
    assert_eq!(out.code(), Some(1));
    assert_eq!(failed.depth(), 1);
}

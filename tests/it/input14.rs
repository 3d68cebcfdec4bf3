//! Issue 14, item 2 (data in from anywhere): `--file -` (stdin, published as it arrives),
//! JSON lines in (detected or `--format jsonl`, with the refusals), `request` on JSON lines,
//! and `produce image|text --include GLOB` with hidden files left out by default.

use crate::support::header;
use crate::support::{TestQueue, bin_path, count_after, data, mqdemo, s, url, wait, wait_until};
use amiquip::AmqpValue;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker nobody listens on: an input error must come before any connection attempt.
const DEAD_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// How long a row written to stdin may take to reach the queue.
const ARRIVAL: Duration = Duration::from_secs(20);

/// The binary with its stdin a pipe the test writes to.
fn piped(args: &[&str]) -> (Child, ChildStdin) {
    let mut child = Command::new(bin_path())
        .args(args)
        .env("AMQP_URL", url())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mqdemo starts");
    let stdin = child.stdin.take().expect("stdin piped");
    (child, stdin)
}

/// Run with `input` as the whole of stdin.
fn with_stdin(args: &[&str], input: &[u8]) -> crate::support::Output {
    let (child, mut stdin) = piped(args);
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    wait(child, Duration::from_secs(60))
}

/// Every message in the queue, taken off it: (body, source, row, message id).
fn drain(q: &TestQueue) -> Vec<(String, AmqpValue, AmqpValue, String)> {
    std::iter::from_fn(|| q.get())
        .map(|d| {
            let id = d.properties.message_id().clone().unwrap_or_default();
            let body = String::from_utf8_lossy(&d.body).into_owned();
            (body, header(&d, "source").clone(), header(&d, "row").clone(), id)
        })
        .collect()
}

/// Whether process `pid` has a thread named `name` (set by mqdemo when it starts one).
fn has_thread(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks
        .filter_map(Result::ok)
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

fn text(s: &str) -> AmqpValue {
    AmqpValue::LongString(s.into())
}

#[test]
fn stdin_rows_are_published_as_they_arrive_not_at_the_end() {
    // CSV, then JSON lines (detected from the first byte): a slow `tail -f` pipe.
    let inputs: [(&[u8], &[u8], &str); 2] = [
        (b"id,name\n1,first\n", b"2,second\n", r#"{"id":1,"name":"first"}"#),
        (b"{\"id\": 1}\n", b"\n{\"id\": 2}\n", r#"{"id": 1}"#),
    ];
    for (start, then, first_body) in inputs {
        let q = TestQueue::new("i14-stdin-slow");
        let (child, mut stdin) = piped(&["produce", "tabular", "--file", "-", "--queue", &q.name]);
        stdin.write_all(start).expect("write");
        stdin.flush().expect("flush");
        wait_until(ARRIVAL, "the first row in the queue while stdin is open", || q.depth() == 1);
        stdin.write_all(then).expect("write");
        stdin.flush().expect("flush");
        wait_until(ARRIVAL, "the second row in the queue while stdin is open", || q.depth() == 2);
        drop(stdin);
        let out = wait(child, Duration::from_secs(30)).expect_code(0);
        assert_eq!(count_after(&out.stderr, "produced"), 2, "{}", out.stderr);
        let got = drain(&q);
        assert_eq!(got[0].0, first_body);
        assert_eq!((&got[0].1, &got[0].2), (&text("stdin"), &AmqpValue::LongLongInt(1)));
        assert_eq!((&got[1].1, &got[1].2), (&text("stdin"), &AmqpValue::LongLongInt(2)));
    }
}

/// Two streams piped into the same queue are never taken for repeats of each other (every
/// stream is `stdin`: with ids from the row number and content, a second stream whose row
/// matched the first one's was dropped by consumers as a duplicate, data lost), so rows from
/// stdin get ids new to the run; the bodies and headers are the same each time.
#[test]
fn stdin_rows_get_ids_new_to_the_run_and_json_lines_are_detected() {
    let q = TestQueue::new("i14-stdin-ids");
    let input = b"{\"id\": 1, \"p\": 0.50}\n\n{\"id\": 2, \"tags\": [\"a\"]}\n";
    let args = ["produce", "tabular", "--file", "-", "--queue", &q.name];
    with_stdin(&args, input).expect_code(0);
    let first = drain(&q);
    with_stdin(&args, input).expect_code(0);
    let again = drain(&q);
    assert_eq!(first.len(), 2);
    let strip = |rows: &[(String, AmqpValue, AmqpValue, String)]| {
        rows.iter().map(|r| (r.0.clone(), r.1.clone(), r.2.clone())).collect::<Vec<_>>()
    };
    assert_eq!(strip(&first), strip(&again), "same stdin, same bodies and headers");
    for (a, b) in first.iter().zip(&again) {
        assert_ne!(a.3, b.3, "a second stream's rows are new data, not repeats");
    }
    // Sent as written: spacing, key order and `0.50` kept, no retyping.
    assert_eq!(first[0].0, r#"{"id": 1, "p": 0.50}"#);
    assert_eq!(first[1].2, AmqpValue::LongLongInt(2));
}

#[test]
fn a_signal_while_stdin_is_quiet_ends_the_run_promptly_with_what_was_sent() {
    let q = TestQueue::new("i14-stdin-term");
    let (child, mut stdin) = piped(&["produce", "tabular", "--file", "-", "--queue", &q.name]);
    stdin.write_all(b"id\n1\n").expect("write");
    stdin.flush().expect("flush");
    wait_until(ARRIVAL, "the row in the queue", || q.depth() == 1);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    let asked = Instant::now();
    // stdin stays open (a quiet `tail -f`): the signal alone must end the run.
    let out = wait(child, Duration::from_secs(10)).expect_code(0);
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert_eq!(count_after(&out.stderr, "produced"), 1, "{}", out.stderr);
    drop(stdin);
}

#[test]
fn a_signal_before_the_first_row_arrives_ends_the_run_promptly_saying_so() {
    let (child, stdin) = piped(&["--url", DEAD_URL, "produce", "tabular", "--file", "-"]);
    // Nothing is written: mqdemo waits for the header, its stdin reader thread started.
    wait_until(ARRIVAL, "mqdemo reading stdin", || has_thread(child.id(), "mqdemo-stdin"));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    let out = wait(child, Duration::from_secs(10)).expect_code(1);
    assert!(out.first_error_line().contains("stopped by a signal"), "{}", out.stderr);
    drop(stdin);
}

#[test]
fn repeat_with_stdin_is_a_usage_error_naming_the_fix() {
    let out = mqdemo(&["--url", DEAD_URL, "produce", "tabular", "--file", "-", "--repeat"])
        .run()
        .expect_code(2);
    let first = out.first_error_line();
    assert!(first.contains("--repeat") && first.contains("--file -"), "{}", out.stderr);
}

#[test]
fn json_lines_rows_keep_their_values_and_bad_lines_are_named_and_counted() {
    let q = TestQueue::new("i14-jsonl");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    let lines = [
        r#"{"id": 7, "score": 1.50, "big": 12345678901234567890123, "tags": ["x"], "n": null}"#,
        "",
        "[1, 2]",
        r#"{"id": 8, "id": 9}"#,
        r#"{"id": 10}"#,
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let out = mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name])
        .run()
        .expect_code(1);
    assert!(out.stderr.contains("events.jsonl line 3: "), "{}", out.stderr);
    assert!(out.stderr.contains("events.jsonl line 4: the key \"id\""), "{}", out.stderr);
    assert_eq!(count_after(&out.stderr, "skipped"), 2, "{}", out.stderr);
    let got = drain(&q);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, lines[0], "sent exactly as written");
    assert_eq!((&got[0].1, &got[0].2), (&text("events.jsonl"), &AmqpValue::LongLongInt(1)));
    // Rows count the non-blank lines, bad ones included: the 4th is row 4 (line 5).
    assert_eq!((&got[1].0[..], &got[1].2), (lines[4], &AmqpValue::LongLongInt(4)));
}

#[test]
fn json_lines_take_batch_size_num_records_repeat_and_interval() {
    let q = TestQueue::new("i14-jsonl-batch");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("r.ndjson");
    std::fs::write(&file, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").expect("write");
    let args = ["produce", "tabular", "--file", s(&file), "--queue", &q.name];
    let mut batch = args.to_vec();
    batch.extend(["--batch-size", "2", "--num-records", "3", "--interval", "0.01"]);
    mqdemo(&batch).run().expect_code(0);
    let got = drain(&q);
    let bodies: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(bodies, [r#"[{"a":1},{"a":2}]"#, r#"[{"a":3}]"#]);
    let mut repeat = args.to_vec();
    repeat.extend(["--repeat", "--num-records", "7"]);
    mqdemo(&repeat).run().expect_code(0);
    let got = drain(&q);
    assert_eq!(got.len(), 7);
    let ids: std::collections::HashSet<&String> = got.iter().map(|g| &g.3).collect();
    assert_eq!(ids.len(), 7, "each pass has its own ids, so none is dropped as a duplicate");
}

#[test]
fn json_lines_read_as_csv_are_refused_with_the_fix_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let named_csv = dir.path().join("export.csv");
    std::fs::write(&named_csv, "{\"a\":1}\n{\"a\":2}\n").expect("write");
    let jsonl = dir.path().join("export.jsonl");
    std::fs::write(&jsonl, "{\"a\":1}\n").expect("write");
    for (file, extra) in [(&named_csv, None), (&jsonl, Some("--format=csv"))] {
        let mut args = vec!["--url", DEAD_URL, "produce", "tabular", "--file", s(file)];
        args.extend(extra);
        let out = mqdemo(&args).run().expect_code(1);
        let first = out.first_error_line();
        assert!(first.contains(s(file)) && first.contains("--format jsonl"), "{}", out.stderr);
    }
    // --format jsonl reads it; the name alone does not decide against the content.
    let q = TestQueue::new("i14-jsonl-forced");
    let args = ["produce", "tabular", "--file", s(&named_csv), "--queue", &q.name];
    mqdemo(&[&args[..], &["--format", "jsonl"]].concat()).run().expect_code(0);
    assert_eq!(q.depth(), 2);
}

#[test]
fn csv_only_flags_on_json_lines_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("x.jsonl");
    std::fs::write(&file, "{\"a\":1}\n").expect("write");
    let base = ["--url", DEAD_URL, "produce", "tabular", "--file", s(&file)];
    for (flag, extra) in [
        ("--delimiter", &["--format", "jsonl", "--delimiter", ";"][..]),
        ("--no-header", &["--no-header"]),
        ("--encoding", &["--encoding", "latin1"]),
    ] {
        let out = mqdemo(&[&base[..], extra].concat()).run().expect_code(2);
        assert!(out.first_error_line().contains(&format!("drop {flag}")), "{}", out.stderr);
    }
    // Detected from the content (a name that says nothing), with a CSV-only flag.
    let txt = dir.path().join("y.txt");
    std::fs::write(&txt, "{\"a\":1}\n").expect("write");
    let args = ["--url", DEAD_URL, "produce", "tabular", "--file", s(&txt), "--encoding", "latin1"];
    let out = mqdemo(&args).run().expect_code(2);
    assert!(out.first_error_line().contains("drop --encoding"), "{}", out.stderr);
    // --skip-rows applies to JSON lines.
    let q = TestQueue::new("i14-jsonl-skip");
    std::fs::write(&file, "exported by tool x\n{\"a\":1}\n").expect("write");
    let args = ["produce", "tabular", "--file", s(&file), "--queue", &q.name, "--skip-rows", "1"];
    mqdemo(&args).run().expect_code(0);
    assert_eq!(q.depth(), 1);
}

#[test]
fn a_json_lines_file_that_is_not_json_lines_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rows.jsonl");
    std::fs::write(&file, "id,name\n1,x\n2,y\n").expect("write");
    let out =
        mqdemo(&["--url", DEAD_URL, "produce", "tabular", "--file", s(&file)]).run().expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains("rows.jsonl") && first.contains("--format csv"), "{}", out.stderr);
}

#[test]
fn a_json_line_over_the_message_size_is_skipped_and_named() {
    let q = TestQueue::new("i14-jsonl-long");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("long.jsonl");
    let long = format!("{{\"t\":\"{}\"}}", "x".repeat(5000));
    std::fs::write(&file, format!("{{\"a\":1}}\n{long}\n{{\"a\":2}}\n")).expect("write");
    let args = ["produce", "tabular", "--file", s(&file), "--queue", &q.name];
    let out = mqdemo(&[&args[..], &["--max-message-size", "1000"]].concat()).run();
    let out = out.expect_code(1);
    assert!(out.stderr.contains("long.jsonl line 2: "), "{}", out.stderr);
    assert_eq!(q.depth(), 2);
}

#[test]
fn request_reads_json_lines_from_stdin() {
    let requests = TestQueue::new("i14-req");
    let _failed = TestQueue::named(format!("{}.failed", requests.name));
    let server =
        mqdemo(&["serve", "--queue", &requests.name, "--exec", "cat", "--count", "2"]).watch();
    let input = b"{\"x\": [1, 2], \"id\": \"a\"}\n\n{\"x\": [3], \"id\": \"b\"}\n";
    let out = with_stdin(&["request", "--queue", &requests.name, "--file", "-"], input);
    let out = out.expect_code(0);
    assert_eq!(out.stdout, "{\"x\": [1, 2], \"id\": \"a\"}\n{\"x\": [3], \"id\": \"b\"}\n");
    server.finish(Duration::from_secs(30)).expect_code(0);
}

/// A data set folder as people have them: images beside labels and the OS's litter.
fn dataset(root: &Path) -> usize {
    let png = std::fs::read(data("images/gradient.png")).expect("sample png");
    for dir in ["train/cat", "train/dog", ".git", "train/.ipynb_checkpoints"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    let images = ["train/cat/1.png", "train/dog/2.png", "top.png"];
    for rel in images.iter().chain(&[".git/x.png", "train/.ipynb_checkpoints/3.png"]) {
        std::fs::write(root.join(rel), &png).expect("write png");
    }
    std::fs::write(root.join("labels.csv"), "file,label\n").expect("write");
    std::fs::write(root.join("README.md"), "# data\n").expect("write");
    std::fs::write(root.join(".DS_Store"), b"\0\0\0\x01Bud1").expect("write");
    std::fs::write(root.join("train/.hidden.png"), &png).expect("write");
    images.len()
}

#[test]
fn a_real_data_set_folder_produces_with_include_and_exit_0() {
    let q = TestQueue::new("i14-include");
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dataset(dir.path());
    let out = mqdemo(&[
        "produce",
        "image",
        "--directory",
        s(dir.path()),
        "--queue",
        &q.name,
        "--include",
        "*.png",
    ])
    .run()
    .expect_code(0);
    assert_eq!(q.depth() as usize, images, "{}", out.stderr);
    // What was left out is still named, in one line each, and counted apart from skips.
    let excluded = out.stderr.lines().find(|l| l.contains("excluded 2 file(s)")).unwrap_or("");
    assert!(excluded.contains("README.md") && excluded.contains("labels.csv"), "{}", out.stderr);
    let hidden = out.stderr.lines().find(|l| l.contains("ignored 4 hidden")).unwrap_or("");
    assert!(hidden.contains(".DS_Store") && hidden.contains(".git/"), "{}", out.stderr);
    assert_eq!(count_after(&out.stderr, "skipped"), 0, "{}", out.stderr);
    let summary = out.stderr.lines().last().unwrap_or("");
    assert!(summary.contains("excluded 2 by --include, ignored 4 hidden"), "{}", out.stderr);
}

#[test]
fn hidden_files_are_left_out_by_default_without_failing_and_sent_with_hidden() {
    let q = TestQueue::new("i14-hidden");
    let dir = tempfile::tempdir().expect("tempdir");
    let png = std::fs::read(data("images/gradient.png")).expect("sample png");
    std::fs::write(dir.path().join("a.png"), &png).expect("write");
    std::fs::write(dir.path().join(".DS_Store"), b"\0\0\0\x01Bud1").expect("write");
    std::fs::create_dir(dir.path().join(".cache")).expect("mkdir");
    std::fs::write(dir.path().join(".cache/b.png"), &png).expect("write");
    let args = ["produce", "image", "--directory", s(dir.path()), "--queue", &q.name];
    mqdemo(&args).run().expect_code(0);
    assert_eq!(q.depth(), 1);
    let out = mqdemo(&[&args[..], &["--hidden", "--include", "*.png"]].concat()).run();
    out.expect_code(0);
    assert_eq!(q.depth(), 3, "a.png again (same id, a consumer drops it) and .cache/b.png");
}

#[test]
fn include_globs_with_a_slash_match_the_path_and_text_split_lines_honours_them() {
    let q = TestQueue::new("i14-include-text");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("train/deep")).expect("mkdir");
    std::fs::write(dir.path().join("train/a.txt"), "one\ntwo\n").expect("write");
    std::fs::write(dir.path().join("train/deep/b.txt"), "three\n").expect("write");
    std::fs::write(dir.path().join("c.txt"), "four\n").expect("write");
    let out = mqdemo(&[
        "produce",
        "text",
        "--directory",
        s(dir.path()),
        "--queue",
        &q.name,
        "--split",
        "line",
        "--include",
        "train/*.txt",
    ])
    .run()
    .expect_code(0);
    assert_eq!(q.depth(), 2, "the two lines of train/a.txt only: {}", out.stderr);
    assert!(out.stderr.contains("excluded 2 file(s)"), "{}", out.stderr);
}

#[test]
fn a_bad_glob_is_a_usage_error_and_one_matching_nothing_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.PNG"), b"x").expect("write");
    let base = ["--url", DEAD_URL, "produce", "image", "--directory", s(dir.path())];
    let out = mqdemo(&[&base[..], &["--include", "*.[png"]].concat()).run().expect_code(2);
    assert!(out.first_error_line().contains("--include \"*.[png\""), "{}", out.stderr);
    let out = mqdemo(&[&base[..], &["--include", "*.png"]].concat()).run().expect_code(1);
    let first = out.first_error_line();
    assert!(first.contains("matches none of the 1 file(s)") && first.contains("a.PNG"), "{first}");
}

#[test]
fn a_large_folder_of_left_out_files_takes_one_line() {
    let q = TestQueue::new("i14-include-many");
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..3000 {
        std::fs::write(dir.path().join(format!("label_{i:04}.txt")), "x").expect("write");
    }
    std::fs::write(dir.path().join("keep.txt"), "kept\n").expect("write");
    let args = ["produce", "text", "--directory", s(dir.path()), "--queue", &q.name];
    let out = mqdemo(&[&args[..], &["--include", "keep.*"]].concat()).run().expect_code(0);
    assert!(out.stderr.lines().count() <= 3, "{}", out.stderr);
    assert!(out.stderr.contains("and 2995 more"), "{}", out.stderr);
    assert_eq!(q.depth(), 1);
}

/// A signal on a quiet stdin with `--batch-size`: the rows of the partial batch were taken
/// from the pipe and can never be read again, so they are sent (rows 4 and 5 were dropped,
/// unnamed, with exit 0).
#[test]
fn a_signal_sends_the_partial_batch_already_read_from_stdin() {
    let q = TestQueue::new("i14-stdin-batch-term");
    let args = ["produce", "tabular", "--file", "-", "--queue", &q.name, "--batch-size", "3"];
    let (child, mut stdin) = piped(&args);
    stdin.write_all(b"a\n1\n2\n3\n4\n5\n").expect("write");
    stdin.flush().expect("flush");
    wait_until(ARRIVAL, "the first batch in the queue", || q.depth() == 1);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    let out = wait(child, Duration::from_secs(30));
    drop(stdin);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let rows: usize = std::iter::from_fn(|| q.get())
        .map(|d| serde_json::from_slice::<Vec<serde_json::Value>>(&d.body).expect("batch").len())
        .sum();
    assert_eq!(rows, 5, "every row read from stdin was sent: {}", out.stderr);
}

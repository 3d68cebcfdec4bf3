//! Produce -> consume round trips for every kind, through the real binary.

use crate::support::{TestQueue, consume_files, data, mqdemo, produce_sample, s, tree};

fn csv_rows() -> Vec<Vec<String>> {
    let mut rdr = csv::Reader::from_path(data("tabular_data.csv")).expect("sample csv");
    rdr.records().map(|r| r.expect("row").iter().map(str::to_string).collect()).collect()
}

#[test]
fn tabular_rows_come_back_as_typed_json_lines() {
    let q = TestQueue::new("tab-jsonl");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name])
        .run()
        .expect_code(0)
        .stderr_has("produced 300 messages");
    let out =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "300"]).run().expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 300);
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("json line");
    assert_eq!(first["ID"], serde_json::json!(1), "integers are JSON numbers: {first}");
    assert!(first["AGE"].is_i64());
    for (line, row) in lines.iter().zip(csv_rows()) {
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).expect("object");
        let values: Vec<String> = obj.values().map(|v| v.to_string()).collect();
        assert_eq!(values, row, "row values in column order");
    }
    assert_eq!(q.depth(), 0);
}

#[test]
fn tabular_csv_format_gives_back_the_same_csv() {
    let q = TestQueue::new("tab-csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rows.csv");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name]).run().expect_code(0);
    mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "300",
        "--format",
        "csv",
        "--output",
        s(&out),
    ])
    .run()
    .expect_code(0);
    assert_eq!(std::fs::read(&out).expect("output"), std::fs::read(&file).expect("input"));
}

#[test]
fn batch_size_packs_rows_and_num_records_limits_them() {
    let q = TestQueue::new("tab-batch");
    produce_sample(&q, &["--batch-size", "100", "--num_records", "250"])
        .run()
        .expect_code(0)
        .stderr_has("produced 3 messages");
    assert_eq!(q.depth(), 3);
    let out =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "3"]).run().expect_code(0);
    let ids: Vec<i64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["ID"].as_i64().expect("id")
        })
        .collect();
    assert_eq!(ids, (1..=250).collect::<Vec<i64>>());
}

#[test]
fn images_arrive_byte_identical_under_their_relative_paths() {
    let q = TestQueue::new("img");
    let out = tempfile::tempdir().expect("tempdir");
    let images = data("images");
    mqdemo(&["produce", "image", "--directory", s(&images), "--queue", &q.name])
        .run()
        .expect_code(0);
    consume_files(&q, "image", out.path(), &["--idle-timeout", "2"])
        .run()
        .expect_code(0)
        .stderr_has("written 6");
    assert_eq!(tree(out.path()), tree(&images));
}

#[test]
fn texts_arrive_byte_identical_split_by_file_and_by_line() {
    let texts = data("texts");
    for split in ["file", "line"] {
        let q = TestQueue::new("text");
        let out = tempfile::tempdir().expect("tempdir");
        mqdemo(&[
            "produce",
            "text",
            "--directory",
            s(&texts),
            "--split",
            split,
            "--queue_name",
            &q.name,
        ])
        .run()
        .expect_code(0);
        consume_files(&q, "text", out.path(), &["--idle-timeout", "2"]).run().expect_code(0);
        assert_eq!(tree(out.path()), tree(&texts), "--split {split}");
    }
}

#[test]
fn second_delivery_of_the_same_file_is_counted_as_duplicate() {
    let q = TestQueue::new("img-dup");
    let out = tempfile::tempdir().expect("tempdir");
    let images = data("images");
    for _ in 0..2 {
        mqdemo(&["produce", "image", "--directory", s(&images), "--queue", &q.name])
            .run()
            .expect_code(0);
    }
    consume_files(&q, "image", out.path(), &["--count", "12"])
        .run()
        .expect_code(0)
        .stderr_has("written 6, duplicates 6");
    assert_eq!(tree(out.path()), tree(&images));
}

#[test]
fn demo_verifies_every_kind() {
    let out = mqdemo(&["demo"]).run().expect_code(0);
    assert!(out.stdout.contains("300/300 rows"), "{}", out.stdout);
    assert!(out.stdout.contains("6/6 files"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("4/4 files").count(), 2, "{}", out.stdout);
}

#[test]
fn demo_with_its_stdout_closed_exits_zero() {
    // `mqdemo demo | true`: the reader is gone before the verdict is written.
    let mut child = mqdemo(&["demo"]).spawn();
    drop(child.stdout.take());
    let out = crate::support::wait(child, crate::support::RUN_DEADLINE);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn consumer_stops_cleanly_on_sigterm() {
    let q = TestQueue::new("sigterm");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name, "--num-records", "5"])
        .run()
        .expect_code(0);
    let child = mqdemo(&["consume", "tabular", "--queue", &q.name]).spawn();
    crate::support::wait_until(std::time::Duration::from_secs(20), "queue drained", || {
        q.depth() == 0
    });
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let out = crate::support::wait(child, std::time::Duration::from_secs(10)).expect_code(0);
    assert_eq!(out.stdout.lines().count(), 5);
    assert!(out.stderr.contains("consumed 5 messages"), "{}", out.stderr);
}

#[test]
fn closed_stdout_pipe_exits_zero_quietly() {
    let q = TestQueue::new("pipe");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name]).run().expect_code(0);
    let mut child =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "300", "--prefetch", "1"])
            .spawn();
    // Read one line, then close our end, like `| head -1`.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut stdout, &mut byte).expect("read") == 1 && byte[0] != b'\n' {}
    drop(stdout);
    let mut stderr = String::new();
    let mut err = child.stderr.take().expect("stderr");
    std::io::Read::read_to_string(&mut err, &mut stderr).expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(q.depth() > 0, "rows not written to the pipe stay in the queue");
}

#[test]
fn workers_share_the_count_and_one_output() {
    let q = TestQueue::new("workers-rows");
    let file = data("tabular_data.csv");
    mqdemo(&["produce", "tabular", "--file", s(&file), "--queue", &q.name]).run().expect_code(0);
    let out =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "250", "--workers", "3"])
            .run()
            .expect_code(0);
    let mut ids: Vec<i64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines")["ID"]
                .as_i64()
                .expect("id")
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 250, "exactly --count rows in total");
    assert_eq!(q.depth(), 50, "the rest stay queued");
}

#[test]
fn workers_write_files_into_one_directory() {
    let q = TestQueue::new("workers-files");
    let src = tempfile::tempdir().expect("tempdir");
    for i in 0..200 {
        let sub = src.path().join(format!("d{}", i % 3));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    mqdemo(&["produce", "text", "--directory", s(src.path()), "--queue", &q.name])
        .run()
        .expect_code(0);
    let out = tempfile::tempdir().expect("tempdir");
    mqdemo(&[
        "consume",
        "text",
        "--queue",
        &q.name,
        "--workers",
        "4",
        "--output-directory",
        s(out.path()),
        "--idle-timeout",
        "2",
    ])
    .run()
    .expect_code(0)
    .stderr_has("written 200");
    assert_eq!(tree(out.path()), tree(src.path()));
}

#[test]
fn repeat_streams_the_file_again_with_new_message_ids() {
    let q = TestQueue::new("repeat");
    crate::support::produce_sample(&q, &["--repeat", "--num-records", "700"])
        .run()
        .expect_code(0)
        .stderr_has("produced 700 messages");
    let ids: std::collections::HashSet<String> = (0..700)
        .map(|_| q.get().expect("message").properties.message_id().clone().expect("id"))
        .collect();
    assert_eq!(ids.len(), 700, "every pass has its own ids, so consumers do not drop them");
}

#[test]
fn stderr_is_one_summary_line_without_a_terminal_and_nothing_with_quiet() {
    let q = TestQueue::new("quiet");
    let out = crate::support::produce_sample(&q, &["--num-records", "10"]).run().expect_code(0);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "no progress bar when stderr is not a terminal: {:?}",
        out.stderr
    );
    assert!(out.stderr.starts_with("mqdemo: produced 10 messages"), "{}", out.stderr);
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "10", "-q"])
        .run()
        .expect_code(0);
    assert_eq!(out.stderr, "", "--quiet prints nothing on success");
    assert_eq!(out.stdout.lines().count(), 10, "stdout still carries the data");
}

/// Issue 12 item 5: the same data sent twice on purpose was dropped as duplicates (ids are
/// deterministic). With `--new-ids` a second send is new data; without it, a repeated run
/// is still recognised as the same messages.
#[test]
fn new_ids_make_a_deliberate_resend_new_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = crate::support::csv_rows(dir.path(), "r.csv", 1..=20);
    for (flag, expected) in [(Some("--new-ids"), 40), (None, 20)] {
        let q = TestQueue::new("newids");
        for _ in 0..2 {
            let mut args = vec!["produce", "tabular", "--file", s(&csv), "--queue", &q.name];
            args.extend(flag);
            mqdemo(&args).run().expect_code(0);
        }
        let out = dir.path().join("out.jsonl");
        let _ = std::fs::remove_file(&out);
        let consumed = mqdemo(&[
            "consume",
            "tabular",
            "--queue",
            &q.name,
            "--idle-timeout",
            "2",
            "--output",
            s(&out),
        ])
        .run();
        let rows = std::fs::read_to_string(&out).unwrap_or_default().lines().count();
        assert_eq!(rows, expected, "{flag:?}: {}", consumed.stderr);
    }
}

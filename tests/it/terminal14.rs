//! What people see in a terminal: the progress bar on a real pseudo-terminal (80 columns)
//! tells the truth at the end, fits the width, shows a rate and the queue's depth, and is
//! cleared before the summary; durations take units; --summary-json is for scripts.

use crate::support::{TestQueue, csv_rows, mqdemo, s};
use rustix::fd::OwnedFd;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A pseudo-terminal of `cols` columns: (master, an open slave for a child's stderr).
fn pty(cols: u16) -> (OwnedFd, std::fs::File) {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let path = name.to_str().expect("utf-8 pts name").to_string();
    let slave =
        std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open the pts");
    let size = Winsize { ws_row: 24, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    tcsetwinsize(&slave, size).expect("window size");
    (master, slave)
}

/// Everything written to the terminal until the child exits (within `deadline`).
fn screen(master: OwnedFd, mut child: std::process::Child, deadline: Duration) -> (String, i32) {
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave is closed (the child exited): the end of the screen.
        while let Ok(n @ 1..) = file.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let code = crate::support::exit_within(&mut child, deadline).code().unwrap_or(-1);
    let bytes = reader.join().expect("reader");
    (String::from_utf8_lossy(&bytes).into_owned(), code)
}

/// The text of each screen line as drawn: escape sequences removed, split where the
/// cursor goes back to the line's start or to the next line.
fn drawn_lines(raw: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte (0x40..=0x7e).
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for f in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&f) {
                            break;
                        }
                    }
                }
                lines.push(std::mem::take(&mut line));
            }
            '\r' | '\n' => lines.push(std::mem::take(&mut line)),
            c => line.push(c),
        }
    }
    lines.push(line);
    lines.retain(|l| !l.trim().is_empty());
    lines
}

/// The numbers right before `word` in the drawn lines ("1234 msgs" -> 1234).
fn numbers_before(lines: &[String], word: &str) -> Vec<u64> {
    let mut found = Vec::new();
    for line in lines {
        let mut rest = line.as_str();
        while let Some(at) = rest.find(word) {
            let head = rest[..at].trim_end();
            let digits: String = head
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if let Ok(n) = digits.parse() {
                found.push(n);
            }
            rest = &rest[at + word.len()..];
        }
    }
    found
}

/// The bar ends on the true count (it froze at "1593 msgs" with 2000 stored: the last
/// update fell in the throttle's 100 ms and nothing redrew it), fits 80 columns, shows a
/// rate and the queue's depth at the start, and is gone when the summary is printed.
#[test]
fn the_progress_bar_fits_80_columns_and_ends_on_the_true_count() {
    let q = TestQueue::new("tty-bar");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=2000);
    mqdemo(&["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "-q"])
        .run()
        .expect_code(0);
    let out = dir.path().join("rows.jsonl");
    let (master, slave) = pty(80);
    let args =
        ["consume", "tabular", "--queue", &q.name, "--output", s(&out), "--idle-timeout", "1.5"];
    let child = mqdemo(&args).spawn_with_stderr(Stdio::from(slave));
    let (raw, code) = screen(master, child, Duration::from_secs(60));
    assert_eq!(code, 0, "{raw}");
    let lines = drawn_lines(&raw);
    let summary = lines.iter().rposition(|l| l.starts_with("mqdemo: consumed")).expect(&raw);
    assert!(lines[summary].contains("consumed 2000 messages"), "{}", lines[summary]);
    let bars = &lines[..summary];
    assert!(!bars.is_empty(), "no progress bar drawn on a terminal: {raw:?}");
    // Every bar line fits the terminal.
    for line in bars {
        assert!(line.chars().count() <= 80, "{} columns: {line:?}", line.chars().count());
    }
    // It ended on what was stored, with the queue's depth as the total and a rate.
    let shown = numbers_before(bars, " msgs");
    assert_eq!(shown.iter().max(), Some(&2000), "the bar never showed all 2000: {bars:#?}");
    assert!(bars.iter().any(|l| l.contains("2000/2000")), "depth as total: {bars:#?}");
    assert!(bars.iter().any(|l| l.contains("msg/s")), "a rate: {bars:#?}");
    // Cleared: nothing of the bar after the summary.
    assert!(lines[summary + 1..].is_empty(), "after the summary: {:?}", &lines[summary + 1..]);
    assert_eq!(std::fs::read_to_string(&out).expect("rows").lines().count(), 2000);
}

/// Durations take units wherever seconds are taken; garbage names the accepted forms.
#[test]
fn durations_take_units() {
    let q = TestQueue::new("tty-durations");
    let started = Instant::now();
    mqdemo(&["consume", "tabular", "--queue", &q.name, "--idle-timeout", "300ms"])
        .run()
        .expect_code(0);
    assert!(started.elapsed() < Duration::from_secs(20), "300ms read as 300 s?");
    let out = mqdemo(&["consume", "tabular", "--queue", &q.name, "--idle-timeout", "5 minutes"])
        .run()
        .expect_code(2);
    assert!(
        out.stderr.contains("--idle-timeout") && out.stderr.contains("500ms, 5s, 2m"),
        "{}",
        out.stderr
    );
    mqdemo(&[
        "--connect-timeout",
        "2s",
        "--retry-for",
        "1m",
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--idle-timeout",
        "0.2",
    ])
    .run()
    .expect_code(0);
}

/// --summary-json writes the counters as one JSON object (zeros included), even with
/// --quiet; `-` is refused where stdout carries the rows.
#[test]
fn summary_json_is_one_object_for_scripts() {
    let q = TestQueue::new("tty-summary");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=25);
    let out = mqdemo(&[
        "produce",
        "tabular",
        "--file",
        s(&csv),
        "--queue",
        &q.name,
        "-q",
        "--summary-json",
        "-",
    ])
    .run()
    .expect_code(0);
    assert!(out.stderr.is_empty(), "quiet: {}", out.stderr);
    let j: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect(&out.stdout);
    assert_eq!(
        (j["messages"].as_u64(), j["failed"].as_u64(), j["ok"].as_bool()),
        (Some(25), Some(0), Some(true)),
        "{j}"
    );
    let file = dir.path().join("summary.json");
    let rows = dir.path().join("rows.jsonl");
    let out = mqdemo(&[
        "consume",
        "tabular",
        "--queue",
        &q.name,
        "--count",
        "25",
        "--output",
        s(&rows),
        "--summary-json",
        s(&file),
    ])
    .run()
    .expect_code(0);
    assert!(out.stderr.contains("consumed 25 messages"), "{}", out.stderr);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("json");
    assert_eq!(
        (j["messages"].as_u64(), j["rows"].as_u64(), j["duplicates"].as_u64()),
        (Some(25), Some(25), Some(0)),
        "{j}"
    );
    let out =
        mqdemo(&["consume", "tabular", "--queue", &q.name, "--count", "1", "--summary-json", "-"])
            .run()
            .expect_code(2);
    assert!(
        out.first_error_line().contains("--summary-json -")
            && out.first_error_line().contains("--output FILE"),
        "{}",
        out.stderr
    );
}

/// A model whose answer sits in its own stdout buffer (awk to a pipe) times out with a
/// hint naming the fix; a Python model that never flushes is not caught by it, since
/// mqdemo sets PYTHONUNBUFFERED.
#[test]
fn a_model_that_buffers_its_output_gets_the_fix_named() {
    let input = TestQueue::new("tty-buffered-in");
    let output = TestQueue::new("tty-buffered-out");
    input.publish_raw(
        br#"{"x":1}"#,
        amiquip::AmqpProperties::default().with_message_id("b1".into()),
    );
    let pipe = |exec: &str, timeout: &str| {
        let args = ["pipe", "--from", &input.name, "--to", &output.name, "--exec", exec];
        mqdemo(
            &[&args[..], &["--count", "1", "--exec-timeout", timeout, "--idle-timeout", "20"]]
                .concat(),
        )
    };
    // mawk and gawk both block-buffer their output to a pipe.
    let out = pipe("awk '{ print }'", "1").run().expect_code(1);
    assert!(out.stderr.contains("no answer within 1 s"), "{}", out.stderr);
    assert!(
        out.stderr.contains("fflush()") && out.stderr.contains("stdbuf -oL"),
        "no hint: {}",
        out.stderr
    );
    // The message went to the failed queue with the hint in its reason; put it back.
    let failed = TestQueue::named(format!("{}.failed", input.name));
    assert_eq!(failed.depth(), 1);
    let copy = failed.get().expect("the failed copy");
    input.publish_raw(&copy.body, amiquip::AmqpProperties::default().with_message_id("b1".into()));
    let py = "python3 -c 'import sys\nfor line in sys.stdin: print(line.strip())'";
    // (A python3 that starts on a loaded CI machine may take more than a second to answer.)
    let out = pipe(py, "20").run().expect_code(0);
    assert!(out.stderr.contains("answered 1"), "{}", out.stderr);
    assert_eq!(output.depth(), 1);
}

/// `produce --num-records N` counts the rows towards N on the bar (not the file's bytes).
#[test]
fn the_producer_bar_counts_rows_towards_num_records() {
    let q = TestQueue::new("tty-num-records");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=1000);
    let (master, slave) = pty(80);
    let args =
        ["produce", "tabular", "--file", s(&csv), "--queue", &q.name, "--num-records", "150"];
    let child = mqdemo(&args).spawn_with_stderr(Stdio::from(slave));
    let (raw, code) = screen(master, child, Duration::from_secs(60));
    assert_eq!(code, 0, "{raw}");
    let lines = drawn_lines(&raw);
    assert!(lines.iter().any(|l| l.contains("/150 ")), "rows towards 150: {lines:#?}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
    assert_eq!(q.depth(), 150);
}

/// --summary-json never writes over the run's own data (it replaced the rows just stored,
/// an SQLite database or the input CSV: data loss), and a run that stops before it begins
/// still writes ok:false, never leaving an earlier run's ok:true.
#[test]
fn summary_json_spares_the_data_and_tells_of_a_run_that_never_began() {
    let q = TestQueue::new("tty-summary-clash");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = csv_rows(dir.path(), "rows.csv", 1..=5);
    let before = std::fs::read(&csv).expect("csv");
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"kept\":1}\n").expect("rows");
    for args in [
        vec![
            "produce",
            "tabular",
            "--file",
            s(&csv),
            "--queue",
            &q.name,
            "--summary-json",
            s(&csv),
        ],
        vec![
            "consume",
            "tabular",
            "--queue",
            &q.name,
            "--output",
            s(&rows),
            "--summary-json",
            s(&rows),
        ],
        vec![
            "consume",
            "tabular",
            "--queue",
            &q.name,
            "--sqlite",
            s(&rows),
            "--summary-json",
            s(&rows),
        ],
    ] {
        let out = mqdemo(&args).run().expect_code(2);
        assert!(out.first_error_line().contains("the run's own data file"), "{}", out.stderr);
    }
    assert_eq!(std::fs::read(&csv).expect("csv"), before);
    assert_eq!(std::fs::read_to_string(&rows).expect("rows"), "{\"kept\":1}\n");
    assert_eq!(q.depth(), 0, "nothing ran");
    // A run that cannot reach its broker replaces the last summary with its failure.
    let summary = dir.path().join("run.json");
    std::fs::write(&summary, "{\"ok\":true}\n").expect("old summary");
    let args =
        ["--url", "amqp://guest:guest@127.0.0.1:1/%2f", "produce", "tabular", "--file", s(&csv)];
    mqdemo(&[&args[..], &["--queue", &q.name, "--summary-json", s(&summary)]].concat())
        .run()
        .expect_code(1);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("written")).expect("json");
    assert_eq!(j["ok"], false, "{j}");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    assert_eq!(j["messages"], 0);
}

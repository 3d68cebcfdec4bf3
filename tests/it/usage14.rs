//! Issue 14, the first five minutes: an ordinary error stays its one-line chain whatever
//! RUST_BACKTRACE says (backtraces are for panics, or asked for with RUST_LIB_BACKTRACE),
//! colour only on a terminal, and `--help` wrapped to the terminal's width.

use crate::support::{Output, bin_path, wait};
use clap::CommandFactory;
use mqdemo::cli::Cli;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// mqdemo with `env` on top of an environment without backtrace or colour settings, stdin
/// empty and stderr into `stderr_file` (a regular file, as `2>err.txt`).
fn run_to_file(env: &[(&str, &str)], args: &[&str], stderr_file: &Path) -> Output {
    let file = File::create(stderr_file).expect("stderr file");
    let mut child = clean_command(env, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("mqdemo binary starts");
    let status = crate::support::exit_within(&mut child, DEADLINE);
    let stderr = std::fs::read_to_string(stderr_file).expect("stderr file read");
    Output { status, stdout: String::new(), stderr }
}

fn clean_command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path());
    cmd.args(args);
    for var in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "NO_COLOR", "COLUMNS", "AMQP_URL"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// A missing --file: an ordinary error (exit 1) whose first line names the file and flag.
fn missing_file_args(dir: &Path) -> Vec<String> {
    let missing = dir.join("no such data.csv");
    ["produce", "tabular", "--file", missing.to_str().expect("utf-8 path")]
        .map(String::from)
        .to_vec()
}

fn assert_one_line_chain(out: &Output, what: &str) {
    assert_eq!(out.code(), Some(1), "{what}: exit code; stderr:\n{}", out.stderr);
    let first = out.first_error_line();
    assert!(
        first.starts_with("mqdemo: error: ")
            && first.contains("no such data.csv")
            && first.contains("--file"),
        "{what}: the first line names the input and the flag: {}",
        out.stderr
    );
    for line in out.stderr.lines().skip(1) {
        assert!(
            line.starts_with("  caused by: "),
            "{what}: only the chain follows: {}",
            out.stderr
        );
    }
    for needle in ["Backtrace", "BACKTRACE", "Location", "\u{1b}["] {
        assert!(!out.stderr.contains(needle), "{what}: stderr has {needle:?}:\n{}", out.stderr);
    }
}

#[test]
fn ordinary_errors_stay_one_line_whatever_rust_backtrace_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = missing_file_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = dir.path().join("err.txt");
    for value in ["1", "full"] {
        let out = run_to_file(&[("RUST_BACKTRACE", value)], &args, &err);
        assert_one_line_chain(&out, &format!("RUST_BACKTRACE={value}"));
    }
    // RUST_LIB_BACKTRACE=0 (panics only, std's spelling) is the same.
    let out = run_to_file(&[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "0")], &args, &err);
    assert_one_line_chain(&out, "RUST_LIB_BACKTRACE=0");
    // Bad usage (exit 2) too.
    let out =
        run_to_file(&[("RUST_BACKTRACE", "1")], &["produce", "tabular", "--batch-size", "0"], &err);
    assert_eq!(out.code(), Some(2), "bad usage; stderr:\n{}", out.stderr);
    assert!(!out.stderr.contains("Location") && !out.stderr.contains('\u{1b}'), "{}", out.stderr);
}

#[test]
fn rust_lib_backtrace_asks_for_the_origin_without_colour_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = missing_file_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_to_file(&[("RUST_LIB_BACKTRACE", "1")], &args, &dir.path().join("err.txt"));
    assert_eq!(out.code(), Some(1), "stderr:\n{}", out.stderr);
    assert!(out.first_error_line().contains("no such data.csv"), "{}", out.stderr);
    assert!(out.stderr.contains("Location"), "the error's origin is shown:\n{}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "no colour into a file:\n{}", out.stderr);
}

/// `cmd` (a shell command line) run by `script` with a pseudo-terminal as its stdin,
/// stdout and stderr; what the terminal showed.
fn on_a_terminal(env: &[(&str, &str)], cmd: &str) -> Output {
    let mut script = Command::new("script");
    script.args(["-qec", cmd, "/dev/null"]);
    for var in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "NO_COLOR", "AMQP_URL"] {
        script.env_remove(var);
    }
    let child = script
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs: the terminal tests need it");
    let mut out = wait(child, DEADLINE);
    out.stderr = out.stdout.replace("\r\n", "\n");
    out
}

/// Single-quoted for `sh`.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[test]
fn colour_only_on_a_terminal_and_never_for_an_ordinary_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut words = vec![bin_path().to_str().expect("utf-8 path").to_string()];
    words.extend(missing_file_args(dir.path()));
    let cmd = words.iter().map(|w| quoted(w)).collect::<Vec<_>>().join(" ");

    let out = on_a_terminal(&[("RUST_BACKTRACE", "1")], &cmd);
    assert_one_line_chain(&out, "RUST_BACKTRACE=1 on a terminal");

    let out = on_a_terminal(&[("RUST_LIB_BACKTRACE", "1")], &cmd);
    assert!(out.stderr.contains("Location"), "asked for: {}", out.stderr);
    assert!(out.stderr.contains("\u{1b}["), "colour on a terminal: {}", out.stderr);

    let out = on_a_terminal(&[("RUST_LIB_BACKTRACE", "1"), ("NO_COLOR", "1")], &cmd);
    assert!(out.stderr.contains("Location"), "asked for: {}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "NO_COLOR is honoured: {}", out.stderr);
}

/// Every command path (`["produce", "tabular"]`, ...), the top level included.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, all: &mut Vec<Vec<String>>) {
        all.push(path.clone());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut next = path.clone();
            next.push(sub.get_name().to_string());
            walk(sub, next, all);
        }
    }
    let mut all = Vec::new();
    walk(&Cli::command(), Vec::new(), &mut all);
    all
}

/// Lines of `text` wider than `width`, except clap's usage line (never wrapped) and a line
/// that is one unbreakable word.
fn too_wide(text: &str, width: usize) -> Vec<String> {
    text.lines()
        .filter(|l| l.chars().count() > width)
        .filter(|l| !l.starts_with("Usage: ") && l.trim().contains(' '))
        .map(String::from)
        .collect()
}

fn help(path: &[String], flag: &str, columns: Option<&str>) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push(flag);
    let env: Vec<(&str, &str)> = columns.map(|c| ("COLUMNS", c)).into_iter().collect();
    // No terminal anywhere (stdin, stdout, stderr): the width comes from COLUMNS.
    let child = clean_command(&env, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mqdemo binary starts");
    let out = wait(child, DEADLINE);
    assert_eq!(out.code(), Some(0), "{args:?}: {}", out.stderr);
    out.stdout
}

#[test]
fn help_is_wrapped_to_the_terminal_width() {
    let paths = command_paths();
    assert!(paths.len() >= 10, "every command: {paths:?}");
    for path in &paths {
        for flag in ["--help", "-h"] {
            let text = help(path, flag, Some("60"));
            let wide = too_wide(&text, 60);
            assert!(wide.is_empty(), "mqdemo {} {flag} with COLUMNS=60: {wide:#?}", path.join(" "));
        }
    }
}

#[test]
fn help_without_a_terminal_and_on_wide_ones_stays_at_100_columns() {
    for path in [vec![], vec!["produce".to_string(), "tabular".to_string()]] {
        for columns in [None, Some("300")] {
            let text = help(&path, "--help", columns);
            let wide = too_wide(&text, 100);
            assert!(
                wide.is_empty(),
                "mqdemo {} --help, COLUMNS={columns:?}: {wide:#?}",
                path.join(" ")
            );
            // Wrapped, not cut short: some line uses most of the width.
            assert!(text.lines().any(|l| l.len() > 80), "{text}");
        }
    }
}

/// The model of docker-compose.yaml's `python-model` config (its `content: |` block).
fn compose_python_model() -> String {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yaml"))
            .expect("docker-compose.yaml");
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != "  python-model:").skip(1);
    assert_eq!(
        lines.next().map(str::trim),
        Some("content: |"),
        "python-model holds a content block"
    );
    let body: Vec<&str> = lines.take_while(|l| l.is_empty() || l.starts_with("      ")).collect();
    let model: Vec<&str> = body.iter().map(|l| l.get(6..).unwrap_or("")).collect();
    assert!(model.len() > 3, "the model: {model:?}");
    model.join("\n") + "\n"
}

/// mqdemo against the test broker, as in the compose services (the python image's
/// PYTHONUNBUFFERED=1 included).
fn compose_like(args: &[&str]) -> Output {
    let child =
        clean_command(&[("AMQP_URL", &crate::support::url()), ("PYTHONUNBUFFERED", "1")], args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mqdemo binary starts");
    wait(child, Duration::from_secs(60))
}

/// What the stand-in model should answer for the first `n` rows of the sample CSV: the
/// months among PAY_0, PAY_2..PAY_6 above 0.
fn late_months(n: usize) -> Vec<(i64, i64)> {
    let csv =
        std::fs::read_to_string(crate::support::data("tabular_data.csv")).expect("sample CSV");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let months: Vec<usize> =
        ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"].map(col).to_vec();
    lines
        .take(n)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let late = months.iter().filter(|&&i| fields[i].parse::<i64>().is_ok_and(|v| v > 0));
            (fields[col("ID")].parse().expect("ID"), late.count() as i64)
        })
        .collect()
}

#[test]
fn compose_python_model_pipes_rows() {
    use crate::support::{TestQueue, data, s};
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("late_months.py");
    std::fs::write(&model, compose_python_model()).expect("model written");
    let rows = TestQueue::new("compose-python-rows");
    let scores = TestQueue::new("compose-python-scores");
    let _failed = TestQueue::named(format!("{}.failed", rows.name));
    let file = data("tabular_data.csv");
    let produce =
        ["produce", "tabular", "--file", s(&file), "--queue", &rows.name, "--num-records", "20"];
    compose_like(&produce).expect_code(0);
    let exec = format!("python3 {}", quoted(s(&model)));
    let pipe =
        ["pipe", "--from", &rows.name, "--to", &scores.name, "--exec", &exec, "--count", "20"];
    compose_like(&pipe).expect_code(0);
    let consume = ["consume", "tabular", "--queue", &scores.name, "--count", "20"];
    let out = compose_like(&consume).expect_code(0);
    let answers: Vec<(i64, i64)> = out
        .stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON answer");
            (v["ID"].as_i64().expect("ID"), v["late_months"].as_i64().expect("late_months"))
        })
        .collect();
    assert_eq!(answers, late_months(20), "the model's answers, in order");
}

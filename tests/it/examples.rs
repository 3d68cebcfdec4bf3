//! The ML examples (examples/anomaly_detection.rs, digits.rs, image_classification.rs,
//! model_serving.rs, pipeline.rs) run end to end against the broker, as a user runs them:
//! each must exit 0 with its own `check passed` line and leave none of its queues behind.
//! An example that overruns the deadline is killed with everything it started, and its
//! queues are deleted here.

use crate::support::{self, Output};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Generous for a few seconds of work on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// The digits example's first run in a fresh target/ makes its venv: pip installs
/// scikit-learn, NumPy, SciPy and Pillow (the test took 82 s here with pip's cache warm, 16 s
/// with the venv made; the install alone took 69 s with an empty pip cache).
const DIGITS_DEADLINE: Duration = Duration::from_secs(900);

const EXAMPLES: [&str; 5] =
    ["anomaly_detection", "digits", "image_classification", "model_serving", "pipeline"];

#[test]
fn anomaly_detection_finds_every_injected_anomaly() {
    let out = run_example("anomaly_detection", "anomaly", &["sensors", "alerts"]);
    assert!(out.stdout.contains("8/8 injected anomalies found"), "{}", out.stdout);
}

#[test]
fn image_classification_labels_every_picture() {
    let out = run_example("image_classification", "images", &["images", "labels"]);
    assert!(out.stdout.contains("12/12 pictures labelled correctly"), "{}", out.stdout);
}

#[test]
fn model_serving_answers_every_request_and_stores_every_prediction() {
    let out = run_example("model_serving", "serving", &["requests", "predictions"]);
    assert!(
        out.stdout.contains("100/100 replies (0 errors), 100 rows in SQLite"),
        "{}",
        out.stdout
    );
}

#[test]
fn pipeline_scores_every_row_through_three_stages() {
    let out = run_example("pipeline", "pipeline", &["raw", "cleaned", "features", "scores"]);
    assert!(out.stdout.contains("300/300 rows scored (0 missing, 0 twice)"), "{}", out.stdout);
}

/// The Python model: the venv in target/digits-venv is made on the first run (a failed
/// install fails this test) and reused after; 360 held-out PNGs go through
/// `pipe --batch-size 32` and land in SQLite.
#[test]
fn digits_classifies_every_held_out_png_once_with_a_python_model() {
    let out = run_example_within("digits", "digits", &["images", "answers"], DIGITS_DEADLINE);
    assert!(out.stdout.contains("check passed: 360/360 answered once"), "{}", out.stdout);
}

/// Without python3 on PATH, the example names the fix and makes no venv.
#[test]
fn digits_says_how_to_get_python3_when_it_is_missing() {
    let venv = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(example("digits"));
    cmd.env("MQDEMO_BIN", env!("CARGO_BIN_EXE_mqdemo"))
        .env("AMQP_URL", support::url())
        .env("DIGITS_VENV", venv.path().join("venv"))
        .env("PATH", venv.path());
    let out = support::wait(spawn(cmd), DEADLINE);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("digits: error: python3 is not on PATH: install Python 3.11"),
        "{}",
        out.stderr
    );
    assert!(!venv.path().join("venv").exists(), "no venv without python3");
}

#[test]
fn examples_say_how_to_build_mqdemo_when_it_is_missing() {
    let mut cmd = Command::new(example("anomaly_detection"));
    cmd.env("MQDEMO_BIN", "/nonexistent/mqdemo").env("AMQP_URL", support::url());
    let out = support::wait(spawn(cmd), DEADLINE);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("anomaly_detection: error: build mqdemo first: cargo build --release"),
        "{}",
        out.stderr
    );
}

/// Run one example to completion; assert exit 0, its check line, and that the queues it
/// made (`<prefix>-<pid>-<suffix>`, and their `.failed` queues) are gone.
fn run_example(name: &str, prefix: &str, suffixes: &[&str]) -> Output {
    run_example_within(name, prefix, suffixes, DEADLINE)
}

/// [`run_example`] with its own deadline.
fn run_example_within(name: &str, prefix: &str, suffixes: &[&str], deadline: Duration) -> Output {
    let mut cmd = Command::new(example(name));
    cmd.env("MQDEMO_BIN", env!("CARGO_BIN_EXE_mqdemo")).env("AMQP_URL", support::url());
    // Its own process group, so a kill at the deadline reaches the mqdemo commands and model
    // children it started too.
    cmd.process_group(0);
    let child = spawn(cmd);
    let pid = child.id();
    let leftovers = Leftovers {
        pid,
        queues: suffixes
            .iter()
            .flat_map(|s| [format!("{prefix}-{pid}-{s}"), format!("{prefix}-{pid}-{s}.failed")])
            .collect(),
    };
    let out = support::wait(child, deadline);
    let out = out.expect_code(0);
    assert!(out.stdout.contains(&format!("{name}: check passed")), "{}", out.stdout);
    let left: Vec<&String> = leftovers.queues.iter().filter(|q| queue_exists(q)).collect();
    assert!(left.is_empty(), "{name} left queues behind: {left:?}");
    out
}

fn spawn(mut cmd: Command) -> std::process::Child {
    cmd.env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("example binary starts")
}

/// The built example, next to the mqdemo binary under test (target/<profile>/examples/).
/// Built here once per run: `cargo test` builds examples, but `cargo test --test it` does
/// not, and a stale binary would test old code.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_mqdemo")).parent().expect("target dir");
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        for example in EXAMPLES {
            cmd.args(["--example", example]);
        }
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            other => Err(format!("building the examples failed: {other:?}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    profile_dir.join("examples").join(name)
}

fn queue_exists(name: &str) -> bool {
    let mut conn = support::connect();
    let exists = conn.open_channel(None).expect("channel").queue_declare_passive(name).is_ok();
    let _ = conn.close();
    exists
}

/// On a failed test: kill the example's process group and delete its queues.
struct Leftovers {
    pid: u32,
    queues: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.pid)]).status();
        let mut conn = support::connect();
        for q in &self.queues {
            if let Ok(ch) = conn.open_channel(None) {
                let _ = ch.queue_delete(q.as_str(), Default::default());
            }
        }
        let _ = conn.close();
    }
}

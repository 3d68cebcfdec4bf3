//! A real Python model behind `mqdemo pipe`: scikit-learn's bundled digits (it ships inside
//! the package; nothing is downloaded). examples/digits/model.py trains a classifier on the
//! training split at start-up; the held-out digits travel as PNG files through the queues
//! and are classified in batches of 32, one model call per batch.
//!
//! Run: `cargo build --release && cargo run --release --example digits`
//! (broker at AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f; python3 3.11+ and
//! PyPI reachable on the first run).
//!
//! It makes a venv (env DIGITS_VENV, default target/digits-venv) with
//! examples/digits/requirements.txt installed, once: later runs reuse it until the
//! requirements change. Then it writes the held-out digits as PNGs
//! (examples/digits/write_images.py, true label in the file name), and runs
//! `mqdemo produce image`, `mqdemo pipe --framing frames --batch-size 32 --exec
//! '<venv>/bin/python examples/digits/model.py'` and `mqdemo consume tabular --sqlite
//! --with-meta`. It checks the SQLite table: every image answered exactly once (by its
//! `_mq_source`) and an accuracy of at least 0.9; deletes its queues and exits 0 only if
//! the check passed.

mod common;
#[path = "common/venv.rs"]
mod venv;

use common::{Env, Res, quote};
use rusqlite::types::Value as Sql;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The Python side: requirements.txt, model.py, write_images.py, digits_split.py.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/digits");
/// The model child's script.
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/digits/model.py");
/// Inputs per model call.
const BATCH: &str = "32";
/// The check's bar on the held-out digits.
const MIN_ACCURACY: f64 = 0.9;
/// The SQLite table of answers.
const TABLE: &str = "digits";

fn main() -> ExitCode {
    let result = match std::env::args().nth(1) {
        None => orchestrate(),
        Some(other) => Err(format!(
            "unknown argument {other:?}: run with no arguments (the model is {DIR}/model.py)"
        )
        .into()),
    };
    common::finish("digits", result)
}

/// venv -> write PNGs -> produce image -> pipe through model.py -> consume --sqlite -> check.
fn orchestrate() -> Res<bool> {
    let env = Env::new("digits")?;
    let (images_q, answers_q) = (env.queue("images"), env.queue("answers"));
    let _cleanup = env.cleanup(&[&images_q, &answers_q]);
    println!(
        "digits: scikit-learn's load_digits through a Python model, queues {images_q} -> \
         {answers_q}"
    );
    let venv_dir = venv_dir(&env);
    let (python, made) = venv::ready(&venv_dir, &Path::new(DIR).join("requirements.txt"))?;
    match made {
        venv::Made::Reused => println!("  venv:    {} (reused)", shown(&venv_dir).display()),
        venv::Made::Installed(took) => println!("  venv:    made in {:.1} s", took.as_secs_f64()),
    }

    let work = tempfile::tempdir()?;
    let images = work.path().join("images");
    let mut write = python_command(&python);
    write.arg(Path::new(DIR).join("write_images.py")).arg(&images);
    common::run(write, "python examples/digits/write_images.py")?;
    let expected = labelled_images(&images)?;
    println!("  images:  {} held-out digits written as PNGs", expected.len());

    let images_arg = images.to_string_lossy();
    let produced = common::run(
        env.mqdemo(&["produce", "image", "--directory", &images_arg, "--queue", &images_q]),
        "mqdemo produce image",
    )?;
    println!("  produce: {}", produced.summary());

    let count = expected.len().to_string();
    println!("  pipe:    {}", pipe(&env, &images_q, &answers_q, &python, &count)?.summary());
    let db = work.path().join("results.db");
    println!("  consume: {}", consume(&env, &answers_q, &db, &count)?.summary());

    Ok(check(&expected, &read_answers(&db)?))
}

/// `mqdemo pipe` of `count` images through model.py, `BATCH` per model call.
fn pipe(env: &Env, from: &str, to: &str, python: &Path, count: &str) -> Res<common::Output> {
    let model = format!("{} {}", quote(&python.to_string_lossy()), quote(MODEL));
    let mut cmd = env.mqdemo(&["pipe", "--from", from, "--to", to, "--framing", "frames"]);
    cmd.args(["--batch-size", BATCH, "--exec", &model, "--count", count]);
    cmd.args(["--idle-timeout", "20"]);
    // The model's imports stay out of examples/digits/ (no __pycache__ there).
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    let out = common::run(cmd, "mqdemo pipe")?;
    // model.py's own log (pipe shows the model's stderr): its training, and its calls.
    for line in out.stderr.lines().filter_map(|l| l.split_once("digits model: ")) {
        println!("  model:   {}", line.1);
    }
    Ok(out)
}

/// `mqdemo consume tabular --sqlite db --with-meta` of `count` answers.
fn consume(env: &Env, queue: &str, db: &Path, count: &str) -> Res<common::Output> {
    let mut cmd = env.mqdemo(&["consume", "tabular", "--queue", queue, "--sqlite"]);
    cmd.arg(db).args(["--table", TABLE, "--with-meta", "--count", count]);
    cmd.args(["--idle-timeout", "10"]);
    common::run(cmd, "mqdemo consume tabular --sqlite")
}

/// The venv's Python, writing no `__pycache__` into examples/digits/.
fn python_command(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// DIGITS_VENV, else `digits-venv` in the target directory this example was built in.
fn venv_dir(env: &Env) -> PathBuf {
    if let Some(dir) = std::env::var_os("DIGITS_VENV") {
        return PathBuf::from(dir);
    }
    // target/<profile>/examples/digits -> target
    let target = env.me.ancestors().nth(3).map(Path::to_path_buf);
    target
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("digits-venv")
}

/// `path` relative to the current directory when it is under it (as `cargo run` prints).
fn shown(path: &Path) -> &Path {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd).unwrap_or(path)
}

/// `(file name, label)` of every `test_<i>_label<d>.png` write_images.py wrote, sorted.
fn labelled_images(dir: &Path) -> Res<Vec<(String, i64)>> {
    let unreadable =
        |e: std::io::Error| format!("cannot read the images in {}: {e}", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name().to_string_lossy().into_owned();
        let label = label_of(&name).ok_or_else(|| {
            format!("{name} in {} is not named test_<i>_label<digit>.png", dir.display())
        })?;
        out.push((name, label));
    }
    out.sort();
    if out.is_empty() {
        return Err(format!("write_images.py wrote no images to {}", dir.display()).into());
    }
    Ok(out)
}

/// The true digit in a name like `test_0042_label7.png`.
fn label_of(name: &str) -> Option<i64> {
    let (_, rest) = name.rsplit_once("_label")?;
    rest.strip_suffix(".png")?.parse().ok()
}

/// One stored answer: the image it answers (`_mq_source`) and what the model said.
struct Answer {
    source: Option<String>,
    digit: Option<i64>,
    confidence: Option<f64>,
    error: Option<String>,
}

/// Every row of the answers table.
fn read_answers(db: &Path) -> Res<Vec<Answer>> {
    let conn =
        rusqlite::Connection::open(db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let mut stmt = conn.prepare(&format!("SELECT * FROM {TABLE}"))?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let at = |name: &str| columns.iter().position(|c| c == name);
    let (source, digit, confidence, error) =
        (at("_mq_source"), at("digit"), at("confidence"), at("error"));
    let rows = stmt.query_map([], |row| {
        let get = |i: Option<usize>| i.map_or(Ok(Sql::Null), |i| row.get::<_, Sql>(i));
        Ok(Answer {
            source: text(get(source)?),
            digit: match get(digit)? {
                Sql::Integer(n) => Some(n),
                _ => None,
            },
            confidence: match get(confidence)? {
                Sql::Real(x) => Some(x),
                Sql::Integer(n) => Some(n as f64),
                _ => None,
            },
            error: text(get(error)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn text(v: Sql) -> Option<String> {
    match v {
        Sql::Text(s) => Some(s),
        _ => None,
    }
}

/// Print the verdict: every image answered exactly once, accuracy >= [`MIN_ACCURACY`].
fn check(expected: &[(String, i64)], answers: &[Answer]) -> bool {
    let mut by_source: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for a in answers {
        by_source.entry(a.source.as_deref().unwrap_or("")).or_default().push(a);
    }
    let (mut once, mut missing, mut twice, mut right) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for (name, label) in expected {
        match by_source.remove(name.as_str()).as_deref() {
            None | Some([]) => missing += 1,
            Some([a]) => {
                once += 1;
                if a.digit == Some(*label) {
                    right += 1;
                } else {
                    wrong.push(describe(name, a));
                }
            }
            Some(_) => twice += 1,
        }
    }
    let strangers: usize = by_source.values().map(Vec::len).sum();
    for line in answers.iter().take(3).filter_map(|a| a.source.as_deref().map(|s| describe(s, a))) {
        println!("    {line}");
    }
    for line in &wrong {
        println!("    {line}  WRONG");
    }
    let n = expected.len();
    let accuracy = right as f64 / n as f64;
    let ok = once == n && strangers == 0 && accuracy >= MIN_ACCURACY;
    let verdict = if ok { "check passed" } else { "check FAILED" };
    println!(
        "digits: {verdict}: {once}/{n} answered once ({missing} missing, {twice} more than \
         once, {strangers} unknown), accuracy {accuracy:.3} ({right}/{n}; at least \
         {MIN_ACCURACY} needed)"
    );
    ok
}

fn describe(name: &str, a: &Answer) -> String {
    match (&a.error, a.digit, a.confidence) {
        (Some(e), _, _) => format!("{name:<22} error: {e}"),
        (None, Some(d), Some(c)) => format!("{name:<22} digit {d}  confidence {c:.3}"),
        _ => format!("{name:<22} no digit in the answer"),
    }
}

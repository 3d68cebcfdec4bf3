//! Real-time model serving with `mqdemo serve` and `mqdemo request`, predictions stored by
//! `mqdemo consume tabular --sqlite`: a logistic-regression model of credit-card default
//! (weights in examples/data/credit_model.json, fitted offline by
//! examples/data/fit_credit_model.py) answers requests made of rows of
//! examples/data/tabular_data.csv.
//!
//! Run: `cargo build --release && cargo run --release --example model_serving`
//! (broker at AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! With no arguments this program orchestrates: it starts `mqdemo serve` in the background
//! with itself as the model, sends 100 rows with `mqdemo request` (one reply per row, latency
//! percentiles), stores the results queue in SQLite with `mqdemo consume tabular --sqlite`,
//! checks the replies and the table, stops the service with SIGTERM, deletes its queues and
//! exits 0 only if the checks passed. `model_serving model [--model FILE]` is the model
//! child: one JSON row per stdin line in, one prediction JSON line out.

mod common;
#[path = "common/credit.rs"]
mod credit;

use common::{Env, Res};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/tabular_data.csv");
const REQUESTS: usize = 100;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => orchestrate(),
        Some("model") => model(&args[1..]).map(|()| true),
        Some(other) => Err(format!(
            "unknown argument {other:?}: run with no arguments, or as `model [--model FILE]`"
        )
        .into()),
    };
    common::finish("model_serving", result)
}

/// The model child: clean -> features -> score, one row at a time.
fn model(args: &[String]) -> Res<()> {
    let path = match args {
        [] => credit::MODEL_FILE.to_string(),
        [flag, path] if flag == "--model" => path.clone(),
        _ => return Err("usage: model_serving model [--model FILE]".into()),
    };
    let model = credit::Model::load(Path::new(&path))?;
    common::answer_lines(|line| {
        // Every request gets a reply, so a bad one is answered with the reason.
        let reply = serde_json::from_str::<Map<String, Value>>(line)
            .map_err(|e| format!("not a JSON row: {e}"))
            .and_then(|row| credit::clean(&row).ok_or_else(|| "row without an ID".to_string()))
            .and_then(|row| model.score(&model.features(&row)).map_err(|e| e.to_string()));
        match reply {
            Ok(prediction) => Value::Object(prediction).to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        }
    })
}

/// serve (background) -> request -> consume --sqlite -> check -> SIGTERM serve.
fn orchestrate() -> Res<bool> {
    let env = Env::new("serving")?;
    let (requests_q, predictions_q) = (env.queue("requests"), env.queue("predictions"));
    let _cleanup = env.cleanup(&[&requests_q, &predictions_q]);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("results.db");
    println!(
        "model_serving: {REQUESTS} requests from examples/data/tabular_data.csv, queues {requests_q} (requests), \
         {predictions_q} (results)"
    );

    let model = env.model_command(&["--model", credit::MODEL_FILE]);
    let mut serve = common::spawn(
        env.mqdemo(&[
            "serve",
            "--queue",
            &requests_q,
            "--exec",
            &model,
            "--results-queue",
            &predictions_q,
        ]),
        "mqdemo serve",
    )?;
    env.wait_for_consumer(&requests_q, &mut serve, Duration::from_secs(30))?;

    let n = REQUESTS.to_string();
    let request = env.mqdemo(&[
        "request",
        "--queue",
        &requests_q,
        "--file",
        DATA,
        "--num-records",
        &n,
        "--timeout",
        "10",
    ]);
    let requested = common::spawn(request, "mqdemo request")?
        .wait_watching(&mut serve, common::STEP_DEADLINE)?;
    for line in requested.stderr.lines().filter(|l| l.contains("p50")) {
        println!("  request: {line}");
    }
    let replies = parse_replies(&requested.stdout)?;

    let db_arg = db.to_string_lossy();
    let consumed = common::run(
        env.mqdemo(&[
            "consume",
            "tabular",
            "--queue",
            &predictions_q,
            "--sqlite",
            &db_arg,
            "--table",
            "predictions",
            "--count",
            &n,
        ]),
        "mqdemo consume tabular --sqlite",
    )?;
    println!("  consume: {}", consumed.summary());
    let (stored, agree) = check_table(&db)?;

    common::terminate(serve.id().ok_or("serve is not running")?)?;
    let served = serve.wait(Duration::from_secs(15))?;
    println!("  serve:   {} (stopped by SIGTERM)", served.summary());

    for reply in replies.iter().take(3) {
        println!("    {}", Value::Object(reply.clone()));
    }
    let errors = replies.iter().filter(|r| r.contains_key("error")).count();
    let ok = replies.len() == REQUESTS && errors == 0 && stored == REQUESTS;
    let verdict = if ok { "check passed" } else { "check FAILED" };
    println!(
        "model_serving: {verdict}: {}/{REQUESTS} replies ({errors} errors), {stored} rows in \
         SQLite table predictions; the model agrees with the actual label on {agree}/{stored}",
        replies.len()
    );
    Ok(ok)
}

/// One reply per stdout line, each a JSON object.
fn parse_replies(stdout: &str) -> Res<Vec<Map<String, Value>>> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| format!("reply is not a JSON object ({e}): {l}").into())
        })
        .collect()
}

/// Rows in the predictions table, and how many predictions match the data set's label.
fn check_table(db: &Path) -> Res<(usize, usize)> {
    let conn = rusqlite::Connection::open(db)
        .map_err(|e| format!("cannot open the results database {}: {e}", db.display()))?;
    let mut stmt = conn.prepare("SELECT ID, predicted_default FROM predictions")?;
    let rows: Vec<(i64, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let actual = labels()?;
    let agree = rows.iter().filter(|(id, p)| actual.get(id) == Some(p)).count();
    Ok((rows.len(), agree))
}

/// ID -> default.payment.next.month, from the data file.
fn labels() -> Res<HashMap<i64, i64>> {
    let mut reader =
        csv::Reader::from_path(DATA).map_err(|e| format!("cannot read {DATA}: {e}"))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| format!("{DATA}: no column {name}"))
    };
    let (id, target) = (col("ID")?, col(credit::TARGET)?);
    let mut out = HashMap::new();
    for record in reader.records() {
        let record = record?;
        let parse = |i: usize| record.get(i).and_then(|v| v.parse::<i64>().ok());
        if let (Some(i), Some(t)) = (parse(id), parse(target)) {
            out.insert(i, t);
        }
    }
    Ok(out)
}

//! A three-stage ML pipeline of chained `mqdemo pipe` commands on the credit-card CSV:
//!
//! ```text
//! raw rows -> [clean] -> cleaned -> [features] -> features -> [score] -> scores
//! ```
//!
//! clean repairs bad values (EDUCATION 0/5/6 -> 4, MARRIAGE 0 -> 3, impossible AGE or
//! LIMIT_BAL -> null), features scales the numeric columns to z-scores and one-hot encodes
//! SEX/EDUCATION/MARRIAGE, score applies the logistic regression in
//! examples/data/credit_model.json. Each stage is its own process reading its own queue, so
//! each can be restarted, scaled (`--workers N`) or replaced (by a Python script, say)
//! without touching the others.
//!
//! Run: `cargo build --release && cargo run --release --example pipeline`
//! (broker at AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! With no arguments this program orchestrates: it writes a copy of
//! examples/data/tabular_data.csv with bad values injected, starts the three pipes and a
//! consumer of the scores at once, produces the 300 rows, and checks that 300 scored rows
//! arrive, each repaired as injected and scored exactly as the same code scores it in
//! process. `pipeline model clean|features|score [--model FILE]` is one stage's child.

mod common;
#[path = "common/credit.rs"]
mod credit;

use common::{Env, Res};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/tabular_data.csv");
const ROWS: usize = 300;

/// One JSON row.
type Row = Map<String, Value>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => orchestrate(),
        Some("model") => stage(&args[1..]).map(|()| true),
        Some(other) => Err(format!(
            "unknown argument {other:?}: run with no arguments, or as \
             `model clean|features|score [--model FILE]`"
        )
        .into()),
    };
    common::finish("pipeline", result)
}

/// One stage's child: JSON row in, JSON row out (an empty line drops the row).
fn stage(args: &[String]) -> Res<()> {
    let usage = "usage: pipeline model clean|features|score [--model FILE]";
    let (name, path) = match args {
        [name] => (name.as_str(), credit::MODEL_FILE.to_string()),
        [name, flag, path] if flag == "--model" => (name.as_str(), path.clone()),
        _ => return Err(usage.into()),
    };
    if !["clean", "features", "score"].contains(&name) {
        return Err(usage.into());
    }
    let model = credit::Model::load(Path::new(&path))?;
    let step = |row: &Row| -> Res<Option<Row>> {
        match name {
            "clean" => Ok(credit::clean(row)),
            "features" => Ok(Some(model.features(row))),
            _ => model.score(row).map(Some),
        }
    };
    common::answer_lines(|line| {
        let answer = serde_json::from_str::<Row>(line)
            .map_err(|e| format!("not a JSON row: {e}").into())
            .and_then(|row| step(&row));
        match answer {
            Ok(Some(row)) => Value::Object(row).to_string(),
            Ok(None) => String::new(),
            Err(e) => {
                // Logged (mqdemo passes stderr through) and dropped.
                eprintln!("pipeline {name}: {e}; dropped: {line}");
                String::new()
            }
        }
    })
}

/// Start clean | features | score | consume, produce the dirty rows, check the scores.
fn orchestrate() -> Res<bool> {
    let env = Env::new("pipeline")?;
    let q: Vec<String> =
        ["raw", "cleaned", "features", "scores"].iter().map(|s| env.queue(s)).collect();
    let _cleanup = env.cleanup(&q.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = tempfile::tempdir()?;
    let (csv, injected) = dirty_copy(&dir.path().join("dirty.csv"))?;
    let scores_file = dir.path().join("scores.jsonl");
    println!(
        "pipeline: {ROWS} rows, {} with injected bad values, queues {} -> {} -> {} -> {}",
        injected.len(),
        q[0],
        q[1],
        q[2],
        q[3]
    );

    let started = Instant::now();
    let n = ROWS.to_string();
    let mut running = Vec::new();
    for (i, name) in ["clean", "features", "score"].into_iter().enumerate() {
        let exec = env.model_command(&[name, "--model", credit::MODEL_FILE]);
        let cmd = env.mqdemo(&[
            "pipe",
            "--from",
            &q[i],
            "--to",
            &q[i + 1],
            "--exec",
            &exec,
            "--count",
            &n,
        ]);
        running.push((name, common::spawn(cmd, &format!("mqdemo pipe ({name})"))?));
    }
    let out = scores_file.to_string_lossy();
    let consume =
        env.mqdemo(&["consume", "tabular", "--queue", &q[3], "--output", &out, "--count", &n]);
    running.push(("consume", common::spawn(consume, "mqdemo consume tabular")?));

    let csv_arg = csv.to_string_lossy();
    let produced = common::run(
        env.mqdemo(&[
            "produce",
            "tabular",
            "--file",
            &csv_arg,
            "--queue",
            &q[0],
            "--num-records",
            &n,
        ]),
        "mqdemo produce tabular",
    )?;
    println!("  produce:  {}", produced.summary());
    for (name, process) in running {
        let done = process.wait(common::STEP_DEADLINE)?;
        println!("  {:<9} {}", format!("{name}:"), done.summary());
    }
    println!("  all stages done in {:.2} s", started.elapsed().as_secs_f64());
    check(&scores_file, &csv, &injected)
}

/// Every row scored once, repaired as injected, with the probability the same code gives
/// in process.
fn check(scores_file: &Path, dirty_csv: &Path, injected: &HashMap<i64, String>) -> Res<bool> {
    let model = credit::Model::load(Path::new(credit::MODEL_FILE))?;
    let mut expected = HashMap::new();
    for row in read_rows(dirty_csv)? {
        let Some(cleaned) = credit::clean(&row) else { continue };
        let scored = model.score(&model.features(&cleaned))?;
        expected.insert(scored.get("ID").and_then(Value::as_i64).unwrap_or(0), scored);
    }
    let text = std::fs::read_to_string(scores_file)
        .map_err(|e| format!("cannot read the consumed scores {}: {e}", scores_file.display()))?;
    let mut seen = HashMap::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let got: Map<String, Value> = serde_json::from_str(line)?;
        let id = got.get("ID").and_then(Value::as_i64).unwrap_or(0);
        *seen.entry(id).or_insert(0) += 1;
        let repaired = got.get("repaired").and_then(Value::as_str).unwrap_or("?");
        if injected.get(&id).map_or("", String::as_str) != repaired {
            problems
                .push(format!("ID {id}: repaired {repaired:?}, injected {:?}", injected.get(&id)));
        }
        if expected.get(&id) != Some(&got) {
            problems.push(format!(
                "ID {id}: scored {}, expected {:?}",
                Value::Object(got),
                expected.get(&id)
            ));
        }
    }
    let missing = (1..=ROWS as i64).filter(|id| !seen.contains_key(id)).count();
    let twice = seen.values().filter(|&&n| n > 1).count();
    let flagged =
        expected.values().filter(|s| s.get("predicted_default") == Some(&Value::from(1))).count();
    println!(
        "  scores:   {} rows, {} distinct IDs, {flagged} predicted to default",
        text.lines().count(),
        seen.len()
    );
    for p in problems.iter().take(5) {
        println!("    {p}");
    }
    let ok = problems.is_empty() && missing == 0 && twice == 0 && seen.len() == ROWS;
    let verdict = if ok { "check passed" } else { "check FAILED" };
    println!(
        "pipeline: {verdict}: {}/{ROWS} rows scored ({missing} missing, {twice} twice), {} \
         repaired rows as injected, {} mismatches",
        seen.len(),
        injected.len(),
        problems.len()
    );
    Ok(ok)
}

/// Write the data file with bad values injected (deterministically): EDUCATION 0/5/6 on
/// every 7th row, MARRIAGE 0 on every 11th, no AGE on every 13th, LIMIT_BAL -1 on every
/// 29th. Returns the file and, per ID, the columns clean must repair.
fn dirty_copy(to: &Path) -> Res<(std::path::PathBuf, HashMap<i64, String>)> {
    let mut reader =
        csv::Reader::from_path(DATA).map_err(|e| format!("cannot read {DATA}: {e}"))?;
    let mut writer =
        csv::Writer::from_path(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let headers = reader.headers()?.clone();
    writer.write_record(&headers)?;
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| format!("{DATA}: no column {name}"))
    };
    let (id_col, edu, mar, age, limit) =
        (col("ID")?, col("EDUCATION")?, col("MARRIAGE")?, col("AGE")?, col("LIMIT_BAL")?);
    let mut injected = HashMap::new();
    for (i, record) in reader.records().take(ROWS).enumerate() {
        let mut fields: Vec<String> = record?.iter().map(str::to_string).collect();
        let n = i + 1;
        // clean's order: EDUCATION, MARRIAGE, SEX, AGE, LIMIT_BAL.
        let mut bad = Vec::new();
        for (every, column, value) in
            [(7, edu, ["0", "5", "6"][n / 7 % 3]), (11, mar, "0"), (13, age, ""), (29, limit, "-1")]
        {
            if n % every == 0 {
                fields[column] = value.to_string();
                bad.push(headers[column].to_string());
            }
        }
        if !bad.is_empty() {
            let id =
                fields[id_col].parse().map_err(|_| format!("{DATA}: row {n} has no numeric ID"))?;
            injected.insert(id, bad.join(","));
        }
        writer.write_record(&fields)?;
    }
    writer.flush()?;
    Ok((to.to_path_buf(), injected))
}

/// The rows of a CSV file typed the way `mqdemo produce tabular` types them (integers
/// become numbers, empty fields null; this data has no decimals).
fn read_rows(path: &Path) -> Res<Vec<Map<String, Value>>> {
    let mut reader = csv::Reader::from_path(path)?;
    let headers = reader.headers()?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let row = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| {
                let typed = match v.parse::<i64>() {
                    _ if v.is_empty() => Value::Null,
                    Ok(n) if n.to_string() == v => Value::from(n),
                    _ => Value::from(v),
                };
                (h.to_string(), typed)
            })
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

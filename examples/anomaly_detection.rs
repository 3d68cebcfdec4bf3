//! Streaming anomaly detection with `mqdemo pipe`: sensor rows go through a queue into a
//! model child that keeps a per-sensor, per-feature exponentially weighted mean and
//! variance and answers an alert for every reading more than `--threshold` standard
//! deviations from it; alerts land in their own queue.
//!
//! Run: `cargo build --release && cargo run --release --example anomaly_detection`
//! (broker at AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! With no arguments this program orchestrates: it generates sensor data with injected
//! anomalies, runs `mqdemo produce tabular`, `mqdemo pipe` (with itself as the model) and
//! `mqdemo consume tabular`, checks that every injected anomaly raised an alert, deletes
//! its queues and exits 0 only if the check passed. `anomaly_detection model [--threshold
//! Z] [--alpha A] [--warmup N]` is the model child that `mqdemo pipe` runs: one JSON row per
//! stdin line in, one alert JSON line (or an empty line: no alert) out.
//! `anomaly_detection data` prints the generated CSV.

mod common;

use common::{Env, Res};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;

/// Readings per sensor in the generated data.
const ROUNDS: usize = 100;
/// Sensors: name and baseline (temperature C, pressure hPa, vibration mm/s).
const SENSORS: [(&str, [f64; 3]); 4] = [
    ("boiler", [68.0, 1013.0, 2.5]),
    ("greenhouse", [24.0, 1009.0, 0.4]),
    ("cold-store", [4.0, 1015.0, 1.1]),
    ("server-rack", [31.0, 1012.0, 0.8]),
];
/// Feature columns, their noise (one standard deviation) and the decimals they are written
/// with.
const FEATURES: [(&str, f64, i32); 3] =
    [("temperature", 0.3, 2), ("pressure", 0.8, 1), ("vibration", 0.05, 3)];
const THRESHOLD: f64 = 4.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => orchestrate(),
        Some("model") => model::run(&args[1..]).map(|()| true),
        Some("data") => {
            // The generated CSV on stdout, to try the model by hand.
            print!("{}", generate(ROUNDS).csv);
            Ok(true)
        }
        Some(other) => Err(format!(
            "unknown argument {other:?}: run with no arguments, `model [--threshold Z]` or `data`"
        )
        .into()),
    };
    common::finish("anomaly_detection", result)
}

/// Generate -> produce -> pipe through the model -> consume alerts -> check.
fn orchestrate() -> Res<bool> {
    let env = Env::new("anomaly")?;
    let (sensors_q, alerts_q) = (env.queue("sensors"), env.queue("alerts"));
    let _cleanup = env.cleanup(&[&sensors_q, &alerts_q]);
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("sensors.csv");
    let alerts_file = dir.path().join("alerts.jsonl");
    let data = generate(ROUNDS);
    std::fs::write(&csv, &data.csv)
        .map_err(|e| format!("cannot write {}: {e}; check the temp directory", csv.display()))?;
    let rows = ROUNDS * SENSORS.len();
    println!(
        "anomaly_detection: {rows} sensor rows ({} sensors x {ROUNDS}), {} injected anomalies, \
         queues {sensors_q} -> {alerts_q}",
        SENSORS.len(),
        data.anomalies.len()
    );

    let csv_arg = csv.to_string_lossy();
    let produced = common::run(
        env.mqdemo(&["produce", "tabular", "--file", &csv_arg, "--queue", &sensors_q]),
        "mqdemo produce tabular",
    )?;
    println!("  produce: {}", produced.summary());

    let model = env.model_command(&["--threshold", &THRESHOLD.to_string()]);
    let count = rows.to_string();
    let piped = common::run(
        env.mqdemo(&[
            "pipe", "--from", &sensors_q, "--to", &alerts_q, "--exec", &model, "--count", &count,
        ]),
        "mqdemo pipe",
    )?;
    println!("  pipe:    {}", piped.summary());

    // pipe acks each input only after its alert is confirmed, so the queue now holds every
    // alert: consume exactly that many instead of waiting for an idle timeout.
    let waiting = env.depth(&alerts_q)?;
    let mut alerts = Vec::new();
    if waiting > 0 {
        let out = alerts_file.to_string_lossy();
        let consumed = common::run(
            env.mqdemo(&[
                "consume",
                "tabular",
                "--queue",
                &alerts_q,
                "--output",
                &out,
                "--count",
                &waiting.to_string(),
            ]),
            "mqdemo consume tabular",
        )?;
        println!("  consume: {}", consumed.summary());
        alerts = read_alerts(&alerts_file)?;
    }
    Ok(check(&data.anomalies, &alerts))
}

/// Compare the alerts with the injected anomalies; print the report and the check line.
fn check(injected: &HashMap<u64, String>, alerts: &[Map<String, Value>]) -> bool {
    let mut alerted = BTreeSet::new();
    let mut report = String::new();
    for alert in alerts {
        let row = alert.get("row").and_then(Value::as_u64).unwrap_or(0);
        alerted.insert(row);
        let verdict = if injected.contains_key(&row) { "injected" } else { "FALSE POSITIVE" };
        let field = |k: &str| alert.get(k).map(Value::to_string).unwrap_or_default();
        let _ = writeln!(
            report,
            "    row {row:>3}  {:<13} {:<11} value {:>8}  z {:>7}  {verdict}",
            field("sensor").trim_matches('"'),
            field("feature").trim_matches('"'),
            field("value"),
            field("z"),
        );
    }
    let missed: Vec<String> = injected
        .iter()
        .filter(|(row, _)| !alerted.contains(row))
        .map(|(row, what)| format!("row {row} ({what})"))
        .collect();
    let false_positives = alerted.iter().filter(|r| !injected.contains_key(r)).count();
    print!("  alerts:  {}\n{report}", alerts.len());
    let found = injected.len() - missed.len();
    if missed.is_empty() {
        println!(
            "anomaly_detection: check passed: {found}/{} injected anomalies found, \
             {false_positives} false positives",
            injected.len()
        );
        true
    } else {
        println!(
            "anomaly_detection: check FAILED: {found}/{} injected anomalies found; missed {}",
            injected.len(),
            missed.join(", ")
        );
        false
    }
}

fn read_alerts(path: &std::path::Path) -> Res<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the consumed alerts {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}: not a JSON alert ({e}): {l}", path.display()).into())
        })
        .collect()
}

/// Generated sensor data: the CSV text, and the injected anomalies by row number.
struct Generated {
    csv: String,
    anomalies: HashMap<u64, String>,
}

/// `rounds` readings from every sensor, one minute apart, with slow drift, Gaussian noise
/// and a handful of spikes of 7 to 12 standard deviations after the model's warm-up.
fn generate(rounds: usize) -> Generated {
    let mut rng = SplitMix64(20240314);
    let mut csv = String::from("reading,timestamp,sensor_id,temperature,pressure,vibration\n");
    let mut anomalies = HashMap::new();
    // Eight spikes spread over the second two thirds of the run.
    let spikes: HashMap<usize, (usize, usize, f64)> = (0..8)
        .map(|k| {
            let round = rounds / 3 + k * (rounds * 2 / 3) / 8 + rng.below(4) as usize;
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            let size = sign * (7.0 + rng.below(50) as f64 / 10.0);
            (round, (k % SENSORS.len(), k % FEATURES.len(), size))
        })
        .collect();
    let mut reading = 0u64;
    for round in 0..rounds {
        for (s, (name, base)) in SENSORS.iter().enumerate() {
            reading += 1;
            let seconds = 6 * 3600 + round * 60 + s * 15;
            let (h, m, sec) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
            let _ = write!(csv, "{reading},2024-03-14T{h:02}:{m:02}:{sec:02}Z,{name}");
            let drift = (round as f64 * std::f64::consts::TAU / 200.0).sin();
            for (f, (feature, sd, decimals)) in FEATURES.iter().enumerate() {
                let mut value = base[f] + drift * sd * 3.0 + rng.gaussian() * sd;
                if let Some(&(ss, ff, size)) = spikes.get(&round)
                    && (ss, ff) == (s, f)
                {
                    value += size * sd;
                    anomalies.insert(reading, format!("{name} {feature} {size:+.1} sd"));
                }
                let scale = 10f64.powi(*decimals);
                // Shortest text of the rounded value, so produce types it as a JSON number.
                let _ = write!(csv, ",{}", (value * scale).round() / scale);
            }
            csv.push('\n');
        }
    }
    Generated { csv, anomalies }
}

/// A small deterministic PRNG (SplitMix64), so every run sees the same data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn gaussian(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// The model child: streaming z-scores over exponentially weighted statistics.
mod model {
    use super::common::{self, Res};
    use serde_json::{Map, Value, json};
    use std::collections::HashMap;

    /// Settings from the command line.
    pub struct Settings {
        threshold: f64,
        alpha: f64,
        warmup: u64,
    }

    pub fn run(args: &[String]) -> Res<()> {
        let settings = parse(args)?;
        let mut state = State::default();
        common::answer_lines(|line| match serde_json::from_str::<Map<String, Value>>(line) {
            Ok(row) => state.observe(&row, &settings).map(|a| a.to_string()).unwrap_or_default(),
            Err(e) => {
                // Not a row: say so on stderr (mqdemo passes it through) and publish nothing.
                eprintln!("anomaly model: input is not a JSON object ({e}); skipped: {line}");
                String::new()
            }
        })
    }

    fn parse(args: &[String]) -> Res<Settings> {
        let mut s = Settings { threshold: super::THRESHOLD, alpha: 0.1, warmup: 20 };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number =
                || value.parse::<f64>().map_err(|_| format!("{flag} {value}: not a number"));
            match flag.as_str() {
                "--threshold" => s.threshold = number()?,
                "--alpha" => s.alpha = number()?,
                "--warmup" => s.warmup = number()? as u64,
                _ => {
                    return Err(format!(
                        "unknown model flag {flag}: use --threshold, --alpha, --warmup"
                    )
                    .into());
                }
            }
        }
        if !(s.alpha > 0.0 && s.alpha <= 1.0) {
            return Err(format!("--alpha {}: must be in (0, 1]", s.alpha).into());
        }
        Ok(s)
    }

    /// Exponentially weighted mean and variance of one feature of one sensor.
    #[derive(Default, Clone, Copy)]
    pub struct Ewma {
        n: u64,
        mean: f64,
        var: f64,
    }

    impl Ewma {
        /// The z-score of `x`, once `warmup` values have been seen.
        pub fn z(&self, x: f64, warmup: u64) -> Option<f64> {
            (self.n >= warmup.max(2)).then(|| (x - self.mean) / self.var.sqrt().max(1e-9))
        }

        /// Fold in `x`. The weight is 1/n until it drops to `alpha`, so the first values
        /// give the plain mean and variance instead of starting from zero.
        pub fn update(&mut self, x: f64, alpha: f64) {
            self.n += 1;
            let a = (1.0 / self.n as f64).max(alpha);
            let d = x - self.mean;
            self.mean += a * d;
            self.var = (1.0 - a) * (self.var + a * d * d);
        }
    }

    /// Statistics per (sensor, feature).
    #[derive(Default)]
    pub struct State {
        stats: HashMap<(String, String), Ewma>,
    }

    impl State {
        /// Score one row; the alert for its most unusual feature above the threshold.
        /// Every numeric column except `reading` is a feature.
        pub fn observe(&mut self, row: &Map<String, Value>, s: &Settings) -> Option<Value> {
            let sensor = match row.get("sensor_id") {
                Some(Value::String(id)) => id.clone(),
                Some(other) => other.to_string(),
                None => String::from("?"),
            };
            let mut worst: Option<(String, f64, f64)> = None;
            for (feature, value) in row {
                let Some(x) = number(value).filter(|_| feature != "reading") else { continue };
                let stat = self.stats.entry((sensor.clone(), feature.clone())).or_default();
                match stat.z(x, s.warmup) {
                    // An outlier is not folded in: one spike must not hide the next.
                    Some(z) if z.abs() > s.threshold => {
                        if worst.as_ref().is_none_or(|w| z.abs() > w.2.abs()) {
                            worst = Some((feature.clone(), x, z));
                        }
                    }
                    _ => stat.update(x, s.alpha),
                }
            }
            let (feature, value, z) = worst?;
            Some(json!({
                "row": row.get("reading").cloned().unwrap_or(Value::Null),
                "timestamp": row.get("timestamp").cloned().unwrap_or(Value::Null),
                "sensor": sensor,
                "feature": feature,
                "value": value,
                "z": (z * 100.0).round() / 100.0,
            }))
        }
    }

    /// A JSON number, or a string holding one (`produce` keeps `1.50` as text).
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok().filter(|x: &f64| x.is_finite()),
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ewma_starts_as_the_plain_mean_and_variance() {
            let mut e = Ewma::default();
            for x in [1.0, 2.0, 3.0, 4.0] {
                e.update(x, 0.1);
            }
            assert!((e.mean - 2.5).abs() < 1e-12);
            assert!((e.var - 1.25).abs() < 1e-12);
            assert!((e.z(5.0, 2).unwrap_or(0.0) - 2.5 / 1.25f64.sqrt()).abs() < 1e-12);
        }
    }
}

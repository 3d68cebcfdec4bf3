//! The credit-default model of the model_serving and pipeline examples, in three steps that
//! can run in one process (model_serving) or as three pipeline stages (pipeline):
//! [`clean`] repairs a raw row of examples/data/tabular_data.csv, [`Model::features`]
//! scales the numeric columns and one-hot encodes the categorical ones, [`Model::score`]
//! applies the logistic regression in examples/data/credit_model.json (fitted offline by
//! examples/data/fit_credit_model.py, which applies the same cleaning rules).

use super::Res;
use serde_json::{Map, Value, json};
use std::path::Path;

/// The model file that ships with the examples.
pub const MODEL_FILE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/credit_model.json");

/// The label column of the data set.
pub const TARGET: &str = "default.payment.next.month";

/// An integer value, also when `produce` kept it as text (`007`).
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A numeric value (JSON number or numeric text); None when missing or not a number.
fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|x: &f64| x.is_finite()),
        _ => None,
    }
}

/// Repair one raw row: EDUCATION outside 1-4 (0, 5, 6: "unknown" in the original data)
/// becomes 4 ("others"), MARRIAGE outside 1-3 becomes 3 ("others"), an AGE outside 18-100
/// or a LIMIT_BAL <= 0 becomes null (the scaler puts the mean there), a SEX other than 1/2
/// becomes null. Returns None for a row without an ID (dropped: it cannot be matched to
/// anything downstream). Adds `repaired`: the repaired columns, comma-separated.
pub fn clean(row: &Map<String, Value>) -> Option<Map<String, Value>> {
    int(row.get("ID"))?;
    let mut out = row.clone();
    let mut repaired = Vec::new();
    let mut fix = |column: &str, ok: &dyn Fn(i64) -> bool, fallback: Value| {
        if !int(row.get(column)).is_some_and(ok) {
            out.insert(column.to_string(), fallback);
            repaired.push(column.to_string());
        }
    };
    fix("EDUCATION", &|v| (1..=4).contains(&v), json!(4));
    fix("MARRIAGE", &|v| (1..=3).contains(&v), json!(3));
    fix("SEX", &|v| v == 1 || v == 2, Value::Null);
    fix("AGE", &|v| (18..=100).contains(&v), Value::Null);
    fix("LIMIT_BAL", &|v| v > 0, Value::Null);
    out.insert("repaired".into(), json!(repaired.join(",")));
    Some(out)
}

/// The logistic-regression model and its feature encoding.
pub struct Model {
    /// (column, mean, standard deviation) of each scaled numeric column.
    numeric: Vec<(String, f64, f64)>,
    /// (column, values) of each one-hot encoded column: feature `<column>_<value>`.
    one_hot: Vec<(String, Vec<i64>)>,
    /// Weight per feature name, in feature order.
    weights: Vec<(String, f64)>,
    bias: f64,
    threshold: f64,
}

impl Model {
    /// Read the model file (see examples/data/fit_credit_model.py for its fields).
    pub fn load(path: &Path) -> Res<Model> {
        let bad = |what: &str| {
            format!(
                "{}: {what}; regenerate it with python3 examples/data/fit_credit_model.py",
                path.display()
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let list = |k: &str| {
            v.get(k).and_then(Value::as_array).ok_or_else(|| bad(&format!("no {k} list")))
        };
        let field = |o: &Value, k: &str| {
            o.get(k).cloned().ok_or_else(|| bad(&format!("entry without {k}")))
        };
        let mut numeric = Vec::new();
        for n in list("numeric")? {
            let column = field(n, "column")?.as_str().unwrap_or_default().to_string();
            let (mean, std) = (field(n, "mean")?.as_f64(), field(n, "std")?.as_f64());
            numeric.push((column, mean.unwrap_or(0.0), std.filter(|s| *s > 0.0).unwrap_or(1.0)));
        }
        let mut one_hot = Vec::new();
        for c in list("one_hot")? {
            let column = field(c, "column")?.as_str().unwrap_or_default().to_string();
            let values = field(c, "values")?;
            let values = values.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect());
            one_hot.push((column, values.unwrap_or_default()));
        }
        let weights_map =
            v.get("weights").and_then(Value::as_object).ok_or_else(|| bad("no weights"))?;
        let mut model = Model {
            numeric,
            one_hot,
            weights: Vec::new(),
            bias: v.get("bias").and_then(Value::as_f64).ok_or_else(|| bad("no bias"))?,
            threshold: v.get("threshold").and_then(Value::as_f64).unwrap_or(0.5),
        };
        for name in model.feature_names() {
            let w = weights_map.get(&name).and_then(Value::as_f64);
            model
                .weights
                .push((name.clone(), w.ok_or_else(|| bad(&format!("no weight for {name}")))?));
        }
        Ok(model)
    }

    /// Feature names in order: the scaled numeric columns, then `<column>_<value>`.
    pub fn feature_names(&self) -> Vec<String> {
        let scaled = self.numeric.iter().map(|(c, _, _)| c.clone());
        let hot =
            self.one_hot.iter().flat_map(|(c, vs)| vs.iter().map(move |v| format!("{c}_{v}")));
        scaled.chain(hot).collect()
    }

    /// A cleaned row -> `ID`, the target (when present), `repaired`, and every feature:
    /// numeric columns as z-scores (a missing value scores 0, the mean), categorical ones
    /// as 0/1 per known value.
    pub fn features(&self, row: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for keep in ["ID", TARGET, "repaired"] {
            if let Some(v) = row.get(keep) {
                out.insert(keep.to_string(), v.clone());
            }
        }
        for (column, mean, std) in &self.numeric {
            let z = num(row.get(column)).map_or(0.0, |x| (x - mean) / std);
            out.insert(column.clone(), json!(z));
        }
        for (column, values) in &self.one_hot {
            let v = int(row.get(column));
            for value in values {
                out.insert(format!("{column}_{value}"), json!(u8::from(v == Some(*value))));
            }
        }
        out
    }

    /// P(default next month) from a features row; an error names a missing feature.
    pub fn probability(&self, features: &Map<String, Value>) -> Res<f64> {
        let mut logit = self.bias;
        for (name, w) in &self.weights {
            let x = num(features.get(name))
                .ok_or_else(|| format!("feature {name} missing or not a number"))?;
            logit += w * x;
        }
        Ok(1.0 / (1.0 + (-logit).exp()))
    }

    /// The prediction row published downstream: `ID`, `probability`, `predicted_default`
    /// (0/1 at the model's threshold), and `actual` and `repaired` when the input had them.
    pub fn score(&self, features: &Map<String, Value>) -> Res<Map<String, Value>> {
        let p = self.probability(features)?;
        let mut out = Map::new();
        out.insert("ID".into(), features.get("ID").cloned().unwrap_or(Value::Null));
        out.insert("probability".into(), json!((p * 1e6).round() / 1e6));
        out.insert("predicted_default".into(), json!(u8::from(p >= self.threshold)));
        if let Some(actual) = features.get(TARGET) {
            out.insert("actual".into(), actual.clone());
        }
        if let Some(repaired) = features.get("repaired") {
            out.insert("repaired".into(), repaired.clone());
        }
        Ok(out)
    }
}

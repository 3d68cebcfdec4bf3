#!/usr/bin/env python3
"""Fit the logistic-regression model of the model_serving and pipeline examples.

Run from anywhere:  python3 examples/data/fit_credit_model.py

Reads tabular_data.csv (beside this file; target column default.payment.next.month),
writes credit_model.json: the cleaning rules' outputs scaled and one-hot encoded exactly as
examples/common/credit.rs does, then plain full-batch gradient descent on the log-loss
with a small L2 penalty. Only the standard library; deterministic (no randomness; zero
initial weights), so a rerun writes the same file.
"""

import csv
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = "default.payment.next.month"
NUMERIC = (["LIMIT_BAL", "AGE", "PAY_0"] + [f"PAY_{i}" for i in range(2, 7)]
           + [f"BILL_AMT{i}" for i in range(1, 7)] + [f"PAY_AMT{i}" for i in range(1, 7)])
ONE_HOT = [("SEX", [1, 2]), ("EDUCATION", [1, 2, 3, 4]), ("MARRIAGE", [1, 2, 3])]
STEPS, RATE, L2 = 3000, 0.2, 0.01


def clean(row):
    """Mirror of credit.rs clean(): the repairs, on ints (None = missing)."""
    out = {k: (int(v) if v not in ("", None) else None) for k, v in row.items()}
    if out["EDUCATION"] not in (1, 2, 3, 4):
        out["EDUCATION"] = 4
    if out["MARRIAGE"] not in (1, 2, 3):
        out["MARRIAGE"] = 3
    if out["AGE"] is not None and not 18 <= out["AGE"] <= 100:
        out["AGE"] = None
    if out["LIMIT_BAL"] is not None and out["LIMIT_BAL"] <= 0:
        out["LIMIT_BAL"] = None
    return out


def main():
    with open(os.path.join(HERE, "tabular_data.csv"), newline="") as f:
        rows = [clean(r) for r in csv.DictReader(f)]
    scale = []
    for col in NUMERIC:
        vals = [r[col] for r in rows if r[col] is not None]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) or 1.0
        scale.append({"column": col, "mean": round(mean, 4), "std": round(std, 4)})
    names = [s["column"] for s in scale] + [f"{c}_{v}" for c, vs in ONE_HOT for v in vs]

    def features(r):
        x = [0.0 if r[s["column"]] is None else (r[s["column"]] - s["mean"]) / s["std"]
             for s in scale]
        return x + [1.0 if r[c] == v else 0.0 for c, vs in ONE_HOT for v in vs]

    xs = [features(r) for r in rows]
    ys = [float(r[TARGET]) for r in rows]
    w, b, n = [0.0] * len(names), 0.0, len(rows)
    for _ in range(STEPS):
        gw, gb = [L2 * wi for wi in w], 0.0
        for x, y in zip(xs, ys):
            err = 1.0 / (1.0 + math.exp(-(b + sum(wi * xi for wi, xi in zip(w, x))))) - y
            gb += err / n
            for i, xi in enumerate(x):
                gw[i] += err * xi / n
        w = [wi - RATE * g for wi, g in zip(w, gw)]
        b -= RATE * gb

    def prob(x):
        return 1.0 / (1.0 + math.exp(-(b + sum(wi * xi for wi, xi in zip(w, x)))))
    correct = sum((prob(x) >= 0.5) == (y == 1.0) for x, y in zip(xs, ys))
    model = {
        "description": "logistic regression: P(default next month) from one credit-card row",
        "fitted_by": "examples/data/fit_credit_model.py on examples/data/tabular_data.csv "
                     f"({n} rows; gradient descent, {STEPS} steps, rate {RATE}, L2 {L2})",
        "target": TARGET,
        "numeric": scale,
        "one_hot": [{"column": c, "values": vs} for c, vs in ONE_HOT],
        "weights": {name: round(wi, 6) for name, wi in zip(names, w)},
        "bias": round(b, 6),
        "threshold": 0.5,
        "train_accuracy": round(correct / n, 4),
    }
    with open(os.path.join(HERE, "credit_model.json"), "w") as f:
        json.dump(model, f, indent=2)
        f.write("\n")
    print(f"wrote credit_model.json: {len(names)} weights, train accuracy {correct}/{n}")


if __name__ == "__main__":
    main()

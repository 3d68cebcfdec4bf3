#!/usr/bin/env bash
# The benchmark suite: raw amiquip ceiling vs mqdemo vs pika, one run, one table.
#   benches/run.sh --quick   # under a minute
#   benches/run.sh           # full: medians of 3, 100,000 rows, images up to 5 MB
#   benches/run.sh --only image --runs 5   # just the cases whose name contains "image"
# Needs a broker at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if python3 -c 'import pika' 2>/dev/null; then
        PYTHON=python3
    else
        # pika for the baseline scripts, in a venv under target/ (PyPI).
        [ -x target/bench-venv/bin/python ] || python3 -m venv target/bench-venv
        target/bench-venv/bin/python -c 'import pika' 2>/dev/null \
            || target/bench-venv/bin/pip install --quiet -r benches/pika/requirements.txt \
            || echo "bench: pika not installed; pika columns stay empty" >&2
        PYTHON=target/bench-venv/bin/python
    fi
fi
export PYTHON
cargo build --release --quiet --bin mqdemo --example bench
exec target/release/examples/bench "$@"

#!/usr/bin/env bash
# Create the benchmark's own virtualenv (once) and run the benchmark.
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379;
# uses database dy_bench (created if missing) and Redis dbs 4 (broker) and 5 (results).
# Extra arguments go to bench/run.py, e.g.: bench/run.sh --reps 5 --json /tmp/bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-/work/bench-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -r bench/requirements.txt
exec "$VENV/bin/python" bench/run.py --sqlite --query-times "$@"

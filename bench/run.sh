#!/usr/bin/env bash
# Create the benchmark's own virtualenv (once) and run the benchmark (bench/README.md).
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379.
# DROPS AND RECREATES the database dy_bench and FLUSHES Redis dbs 10 (broker) and 11 (results,
# probes); BENCH_DATABASE_URL, BENCH_BROKER_URL and BENCH_RESULT_BACKEND choose others.
# The virtualenv is bench/.venv unless BENCH_VENV says otherwise.
# Extra arguments go to bench/run.py, e.g.: bench/run.sh --smoke   (CI: a few seconds)
#                                           bench/run.sh --json /tmp/bench.json --query-times
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-bench/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/requirements.txt
exec "$VENV/bin/python" bench/run.py "$@"

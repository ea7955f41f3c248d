#!/usr/bin/env bash
# Prove the runtime extras of setup.cfg the way a user meets them: for each extra,
# a clean virtualenv, `pip install "django-dyrygent[<extra>]"` (from this checkout),
# a tiny Django project, a real `celery worker` started on that broker or database,
# one two-node workflow run to SUCCESS, and the worker stopped by its pid.
#
#   redis     worker on Redis            (EXTRAS_REDIS_URL, default redis://127.0.0.1:6379/0)
#   rabbitmq  worker on RabbitMQ         (EXTRAS_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672//)
#   postgres  worker on PostgreSQL rows  (EXTRAS_DATABASE_URL, default .../dyrygent_extras),
#             with the file-system broker that ships with django-dyrygent
#   sqs       installed and its kombu transport loaded (no SQS endpoint to start here)
#
# [mysql] is proven by .ci/run's MariaDB step (the whole suite through that extra).
# Usage: .ci/extras.sh [extra ...]   (default: all of the above)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
REDIS_URL="${EXTRAS_REDIS_URL:-redis://127.0.0.1:6379/0}"
AMQP_URL="${EXTRAS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"
PG_URL="${EXTRAS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/dyrygent_extras}"
EXTRAS=("$@")
[ ${#EXTRAS[@]} -eq 0 ] && EXTRAS=(redis rabbitmq postgres sqs)

WORK=$(mktemp -d /tmp/dyrygent-extras.XXXXXX)
WORKER_PID=""

stop_worker() {
    [ -n "$WORKER_PID" ] || return 0
    if kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        for _ in $(seq 1 80); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
    wait "$WORKER_PID" 2>/dev/null || true
    WORKER_PID=""
}
trap 'stop_worker; rm -rf "$WORK"' EXIT

# -- the tiny project: what a new user writes after reading the README ---------------------

write_project() {  # write_project DIR
    mkdir -p "$1/tinyproj"
    cat >"$1/tinyproj/__init__.py" <<'PY'
from .celery import app as celery_app

__all__ = ("celery_app",)
PY
    cat >"$1/tinyproj/celery.py" <<'PY'
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyproj.settings")
app = Celery("tinyproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
PY
    cat >"$1/tinyproj/tasks.py" <<'PY'
from celery import shared_task


@shared_task
def add(x, y):
    return x + y
PY
    cat >"$1/tinyproj/settings.py" <<'PY'
import os

from django_dyrygent import filesystem_broker

SECRET_KEY = "extras-check"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes", "django.contrib.auth",
    "django_celery_results", "django_dyrygent", "tinyproj",
]
DATABASE = os.environ["TINY_DATABASE"]
if DATABASE.startswith("postgres://"):
    _, rest = DATABASE.split("://", 1)
    user_host, name = rest.rsplit("/", 1)
    user, host = user_host.split("@")
    host, port = host.split(":")
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": user,
                             "HOST": host, "PORT": port}}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE,
                             "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20}}}
CELERY_BROKER_URL = os.environ["TINY_BROKER"]
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_DEFAULT_QUEUE = os.environ["TINY_QUEUE"]
CELERY_DB_REUSE_MAX = 1000
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT = filesystem_broker.TRANSPORT
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker.transport_options(os.environ["TINY_DIR"] + "/broker")
PY
    cat >"$1/run_workflow.py" <<'PY'
import django

django.setup()

from django_dyrygent.models import Workflow  # noqa: E402
from tinyproj.tasks import add  # noqa: E402

wf = Workflow(name="extras check")
first = wf.add_signature(add.si(2, 3))
wf.add_signature(add.si(4, 5), dependencies=[first])
wf.apply_async()
state = wf.wait(timeout=60)
results = sorted(wf.nodes.values_list("result", flat=True))
print(f"workflow {wf.pk}: {state}, results {results}")
raise SystemExit(0 if state == "SUCCESS" and results == [5, 9] else 1)
PY
}

# -- RabbitMQ: started when it is down (as .ci/run does for PostgreSQL and Redis) ------------

rabbitmq_up() { python3 -c "import socket; socket.create_connection(('127.0.0.1', 5672), 2).close()" 2>/dev/null; }
ensure_rabbitmq() {
    rabbitmq_up && return 0
    command -v rabbitmq-server >/dev/null || { echo "RabbitMQ is down and not installed" >&2; return 1; }
    echo "starting RabbitMQ"
    rabbitmq-server -detached || return 1
    for _ in $(seq 1 120); do rabbitmq_up && sleep 2 && return 0; sleep 0.5; done
    echo "RabbitMQ did not answer within 60s" >&2
    return 1
}

# -- one extra ------------------------------------------------------------------------------

check_extra() {  # check_extra EXTRA
    local extra=$1 dir="$WORK/$1" broker database
    echo "==> [$extra]: clean virtualenv, pip install \".[$extra]\""
    python3 -m venv "$dir/venv" || return 1
    local py="$dir/venv/bin/python"
    "$py" -m pip install -q "$ROOT[$extra]" || return 1
    write_project "$dir" || return 1
    case "$extra" in
        sqs)
            "$py" -c "import kombu; c = kombu.Connection('sqs://', transport_options={'region': 'us-east-1'}); \
print('kombu SQS transport loads:', type(c.transport).__module__)" || return 1
            echo "[$extra] ok"
            return 0 ;;
        redis) broker=$REDIS_URL; database="$dir/db.sqlite3" ;;
        rabbitmq)
            broker=$AMQP_URL; database="$dir/db.sqlite3"
            [ -n "${EXTRAS_AMQP_URL:-}" ] || ensure_rabbitmq || return 1 ;;
        postgres)
            broker="filesystem://localhost/"; database=$PG_URL
            # The database itself (the tables come from migrate below).
            "$py" - "$PG_URL" <<'PY'
import sys

import psycopg

url = sys.argv[1]
name = url.rsplit("/", 1)[1]
with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
PY
            [ $? -eq 0 ] || return 1
            ;;
        *) echo "unknown extra: $extra" >&2; return 2 ;;
    esac
    export TINY_BROKER=$broker TINY_DATABASE=$database TINY_DIR=$dir TINY_QUEUE="dyrygent-extras-$extra"
    export DJANGO_SETTINGS_MODULE=tinyproj.settings PYTHONPATH=$dir
    (cd "$dir" && "$py" -m django migrate -v 0) || return 1
    # Messages a killed earlier run left in this queue would only add noise.
    (cd "$dir" && "$dir/venv/bin/celery" -A tinyproj purge -f >/dev/null) || return 1
    (cd "$dir" && exec "$dir/venv/bin/celery" -A tinyproj worker --pool=solo -l warning \
        --without-gossip --without-mingle --without-heartbeat >"$dir/worker.log" 2>&1) &
    WORKER_PID=$!
    local rc=0
    (cd "$dir" && timeout 90 "$py" run_workflow.py) || rc=$?
    stop_worker
    if [ "$rc" -ne 0 ] || grep -E "Traceback|Error" "$dir/worker.log" >/dev/null; then
        echo "[$extra] FAILED (exit $rc); worker log:" >&2
        cat "$dir/worker.log" >&2
        return 1
    fi
    echo "[$extra] ok"
}

# Each step of check_extra checks its own exit code: set -e does not apply in a function
# whose caller tests its status.
failed=0
for extra in "${EXTRAS[@]}"; do
    check_extra "$extra" || failed=1
done
exit "$failed"

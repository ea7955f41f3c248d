"""Worker-side measurements of the benchmark, on only when ``BENCH_PROBES=1`` (bench/run.py sets it).

Each prefork child buffers what it saw and hands it to Redis once per task
(``task_postrun``, after our engine's ``task_success`` receiver has run), so
the driver can read one run's figures after the workflow ends:

* SQL statements, attributed to the task during which they ran
  (``bench:stmts:<task name>`` / ``bench:tasks:<task name>``): a noop node's
  share is its STARTED and its success, publishing its dependents included;
* how long each transaction held the workflow row lock: from the statement
  that took it (``SELECT ... FOR [NO KEY] UPDATE`` or ``UPDATE`` of the
  workflow row) returning, to the commit (``bench:holds``, seconds), and how
  long that statement waited for it (``bench:lockwaits``). For the
  one-statement success (hotpath.py, autocommit) ``bench:holds`` gets the
  statement's whole duration (an upper bound: it includes the waits for the
  node rows and for the counters), and ``bench:cntholds`` the real hold of the
  lock sibling completions contend on: the client's clock when the statement
  has returned (committed) minus the server's ``clock_timestamp()`` taken
  right after the counters row was locked (the statement's ``locked_at``
  column, read by ``_probe`` and the cursor rewound for the hot path; same
  machine, same clock);
* when each noop's body returned (``bench:returned``) and when a worker
  published each workflow node (``bench:published``), for the latency
  "dependency finished -> dependent published";
* when ``workflow_finished`` was sent, right after the commit that ended a
  workflow (``bench:finished``), for the latency of ``wait()``.

In the worker's main process (the liveness thread: heartbeats and the sweep)
the statements and the messages it publishes are counted apart
(``bench:main:stmts``, ``bench:main:msgs``, flushed every second), each
sweep's duration is listed (``bench:sweeps``, seconds), and the pool
processes count the messages they publish (``bench:msgs``): the
live-workflows case (``bench/live.py``) reads what a worker costs at rest.

``BENCH_QUERY_TIMES=DIR`` (profiling runs) also times every statement and
writes the totals per statement text to ``DIR/queries-<pid>.json``.
"""

import json
import os
import re
import threading
import time

from celery import signals
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from django_dyrygent import signals as dy_signals

# The statements that take the workflow row lock: the engine's lock, or an UPDATE of the row.
LOCKING = re.compile(
    # Quoted (the ORM) or not (hotpath.py's SQL); \b keeps django_dyrygent_workflownode out.
    r'^\s*(SELECT .* FROM "?django_dyrygent_workflow\b"? .*FOR (NO KEY )?UPDATE'
    r'|UPDATE "?django_dyrygent_workflow\b"? SET)',
    re.S,
)
# The one-statement success (hotpath.py), in autocommit: it holds the workflow row FOR NO KEY
# UPDATE from inside the statement to its commit, so the statement's whole time is the upper bound.
HOT_LOCKING = re.compile(r"^\s*WITH .*FOR NO KEY UPDATE", re.S)
_buffer = {"stmts": 0, "msgs": 0, "holds": [], "cntholds": [], "lockwaits": [], "returned": {}, "published": {},
           "finished": {}}
_lock = {"held_since": None}
_redis = {}
_timings = {}


def enabled():
    return os.environ.get("BENCH_PROBES") == "1"


def client():
    if "client" not in _redis:
        import redis

        _redis["client"] = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    return _redis["client"]


def task_returned(task_id):
    """Called by bench.noop as it returns (probes on)."""
    _buffer["returned"][task_id] = time.time()


def _probe(execute, sql, params, many, context):
    # Django's connection or the hot path's own (hotpath._connection), whichever ran it.
    connection = context["connection"]
    _buffer["stmts"] += 1
    locking = _lock["held_since"] is None and connection.in_atomic_block and LOCKING.match(sql)
    hot = not connection.in_atomic_block and HOT_LOCKING.match(sql)
    start = time.perf_counter()
    result = execute(sql, params, many, context)
    if hot:
        _buffer["holds"].append(time.perf_counter() - start)
        _counters_held(context["cursor"])
    if locking:
        now = time.perf_counter()
        _buffer["lockwaits"].append(now - start)
        _lock["held_since"] = now
        connection.on_commit(_released)
    return result


def _released():
    since, _lock["held_since"] = _lock["held_since"], None
    if since is not None:
        _buffer["holds"].append(time.perf_counter() - since)


def _timed(execute, sql, params, many, context):
    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        entry = _timings.setdefault(" ".join(sql.split())[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - start


_installed = {"on": False}


def _wrap(connection):
    if enabled() and _probe not in connection.execute_wrappers:
        connection.execute_wrappers.append(_probe)
    if os.environ.get("BENCH_QUERY_TIMES") and _timed not in connection.execute_wrappers:
        connection.execute_wrappers.append(_timed)


@signals.worker_process_init.connect(weak=False)
def _install(**kwargs):
    from django.db import connection

    _installed["on"] = True
    _buffer.update(stmts=0, msgs=0)  # the main process's, copied by the fork
    _wrap(connection)


@signals.worker_init.connect(weak=False)
def _main_connections(**kwargs):
    """Before the liveness thread opens its connection: wrap every connection the main process opens."""
    if enabled():
        _installed["on"] = True


def _counters_held(cursor):
    """From the counters' lock (server clock) to now (the statement returned: committed).

    ``locked_at`` is the success statement's fourth column (``sql.success_sql``);
    the rows are read here, then the cursor is rewound for the hot path to read them.
    """
    rows = cursor.fetchall()
    cursor.scroll(0, mode="absolute")
    locked_at = rows[0][3] if rows else None
    if locked_at is not None:
        _buffer["cntholds"].append(time.time() - locked_at.timestamp())


@receiver(connection_created, weak=False)
def _new_connection(sender=None, connection=None, **kwargs):
    """The hot path's own connection (hotpath._connection) is not Django's: count it too."""
    if _installed["on"] and connection is not None:
        _wrap(connection)


@signals.after_task_publish.connect(weak=False)
def _published(sender=None, headers=None, **kwargs):
    if enabled():
        _buffer["msgs"] += 1
    if enabled() and headers and headers.get("dyrygent_workflow") and headers.get("id"):
        _buffer["published"][headers["id"]] = time.time()


@signals.worker_ready.connect(weak=False)
def _main_process(**kwargs):
    """The main process, once its pool has forked: count its statements and messages, time its sweeps."""
    if not enabled():
        return
    from django.db import connections

    from django_dyrygent.worker import recovery

    for conn in connections.all(initialized_only=True):
        _wrap(conn)
    _buffer.update(stmts=0, msgs=0)  # what start-up ran is not the worker at rest
    sweep_once = recovery.Sweeper.sweep_once

    def timed_sweep(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return sweep_once(self, *args, **kwargs)
        finally:
            client().rpush("bench:sweeps", time.perf_counter() - start)

    recovery.Sweeper.sweep_once = timed_sweep
    threading.Thread(target=_flush_main, name="bench-probes", daemon=True).start()


def _flush_main():
    while True:
        time.sleep(1.0)
        stmts, msgs = _buffer["stmts"], _buffer["msgs"]
        _buffer["stmts"] -= stmts
        _buffer["msgs"] -= msgs
        _buffer.update(holds=[], cntholds=[], lockwaits=[], returned={}, published={}, finished={})
        pipe = client().pipeline(transaction=False)
        pipe.incrby("bench:main:stmts", stmts)
        pipe.incrby("bench:main:msgs", msgs)
        pipe.execute()


@receiver(dy_signals.workflow_finished, weak=False)
def _finished(sender=None, workflow=None, **kwargs):
    if enabled() and workflow is not None:
        _buffer["finished"][str(workflow.pk)] = time.time()


@signals.task_postrun.connect(weak=False)
def _flush(task=None, **kwargs):
    if enabled():
        _lock["held_since"] = None  # a rolled-back transaction never reached _released
        _flush_buffer(getattr(task, "name", "?"))
    folder = os.environ.get("BENCH_QUERY_TIMES")
    if folder and _timings:
        with open(os.path.join(folder, f"queries-{os.getpid()}.json"), "w") as out:
            json.dump(_timings, out)


def _flush_buffer(task_name):
    buf = _buffer
    pipe = client().pipeline(transaction=False)
    if buf["stmts"]:
        pipe.incrby(f"bench:stmts:{task_name}", buf["stmts"])
        pipe.incr(f"bench:tasks:{task_name}")
    if buf["msgs"]:
        pipe.incrby("bench:msgs", buf["msgs"])
    for key in ("holds", "cntholds", "lockwaits"):
        if buf[key]:
            pipe.rpush(f"bench:{key}", *buf[key])
    for key in ("returned", "published", "finished"):
        if buf[key]:
            pipe.hset(f"bench:{key}", mapping=buf[key])
    pipe.execute()
    buf.update(stmts=0, msgs=0, holds=[], cntholds=[], lockwaits=[], returned={}, published={}, finished={})

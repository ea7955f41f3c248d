"""The benchmark's task, and an optional per-process query counter for the worker."""

import os

from celery import shared_task, signals

QUERY_KEY = "bench:queries"
_counter = {"n": 0, "flushed": 0}
_redis = {}


@shared_task(name="bench.noop")
def noop(*args, **kwargs):
    return None


def _count(execute, sql, params, many, context):
    _counter["n"] += 1
    return execute(sql, params, many, context)


@signals.worker_process_init.connect(weak=False)
def _install_counter(**kwargs):
    """BENCH_COUNT_QUERIES=1: count every SQL statement a worker process runs.

    Runs in each prefork child. The count is added to a Redis key once per
    task (after our engine's task_success handler ran), and only when it
    changed, so native Celery and celery-dyrygent tasks pay nothing.
    """
    if os.environ.get("BENCH_COUNT_QUERIES") != "1":
        return
    from django.db import connection

    connection.execute_wrappers.append(_count)


@signals.task_postrun.connect(weak=False)
def _flush_counter(**kwargs):
    delta = _counter["n"] - _counter["flushed"]
    if delta <= 0:
        return
    client = _redis.get("client")
    if client is None:
        import redis

        client = _redis["client"] = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    client.incrby(QUERY_KEY, delta)
    _counter["flushed"] = _counter["n"]


# -- BENCH_QUERY_TIMES=DIR: time every SQL statement per process (profiling runs only) ------------

_timings = {}


def _timed(execute, sql, params, many, context):
    import time

    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        key = " ".join(sql.split())[:90]
        entry = _timings.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - start


@signals.worker_process_init.connect(weak=False)
def _install_timer(**kwargs):
    if not os.environ.get("BENCH_QUERY_TIMES"):
        return
    from django.db import connection

    connection.execute_wrappers.append(_timed)


@signals.task_postrun.connect(weak=False)
def _dump_timings(**kwargs):
    folder = os.environ.get("BENCH_QUERY_TIMES")
    if not folder or not _timings:
        return
    import json

    with open(os.path.join(folder, f"queries-{os.getpid()}.json"), "w") as out:
        json.dump(_timings, out)

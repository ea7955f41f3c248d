"""The live-workflows case: what many workflows that are only waiting cost a worker at rest.

``count`` workflows, each one node sleeping ``sleep`` seconds, are started on
one worker. Once every one is RUNNING and the start-up traffic is over
(``settle`` seconds), the case watches a window of ``window`` seconds and
reports, per second:

* database transactions of the bench database (``pg_stat_database``:
  commits and rollbacks, the server's count, every process included);
* SQL statements the worker ran (the probes: its main process, where the
  heartbeat and the sweep run, and its pool processes, per task name);
* messages the worker published (the probes' ``after_task_publish`` count;
  the driver publishes nothing meanwhile);
* tick tasks run, and each sweep's duration (the probes time
  ``Sweeper.sweep_once`` in the sweeping worker).

``apply_async`` starts each workflow itself, at its commit (no start tick
to wait in the queue behind the sleeping nodes).

Nodes that finish inside the window (a few, ``concurrency`` per ``sleep``
seconds) are work, not rest: their statements are reported apart as the
``bench.sleep`` tasks' own.
"""

import time

from bench import harness as H


def _int(redis_client, key):
    return int(redis_client.get(key) or 0)


def _counters(redis_client):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        (xacts,) = cursor.fetchone()
    tasks = {key.decode().split(":", 2)[2]: int(redis_client.get(key) or 0)
             for key in redis_client.scan_iter("bench:stmts:*")}
    return {
        "time": time.monotonic(), "xacts": int(xacts),
        "main_stmts": _int(redis_client, "bench:main:stmts"), "main_msgs": _int(redis_client, "bench:main:msgs"),
        "pool_msgs": _int(redis_client, "bench:msgs"), "task_stmts": tasks,
        "ticks": _int(redis_client, "bench:tasks:django_dyrygent.tick"),
        "sweeps": redis_client.llen("bench:sweeps"),
    }


def run_live(redis_client, count, sleep, window, settle, timeout):
    """Start ``count`` sleeping workflows, wait for them to be RUNNING, measure a window at rest."""
    from celery import signature

    from django_dyrygent.models import Workflow

    t0 = time.perf_counter()
    ids = []
    for _ in range(count):
        wf = Workflow(name="live")
        wf.add_celery_canvas(signature("bench.sleep", args=(sleep,)).set(immutable=True))
        wf.apply_async()
        ids.append(wf.pk)
    out = {"count": count, "sleep": sleep, "window": window, "apply_seconds": time.perf_counter() - t0}
    deadline = time.monotonic() + timeout
    while Workflow.objects.filter(pk__in=ids, state=Workflow.State.INITIAL).exists():
        if time.monotonic() > deadline:
            out["error"] = "not all workflows started within the timeout"
            return out
        time.sleep(1.0)
    out["running_after"] = time.perf_counter() - t0
    H.log(f"live: {count} workflows RUNNING after {out['running_after']:.1f}s; settling {settle:.0f}s")
    time.sleep(settle)
    before = _counters(redis_client)
    time.sleep(window)
    after = _counters(redis_client)
    seconds = after["time"] - before["time"]
    stmts = {name: after["task_stmts"].get(name, 0) - before["task_stmts"].get(name, 0)
             for name in after["task_stmts"]}
    sweeps = [float(x) for x in redis_client.lrange("bench:sweeps", before["sweeps"], after["sweeps"] - 1)]
    out.update(
        seconds=seconds,
        xacts_per_s=(after["xacts"] - before["xacts"]) / seconds,
        main_stmts_per_s=(after["main_stmts"] - before["main_stmts"]) / seconds,
        tick_stmts_per_s=stmts.get("django_dyrygent.tick", 0) / seconds,
        work_stmts_per_s=stmts.get("bench.sleep", 0) / seconds,
        msgs_per_s=(after["main_msgs"] + after["pool_msgs"] - before["main_msgs"] - before["pool_msgs"]) / seconds,
        ticks_per_s=(after["ticks"] - before["ticks"]) / seconds,
        sweeps=sweeps,
        live=Workflow.objects.filter(pk__in=ids, state=Workflow.State.RUNNING).count(),
    )
    return out


def render_live(live):
    if "error" in live:
        return [f"  live workflows: {live['error']}"]
    sweeps = live["sweeps"]
    sweep = (f"{len(sweeps)} sweeps, {1000 * min(sweeps):.0f}-{1000 * max(sweeps):.0f} ms each"
             if sweeps else "no sweep in the window")
    rest = live["main_stmts_per_s"] + live["tick_stmts_per_s"]
    return [
        f"  {live['live']:,} live workflows at rest (each waiting on a {live['sleep']:g} s node; "
        f"{live['window']:.0f} s window): worker statements {rest:.1f}/s (target <= 20; main process "
        f"{live['main_stmts_per_s']:.1f}, ticks {live['tick_stmts_per_s']:.1f}, finishing nodes "
        f"{live['work_stmts_per_s']:.1f} more), database transactions {live['xacts_per_s']:.1f}/s, "
        f"messages published {live['msgs_per_s']:.2f}/s (target <= 1), tick tasks {live['ticks_per_s']:.2f}/s; "
        f"{sweep}",
    ]

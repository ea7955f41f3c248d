"""Shares of a worker's busy time, from the raw py-spy profiles ``bench/run.py --profile`` writes.

    python bench/profile_shares.py /tmp/dyrygent-bench/profile-chain-*.txt

A raw profile is one line per distinct stack, ``frame;frame;... count``,
each frame ``function (file:line)``. A pool process is *busy* when its
stack is inside Celery's tracer (``trace_task``): the rest is waiting for
a message. Each row is the share of busy samples whose stack contains a
frame of that row (rows overlap: a psycopg wait inside STARTED counts in
both), so the rows say where a hop's time goes, not a sum.
"""

import sys
from collections.abc import Callable
from pathlib import Path

#: (label, test on one frame); indented labels are parts of the row above.
ROWS: list[tuple[str, Callable[[str], bool]]] = [
    ("our signal receivers (handlers.on_task_*)", lambda f: "django_dyrygent/worker/handlers.py" in f),
    ("  STARTED (hotpath.node_started)", lambda f: f.startswith("node_started (django_dyrygent/engine/hotpath")),
    ("  success (hotpath.node_succeeded)", lambda f: f.startswith("node_succeeded (django_dyrygent/engine/hotpath")),
    ("  publishing the next node (messaging.publish)",
     lambda f: f.startswith("publish (django_dyrygent/engine/messaging")),
    ("  signals (Step.announce)", lambda f: f.startswith("Step.announce (")),
    ("  db.run's connection checks", lambda f: f.startswith("drop_broken_connections (")),
    ("waiting on PostgreSQL (psycopg)", lambda f: "psycopg/" in f and ("wait" in f or "execute" in f)),
    ("Django: ORM, SQL building, model construction", lambda f: "django/db/models/" in f),
    ("kombu/redis: sending a message", lambda f: f.startswith(("Producer.publish (kombu", "Producer._publish"))),
    ("Celery storing the result (backend)", lambda f: "celery/backends/" in f and "mark_as_done" in f),
    ("Celery's task_prerun/postrun fix-up (Django connections)", lambda f: "celery/fixups/django.py" in f),
    ("the task body (bench.noop)", lambda f: "bench/tasks.py" in f),
    ("the benchmark's probes (bench/probes.py)", lambda f: "bench/probes.py" in f),
]


def read(paths: list[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def shares(stacks: list[tuple[list[str], int]]) -> tuple[int, list[tuple[str, int]]]:
    busy = [(frames, n) for frames, n in stacks if any("trace_task" in f for f in frames)]
    total = sum(n for _, n in busy)
    return total, [(label, sum(n for frames, n in busy if any(test(f) for f in frames))) for label, test in ROWS]


def main(paths: list[str]) -> None:
    total, rows = shares(read(paths))
    print(f"{total} busy samples in {len(paths)} profile(s)")
    for label, n in rows:
        print(f"{100 * n / max(total, 1):5.1f}%  {n:6d}  {label}")


if __name__ == "__main__":
    main(sys.argv[1:])

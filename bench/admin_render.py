#!/usr/bin/env python
"""Time the admin's workflow page for large workflows (a benchmark, not a test).

Builds workflows of 2,000 and 10,000 nodes in a throw-away test database
(the tests' settings: SQLite by default, ``DATABASE_URL`` switches) and
times a full GET of the workflow change page through the admin, plus the
status JSON the page polls, and the timeline (Gantt) alone, whole and
zoomed into one task name. Two shapes per size:

* ``groups``: chained groups of 500 (the importer puts a join between
  them); each group collapses into one "N × task" box;
* ``chains``: independent two-step chains (a group of chains): nothing
  collapses, every node is drawn. The worst case for the SVG.

Nothing is committed and nothing is published: everything runs inside a
transaction that is rolled back.

Usage (from the repository root):
    python bench/admin_render.py [--reps 3] [--sizes 2000 10000]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DYRYGENT_TEST_DIR", tempfile.mkdtemp(prefix="dyrygent-bench-admin-"))

import django  # noqa: E402

django.setup()

from celery import chain, group  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_dyrygent.graph import layout as graph  # noqa: E402
from django_dyrygent.graph import timeline  # noqa: E402
from django_dyrygent.models import Workflow  # noqa: E402
from tests.tasks import noop  # noqa: E402


def build(shape, size):
    wf = Workflow(name=f"bench {shape} {size}")
    if shape == "groups":
        per = 500
        wf.add_celery_canvas(chain(*[
            group(noop.si(g, i) for i in range(per)) for g in range(size // per)
        ]))
    else:
        wf.add_celery_canvas(group(chain(noop.si(i, "a"), noop.si(i, "b")) for i in range(size // 2)))
    wf.apply_async()
    return wf


def timed(func, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions; the median is shown")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000], help="node counts")
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        print(f"database: {connection.vendor}; median of {args.reps} runs")
        print(f"{'shape':<8} {'nodes':>6} {'boxes':>6} {'edges':>6} {'queries':>7} "
              f"{'page ms':>8} {'layout ms':>9} {'status ms':>9} {'gantt ms':>8} {'zoom ms':>7} {'html KB':>8}")
        with transaction.atomic():
            admin = User.objects.create_superuser("bench", "bench@example.com", "pw")
            client = Client()
            client.force_login(admin)
            for size in args.sizes:
                for shape in ("groups", "chains"):
                    wf = build(shape, size)
                    now = timezone.now()  # every node ran: the timeline draws a bar for each
                    wf.nodes.update(queued_at=now, started_at=now, finished_at=now, state="SUCCESS")
                    page = reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])
                    status = reverse("admin:django_dyrygent_workflow_status", args=[wf.pk])
                    client.get(page)  # warm up (templates, caches)
                    connection.queries_log.clear()  # a full log (9,000 entries) would count nothing
                    with CaptureQueriesContext(connection) as queries:
                        page_time, response = timed(lambda page=page: client.get(page), args.reps)
                    assert response.status_code == 200, response.status_code
                    # Read now: the next request clears the connection's query log.
                    page_queries = len(queries) // args.reps

                    def lay_out(wf=wf):
                        items, edges = graph.collapse(graph.load(wf))
                        return graph.layout(items, edges)

                    layout_time, drawing = timed(lay_out, args.reps)
                    status_time, _ = timed(lambda status=status: client.get(status), args.reps)

                    def gantt(wf=wf, group=None):
                        return timeline.svg_markup(timeline.load(wf, group=group), lambda row: "#")

                    gantt_time, _ = timed(gantt, args.reps)
                    zoom_time, _ = timed(lambda wf=wf: gantt(wf, "tests.noop"), args.reps)
                    print(f"{shape:<8} {wf.nodes.count():>6} {len(drawing.items):>6} {len(drawing.edges):>6} "
                          f"{page_queries:>7} {page_time * 1000:>8.0f} {layout_time * 1000:>9.0f} "
                          f"{status_time * 1000:>9.0f} {gantt_time * 1000:>8.0f} {zoom_time * 1000:>7.0f} "
                          f"{len(response.content) / 1024:>8.0f}")
            transaction.set_rollback(True)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()

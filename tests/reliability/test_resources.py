"""Memory and connections stay flat: thousands of workflows through one worker on private servers.

A leak shows as growth after warm-up, not as a size: the worker's resident
memory (main process and pool children, from /proc) is read once the first
fifth of the workflows ran and again at the end. Connections are counted in
the private cluster's pg_stat_activity while the workflows run: at most one
per thread that talks to the database (the main process's liveness thread,
and each pool child's Django connection and hot-path connection), and none
left idle inside a transaction once the worker is at rest.

``DYRYGENT_RESOURCE_WORKFLOWS`` sets how many (500 by default, in CI's
PostgreSQL pass; 20,000 with ``make soak-resources``).
"""

import os
from pathlib import Path

from celery import chain

from django_dyrygent.models import Workflow
from django_dyrygent.states import WORKFLOW_FINAL
from tests.reliability import harness
from tests.reliability.conftest import DATABASE
from tests.reliability.tasks import noop

WORKFLOWS = int(os.environ.get("DYRYGENT_RESOURCE_WORKFLOWS", "500"))
BATCH = 100
CONCURRENCY = 2
#: Growth of the worker's memory from warm-up to the end, as a fraction.
MAX_GROWTH = 0.10


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total


def backends(rel):
    """(state, seconds in that state) of every backend of the test database but this process's own."""
    out = rel.pg.sql(
        "SELECT state || ',' || COALESCE(EXTRACT(EPOCH FROM now() - state_change)::int, 0) "
        f"FROM pg_stat_activity WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'",
        database=DATABASE,
    )
    rows = [line.strip() for line in out.splitlines() if line.strip()]
    return [(row.split(",")[0], int(row.split(",")[1])) for row in rows]


def test_worker_resources__memory_and_connections_stay_flat_through_many_workflows(rel):
    worker = rel.ready_worker("flat", concurrency=CONCURRENCY)
    # The test process's own connection to the test database shows in pg_stat_activity too: not the worker's.
    own = 1
    bound = 1 + 2 * CONCURRENCY + own
    warm_rss, peak_connections, long_idle_in_transaction = None, 0, []
    for start in range(0, WORKFLOWS, BATCH):
        batch = []
        for _ in range(min(BATCH, WORKFLOWS - start)):
            wf = Workflow(name="flat")
            wf.add_celery_canvas(chain(noop.si(), noop.si()))
            batch.append(wf.apply_async().pk)
        harness.wait_for(
            lambda batch=batch: rel.query(
                lambda: Workflow.objects.filter(pk__in=batch, state__in=WORKFLOW_FINAL).count()) == len(batch),
            120, what=f"workflows {start}..{start + len(batch)} final",
        )
        seen = backends(rel)
        peak_connections = max(peak_connections, len(seen))
        long_idle_in_transaction += [s for s in seen if s[0].startswith("idle in transaction") and s[1] >= 10]
        if warm_rss is None and start + BATCH >= WORKFLOWS // 5:
            warm_rss = rss_kib([worker.pid, *worker.children()])
    assert Workflow.objects.exclude(state=Workflow.State.SUCCESS).count() == 0, rel.logs()
    end_rss = rss_kib([worker.pid, *worker.children()])
    print(f"\n{WORKFLOWS} workflows: worker RSS {warm_rss} KiB after warm-up, {end_rss} KiB at the end "
          f"({(end_rss / warm_rss - 1) * 100:+.1f}%); peak {peak_connections} connections (bound {bound})")
    assert end_rss <= warm_rss * (1 + MAX_GROWTH), (warm_rss, end_rss)
    assert peak_connections <= bound, backends(rel)
    assert not long_idle_in_transaction
    # At rest, nothing is left inside a transaction.
    harness.wait_for(lambda: not any(s.startswith("idle in transaction") for s, _ in backends(rel)), 30,
                     what="no backend idle in a transaction at rest")
    worker.stop()

"""Cost of the engine in queries: a step costs the same for 10 nodes as for 1,000.

Wall-clock thresholds are flaky; query counts are exact. Each test builds two
workflows of the same shape, a chain of groups (2 groups of 5 and 10 groups
of 100), so the step under test changes the same structure (one group
released through one join) and only the size differs.

On-commit work (publishing, the next tick, signals) never runs inside
pytest-django's test transaction, so only the engine's own queries are counted.
"""

import math
from datetime import timedelta

import pytest
from celery import chain, group
from django.db import connection
from django.db.models import F
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.build.save import BULK_BATCH
from django_dyrygent.engine import hotpath, outcomes
from django_dyrygent.engine import sql as hotsql
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowNode
from tests.conftest import idle_tick_locks
from tests.tasks import noop

pytestmark = pytest.mark.django_db

SMALL = (2, 5)  # groups, tasks per group: 10 nodes
LARGE = (10, 100)  # 1,000 nodes
# A step that touches one group issues at most this many queries.
STEP_BOUND = 16


def chained_groups(groups, width):
    wf = Workflow(name=f"{groups}x{width}")
    wf.add_celery_canvas(
        chain(*[group([noop.si(g, i).set(task_id=f"{groups}x{width}-{g}-{i}") for i in range(width)])
                for g in range(groups)])
    )
    return wf


def started(groups, width):
    wf = chained_groups(groups, width)
    wf.apply_async()
    engine.tick(wf.pk)
    return wf


def queries(fn, *args, **kwargs):
    with CaptureQueriesContext(connection) as ctx:
        fn(*args, **kwargs)
    return [q["sql"] for q in ctx.captured_queries]


def start_queries(wf):
    """The statements of ``wf``'s start: ``apply_async`` runs it at its commit, in a transaction of its own."""
    with TestCase.captureOnCommitCallbacks() as callbacks:
        wf.apply_async()
    with CaptureQueriesContext(connection) as ctx:
        for callback in callbacks:
            callback()
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def test_start__costs_the_same_for_10_and_1000_nodes():
    small, large = chained_groups(*SMALL), chained_groups(*LARGE)
    small_sql, large_sql = start_queries(small), start_queries(large)
    assert len(small_sql) == len(large_sql) <= STEP_BOUND, (small_sql, large_sql)
    assert Workflow.objects.get(pk=large.pk).state == Workflow.State.RUNNING
    # It did the work: the whole first group was queued.
    assert WorkflowNode.objects.filter(workflow=large, state="QUEUED").count() == LARGE[1]


def test_tick__on_a_running_workflow_costs_the_same_for_10_and_1000_nodes():
    small, large = started(*SMALL), started(*LARGE)
    small_sql = queries(engine.tick, small.pk)
    large_sql = queries(engine.tick, large.pk)
    assert len(small_sql) == len(large_sql) <= STEP_BOUND, (small_sql, large_sql)
    assert Workflow.objects.get(pk=large.pk).ticks == 2


def test_tick__on_a_running_workflow_with_overdue_nodes_costs_the_same(settings):
    """Reconciliation looks at every stale node in one query, whatever their number."""
    settings.DYRYGENT_REQUEUE_AFTER = 0
    small, large = started(*SMALL), started(*LARGE)
    small_sql = queries(engine.tick, small.pk)
    large_sql = queries(engine.tick, large.pk)
    assert len(small_sql) == len(large_sql) <= STEP_BOUND, (small_sql, large_sql)
    # Republished (no worker ever reported them): the step really touched every node.
    assert set(WorkflowNode.objects.filter(workflow=large, state="QUEUED").values_list(
        "publish_count", flat=True)) == {2}


def complete_first_group_but_one(wf, groups, width):
    for i in range(width - 1):
        outcomes.node_succeeded(wf.pk, f"{groups}x{width}-0-{i}", i)
    return f"{groups}x{width}-0-{width - 1}"


def test_node_succeeded__that_releases_the_next_group_costs_the_same_for_10_and_1000_nodes():
    small, large = started(*SMALL), started(*LARGE)
    last_small = complete_first_group_but_one(small, *SMALL)
    last_large = complete_first_group_but_one(large, *LARGE)
    small_sql = queries(outcomes.node_succeeded, small.pk, last_small, 1)
    large_sql = queries(outcomes.node_succeeded, large.pk, last_large, 1)
    assert len(small_sql) == len(large_sql) <= STEP_BOUND, (small_sql, large_sql)
    # The step released the second group of each.
    queued = WorkflowNode.objects.filter(workflow=large, state="QUEUED")
    assert sorted(queued.values_list("task_id", flat=True)) == sorted(
        f"10x100-1-{i}" for i in range(100)
    )


def test_node_succeeded__that_releases_nothing_costs_the_same_for_10_and_1000_nodes():
    small, large = started(*SMALL), started(*LARGE)
    small_sql = queries(outcomes.node_succeeded, small.pk, "2x5-0-0", 1)
    large_sql = queries(outcomes.node_succeeded, large.pk, "10x100-0-0", 1)
    assert len(small_sql) == len(large_sql) <= STEP_BOUND, (small_sql, large_sql)


def insert_batches(model, rows):
    """How many INSERT statements Django needs for ``rows`` rows of ``model`` in bulk_create."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key or f.name != "id"]
    size = min(BULK_BATCH, connection.ops.bulk_batch_size(fields, [None] * rows) or rows)
    return math.ceil(rows / size)


def test_apply_async__costs_a_fixed_number_of_queries_plus_bulk_insert_batches():
    """No query per node or per edge: only the bulk INSERTs grow, by batch (database limit).

    PostgreSQL writes nodes and edges with one COPY each: nothing grows at all.
    """
    small, large = chained_groups(*SMALL), chained_groups(*LARGE)
    small_sql = queries(small.apply_async)
    large_sql = queries(large.apply_async)
    node_rows = WorkflowNode.objects.filter(workflow=large).count()
    edge_rows = WorkflowEdge.objects.filter(workflow=large).count()
    assert (node_rows, edge_rows) == (1009, 1800)
    if connection.vendor == "postgresql":
        assert len(small_sql) == len(large_sql) <= 7, (small_sql, large_sql)
        copies = [q for q in large_sql if q.startswith("COPY")]
        assert [q.split(" (")[0] for q in copies] == [
            'COPY "django_dyrygent_workflownode"', 'COPY "django_dyrygent_workflowedge"'
        ]
        assert sum(q.upper().startswith("INSERT") for q in large_sql) == 1  # the workflow row
        return

    def split(sql):
        inserts = [q for q in sql if q.lstrip().upper().startswith("INSERT")]
        return inserts, [q for q in sql if q not in inserts]

    small_inserts, small_other = split(small_sql)
    large_inserts, large_other = split(large_sql)
    assert len(small_other) == len(large_other) <= 5, (small_other, large_other)
    # One workflow row, then the nodes and edges in as few INSERTs as the database allows.
    assert len(small_inserts) == 3
    assert len(large_inserts) == (
        1 + insert_batches(WorkflowNode, node_rows) + insert_batches(WorkflowEdge, edge_rows)
    )



def statements(sql):
    return [q for q in sql if not q.startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the lock-free path is PostgreSQL's")
def test_node_succeeded__plain_success_on_postgresql_is_two_statements_with_started():
    """STARTED + success of a plain task node: 1 + 1 statements (11 under the lock before).

    STARTED is one UPDATE of the node row, no lock on the workflow row. The
    success is one statement whose row locks come in a fixed order: the
    workflow row FOR KEY SHARE (shared by completions, held off by the rare
    decisions' FOR UPDATE), the node, its dependents in id order, and last the
    workflow row FOR NO KEY UPDATE for its counters (the only lock siblings
    wait for, held until the statement's commit). The statement that also
    decides joins (run when this one finds a join to release) adds the
    joins' dependents between the two (id order, SKIP LOCKED: never waits).
    """
    wf = Workflow(name="chain")
    wf.add_celery_canvas(chain(*[noop.si(i).set(task_id=f"plain-{i}") for i in range(3)]))
    wf.apply_async()
    engine.tick(wf.pk)
    started_sql = statements(queries(hotpath.node_started, wf.pk, "plain-0"))
    success_sql = statements(queries(hotpath.node_succeeded, wf.pk, "plain-0", 1))
    workflow_table, node_table = (connection.ops.quote_name(m._meta.db_table) for m in (Workflow, WorkflowNode))
    # STARTED: one UPDATE, no event row, no lock on the workflow row.
    assert len(started_sql) == 1, started_sql
    assert started_sql[0].startswith(f"UPDATE {node_table} ")
    assert f"{workflow_table} " not in started_sql[0] and "FOR KEY SHARE" not in started_sql[0]
    (sql,) = success_sql
    assert sql.startswith("WITH wf AS (SELECT"), sql
    modes = ("FOR KEY SHARE", "FOR UPDATE)", "FOR UPDATE OF n)", "FOR NO KEY UPDATE")
    locks = [sql.index(f" {mode}") for mode in modes]
    assert locks == sorted(locks), sql
    assert sql.count("FOR UPDATE") == 2 and sql.count(f"UPDATE {workflow_table} SET nodes_done") == 1
    assert "SKIP LOCKED" not in sql  # the plain statement: no join to decide
    joins = hotsql.success_sql(connection, event_log=True, joins=True)
    modes = ("FOR KEY SHARE", "FOR UPDATE)", "FOR UPDATE OF n)", "FOR UPDATE OF n SKIP LOCKED", "FOR NO KEY UPDATE")
    locks = [joins.index(f" {mode}") for mode in modes]
    assert locks == sorted(locks), joins
    assert joins.count("FOR UPDATE") == 3 and joins.count(f"UPDATE {workflow_table} SET nodes_done") == 1
    states = dict(wf.nodes.values_list("task_id", "state"))
    assert states == {"plain-0": "SUCCESS", "plain-1": "QUEUED", "plain-2": "PENDING"}
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_succeeded, wf.state) == (1, 1, "RUNNING")
    events = list(wf.events.filter(node__isnull=False).order_by("id")
                  .values_list("node__task_id", "old_state", "new_state"))
    assert events[-2:] == [("plain-0", "STARTED", "SUCCESS"), ("plain-1", "PENDING", "QUEUED")]


# -- the idle tick (engine._idle_tick) ---------------------------------------------------------


def locking(sql):
    """Statements that take the workflow lock: FOR UPDATE, or SQLite's lock_version bump."""
    return [q for q in sql if "FOR UPDATE" in q.upper() or (q.startswith("UPDATE") and "lock_version" in q)]


#: MySQL/MariaDB's idle tick takes its row first, one statement more (``idle_tick_locks``).
IDLE_LOCK = connection.vendor == "mysql"
IDLE_TICK_STATEMENTS = 3 if IDLE_LOCK else 2


def test_tick__with_nothing_due_costs_two_statements_and_no_lock(
    django_capture_on_commit_callbacks, monkeypatch, settings,
):
    """The scheduled tick of a running workflow with nothing to repair: one SELECT, one UPDATE.

    The locked tick ran six statements under FOR UPDATE for the same answer.
    MySQL/MariaDB add the SELECT that takes the row without waiting (``idle_tick_locks``).
    """
    sent = []
    monkeypatch.setattr("django_dyrygent.engine.messaging.send_tick", lambda *args: sent.append(args))
    small, large = started(*SMALL), started(*LARGE)
    Workflow.objects.filter(pk__in=[small.pk, large.pk]).update(next_tick_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        small_sql = queries(engine.tick, small.pk)
        large_sql = queries(engine.tick, large.pk)
    assert len(small_sql) == len(large_sql) == IDLE_TICK_STATEMENTS, (small_sql, large_sql)
    assert locking(small_sql + large_sql) == idle_tick_locks(small_sql + large_sql)
    assert len(idle_tick_locks(small_sql + large_sql)) == (2 if IDLE_LOCK else 0)
    for wf in (small, large):
        wf.refresh_from_db()
        assert wf.ticks == 2  # counted (the first was the start)
        assert wf.next_tick_at > timezone.now()  # the chain moved on
    # The next tick of each, with the workflow's options read by the SELECT (no third statement).
    interval = float(settings.DYRYGENT_TICK_INTERVAL)
    assert sent == [(small.pk, {}, interval), (large.pk, {}, interval)]


def test_tick__with_nothing_due_that_is_not_the_due_one_keeps_the_chain(
    django_capture_on_commit_callbacks, monkeypatch,
):
    """An extra tick (a duplicate, "tick now" from a task) neither moves next_tick_at nor sends a tick."""
    sent = []
    monkeypatch.setattr("django_dyrygent.engine.messaging.send_tick", lambda *args: sent.append(args))
    wf = started(*SMALL)
    due = Workflow.objects.get(pk=wf.pk).next_tick_at
    with django_capture_on_commit_callbacks(execute=True):
        sql = queries(engine.tick, wf.pk)
    assert len(sql) == IDLE_TICK_STATEMENTS and locking(sql) == idle_tick_locks(sql), sql
    wf.refresh_from_db()
    assert (wf.next_tick_at, wf.ticks, sent) == (due, 2, [])


@pytest.mark.parametrize("due", ["ready", "stale", "late", "deadline", "engine_errors", "last_node"])
def test_tick__with_something_due_takes_the_locked_path(due, settings):
    """Each thing the locked tick repairs sends the tick there; the cheap check must see it."""
    wf = started(*SMALL)
    first = WorkflowNode.objects.filter(workflow=wf, state="QUEUED").order_by("position")
    now = timezone.now()
    if due == "ready":  # a PENDING node whose counters say "go" (a lost release)
        WorkflowNode.objects.filter(workflow=wf, state="PENDING", kind="task").update(waiting=0)
    elif due == "stale":  # a QUEUED node no worker reported for REQUEUE_AFTER
        settings.DYRYGENT_REQUEUE_AFTER = 60
        first.filter(pk=first[0].pk).update(queued_at=now - timedelta(seconds=120))
    elif due == "late":  # a STARTED node past its timeout
        first.filter(pk=first[0].pk).update(
            state="STARTED", timeout=timedelta(seconds=5), timeout_at=now - timedelta(seconds=1))
    elif due == "deadline":
        Workflow.objects.filter(pk=wf.pk).update(deadline=now - timedelta(seconds=1))
    elif due == "engine_errors":  # a failed tick's count and message, cleared by a good tick
        Workflow.objects.filter(pk=wf.pk).update(engine_errors=1, error="Tick failed")
    elif due == "last_node":  # every node counted done: the locked tick finishes it
        Workflow.objects.filter(pk=wf.pk).update(nodes_done=F("nodes_total"))
    sql = queries(engine.tick, wf.pk)
    assert len(locking(sql)) == 1, sql
    wf.refresh_from_db()
    assert wf.ticks == 2
    if due == "ready":
        assert not WorkflowNode.objects.filter(workflow=wf, state="PENDING", kind="task").exists()
    elif due == "stale":
        assert first[0].publish_count == 2  # republished (no worker, no result backend outcome)
    elif due == "late":
        assert WorkflowNode.objects.filter(workflow=wf, state="FAILURE").count() == 1
    elif due in ("deadline", "last_node"):
        assert wf.state in (Workflow.State.ERROR, Workflow.State.FAILURE, Workflow.State.SUCCESS)
    elif due == "engine_errors":
        assert (wf.engine_errors, wf.error) == (0, "")


def test_sweep__of_overdue_workflows_with_nothing_due_costs_one_select_and_one_update_each(
    django_capture_on_commit_callbacks, monkeypatch,
):
    """The sweep reads every overdue workflow's idle check in one SELECT, not one per workflow."""
    sent = []
    monkeypatch.setattr("django_dyrygent.engine.messaging.send_tick", lambda *args: sent.append(args[0]))
    flows = [started(2, width) for width in (1, 2, 3)]  # task ids are per shape: three shapes
    on_time = started(*SMALL)
    overdue = timezone.now() - timedelta(hours=1)
    Workflow.objects.filter(pk__in=[wf.pk for wf in flows]).update(next_tick_at=overdue)
    with django_capture_on_commit_callbacks(execute=True):
        sql = queries(engine.sweep, stale_after=60)
    assert len(sql) == 1 + (IDLE_TICK_STATEMENTS - 1) * len(flows) and locking(sql) == idle_tick_locks(sql), sql
    assert sorted(sent) == sorted(wf.pk for wf in flows)
    ticks = dict(Workflow.objects.values_list("pk", "ticks"))
    assert ticks == {**{wf.pk: 2 for wf in flows}, on_time.pk: 1}
    assert not Workflow.objects.filter(next_tick_at__lt=timezone.now()).exists()


#: Statements of each step of a plain three-task chain's life, by database: its start (run by
#: ``apply_async`` at its commit), then per task STARTED and its success (the last one ends the
#: workflow: on PostgreSQL two statements, the plain one and the one that ends it, each in a
#: savepoint here). Control flow (waits, sub-workflows, graphs that grow) adds nothing to them.
PLAIN_CHAIN_STATEMENTS = {
    "postgresql": [5, 1, 3, 1, 3, 1, 6],
    "sqlite": [6, 1, 11, 1, 11, 1, 10],
}


def plain_chain_life(extra=None):
    """The statement count of each step of a chain a -> b -> c driven as a worker reports it."""
    wf = Workflow(name="plain")
    tasks = [noop.si(name).set(task_id=f"plain-{name}-{extra is not None}") for name in "abc"]
    wf.add_celery_canvas(chain(*tasks))
    if extra is not None:
        extra(wf)
    counts = [len(start_queries(wf))]
    for sig in tasks:
        counts.append(len(queries(hotpath.node_started, wf.pk, sig.id)))
        counts.append(len(queries(hotpath.node_succeeded, wf.pk, sig.id, None)))
    return counts


def with_control_flow(wf):
    """Beside the chain: a wait, then a sub-workflow after it (never reached here)."""
    from tests import subflows

    wf.add_subworkflow(subflows.adder, {"x": 1}, dependencies=[wf.add_wait("never")])


def test_plain_nodes__pay_nothing_for_control_flow_in_statements():
    plain = plain_chain_life()
    assert plain == PLAIN_CHAIN_STATEMENTS.get(connection.vendor, plain)
    # Beside a wait and a sub-workflow node: each plain step costs the same (the last success differs:
    # there it does not end the workflow, which still waits).
    assert plain_chain_life(with_control_flow)[1:-1] == plain[1:-1]

"""The one-statement success (PostgreSQL): it commits a whole plain completion or changes nothing.

Every case the statement must not decide (``hotpath._Fallback``) is driven
here directly: the statement must leave every row as it found it (nodes,
counters, event rows), so the locked path that then takes the report
(``outcomes.node_succeeded``) counts it exactly once. Then the same report
through ``hotpath.node_succeeded`` must end where the locked path ends.
"""

import pytest
from celery import chain, group
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from django_dyrygent import engine, signals
from django_dyrygent.engine import hotpath, messaging, outcomes, waiting
from django_dyrygent.engine import sql as hotsql
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.tasks import noop

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement success is PostgreSQL's"),
]

S = WorkflowNode.State


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(messaging, "send_tick", lambda *args, **kwargs: None)
    monkeypatch.setattr(messaging, "publish", lambda *args, **kwargs: None)


def running(canvas=None, **fields):
    wf = Workflow(name="hotpath", **fields)
    if canvas is not None:
        wf.add_celery_canvas(canvas)
    return wf


def start(wf):
    wf.apply_async()
    engine.tick(wf.pk)
    return wf


def rows(wf):
    """Everything a completion may write: node rows, the workflow's counters, the event rows."""
    nodes = sorted(wf.nodes.values_list("task_id", "state", "waiting", "publish_count", "queued_at",
                                        "result", "finished_at"))
    counters = Workflow.objects.filter(pk=wf.pk).values_list(
        "state", "nodes_done", "nodes_succeeded", "nodes_failed", "nodes_skipped").get()
    return nodes, counters, WorkflowEvent.objects.filter(workflow=wf).count()


def run(wf, task_id, result=1):
    hotpath.node_started(wf.pk, task_id)
    return hotpath.node_succeeded(wf.pk, task_id, result)


def assert_falls_back_unchanged(wf, task_id, why):
    hotpath.node_started(wf.pk, task_id)
    before = rows(wf)
    with pytest.raises(hotpath._Fallback, match=why):
        hotpath._fast_success(wf.pk, task_id, 1)
    assert rows(wf) == before


def test_hotpath__the_last_node_ends_the_workflow_in_its_statement_as_the_locked_path_does(
    django_capture_on_commit_callbacks
):
    fast, locked = (start(running(chain(noop.si().set(task_id=f"{p}a"), noop.si().set(task_id=f"{p}b"))))
                    for p in ("", "locked-"))
    for wf, prefix in ((fast, ""), (locked, "locked-")):
        assert run(wf, f"{prefix}a") is not None
        hotpath.node_started(wf.pk, f"{prefix}b")
    finished, changed = [], []
    signals.workflow_finished.connect(receiver := lambda workflow, **kw: finished.append(workflow.pk), weak=False)
    signals.workflow_state_changed.connect(
        changer := lambda workflow, old_state, new_state, **kw: changed.append((workflow.pk, old_state, new_state)),
        weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as queries:
            assert hotpath._fast_success(fast.pk, "b", 2).state == S.SUCCESS
        with django_capture_on_commit_callbacks(execute=True):
            outcomes.node_succeeded(locked.pk, "locked-b", 2)
    finally:
        signals.workflow_finished.disconnect(receiver)
        signals.workflow_state_changed.disconnect(changer)
    # Two statements (the plain one finds the count complete, the last one ends it), no locked step.
    statements = [q["sql"] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert [q.lstrip()[:10] for q in statements] == ["WITH wf AS"] * 2
    assert effects(fast) == effects(locked)
    assert finished == [fast.pk, locked.pk]
    assert changed == [(fast.pk, "RUNNING", "SUCCESS"), (locked.pk, "RUNNING", "SUCCESS")]
    for wf in (fast, locked):
        wf.refresh_from_db()
        assert wf.finished_at is not None and wf.next_tick_at is None


@pytest.mark.parametrize("shape", ["error callback", "finalizer", "failed node", "child workflow"])
def test_hotpath__the_last_node_of_a_workflow_with_more_to_do_falls_back_unchanged(shape):
    wf = running(chain(noop.si().set(task_id="a"), noop.si().set(task_id="b")))
    if shape == "error callback":
        wf.link_error(noop.si())
    elif shape == "finalizer":
        wf.link_finalizer(noop.si())
    elif shape == "failed node":
        wf.add_signature(noop.si().set(task_id="c"))
    start(wf)
    if shape == "child workflow":  # a parent to tell: its node ends with the child
        parent = start(running(noop.si().set(task_id="parent-a")))
        Workflow.objects.filter(pk=wf.pk).update(parent_node=parent.nodes.get())
    if shape == "failed node":
        hotpath.node_started(wf.pk, "c")
        outcomes.node_failed(wf.pk, "c", RuntimeError("boom"))
    assert run(wf, "a") is not None
    assert_falls_back_unchanged(wf, "b", "the last node")
    assert hotpath.node_succeeded(wf.pk, "b", 2).state == S.SUCCESS
    wf.refresh_from_db()
    assert wf.state == (Workflow.State.FAILURE if shape == "failed node" else Workflow.State.SUCCESS)


@pytest.mark.django_db(transaction=True)
def test_hotpath__the_statement_that_ends_the_workflow_wakes_a_listener_at_its_commit():
    wf = start(running(noop.si().set(task_id="only")))
    listener = connection.get_new_connection(connection.get_connection_params())
    try:
        listener.autocommit = True
        with listener.cursor() as cursor:
            cursor.execute(hotsql.listen_sql(connection, waiting.channel(wf.pk)))
        assert run(wf, "only") is not None
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == ["SUCCESS"]
        assert Workflow.objects.get(pk=wf.pk).state == Workflow.State.SUCCESS
    finally:
        listener.close()


def group_then(prefix=""):
    """group(g0, g1) -> join -> ``after`` -> z (task ids after ``prefix``): the join and ``after``
    are not the last."""
    return start(running(chain(group(noop.si().set(task_id=f"{prefix}g{i}") for i in range(2)),
                               noop.si().set(task_id=f"{prefix}after"), noop.si().set(task_id=f"{prefix}z"))))


def effects(wf):
    """What a completion leaves, comparable between two workflows of the same shape."""
    def name(node):
        return "join" if node.kind == WorkflowNode.Kind.JOIN else node.task_id.removeprefix("locked-")

    nodes = sorted(
        (name(n), n.state, n.waiting, n.publish_count,
         n.queued_at is not None, n.finished_at is not None, n.result)
        for n in wf.nodes.all()
    )
    counters = Workflow.objects.filter(pk=wf.pk).values_list(
        "state", "nodes_total", "nodes_done", "nodes_succeeded", "nodes_failed", "nodes_skipped").get()
    events = sorted(
        (name(e.node) if e.node else "",
         e.old_state, e.new_state, e.reason)
        for e in WorkflowEvent.objects.filter(workflow=wf).select_related("node")
    )
    return nodes, counters, events


def test_hotpath__a_join_reaching_zero_is_succeeded_and_its_dependents_queued_by_the_join_statement(
    monkeypatch, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr(messaging, "publish", lambda wf_id, options, entries: published.extend(
        node.task_id for node, _args in entries))
    fast, locked = group_then(), group_then("locked-")
    for wf, prefix in ((fast, ""), (locked, "locked-")):
        assert run(wf, f"{prefix}g0") is not None  # the join still waits for g1: plain
        hotpath.node_started(wf.pk, f"{prefix}g1")
    published.clear()
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as ctx:
        node = hotpath._fast_success(fast.pk, "g1", 7)  # raises _Fallback if it did not decide
    statements = [q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    # The plain statement first (it writes nothing: a dependent is a join to release), then
    # the one that decides joins: two statements once per join, one for every other sibling.
    assert len(statements) == 2 and node.state == S.SUCCESS
    assert "SKIP LOCKED" not in statements[0] and "SKIP LOCKED" in statements[1]
    assert published == ["after"]
    # The locked path on a workflow of the same shape leaves exactly the same rows.
    outcomes.node_succeeded(locked.pk, "locked-g1", 7)
    assert effects(fast) == effects(locked)
    nodes, counters, events = effects(fast)
    assert ("join", S.SUCCESS, 0, 0, False, True, None) in nodes
    assert ("after", S.QUEUED, 0, 1, True, False, None) in nodes
    assert counters == (Workflow.State.RUNNING, 4, 2, 2, 0, 0)
    assert ("join", "PENDING", "SUCCESS", "") in events and ("after", "PENDING", "QUEUED", "") in events


def test_hotpath__a_join_whose_dependent_is_not_a_plain_task_changes_nothing():
    wf = group_then()
    WorkflowNode.objects.filter(workflow=wf, task_id="after").update(trigger_rule="one_failed")
    assert run(wf, "g0") is not None
    assert_falls_back_unchanged(wf, "g1", "a dependent needs a decision")
    hotpath.node_succeeded(wf.pk, "g1", 1)  # the locked path: no dependency failed, so skipped
    assert wf.nodes.get(task_id="after").state == S.SKIPPED


def test_hotpath__a_node_both_behind_the_join_and_after_the_completion_changes_nothing():
    wf = group_then()
    after = wf.nodes.get(task_id="after")
    WorkflowEdge.objects.create(workflow=wf, node=after, dependency=wf.nodes.get(task_id="g1"))
    WorkflowNode.objects.filter(pk=after.pk).update(waiting=2)
    assert run(wf, "g0") is not None
    # One UPDATE may not change a row twice: the statement leaves it to the locked path.
    assert_falls_back_unchanged(wf, "g1", "a dependent needs a decision")
    hotpath.node_succeeded(wf.pk, "g1", 1)
    after.refresh_from_db()
    assert (after.state, after.waiting, after.publish_count) == (S.QUEUED, 0, 1)


def test_hotpath__a_joins_dependent_another_transaction_holds_is_skipped_not_waited_for(transactional_db):
    wf = group_then()
    assert run(wf, "g0") is not None
    hotpath.node_started(wf.pk, "g1")
    before = rows(wf)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            other.set_autocommit(False)
            cursor.execute(f"SELECT id FROM {WorkflowNode._meta.db_table} WHERE id = %s FOR UPDATE",
                           [wf.nodes.get(task_id="after").pk])
            with pytest.raises(hotpath._Fallback, match="another completion holds"):
                hotpath._fast_success(wf.pk, "g1", 1)
            assert rows(wf) == before
            other.rollback()
    finally:
        other.close()
    hotpath.node_succeeded(wf.pk, "g1", 1)
    assert wf.nodes.get(task_id="after").state == S.QUEUED


def rule_after_a(rule):
    wf = running()
    a = wf.add_signature(noop.si().set(task_id="a"))
    wf.add_signature(noop.si().set(task_id="extra"))
    wf.add_signature(noop.si().set(task_id="rule"), dependencies=[a], trigger_rule=rule)
    return start(wf)


def test_hotpath__a_one_failed_dependent_reaching_zero_goes_to_the_locked_path_which_skips_it():
    wf = rule_after_a("one_failed")
    assert_falls_back_unchanged(wf, "a", "a dependent needs a decision")
    hotpath.node_succeeded(wf.pk, "a", 1)
    assert wf.nodes.get(task_id="rule").state == S.SKIPPED


def test_hotpath__an_all_done_dependent_without_failures_is_queued_by_the_statement():
    wf = rule_after_a("all_done")
    hotpath.node_started(wf.pk, "a")
    hotpath._fast_success(wf.pk, "a", 1)
    assert wf.nodes.get(task_id="rule").state == S.QUEUED


def test_hotpath__a_canceled_workflow_changes_nothing_and_the_report_is_ignored():
    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(3)])))
    hotpath.node_started(wf.pk, "n0")
    engine.cancel(wf.pk)
    before = rows(wf)
    with pytest.raises(hotpath._Fallback, match="not RUNNING"):
        hotpath._fast_success(wf.pk, "n0", 1)
    assert rows(wf) == before
    assert hotpath.node_succeeded(wf.pk, "n0", 1) is None
    assert rows(wf) == before


def test_hotpath__a_duplicate_report_changes_nothing_and_is_ignored():
    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(3)])))
    assert run(wf, "n0", 1) is not None
    before = rows(wf)
    with pytest.raises(hotpath._Fallback, match="not an active task"):
        hotpath._fast_success(wf.pk, "n0", 2)
    assert hotpath.node_succeeded(wf.pk, "n0", 2) is None
    assert rows(wf) == before
    assert wf.nodes.get(task_id="n0").result == 1


def test_hotpath__a_workflow_passing_results_goes_to_the_locked_path():
    wf = start(running(chain(noop.s().set(task_id="a"), noop.s().set(task_id="b"), noop.s().set(task_id="c")),
                       pass_results=True))
    assert_falls_back_unchanged(wf, "a", "passing results")
    hotpath.node_succeeded(wf.pk, "a", 5)
    assert wf.nodes.get(task_id="b").state == S.QUEUED


def test_hotpath__a_plain_success_writes_node_dependents_events_and_counters_together():
    wf = start(running(chain(noop.si().set(task_id="a"), group(noop.si().set(task_id=f"g{i}") for i in range(3)),
                             noop.si().set(task_id="z"))))
    hotpath.node_started(wf.pk, "a")
    node = hotpath._fast_success(wf.pk, "a", {"k": [1, 2]})
    assert (node.task_id, node.state) == ("a", S.SUCCESS)
    nodes = {n.task_id: n for n in wf.nodes.all()}
    assert nodes["a"].result == {"k": [1, 2]} and nodes["a"].finished_at is not None
    for i in range(3):
        g = nodes[f"g{i}"]
        assert (g.state, g.waiting, g.publish_count, g.queued_at is not None) == (S.QUEUED, 0, 1, True)
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_total) == (1, 1, 5)
    events = set(wf.events.filter(node__isnull=False).exclude(old_state="PENDING", node__task_id="a")
                 .values_list("node__task_id", "old_state", "new_state"))
    assert ("a", "STARTED", "SUCCESS") in events
    assert {("g0", "PENDING", "QUEUED"), ("g1", "PENDING", "QUEUED"), ("g2", "PENDING", "QUEUED")} <= events
    assert WorkflowEvent.objects.filter(workflow=wf, node__task_id="g0", new_state="QUEUED").count() == 1


def test_hotpath__without_the_event_log_no_event_row_is_written(settings):
    settings.DYRYGENT_EVENT_LOG = False
    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(3)])))
    assert run(wf, "n0") is not None
    assert not WorkflowEvent.objects.filter(workflow=wf).exists()
    assert wf.nodes.get(task_id="n1").state == S.QUEUED


# -- the hot path's own connection in a worker process ----------------------------------------


@pytest.fixture
def in_worker(monkeypatch):
    """This process is a worker (worker_init ran); its hot-path connection closed after the test."""
    from django_dyrygent.engine import db

    monkeypatch.setattr(db, "_worker_pid", 1)
    yield
    hotpath.close_connection()


@pytest.mark.django_db(transaction=True)
def test_hotpath__a_worker_runs_started_and_success_on_its_own_connection_not_djangos(in_worker):
    """With Celery's default database handling Django's connection is closed around every task:
    a plain node's STARTED and success must not open it again."""
    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(3)])))
    connection.close()
    assert run(wf, "n0") is not None
    assert connection.connection is None  # Django's connection was never opened
    own = hotpath._connection()
    assert own is not connections["default"] and own.connection is not None
    assert hotpath._connection() is own  # kept for the next task
    assert dict(wf.nodes.values_list("task_id", "state")) == {"n0": "SUCCESS", "n1": "QUEUED", "n2": "PENDING"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("listened", [False, True])
def test_hotpath__a_worker_s_started_commits_without_waiting_for_the_wal_flush(in_worker, listened):
    """STARTED in autocommit: ``SET LOCAL synchronous_commit = off`` and the UPDATE in one round
    trip and one implicit transaction; the setting ends with it (the success stays durable)."""
    from django.test.utils import CaptureQueriesContext

    from django_dyrygent import signals

    seen = []

    def receiver(sender, node, old_state, new_state, **kwargs):
        seen.append((node.task_id, node.kind, old_state, new_state))

    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(2)])))
    own = hotpath._connection()
    if listened:
        signals.node_state_changed.connect(receiver, dispatch_uid="test-lazy-started")
    try:
        with CaptureQueriesContext(own) as queries:
            node = hotpath.node_started(wf.pk, "n0", "host", 7)
    finally:
        signals.node_state_changed.disconnect(dispatch_uid="test-lazy-started")
    assert len(queries) == 1
    assert queries[0]["sql"].startswith("SET LOCAL synchronous_commit = off; UPDATE ")
    assert (node.task_id, node.state) == ("n0", S.STARTED)
    assert seen == ([("n0", "task", S.QUEUED, S.STARTED)] if listened else [])
    assert wf.nodes.filter(task_id="n0", state=S.STARTED, worker_hostname="host", worker_pid=7).exists()
    with own.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
    assert hotpath.node_succeeded(wf.pk, "n0", 1) is not None
    assert "SET LOCAL" not in hotsql.success_sql(own, event_log=True, joins=True)
    # Inside a caller's transaction the SET would outlive the statement: a plain UPDATE there.
    from django.db import transaction

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert hotpath.node_started(wf.pk, "n1") is not None
    assert "synchronous_commit" not in queries[-1]["sql"]


@pytest.mark.django_db(transaction=True)
def test_hotpath__inside_an_atomic_block_the_hot_path_uses_djangos_connection(in_worker):
    from django.db import transaction

    with transaction.atomic():
        assert hotpath._connection() is connections["default"]
    assert hotpath._connection() is not connections["default"]


@pytest.mark.django_db(transaction=True)
def test_hotpath__a_forked_child_opens_its_own_connection_and_keeps_the_parents_alive(in_worker, monkeypatch):
    parent = hotpath._connection()
    parent.ensure_connection()
    monkeypatch.setattr(hotpath.os, "getpid", lambda: -1)  # as after a fork
    child = hotpath._connection()
    assert child is not parent and hotpath._inherited[-1] is parent
    assert parent.connection is not None  # not closed: its socket would be the parent's
    hotpath._inherited.remove(parent)
    hotpath._own.conn, hotpath._own.pid = parent, 1  # the parent's, still in the local: closing forgets it
    hotpath.close_connection()
    assert hotpath._inherited[-1] is parent and parent.connection is not None
    hotpath._inherited.remove(parent)
    monkeypatch.undo()
    parent.close()


@pytest.mark.django_db(transaction=True)
def test_hotpath__a_dropped_connection_is_replaced_and_the_step_retried(in_worker):
    """pg_terminate_backend (a database restart): db.run retries on a new connection."""
    from django_dyrygent.engine import db

    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(3)])))
    first = hotpath._connection()
    with first.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert db.run(hotpath.node_started, wf.pk, "n0") is not None
    assert db.run(hotpath.node_succeeded, wf.pk, "n0", 1) is not None
    assert hotpath._connection() is not first
    assert wf.nodes.get(task_id="n1").state == S.QUEUED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_hotpath__a_worker_s_success_statement_is_planned_once_per_connection(in_worker, settings, prepared):
    settings.DYRYGENT_PREPARED_STATEMENTS = prepared
    wf = start(running(chain(*[noop.si().set(task_id=f"n{i}") for i in range(4)])))
    for i in range(4):
        assert run(wf, f"n{i}") is not None
    with hotpath._connection().cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        plans = sorted(runs for statement, runs in cursor.fetchall() if statement.lstrip().startswith("WITH wf AS"))
    # The plain statement ran four times (the last node's finds the count complete), the last one once.
    assert plans == ([1, 4] if prepared else [])
    assert set(wf.nodes.values_list("state", flat=True)) == {S.SUCCESS}
    assert Workflow.objects.get(pk=wf.pk).state == Workflow.State.SUCCESS


def _generic_plan(conn, statement, params):
    """The plan PostgreSQL keeps for ``statement`` once it goes generic, as EXPLAIN prints it.

    Prepared by hand with ``$n`` placeholders, in a transaction rolled back
    after (``plan_cache_mode`` and the statement do not outlive it).
    """
    import re

    import psycopg

    names = []

    def placeholder(match):
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", placeholder, statement)
    literal = psycopg.ClientCursor(conn.connection)
    values = ", ".join(literal.mogrify("%s", [params[name]]) for name in names)
    with conn.connection.transaction(force_rollback=True), conn.connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("PREPARE dyrygent_plan_probe AS " + prepared)
        cursor.execute(f"EXPLAIN (COSTS OFF) EXECUTE dyrygent_plan_probe({values})")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("joins,last", [(False, False), (True, False), (False, True)])
def test_hotpath__the_prepared_statement_s_generic_plan_reads_by_key_though_the_tables_were_nearly_empty(
    in_worker, settings, joins, last,
):
    """A generic plan lives as long as the connection: one made on near-empty tables (a new
    deployment) must not scan the node table once it holds thousands of rows."""
    settings.DYRYGENT_PREPARED_STATEMENTS = True
    wf = start(running(chain(group(noop.si().set(task_id=f"g{i}") for i in range(2)), noop.si().set(task_id="t"))))
    assert run(wf, "g0") is not None  # the own connection, set up for prepared statements
    conn = hotpath._connection()
    plan = _generic_plan(conn, hotsql.success_sql(conn, True, joins, last),
                         hotpath.success_params(conn, wf.pk, "g1", None))
    assert "Seq Scan" not in plan, plan
    assert "Hash Join" not in plan, plan
    assert "dyrygent_wf_state_tick_idx" not in plan, plan  # the workflow by its key, not by its state


def test_hotpath__the_workflow_ends_after_every_completion_it_counts_not_at_the_reporter_s_clock(monkeypatch):
    """The last completion's ``now`` was taken before its statement waited for the counters' lock;
    a sibling counted meanwhile ran after that moment, so the end is the server's clock under the lock."""
    wf = start(running(group(noop.si().set(task_id="early"), noop.si().set(task_id="late"))))
    for task_id in ("early", "late"):
        hotpath.node_started(wf.pk, task_id)
    reported = hotpath.timezone.now()  # the last reporter read its clock here, then waited
    assert run(wf, "late") is not None
    monkeypatch.setattr(hotpath.timezone, "now", lambda: reported)
    assert hotpath._fast_success(wf.pk, "early", 1).state == S.SUCCESS
    wf.refresh_from_db()
    late = wf.nodes.get(task_id="late")
    ended = WorkflowEvent.objects.get(workflow=wf, node=None, new_state=Workflow.State.SUCCESS)
    assert wf.state == Workflow.State.SUCCESS
    assert wf.finished_at >= late.finished_at and ended.created_at == wf.finished_at

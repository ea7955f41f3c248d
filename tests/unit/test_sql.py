"""Each named statement of ``engine.sql`` against the ORM path it stands for, where it applies.

A statement is run on one workflow and its ORM equivalent on a twin built
the same way; the rows they leave (or the rows they return) must be the
same. ``copy_sql`` is compared column by column with ``bulk_create`` in
``tests/test_build_copy.py``.
"""

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest
from celery import chain, group
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, messaging, outcomes, sql
from django_dyrygent.models import Workflow, WorkflowEvent, WorkflowNode
from tests.tasks import noop

pytestmark = pytest.mark.django_db

S = WorkflowNode.State
postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL statement")


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(messaging, "send_tick", lambda *args, **kwargs: None)
    monkeypatch.setattr(messaging, "publish", lambda *args, **kwargs: None)


def started(canvas, name):
    wf = Workflow(name=name)
    wf.add_celery_canvas(canvas)
    wf.apply_async()
    engine.tick(wf.pk)
    return wf


def name_of(task_id, kind):
    """A node's name in both twins: its task id without the twin's prefix ("join": a uuid of its own)."""
    return "join" if kind == "join" else task_id.split("-", 1)[1]


def node_rows(wf, *fields):
    """The nodes' rows by name, ``fields`` in order."""
    return sorted((name_of(task_id, kind), *rest) for task_id, kind, *rest in
                  wf.nodes.values_list("task_id", "kind", *fields))


def test_share_workflow_sql__finds_the_row_the_orm_finds():
    wf = started(noop.si().set(task_id="share-a"), "share")
    missing = Workflow(name="never saved").pk
    with transaction.atomic(), connection.cursor() as cursor:
        for pk in (wf.pk, missing):
            cursor.execute(sql.share_workflow_sql(connection), [Workflow._meta.pk.get_db_prep_value(pk, connection)])
            assert bool(cursor.fetchall()) == Workflow.objects.filter(pk=pk).exists()


@postgres_only
@pytest.mark.parametrize("move", [True, False], ids=["moves-the-chain", "keeps-next-tick"])
def test_idle_tick_sql__counts_the_tick_as_the_orm_update_does(move):
    due = timezone.now().replace(microsecond=0)
    following = due + timedelta(seconds=30) if move else None
    by_sql, by_orm = (started(noop.si().set(task_id=f"{name}-a"), name) for name in ("sql", "orm"))
    Workflow.objects.filter(pk__in=[by_sql.pk, by_orm.pk]).update(next_tick_at=due, ticks=3)
    with connection.cursor() as cursor:
        cursor.execute(sql.idle_tick_sql(connection), [by_sql.pk, "RUNNING", due, following])
        counted = cursor.rowcount
    change = {"ticks": F("ticks") + 1, **({"next_tick_at": following} if following else {})}
    assert counted == Workflow.objects.filter(pk=by_orm.pk, state="RUNNING", next_tick_at=due).update(**change) == 1
    fields = ("state", "ticks", "next_tick_at")
    assert Workflow.objects.filter(pk=by_sql.pk).values_list(*fields).get() == \
        Workflow.objects.filter(pk=by_orm.pk).values_list(*fields).get()
    with connection.cursor() as cursor:  # another due: nothing counted, as the ORM's filter matches nothing
        cursor.execute(sql.idle_tick_sql(connection), [by_sql.pk, "RUNNING", due - timedelta(days=1), None])
        assert cursor.rowcount == 0


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_notify_sql_and_listen_sql__a_listener_hears_the_commit():
    listener = connection.get_new_connection(connection.get_connection_params())
    try:
        listener.autocommit = True
        with listener.cursor() as cursor:
            cursor.execute(sql.listen_sql(connection, "dyrygent_test_sql"))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql.NOTIFY_SQL, ["dyrygent_test_sql", "SUCCESS"])
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == ["SUCCESS"]
    finally:
        listener.close()


@postgres_only
def test_reserve_ids_sql__takes_ids_the_orm_will_not_hand_out():
    wf = started(noop.si().set(task_id="ids-a"), "ids")
    statement, params = sql.reserve_ids_sql(connection, WorkflowNode)
    with connection.cursor() as cursor:
        cursor.execute(statement, [*params, 3])
        reserved = sorted(row[0] for row in cursor.fetchall())
    assert len(set(reserved)) == 3 and reserved[0] > max(wf.nodes.values_list("pk", flat=True))
    node = WorkflowNode.objects.create(workflow=wf, task_id="ids-b", task_name="x", signature={})
    assert node.pk > reserved[-1]


@postgres_only
@pytest.mark.parametrize("listened", [False, True])
def test_started_sql__leaves_the_row_the_orm_update_leaves(listened):
    twins = []
    for name in ("sql", "orm"):
        wf = Workflow(name=name)
        wf.add_signature(noop.si().set(task_id=f"{name}-a"), timeout=30)
        wf.add_signature(noop.si().set(task_id=f"{name}-b"))
        wf.apply_async()
        engine.tick(wf.pk)
        twins.append(wf)
    by_sql, by_orm = twins
    now = timezone.now()
    starts_from = [str(s) for s in outcomes.WORKER_SOURCES[S.STARTED]]
    fields = sql.NODE_FIELD_OBJECTS if listened else sql.STARTED_FIELD_OBJECTS
    with connection.cursor() as cursor:
        for task_id in ("sql-a", "sql-b"):
            cursor.execute(sql.started_sql(connection, listened),
                           [S.STARTED, now, now, "host", 7, by_sql.pk, task_id, starts_from])
            old_state, *returned = cursor.fetchone()
            assert old_state == S.QUEUED
            node = hotpath._node(connection, returned, fields)  # converted as the ORM converts
            assert [getattr(node, f.attname) for f in fields] == list(
                WorkflowNode.objects.filter(task_id=task_id).values_list(*(f.attname for f in fields)).get())
    timeout_at = ExpressionWrapper(Value(now) + F("timeout"), output_field=DateTimeField())
    assert WorkflowNode.objects.filter(workflow=by_orm, state__in=starts_from).update(
        state=S.STARTED, started_at=now, timeout_at=timeout_at, worker_hostname="host", worker_pid=7) == 2
    fields = ("state", "started_at", "timeout_at", "worker_hostname", "worker_pid")
    assert node_rows(by_sql, *fields) == node_rows(by_orm, *fields)


def graph(name, joins):
    """A chain whose first completion queues the next task; with ``joins``, one that releases a join."""
    if joins:
        return chain(group(noop.si().set(task_id=f"{name}-a"), noop.si().set(task_id=f"{name}-b")),
                     noop.si().set(task_id=f"{name}-c"), noop.si().set(task_id=f"{name}-d"))
    return chain(*(noop.si().set(task_id=f"{name}-{x}") for x in "abc"))


@postgres_only
@pytest.mark.parametrize("event_log", [True, False], ids=["event-log", "no-event-log"])
@pytest.mark.parametrize("joins", [False, True], ids=["plain", "joins"])
def test_success_sql__leaves_the_rows_the_locked_path_leaves(settings, joins, event_log):
    settings.DYRYGENT_EVENT_LOG = event_log
    by_sql, by_orm = started(graph("sql", joins), "sql"), started(graph("orm", joins), "orm")
    order = ("a", "b") if joins else ("a",)
    for x in order:
        hotpath.node_started(by_sql.pk, f"sql-{x}")
        hotpath.node_started(by_orm.pk, f"orm-{x}")
    with connection.cursor() as cursor:
        for x in order:
            params = hotpath.success_params(connection, by_sql.pk, f"sql-{x}", 1)
            cursor.execute(sql.success_sql(connection, event_log, joins), params)
            node_ok, deps_ok, count_ok = cursor.fetchall()[0][:3]
            assert (node_ok, deps_ok, count_ok) == (True, True, True)
    for x in order:
        outcomes.node_succeeded(by_orm.pk, f"orm-{x}", 1)
    fields = ("kind", "state", "waiting", "failed_dependencies", "publish_count", "result")
    assert node_rows(by_sql, *fields) == node_rows(by_orm, *fields)
    counters = ("state", "nodes_done", "nodes_succeeded", "nodes_failed")
    assert Workflow.objects.filter(pk=by_sql.pk).values_list(*counters).get() == \
        Workflow.objects.filter(pk=by_orm.pk).values_list(*counters).get()

    def events(wf):
        return sorted((name_of(e.node.task_id, e.node.kind), e.old_state, e.new_state)
                      for e in WorkflowEvent.objects.filter(workflow=wf, node__isnull=False).select_related("node"))

    assert events(by_sql) == events(by_orm)


@postgres_only
def test_success_sql__without_joins_writes_nothing_when_a_join_would_be_released():
    wf = started(graph("wf", joins=True), "wf")
    hotpath.node_started(wf.pk, "wf-a")
    assert hotpath.node_succeeded(wf.pk, "wf-a", 1) is not None  # the plain statement: the join keeps waiting
    hotpath.node_started(wf.pk, "wf-b")
    params = hotpath.success_params(connection, wf.pk, "wf-b", 1)
    before = node_rows(wf, "state", "waiting")
    with connection.cursor() as cursor:
        cursor.execute(sql.success_sql(connection, True, joins=False), params)
        assert cursor.fetchall()[0][:3] == (True, False, True)
    assert node_rows(wf, "state", "waiting") == before


_STATEMENT = re.compile(r"^\s*(SELECT|UPDATE|INSERT|DELETE|WITH|COPY|LISTEN|NOTIFY|SET LOCAL)\s")


def statement_texts(path):
    """String literals (docstrings excepted) in ``path`` that start like an SQL statement."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _STATEMENT.match(node.value):
                yield node.lineno, node.value[:40]


def test_sql__no_statement_text_outside_engine_sql():
    package = Path(sql.__file__).parent.parent
    found = {
        str(path.relative_to(package)): list(statement_texts(path))
        for path in package.rglob("*.py") if "migrations" not in path.parts and path != Path(sql.__file__)
    }
    assert {name: texts for name, texts in found.items() if texts} == {}
    assert list(statement_texts(Path(sql.__file__)))  # the scan sees statements where they are

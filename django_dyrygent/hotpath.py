"""The success of a plain task node without the workflow lock (PostgreSQL).

A completion is by far the most frequent engine step. Under the workflow
row lock (``engine._locked_step``) the completions of one workflow run one
after another, each holding the lock for its whole transaction. Here, on
PostgreSQL, a plain success instead:

1. takes ``FOR KEY SHARE`` on the workflow row and reads its state: shared
   with every other completion, but it conflicts with the ``FOR UPDATE`` of
   the rare decisions (cancel, retry, skip, the tick, the deadline), so a
   decision waits for the completions in flight and a later completion
   waits for the decision, then finds the workflow no longer RUNNING and
   takes the locked path (which publishes nothing for it);
2. records the outcome with a conditional UPDATE (an active state ->
   SUCCESS);
3. decrements its dependents' ``waiting`` with one conditional
   ``UPDATE … RETURNING`` that also queues a dependent brought to zero: the
   dependents' rows are locked in id order first (no deadlock between two
   completions sharing dependents), and their updates are serialised by
   those row locks, so exactly one transaction sees a counter reach zero and
   releases that node;
4. writes the event rows, then updates the workflow's counters LAST, so the
   exclusive row lock that UPDATE takes lives only until the commit.

Anything unusual rolls the whole transaction back and takes the locked
path instead (``engine.node_succeeded``): a result that cannot be stored, a
node that is not a task or not active, a workflow passing results, a
dependent whose readiness is anything but "queue this task" (a join, a
fan-out, a skip, an upstream failure), and the completion that brings
``nodes_done`` to ``nodes_total`` (the counter UPDATE is serialised, so
exactly one transaction sees it; redone under the lock, it finishes the
workflow through ``maybe_finish``). These are rare: once per group or per
workflow, not per node. SQLite and MariaDB always take the locked path.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from . import engine, signals
from .conf import settings
from .models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from .states import NODE_ACTIVE, NODE_TRANSITIONS, NodeKind, NodeState, TriggerRule, WorkflowState

logger = logging.getLogger("django_dyrygent.hotpath")

# The states a node may succeed from, as the state table says.
_SUCCEEDS_FROM = sorted(str(s) for s in NODE_ACTIVE if NodeState.SUCCESS in NODE_TRANSITIONS[s])
# Trigger rules a dependent may be queued under straight from its counters.
_QUEUE_RULES = [str(TriggerRule.ALL_SUCCESS), str(TriggerRule.ALL_DONE)]


# The columns the engine reads of a node, in model order (what Model.from_db expects).
_NODE_FIELD_OBJECTS = [f for f in WorkflowNode._meta.concrete_fields if f.attname in engine.NODE_FIELDS]
_NODE_COLUMNS = [f.attname for f in _NODE_FIELD_OBJECTS]
# What node_started returns when nobody listens to node_state_changed.
_STARTED_FIELD_OBJECTS = [
    f for f in WorkflowNode._meta.concrete_fields if f.attname in ("id", "workflow_id", "task_id", "state")
]
# The states a worker's STARTED is written from, most likely first.
_STARTS_FROM = [str(s) for s in engine._WORKER_SOURCES[NodeState.STARTED]]


def _connection() -> BaseDatabaseWrapper:
    """The connection the hot path's statements run on."""
    return engine._connection()


@contextmanager
def _cursor() -> Iterator[tuple[BaseDatabaseWrapper, CursorWrapper]]:
    """The one door of every hot-path statement: ``(connection, cursor)``."""
    conn = _connection()
    with conn.cursor() as cursor:
        yield conn, cursor


def node_started(workflow_id: Any, task_id: str, hostname: str = "", pid: int | None = None) -> WorkflowNode | None:
    """A worker is about to run the node's task (task_prerun): ONE statement, no event row.

    QUEUED/RETRY/STARTED -> STARTED with ``started_at`` (the record of the
    start), ``timeout_at`` and the worker's ``hostname``/``pid`` (for the
    liveness sweep), conditional on the node being in one of those states
    under this task id. On PostgreSQL an ``UPDATE … RETURNING`` outside any
    transaction block (autocommit: no BEGIN/COMMIT). It takes no lock on the
    workflow row (the foreign key is not updated) and holds only the node's
    row, so it cannot take part in a deadlock: a cancel that already moved
    the node makes it match nothing, a cancel after it re-reads the node
    (``Step.transition_nodes``).

    Returns None when the node is not runnable (canceled, skipped, final,
    retried under a new task id, gone): the run-time guard then refuses the
    body. Otherwise a WorkflowNode: its NODE_FIELDS when ``node_state_changed``
    has receivers (which get it after the statement), else only its id, task
    id and state.
    """
    conn = _connection()
    hostname = hostname[:255]
    listened = bool(signals.node_state_changed.receivers)
    now = timezone.now()
    if conn.vendor != "postgresql":
        return _started_orm(workflow_id, task_id, hostname, pid, now, listened)
    node_t = _table(WorkflowNode)
    fields = _NODE_FIELD_OBJECTS if listened else _STARTED_FIELD_OBJECTS
    returned = ", ".join(f"d.{f.column}" for f in fields)
    with _cursor() as (conn, cursor):
        # The subquery locks the node row and reads its state before the change.
        cursor.execute(
            f"UPDATE {node_t} d SET state = %s, started_at = %s, timeout_at = %s + d.timeout, "
            f"  worker_hostname = %s, worker_pid = %s "
            f"FROM (SELECT id, state FROM {node_t} WHERE workflow_id = %s AND task_id = %s "
            f"      AND state = ANY(%s) FOR UPDATE) o "
            f"WHERE d.id = o.id RETURNING o.state, {returned}",
            [NodeState.STARTED, now, now, hostname, pid, workflow_id, task_id, _STARTS_FROM],
        )
        row = cursor.fetchone()
    if row is None:
        return _not_runnable(workflow_id, task_id)
    node = _node(conn, row[1:], fields)
    if listened:
        transaction.on_commit(
            partial(signals.send, signals.node_state_changed, node=node, old_state=row[0],
                    new_state=NodeState.STARTED),
            using=conn.alias,
        )
    return node


def _started_orm(
    workflow_id: Any, task_id: str, hostname: str, pid: int | None, now: datetime, listened: bool
) -> WorkflowNode | None:
    """``node_started`` on SQLite and MariaDB: one UPDATE (a SELECT more for the signal's receivers)."""
    values = {
        "state": NodeState.STARTED, "started_at": now, "worker_hostname": hostname, "worker_pid": pid,
        # NULL when the node has no timeout.
        "timeout_at": ExpressionWrapper(Value(now) + F("timeout"), output_field=DateTimeField()),
    }
    nodes = WorkflowNode.objects.filter(task_id=task_id, workflow_id=workflow_id)
    if not listened:
        if not nodes.filter(state__in=_STARTS_FROM).update(**values):
            return _not_runnable(workflow_id, task_id)
        node = WorkflowNode(workflow_id=workflow_id, task_id=task_id, state=NodeState.STARTED)
        node._state.adding = False
        return node
    for old in _STARTS_FROM:  # the old state is the signal's
        if nodes.filter(state=old).update(**values):
            found = nodes.only(*engine.NODE_FIELDS).first()
            transaction.on_commit(partial(signals.send, signals.node_state_changed, node=found,
                                          old_state=old, new_state=NodeState.STARTED))
            return found
    return _not_runnable(workflow_id, task_id)


def _not_runnable(workflow_id: Any, task_id: str) -> WorkflowNode | None:
    """Log that the STARTED report matched no row; None (the caller's answer)."""
    logger.info("Workflow %s: STARTED report for task %s ignored (node gone, final or moved on)",
                workflow_id, task_id)
    return None


def _node(conn: BaseDatabaseWrapper, values: Any, fields: list[Any] = _NODE_FIELD_OBJECTS) -> WorkflowNode:
    """A WorkflowNode from RETURNING columns, converted as the ORM would (JSON decoded)."""
    values = [
        f.from_db_value(v, None, conn) if hasattr(f, "from_db_value") else v
        for f, v in zip(fields, values, strict=True)
    ]
    return WorkflowNode.from_db(conn.alias, [f.attname for f in fields], values)


class _Fallback(Exception):
    """This completion needs a decision the hot path does not take: roll back, lock."""


def _table(model):
    return model._meta.db_table


def node_succeeded(workflow_id, task_id, result):
    """A worker reports that the node's task returned ``result``; see the module docstring.

    Returns the node, or None when the report was ignored, as
    ``engine.node_succeeded`` does (which this falls back to).
    """
    conn = engine._connection()
    if conn.vendor != "postgresql":
        return engine.node_succeeded(workflow_id, task_id, result)
    value, problem = engine._encode_result(result)
    if problem is None:
        try:
            return _fast_success(conn, workflow_id, task_id, value)
        except _Fallback as why:
            logger.debug("Workflow %s, task %s: locked path (%s)", workflow_id, task_id, why)
        except engine.VALUE_REFUSED:
            pass  # the locked path fails this node alone, saying why
    return engine.node_succeeded(workflow_id, task_id, result)


def _fast_success(conn, workflow_id, task_id, value):
    node_t, wf_t, edge_t = _table(WorkflowNode), _table(Workflow), _table(WorkflowEdge)
    now = timezone.now()
    prep_result = WorkflowNode._meta.get_field("result").get_db_prep_save(value, conn)
    fields = _NODE_COLUMNS
    returned = ", ".join(f"d.{f}" for f in fields)
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        # 1. Shared with other completions; waits for (and is waited for by) FOR UPDATE.
        wf = next(iter(Workflow.objects.using(conn.alias).raw(
            f"SELECT id, state, pass_results FROM {wf_t} WHERE id = %s FOR KEY SHARE", [workflow_id]
        )), None)
        if wf is None or wf.state != WorkflowState.RUNNING or wf.pass_results:
            raise _Fallback("workflow not RUNNING, missing or passing results")
        # 2. The outcome; the subquery locks the node row and reads its state before the change.
        cursor.execute(
            f"UPDATE {node_t} d SET state = %s, result = %s, error = '', finished_at = %s "
            f"FROM (SELECT id, state FROM {node_t} WHERE workflow_id = %s AND task_id = %s "
            f"      AND kind = %s FOR UPDATE) o "
            f"WHERE d.id = o.id AND o.state = ANY(%s) RETURNING o.state, {returned}",
            [NodeState.SUCCESS, prep_result, now, workflow_id, task_id, NodeKind.TASK, _SUCCEEDS_FROM],
        )
        row = cursor.fetchone()
        if row is None:
            raise _Fallback("node missing, not a task or not active")
        old, node = row[0], _node(conn, row[1:])
        # 3. Dependents, locked in id order; a counter reaching zero queues its node here.
        ready = (
            "d.waiting = l.n AND d.failed_dependencies = 0 AND d.state = %s "
            "AND d.kind = %s AND d.trigger_rule = ANY(%s)"
        )
        ready_params = [NodeState.PENDING, NodeKind.TASK, _QUEUE_RULES]
        cursor.execute(
            f"UPDATE {node_t} d SET waiting = d.waiting - l.n, "
            f"  state = CASE WHEN {ready} THEN %s ELSE d.state END, "
            f"  queued_at = CASE WHEN {ready} THEN %s ELSE d.queued_at END, "
            f"  publish_count = d.publish_count + CASE WHEN {ready} THEN 1 ELSE 0 END "
            f"FROM (SELECT n.id, h.n, n.state AS old_state FROM {node_t} n "
            f"      JOIN (SELECT node_id, count(*) AS n FROM {edge_t} WHERE dependency_id = %s "
            f"            GROUP BY node_id) h ON h.node_id = n.id "
            f"      ORDER BY n.id FOR UPDATE OF n) l "
            f"WHERE d.id = l.id RETURNING l.old_state, {returned}",
            [*ready_params, NodeState.QUEUED, *ready_params, now, *ready_params, node.pk],
        )
        released = []
        for dep_old, *values in cursor.fetchall():
            dep = _node(conn, values)
            if dep.state == NodeState.QUEUED and dep_old == NodeState.PENDING:
                released.append(dep)
            elif dep.state == NodeState.PENDING and engine._readiness(dep) is not None:
                raise _Fallback(f"dependent {dep.task_id} needs a decision")
            elif dep.kind in engine.CALLBACK_KINDS:
                raise _Fallback(f"dependent {dep.task_id} is a callback")
        # 4. Events, then the workflow's counters: its exclusive row lock lives until commit.
        if settings.EVENT_LOG:
            WorkflowEvent.objects.using(conn.alias).bulk_create(
                [WorkflowEvent(workflow_id=workflow_id, node_id=node.pk, old_state=old,
                               new_state=NodeState.SUCCESS, created_at=now)]
                + [WorkflowEvent(workflow_id=workflow_id, node_id=dep.pk, old_state=NodeState.PENDING,
                                 new_state=NodeState.QUEUED, created_at=now) for dep in released]
            )
        cursor.execute(
            f"UPDATE {wf_t} SET nodes_done = nodes_done + 1, nodes_succeeded = nodes_succeeded + 1 "
            f"WHERE id = %s AND state = %s RETURNING nodes_done, nodes_total",
            [workflow_id, WorkflowState.RUNNING],
        )
        counters = cursor.fetchone()
        if counters is None or counters[0] >= counters[1]:
            raise _Fallback("the last node: finishing the workflow takes the lock")
        step = engine.Step(wf)
        step.node_changes.append((node, old, NodeState.SUCCESS))
        step.node_changes.extend((dep, NodeState.PENDING, NodeState.QUEUED) for dep in released)
        step.to_publish = [(dep, ()) for dep in released]
        if released:
            transaction.on_commit(partial(engine.publish, workflow_id, None, step.to_publish), using=conn.alias)
        transaction.on_commit(step.announce, using=conn.alias)
    return node

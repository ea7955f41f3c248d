"""The success of a plain task node without the workflow lock (PostgreSQL).

A completion is by far the most frequent engine step. Under the workflow
row lock (``steps.locked_step``) the completions of one workflow run one
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
path instead (``outcomes.node_succeeded``): a result that cannot be stored, a
node that is not a task or not active, a workflow passing results, a
dependent whose readiness is anything but "queue this task" (a join, a
fan-out, a skip, an upstream failure), and the completion that brings
``nodes_done`` to ``nodes_total`` (the counter UPDATE is serialised, so
exactly one transaction sees it; redone under the lock, it finishes the
workflow through ``maybe_finish``). These are rare: once per group or per
workflow, not per node. SQLite and MariaDB always take the locked path.
"""

import logging
from functools import partial

from django.db import transaction
from django.utils import timezone

from . import db, decisions, messaging, outcomes, steps
from .conf import settings
from .models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from .states import CALLBACK_KINDS, NODE_ACTIVE, NODE_TRANSITIONS, NodeKind, NodeState, TriggerRule, WorkflowState

logger = logging.getLogger("django_dyrygent.hotpath")

# The states a node may succeed from, as the state table says.
_SUCCEEDS_FROM = sorted(str(s) for s in NODE_ACTIVE if NodeState.SUCCESS in NODE_TRANSITIONS[s])
# Trigger rules a dependent may be queued under straight from its counters.
_QUEUE_RULES = [str(TriggerRule.ALL_SUCCESS), str(TriggerRule.ALL_DONE)]


# The columns the engine reads of a node, in model order (what Model.from_db expects).
_NODE_FIELD_OBJECTS = [f for f in WorkflowNode._meta.concrete_fields if f.attname in steps.NODE_FIELDS]
_NODE_COLUMNS = [f.attname for f in _NODE_FIELD_OBJECTS]




def _node(conn, values):
    """A WorkflowNode from RETURNING columns, converted as the ORM would (JSON decoded)."""
    values = [
        f.from_db_value(v, None, conn) if hasattr(f, "from_db_value") else v
        for f, v in zip(_NODE_FIELD_OBJECTS, values, strict=True)
    ]
    return WorkflowNode.from_db(conn.alias, _NODE_COLUMNS, values)


class _Fallback(Exception):
    """This completion needs a decision the hot path does not take: roll back, lock."""


def _table(model):
    return model._meta.db_table


def node_succeeded(workflow_id, task_id, result):
    """A worker reports that the node's task returned ``result``; see the module docstring.

    Returns the node, or None when the report was ignored, as
    ``outcomes.node_succeeded`` does (which this falls back to).
    """
    conn = db.workflow_connection()
    if conn.vendor != "postgresql":
        return outcomes.node_succeeded(workflow_id, task_id, result)
    value, problem = outcomes.encode_result(result)
    if problem is None:
        try:
            return _fast_success(conn, workflow_id, task_id, value)
        except _Fallback as why:
            logger.debug("Workflow %s, task %s: locked path (%s)", workflow_id, task_id, why)
        except outcomes.VALUE_REFUSED:
            pass  # the locked path fails this node alone, saying why
    return outcomes.node_succeeded(workflow_id, task_id, result)


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
            elif dep.state == NodeState.PENDING and decisions.readiness(dep) is not None:
                raise _Fallback(f"dependent {dep.task_id} needs a decision")
            elif dep.kind in CALLBACK_KINDS:
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
        step = steps.Step(wf)
        step.node_changes.append((node, old, NodeState.SUCCESS))
        step.node_changes.extend((dep, NodeState.PENDING, NodeState.QUEUED) for dep in released)
        step.to_publish = [(dep, ()) for dep in released]
        if released:
            transaction.on_commit(partial(messaging.publish, workflow_id, None, step.to_publish), using=conn.alias)
        transaction.on_commit(step.announce, using=conn.alias)
    return node

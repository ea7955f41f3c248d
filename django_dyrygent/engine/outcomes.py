"""Worker reports: a node started, retried, succeeded, failed, was revoked or dropped.

The worker-side receivers (``handlers``) call these, one report each. STARTED
(``hotpath.node_started``) and RETRY decide nothing and are written without
the workflow lock (``_simple_transition``); an outcome is a locked step that records it and
settles the dependents (``decisions.settle``). A late or duplicate report is
ignored, and a value the database cannot hold fails that one node with a
message instead of the step. On PostgreSQL the plain success of a task node
takes the lock-free path in ``hotpath`` first, which falls back to
``node_succeeded`` here.
"""

from __future__ import annotations

import logging
import traceback as tb_module
from functools import partial
from typing import Any
from uuid import UUID

from django.db import DataError, transaction
from django.db.models import F
from django.utils import timezone

from .. import signals
from ..conf import settings
from ..models import Workflow, WorkflowEvent, WorkflowNode
from ..serialization import NotSerialisable, size_of, storable_text, to_tree, unstorable
from ..states import CALLBACK_KINDS, NODE_TRANSITIONS, NodeKind, NodeState
from . import sql
from .decisions import branch_keys, maybe_finish, settle
from .sql import NODE_FIELDS
from .steps import Step, locked_step

# The engine's documented logger (docs/operations.md), shared by its modules.
logger = logging.getLogger("django_dyrygent.engine")


#: How the event log names a report of a task id a re-run or retry() replaced (say, a worker declared dead woke up).
STALE_REPORT = "stale report ignored"


def _node_for_event(step: Step, task_id: str, report: str) -> WorkflowNode | None:
    node = (
        WorkflowNode.objects.filter(task_id=task_id, workflow_id=step.wf.pk).only(*NODE_FIELDS).first()
    )
    if node is None and note_stale_report(step.wf.pk, task_id, report, step) is None:
        logger.info("Task %s is not a node of workflow %s; its %s report is ignored", task_id, step.wf.pk, report)
    return node


def note_stale_report(
    workflow_id: UUID | str, task_id: str, report: str, step: Step | None = None, note: str = "",
) -> WorkflowNode | None:
    """A report came for a task id no node has: if a re-run replaced it, say so in the event log.

    The report itself changes nothing: the node runs (or ran) under its new
    task id, and only that run's reports count. This is what a worker that
    was paused past the liveness window reports when it wakes up. The event
    keeps the node's state (old and new alike) and goes into ``step``'s
    events, or is written at once outside a step. Returns the node, or None
    when no node of the workflow ever had that task id.

    Called only once no node has ``task_id``; re-runs are rare, so reading
    the workflow's ``previous_task_ids`` as text costs nothing on any path
    that matters.
    """
    candidates = WorkflowNode.objects.filter(
        workflow_id=workflow_id, previous_task_ids__icontains=task_id,
    ).only(*NODE_FIELDS, "previous_task_ids")
    node = next((n for n in candidates if task_id in (n.previous_task_ids or ())), None)
    if node is None:
        return None
    reason = f"{STALE_REPORT}: {report} of task {task_id}, replaced by {node.task_id}{note}"
    logger.warning("Workflow %s: %s", workflow_id, reason)
    event = WorkflowEvent(
        workflow_id=node.workflow_id, node_id=node.pk, old_state=node.state, new_state=node.state,
        reason=reason[:255], created_at=step.now if step is not None else timezone.now(),
    )
    if step is not None:
        step.events.append(event)
    elif settings.EVENT_LOG:
        event.save()
    return node


def encode_result(result: Any) -> tuple[Any, str | None]:
    """The result as it will be stored, or an error message saying why it cannot be."""
    try:
        tree = to_tree(result)
    except NotSerialisable as exc:
        return None, storable_text(
            f"Result is not JSON-serialisable, so it cannot be stored in the node: {exc}"
        )
    where = unstorable(tree)
    if where:
        return None, (
            f"Result cannot be stored: {where}, which database columns cannot hold; "
            "return binary data base64-encoded (or strip the character)"
        )
    cap = settings.MAX_RESULT_BYTES
    size = size_of(tree)
    if cap and size > cap:
        return None, (
            f"Result of {size} bytes exceeds DYRYGENT_MAX_RESULT_BYTES={cap}; "
            "store large data elsewhere and return a reference to it"
        )
    return tree, None


def _finish_node(step: Step, node: WorkflowNode, target: str, **fields: Any) -> None:
    step.transition_nodes([node], target, **fields)
    if node.kind in CALLBACK_KINDS:
        return
    settle(step, [node])
    maybe_finish(step)


def _fail_unstorable(workflow_id: UUID | str, task_id: str, exc: Exception, what: str) -> WorkflowNode | None:
    """The database refused a value of this node's outcome: fail this node alone, saying why."""
    error = storable_text(
        f"The {what} of this task could not be stored, so the node is failed: "
        f"{type(exc).__name__}: {exc}"
    )
    logger.error("Workflow %s: %s", workflow_id, error)

    def refused(step: Step) -> WorkflowNode | None:
        node = _node_for_event(step, task_id, NodeState.FAILURE)
        if node is None or _ignore(node, NodeState.FAILURE):
            return None
        _finish_node(step, node, NodeState.FAILURE, error=error, reason=f"{what} not storable")
        return node

    return locked_step(workflow_id, refused)


# What the database raises for a value it cannot hold (psycopg: DataError; a string
# the driver cannot encode: UnicodeEncodeError, a ValueError).
VALUE_REFUSED = (DataError, ValueError)


def node_succeeded(workflow_id: UUID | str, task_id: str, result: Any) -> WorkflowNode | None:
    """A worker reports that the node's task returned ``result``.

    A value the database refuses although ``encode_result`` accepted it
    fails this node with the database's message: one value never stalls the
    workflow or ends it ERROR.
    """

    def succeeded(step: Step) -> WorkflowNode | None:
        node = _node_for_event(step, task_id, NodeState.SUCCESS)
        if node is None or _ignore(node, NodeState.SUCCESS):
            return None
        value, problem = encode_result(result)
        if problem:
            _finish_node(step, node, NodeState.FAILURE, error=problem, reason="result not storable")
            return node
        if node.kind == NodeKind.BRANCH:
            _keys, problem = branch_keys(node, value)
            if problem:
                _finish_node(step, node, NodeState.FAILURE, error=problem, reason="no such branch")
                return node
        step.results[node.pk] = value
        _finish_node(step, node, NodeState.SUCCESS, result=value, error="")
        return node

    try:
        return locked_step(workflow_id, succeeded)
    except VALUE_REFUSED as exc:
        return _fail_unstorable(workflow_id, task_id, exc, "result")


def node_failed(
    workflow_id: UUID | str, task_id: str, exception: BaseException | None = None, traceback: str = "",
    reason: str = "task raised",
) -> WorkflowNode | None:
    """A worker reports that the node's task raised (its retries, if any, are exhausted)."""
    error = format_error(exception, traceback)

    def failed(step: Step) -> WorkflowNode | None:
        node = _node_for_event(step, task_id, NodeState.FAILURE)
        if node is None or _ignore(node, NodeState.FAILURE):
            return None
        _finish_node(step, node, NodeState.FAILURE, error=error, reason=reason)
        return node

    try:
        return locked_step(workflow_id, failed)
    except VALUE_REFUSED as exc:
        return _fail_unstorable(workflow_id, task_id, exc, "error")


def unknown_task_error(name: str | None, hostname: str = "a worker") -> str:
    """The sentence a node gets when no worker has its task (signal receiver and reconcile alike)."""
    return (
        f"No worker knows the task {name!r}: {hostname} received it, found no task registered "
        "under that name and discarded the message. Check the task name and that the worker "
        "imports its module (autodiscover_tasks() or CELERY_IMPORTS), then retry the workflow."
    )


def stored_exception(result: Any) -> str:
    """A failure as the result backend stores it ({'exc_type': ..., 'exc_message': ...}), as a sentence."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return repr(result)
    message = result.get("exc_message")
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(part) for part in message)
    if result["exc_type"] == "NotRegistered":
        return unknown_task_error(str(message).strip("'\""))
    return f"{result['exc_type']}: {message}"


def node_not_run(
    workflow_id: UUID | str, task_id: str, error: str, reason: str = "task not registered",
) -> WorkflowNode | None:
    """A worker dropped the node's message without running it (unknown task name, undecodable message).

    Celery only logs this and discards the message; without this report the
    node would sit QUEUED until DYRYGENT_REQUEUE_AFTER and be republished to
    the same fate. ``error`` is the sentence shown to the user.
    """
    return node_failed(workflow_id, task_id, traceback=error, reason=reason)


def node_revoked(workflow_id: UUID | str, task_id: str, reason: str = "revoked") -> WorkflowNode | None:
    def revoked(step: Step) -> WorkflowNode | None:
        node = _node_for_event(step, task_id, NodeState.CANCELED)
        if node is None or _ignore(node, NodeState.CANCELED):
            return None
        _finish_node(step, node, NodeState.CANCELED, reason=reason)
        return node

    return locked_step(workflow_id, revoked)


def _ignore(node: WorkflowNode, target: str) -> bool:
    if target in NODE_TRANSITIONS[node.state]:
        return False
    logger.info("Node %s of workflow %s is %s; late %s report ignored",
                node.task_id, node.workflow_id, node.state, target)
    return True


def format_error(exception: BaseException | None, traceback: str | None) -> str:
    """Exception and traceback as stored: NUL and lone surrogates escaped, never refused."""
    if exception is None:
        return storable_text(traceback or "")
    head = "".join(tb_module.format_exception_only(type(exception), exception)).strip()
    if traceback and head not in traceback:
        return storable_text(f"{head}\n\n{traceback}")
    return storable_text(traceback or head)


def node_retrying(workflow_id: UUID | str, task_id: str, reason: object = "") -> WorkflowNode | None:
    return _simple_transition(
        workflow_id, task_id, NodeState.RETRY, error=storable_text(str(reason or ""))[:10000],
        retries=F("retries") + 1,
    )


# Which states a worker-reported state is written from, most likely first. RETRY from
# RETRY: ``Task.retry`` publishes the next run before the worker sends ``task_retry``, so
# on another worker process the next run can start and retry again before this report
# lands; without it that report was dropped and ``retries`` counted one retry for two.
WORKER_SOURCES: dict[str, tuple[str, ...]] = {
    NodeState.STARTED: (NodeState.QUEUED, NodeState.RETRY, NodeState.STARTED),
    NodeState.RETRY: (NodeState.STARTED, NodeState.QUEUED, NodeState.RETRY),
}


def _simple_transition(workflow_id: UUID | str, task_id: str, target: str, **fields: Any) -> WorkflowNode | None:
    """Record RETRY (STARTED: ``hotpath.node_started``): a conditional UPDATE, without the workflow lock.

    These changes decide nothing, and taking the lock for them doubled the
    lock traffic of every node. An engine step that meanwhile read the node
    in its old state re-reads it (``Step.transition_nodes``). On PostgreSQL the
    workflow row is taken FOR KEY SHARE first (shared with completions, waiting
    for the engine's FOR UPDATE); on SQLite the UPDATE comes first and takes
    the write lock. Other databases take the workflow lock.
    """
    conn = Workflow.write_connection()
    if conn.vendor not in ("postgresql", "sqlite"):
        return _locked_simple_transition(workflow_id, task_id, target, **fields)
    with transaction.atomic():
        if conn.vendor == "postgresql":
            # The event row's foreign key takes KEY SHARE on the workflow row, which
            # conflicts with the engine's FOR UPDATE (lock_workflow): take it before
            # the node row, in the engine's lock order, or a cancel waiting for this
            # node while this waits for the cancel would deadlock.
            with conn.cursor() as cursor:
                cursor.execute(sql.share_workflow_sql(conn), [workflow_id])
        old = None
        for source in WORKER_SOURCES[target]:
            if WorkflowNode.objects.filter(
                task_id=task_id, workflow_id=workflow_id, state=source
            ).update(state=target, **fields):
                old = source
                break
        if old is None:
            if WorkflowNode.objects.filter(task_id=task_id).exists() or not note_stale_report(
                workflow_id, task_id, target
            ):
                logger.info("Workflow %s: %s report for task %s ignored (node gone, final or "
                            "moved on)", workflow_id, target, task_id)
            return None
        node = WorkflowNode.objects.filter(task_id=task_id).only(*NODE_FIELDS).first()
        if settings.EVENT_LOG:
            WorkflowEvent.objects.create(
                workflow_id=workflow_id, node_id=node.pk, old_state=old, new_state=target,  # type: ignore[union-attr]
                created_at=timezone.now(),
            )
        transaction.on_commit(
            partial(signals.send, signals.node_state_changed, node=node, old_state=old, new_state=target)
        )
    return node


def _locked_simple_transition(
    workflow_id: UUID | str, task_id: str, target: str, **fields: Any,
) -> WorkflowNode | None:
    def change(step: Step) -> WorkflowNode | None:
        node = _node_for_event(step, task_id, target)
        if node is None or _ignore(node, target):
            return None
        step.transition_nodes([node], target, **fields)
        return node

    return locked_step(workflow_id, change)

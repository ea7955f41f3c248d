"""Repair under the lock: timeouts, lost messages and lost events, read back from the result backend.

The tick (``engine.tick``) and the sweeper (``recovery``) find nodes that
no report will move any more: a task past its timeout, a message the broker
lost, an outcome whose event was lost. These functions decide what each
becomes inside the caller's locked step: published again under a fresh task
id while it has runs left (``rerun_or_fail``, ``republish``), or given the
outcome the result backend stored (``reconcile``, ``record_backend_outcome``).
They are apart from the decisions every report takes because they read the
result backend and guess at what happened elsewhere; ``liveness`` judges
workers, this module acts on the verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.backends.base import Backend
from celery.utils import uuid
from django.db import transaction
from django.db.models import F, Q, QuerySet

from ..conf import get_celery_app, settings
from ..models import WorkflowNode
from ..serialization import storable_text
from ..states import CALLBACK_KINDS, NODE_ACTIVE, NodeKind, NodeState
from . import outcomes
from .decisions import branch_keys, call_args, check_children, queue_nodes, settle
from .outcomes import VALUE_REFUSED, format_error, stored_exception
from .sql import NODE_FIELDS
from .steps import Step

# The engine's documented logger (docs/operations.md), shared by its modules.
logger = logging.getLogger("django_dyrygent.engine")


def late_nodes(workflow: Any, now: datetime) -> QuerySet[WorkflowNode]:
    """STARTED/RETRY/WAITING nodes of ``workflow`` (an id or an ``OuterRef``) past their ``timeout_at``.

    What ``enforce_timeouts`` acts on, and what the idle tick (``engine``)
    asks about without the lock: one definition, so the two cannot drift.
    A waiting node's due time is therefore checked by the workflow's tick
    with the rest, in the same statement: no query per waiting node.
    """
    return WorkflowNode.objects.filter(
        workflow_id=workflow, state__in=[NodeState.STARTED, NodeState.RETRY, NodeState.WAITING],
        timeout_at__lt=now,
    )


def stale_nodes(workflow: Any, now: datetime) -> QuerySet[WorkflowNode]:
    """Active nodes of ``workflow`` that ``reconcile`` looks at (see ``late_nodes``)."""
    cutoff = now - timedelta(seconds=float(settings.REQUEUE_AFTER))
    return WorkflowNode.objects.filter(workflow_id=workflow, state__in=NODE_ACTIVE).filter(
        # queued_at NULL on a QUEUED node: its publish failed (messaging.mark_unpublished); due now.
        Q(queued_at__lt=cutoff) | Q(state=NodeState.QUEUED, queued_at__isnull=True)
    )


def enforce_timeouts(step: Step) -> None:
    """Handle STARTED/RETRY nodes past their ``timeout_at``; their tasks are revoked (terminate).

    A node with attempts left (``max_attempts``) is published again under a
    fresh task id, so a late report of the abandoned run is ignored; the others
    fail with "timed out".
    """
    late = list(late_nodes(step.wf.pk, step.now).only(*NODE_FIELDS, "attempts", "max_attempts", "previous_task_ids"))
    waits = [n for n in late if n.state == NodeState.WAITING]
    late = [n for n in late if n.state != NodeState.WAITING]
    children = [n for n in waits if n.kind == NodeKind.SUBWORKFLOW]
    waits = [n for n in waits if n.kind != NodeKind.SUBWORKFLOW]
    if children:
        check_children(step, children)
    if waits:
        _time_out_waits(step, waits)
    if not late:
        return
    step.to_terminate.extend(n.task_id for n in late)
    # timeout_at is only ever set from a timeout, so every late node has one.
    rerun_or_fail(
        step, late, lambda n: n.max_attempts, "timed out",
        lambda n, runs: f"Timed out: no outcome {n.timeout.total_seconds():g}s after the task started"  # type: ignore[union-attr]
                        + (f" (attempt {n.attempts} of {runs})" if runs > 1 else ""),
    )


def _time_out_waits(step: Step, nodes: Sequence[WorkflowNode]) -> None:
    """Due timers succeed; waits past their timeout succeed with their default if any, else fail."""
    timers = [n for n in nodes if n.kind == NodeKind.TIMER]
    step.transition_nodes(timers, NodeState.SUCCESS, reason="timer fired")
    nodes = [n for n in nodes if n.kind != NodeKind.TIMER]
    defaulted = [n for n in nodes if "default" in (n.signature or {})]
    for node in defaulted:
        value = node.signature["default"]
        step.results[node.pk] = value
        step.transition_nodes([node], NodeState.SUCCESS, reason="timed out: default taken", result=value)
    failed = [n for n in nodes if "default" not in (n.signature or {})]
    for node in failed:
        step.transition_nodes(
            [node], NodeState.FAILURE, reason="timed out",
            error=f"Timed out: no signal {node.task_name!r} {node.timeout.total_seconds():g}s after "  # type: ignore[union-attr]
                  "the node started waiting",
        )
    settle(step, [*timers, *nodes])


def _fresh_run(step: Step, node: WorkflowNode, **fields: Any) -> dict[str, Any]:
    """Fields that publish ``node`` again under a new task id (a late report of the old one is ignored)."""
    return dict(
        fields, task_id=uuid(), previous_task_ids=[*(node.previous_task_ids or []), node.task_id],
        queued_at=step.now, started_at=None, timeout_at=None, worker_hostname="", worker_pid=None,
        publish_count=F("publish_count") + 1,
    )


def rerun_or_fail(
    step: Step, nodes: Sequence[WorkflowNode], runs_allowed: Callable[[WorkflowNode], int], why: str,
    error: Callable[[WorkflowNode, int], str],
) -> None:
    """Publish each node again (fresh task id, one more attempt) while it has runs left, else fail it.

    ``runs_allowed(node)`` is how many runs the node gets in all; ``error(node,
    runs)`` the message of the failure once they are used. Nodes need
    ``attempts`` and ``previous_task_ids`` loaded.
    """
    again = [n for n in nodes if n.attempts < runs_allowed(n)]
    failed = [n for n in nodes if n.attempts >= runs_allowed(n)]
    calls = call_args(step, again)
    for node in again:
        runs = runs_allowed(node)
        moved = step.transition_nodes(
            [node], NodeState.QUEUED, reason=f"{why}; attempt {node.attempts + 1} of {runs}",
            **_fresh_run(step, node, attempts=node.attempts + 1),
        )
        step.to_publish.extend((m, calls.get(m.pk, ())) for m in moved)
    for node in failed:
        step.transition_nodes([node], NodeState.FAILURE, reason=why, error=error(node, runs_allowed(node)))
    settle(step, [n for n in failed if n.kind not in CALLBACK_KINDS])


def republish(step: Step, nodes: Sequence[WorkflowNode], reason: str) -> None:
    """Publish QUEUED nodes whose message was lost again, under a fresh task id (not a new attempt)."""
    calls = call_args(step, nodes)
    for node in nodes:
        moved = step.transition_nodes([node], NodeState.QUEUED, reason=reason, **_fresh_run(step, node))
        step.to_publish.extend((m, calls.get(m.pk, ())) for m in moved)


def result_backend(app: Celery) -> Backend | None:
    """The app's result backend, or None when it has none."""
    from celery.backends.base import DisabledBackend

    backend = app.backend
    return None if isinstance(backend, DisabledBackend) else backend


def reconcile(step: Step) -> None:
    """Repair nodes whose worker events were lost, from the result backend when there is one.

    Only nodes QUEUED (or STARTED/RETRY) for longer than DYRYGENT_REQUEUE_AFTER
    are looked at, at most DYRYGENT_RECONCILE_BATCH per tick.
    """
    stale = list(
        stale_nodes(step.wf.pk, step.now)
        .only(*NODE_FIELDS, "queued_at").order_by(F("queued_at").asc(nulls_first=True))[: settings.RECONCILE_BATCH]
    )
    if not stale:
        return
    app = get_celery_app()
    backend = result_backend(app)
    metas = backend_metas(backend, [n.task_id for n in stale]) if backend else {}
    republish: list[WorkflowNode] = []
    finished: list[WorkflowNode] = []
    for node in stale:
        meta = metas.get(node.task_id) or {}
        status = meta.get("status", "PENDING")
        if record_backend_outcome(step, node, meta, "reconciled"):
            finished.append(node)
        elif status == "REVOKED":
            step.transition_nodes([node], NodeState.CANCELED, reason="revoked (reconciled)")
            finished.append(node)
        elif node.state == NodeState.QUEUED and status == "PENDING" and (
            node.queued_at is None or not settings.LIVENESS
        ):
            # A failed publish (queued_at NULL) is known lost; otherwise, with
            # liveness on, the sweep decides, telling a lost message from a slow queue.
            republish.append(node)
        # STARTED / RETRY with no outcome yet: the task is running; leave it.
    if republish:
        logger.warning(
            "Workflow %s: republishing %d node(s) no worker reported within %ss: %s",
            step.wf.pk, len(republish), settings.REQUEUE_AFTER,
            ", ".join(n.task_id for n in republish[:10]),
        )
        queue_nodes(step, republish, reason="republished: no worker reported it")
    settle(step, [n for n in finished if n.kind not in CALLBACK_KINDS])


def record_backend_outcome(step: Step, node: WorkflowNode, meta: dict[str, Any], reason: str) -> bool:
    """Record the SUCCESS / FAILURE the result backend stored for the node's task; True when it did.

    A FAILURE stored for a lost worker (``WorkerLostError``) or for a database
    error while storing the outcome is not the task's failure: the node is
    left to the liveness sweep, which re-runs it.
    """
    status = meta.get("status")
    if status == "SUCCESS":
        value, problem = outcomes.encode_result(meta.get("result"))
        if not problem and node.kind == NodeKind.BRANCH:
            _keys, problem = branch_keys(node, value)
        if not problem:
            problem = _store_backend_success(step, node, value, reason)
        if problem:
            step.transition_nodes([node], NodeState.FAILURE, error=problem, reason=reason)
        return True
    if status == "FAILURE" and not _not_the_task_s_failure(meta):
        error = format_error(None, meta.get("traceback") or stored_exception(meta.get("result")))
        step.transition_nodes([node], NodeState.FAILURE, error=error, reason=reason)
        return True
    return False


def _not_the_task_s_failure(meta: dict[str, Any]) -> bool:
    text = f"{meta.get('result')!r} {meta.get('traceback') or ''}"
    return any(word in text for word in ("WorkerLostError", "OperationalError", "InterfaceError"))


def _store_backend_success(step: Step, node: WorkflowNode, value: Any, reason: str) -> str | None:
    """Store a reconciled result; the database's message if it refuses the value.

    A savepoint around the one UPDATE: a refused value must cost that node,
    not the whole tick (a tick that fails every time ends the workflow ERROR).
    The Step records the change only after the UPDATE succeeded.
    """
    try:
        with transaction.atomic():
            step.transition_nodes([node], NodeState.SUCCESS, result=value, reason=reason)
    except VALUE_REFUSED as exc:
        return storable_text(f"The result of this task could not be stored: {type(exc).__name__}: {exc}")
    step.results[node.pk] = value
    return None


def backend_metas(backend: Backend, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """task id -> the status, result and traceback the backend stored; tasks it cannot say are left out.

    django-celery-results' table is read in one query; other backends task by task.
    """
    try:
        from django_celery_results.backends.database import DatabaseBackend
    except ImportError:  # pragma: no cover - django-celery-results is a dependency
        DatabaseBackend = ()
    if isinstance(backend, DatabaseBackend):
        from django_celery_results.models import TaskResult

        metas: dict[str, dict[str, Any]] = {}
        for row in TaskResult.objects.filter(task_id__in=task_ids):
            meta = metas[row.task_id] = {"status": row.status, "result": None, "traceback": row.traceback}
            try:
                meta["result"] = backend.decode_content(row, row.result) if row.result else None
            except Exception as exc:  # one undecodable row must not fail every tick
                if row.status == "SUCCESS":
                    meta["status"] = "FAILURE"
                    meta["traceback"] = storable_text(
                        f"The result backend holds a result for this task that cannot be decoded: {exc!r}"
                    )
        return metas
    metas = {}
    for task_id in task_ids:
        try:
            metas[task_id] = backend.get_task_meta(task_id)
        except Exception:  # a broken backend must not stop the tick
            logger.exception("Result backend lookup of task %s failed", task_id)
    return metas


def watch_callbacks(step: Step) -> None:
    """Tick of a finished workflow whose callbacks were queued: repair them like any node.

    A callback whose publish or events were lost is reconciled (republished,
    or its outcome read from the result backend) as long as one is active;
    then, or at the workflow's deadline, the chain of ticks stops
    (``next_tick_at`` NULL, which the sweeper reads as "nothing to watch").
    """
    reconcile(step)
    still_open = WorkflowNode.objects.filter(
        workflow_id=step.wf.pk, kind__in=CALLBACK_KINDS, state__in=NODE_ACTIVE
    ).exists()
    if still_open and not (step.wf.deadline and step.wf.deadline <= step.now):
        step.watch_callbacks = True
    else:
        step.wf_fields["next_tick_at"] = step.wf.next_tick_at = None

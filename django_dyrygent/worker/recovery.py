"""Recovery: re-run what dead workers, lost outcomes and lost messages left behind.

``sweep_once`` is what the sweeping worker (``worker.py``) does every
DYRYGENT_SWEEP_INTERVAL seconds, and what the ``django_dyrygent.sweep`` task
and ``dyrygent_tick`` do: tick workflows whose tick is overdue, then judge
active nodes with ``liveness`` and act on the verdicts, one workflow per
locked engine step. A verdict is re-checked under the lock (same state,
same task id), so a report that wins the race is kept and the sweep does
nothing. ``worker_lost`` is the immediate path for Celery's
``WorkerLostError`` (a pool child killed).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.utils import timezone

from .. import engine
from ..conf import get_celery_app, settings
from ..engine.decisions import maybe_finish, release_ready, settle
from ..engine.outcomes import note_stale_report
from ..engine.repair import backend_metas, record_backend_outcome, republish, rerun_or_fail, result_backend
from ..engine.sql import NODE_FIELDS
from ..engine.steps import Step, locked_step
from ..models import WorkflowNode
from ..states import CALLBACK_KINDS, NodeState, WorkflowState
from . import liveness

logger = logging.getLogger("django_dyrygent.recovery")

FIELDS = (*NODE_FIELDS, "attempts", "max_attempts", "previous_task_ids", "queued_at",
          "started_at", "worker_hostname", "worker_pid")
#: What judging a waiting node reads (``liveness.waiting_verdict``): no JSON column. Its queue
#: comes from ``ROUTING``, read in SQL (a signature can be large; only its queue option counts).
WAITING_FIELDS = ("id", "workflow_id", "task_id", "task_name", "state", "queued_at", "started_at")
#: What ``liveness.route`` needs of a waiting node, in order: the task, its own queue option, its workflow's.
ROUTING = ("task_name", "signature_task", "own_queue", "workflow_queue")
#: Most nodes one sweep judges per kind (keeps a sweep's cost bounded).
BATCH = 1000


def lost_worker_runs(node: WorkflowNode) -> int:
    """Runs a node gets in all when its worker is lost: its max_attempts, and at least one retry."""
    return max(node.max_attempts, 1 + settings.LOST_WORKER_RETRIES)


def _lost_error(why: str) -> Callable[[WorkflowNode, int], str]:
    return lambda node, runs: (
        f"Worker lost {runs} time(s); giving up ({why}). Last worker: "
        f"{node.worker_hostname or '?'} pid {node.worker_pid or '?'}"
    )


class Sweeper:
    """Keeps the previous broker probe between sweeps (see ``liveness.waiting_verdict``)."""

    def __init__(self) -> None:
        self.probe: liveness.QueueProbe | None = None
        #: Set by the liveness thread: since when its own beats succeed (see liveness.Snapshot).
        self.observing_since: datetime | None = None

    def sweep_once(self, batch_size: int = 100, stale_after: float | None = None) -> tuple[int, int]:
        """Tick overdue workflows, then recover lost nodes; returns (workflows ticked, nodes recovered)."""
        ticked = engine.sweep(stale_after=stale_after, batch_size=batch_size)
        return ticked, self.recover()

    def recover(self) -> int:
        """Judge active nodes and act on the verdicts; returns how many nodes were recovered.

        Waiting nodes are filtered in SQL to those ``liveness.waiting_verdict``
        can act on (``liveness.lost_before``): a healthy backlog of thousands
        of QUEUED nodes would otherwise be read, every sweep, only to be
        found not lost, in the main process that also feeds the pool.
        """
        now = timezone.now()
        snapshot = liveness.Snapshot.load(now, self.observing_since)
        held = snapshot.held()
        # A finished workflow's callbacks run after it ended: theirs are judged like any node's.
        running = WorkflowNode.objects.filter(
            Q(workflow__state=WorkflowState.RUNNING) | Q(kind__in=CALLBACK_KINDS)
        ).only(*FIELDS)
        verdicts: dict[Any, tuple[WorkflowNode, str]] = {}
        for node in running.filter(state=NodeState.STARTED, worker_pid__isnull=False,
                                   started_at__lt=now - liveness.grace())[:BATCH]:
            why = liveness.started_verdict(node, snapshot, held)
            if why:
                verdicts[node.pk] = (node, why)
        waiting = running.filter(state__in=[NodeState.QUEUED, NodeState.RETRY]).exclude(task_id__in=held).annotate(
            signature_task=KeyTextTransform("task", "signature"),
            own_queue=KeyTextTransform("queue", KeyTransform("options", "signature")),
            workflow_queue=KeyTextTransform("queue", "workflow__tasks_options"),
        )
        # The queues to probe for the next sweep: those of every waiting node, whose number of
        # kinds does not grow with the nodes (one row per task and queue options).
        kinds = list(waiting.order_by().values_list(*ROUTING).distinct()[:BATCH])
        if kinds:
            app = get_celery_app()
            routes: dict[str, str] = {}

            def queue_of(kind: tuple[Any, ...]) -> str:
                task, signature_task, own, workflow = kind
                return liveness.route(app, own, workflow, task or signature_task or "", routes)

            queues = {kind: queue_of(kind) for kind in kinds}
            before = liveness.lost_before(snapshot, self.probe)
            lost = Q(state=NodeState.QUEUED, queued_at__lt=before) | Q(state=NodeState.RETRY, started_at__lt=before)
            for node in waiting.filter(lost).only(*WAITING_FIELDS).order_by("queued_at")[:BATCH]:
                kind = tuple(getattr(node, name) for name in ROUTING)
                if kind not in queues:  # waiting since the first read, or beyond its BATCH
                    queues[kind] = queue_of(kind)
                why = liveness.waiting_verdict(node, snapshot, held, self.probe, queues[kind])
                if why:
                    verdicts[node.pk] = (node, why)
            self.probe = liveness.probe_queues(app, set(queues.values()), timezone.now())
        else:
            self.probe = None
        by_workflow: defaultdict[UUID, list[tuple[WorkflowNode, str]]] = defaultdict(list)
        for node, why in verdicts.values():
            by_workflow[node.workflow_id].append((node, why))
        recovered = 0
        for workflow_id, items in by_workflow.items():
            try:
                recovered += locked_step(workflow_id, partial(_recover, items=items)) or 0
            except Exception:
                logger.exception("Recovering lost nodes of workflow %s failed", workflow_id)
        return recovered


def _recover(step: Step, items: list[tuple[WorkflowNode, str]]) -> int:
    """Under the workflow lock: re-read the judged nodes, consult the result backend, act.

    In a workflow that is no longer RUNNING only its callbacks are acted on.
    """
    running = step.wf.state == WorkflowState.RUNNING
    judged = {node.pk: (node, why) for node, why in items}
    current = {
        n.pk: n for n in WorkflowNode.objects.filter(pk__in=judged).only(*FIELDS)
        if (n.state, n.task_id) == (judged[n.pk][0].state, judged[n.pk][0].task_id)
        and (running or n.kind in CALLBACK_KINDS)
    }
    if not current:
        return 0
    why_of = {pk: judged[pk][1] for pk in current}
    left = _apply_backend(step, list(current.values()))
    queued = [n for n in left if n.state == NodeState.QUEUED]
    ran = [n for n in left if n.state != NodeState.QUEUED]
    for node in queued:
        logger.warning("Workflow %s: republishing node %s: %s", step.wf.pk, node.task_id, why_of[node.pk])
        republish(step, [node], reason=f"republished: {why_of[node.pk]}"[:255])
    for node in ran:
        logger.warning("Workflow %s: node %s: %s", step.wf.pk, node.task_id, why_of[node.pk])
        rerun_or_fail(step, [node], lost_worker_runs, why_of[node.pk][:200], _lost_error(why_of[node.pk]))
    if running:
        release_ready(step)
        maybe_finish(step)
    return len(current)


def _apply_backend(step: Step, nodes: list[WorkflowNode]) -> list[WorkflowNode]:
    """Record outcomes the result backend already has (as ``reconcile`` does); return the other nodes."""
    backend = result_backend(get_celery_app())
    metas = backend_metas(backend, [n.task_id for n in nodes]) if backend else {}
    left: list[WorkflowNode] = []
    finished: list[WorkflowNode] = []
    for node in nodes:
        recorded = record_backend_outcome(
            step, node, metas.get(node.task_id) or {}, "recovered from the result backend"
        )
        (finished if recorded else left).append(node)
    settle(step, [n for n in finished if n.kind not in CALLBACK_KINDS])
    return left


def worker_lost(workflow_id: UUID | str, task_id: str, detail: str) -> WorkflowNode | None:
    """Celery reported WorkerLostError for a node's task: re-run it (or fail it once its runs are used)."""

    def lost(step: Step) -> WorkflowNode | None:
        node = WorkflowNode.objects.filter(task_id=task_id, workflow_id=step.wf.pk).only(*FIELDS).first()
        if node is None:
            note_stale_report(step.wf.pk, task_id, "worker lost", step)
            return None
        if node.state not in (NodeState.QUEUED, NodeState.STARTED, NodeState.RETRY):
            return None
        running = step.wf.state == WorkflowState.RUNNING
        if not running and node.kind not in CALLBACK_KINDS:
            return None
        why = f"worker lost: {detail}"[:200]
        rerun_or_fail(step, [node], lost_worker_runs, why, _lost_error(why))
        if running:
            maybe_finish(step)
        return node

    return locked_step(workflow_id, lost)

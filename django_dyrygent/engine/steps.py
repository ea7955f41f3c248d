"""One engine step: the workflow row lock, the state table, and what the step changes.

Every decision about a workflow (``decisions``, ``outcomes``, ``repair``,
the entry points in ``engine``) is one ``Step``: a transaction that takes
the workflow's row lock, moves nodes and the workflow through the state
table, then writes its counters and events once and queues the broker work
for after commit. This module is those rules and nothing else, so that they
are enforced in one place whatever decides. Rules that hold for every step:

* a decision (publish, fail, finish) is taken inside ``transaction.atomic()``
  after ``lock_workflow()``; completion events wait for the lock, the
  safety-net tick skips a locked workflow;
* every state change goes through ``transition_nodes`` / ``transition_workflow``:
  the state table is checked and the UPDATE is conditional on the old state;
* nothing talks to the broker or sends a signal before the commit: both are
  queued with ``transaction.on_commit`` (``messaging``, ``signals``);
* the number of queries of one step does not depend on the size of the
  workflow, only on how many nodes the step itself changes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from django.db import OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from .. import signals
from ..conf import settings
from ..models import Workflow, WorkflowEvent, WorkflowNode
from ..serialization import storable_text
from ..states import (
    COUNTED_KINDS,
    NODE_FINAL,
    NODE_TRANSITIONS,
    TASK_KINDS,
    WORKFLOW_FINAL,
    WORKFLOW_TRANSITIONS,
    NodeKind,
    NodeState,
)
from . import db, messaging, slots, waiting

# The engine's documented logger (docs/operations.md), shared by its modules.
logger = logging.getLogger("django_dyrygent.engine")

T = TypeVar("T")

# States workers write without the workflow lock (task_prerun, task_retry).
WORKER_STATES = frozenset({NodeState.STARTED, NodeState.RETRY})


# The workflow counter each final node state adds to (all other final states: nodes_failed).
_OUTCOME_COUNTER: dict[str, str] = {NodeState.SUCCESS: "nodes_succeeded", NodeState.SKIPPED: "nodes_skipped"}


class TransitionNotAllowed(Exception):
    """The state table forbids this change."""


class ConcurrentTransition(Exception):
    """The row was not in the state the engine read: someone wrote it without the lock."""


# -- locking ---------------------------------------------------------------------------


#: Workflow columns of unbounded size the engine never reads under the lock. They are
#: loaded on access (options when a tick is scheduled, tasks_options by ``messaging.publish``
#: after commit), so a 10 MB custom_payload no longer costs every step its transfer.
LOCK_DEFERRED = ("custom_payload", "options", "tasks_options", "error")


def lock_workflow(pk: UUID | str, skip_locked: bool = False) -> Workflow | None:
    """Lock the workflow row for the current transaction and return it fresh.

    Returns None when the row does not exist or, with ``skip_locked``, when
    another transaction holds it. On SQLite (no row locks) the first statement
    is an UPDATE of the row: it takes the database write lock up front, so the
    busy timeout applies and the transaction never deadlocks on a lock upgrade.
    The large columns (``LOCK_DEFERRED``) are not loaded.
    """
    conn = Workflow.write_connection()
    if conn.vendor == "sqlite" or not conn.features.has_select_for_update:
        if not Workflow.objects.filter(pk=pk).update(lock_version=F("lock_version") + 1):
            return None
        return Workflow.objects.defer(*LOCK_DEFERRED).filter(pk=pk).first()
    options: dict[str, Any] = {}
    if skip_locked and conn.features.has_select_for_update_skip_locked:
        options["skip_locked"] = True
    # PostgreSQL: FOR UPDATE, the one row lock that conflicts with the FOR KEY SHARE
    # every completion of the hot path (hotpath.py) and every worker report
    # (outcomes._simple_transition) takes first: a decision waits for the completions in
    # flight, later ones wait for the decision. Both take the workflow row before
    # any node row, so they cannot deadlock.
    return Workflow.objects.select_for_update(**options).defer(*LOCK_DEFERRED).filter(pk=pk).first()


class Step:
    """What one locked transaction changes; flushed once, announced after commit."""

    def __init__(self, workflow: Workflow) -> None:
        self.wf = workflow
        self.now = timezone.now()
        self.old_state = workflow.state
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.wf_fields: dict[str, Any] = {}
        self.events: list[WorkflowEvent] = []
        self.node_changes: list[tuple[WorkflowNode, str, str]] = []
        self.wf_changes: list[tuple[str, str]] = []
        self.to_publish: list[messaging.Entry] = []
        self.to_revoke: list[str] = []
        self.to_terminate: list[str] = []
        self.results: dict[int, Any] = {}  # node id -> result known in memory
        # The workflow's tasks_options when in hand; None: ``messaging.publish`` reads them after commit.
        self.tasks_options: dict[str, Any] | None = None
        self.finished = False
        # A finished workflow whose callbacks still run keeps its tick chain (see repair.watch_callbacks).
        self.watch_callbacks = False
        self.tick_countdown: float | None = None  # set by decisions.schedule_tick: send the next tick after commit
        # Concurrency keys a node of this step let go of (key -> that node's limit), and the
        # workflows whose waiters the freed slots let in: ticked after commit (slots.py).
        self.freed_keys: dict[str, int] = {}
        self.to_tick: set[Any] = set()
        # The broker's error when this step's publish after commit failed (``messaging.publish``).
        self.publish_error: Exception | None = None

    # state changes -------------------------------------------------------------------

    def transition_nodes(
        self, nodes: Iterable[WorkflowNode], target: str, reason: str = "", **fields: Any,
    ) -> list[WorkflowNode]:
        """Move ``nodes`` to ``target``: checked against the table, conditional UPDATE.

        Returns the nodes moved. Workers record STARTED and RETRY without the
        workflow lock (see ``hotpath.node_started``), so a node read as QUEUED may be
        STARTED by the time of the UPDATE: such a node is re-read and moved from
        its new state if the table allows it. A republish (QUEUED -> QUEUED) of a
        node that started meanwhile is simply dropped. Anything else that
        changed behind the lock raises ConcurrentTransition.
        """
        if not nodes:
            return []
        by_old: defaultdict[str, list[WorkflowNode]] = defaultdict(list)
        for node in nodes:
            if target not in NODE_TRANSITIONS[node.state]:
                raise TransitionNotAllowed(
                    f"Node {node.task_id} of workflow {self.wf.pk}: {node.state} -> {target}"
                )
            by_old[node.state].append(node)
        values = dict(fields, state=target)
        reason = storable_text(reason)
        if reason:
            values["reason"] = reason[:255]
        if target in NODE_FINAL:
            values.setdefault("finished_at", self.now)
        moved: list[WorkflowNode] = []
        stragglers: list[WorkflowNode] = []
        for old, group in by_old.items():
            for chunk in db.chunks(group, Workflow.write_connection()):
                updated = WorkflowNode.objects.filter(
                    pk__in=[n.pk for n in chunk], state=old
                ).update(**values)
                if updated == len(chunk):
                    done = chunk
                else:
                    done, late = self._sort_out(chunk, old, target, updated)
                    stragglers.extend(late)
                for node in done:
                    self._record_node(node, old, target, reason)
                    for key, value in fields.items():
                        if not hasattr(value, "resolve_expression"):
                            setattr(node, key, value)
                moved.extend(done)
        if target == NodeState.QUEUED:
            # Publishing (again) a node a worker has just started or retried is moot.
            stragglers = []
        return moved + self.transition_nodes(stragglers, target, reason, **fields)

    def _sort_out(
        self, chunk: list[WorkflowNode], old: str, target: str, updated: int,
    ) -> tuple[list[WorkflowNode], list[WorkflowNode]]:
        """After a short UPDATE: which nodes moved, which a worker moved first."""
        current = dict(
            WorkflowNode.objects.filter(pk__in=[n.pk for n in chunk]).values_list("pk", "state")
        )
        done: list[WorkflowNode] = []
        late: list[WorkflowNode] = []
        for node in chunk:
            now = current.get(node.pk)
            if now == target:  # only locked steps write the targets they move nodes to
                done.append(node)
            elif now in WORKER_STATES and now != old:
                node.state = now
                late.append(node)
            else:
                raise ConcurrentTransition(
                    f"Workflow {self.wf.pk}: node {node.task_id} was {now}, not {old}, "
                    f"when moving it to {target}"
                )
        if len(done) != updated:
            raise ConcurrentTransition(
                f"Workflow {self.wf.pk}: {updated} nodes moved to {target}, {len(done)} expected"
            )
        return done, late

    def _record_node(self, node: WorkflowNode, old: str, new: str, reason: str) -> None:
        node.state = new
        # From __dict__: a node loaded without the field is never read again for it.
        key = node.__dict__.get("concurrency_key")
        if key and old in slots.HOLDS_SLOT and new not in slots.HOLDS_SLOT:
            self.freed_keys[key] = max(self.freed_keys.get(key, 0), node.concurrency_limit or 1)
        if node.kind in COUNTED_KINDS and (old in NODE_FINAL) != (new in NODE_FINAL):
            # Into a final state counts up; out of one (retry()) counts back down.
            final, step = (new, 1) if new in NODE_FINAL else (old, -1)
            self.counters["nodes_done"] += step
            self.counters[_OUTCOME_COUNTER.get(final, "nodes_failed")] += step
            if final == NodeState.UPSTREAM_FAILED:  # the part of nodes_failed that never ran
                self.counters["nodes_upstream_failed"] += step
        elif node.kind == NodeKind.MAP and NodeState.FAILURE in (old, new) and old != new:
            # A fan-out whose source returned no list fails by itself: it counts as one
            # failed node (total, done, failed), or a fan-out without followers would let
            # the workflow end SUCCESS. retry() takes it back out.
            step = 1 if new == NodeState.FAILURE else -1
            for name in ("nodes_total", "nodes_done", "nodes_failed"):
                self.counters[name] += step
        if node.kind != NodeKind.JOIN:
            self.node_changes.append((node, old, new))
        self.events.append(
            WorkflowEvent(
                workflow_id=self.wf.pk, node_id=node.pk, old_state=old, new_state=new,
                reason=reason[:255], created_at=self.now,
            )
        )

    def transition_workflow(self, target: str, reason: str = "", **fields: Any) -> None:
        old = self.wf.state
        if target == old:
            return
        if target not in WORKFLOW_TRANSITIONS[old]:
            raise TransitionNotAllowed(f"Workflow {self.wf.pk}: {old} -> {target}")
        reason = storable_text(reason)
        self.wf.state = target
        self.wf_fields["state"] = target
        for key, value in fields.items():
            setattr(self.wf, key, value)
            self.wf_fields[key] = value
        self.wf_changes.append((old, target))
        self.events.append(
            WorkflowEvent(
                workflow_id=self.wf.pk, old_state=old, new_state=target,
                reason=reason[:255], created_at=self.now,
            )
        )

    def count(self, name: str) -> int:
        return getattr(self.wf, name) + self.counters.get(name, 0)

    # writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """One UPDATE of the workflow row (counters, state), the event rows, then on_commit work."""
        values = dict(self.wf_fields)
        for name, delta in self.counters.items():
            if delta:
                values[name] = F(name) + delta
                setattr(self.wf, name, getattr(self.wf, name) + delta)
        if values:
            updated = Workflow.objects.filter(pk=self.wf.pk, state=self.old_state).update(**values)
            if not updated:
                raise ConcurrentTransition(
                    f"Workflow {self.wf.pk} was no longer {self.old_state} at flush"
                )
            if self.wf.state in WORKFLOW_FINAL and self.old_state not in WORKFLOW_FINAL:
                # Wakes Workflow.wait() (waiting.py) at commit; dropped on rollback. PostgreSQL
                # only: elsewhere wait() polls.
                conn = Workflow.write_connection()
                if conn.vendor == "postgresql":
                    waiting.notify_finished(conn, self.wf.pk, self.wf.state)
        if self.events and settings.EVENT_LOG:
            WorkflowEvent.objects.bulk_create(self.events, batch_size=1000)
        if self.freed_keys:
            self.to_tick |= slots.heads(self.freed_keys)
        if self.to_publish:
            transaction.on_commit(self.publish)
        if self.to_revoke:
            transaction.on_commit(partial(messaging.revoke, self.to_revoke))
        if self.to_terminate:
            transaction.on_commit(partial(messaging.revoke, self.to_terminate, terminate=True))
        if self.tick_countdown is not None:
            # After the publish: the nodes are what the workers wait for.
            transaction.on_commit(partial(messaging.send_tick, self.wf.pk, None, self.tick_countdown))
        for workflow_id in sorted(self.to_tick, key=str):
            # A tick of the workflow whose waiter a slot freed here lets in (its own lock admits it).
            transaction.on_commit(partial(messaging.send_tick, workflow_id, None, None))
        transaction.on_commit(self.announce)

    def publish(self) -> None:
        self.publish_error = messaging.publish(self.wf.pk, self.tasks_options, self.to_publish)

    def announce(self) -> None:
        wf = self.wf
        for node, old, new in self.node_changes:
            signals.send(signals.node_state_changed, node=node, old_state=old, new_state=new)
        for old, new in self.wf_changes:
            signals.send(signals.workflow_state_changed, workflow=wf, old_state=old, new_state=new)
        published = [node for node, _args in self.to_publish if node.kind in TASK_KINDS]
        if published:
            signals.send(signals.workflow_active_tick, workflow=wf, nodes=published)
        if self.finished:
            signals.send(signals.workflow_finished, workflow=wf)


#: Times a locked step chosen as a deadlock's victim runs again before the error is raised.
DEADLOCK_RETRIES = 3


def locked_step(workflow_id: UUID | str, action: Callable[[Step], T]) -> T | None:
    """Run ``action(step)`` under the workflow lock (waiting for it) and flush.

    A step the database chose as a deadlock's victim while it waited for the
    workflow row is asked again, up to ``DEADLOCK_RETRIES`` times: nothing of
    it had run (the action starts once the lock is held), and the
    transaction was rolled back whole. A cancel queued for the row while
    completions of the one-statement success upgrade their lock on it can
    close such a cycle (``hotpath``). A deadlock once the action has started
    (its objects may hold what the rolled-back transaction wrote), or inside
    a caller's transaction, is raised.
    """
    attempt = 0
    while True:
        try:
            return _locked_step(workflow_id, action)
        except _LockDeadlock as victim:
            if attempt >= DEADLOCK_RETRIES:
                raise victim.error from None
            attempt += 1
            logger.info("Workflow %s: %s was a deadlock's victim waiting for the lock; asking again (%d)",
                        workflow_id, getattr(action, "__name__", "a step"), attempt)


class _LockDeadlock(Exception):
    """Waiting for the workflow row, the step was chosen as a deadlock's victim (``error``)."""

    def __init__(self, error: OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


def _locked_step(workflow_id: UUID | str, action: Callable[[Step], T]) -> T | None:
    outermost = not Workflow.write_connection().in_atomic_block
    with transaction.atomic():
        try:
            wf = lock_workflow(workflow_id)
        except OperationalError as exc:
            if outermost and db.is_deadlock(exc):
                raise _LockDeadlock(exc) from exc
            raise
        if wf is None:
            logger.warning("Workflow %s does not exist (%s ignored)", workflow_id, action.__name__)
            return None
        step = Step(wf)
        result = action(step)
        step.flush()
    return result

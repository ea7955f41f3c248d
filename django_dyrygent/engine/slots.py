"""Concurrency keys: at most N nodes of a key hold a slot at once, across all workflows.

A node declares ``concurrency_key`` and ``concurrency_limit``. A slot is
held by a node of the key that is QUEUED, STARTED or RETRY (``NODE_ACTIVE``:
published, running, or waiting in the broker for its Celery retry), so
occupancy is read from node states and never kept in a counter: whatever
ends a node (success, failure, cancel, revoke, a timeout, the sweep failing
a node whose worker died) frees its slot by that state change alone.

A keyed node that finds no free slot waits in WAITING (no worker, no broker
message). Waiters are admitted first come, first served by when they began
to wait (``queued_at``, then id), counted only while their workflow is
RUNNING: a paused workflow's waiters hold no place in the queue (they go
back to theirs, kept by ``queued_at``, on resume).

Race freedom: every admission, and every look for the waiters a freed slot
lets in, runs under the lock of the key's ``ConcurrencyKey`` row, taken in
key order after the workflow's own lock (nobody takes a workflow lock while
holding a key), so two workflows racing for a key's last slot are admitted
one after the other and the second sees the first's QUEUED node. A node
moves WAITING -> QUEUED only in a locked step of its own workflow, through
the state table's conditional UPDATE: released exactly once. A step that
frees a slot (or pauses a workflow with waiters) ticks, after its commit,
the workflows of the waiters now at the head of the queue; should that
tick be lost, the workers' sweep (``due_workflows``; without liveness the
workflow's own tick chain) finds the free slot (``admittable``) within one
interval.

Plain nodes never come here: every entry point is guarded by the node's
key, and the PostgreSQL hot path leaves keyed nodes to the locked path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import F, Q, QuerySet

from ..models import ConcurrencyKey, WorkflowNode
from ..states import NODE_ACTIVE, NodeState, WorkflowState

#: The node states that hold a slot of their key.
HOLDS_SLOT = frozenset(NODE_ACTIVE)


def lock_keys(keys: Iterable[str]) -> None:
    """Lock the keys' rows (made on first use) for this transaction, in key order.

    The rows that exist are locked before anything is inserted: MySQL/MariaDB's
    ``INSERT IGNORE`` of an existing key takes a shared lock on its row, and two
    steps that both hold it and then ask for the exclusive one deadlock.
    """
    wanted = sorted(set(keys))
    locked = _lock(wanted)
    missing = [k for k in wanted if k not in locked]
    if missing:
        ConcurrencyKey.objects.bulk_create([ConcurrencyKey(key=k) for k in missing], ignore_conflicts=True)
        _lock(missing)


def _lock(keys: list[str]) -> set[str]:
    return set(ConcurrencyKey.objects.select_for_update().filter(key__in=keys).order_by("key")
               .values_list("key", flat=True))


def running(keys: Iterable[str]) -> dict[str, int]:
    """Key -> how many of its nodes hold a slot now (one query)."""
    return WorkflowNode.objects.slots_taken(keys)


def queue(key: str, first: int, own: Any = None) -> list[tuple[int, Any, int | None]]:
    """The ``first`` waiters of ``key`` in admission order: (node id, workflow id, its limit).

    ``own``: the workflow of the step asking, counted as running (a resume
    asks before its new state is written).
    """
    running_workflows = Q(workflow__state=WorkflowState.RUNNING)
    if own is not None:
        running_workflows |= Q(workflow_id=own)
    return list(
        WorkflowNode.objects.filter(running_workflows, concurrency_key=key, state=NodeState.WAITING)
        .order_by("queued_at", "pk").values_list("pk", "workflow_id", "concurrency_limit")[:first]
    )


def admit(
    nodes: Sequence[WorkflowNode], running_workflow: bool, own: Any = None,
) -> tuple[list[WorkflowNode], list[WorkflowNode], set[Any]]:
    """Which of a RUNNING workflow's keyed ``nodes`` may take a slot now; under the keys' locks.

    ``nodes`` are newly ready (PENDING) or already WAITING. Returns the
    nodes admitted, the PENDING nodes that must start waiting, and the other
    workflows whose waiters are ahead in a queue with a free slot (a nudge:
    their own tick admits them). A waiter at place ``p`` of its key's queue
    is admitted when ``running + p`` is below its limit; a new node's place
    is after every waiter. Nothing is admitted for a workflow that is not
    running (``running_workflow`` False): its waiters keep their place.
    ``own``: that workflow's id.
    """
    if not running_workflow:
        return [], [n for n in nodes if n.state == NodeState.PENDING], set()
    by_key: defaultdict[str, list[WorkflowNode]] = defaultdict(list)
    for node in nodes:
        by_key[str(node.concurrency_key)].append(node)
    lock_keys(by_key)
    taken = running(by_key)
    admitted: list[WorkflowNode] = []
    waiting: list[WorkflowNode] = []
    nudge: set[Any] = set()
    for key in sorted(by_key):
        mine = by_key[key]
        longest = max(int(n.concurrency_limit or 1) for n in mine)
        head = queue(key, longest, own)
        busy = taken.get(key, 0)
        ours = {n.pk: n for n in mine if n.state == NodeState.WAITING}
        for place, (pk, workflow_id, limit) in enumerate(head):
            if busy + place < int(limit or 1):
                if pk in ours:
                    admitted.append(ours[pk])
                else:
                    nudge.add(workflow_id)
        fresh = [n for n in mine if n.state == NodeState.PENDING]
        ahead = len(head) if len(head) < longest else None  # None: more waiters than could ever fit
        for i, node in enumerate(fresh):
            fits = ahead is not None and busy + ahead + i < int(node.concurrency_limit or 1)
            (admitted if fits else waiting).append(node)
    return admitted, waiting, nudge


def heads(freed: dict[str, int]) -> set[Any]:
    """Workflows with a waiter that a free slot lets in now; ``freed``: key -> the freeing node's limit.

    Looks at most that many waiters deep (a key's nodes are meant to share
    one limit), under the keys' locks.
    """
    if not freed:
        return set()
    lock_keys(freed)
    taken = running(freed)
    found: set[Any] = set()
    for key in sorted(freed):
        for place, (_pk, workflow_id, limit) in enumerate(queue(key, freed[key])):
            if taken.get(key, 0) + place < int(limit or 1):
                found.add(workflow_id)
    return found


def admittable(workflow: Any) -> QuerySet[WorkflowNode]:
    """Keyed WAITING nodes of ``workflow`` (an id or an ``OuterRef``) whose key has a free slot.

    What the idle tick asks about, so a lost nudge costs at most one tick
    interval. A free slot may be promised to an older waiter of another
    workflow: the locked tick that follows then admits nothing.
    """
    return (
        WorkflowNode.objects.filter(workflow_id=workflow, state=NodeState.WAITING, concurrency_key__isnull=False)
        .with_slots_taken().filter(**{"slots_taken__lt": F("concurrency_limit")})
    )

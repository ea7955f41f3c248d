"""The decisions of a locked step: what becomes ready, what follows a final node, when it ends.

``settle`` carries a node that became final to its dependents (counters of
unfinished and failed dependencies), ``readiness`` says what a waiting node
becomes under its trigger rule, ``queue_nodes`` marks nodes to publish after
commit, ``finish`` ends the workflow and arms its callbacks. Every function
here takes the ``steps.Step`` of a transaction that holds the workflow lock;
none of them commits, talks to the broker or reads the result backend.
Worker reports (``outcomes``), repair (``repair``) and the entry points
(``engine``) are built on them.

Sub-workflow nodes: ``start_children`` has a worker start a reached node's
child after commit, ``finish_children`` ends a node as its child ended, and
``abort`` cancels the children of what it cancels (``cancel_children``, the
child locked after its parent). ``child_ended`` is the exception to the
rule above: run after a child's ending commit, it is a locked step of the
parent's own, kept here because ``finish`` must reach it and the modules
above import this one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from celery.utils import uuid
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet

from ..conf import settings
from ..models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from ..serialization import error_line, from_tree, storable_text
from ..states import (
    CALLBACK_KINDS,
    NODE_ACTIVE,
    NODE_FINAL,
    NODE_OK,
    TASK_KINDS,
    WAITING_KINDS,
    WORKFLOW_FINAL,
    WORKFLOW_RUNNABLE,
    NodeKind,
    NodeState,
    TriggerRule,
    WorkflowState,
)
from . import db, messaging, slots
from .sql import NODE_FIELDS
from .steps import Step, lock_workflow, locked_step

# The engine's documented logger (docs/operations.md), shared by its modules.
logger = logging.getLogger("django_dyrygent.engine")

# Nodes without a Celery task of their own: they succeed when their dependencies have.
JOIN_KINDS = (NodeKind.JOIN, NodeKind.MAP)
# Pseudo-target of readiness: a fan-out node whose source succeeded expands.
EXPAND = "EXPAND"
# Pseudo-target of readiness: a sub-workflow node whose dependencies succeeded starts its child.
SPAWN = "SPAWN"


def readiness(node: WorkflowNode) -> str | None:
    """What a PENDING node should become given its counters, or None to keep waiting."""
    rule = node.trigger_rule if node.kind == NodeKind.TASK else TriggerRule.ALL_SUCCESS
    if rule == TriggerRule.ALL_SUCCESS:
        if node.failed_dependencies:
            return NodeState.UPSTREAM_FAILED
        if not node.waiting:
            if node.kind == NodeKind.MAP and node.fanout_size is None:
                return EXPAND
            if node.kind == NodeKind.SUBWORKFLOW:
                return SPAWN
            if node.kind in WAITING_KINDS:
                return NodeState.WAITING
            return NodeState.SUCCESS if node.kind in JOIN_KINDS else NodeState.QUEUED
    elif rule == TriggerRule.ALL_DONE:
        if not node.waiting:
            return NodeState.QUEUED
    elif rule == TriggerRule.ONE_FAILED:
        if node.failed_dependencies:
            return NodeState.QUEUED
        if not node.waiting:
            return NodeState.SKIPPED
    return None


#: Readiness targets a PAUSED workflow holds back: they would publish (or start waiting).
HELD_WHILE_PAUSED = frozenset({NodeState.QUEUED, EXPAND, SPAWN})


def holds(step: Step, target: str) -> bool:
    """Whether a node ready for ``target`` stays PENDING for now: its workflow is paused.

    Its counters are already settled, so ``ready_nodes`` finds it and resume
    releases it. Joins, skips and upstream failures still settle: they
    publish nothing, and leaving them would leave their dependents' counters
    behind.
    """
    return step.wf.state == WorkflowState.PAUSED and target in HELD_WHILE_PAUSED


def _apply_readiness(step: Step, candidates: Iterable[WorkflowNode]) -> list[WorkflowNode]:
    """Move every ready PENDING node on; return the nodes that became final (joins, skips, ...)."""
    decided: defaultdict[str, list[WorkflowNode]] = defaultdict(list)
    for node in candidates:
        if node.state == NodeState.PENDING:
            target = readiness(node)
            if target is not None and not holds(step, target):
                decided[target].append(node)
    finals = []
    for fanout in decided.pop(EXPAND, []):
        finals.extend(expand_fanout(step, fanout))
    joins = decided.pop(NodeState.SUCCESS, [])
    if joins and step.wf.pass_results:
        # Each join carries its own list of results, so one UPDATE per join.
        results = _dependency_results(step, joins)
        for join in joins:
            step.results[join.pk] = results.get(join.pk, [])
            step.transition_nodes([join], NodeState.SUCCESS, result=step.results[join.pk])
    else:
        step.transition_nodes(joins, NodeState.SUCCESS)
    finals.extend(joins)
    upstream = decided.pop(NodeState.UPSTREAM_FAILED, [])
    step.transition_nodes(upstream, NodeState.UPSTREAM_FAILED, reason="a dependency did not succeed")
    finals.extend(upstream)
    skipped = decided.pop(NodeState.SKIPPED, [])
    step.transition_nodes(skipped, NodeState.SKIPPED, reason="trigger rule one_failed: no dependency failed")
    finals.extend(skipped)
    queued = decided.pop(NodeState.QUEUED, [])
    queue_nodes(step, queued)
    start_waiting(step, decided.pop(NodeState.WAITING, []))
    start_children(step, decided.pop(SPAWN, []))
    return finals


def start_waiting(step: Step, nodes: Sequence[WorkflowNode]) -> None:
    """WAITING from now: no message, no worker; a due time becomes ``timeout_at``, which the tick watches.

    A wait's timeout and a timer's delay count from now; a timer's ``at`` is
    its due time as given.
    """
    by_due: defaultdict[tuple[datetime | None, str], list[WorkflowNode]] = defaultdict(list)
    for node in nodes:
        at = (node.signature or {}).get("at") if node.kind == NodeKind.TIMER else None
        due = datetime.fromisoformat(at) if at else step.now + node.timeout if node.timeout else None
        when = due.isoformat(timespec="seconds") if due else ""
        if node.kind == NodeKind.TIMER:
            reason = f"timer due at {when}"
        else:
            reason = f"waiting for signal {node.task_name!r}" + (f" until {when}" if due else "")
        by_due[(due, reason)].append(node)
    for (due, reason), group in by_due.items():
        step.transition_nodes(group, NodeState.WAITING, reason=reason, started_at=step.now, timeout_at=due)


def expand_fanout(step: Step, fanout: WorkflowNode) -> list[WorkflowNode]:
    """Create one task node per item of the fan-out source's result; queue them.

    The fan-out node then waits for its children like a join and, in
    pass-results mode, collects their results in item order. Returns the
    nodes that became final (the fan-out itself when there is nothing to run).
    """
    (source_result,) = _dependency_results(step, [fanout]).get(fanout.pk, [None])
    if not isinstance(source_result, (list, tuple)):
        step.transition_nodes(
            [fanout], NodeState.FAILURE, reason="fan-out source did not return a list",
            error=f"The fan-out source returned {type(source_result).__name__}, not a list: "
                  f"{source_result!r:.200}",
        )
        return [fanout]
    template = fanout.signature or {}
    # The fan-out now waits for its children instead of its source: the children
    # take over the source edge (source -> children -> fan-out).
    source_edge = WorkflowEdge.objects.filter(node_id=fanout.pk).only("pk", "dependency_id").get()
    source_id = source_edge.dependency_id
    source_edge.delete()
    base = _next_position(step)
    children = [
        WorkflowNode(
            workflow_id=step.wf.pk, task_id=uuid(), task_name=fanout.task_name, kind=NodeKind.TASK,
            # The item is the call's first argument; "immutable" keeps pass-results
            # mode from prepending the whole list as well.
            signature={**template, "args": [item, *template.get("args", [])], "immutable": True},
            position=base + i, timeout=fanout.timeout, waiting=0,
            custom_payload={"fanout": fanout.pk, "item_index": i},
        )
        for i, item in enumerate(source_result)
    ]
    WorkflowNode.objects.bulk_create(children, batch_size=1000)
    if children and any(c.pk is None for c in children):  # MySQL: no ids from bulk inserts
        ids = dict(WorkflowNode.objects.filter(task_id__in=[c.task_id for c in children])
                   .values_list("task_id", "pk"))
        for child in children:
            child.pk = ids[child.task_id]
    for child in children:
        child._state.adding = False
    WorkflowEdge.objects.bulk_create(
        [WorkflowEdge(workflow_id=step.wf.pk, node_id=c.pk, dependency_id=source_id) for c in children]
        + [WorkflowEdge(workflow_id=step.wf.pk, node_id=fanout.pk, dependency_id=c.pk, position=i)
           for i, c in enumerate(children)],
        batch_size=1000,
    )
    WorkflowNode.objects.filter(pk=fanout.pk).update(fanout_size=len(children), waiting=len(children))
    fanout.fanout_size = fanout.waiting = len(children)
    step.counters["nodes_total"] += len(children)
    step.events.append(
        WorkflowEvent(workflow_id=step.wf.pk, node_id=fanout.pk, old_state=fanout.state,
                      new_state=fanout.state, reason=f"expanded into {len(children)} nodes",
                      created_at=step.now)
    )
    if not children:
        step.results[fanout.pk] = []
        step.transition_nodes([fanout], NodeState.SUCCESS, result=[] if step.wf.pass_results else None)
        return [fanout]
    queue_nodes(step, children, reason="fan-out")
    return []


def _next_position(step: Step) -> int:
    from django.db.models import Max

    return (WorkflowNode.objects.filter(workflow_id=step.wf.pk).aggregate(m=Max("position"))["m"] or 0) + 1


def queue_nodes(step: Step, nodes: Sequence[WorkflowNode], reason: str = "") -> None:
    """Mark nodes QUEUED now; they are published after commit with their call arguments.

    A node with a concurrency key that does not hold a slot yet is queued
    only if ``slots.admit`` gives it one; otherwise it waits (``wait_for_slot``).
    """
    if not nodes:
        return
    keyed = [n for n in nodes if n.concurrency_key and n.state not in slots.HOLDS_SLOT]
    if keyed:
        admitted, held, nudge = slots.admit(keyed, step.wf.state == WorkflowState.RUNNING, step.wf.pk)
        step.to_tick |= nudge
        wait_for_slot(step, held)
        chosen = {n.pk for n in admitted}
        nodes = [n for n in nodes if n not in keyed or n.pk in chosen]
        if not nodes:
            return
    calls = call_args(step, nodes)
    moved = step.transition_nodes(
        nodes, NodeState.QUEUED, reason=reason, queued_at=step.now,
        publish_count=F("publish_count") + 1,
    )
    for node in moved:
        step.to_publish.append((node, calls.get(node.pk, ())))


def wait_for_slot(step: Step, nodes: Sequence[WorkflowNode]) -> None:
    """PENDING -> WAITING for a slot of their key; ``queued_at`` is their place in the key's queue."""
    by_key: defaultdict[str, list[WorkflowNode]] = defaultdict(list)
    for node in nodes:
        by_key[str(node.concurrency_key)].append(node)
    for key, group in by_key.items():
        # No timeout_at: nothing times out a node waiting for a slot (its own timeout counts from its start).
        step.transition_nodes(group, NodeState.WAITING, reason=f"waiting for concurrency key {key}",
                              queued_at=step.now, timeout_at=None)


def call_args(step: Step, nodes: Sequence[WorkflowNode]) -> dict[int, tuple[Any, ...]]:
    """Arguments prepended to mutable signatures in pass-results mode (Celery canvas rules)."""
    if not step.wf.pass_results:
        return {}
    mutable = [n for n in nodes if n.kind in TASK_KINDS and not n.signature.get("immutable")]
    if not mutable:
        return {}
    per_node = _dependency_results(step, mutable)
    calls: dict[int, tuple[Any, ...]] = {}
    for node in mutable:
        results = per_node.get(node.pk)
        if results is None:
            continue
        results = [from_tree(r) for r in results]
        calls[node.pk] = (results[0],) if len(results) == 1 else (results,)
    return calls


def _dependency_results(step: Step, nodes: Sequence[WorkflowNode]) -> defaultdict[int, list[Any]]:
    """node id -> list of its dependencies' results, in dependency order."""
    edges = list(
        WorkflowEdge.objects.filter(node_id__in=[n.pk for n in nodes])
        .order_by("node_id", "position").values_list("node_id", "dependency_id")
    )
    missing = {dep for _node, dep in edges if dep not in step.results}
    if missing:
        for chunk in db.chunks(missing, Workflow.write_connection()):
            step.results.update(
                WorkflowNode.objects.filter(pk__in=chunk).values_list("pk", "result")
            )
    out: defaultdict[int, list[Any]] = defaultdict(list)
    for node_id, dep in edges:
        out[node_id].append(step.results.get(dep))
    return out


def settle(step: Step, finished: Iterable[WorkflowNode]) -> None:
    """Propagate nodes that just became final to their dependents, level by level.

    Each level costs a constant number of queries: one to read the dependents
    through the edge table, one UPDATE per distinct counter change, and one
    UPDATE per target state. Levels only continue through joins, skips and
    upstream failures, so a normal completion takes one or two levels.
    """
    frontier = [n for n in finished if n.state in NODE_FINAL]
    for branch in [n for n in frontier if n.kind == NodeKind.BRANCH and n.state == NodeState.SUCCESS]:
        frontier.extend(take_branch(step, branch))
    while frontier:
        ok = {n.pk for n in frontier if n.state in NODE_OK}
        rows = (
            WorkflowEdge.objects.filter(dependency_id__in=[n.pk for n in frontier])
            .select_related("node")
            .only("node_id", "dependency_id", *("node__" + f for f in NODE_FIELDS if f != "id"))
        )
        dependents: dict[int, WorkflowNode] = {}
        deltas: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])
        for edge in rows:
            node = dependents.setdefault(edge.node_id, edge.node)
            deltas[node.pk][0] += 1
            if edge.dependency_id not in ok:
                deltas[node.pk][1] += 1
        groups: defaultdict[tuple[int, int], list[int]] = defaultdict(list)
        for pk, (done, failed) in deltas.items():
            groups[(done, failed)].append(pk)
            node = dependents[pk]
            node.waiting -= done
            node.failed_dependencies += failed
        for (done, failed), pks in groups.items():
            change: dict[str, Any] = {"waiting": F("waiting") - done}
            if failed:
                change["failed_dependencies"] = F("failed_dependencies") + failed
            for chunk in db.chunks(pks, Workflow.write_connection()):
                WorkflowNode.objects.filter(pk__in=chunk).update(**change)
        frontier = _apply_readiness(step, dependents.values())


def branch_keys(node: WorkflowNode, result: Any) -> tuple[list[str], str | None]:
    """The keys a branch's result chooses, or the error that fails the branch instead."""
    paths = (node.signature or {}).get("paths") or {}
    keys = [result] if isinstance(result, str) else list(result) if isinstance(result, (list, tuple)) else []
    if keys and all(isinstance(k, str) and k in paths for k in keys):
        return keys, None
    known = ", ".join(repr(k) for k in sorted(paths))
    return [], storable_text(
        f"The branch task returned {result!r:.200}, which names none of its paths, or not only them: "
        f"it must return one of {known}, or a non-empty list of them."
    )


def take_branch(step: Step, branch: WorkflowNode) -> list[WorkflowNode]:
    """Skip what the succeeded ``branch`` did not choose; returns the nodes skipped.

    The heads of the other paths (unless a chosen path holds them too), then
    level by level every PENDING node all of whose dependencies were skipped
    here: a node that also waits for anything else (a chosen path, another
    branch of the graph) runs, with the skipped ones counting as done. One
    query per level, only for a branch's decision.
    """
    result = step.results[branch.pk] if branch.pk in step.results else branch.result
    keys, _problem = branch_keys(branch, result)
    paths: dict[str, list[int]] = branch.signature["paths"]
    kept = {pos for key in keys for pos in paths[key]}
    dropped = {pos for key, positions in paths.items() if key not in keys for pos in positions} - kept
    if not dropped:
        return []
    pending = WorkflowNode.objects.filter(workflow_id=step.wf.pk, state=NodeState.PENDING).only(*NODE_FIELDS)
    conn = Workflow.write_connection()
    skipped = {n.pk: n for chunk in db.chunks(dropped, conn) for n in pending.filter(position__in=chunk)}
    frontier = list(skipped)
    edges = WorkflowEdge.objects.values_list("node_id", "dependency_id")
    while frontier:
        after = {node for chunk in db.chunks(frontier, conn) for node, _dep in edges.filter(dependency_id__in=chunk)}
        after -= skipped.keys()
        needs: defaultdict[int, set[int]] = defaultdict(set)
        for chunk in db.chunks(list(after), conn):
            for node_id, dep_id in edges.filter(node_id__in=chunk):
                needs[node_id].add(dep_id)
        alone = [pk for pk in after if needs[pk] <= skipped.keys()]
        level = {n.pk: n for chunk in db.chunks(alone, conn)
                 for n in pending.filter(pk__in=chunk).exclude(kind__in=CALLBACK_KINDS)}
        skipped.update(level)
        frontier = list(level)
    chosen = ", ".join(repr(k) for k in keys)
    return step.transition_nodes(list(skipped.values()), NodeState.SKIPPED, reason=f"branch chose {chosen}")


def ready_nodes(workflow: Any) -> QuerySet[WorkflowNode]:
    """PENDING nodes of ``workflow`` (an id or an ``OuterRef``) whose counters may let them move on.

    What ``release_ready`` reads, and what the idle tick (``engine``) asks
    about without the lock: one definition, so the two cannot drift.
    """
    return (
        WorkflowNode.objects.filter(workflow_id=workflow, state=NodeState.PENDING)
        .exclude(kind__in=CALLBACK_KINDS)
        .filter(Q(waiting=0) | Q(failed_dependencies__gt=0))
    )


def release_ready(step: Step, candidates: list[WorkflowNode] | None = None) -> None:
    """Queue every PENDING node whose rule is already satisfied (start, retry, safety net).

    The same query reads the workflow's nodes waiting for a slot of their
    concurrency key (WAITING with a key), which are admitted if their turn
    has come: no statement more for a workflow without keys. ``candidates``:
    what that query would return, already in hand (the start of a workflow
    whose rows this transaction wrote, ``engine.start_saved``).
    """
    if candidates is None:
        candidates = list(
            (ready_nodes(step.wf.pk) | WorkflowNode.objects.filter(
                workflow_id=step.wf.pk, state=NodeState.WAITING, concurrency_key__isnull=False,
            )).only(*NODE_FIELDS).order_by("position")
        )
    waiters = [n for n in candidates if n.state == NodeState.WAITING]
    if waiters:
        queue_nodes(step, waiters, reason="a slot of its concurrency key")
    finals = _apply_readiness(step, candidates)
    settle(step, finals)


def maybe_finish(step: Step) -> None:
    """End the workflow when every task node is final."""
    wf = step.wf
    if wf.state != WorkflowState.RUNNING or step.count("nodes_done") < step.count("nodes_total"):
        return
    if step.count("nodes_failed"):
        finish(step, WorkflowState.FAILURE, "some nodes did not succeed", error=first_failure(wf.pk))
    else:
        finish(step, WorkflowState.SUCCESS)


def first_failure(workflow_id: Any) -> str:
    """Which node failed first and why, in one line: the ``error`` of a workflow that ends FAILURE.

    One query, made only when a workflow ends FAILURE: recorded then, the
    reason costs nothing to read in a list, and nothing on the success path.
    """
    node = (
        WorkflowNode.objects.filter(workflow_id=workflow_id, state__in=(NodeState.FAILURE, NodeState.CANCELED))
        .exclude(kind__in=CALLBACK_KINDS)
        .order_by(F("finished_at").asc(nulls_last=True), "position")
        .only("task_name", "task_id", "kind", "state", "error", "reason").first()
    )
    if node is None:
        return ""
    why = error_line(node.error) or node.reason or node.state
    if node.state == NodeState.CANCELED:
        why = f"canceled ({why})"
    return f"First failure: {node.task_name or node.kind} [{node.task_id}]: {why}"[:2000]


def finish(step: Step, target: str, reason: str = "", error: str = "") -> None:
    fields: dict[str, Any] = {"finished_at": step.now, "next_tick_at": None}
    if error:
        fields["error"] = error
    step.transition_workflow(target, reason=reason, **fields)
    step.finished = True
    if step.wf.parent_node_id is not None:
        transaction.on_commit(partial(child_ended, step.wf.pk))
    callbacks = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk, kind__in=CALLBACK_KINDS,
                                    state=NodeState.PENDING)
        .only(*NODE_FIELDS).order_by("position")
    )
    run: list[WorkflowNode] = []
    skip: list[WorkflowNode] = []
    for node in callbacks:
        wanted = node.kind == NodeKind.FINALIZER or target in (WorkflowState.FAILURE, WorkflowState.ERROR)
        (run if wanted else skip).append(node)
    step.transition_nodes(skip, NodeState.SKIPPED, reason=f"workflow ended {target}")
    queue_nodes(step, run, reason=f"workflow ended {target}")
    if run:
        step.watch_callbacks = True
        schedule_tick(step)


def swept_by_workers() -> bool:
    """Whether the workers' sweep is the timer of RUNNING workflows (DYRYGENT_LIVENESS).

    With liveness on, the sweeping worker asks every DYRYGENT_SWEEP_INTERVAL,
    in one statement for all of them, which running workflows have anything
    due (``engine.due_workflows``), and ticks those. A workflow that is only
    waiting then costs no tick message and no statement of its own, however
    many there are. Without liveness nothing sweeps unless the operator
    schedules it, so each workflow keeps its own chain of countdown ticks.
    """
    return bool(settings.LIVENESS)


def schedule_tick(step: Step) -> None:
    """Keep exactly one chain of countdown ticks per active workflow (none for RUNNING ones the sweep times).

    A tick reschedules itself only when it is the one that was due (or none
    is due, e.g. the first tick, or the scheduled one was lost): an extra
    tick (admin "tick now", a retry, a duplicate message) arriving before the
    due time leaves the chain to the pending one instead of starting another.
    A RUNNING workflow swept by the workers (``swept_by_workers``) has no
    chain: ``next_tick_at`` is cleared, so a chain left by a process without
    liveness ends at its next tick.
    """
    wf = step.wf
    if wf.state not in WORKFLOW_RUNNABLE and not step.watch_callbacks:
        return
    if wf.state == WorkflowState.RUNNING and swept_by_workers():
        if wf.next_tick_at is not None:
            step.wf_fields["next_tick_at"] = wf.next_tick_at = None
        return
    interval = float(settings.TICK_INTERVAL)
    due = wf.next_tick_at
    tolerance = tick_tolerance()
    if due is None or due <= step.now + tolerance:
        step.wf_fields["next_tick_at"] = wf.next_tick_at = step.now + timedelta(seconds=interval)
        step.tick_countdown = interval


def tick_tolerance() -> timedelta:
    """How much earlier than ``next_tick_at`` a tick still counts as the due one."""
    return timedelta(seconds=min(1.0, float(settings.TICK_INTERVAL) / 2))


def start(step: Step, candidates: list[WorkflowNode] | None = None) -> None:
    """First tick of an INITIAL workflow: RUNNING under its deadline, then release the roots.

    ``candidates``: the nodes ``release_ready`` would read, when in hand.
    """
    wf = step.wf
    step.transition_workflow(
        WorkflowState.RUNNING, started_at=step.now,
        deadline=wf.deadline or step.now + timedelta(seconds=float(settings.MAX_PROCESSING_TIME)),
    )
    release_ready(step, candidates)
    maybe_finish(step)


def abort(step: Step, target: str, reason: str, error: str = "") -> None:
    """End the workflow now (cancel, deadline): revoke what runs, cancel what waits, and the children."""
    open_nodes = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk)
        .exclude(state__in=NODE_FINAL).exclude(kind__in=CALLBACK_KINDS)
        .only(*NODE_FIELDS)
    )
    step.to_revoke.extend(n.task_id for n in open_nodes if n.state in NODE_ACTIVE)
    started = [n for n in open_nodes if n.kind == NodeKind.SUBWORKFLOW and n.state == NodeState.WAITING]
    step.transition_nodes(open_nodes, NodeState.CANCELED, reason=reason)
    finish(step, target, reason=reason, error=error)
    if started:
        cancel_children(step, started, f"its parent workflow {step.wf.pk} ended {target}: {reason}")


# -- sub-workflows -------------------------------------------------------------------------------
#
# A sub-workflow node's task id is its child's workflow id: one attempt starts one child at most.
# Locks are only ever nested parent first (a parent's cancel locks its children; a child is
# inserted under its parent's lock); a child tells its parent of its end after its own commit,
# so a child failing while its parent is canceled cannot deadlock, and whichever commits second
# finds the node already final and changes nothing.


def child_id(node: WorkflowNode) -> UUID:
    return UUID(node.task_id)


def child_check_interval() -> timedelta:
    """How long a started child is left alone before the parent's tick looks at it.

    The child's end reaches its parent at once (``child_ended``, after the
    child's commit); this is the safety net for a report (or the start
    message) lost with its process, as a lost task message is
    (DYRYGENT_REQUEUE_AFTER).
    """
    return timedelta(seconds=float(settings.REQUEUE_AFTER))


def start_children(step: Step, nodes: Sequence[WorkflowNode]) -> None:
    """WAITING from now; a worker builds and starts each child (``subworkflows.start``) after commit.

    Building runs the user's factory, so it happens outside this lock, in a
    task sent by name (the engine does not import the catalogue). The node's
    ``timeout_at`` is when the tick checks on the child (``check_children``).
    """
    if not nodes:
        return
    moved = step.transition_nodes(nodes, NodeState.WAITING, reason="starting its sub-workflow",
                                  started_at=step.now, timeout_at=step.now + child_check_interval())
    if moved:
        transaction.on_commit(partial(messaging.send_child_starts, step.wf.pk, [n.pk for n in moved]))


def check_children(step: Step, nodes: Sequence[WorkflowNode]) -> None:
    """The tick's look at started children: apply a child's end, or start a child whose start was lost."""
    ended = finish_children(step, nodes)
    waiting = [n for n in nodes if n not in ended]
    if not waiting:
        return
    known = set(Workflow.objects.filter(pk__in=[child_id(n) for n in waiting]).values_list("pk", flat=True))
    lost = [n.pk for n in waiting if child_id(n) not in known]
    WorkflowNode.objects.filter(pk__in=[n.pk for n in waiting], state=NodeState.WAITING).update(
        timeout_at=step.now + child_check_interval())
    if lost:
        logger.warning("Workflow %s: the start of sub-workflow node(s) %s was lost; sent again", step.wf.pk, lost)
        transaction.on_commit(partial(messaging.send_child_starts, step.wf.pk, lost))


def finish_children(step: Step, nodes: Sequence[WorkflowNode]) -> list[WorkflowNode]:
    """End each WAITING sub-workflow node whose child has ended, as the child did; returns them.

    SUCCESS carries the child's result (``child_result``); FAILURE or ERROR
    fail the node with the child's error; a canceled child cancels the node
    (a failed outcome: its dependents do not run, ``retry()`` starts a new
    child). Then the dependents are settled and the workflow may end.
    """
    nodes = [n for n in nodes if n.kind == NodeKind.SUBWORKFLOW and n.state == NodeState.WAITING]
    children = {
        row[0]: row for row in Workflow.objects.filter(
            pk__in=[child_id(n) for n in nodes], state__in=WORKFLOW_FINAL,
        ).values_list("pk", "state", "error")
    }
    ended = []
    for node in nodes:
        child = children.get(child_id(node))
        if child is None:
            continue
        pk, state, error = child
        about = f"sub-workflow {pk} ended {state}"
        if state == WorkflowState.SUCCESS:
            value = step.results[node.pk] = child_result(pk)
            ended += step.transition_nodes([node], NodeState.SUCCESS, reason=about, result=value, error="")
        elif state == WorkflowState.CANCELED:
            ended += step.transition_nodes([node], NodeState.CANCELED, reason=about,
                                           error=storable_text(f"The {about}: {error}" if error else ""))
        else:
            ended += step.transition_nodes([node], NodeState.FAILURE, reason=about,
                                           error=storable_text(f"The {about}: {error or state}"))
    if ended:
        settle(step, ended)
        maybe_finish(step)
    return ended


def child_result(workflow_id: Any) -> Any:
    """A succeeded child's result: the result of its last node, or the list of its last nodes' results.

    Its last nodes are those nothing depends on (callbacks aside), in
    creation order; an internal join there stands for the nodes it joins,
    and a skipped one (an untaken branch) has nothing to give. As Celery's
    canvas: a chain gives its last task's result, a group the list.
    """
    leaves = (
        WorkflowNode.objects.filter(workflow_id=workflow_id, state=NodeState.SUCCESS)
        .exclude(kind__in=CALLBACK_KINDS)
        .exclude(Exists(WorkflowEdge.objects.filter(dependency_id=OuterRef("pk"))))
        .order_by("position").values_list("pk", "kind", "result")
    )
    results: list[Any] = []
    for pk, kind, result in leaves:
        if kind == NodeKind.JOIN:
            joined = WorkflowEdge.objects.filter(node_id=pk).order_by("position")
            results.extend(joined.values_list("dependency__result", flat=True))
        else:
            results.append(result)
    return results[0] if len(results) == 1 else results or None


def child_ended(workflow_id: Any) -> None:
    """After a child's ending commit: end its parent's node as it ended (one locked step of the parent).

    A failure here is logged and left to the parent's tick
    (``check_children``): the child's outcome is committed either way.
    """
    try:
        row = Workflow.objects.filter(pk=workflow_id).values_list("parent_node_id", "parent_node__workflow_id").first()
        if row is None or row[0] is None:
            return
        node_id, parent_id = row

        def end_node(step: Step) -> None:
            if step.wf.state in WORKFLOW_FINAL:
                return
            node = WorkflowNode.objects.filter(pk=node_id, workflow_id=step.wf.pk).only(*NODE_FIELDS).first()
            if node is not None and node.task_id == str(workflow_id):
                finish_children(step, [node])

        locked_step(parent_id, end_node)
    except Exception:
        logger.exception("Could not tell the parent of sub-workflow %s that it ended; its tick will", workflow_id)


def cancel_children(step: Step, nodes: Sequence[WorkflowNode], reason: str) -> None:
    """Cancel the children of ``nodes`` in this transaction, locked after their parent (see above)."""
    for node in nodes:
        child = lock_workflow(child_id(node))
        if child is None or child.state in WORKFLOW_FINAL:
            continue
        child_step = Step(child)
        abort(child_step, WorkflowState.CANCELED, reason[:255])
        child_step.flush()

"""The engine: every decision about a workflow, made under its row lock.

Plain functions, no Celery task definitions: ``tasks.py`` and the worker-side
signal handlers in ``handlers.py`` are thin wrappers around them.

Rules that hold everywhere in this module:

* a decision (publish, fail, finish) is taken inside ``transaction.atomic()``
  after ``lock_workflow()``; completion events wait for the lock, the
  safety-net tick skips a locked workflow;
* every state change goes through ``transition_nodes`` / ``transition_workflow``:
  the state table is checked and the UPDATE is conditional on the old state;
* nothing talks to the broker or sends a signal before the commit: both are
  queued with ``transaction.on_commit``;
* the number of queries of one step does not depend on the size of the
  workflow, only on how many nodes the step itself changes.
"""

import logging
import traceback as tb_module
from collections import defaultdict
from datetime import timedelta
from functools import partial
from typing import Any

from celery.utils import uuid
from django.core.exceptions import ValidationError
from django.db import DataError, InterfaceError, OperationalError, connections, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from . import signals, waiting
from .conf import get_celery_app, settings
from .models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from .serialization import NotSerialisable, from_tree, size_of, storable_text, to_tree, unstorable
from .states import (
    NODE_ACTIVE,
    NODE_FAILED,
    NODE_FINAL,
    NODE_OK,
    NODE_TRANSITIONS,
    WORKFLOW_FINAL,
    WORKFLOW_TRANSITIONS,
    NodeKind,
    NodeState,
    TriggerRule,
    WorkflowState,
)

logger = logging.getLogger("django_dyrygent.engine")

#: Message header naming the workflow a published task belongs to.
HEADER = "dyrygent_workflow"

CALLBACK_KINDS = (NodeKind.ERROR_CALLBACK, NodeKind.FINALIZER)
# Nodes without a Celery task of their own: they succeed when their dependencies have.
JOIN_KINDS = (NodeKind.JOIN, NodeKind.MAP)
# States workers write without the workflow lock (task_prerun, task_retry).
WORKER_STATES = frozenset({NodeState.STARTED, NodeState.RETRY})
# Pseudo-target of _readiness: a fan-out node whose source succeeded expands.
EXPAND = "EXPAND"
# Fields loaded whenever the engine reasons about a node.
NODE_FIELDS = (
    "id", "workflow_id", "task_id", "task_name", "kind", "state", "trigger_rule",
    "waiting", "failed_dependencies", "signature", "publish_count", "fanout_size", "timeout",
)


# The workflow counter each final node state adds to (all other final states: nodes_failed).
_OUTCOME_COUNTER = {NodeState.SUCCESS: "nodes_succeeded", NodeState.SKIPPED: "nodes_skipped"}


class TransitionNotAllowed(Exception):
    """The state table forbids this change."""


class ConcurrentTransition(Exception):
    """The row was not in the state the engine read: someone wrote it without the lock."""


# -- locking ---------------------------------------------------------------------------


def _connection():
    return connections[router.db_for_write(Workflow)]


#: Workflow columns of unbounded size the engine never reads under the lock. They are
#: loaded on access (options when a tick is scheduled, tasks_options by ``publish``
#: after commit), so a 10 MB custom_payload no longer costs every step its transfer.
LOCK_DEFERRED = ("custom_payload", "options", "tasks_options", "error")


def lock_workflow(pk, skip_locked=False):
    """Lock the workflow row for the current transaction and return it fresh.

    Returns None when the row does not exist or, with ``skip_locked``, when
    another transaction holds it. On SQLite (no row locks) the first statement
    is an UPDATE of the row: it takes the database write lock up front, so the
    busy timeout applies and the transaction never deadlocks on a lock upgrade.
    The large columns (``LOCK_DEFERRED``) are not loaded.
    """
    conn = _connection()
    if conn.vendor == "sqlite" or not conn.features.has_select_for_update:
        if not Workflow.objects.filter(pk=pk).update(lock_version=F("lock_version") + 1):
            return None
        return Workflow.objects.defer(*LOCK_DEFERRED).filter(pk=pk).first()
    options = {}
    if skip_locked and conn.features.has_select_for_update_skip_locked:
        options["skip_locked"] = True
    # PostgreSQL: FOR UPDATE, the one row lock that conflicts with the FOR KEY SHARE
    # every completion of the hot path (hotpath.py) and every worker report
    # (_simple_transition) takes first: a decision waits for the completions in
    # flight, later ones wait for the decision. Both take the workflow row before
    # any node row, so they cannot deadlock.
    return Workflow.objects.select_for_update(**options).defer(*LOCK_DEFERRED).filter(pk=pk).first()


def _chunks(items, size=None):
    if size is None:
        limit = _connection().features.max_query_params
        size = max(100, (limit or 20000) - 50)
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- one engine step -------------------------------------------------------------------


class Step:
    """What one locked transaction changes; flushed once, announced after commit."""

    def __init__(self, workflow):
        self.wf = workflow
        self.now = timezone.now()
        self.old_state = workflow.state
        self.counters = defaultdict(int)
        self.wf_fields = {}
        self.events = []
        self.node_changes = []
        self.wf_changes = []
        self.to_publish = []
        self.to_revoke = []
        self.to_terminate = []
        self.results = {}  # node id -> result known in memory
        self.finished = False
        # A finished workflow whose callbacks still run keeps its tick chain (see watch_callbacks).
        self.watch_callbacks = False
        self.tick_countdown = None  # set by _schedule_tick: send the next tick after commit

    # state changes -------------------------------------------------------------------

    def transition_nodes(self, nodes, target, reason="", **fields):
        """Move ``nodes`` to ``target``: checked against the table, conditional UPDATE.

        Returns the nodes moved. Workers record STARTED and RETRY without the
        workflow lock (see ``node_started``), so a node read as QUEUED may be
        STARTED by the time of the UPDATE: such a node is re-read and moved from
        its new state if the table allows it. A republish (QUEUED -> QUEUED) of a
        node that started meanwhile is simply dropped. Anything else that
        changed behind the lock raises ConcurrentTransition.
        """
        if not nodes:
            return []
        by_old = defaultdict(list)
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
        moved, stragglers = [], []
        for old, group in by_old.items():
            for chunk in _chunks(group):
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

    def _sort_out(self, chunk, old, target, updated):
        """After a short UPDATE: which nodes moved, which a worker moved first."""
        current = dict(
            WorkflowNode.objects.filter(pk__in=[n.pk for n in chunk]).values_list("pk", "state")
        )
        done, late = [], []
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

    def _record_node(self, node, old, new, reason):
        node.state = new
        if node.kind == NodeKind.TASK and (old in NODE_FINAL) != (new in NODE_FINAL):
            # Into a final state counts up; out of one (retry()) counts back down.
            final, step = (new, 1) if new in NODE_FINAL else (old, -1)
            self.counters["nodes_done"] += step
            self.counters[_OUTCOME_COUNTER.get(final, "nodes_failed")] += step
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

    def transition_workflow(self, target, reason="", **fields):
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

    def count(self, name):
        return getattr(self.wf, name) + self.counters.get(name, 0)

    # writing ------------------------------------------------------------------------

    def flush(self):
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
                conn = _connection()
                if conn.vendor == "postgresql":
                    waiting.notify_finished(conn, self.wf.pk, self.wf.state)
        if self.events and settings.EVENT_LOG:
            WorkflowEvent.objects.bulk_create(self.events, batch_size=1000)
        if self.to_publish:
            transaction.on_commit(partial(publish, self.wf.pk, None, self.to_publish))
        if self.to_revoke:
            transaction.on_commit(partial(revoke, self.to_revoke))
        if self.to_terminate:
            transaction.on_commit(partial(revoke, self.to_terminate, terminate=True))
        if self.tick_countdown is not None:
            # After the publish: the nodes are what the workers wait for.
            transaction.on_commit(partial(send_tick, self.wf.pk, None, self.tick_countdown))
        transaction.on_commit(self.announce)

    def announce(self):
        wf = self.wf
        for node, old, new in self.node_changes:
            signals.send(signals.node_state_changed, node=node, old_state=old, new_state=new)
        for old, new in self.wf_changes:
            signals.send(signals.workflow_state_changed, workflow=wf, old_state=old, new_state=new)
        published = [node for node, _args in self.to_publish if node.kind == NodeKind.TASK]
        if published:
            signals.send(signals.workflow_active_tick, workflow=wf, nodes=published)
        if self.finished:
            signals.send(signals.workflow_finished, workflow=wf)


# -- moving the graph ------------------------------------------------------------------


def _readiness(node):
    """What a PENDING node should become given its counters, or None to keep waiting."""
    rule = node.trigger_rule if node.kind == NodeKind.TASK else TriggerRule.ALL_SUCCESS
    if rule == TriggerRule.ALL_SUCCESS:
        if node.failed_dependencies:
            return NodeState.UPSTREAM_FAILED
        if not node.waiting:
            if node.kind == NodeKind.MAP and node.fanout_size is None:
                return EXPAND
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


def _apply_readiness(step, candidates):
    """Move every ready PENDING node on; return the nodes that became final (joins, skips, ...)."""
    decided = defaultdict(list)
    for node in candidates:
        if node.state == NodeState.PENDING:
            target = _readiness(node)
            if target is not None:
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
    return finals


def expand_fanout(step, fanout):
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


def _next_position(step):
    from django.db.models import Max

    return (WorkflowNode.objects.filter(workflow_id=step.wf.pk).aggregate(m=Max("position"))["m"] or 0) + 1


def queue_nodes(step, nodes, reason=""):
    """Mark nodes QUEUED now; they are published after commit with their call arguments."""
    if not nodes:
        return
    calls = _call_args(step, nodes)
    moved = step.transition_nodes(
        nodes, NodeState.QUEUED, reason=reason, queued_at=step.now,
        publish_count=F("publish_count") + 1,
    )
    for node in moved:
        step.to_publish.append((node, calls.get(node.pk, ())))


def _call_args(step, nodes):
    """Arguments prepended to mutable signatures in pass-results mode (Celery canvas rules)."""
    if not step.wf.pass_results:
        return {}
    mutable = [n for n in nodes if n.kind == NodeKind.TASK and not n.signature.get("immutable")]
    if not mutable:
        return {}
    per_node = _dependency_results(step, mutable)
    calls = {}
    for node in mutable:
        results = per_node.get(node.pk)
        if results is None:
            continue
        results = [from_tree(r) for r in results]
        calls[node.pk] = (results[0],) if len(results) == 1 else (results,)
    return calls


def _dependency_results(step, nodes):
    """node id -> list of its dependencies' results, in dependency order."""
    edges = list(
        WorkflowEdge.objects.filter(node_id__in=[n.pk for n in nodes])
        .order_by("node_id", "position").values_list("node_id", "dependency_id")
    )
    missing = {dep for _node, dep in edges if dep not in step.results}
    if missing:
        for chunk in _chunks(missing):
            step.results.update(
                WorkflowNode.objects.filter(pk__in=chunk).values_list("pk", "result")
            )
    out = defaultdict(list)
    for node_id, dep in edges:
        out[node_id].append(step.results.get(dep))
    return out


def settle(step, finished):
    """Propagate nodes that just became final to their dependents, level by level.

    Each level costs a constant number of queries: one to read the dependents
    through the edge table, one UPDATE per distinct counter change, and one
    UPDATE per target state. Levels only continue through joins, skips and
    upstream failures, so a normal completion takes one or two levels.
    """
    frontier = [n for n in finished if n.state in NODE_FINAL]
    while frontier:
        ok = {n.pk for n in frontier if n.state in NODE_OK}
        rows = (
            WorkflowEdge.objects.filter(dependency_id__in=[n.pk for n in frontier])
            .select_related("node")
            .only("node_id", "dependency_id", *("node__" + f for f in NODE_FIELDS if f != "id"))
        )
        dependents = {}
        deltas = defaultdict(lambda: [0, 0])
        for edge in rows:
            node = dependents.setdefault(edge.node_id, edge.node)
            deltas[node.pk][0] += 1
            if edge.dependency_id not in ok:
                deltas[node.pk][1] += 1
        groups = defaultdict(list)
        for pk, (done, failed) in deltas.items():
            groups[(done, failed)].append(pk)
            node = dependents[pk]
            node.waiting -= done
            node.failed_dependencies += failed
        for (done, failed), pks in groups.items():
            change = {"waiting": F("waiting") - done}
            if failed:
                change["failed_dependencies"] = F("failed_dependencies") + failed
            for chunk in _chunks(pks):
                WorkflowNode.objects.filter(pk__in=chunk).update(**change)
        frontier = _apply_readiness(step, dependents.values())


def release_ready(step):
    """Queue every PENDING node whose rule is already satisfied (start, retry, safety net)."""
    candidates = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk, state=NodeState.PENDING)
        .exclude(kind__in=CALLBACK_KINDS)
        .filter(Q(waiting=0) | Q(failed_dependencies__gt=0))
        .only(*NODE_FIELDS)
        .order_by("position")
    )
    finals = _apply_readiness(step, candidates)
    settle(step, finals)


def maybe_finish(step):
    """End the workflow when every task node is final."""
    wf = step.wf
    if wf.state != WorkflowState.RUNNING or step.count("nodes_done") < step.count("nodes_total"):
        return
    if step.count("nodes_failed"):
        finish(step, WorkflowState.FAILURE, "some nodes did not succeed")
    else:
        finish(step, WorkflowState.SUCCESS)


def finish(step, target, reason="", error=""):
    fields = {"finished_at": step.now, "next_tick_at": None}
    if error:
        fields["error"] = error
    step.transition_workflow(target, reason=reason, **fields)
    step.finished = True
    callbacks = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk, kind__in=CALLBACK_KINDS,
                                    state=NodeState.PENDING)
        .only(*NODE_FIELDS).order_by("position")
    )
    run, skip = [], []
    for node in callbacks:
        wanted = node.kind == NodeKind.FINALIZER or target in (WorkflowState.FAILURE, WorkflowState.ERROR)
        (run if wanted else skip).append(node)
    step.transition_nodes(skip, NodeState.SKIPPED, reason=f"workflow ended {target}")
    queue_nodes(step, run, reason=f"workflow ended {target}")
    if run:
        step.watch_callbacks = True
        _schedule_tick(step)


def watch_callbacks(step):
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


def _schedule_tick(step):
    """Keep exactly one chain of countdown ticks per active workflow.

    A tick reschedules itself only when it is the one that was due (or none
    is due, e.g. the first tick, or the scheduled one was lost): an extra
    tick (admin "tick now", a retry, a duplicate message) arriving before the
    due time leaves the chain to the pending one instead of starting another.
    """
    wf = step.wf
    if wf.state not in (WorkflowState.INITIAL, WorkflowState.RUNNING) and not step.watch_callbacks:
        return
    interval = float(settings.TICK_INTERVAL)
    due = wf.next_tick_at
    tolerance = _tick_tolerance()
    if due is None or due <= step.now + tolerance:
        step.wf_fields["next_tick_at"] = wf.next_tick_at = step.now + timedelta(seconds=interval)
        step.tick_countdown = interval


# -- entry points ------------------------------------------------------------------------


def start(step):
    wf = step.wf
    step.transition_workflow(
        WorkflowState.RUNNING, started_at=step.now,
        deadline=wf.deadline or step.now + timedelta(seconds=float(settings.MAX_PROCESSING_TIME)),
    )
    release_ready(step)
    maybe_finish(step)


def tick(workflow_id, scheduled=True):
    """The safety net: start, reconcile lost events, enforce the deadline, finish.

    Takes the lock with ``skip_locked``: a workflow someone else is advancing is
    left to them (a scheduled tick still keeps the tick chain alive).
    Returns a short word saying what happened, for logs and commands.

    A tick that raises is rolled back and counted; after
    DYRYGENT_MAX_ENGINE_ERRORS consecutive failures the engine gives up and
    ends the workflow ERROR instead of retrying it forever.
    """
    try:
        return _tick(workflow_id, scheduled)
    except (OperationalError, InterfaceError):
        raise  # the database, not the workflow: callers retry on a fresh connection (db.run)
    except Exception as exc:
        logger.exception("Tick of workflow %s failed", workflow_id)
        return _engine_error(workflow_id, exc)


def _engine_error(workflow_id, exc):
    detail = storable_text("".join(tb_module.format_exception(type(exc), exc, exc.__traceback__)))
    with transaction.atomic():
        wf = lock_workflow(workflow_id)
        if wf is None or wf.state in WORKFLOW_FINAL:
            return "error"
        step = Step(wf)
        step.counters["engine_errors"] += 1
        limit = settings.MAX_ENGINE_ERRORS
        if step.count("engine_errors") >= limit:
            abort(step, WorkflowState.ERROR, "the engine gave up",
                  f"{limit} consecutive ticks failed; the last one:\n{detail}")
        else:
            step.wf_fields["error"] = f"Tick failed ({step.count('engine_errors')} in a row):\n{detail}"
            _schedule_tick(step)
        step.flush()
    return "error"


def _tick(workflow_id, scheduled):
    with transaction.atomic():
        wf = lock_workflow(workflow_id, skip_locked=True)
        if wf is None:
            busy = Workflow.objects.filter(pk=workflow_id).values_list("state", "next_tick_at").first()
        else:
            busy = None
            step = Step(wf)
            step.counters["ticks"] += 1
            if wf.engine_errors:
                step.wf_fields.update(engine_errors=0, error="")
            if wf.state == WorkflowState.INITIAL:
                start(step)
            elif wf.state == WorkflowState.RUNNING:
                if wf.deadline and wf.deadline <= step.now:
                    abort(step, WorkflowState.ERROR, "deadline exceeded",
                          f"Workflow still running at its deadline {wf.deadline.isoformat()}")
                else:
                    enforce_timeouts(step)
                    reconcile(step)
                    release_ready(step)
                    maybe_finish(step)
            elif wf.next_tick_at is not None:  # finished, callbacks still being watched
                watch_callbacks(step)
            _schedule_tick(step)
            step.flush()
    if wf is None:
        if busy is None:
            logger.warning("Tick for unknown workflow %s ignored", workflow_id)
            return "missing"
        state, due = busy
        if scheduled and (state in (WorkflowState.INITIAL, WorkflowState.RUNNING) or due is not None):
            _retry_busy_tick(workflow_id, due)
        logger.debug("Workflow %s is locked by another worker; tick skipped", workflow_id)
        return "busy"
    return wf.state


def _tick_tolerance():
    return timedelta(seconds=min(1.0, float(settings.TICK_INTERVAL) / 2))


def _retry_busy_tick(workflow_id, due):
    """A scheduled tick found the workflow locked: try again shortly, but only if it was the due one.

    Only the chain's due tick (``next_tick_at`` reached, or none scheduled)
    must survive, or the chain would break when the lock holder is not a tick
    (a completion) and never reschedules. Any other tick (an extra one from
    "tick now", a retry, a duplicate message, a burst of ticks) is dropped:
    re-sending those made busy ticks multiply (50 threads ticking one
    workflow produced 40,306 tick tasks). The retry comes after the
    tolerance, not a whole interval: if the holder was a tick it has moved
    ``next_tick_at`` on meanwhile and the retry dies, otherwise it runs.
    """
    tolerance = _tick_tolerance()
    if due is not None and due > timezone.now() + tolerance:
        return
    send_tick(workflow_id, None, tolerance.total_seconds())


def _locked_step(workflow_id, action):
    """Run ``action(step)`` under the workflow lock (waiting for it) and flush."""
    with transaction.atomic():
        wf = lock_workflow(workflow_id)
        if wf is None:
            logger.warning("Workflow %s does not exist (%s ignored)", workflow_id, action.__name__)
            return None
        step = Step(wf)
        result = action(step)
        step.flush()
    return result


def _node_for_event(step, task_id):
    node = (
        WorkflowNode.objects.filter(task_id=task_id, workflow_id=step.wf.pk).only(*NODE_FIELDS).first()
    )
    if node is None:
        logger.info("Task %s is not a node of workflow %s (retried node?); ignored", task_id, step.wf.pk)
    return node


def _encode_result(result):
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


def _finish_node(step, node, target, **fields):
    step.transition_nodes([node], target, **fields)
    if node.kind in CALLBACK_KINDS:
        return
    settle(step, [node])
    maybe_finish(step)


def _fail_unstorable(workflow_id, task_id, exc, what):
    """The database refused a value of this node's outcome: fail this node alone, saying why."""
    error = storable_text(
        f"The {what} of this task could not be stored, so the node is failed: "
        f"{type(exc).__name__}: {exc}"
    )
    logger.error("Workflow %s: %s", workflow_id, error)

    def refused(step):
        node = _node_for_event(step, task_id)
        if node is None or _ignore(node, NodeState.FAILURE):
            return None
        _finish_node(step, node, NodeState.FAILURE, error=error, reason=f"{what} not storable")
        return node

    return _locked_step(workflow_id, refused)


# What the database raises for a value it cannot hold (psycopg: DataError; a string
# the driver cannot encode: UnicodeEncodeError, a ValueError).
VALUE_REFUSED = (DataError, ValueError)


def node_succeeded(workflow_id, task_id, result):
    """A worker reports that the node's task returned ``result``.

    A value the database refuses although ``_encode_result`` accepted it
    fails this node with the database's message: one value never stalls the
    workflow or ends it ERROR.
    """

    def succeeded(step):
        node = _node_for_event(step, task_id)
        if node is None or _ignore(node, NodeState.SUCCESS):
            return None
        value, problem = _encode_result(result)
        if problem:
            _finish_node(step, node, NodeState.FAILURE, error=problem, reason="result not storable")
            return node
        step.results[node.pk] = value
        _finish_node(step, node, NodeState.SUCCESS, result=value, error="")
        return node

    try:
        return _locked_step(workflow_id, succeeded)
    except VALUE_REFUSED as exc:
        return _fail_unstorable(workflow_id, task_id, exc, "result")


def node_failed(workflow_id, task_id, exception=None, traceback="", reason="task raised"):
    """A worker reports that the node's task raised (its retries, if any, are exhausted)."""
    error = _format_error(exception, traceback)

    def failed(step):
        node = _node_for_event(step, task_id)
        if node is None or _ignore(node, NodeState.FAILURE):
            return None
        _finish_node(step, node, NodeState.FAILURE, error=error, reason=reason)
        return node

    try:
        return _locked_step(workflow_id, failed)
    except VALUE_REFUSED as exc:
        return _fail_unstorable(workflow_id, task_id, exc, "error")


def unknown_task_error(name, hostname="a worker"):
    """The sentence a node gets when no worker has its task (signal receiver and reconcile alike)."""
    return (
        f"No worker knows the task {name!r}: {hostname} received it, found no task registered "
        "under that name and discarded the message. Check the task name and that the worker "
        "imports its module (autodiscover_tasks() or CELERY_IMPORTS), then retry the workflow."
    )


def _stored_exception(result):
    """A failure as the result backend stores it ({'exc_type': ..., 'exc_message': ...}), as a sentence."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return repr(result)
    message = result.get("exc_message")
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(part) for part in message)
    if result["exc_type"] == "NotRegistered":
        return unknown_task_error(str(message).strip("'\""))
    return f"{result['exc_type']}: {message}"


def node_not_run(workflow_id, task_id, error, reason="task not registered"):
    """A worker dropped the node's message without running it (unknown task name, undecodable message).

    Celery only logs this and discards the message; without this report the
    node would sit QUEUED until DYRYGENT_REQUEUE_AFTER and be republished to
    the same fate. ``error`` is the sentence shown to the user.
    """
    return node_failed(workflow_id, task_id, traceback=error, reason=reason)


def node_revoked(workflow_id, task_id, reason="revoked"):
    def revoked(step):
        node = _node_for_event(step, task_id)
        if node is None or _ignore(node, NodeState.CANCELED):
            return None
        _finish_node(step, node, NodeState.CANCELED, reason=reason)
        return node

    return _locked_step(workflow_id, revoked)


def _ignore(node, target):
    if target in NODE_TRANSITIONS[node.state]:
        return False
    logger.info("Node %s of workflow %s is %s; late %s report ignored",
                node.task_id, node.workflow_id, node.state, target)
    return True


def _format_error(exception, traceback):
    """Exception and traceback as stored: NUL and lone surrogates escaped, never refused."""
    if exception is None:
        return storable_text(traceback or "")
    head = "".join(tb_module.format_exception_only(type(exception), exception)).strip()
    if traceback and head not in traceback:
        return storable_text(f"{head}\n\n{traceback}")
    return storable_text(traceback or head)


def node_started(workflow_id: Any, task_id: str, hostname: str = "", pid: int | None = None) -> WorkflowNode | None:
    """A worker is about to run the node's task (task_prerun): ``hotpath.node_started``.

    One conditional UPDATE, no event row (``started_at`` is the record), no
    workflow lock; ``hostname`` / ``pid`` name the worker (its main process)
    for the liveness sweep. None when the node is not runnable.
    """
    from . import hotpath

    return hotpath.node_started(workflow_id, task_id, hostname, pid)


def node_retrying(workflow_id, task_id, reason=""):
    return _simple_transition(
        workflow_id, task_id, NodeState.RETRY, error=storable_text(str(reason or ""))[:10000],
        retries=F("retries") + 1,
    )


# Which states a worker-reported state is written from, most likely first.
_WORKER_SOURCES = {
    NodeState.STARTED: (NodeState.QUEUED, NodeState.RETRY, NodeState.STARTED),
    NodeState.RETRY: (NodeState.STARTED, NodeState.QUEUED),
}


def _simple_transition(workflow_id, task_id, target, **fields):
    """Record RETRY (STARTED: ``hotpath.node_started``): a conditional UPDATE, without the workflow lock.

    These changes decide nothing, and taking the lock for them doubled the
    lock traffic of every node. An engine step that meanwhile read the node
    in its old state re-reads it (``Step.transition_nodes``). On PostgreSQL the
    workflow row is taken FOR KEY SHARE first (shared with completions, waiting
    for the engine's FOR UPDATE); on SQLite the UPDATE comes first and takes
    the write lock. Other databases take the workflow lock.
    """
    conn = _connection()
    if conn.vendor not in ("postgresql", "sqlite"):
        return _locked_simple_transition(workflow_id, task_id, target, **fields)
    with transaction.atomic():
        if conn.vendor == "postgresql":
            # The event row's foreign key takes KEY SHARE on the workflow row, which
            # conflicts with the engine's FOR UPDATE (lock_workflow): take it before
            # the node row, in the engine's lock order, or a cancel waiting for this
            # node while this waits for the cancel would deadlock.
            with conn.cursor() as cursor:
                cursor.execute(
                    f"SELECT 1 FROM {Workflow._meta.db_table} WHERE id = %s FOR KEY SHARE", [workflow_id]
                )
        old = None
        for source in _WORKER_SOURCES[target]:
            if WorkflowNode.objects.filter(
                task_id=task_id, workflow_id=workflow_id, state=source
            ).update(state=target, **fields):
                old = source
                break
        if old is None:
            logger.info("Workflow %s: %s report for task %s ignored (node gone, final or "
                        "moved on)", workflow_id, target, task_id)
            return None
        node = WorkflowNode.objects.filter(task_id=task_id).only(*NODE_FIELDS).first()
        if settings.EVENT_LOG:
            WorkflowEvent.objects.create(
                workflow_id=workflow_id, node_id=node.pk, old_state=old, new_state=target,
                created_at=timezone.now(),
            )
        transaction.on_commit(
            partial(signals.send, signals.node_state_changed, node=node, old_state=old, new_state=target)
        )
    return node


def _locked_simple_transition(workflow_id, task_id, target, **fields):
    def change(step):
        node = _node_for_event(step, task_id)
        if node is None or _ignore(node, target):
            return None
        step.transition_nodes([node], target, **fields)
        return node

    return _locked_step(workflow_id, change)


# -- reconciliation ----------------------------------------------------------------------


def enforce_timeouts(step):
    """Handle STARTED/RETRY nodes past their ``timeout_at``; their tasks are revoked (terminate).

    A node with attempts left (``max_attempts``) is published again under a
    fresh task id, so a late report of the abandoned run is ignored; the others
    fail with "timed out".
    """
    late = list(
        WorkflowNode.objects.filter(
            workflow_id=step.wf.pk, state__in=[NodeState.STARTED, NodeState.RETRY],
            timeout_at__lt=step.now,
        ).only(*NODE_FIELDS, "attempts", "max_attempts", "previous_task_ids")
    )
    if not late:
        return
    step.to_terminate.extend(n.task_id for n in late)
    rerun_or_fail(
        step, late, lambda n: n.max_attempts, "timed out",
        lambda n, runs: f"Timed out: no outcome {n.timeout.total_seconds():g}s after the task started"
                        + (f" (attempt {n.attempts} of {runs})" if runs > 1 else ""),
    )


def _fresh_run(step, node, **fields):
    """Fields that publish ``node`` again under a new task id (a late report of the old one is ignored)."""
    return dict(
        fields, task_id=uuid(), previous_task_ids=[*(node.previous_task_ids or []), node.task_id],
        queued_at=step.now, started_at=None, timeout_at=None, worker_hostname="", worker_pid=None,
        publish_count=F("publish_count") + 1,
    )


def rerun_or_fail(step, nodes, runs_allowed, why, error):
    """Publish each node again (fresh task id, one more attempt) while it has runs left, else fail it.

    ``runs_allowed(node)`` is how many runs the node gets in all; ``error(node,
    runs)`` the message of the failure once they are used. Nodes need
    ``attempts`` and ``previous_task_ids`` loaded.
    """
    again = [n for n in nodes if n.attempts < runs_allowed(n)]
    failed = [n for n in nodes if n.attempts >= runs_allowed(n)]
    calls = _call_args(step, again)
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


def republish(step, nodes, reason):
    """Publish QUEUED nodes whose message was lost again, under a fresh task id (not a new attempt)."""
    calls = _call_args(step, nodes)
    for node in nodes:
        moved = step.transition_nodes([node], NodeState.QUEUED, reason=reason, **_fresh_run(step, node))
        step.to_publish.extend((m, calls.get(m.pk, ())) for m in moved)


def _result_backend(app):
    from celery.backends.base import DisabledBackend

    backend = app.backend
    return None if isinstance(backend, DisabledBackend) else backend


def reconcile(step):
    """Repair nodes whose worker events were lost, from the result backend when there is one.

    Only nodes QUEUED (or STARTED/RETRY) for longer than DYRYGENT_REQUEUE_AFTER
    are looked at, at most DYRYGENT_RECONCILE_BATCH per tick.
    """
    cutoff = step.now - timedelta(seconds=float(settings.REQUEUE_AFTER))
    stale = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk, state__in=NODE_ACTIVE)
        # queued_at NULL on a QUEUED node: its publish failed (mark_unpublished); due now.
        .filter(Q(queued_at__lt=cutoff) | Q(state=NodeState.QUEUED, queued_at__isnull=True))
        .only(*NODE_FIELDS, "queued_at").order_by(F("queued_at").asc(nulls_first=True))[: settings.RECONCILE_BATCH]
    )
    if not stale:
        return
    app = get_celery_app()
    backend = _result_backend(app)
    metas = _backend_metas(backend, [n.task_id for n in stale]) if backend else {}
    republish, finished = [], []
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


def record_backend_outcome(step, node, meta, reason):
    """Record the SUCCESS / FAILURE the result backend stored for the node's task; True when it did.

    A FAILURE stored for a lost worker (``WorkerLostError``) or for a database
    error while storing the outcome is not the task's failure: the node is
    left to the liveness sweep, which re-runs it.
    """
    status = meta.get("status")
    if status == "SUCCESS":
        value, problem = _encode_result(meta.get("result"))
        if not problem:
            problem = _store_backend_success(step, node, value, reason)
        if problem:
            step.transition_nodes([node], NodeState.FAILURE, error=problem, reason=reason)
        return True
    if status == "FAILURE" and not _not_the_task_s_failure(meta):
        error = _format_error(None, meta.get("traceback") or _stored_exception(meta.get("result")))
        step.transition_nodes([node], NodeState.FAILURE, error=error, reason=reason)
        return True
    return False


def _not_the_task_s_failure(meta):
    text = f"{meta.get('result')!r} {meta.get('traceback') or ''}"
    return any(word in text for word in ("WorkerLostError", "OperationalError", "InterfaceError"))


def _store_backend_success(step, node, value, reason):
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


def _backend_metas(backend, task_ids):
    try:
        from django_celery_results.backends.database import DatabaseBackend
    except ImportError:  # pragma: no cover - django-celery-results is a dependency
        DatabaseBackend = ()
    if isinstance(backend, DatabaseBackend):
        from django_celery_results.models import TaskResult

        metas = {}
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


# -- operations ------------------------------------------------------------------------


def abort(step, target, reason, error=""):
    """End the workflow now (cancel, deadline): revoke what runs, cancel what waits."""
    open_nodes = list(
        WorkflowNode.objects.filter(workflow_id=step.wf.pk)
        .exclude(state__in=NODE_FINAL).exclude(kind__in=CALLBACK_KINDS)
        .only(*NODE_FIELDS)
    )
    step.to_revoke.extend(n.task_id for n in open_nodes if n.state in NODE_ACTIVE)
    step.transition_nodes(open_nodes, NodeState.CANCELED, reason=reason)
    finish(step, target, reason=reason, error=error)


def cancel(workflow_id, reason=""):
    """Cancel a workflow; returns False when it had already ended."""

    def do_cancel(step):
        if step.wf.state in WORKFLOW_FINAL:
            return False
        abort(step, WorkflowState.CANCELED, reason or "canceled")
        return True

    return bool(_locked_step(workflow_id, do_cancel))


def retry(workflow_id):
    """Re-run FAILURE / UPSTREAM_FAILED / CANCELED nodes with fresh task ids; resume.

    Successful nodes keep their results. Returns the number of nodes reset.
    """

    def do_retry(step):
        wf = step.wf
        if wf.state == WorkflowState.INITIAL:
            return 0
        nodes = {
            n.pk: n for n in WorkflowNode.objects.filter(workflow_id=wf.pk)
            .only(*NODE_FIELDS, "previous_task_ids", "attempts")
        }
        # Failed callbacks are re-armed too: they run again when the workflow ends again.
        reset = [n for n in nodes.values() if n.state in NODE_FAILED]
        if not reset:
            return 0
        # The engine's give-up count starts again, or one failed tick would end it ERROR at once.
        step.wf_fields["engine_errors"] = wf.engine_errors = 0
        step.transition_nodes(reset, NodeState.PENDING, reason="retry")
        for node in reset:
            if node.kind != NodeKind.JOIN:
                node.previous_task_ids = list(node.previous_task_ids or []) + [node.task_id]
                node.task_id = uuid()
                node.attempts += 1
        waiting = defaultdict(int)
        failed = defaultdict(int)
        for node_id, dep_id in WorkflowEdge.objects.filter(workflow_id=wf.pk).values_list(
            "node_id", "dependency_id"
        ):
            dep = nodes[dep_id]
            if dep.state not in NODE_FINAL:
                waiting[node_id] += 1
            elif dep.state in NODE_FAILED:
                failed[node_id] += 1
        for node in reset:
            node.waiting = waiting[node.pk]
            node.failed_dependencies = failed[node.pk]
            node.result = None
            node.error = ""
            for stamp in ("queued_at", "started_at", "finished_at"):
                setattr(node, stamp, None)
        WorkflowNode.objects.bulk_update(
            reset,
            ["task_id", "previous_task_ids", "attempts", "waiting", "failed_dependencies",
             "result", "error", "queued_at", "started_at", "finished_at"],
            batch_size=500,
        )
        if wf.state == WorkflowState.SUCCESS:
            # Only its callbacks can have failed (a finalizer): SUCCESS -> RUNNING is not a
            # transition, the outcome stands. The callbacks run again now, watched by ticks.
            queue_nodes(step, reset, reason="retry")
            step.watch_callbacks = True
            _schedule_tick(step)
            return len(reset)
        if wf.state != WorkflowState.RUNNING:
            step.transition_workflow(
                WorkflowState.RUNNING, reason="retry", finished_at=None, error="",
                deadline=step.now + timedelta(seconds=float(settings.MAX_PROCESSING_TIME)),
            )
        release_ready(step)
        maybe_finish(step)
        _schedule_tick(step)
        return len(reset)

    return _locked_step(workflow_id, do_retry) or 0


def skip(workflow_id, nodes, reason=""):
    """Mark PENDING or QUEUED nodes SKIPPED so their dependents may run.

    Refuses (ValidationError, nothing changed) when a node is in another state
    or one of its dependencies is neither done nor skipped in the same call.
    """
    wanted = {getattr(n, "pk", n) for n in nodes}

    def do_skip(step):
        targets = list(
            WorkflowNode.objects.filter(workflow_id=step.wf.pk, pk__in=wanted).only(*NODE_FIELDS)
        )
        if len(targets) != len(wanted):
            raise ValidationError(f"Some nodes to skip are not nodes of workflow {step.wf.pk}")
        problems = [
            f"node {n.task_id} is {n.state}; only PENDING or QUEUED nodes can be skipped"
            for n in targets if n.state not in (NodeState.PENDING, NodeState.QUEUED)
        ]
        deps = WorkflowEdge.objects.filter(node_id__in=wanted).values_list(
            "node_id", "dependency_id", "dependency__state", "dependency__task_id"
        )
        for node_id, dep_id, dep_state, dep_task in deps:
            if dep_state not in NODE_OK and dep_id not in wanted:
                problems.append(
                    f"node {node_id} depends on {dep_task}, which is {dep_state} (neither done nor skipped)"
                )
        if problems:
            raise ValidationError(problems)
        step.to_revoke.extend(n.task_id for n in targets if n.state == NodeState.QUEUED)
        try:
            step.transition_nodes(targets, NodeState.SKIPPED, reason=reason or "skipped by request")
        except TransitionNotAllowed:
            # A worker started a QUEUED node between the check above and the UPDATE
            # (STARTED is written without the workflow lock). Rolled back: nothing skipped.
            raise ValidationError(
                "A node to skip was started by a worker meanwhile; only PENDING or QUEUED "
                "nodes can be skipped (nothing was skipped)", code="started",
            ) from None
        settle(step, targets)
        maybe_finish(step)
        return len(targets)

    return _locked_step(workflow_id, do_skip) or 0


# -- talking to Celery (after commit only) ---------------------------------------------------


def _workflow_field(workflow_id, field):
    """One JSON column of the workflow, read after commit (the lock query defers it)."""
    return Workflow.objects.filter(pk=workflow_id).values_list(field, flat=True).first() or {}


def send_tick(workflow_id, options=None, countdown=None):
    """Send the tick task; None when the broker took it, else the exception (already logged).

    ``options`` None means the workflow's own tick options.

    The engine's ``countdown`` (the tick interval) replaces any countdown or
    eta in the options; without one (the first tick) the options' own apply.
    """
    from .tasks import tick as tick_task

    try:
        if options is None:
            options = _workflow_field(workflow_id, "options")
        options = dict(from_tree(options or {}))
        if countdown is not None:
            options.pop("eta", None)
            options["countdown"] = countdown
        tick_task.apply_async((str(workflow_id),), **options)
    except Exception as exc:
        # The sweeper (dyrygent_tick) picks the workflow up once its tick is overdue.
        logger.exception("Could not send the tick of workflow %s", workflow_id)
        return exc
    return None


def publish(workflow_id, tasks_options, entries):
    """Publish queued nodes with their own task ids and the workflow header.

    ``tasks_options`` None means the workflow's own (read here, after commit).
    A node whose message could not be sent is marked at once (``queued_at``
    cleared, state still QUEUED, see ``mark_unpublished``) so the next tick
    publishes it again, instead of after DYRYGENT_REQUEUE_AFTER. When the
    broker itself is unreachable the remaining nodes are not even tried (each
    attempt would wait for Celery's publish retries): they are marked too.
    """
    failed = []
    try:
        app = get_celery_app()
        if tasks_options is None:
            tasks_options = _workflow_field(workflow_id, "tasks_options")
        with app.producer_or_acquire() as producer:
            for i, (node, extra_args) in enumerate(entries):
                try:
                    _publish_one(app, producer, workflow_id, tasks_options, node, extra_args)
                except Exception as exc:
                    logger.exception("Could not publish node %s (%s) of workflow %s",
                                     node.task_id, node.task_name, workflow_id)
                    failed.append(node)
                    if _broker_unreachable(exc, producer):
                        failed.extend(n for n, _args in entries[i + 1:])
                        break
    except Exception:
        logger.exception("Could not publish %d node(s) of workflow %s", len(entries), workflow_id)
        done = {n.task_id for n in failed}
        failed.extend(n for n, _args in entries if n.task_id not in done)
    if failed:
        mark_unpublished(workflow_id, [n.task_id for n in failed])


def _broker_unreachable(exc, producer):
    connection = getattr(producer, "connection", None)
    return isinstance(exc, (BrokerUnreachable, *getattr(connection, "connection_errors", ())))


def _publish_one(app, producer, workflow_id, tasks_options, node, extra_args):
    sig_dict = node.signature or {}
    options = {**from_tree(tasks_options or {}), **from_tree(sig_dict.get("options", {}))}
    options["headers"] = {**options.get("headers", {}), HEADER: str(workflow_id)}
    if node.kind in CALLBACK_KINDS and not sig_dict.get("immutable"):
        extra_args = (str(workflow_id),)
    sig = app.signature(
        sig_dict["task"], args=from_tree(sig_dict.get("args", [])),
        kwargs=from_tree(sig_dict.get("kwargs", {})),
        immutable=sig_dict.get("immutable", False),
    )
    sig.apply_async(args=tuple(extra_args), task_id=node.task_id, producer=producer, **options)


def mark_unpublished(workflow_id, task_ids):
    """Record that these QUEUED nodes' messages were never sent: ``queued_at`` NULL.

    Its own short statement, after the failed publish: no lock (the state does
    not change, and the UPDATE is conditional on the node being QUEUED under
    that task id, so a node a worker started or a retry renamed is left
    alone). ``reconcile`` treats a QUEUED node without ``queued_at`` as due.
    """
    try:
        for chunk in _chunks(task_ids):
            WorkflowNode.objects.filter(
                workflow_id=workflow_id, task_id__in=chunk, state=NodeState.QUEUED
            ).update(queued_at=None)
    except Exception:
        # The node keeps its queued_at: republished after DYRYGENT_REQUEUE_AFTER instead.
        logger.exception("Could not mark %d unpublished node(s) of workflow %s", len(task_ids), workflow_id)


def revoke(task_ids, terminate=False):
    try:
        get_celery_app().control.revoke(list(task_ids), terminate=terminate)
    except Exception:
        logger.exception("Could not revoke %d task(s): %s", len(task_ids), ", ".join(list(task_ids)[:10]))


def sweep(stale_after=None, batch_size=100):
    """Tick active workflows whose scheduled tick is overdue; returns how many were ticked."""
    stale_after = settings.STALE_AFTER if stale_after is None else stale_after
    ids = list(Workflow.objects.stale(stale_after).order_by("next_tick_at").values_list("pk", flat=True)[:batch_size])
    done = 0
    for pk in ids:
        try:
            tick(pk, scheduled=True)
            done += 1
        except Exception:
            logger.exception("Sweeping workflow %s failed", pk)
    return done

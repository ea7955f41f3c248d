"""The engine's entry points: tick a workflow, cancel, retry or skip it, sweep overdue ticks.

``django_dyrygent.engine`` makes every decision about a workflow from its
rows. Plain functions, no Celery task definitions: ``tasks.py``, the admin,
the API, the management commands and the model methods (``wf.cancel()``,
``wf.model.tick()``) are thin wrappers around the functions here. The engine
is several modules, one concern each, lowest first:

* ``steps``: the workflow row lock and ``Step``, the one transaction every
  decision is, with the rules it enforces (state table, conditional UPDATEs,
  nothing sent before commit);
* ``decisions``: readiness, settling dependents, queueing, finishing;
* ``outcomes``: the worker's reports (started, succeeded, failed, ...);
* ``repair``: timeouts, lost messages and events, the result backend;
* ``messaging``: publishing, revoking and the tick, after commit;
* ``hotpath``: PostgreSQL's lock-free STARTED and success, whose
  statements are in ``sql`` with every other raw statement;
* ``db``: connections usable before each step, retried after a blip, and
  whether this process is a worker (the hot path's own connection);
* ``waiting``: ``Workflow.wait()``, woken by the commit that ends a workflow;
* ``slots``: concurrency keys, admitted under the key's lock, handed on when a slot frees;
* ``nodes``: the operator's actions on one node, and the reset ``retry`` shares with them;
* this module: the entry points, each one locked step.

Imports the models and the public leaf modules (states, signals, conf,
serialization); never ``admin/``, ``build/`` or ``worker/``
(``tests/unit/test_layering.py``).
"""

from __future__ import annotations

import logging
import traceback as tb_module
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet
from django.utils import timezone

from ..conf import settings
from ..models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from ..serialization import storable_text
from ..states import (
    CALLBACK_KINDS,
    NODE_FAILED,
    NODE_FINAL,
    NODE_OK,
    WAITING_KINDS,
    WORKFLOW_FINAL,
    WORKFLOW_RUNNABLE,
    NodeKind,
    NodeState,
    WorkflowState,
)
from . import messaging, outcomes, repair, slots, sql
from .decisions import (
    abort,
    maybe_finish,
    queue_nodes,
    ready_nodes,
    release_ready,
    schedule_tick,
    settle,
    start,
    swept_by_workers,
    tick_tolerance,
)
from .nodes import load_nodes, reset_nodes, run_again
from .sql import NODE_FIELDS
from .steps import Step, TransitionNotAllowed, lock_workflow, locked_step

# The engine's documented logger (docs/operations.md), shared by its modules.
logger = logging.getLogger("django_dyrygent.engine")


def tick(workflow_id: UUID | str, scheduled: bool = True) -> str:
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


def start_saved(workflow: Workflow, nodes: Sequence[WorkflowNode] | None = None) -> None:
    """Start a workflow whose rows were just written, in this process: its roots go out at commit.

    ``Workflow.apply_async`` calls it inside the transaction that saved the
    rows, with the nodes it wrote (``nodes``, their ids set). The start is
    the first tick's step (``decisions.start``: RUNNING, deadline, the roots
    queued, each through the state table's conditional UPDATE), run here in
    that same transaction from the rows in hand (``_start_in_hand``): no
    second transaction, no lock to wait for (nobody else sees the rows
    yet), no read of the nodes back. The roots are published at the commit:
    no tick message and no worker stand between the caller's commit and the
    first node. Without ``nodes``, or when the step fails (its savepoint is
    rolled back), the start runs after the commit in a locked step of its
    own (``_start_after_commit``). A start asked to wait (``eta`` or
    ``countdown`` in the workflow's options) is the first tick's, as before,
    and so is a start that fails there too (if the broker refuses the tick,
    the sweep starts the workflow).

    ``workflow.start_sent`` says, once the transaction has committed,
    whether the broker took the roots (or the first tick), ``start_error``
    why not. A root the broker refused stays QUEUED without ``queued_at``,
    which the next tick or sweep publishes again; the workflow is marked due
    so that comes at once.
    """
    options = workflow.options or {}
    if "eta" in options or "countdown" in options:
        transaction.on_commit(partial(_send_first_tick, workflow))
        return
    step = None
    if nodes is not None:
        try:
            with transaction.atomic():
                step = _start_in_hand(workflow, nodes)
        except Exception:
            logger.exception("Could not start workflow %s with its rows; it starts after the commit", workflow.pk)
            step = None
    if step is None:
        transaction.on_commit(partial(_start_after_commit, workflow))
        return
    # After the step's own publish (queued by its flush).
    transaction.on_commit(partial(_record_start, workflow, step))


def _start_in_hand(workflow: Workflow, nodes: Sequence[WorkflowNode]) -> Step:
    """``decisions.start`` on the rows this transaction just wrote; the candidates are those in hand.

    The workflow row is this transaction's own (inserted, not yet visible
    to anyone): no lock to take. The candidates are what ``ready_nodes``
    would read back: PENDING, not a callback, no dependency left to wait
    for or one already failed.
    """
    wf = workflow
    candidates = [
        n for n in nodes if n.state == NodeState.PENDING and n.kind not in CALLBACK_KINDS
        and (n.waiting == 0 or n.failed_dependencies > 0)
    ]
    candidates.sort(key=lambda n: n.position)
    step = Step(wf)
    step.tasks_options = wf.tasks_options or {}
    start(step, candidates)
    schedule_tick(step)
    step.flush()
    return step


def _start_after_commit(workflow: Workflow) -> None:
    """The start in a locked step of its own, after the commit; the first tick's if that fails."""
    try:
        step = locked_step(workflow.pk, _start_if_initial)
    except Exception:
        logger.exception("Could not start workflow %s in this process; its first tick will", workflow.pk)
        _send_first_tick(workflow)
        return
    # After the step's own publish: at once in autocommit, in order inside a caller's transaction.
    transaction.on_commit(partial(_record_start, workflow, step))


def _record_start(workflow: Workflow, step: Step | None) -> None:
    error = step.publish_error if step is not None else None
    workflow.start_sent, workflow.start_error = error is None, error
    if error is not None:
        _start_not_sent(workflow, error, (WorkflowState.RUNNING,))


def _start_if_initial(step: Step) -> Step:
    if step.wf.state == WorkflowState.INITIAL:
        start(step)
        schedule_tick(step)
    return step


def _send_first_tick(workflow: Workflow) -> None:
    """Leave the start to the first tick; record whether the broker took it."""
    error = messaging.send_tick(workflow.pk, workflow.options)
    workflow.start_sent, workflow.start_error = error is None, error
    if error is not None:
        _start_not_sent(workflow, error, (WorkflowState.INITIAL,))


def _start_not_sent(workflow: Workflow, error: Exception, states: tuple[str, ...]) -> None:
    """Say so, and make the workflow's tick overdue now, so the next sweep starts (or publishes) it.

    ``next_tick_at`` is when the scheduled tick is due, and a tick overdue by
    DYRYGENT_STALE_AFTER is taken as lost; this one is known lost, so there
    is nothing to wait for. A workflow that meanwhile moved on is left alone;
    a running one the workers' sweep times (no ``next_tick_at``) is found by
    its unpublished nodes instead.
    """
    logger.warning(
        "Could not send the start of workflow %s (%s); its rows are saved and the sweeper "
        "will start it once the broker is back.", workflow.pk, error,
    )
    overdue = timezone.now() - timedelta(seconds=float(settings.STALE_AFTER) + 1)
    chain = Q(state=WorkflowState.INITIAL) | Q(next_tick_at__isnull=False)
    try:
        Workflow.objects.filter(chain, pk=workflow.pk, state__in=states).update(next_tick_at=overdue)
    except Exception:  # the sweeper still finds it after DYRYGENT_STALE_AFTER
        logger.exception("Could not mark the start of workflow %s as lost", workflow.pk)


def _engine_error(workflow_id: UUID | str, exc: Exception) -> str:
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
            schedule_tick(step)
        step.flush()
    return "error"


def _tick(workflow_id: UUID | str, scheduled: bool) -> str:
    idle = _idle_tick(workflow_id) if scheduled else None
    if idle is not None:
        return idle
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
                    repair.enforce_timeouts(step)
                    repair.reconcile(step)
                    release_ready(step)
                    maybe_finish(step)
            elif wf.next_tick_at is not None:  # finished, callbacks still being watched
                repair.watch_callbacks(step)
            schedule_tick(step)
            step.flush()
    if wf is None:
        if busy is None:
            logger.warning("Tick for unknown workflow %s ignored", workflow_id)
            return "missing"
        state, due = busy
        timed_by_sweep = state == WorkflowState.RUNNING and swept_by_workers()
        if scheduled and not timed_by_sweep and (state in WORKFLOW_RUNNABLE or due is not None):
            _retry_busy_tick(workflow_id, due)
        logger.debug("Workflow %s is locked by another worker; tick skipped", workflow_id)
        return "busy"
    return wf.state


def _idle_tick(workflow_id: UUID | str) -> str | None:
    """A scheduled tick of a RUNNING workflow with nothing to do: two statements, no lock.

    Most ticks find nothing: progress is event driven. The locked tick takes
    ``FOR UPDATE``, which waits for the completions in flight and holds off
    the next ones, for several statements; a tick with nothing to do need not
    pay that, nor make the completions pay it. Here
    one unlocked SELECT asks what the locked tick would act on (the same
    querysets: ``repair.late_nodes``, ``repair.stale_nodes``,
    ``decisions.ready_nodes``, ``slots.admittable``, the deadline, the counters, a failed tick to
    clear); when none holds, a conditional UPDATE counts the tick and moves
    ``next_tick_at`` (only if this is the due tick, as ``schedule_tick``
    decides), and the next tick is sent. Returns None whenever anything is
    due, or the UPDATE finds the row changed: the locked tick decides then.

    Not locking is safe because an idle tick changes nothing but the tick
    chain: whatever becomes due after the SELECT (a commit in flight) is
    seen by the next tick, exactly as a locked tick that ran a moment
    earlier would have left it.
    """
    now = timezone.now()
    rows = _idle_check(Workflow.objects.filter(pk=workflow_id), now)
    return _tick_if_idle(rows[0], now) if rows else None


#: What ``_idle_check`` reads of each workflow, in order (``_tick_if_idle`` unpacks it).
_IDLE_FIELDS = ("pk", "state", "next_tick_at", "deadline", "engine_errors", "nodes_done", "nodes_total",
                "options", "late", "stale", "ready", "admit")


def _idle_check(workflows: QuerySet[Workflow], now: datetime, limit: int | None = None,
                due_only: bool = False) -> list[tuple[Any, ...]]:
    """One SELECT: each workflow's tick fields and whether a repair has anything to act on.

    ``due_only``: only the workflows ``_tick_if_idle`` would not call idle, filtered in SQL.
    """
    ref = OuterRef("pk")
    annotated = workflows.annotate(
        late=Exists(repair.late_nodes(ref, now)), stale=Exists(repair.stale_nodes(ref, now)),
        ready=Exists(ready_nodes(ref)), admit=Exists(slots.admittable(ref)),
    )
    if due_only:
        annotated = annotated.filter(
            Q(late=True) | Q(stale=True) | Q(ready=True) | Q(admit=True) | Q(engine_errors__gt=0)
            | Q(nodes_done__gte=F("nodes_total")) | Q(deadline__lte=now)
        )
    rows = annotated.values_list(*_IDLE_FIELDS)
    return list(rows if limit is None else rows[:limit])


def due_workflows(now: datetime, limit: int) -> list[tuple[Any, ...]]:
    """RUNNING workflows with something due, at most ``limit``, least ticked first: one SELECT.

    The sweep's question when it is the timer (``swept_by_workers``): the
    idle check of ``_idle_check`` for every running workflow at once,
    filtered in SQL, so the answer (and the sweep's work) is what is due,
    not how many workflows are live. Least ticked first: a workflow that
    stays due (a repair that cannot act yet) does not hold the others back.
    """
    running = Workflow.objects.filter(state=WorkflowState.RUNNING).order_by("ticks")
    return _idle_check(running, now, limit, due_only=True)


def _tick_if_idle(row: tuple[Any, ...], now: datetime) -> str | None:
    """Count the tick and move the chain on when ``row`` says nothing is due; None otherwise.

    A RUNNING workflow the sweep times (``swept_by_workers``) has no chain:
    its idle tick is counted and sends nothing; one still carrying a chain's
    ``next_tick_at`` goes to the locked tick, which clears it.
    """
    pk, state, due, deadline, errors, done, total, options, *work = row
    if state != WorkflowState.RUNNING or errors or any(work) or done >= total or (deadline and deadline <= now):
        return None
    if swept_by_workers():
        return str(state) if due is None and _count_idle_tick(pk, None, None) else None
    the_due_one = due is None or due <= now + tick_tolerance()
    interval = float(settings.TICK_INTERVAL)
    following = now + timedelta(seconds=interval) if the_due_one else None
    if not _count_idle_tick(pk, due, following):
        return None
    if the_due_one:  # at once in autocommit; at the commit inside a caller's transaction
        transaction.on_commit(partial(messaging.send_tick, pk, options, interval))
    return str(state)


def _count_idle_tick(pk: Any, due: datetime | None, following: datetime | None) -> bool:
    """Count the tick and move ``next_tick_at`` to ``following`` (None: keep it); False if not done.

    Conditional on what the idle check read (still RUNNING, ``next_tick_at``
    still ``due``): a step or another tick that moved the chain or ended the
    workflow meanwhile sends this one to the locked path. A locked step in
    progress is not waited for: the locked tick then says "busy" at once with
    its own ``SKIP LOCKED``, where waiting would stall the tick for as long
    as the step holds the row (the fault suite holds one for 30 s). On
    PostgreSQL the row is taken ``FOR KEY SHARE SKIP LOCKED`` in the UPDATE
    itself, so the completions' ``FOR KEY SHARE`` does not conflict and their
    counters' lock is only held to their commit. An UPDATE on MySQL/MariaDB
    cannot skip a locked row, so there a ``SELECT ... FOR UPDATE SKIP
    LOCKED`` of the id goes first, in a transaction that ends with the
    UPDATE; a server without SKIP LOCKED answers False (the locked tick).
    SQLite waits for the row like any step (one writer at a time, briefly).
    """
    conn = Workflow.write_connection()
    if conn.vendor == "postgresql":
        key = Workflow._meta.pk.get_db_prep_value(pk, conn)
        with conn.cursor() as cursor:
            cursor.execute(sql.idle_tick_sql(conn), [key, str(WorkflowState.RUNNING), due, following])
            return bool(cursor.rowcount)
    change: dict[str, Any] = {"ticks": F("ticks") + 1}
    if following is not None:
        change["next_tick_at"] = following
    row = Workflow.objects.filter(pk=pk, state=WorkflowState.RUNNING, next_tick_at=due)
    if conn.vendor == "sqlite":
        return bool(row.update(**change))
    if not conn.features.has_select_for_update_skip_locked:
        return False
    # No savepoint inside a caller's transaction: nothing here is worth rolling back alone.
    with transaction.atomic(using=conn.alias, savepoint=False):
        free = list(row.select_for_update(skip_locked=True).order_by().values_list("id", flat=True))
        return bool(free) and bool(row.update(**change))


def _retry_busy_tick(workflow_id: UUID | str, due: datetime | None) -> None:
    """A scheduled tick found the workflow locked: try again shortly, but only if it was the due one.

    Only the chain's due tick (``next_tick_at`` reached, or none scheduled)
    must survive, or the chain would break when the lock holder is not a tick
    (a completion) and never reschedules. Any other tick (an extra one from
    "tick now", a retry, a duplicate message, a burst of ticks) is dropped:
    re-sending every busy tick would multiply them (each re-sent tick can
    find the row busy again and be re-sent in turn). The retry comes after the
    tolerance, not a whole interval: if the holder was a tick it has moved
    ``next_tick_at`` on meanwhile and the retry dies, otherwise it runs.
    """
    tolerance = tick_tolerance()
    if due is not None and due > timezone.now() + tolerance:
        return
    messaging.send_tick(workflow_id, None, tolerance.total_seconds())


def cancel(workflow_id: UUID | str, reason: str | None = "") -> bool:
    """Cancel a workflow; returns False when it had already ended."""

    def do_cancel(step: Step) -> bool:
        if step.wf.state in WORKFLOW_FINAL:
            return False
        abort(step, WorkflowState.CANCELED, reason or "canceled")
        return True

    return bool(locked_step(workflow_id, do_cancel))


def pause(workflow_id: UUID | str, reason: str = "") -> bool:
    """Pause a RUNNING workflow; returns False when it was not running.

    Only publishing stops: a completion while paused is recorded and settles
    its dependents' counters (``decisions.holds`` keeps them PENDING), so
    resume releases them in one step. The tick chain stops too
    (``next_tick_at`` cleared): a paused workflow costs no tick, no sweep
    and no broker message, whatever its size. Repairs (node timeouts, lost
    events, dead workers) wait for resume; the deadline is suspended.
    """

    def do_pause(step: Step) -> bool:
        if step.wf.state != WorkflowState.RUNNING:
            return False
        step.transition_workflow(WorkflowState.PAUSED, reason=reason or "paused",
                                 paused_at=step.now, next_tick_at=None)
        # Its nodes waiting for a concurrency key give up their place in the queue until resume:
        # the waiters behind them may now be let in.
        for key, limit in WorkflowNode.objects.filter(
            workflow_id=step.wf.pk, state=NodeState.WAITING, concurrency_key__isnull=False,
        ).values_list("concurrency_key", "concurrency_limit"):
            step.freed_keys[str(key)] = max(step.freed_keys.get(str(key), 0), limit or 1)
        return True

    return bool(locked_step(workflow_id, do_pause))


def resume(workflow_id: UUID | str, reason: str = "") -> bool:
    """Resume a PAUSED workflow; returns False when it was not paused.

    One locked step: the deadline moves on by the time spent paused (users
    expect a pause not to eat their deadline), the nodes that became ready
    meanwhile are queued, the workflow ends if everything finished while it
    was paused, and the tick chain starts again.
    """

    def do_resume(step: Step) -> bool:
        wf = step.wf
        if wf.state != WorkflowState.PAUSED:
            return False
        fields: dict[str, Any] = {"paused_at": None}
        if wf.deadline and wf.paused_at:
            fields["deadline"] = wf.deadline + (step.now - wf.paused_at)
        step.transition_workflow(WorkflowState.RUNNING, reason=reason or "resumed", **fields)
        release_ready(step)
        maybe_finish(step)
        schedule_tick(step)
        return True

    return bool(locked_step(workflow_id, do_resume))


def signal(workflow_id: UUID | str, name: str, payload: Any = None) -> int:
    """Succeed the WAITING wait nodes named ``name`` with ``payload``; returns how many.

    One locked step: the nodes move WAITING -> SUCCESS with the payload as
    their result and their dependents are released, as after a task's
    success. A second signal finds nothing WAITING and returns 0, as does a
    signal for a node not reached yet (nothing is kept for later: a mailbox
    would have to be drained, bounded and cleaned, and waits here are
    approvals and callbacks that cannot come before their question was
    asked) or for a workflow that is not RUNNING or PAUSED. A payload the
    database cannot hold raises ValidationError and changes nothing.
    """
    return _complete_waits(workflow_id, {"task_name": name, "kind": NodeKind.WAIT}, payload, f"signal {name!r}")


def complete(workflow_id: UUID | str, node_id: int, result: Any = None) -> bool:
    """Succeed one WAITING wait (or timer: fired early) node with ``result``; False if not waiting."""
    return bool(_complete_waits(workflow_id, {"pk": node_id}, result, "completed"))


def _complete_waits(workflow_id: UUID | str, which: dict[str, Any], payload: Any, reason: str) -> int:
    """Succeed the WAITING wait nodes ``which`` selects with ``payload``, settle them; how many."""
    value = _storable_payload(payload)

    def do_complete(step: Step) -> int:
        if step.wf.state not in (WorkflowState.RUNNING, WorkflowState.PAUSED):
            return 0
        nodes = list(WorkflowNode.objects.filter(
            workflow_id=step.wf.pk, kind__in=WAITING_KINDS, state=NodeState.WAITING, **which,
        ).only(*NODE_FIELDS))
        moved = step.transition_nodes(nodes, NodeState.SUCCESS, reason=reason, result=value, error="")
        for node in moved:
            step.results[node.pk] = value
        settle(step, moved)
        maybe_finish(step)
        return len(moved)

    return locked_step(workflow_id, do_complete) or 0


def _storable_payload(payload: Any) -> Any:
    value, problem = outcomes.encode_result(payload)
    if problem:
        raise ValidationError(problem.replace("Result", "Payload", 1), code="bad_payload")
    return value


def adopt_child(workflow_id: UUID | str, node_id: int, child: Workflow) -> bool:
    """Save and start ``child`` (unsaved, its id the node's task id) if the node still waits for it.

    One locked step of the parent, so a cancel of the parent either comes
    first (the node is no longer WAITING: nothing is saved, False) or after
    (it finds the child and cancels it). A second start of the same node (a
    duplicate message) finds its child saved and returns False.
    """

    def do_adopt(step: Step) -> bool:
        node = _waiting_child_node(step, node_id, child.pk)
        if node is None or Workflow.objects.filter(pk=child.pk).exists():
            return False
        child.parent_node = node
        child.apply_async()
        WorkflowNode.objects.filter(pk=node.pk, state=NodeState.WAITING).update(
            reason=f"running sub-workflow {child.pk}"[:255])
        return True

    return bool(locked_step(workflow_id, do_adopt))


def fail_child_start(workflow_id: UUID | str, node_id: int, task_id: str, error: str) -> bool:
    """Fail a sub-workflow node whose child could not be built or saved, saying why; False if moot."""

    def do_fail(step: Step) -> bool:
        node = _waiting_child_node(step, node_id, task_id)
        if node is None:
            return False
        step.transition_nodes([node], NodeState.FAILURE, reason="its sub-workflow could not start",
                              error=storable_text(error))
        settle(step, [node])
        maybe_finish(step)
        return True

    return bool(locked_step(workflow_id, do_fail))


def _waiting_child_node(step: Step, node_id: int, task_id: Any) -> WorkflowNode | None:
    """The sub-workflow node, if it still waits for the child of this attempt (``task_id``)."""
    if step.wf.state in WORKFLOW_FINAL:
        return None
    return WorkflowNode.objects.filter(
        pk=node_id, workflow_id=step.wf.pk, kind=NodeKind.SUBWORKFLOW, state=NodeState.WAITING,
        task_id=str(task_id),
    ).only(*NODE_FIELDS).first()


#: Node kinds a running task may add to its workflow (``grow``): what ``add_celery_canvas`` makes.
GROWN_KINDS = (NodeKind.TASK, NodeKind.JOIN)


def grow(
    workflow_id: UUID | str, task_id: str, key: str, nodes: list[WorkflowNode],
    edges: list[tuple[int, int]], leaves: list[int], dependents_wait: bool = True,
) -> list[WorkflowNode]:
    """Add validated, unsaved ``nodes`` after the node running ``task_id``; returns the saved ``leaves``.

    ``edges`` are (node index, dependency index) pairs among ``nodes``, in
    dependency order; ``leaves`` the indexes of the nodes a follower waits
    for. One locked step, all or nothing:

    * the workflow must be RUNNING or PAUSED and the node not ended
      (ValidationError otherwise, nothing written);
    * ``key`` already used by this node (its task ran again: execution is
      at least once) returns the nodes it added then, and adds nothing;
    * the roots of the addition wait for the node, so they run once it
      succeeds (with its result under ``pass_results``) and never if it
      fails; with ``dependents_wait`` its PENDING dependents wait for the
      added leaves too. Neither can have been released: the node has not
      ended, and it holds this lock against its own completion;
    * the counters count the new nodes, so the workflow cannot end before them.
    """

    def do_grow(step: Step) -> list[WorkflowNode]:
        wf = step.wf
        if wf.state not in (WorkflowState.RUNNING, WorkflowState.PAUSED):
            raise ValidationError(
                f"Workflow {wf.pk} is {wf.state}: nodes can only be added to a running (or paused) workflow",
                code="workflow_ended",
            )
        node = WorkflowNode.objects.filter(workflow_id=wf.pk, task_id=task_id).only(*NODE_FIELDS).first()
        if node is None:
            raise ValidationError(
                f"No node of workflow {wf.pk} runs task {task_id} (a run replaced by a retry adds nothing)",
                code="unknown_node",
            )
        grown: dict[str, list[list[int]]] = dict((node.signature or {}).get("grown") or {})
        if key in grown:
            return list(WorkflowNode.objects.filter(workflow_id=wf.pk, position__in=grown[key][1])
                        .order_by("position"))
        if node.state in NODE_FINAL or node.kind != NodeKind.TASK:
            raise ValidationError(
                f"Node {node.task_id} is a {node.kind} node in state {node.state}: only a task node that has "
                "not ended can add nodes after itself (its dependents may already run)",
                code="node_ended",
            )
        _save_grown(step, node, nodes, edges, [nodes[i] for i in leaves] if dependents_wait else [])
        grown[key] = [[n.position for n in nodes], [nodes[i].position for i in leaves]]
        node.signature = {**(node.signature or {}), "grown": grown}
        WorkflowNode.objects.filter(pk=node.pk).update(signature=node.signature)
        step.events.append(WorkflowEvent(
            workflow_id=wf.pk, node_id=node.pk, old_state=node.state, new_state=node.state,
            reason=f"added {len(nodes)} node(s) as {key!r}"[:255], created_at=step.now,
        ))
        return [nodes[i] for i in leaves]

    return locked_step(workflow_id, do_grow) or []


def _save_grown(
    step: Step, node: WorkflowNode, nodes: list[WorkflowNode], edges: list[tuple[int, int]],
    leaves: list[WorkflowNode],
) -> None:
    """Insert ``nodes`` after ``node`` (see ``grow``), their edges, and edges from ``leaves`` to its dependents."""
    wf = step.wf
    base = (WorkflowNode.objects.filter(workflow_id=wf.pk).aggregate(m=Max("position"))["m"] or 0) + 1
    internal = [0] * len(nodes)
    for index, _dependency in edges:
        internal[index] += 1
    roots = [i for i, count in enumerate(internal) if not count]
    for i, new in enumerate(nodes):
        new.workflow_id, new.position, new.state = wf.pk, base + i, NodeState.PENDING
        new.waiting = internal[i] + (i in roots)
    WorkflowNode.objects.bulk_create(nodes, batch_size=1000)
    if any(n.pk is None for n in nodes):  # MySQL: no ids from bulk inserts
        ids = dict(WorkflowNode.objects.filter(task_id__in=[n.task_id for n in nodes]).values_list("task_id", "pk"))
        for new in nodes:
            new.pk = ids[new.task_id]
    for new in nodes:
        new._state.adding = False
    order: dict[int, int] = {}
    rows = [WorkflowEdge(workflow_id=wf.pk, node_id=nodes[i].pk, dependency_id=node.pk) for i in roots]
    for index, dependency in edges:
        order[index] = order.get(index, 0) + 1
        rows.append(WorkflowEdge(workflow_id=wf.pk, node_id=nodes[index].pk, dependency_id=nodes[dependency].pk,
                                 position=order[index] - 1))
    if leaves:
        waiting_after = list(
            WorkflowEdge.objects.filter(dependency_id=node.pk, node__state=NodeState.PENDING)
            .exclude(node__kind__in=CALLBACK_KINDS).values_list("node_id", flat=True)
        )
        last = dict(WorkflowEdge.objects.filter(node_id__in=waiting_after).values("node_id")
                    .annotate(m=Max("position")).values_list("node_id", "m"))
        for dependent in waiting_after:
            rows.extend(WorkflowEdge(workflow_id=wf.pk, node_id=dependent, dependency_id=leaf.pk,
                                     position=last[dependent] + 1 + j) for j, leaf in enumerate(leaves))
        WorkflowNode.objects.filter(pk__in=waiting_after, state=NodeState.PENDING).update(
            waiting=F("waiting") + len(leaves))
    WorkflowEdge.objects.bulk_create(rows, batch_size=1000)
    step.counters["nodes_total"] += sum(1 for n in nodes if n.kind == NodeKind.TASK)


def retry(workflow_id: UUID | str) -> int:
    """Re-run FAILURE / UPSTREAM_FAILED / CANCELED nodes with fresh task ids; resume.

    Successful nodes keep their results. Returns the number of nodes reset,
    internal joins not counted (they are not the user's nodes). A PAUSED
    workflow stays paused: its reset nodes run once it is resumed.
    """

    def do_retry(step: Step) -> int:
        wf = step.wf
        if wf.state == WorkflowState.INITIAL:
            return 0
        nodes = load_nodes(wf.pk)
        # Failed callbacks are re-armed too: they run again when the workflow ends again.
        reset = [n for n in nodes.values() if n.state in NODE_FAILED]
        if not reset:
            return 0
        reset_nodes(step, reset, nodes, reason="retry")
        counted = sum(1 for n in reset if n.kind != NodeKind.JOIN)
        if wf.state == WorkflowState.SUCCESS:
            # Only its callbacks can have failed (a finalizer): SUCCESS -> RUNNING is not a
            # transition, the outcome stands. The callbacks run again now, watched by ticks.
            step.wf_fields["engine_errors"] = wf.engine_errors = 0
            queue_nodes(step, reset, reason="retry")
            step.watch_callbacks = True
            schedule_tick(step)
            return counted
        if wf.state == WorkflowState.PAUSED:
            release_ready(step)  # settles joins and skips; the queueing waits for resume
            return counted
        if wf.state != WorkflowState.RUNNING:
            # A CANCELED ending skipped the error callback; it runs if this run ends FAILURE or ERROR.
            skipped = [n for n in nodes.values()
                       if n.kind == NodeKind.ERROR_CALLBACK and n.state == NodeState.SKIPPED]
            step.transition_nodes(skipped, NodeState.PENDING, reason="retry")
        run_again(step, reason="retry")
        return counted

    return locked_step(workflow_id, do_retry) or 0


def skip(workflow_id: UUID | str, nodes: Iterable[WorkflowNode | int], reason: str = "") -> int:
    """Mark PENDING or QUEUED nodes SKIPPED so their dependents may run.

    Refuses (ValidationError, nothing changed) when a node is in another state
    or one of its dependencies is neither done nor skipped in the same call.
    """
    wanted: set[Any] = {getattr(n, "pk", n) for n in nodes}  # node ids

    def do_skip(step: Step) -> int:
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

    return locked_step(workflow_id, do_skip) or 0


def sweep(stale_after: float | None = None, batch_size: int = 100) -> int:
    """Tick active workflows whose scheduled tick is overdue, or that have something due; how many.

    When the sweep is the timer of running workflows (``swept_by_workers``)
    it also asks, in one SELECT, which of them have anything due
    (``due_workflows``) and ticks those at once; the overdue ones are then
    the workflows that keep a chain (not started yet, callbacks watched).
    """
    stale_after = settings.STALE_AFTER if stale_after is None else stale_after
    # One SELECT for the whole batch (``_idle_check``): an overdue workflow with nothing
    # due then costs its conditional UPDATE only; the others get a whole tick.
    now = timezone.now()
    overdue = Workflow.objects.stale(stale_after)
    timer = swept_by_workers()
    if timer:
        overdue = overdue.exclude(state=WorkflowState.RUNNING)
    rows = _idle_check(overdue.order_by("next_tick_at"), now, batch_size)
    done = 0
    for row in rows:
        try:
            if _tick_if_idle(row, now) is None:
                tick(row[0], scheduled=True)
            done += 1
        except Exception:
            logger.exception("Sweeping workflow %s failed", row[0])
    for row in due_workflows(now, batch_size) if timer else ():
        try:
            tick(row[0], scheduled=False)
            done += 1
        except Exception:
            logger.exception("Sweeping workflow %s failed", row[0])
    return done

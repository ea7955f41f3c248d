"""Operator actions on one node: retry it and what follows it, mark it succeeded or skipped, cancel it.

Each is one locked step through the state table, so every change lands in
the event log with the reason given (who asked, from where). ``reset_nodes``
and ``resume`` are also what ``engine.retry`` (the whole workflow) is made
of: putting nodes back to PENDING and recounting what every waiting node
still waits for is one rule, whoever asks.
"""

from __future__ import annotations

from collections import defaultdict, deque
from datetime import timedelta
from typing import Any
from uuid import UUID

from celery.utils import uuid
from django.core.exceptions import ValidationError

from ..conf import settings
from ..models import WorkflowEdge, WorkflowNode
from ..states import NODE_ACTIVE, NODE_FAILED, NODE_FINAL, NodeKind, NodeState, WorkflowState
from .decisions import maybe_finish, release_ready, schedule_tick
from .outcomes import encode_result
from .sql import NODE_FIELDS
from .steps import Step, locked_step

#: Fields a reset writes besides the state.
RESET_FIELDS = ("task_id", "previous_task_ids", "attempts", "waiting", "failed_dependencies",
                "result", "error", "queued_at", "started_at", "finished_at")


def load_nodes(workflow_id: Any) -> dict[int, WorkflowNode]:
    """Every node of the workflow with what a reset and a recount read (one query)."""
    return {
        n.pk: n for n in WorkflowNode.objects.filter(workflow_id=workflow_id)
        .only(*NODE_FIELDS, "previous_task_ids", "attempts")
    }


def reset_nodes(step: Step, reset: list[WorkflowNode], nodes: dict[int, WorkflowNode], reason: str) -> None:
    """Put ``reset`` back to PENDING with fresh task ids and recount every PENDING node's dependencies.

    ``nodes`` is every node of the workflow (``load_nodes``), states as they
    are now: a PENDING node that waited on a reset node waits for it again,
    one that counted it as failed no longer does.
    """
    step.transition_nodes(reset, NodeState.PENDING, reason=reason)
    for node in reset:
        if node.kind != NodeKind.JOIN:
            node.previous_task_ids = list(node.previous_task_ids or []) + [node.task_id]
            node.task_id = uuid()
            node.attempts += 1
        node.result = None
        node.error = ""
        for stamp in ("queued_at", "started_at", "finished_at"):
            setattr(node, stamp, None)
    waiting: defaultdict[int, int] = defaultdict(int)
    failed: defaultdict[int, int] = defaultdict(int)
    for node_id, dep_id in WorkflowEdge.objects.filter(workflow_id=step.wf.pk).values_list("node_id", "dependency_id"):
        dep = nodes[dep_id]
        if dep.state not in NODE_FINAL:
            waiting[node_id] += 1
        elif dep.state in NODE_FAILED:
            failed[node_id] += 1
    reset_ids = {n.pk for n in reset}
    recounted: list[WorkflowNode] = []
    for node in nodes.values():
        if node.state != NodeState.PENDING or node.pk in reset_ids:
            continue
        if (node.waiting, node.failed_dependencies) != (waiting[node.pk], failed[node.pk]):
            node.waiting, node.failed_dependencies = waiting[node.pk], failed[node.pk]
            recounted.append(node)
    for node in reset:
        node.waiting, node.failed_dependencies = waiting[node.pk], failed[node.pk]
    WorkflowNode.objects.bulk_update(reset, list(RESET_FIELDS), batch_size=500)
    WorkflowNode.objects.bulk_update(recounted, ["waiting", "failed_dependencies"], batch_size=500)


def run_again(step: Step, reason: str) -> None:
    """The workflow runs again (from FAILURE, ERROR or CANCELED) and whatever is ready now is queued.

    A PAUSED workflow stays paused: what became ready waits for ``engine.resume``.
    """
    wf = step.wf
    step.wf_fields["engine_errors"] = wf.engine_errors = 0
    if wf.state == WorkflowState.PAUSED:
        release_ready(step)
        return
    if wf.state != WorkflowState.RUNNING:
        step.transition_workflow(
            WorkflowState.RUNNING, reason=reason, finished_at=None, error="",
            deadline=step.now + timedelta(seconds=float(settings.MAX_PROCESSING_TIME)),
        )
    release_ready(step)
    maybe_finish(step)
    schedule_tick(step)


def downstream(node: WorkflowNode, nodes: dict[int, WorkflowNode]) -> list[WorkflowNode]:
    """Every node that depends on ``node``, directly or not, in position order."""
    dependents: defaultdict[int, list[int]] = defaultdict(list)
    for node_id, dep_id in WorkflowEdge.objects.filter(workflow_id=node.workflow_id).values_list(
        "node_id", "dependency_id"
    ):
        dependents[dep_id].append(node_id)
    seen: set[int] = set()
    todo = deque(dependents[node.pk])
    while todo:
        pk = todo.popleft()
        if pk not in seen:
            seen.add(pk)
            todo.extend(dependents[pk])
    return sorted((nodes[pk] for pk in seen), key=lambda n: n.position)


def _target(step: Step, node_id: int, nodes: dict[int, WorkflowNode]) -> WorkflowNode:
    node = nodes.get(node_id)
    if node is None:
        raise ValidationError(f"Node {node_id} is not a node of workflow {step.wf.pk}.", code="not_found")
    if node.kind != NodeKind.TASK:
        raise ValidationError(
            f"Node {node.task_id} is a {NodeKind(node.kind).label.lower()} node; only task nodes are operated "
            "one by one (retry, skip or cancel the workflow instead).", code="kind",
        )
    if step.wf.state == WorkflowState.INITIAL:
        raise ValidationError(f"Workflow {step.wf.pk} has not started yet.", code="initial")
    return node


def retry_node(workflow_id: UUID | str, node_id: int, reason: str = "") -> int:
    """Run a failed, upstream-failed or canceled node again, and every node after it that did not succeed.

    Nodes downstream that succeeded or were skipped keep their outcome, as
    ``engine.retry`` keeps them. Returns the number of task nodes reset;
    raises ``ValidationError`` (nothing changed) for a node in another state.
    """
    reason = reason or "retried with what follows it"

    def do_retry(step: Step) -> int:
        nodes = load_nodes(step.wf.pk)
        node = _target(step, node_id, nodes)
        if node.state not in NODE_FAILED:
            raise ValidationError(
                f"Node {node.task_id} is {node.state}; only a FAILURE, UPSTREAM_FAILED or CANCELED node "
                "can be retried.", code="state",
            )
        if node.state == NodeState.UPSTREAM_FAILED:
            deps = WorkflowEdge.objects.filter(node_id=node.pk).values_list("dependency_id", flat=True)
            failed = [nodes[d] for d in deps if nodes[d].state in NODE_FAILED]
            if failed:  # it would be UPSTREAM_FAILED again at once
                raise ValidationError(
                    f"Node {node.task_id} did not run because {failed[0].task_id} is {failed[0].state}; "
                    "retry that node.", code="upstream",
                )
        reset = [node] + [n for n in downstream(node, nodes) if n.state in NODE_FAILED]
        reset_nodes(step, reset, nodes, reason)
        run_again(step, reason)
        return sum(1 for n in reset if n.kind != NodeKind.JOIN)

    return locked_step(workflow_id, do_retry) or 0


#: What a node may be marked as by an operator.
MARKS = (NodeState.SUCCESS, NodeState.SKIPPED)


def mark_node(
    workflow_id: UUID | str, node_id: int, target: str, result: Any = None, reason: str = "",
) -> int:
    """Mark a node SUCCESS (with ``result``) or SKIPPED without running it; what it held back may run.

    Accepted from QUEUED (its message is revoked), from FAILURE,
    UPSTREAM_FAILED and CANCELED, and from PENDING once every dependency has
    ended; a running node is refused (cancel it first). The nodes after it
    that were UPSTREAM_FAILED are put back to PENDING, so they run if
    nothing else failed before them. Returns how many task nodes that let go.
    """
    if target not in MARKS:
        raise ValueError(f"A node can be marked {' or '.join(MARKS)}, not {target!r}.")
    fields: dict[str, Any] = {}
    if target == NodeState.SUCCESS:
        # The rules of a task's own result: JSON, no NUL or lone surrogate (PostgreSQL refuses them, which was a
        # 500 of the API's mark found by fuzzing), within DYRYGENT_MAX_RESULT_BYTES.
        tree, problem = encode_result(result)
        if problem:
            raise ValidationError(problem, code="result")
        fields = {"result": tree, "error": ""}
    reason = reason or f"marked {target.lower()}"

    def do_mark(step: Step) -> int:
        nodes = load_nodes(step.wf.pk)
        node = _target(step, node_id, nodes)
        if node.state == NodeState.PENDING:
            deps = WorkflowEdge.objects.filter(node_id=node.pk).values_list("dependency_id", flat=True)
            unfinished = [nodes[d].task_id for d in deps if nodes[d].state not in NODE_FINAL]
            if unfinished:
                raise ValidationError(
                    f"Node {node.task_id} still waits for {', '.join(unfinished)}; mark it once they ended.",
                    code="waiting",
                )
        elif node.state == NodeState.QUEUED:
            step.to_revoke.append(node.task_id)
        elif node.state not in NODE_FAILED:
            raise ValidationError(
                f"Node {node.task_id} is {node.state}; a node can be marked while QUEUED, PENDING (its "
                "dependencies ended), FAILURE, UPSTREAM_FAILED or CANCELED.", code="state",
            )
        if node.state in NODE_FAILED:
            # Through PENDING, as the state table has it: the counters follow each step.
            step.transition_nodes([node], NodeState.PENDING, reason=reason)
        step.transition_nodes([node], target, reason=reason, **fields)
        held_back = [n for n in downstream(node, nodes) if n.state == NodeState.UPSTREAM_FAILED]
        reset_nodes(step, held_back, nodes, reason=f"a dependency was {reason}")
        run_again(step, reason)
        # Those that another failed dependency holds back still are UPSTREAM_FAILED again by now.
        return (
            WorkflowNode.objects.filter(pk__in=[n.pk for n in held_back], kind=NodeKind.TASK)
            .exclude(state=NodeState.UPSTREAM_FAILED).count()
        ) if held_back else 0

    return locked_step(workflow_id, do_mark) or 0


def cancel_node(workflow_id: UUID | str, node_id: int, reason: str = "") -> bool:
    """Cancel one node that has not ended (revoking its task); its dependents then follow their rules.

    Returns False when the node had already ended. Raises ``ValidationError``
    for a node that is not a task node.
    """
    reason = reason or "canceled"

    def do_cancel(step: Step) -> bool:
        nodes = load_nodes(step.wf.pk)
        node = _target(step, node_id, nodes)
        if node.state in NODE_FINAL or step.wf.state != WorkflowState.RUNNING:
            return False
        if node.state in NODE_ACTIVE:
            step.to_revoke.append(node.task_id)
        step.transition_nodes([node], NodeState.CANCELED, reason=reason)
        reset_nodes(step, [], nodes, reason)  # a recount: dependents now count it as failed
        release_ready(step)
        maybe_finish(step)
        return True

    return bool(locked_step(workflow_id, do_cancel))


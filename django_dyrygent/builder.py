"""Validate a draft workflow and save it (workflow, nodes, edges) in one transaction."""

import json
from collections import deque
from functools import partial

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction

from .serialization import NotSerialisable, to_tree
from .states import NodeKind

BULK_BATCH = 1000


def _json_error(value):
    """Payloads are stored with DjangoJSONEncoder: dates, UUIDs and Decimals are fine."""
    try:
        json.dumps(value, allow_nan=False, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _as_tree(value, describe, errors, verb="are"):
    """Arguments and options as Celery's JSON serializer would carry them, or an error."""
    try:
        return to_tree(value)
    except NotSerialisable as exc:
        errors.append(f"{describe} {verb} not JSON-serialisable: {exc}")
        return value


def _describe(node):
    if node.kind == NodeKind.JOIN:
        return f"join node #{node.position}"
    return f"node #{node.position} {node.task_name} (task id {node.task_id})"


def validate(workflow):
    """Raise ValidationError naming every offending node; touches no database row."""
    errors = []
    nodes = workflow._draft
    problem = _json_error(workflow.custom_payload)
    if problem:
        errors.append(f"Workflow custom_payload is not JSON-serialisable: {problem}")
    for field in ("options", "tasks_options"):
        setattr(workflow, field, _as_tree(getattr(workflow, field), f"Workflow {field}", errors, "is"))
    seen = {}
    members = {id(n) for n in nodes}
    for node in nodes:
        sig = node.signature or {}
        for part in ("args", "kwargs", "options"):
            if part in sig:
                sig[part] = _as_tree(sig[part], f"{_describe(node)}: {part}", errors)
        problem = _json_error(node.custom_payload)
        if problem:
            errors.append(f"{_describe(node)}: custom_payload is not JSON-serialisable: {problem}")
        if not node.task_id:
            errors.append(f"{_describe(node)}: empty task id")
        elif node.task_id in seen:
            errors.append(
                f"{_describe(node)}: duplicate task id, also used by {_describe(seen[node.task_id])}"
            )
        else:
            seen[node.task_id] = node
        for dep in node._draft_deps:
            if id(dep) not in members:
                errors.append(f"{_describe(node)}: depends on a node of another workflow ({dep!r})")
        if node.kind in (NodeKind.ERROR_CALLBACK, NodeKind.FINALIZER) and node._draft_deps:
            errors.append(f"{_describe(node)}: workflow callbacks cannot have dependencies")
    cycle = _find_cycle(nodes)
    if cycle:
        errors.append("Dependency cycle: " + " -> ".join(_describe(n) for n in cycle))
    if errors:
        raise ValidationError(errors)


def _find_cycle(nodes):
    """Kahn's algorithm; on failure walk the leftover nodes to name one cycle."""
    index = {id(n): n for n in nodes}
    indegree = {id(n): 0 for n in nodes}
    dependents = {id(n): [] for n in nodes}
    for node in nodes:
        for dep in node._draft_deps:
            if id(dep) in index:
                indegree[id(node)] += 1
                dependents[id(dep)].append(node)
    queue = deque(n for n in nodes if indegree[id(n)] == 0)
    done = 0
    while queue:
        node = queue.popleft()
        done += 1
        for child in dependents[id(node)]:
            indegree[id(child)] -= 1
            if indegree[id(child)] == 0:
                queue.append(child)
    if done == len(nodes):
        return None
    # Every leftover node has a leftover dependency: follow them until one repeats.
    node = next(n for n in nodes if indegree[id(n)] > 0)
    path, where = [], {}
    while id(node) not in where:
        where[id(node)] = len(path)
        path.append(node)
        node = next(d for d in node._draft_deps if id(d) in index and indegree[id(d)] > 0)
    cycle = path[where[id(node)]:]
    return list(reversed(cycle + [node]))


def save_and_start(workflow, options=None):
    from . import engine
    from .models import WorkflowEdge, WorkflowNode

    if options is not None:
        workflow.tasks_options = dict(options)
    validate(workflow)
    nodes = workflow._draft
    task_nodes = [n for n in nodes if n.kind == NodeKind.TASK]
    workflow.nodes_total = len(task_nodes)
    try:
        with transaction.atomic():
            workflow.save(force_insert=True)
            for node in nodes:
                node.workflow = workflow
                node.waiting = len(node._draft_deps)
            WorkflowNode.objects.bulk_create(nodes, batch_size=BULK_BATCH)
            if any(n.pk is None for n in nodes):
                # Backends that cannot return ids from a bulk insert (MySQL).
                ids = dict(workflow.nodes.values_list("task_id", "pk"))
                for node in nodes:
                    node.pk = ids[node.task_id]
            edges = [
                WorkflowEdge(workflow=workflow, node=node, dependency=dep, position=i)
                for node in nodes
                for i, dep in enumerate(node._draft_deps)
            ]
            WorkflowEdge.objects.bulk_create(edges, batch_size=BULK_BATCH)
            transaction.on_commit(partial(engine.send_tick, workflow.pk, workflow.options))
    except IntegrityError as exc:
        workflow._state.adding = True
        for node in nodes:
            node._state.adding = True
            node.pk = None
        taken = set(
            WorkflowNode.objects.filter(task_id__in=[n.task_id for n in nodes[:10000]])
            .values_list("task_id", flat=True)
        )
        if taken:
            raise ValidationError(
                [f"{_describe(n)}: task id already used by another workflow" for n in nodes if n.task_id in taken]
            ) from exc
        raise
    except BaseException:
        workflow._state.adding = True
        for node in nodes:
            node._state.adding = True
            node.pk = None
        raise
    for node in nodes:
        node._state.adding = False

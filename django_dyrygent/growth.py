"""Graphs that grow while they run: a node's task adds nodes to its own workflow.

Inside a task that runs as a node::

    from django_dyrygent.growth import extend

    @shared_task
    def split(day):
        parts = list_parts(day)                      # known only now
        extend("parts", group(handle.si(p) for p in parts))
        extend("report", notify.si(day), dependents_wait=False)

``extend`` takes what ``add_celery_canvas`` takes, validates it as
``apply_async`` does (``build.save.validate``: JSON, sizes, task names,
duplicate ids) and adds it in one locked step (``engine.grow``), all or
nothing: the added roots run once the calling node succeeds, and, unless
``dependents_wait=False``, the node's dependents wait for the added leaves
too. A key names the addition, per node: the task's body running again (at
least once execution: a lost worker, a retry) gets the nodes the first run
added instead of a second copy.
"""

from __future__ import annotations

from typing import Any

from celery import current_task
from celery.canvas import Signature
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from . import canvas as celery_canvas
from . import engine
from .build import save
from .engine.messaging import HEADER
from .models import Workflow, WorkflowNode

#: The longest key (it is kept in the node's signature, under ``grown``).
MAX_KEY_LENGTH = 100


def running_node() -> tuple[str, str]:
    """(workflow id, task id) of the node whose task runs in this thread; ValidationError outside one."""
    request = getattr(current_task, "request", None) if current_task else None
    workflow_id = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(HEADER)
    task_id = getattr(request, "id", None)
    if not workflow_id or not task_id:
        raise ValidationError(
            "extend() adds nodes after the node whose task is running; this is not a workflow node's task "
            "(pass node= to extend a workflow from elsewhere)", code="not_in_a_node",
        )
    return str(workflow_id), str(task_id)


def extend(
    key: str, canvas: Signature | dict[str, Any], *, dependents_wait: bool = True, node: WorkflowNode | None = None,
) -> list[WorkflowNode]:
    """Add ``canvas`` after the running node (or ``node``); returns the saved nodes a follower waits for.

    ``key`` names this addition among the node's (1 to 100 characters): the
    same key again returns the first call's nodes and adds nothing.
    ``dependents_wait``: the node's dependents wait for the added nodes too
    (a map whose items are known only now); False adds them beside the
    dependents ("when this finishes, also run that"), and the workflow
    still waits for them before it ends. Under ``pass_results`` the added
    roots receive the node's result, and a dependent that waits for the
    additions receives the list of its dependencies' results (the node's,
    then the added leaves'), as a chord body does.

    Raises ValidationError, nothing added: a workflow that is no longer
    running, a node that has ended, a canvas ``apply_async`` would refuse.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"extend() needs a key of 1 to {MAX_KEY_LENGTH} characters, got {key!r}",
                              code="bad_key")
    if node is not None:
        workflow_id, task_id = str(node.workflow_id), node.task_id
    else:
        workflow_id, task_id = running_node()
    shell = Workflow(name=f"addition {key!r} to workflow {workflow_id}")
    draft = shell.draft
    leaves = celery_canvas.add_canvas(draft, canvas)
    nodes = draft.nodes
    if not nodes:
        raise ValidationError("extend() was given an empty canvas: nothing to add", code="empty")
    save.validate(draft)
    index = {id(n): i for i, n in enumerate(nodes)}
    edges = [(i, index[id(dep)]) for i, n in enumerate(nodes) for dep in draft.dependencies_of(n)]
    others = [n for n in nodes if n.kind not in engine.GROWN_KINDS]
    if others:
        raise ValidationError(f"extend() adds tasks (signatures, chains, groups, chords), not {others[0].kind} nodes "
                              "(a link or link_error on a signature is one)", code="bad_kind")
    try:
        return engine.grow(workflow_id, task_id, key, nodes, edges, [index[id(n)] for n in leaves],
                           dependents_wait=dependents_wait)
    except IntegrityError:
        used = WorkflowNode.objects.filter(task_id__in=[n.task_id for n in nodes])
        taken = set(used.values_list("task_id", flat=True))
        raise ValidationError([f"task id {t} is already used by another node" for t in sorted(taken)]
                              or ["the database refused the new nodes"], code="duplicate_task_id") from None

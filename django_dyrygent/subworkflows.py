"""Build and start the child workflow of a sub-workflow node (``Workflow.add_subworkflow``).

The engine moves a reached sub-workflow node to WAITING and sends
``django_dyrygent.start_subworkflow`` with the node's id; that task (in
``tasks``) calls ``start`` here, in a worker, because building runs the
user's code (a catalogue definition's factory and form, or a factory
function), which the engine neither imports nor runs under a lock. The
child is saved and started by ``engine.adopt_child`` under its parent's
lock; anything that keeps it from starting (an unknown definition, bad
parameters, a factory that raises, a graph ``apply_async`` refuses, the
depth cap) fails the node with that message instead.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.canvas import Signature
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from . import engine, launch
from .catalogue import UnknownDefinition, registry
from .conf import settings
from .models import Workflow, WorkflowNode
from .states import NodeKind, NodeState

logger = logging.getLogger("django_dyrygent.engine")


class SubworkflowError(ValueError):
    """The child of a sub-workflow node cannot be built; the message says why (it becomes the node's error)."""


def depth(workflow_id: Any) -> int:
    """How many workflows ``workflow_id`` runs inside (0: a top-level workflow); one query per level.

    Stops one level past the cap: deeper than that is refused anyway.
    """
    levels = 0
    current = workflow_id
    while levels <= settings.MAX_SUBWORKFLOW_DEPTH:
        current = Workflow.objects.filter(pk=current).values_list("parent_node__workflow_id", flat=True).first()
        if current is None:
            return levels
        levels += 1
    return levels


def build(node: WorkflowNode) -> Workflow:
    """The unsaved child of ``node``, from its catalogue definition or factory and parameters."""
    source = (node.signature or {}).get("subworkflow") or {}
    params = source.get("params") or {}
    if "definition" in source:
        name = source["definition"]
        try:
            definition = registry.get(name)
        except UnknownDefinition:
            raise SubworkflowError(
                f"No catalogue definition is registered as {name!r} in this worker (its app's workflows.py "
                "was not imported, or the name is wrong)"
            ) from None
        try:
            child = launch.build(definition, launch.valid_form(definition, params))
        except launch.StartError as exc:
            raise SubworkflowError(str(exc)) from None
        return child
    try:
        factory = import_string(source.get("factory", ""))
    except ImportError as exc:
        raise SubworkflowError(f"Cannot import the sub-workflow factory {source.get('factory')!r}: {exc}") from None
    try:
        built = factory(**params)
    except Exception as exc:
        raise SubworkflowError(
            f"The sub-workflow factory {source['factory']} raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(built, Signature):
        # A canvas alone says nothing of results: it passes them as its parent does.
        child = Workflow(pass_results=Workflow.objects.filter(pk=node.workflow_id).values_list(
            "pass_results", flat=True).first() or False)
        child.add_celery_canvas(built)
        return child
    if isinstance(built, Workflow) and built._state.adding:
        return built
    raise SubworkflowError(
        f"The sub-workflow factory {source['factory']} returned {built!r:.200}; it must return an unsaved "
        "Workflow or a Celery signature/canvas"
    )


def start(node_id: int) -> str:
    """Build the child of sub-workflow node ``node_id`` and start it; a short word saying what happened.

    "started"; "moot" when the node no longer waits for a child (canceled,
    already started by a duplicate message); "failed" when the child could
    not be built or saved (the node is failed with the reason).
    """
    node = WorkflowNode.objects.filter(pk=node_id, kind=NodeKind.SUBWORKFLOW).first()
    if node is None or node.state != NodeState.WAITING:
        return "moot"
    try:
        levels = depth(node.workflow_id) + 1
        if levels > settings.MAX_SUBWORKFLOW_DEPTH:
            raise SubworkflowError(
                f"Sub-workflow {node.task_name!r} would run {levels} levels deep, over "
                f"DYRYGENT_MAX_SUBWORKFLOW_DEPTH={settings.MAX_SUBWORKFLOW_DEPTH} (does a definition run itself?)"
            )
        child = build(node)
        child.id = node.task_id
        for child_node in child.draft.nodes:  # made with the id the factory's Workflow() drew
            child_node.workflow = child
        child.name = child.name or node.task_name
        return "started" if engine.adopt_child(node.workflow_id, node.pk, child) else "moot"
    except (SubworkflowError, ValidationError) as exc:
        why = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        logger.warning("Sub-workflow node %s of workflow %s cannot start: %s", node.pk, node.workflow_id, why)
        engine.fail_child_start(node.workflow_id, node.pk, node.task_id, why)
        return "failed"

"""The unsaved graph of a workflow: nodes and edges held in memory until ``apply_async`` saves them.

Both doors build one ``Draft``: the Django model ``Workflow``
(``add_celery_canvas``, ``add_signature``, ...) and the celery-dyrygent
compatible ``django_dyrygent.workflows.Workflow``. The draft owns the graph
(which node waits for which, which nodes are skipped before start); the node
objects it hands out only carry their own field values. It is data only:
``canvas`` turns Celery canvas into draft nodes and ``build.save`` validates
and saves a draft, functions both doors call with the draft.

A leaf: it imports only ``states``. The model imports it, so the node class
is handed in (``node_factory``) by whoever creates the draft.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError

from .states import NodeKind

if TYPE_CHECKING:
    from celery.canvas import Signature

#: A ``models.Workflow`` and a ``models.WorkflowNode``: not imported, not even for types (see above).
WorkflowModel = Any
Node = Any

#: ``add_wait``'s "no default given" (a timed-out wait then fails).
NO_DEFAULT: Any = object()

#: Node kinds a follower may depend on (callbacks run after the workflow, not inside it).
GRAPH_KINDS = (
    NodeKind.TASK, NodeKind.JOIN, NodeKind.MAP, NodeKind.WAIT, NodeKind.TIMER, NodeKind.BRANCH, NodeKind.SUBWORKFLOW,
)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a graph is built or saved (none of it is garbage).

    Each node brings a model instance and a few dicts: allocating thousands
    of them sets off full collections, each walking every object of the
    process, while none of them can be garbage. Cycles made
    meanwhile are collected after; a collector someone else disabled stays off.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_dependencies(draft: Draft, dependencies: Iterable[Node] | None) -> list[Node]:
    """The nodes as a list; refuses any that is not a node of this unsaved draft."""
    deps = list(dependencies or [])
    for dep in deps:
        if not draft.owns(dep):
            raise ValidationError(
                f"Dependency {dep!r} does not belong to workflow {draft.label} "
                "(nodes can only depend on nodes of the same unsaved workflow).",
                code="foreign_dependency",
            )
    return deps


class Draft:
    """Nodes and edges of one unsaved workflow.

    Nodes are tracked by identity: an unsaved Django model instance has no
    primary key, so it cannot be hashed, and two nodes may (wrongly) share a
    task id until validation says so.
    """

    def __init__(self, workflow: WorkflowModel, node_factory: Callable[..., Node]) -> None:
        self.workflow = workflow
        self.node_factory = node_factory
        self.nodes: list[Node] = []
        self._dependencies: dict[int, list[Node]] = {}  # id(node) -> [node, ...] in the order given
        self.skipped: list[Node] = []  # nodes marked done before start (celery-dyrygent's skip_tasks)
        self._sources: dict[int, Signature] = {}  # id(node) -> the Celery signature it was made from
        # Nodes made with their dependencies only depend on older nodes, so no cycle is
        # possible until an edge is added afterwards (add_dependency); validation then looks.
        self.may_have_cycle = False

    @property
    def label(self) -> str:
        """How error messages name the workflow."""
        return self.workflow.name or str(self.workflow.pk)

    # -- the graph ------------------------------------------------------------------------

    def _check_open(self) -> None:
        """Once saved, the graph is rows: edges and nodes are fixed."""
        if not self.workflow._state.adding:
            raise ValidationError(
                f"Cannot change the graph: workflow {self.workflow.pk} was already applied; "
                "build a new Workflow.",
                code="already_applied",
            )

    def new_node(
        self, dependencies: Iterable[Node] = (), source: Signature | None = None, **fields: Any
    ) -> Node:
        self._check_open()
        node = self.node_factory(position=len(self.nodes), **fields)
        self.nodes.append(node)
        self._dependencies[id(node)] = list(dependencies)
        if source is not None:
            self._sources[id(node)] = source
        return node

    def source_of(self, node: Node) -> Signature | None:
        """The user's Celery signature a node was made from (None for joins)."""
        return self._sources.get(id(node))

    def owns(self, node: object) -> bool:
        # Every node of this draft is alive (held in self.nodes), so no other
        # live object can share one of their ids.
        return id(node) in self._dependencies

    def dependencies_of(self, node: Node) -> list[Node]:
        return self._dependencies[id(node)]

    def add_dependency(self, node: Node, other: Node) -> None:
        self._check_open()
        check_dependencies(self, [node, other])
        deps = self._dependencies[id(node)]
        if not any(d is other for d in deps):
            deps.append(other)
            self.may_have_cycle = True

    def leaves(self) -> list[Node]:
        """Nodes nobody depends on (callbacks excluded)."""
        has_dependents = {id(dep) for deps in self._dependencies.values() for dep in deps}
        return [n for n in self.nodes if id(n) not in has_dependents and n.kind in GRAPH_KINDS]

    def task_dependencies(self, node: Node) -> list[Node]:
        """The task nodes ``node`` waits for, seen through internal join nodes."""
        out: list[Node] = []
        queue, seen = deque(self._dependencies[id(node)]), set()
        while queue:
            dep = queue.popleft()
            if id(dep) in seen:
                continue
            seen.add(id(dep))
            if dep.kind == NodeKind.JOIN:
                queue.extendleft(reversed(self._dependencies.get(id(dep), [])))
            else:
                out.append(dep)
        return out

    def skip(self, nodes: Sequence[Node]) -> None:
        """Mark nodes done before start; ``build.save`` saves them SKIPPED."""
        self._check_open()
        check_dependencies(self, nodes)
        for node in nodes:
            if not any(s is node for s in self.skipped):
                self.skipped.append(node)

    def is_skipped(self, node: Node) -> bool:
        return any(s is node for s in self.skipped)

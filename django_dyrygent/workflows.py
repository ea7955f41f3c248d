"""celery-dyrygent's builder, saved into rows: ``from django_dyrygent.workflows import Workflow``.

The second door onto the one draft (``django_dyrygent.draft``): each object
here wraps the Django model ``Workflow`` and its draft, and offers
celery-dyrygent 0.8's public methods and inspection (``wf.nodes[task_id]``,
``node.id``, ``node.dependencies`` as a dict of task ids). ``apply_async``
saves the rows and the engine runs them. What differs, and why, is listed in
docs/migrating-from-celery-dyrygent.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from numbers import Real
from typing import Any, ClassVar, ParamSpec, TypeVar, cast

from celery import Task
from celery import exceptions as celery_exceptions
from celery.canvas import Signature, _chain, group
from celery.canvas import chord as _chord  # the class itself at run time; the stubs name it chord
from django.core.exceptions import ValidationError
from django.utils import timezone

from . import canvas as celery_canvas
from . import models
from .draft import Draft
from .signals import COMPAT_HOOKS, Handler, connect_compat_handler
from .states import NodeKind, WorkflowState
from .tasks import register_workflow_processor

__all__ = [
    "Workflow", "WorkflowException", "WorkflowNode", "WorkflowResult", "WorkflowTimeout",
    "register_workflow_processor",
]

P = ParamSpec("P")
T = TypeVar("T")
#: celery-dyrygent's dependency options (kept, not used), by task id.
DependencyOptions = dict[str, Any] | None


class WorkflowException(ValidationError):
    """celery-dyrygent's error; also a ``ValidationError``, so either ``except`` catches it."""


class WorkflowTimeout(celery_exceptions.TimeoutError, TimeoutError):
    """``WorkflowResult.wait`` timed out (catchable as Celery's or Python's TimeoutError)."""


def _compat(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``call``; a ValidationError from the shared draft comes out as WorkflowException."""
    try:
        return call(*args, **kwargs)
    except WorkflowException:
        raise
    except ValidationError as exc:
        raise WorkflowException(exc.error_list if hasattr(exc, "error_list") else exc.messages) from exc


class WorkflowNode:
    """One signature of a workflow, seen the celery-dyrygent way.

    Nodes made by ``Workflow.add_*`` wrap a node of the workflow's draft, and
    the draft owns their edges. A node made by hand, ``WorkflowNode(sig)``,
    belongs to no workflow (as in celery-dyrygent, where only add_signature
    puts nodes in a workflow) and keeps its dependencies itself.
    """

    def __init__(self, signature: Signature) -> None:
        if not isinstance(signature, Signature):
            raise WorkflowException(
                f"WorkflowNode() takes a Celery signature, got {type(signature).__name__}"
            )
        if signature.id is None:
            raise WorkflowException(f"Signature '{signature}' has no ID, it is not frozen")
        self.signature = signature
        self._row: models.WorkflowNode | None = None
        self._draft: Draft | None = None
        self._own: dict[str, DependencyOptions] = {}  # task id -> options, for a node outside any workflow
        self._options: dict[str, DependencyOptions] = {}  # options given to add_dependency, by task id
        self._custom_payload: dict[str, Any] | None = {}
        self._saved_dependencies: dict[str, DependencyOptions] | None = None

    @classmethod
    def _wrap(
        cls, row: models.WorkflowNode, signature: Signature, draft: Draft | None = None,
        dependencies: dict[str, DependencyOptions] | None = None,
    ) -> WorkflowNode:
        node = cls.__new__(cls)
        node.signature = signature
        node._row, node._draft = row, draft
        node._own, node._options, node._custom_payload = {}, {}, None
        node._saved_dependencies = dependencies
        return node

    @property
    def id(self) -> str:
        if self._row is not None:
            return self._row.task_id
        return cast(str, self.signature.id)  # __init__ refused a signature without an id

    @property
    def custom_payload(self) -> dict[str, Any] | None:
        return self._row.custom_payload if self._row is not None else self._custom_payload

    @custom_payload.setter
    def custom_payload(self, value: dict[str, Any] | None) -> None:
        if self._row is not None:
            self._row.custom_payload = value
        else:
            self._custom_payload = value

    @property
    def model(self) -> models.WorkflowNode | None:
        """The ``django_dyrygent.models.WorkflowNode`` behind this node (unsaved before apply_async)."""
        return self._row

    @property
    def dependencies(self) -> dict[str, DependencyOptions]:
        """{task id: options} of the tasks this node waits for (internal join nodes seen through)."""
        if self._saved_dependencies is not None:
            return dict(self._saved_dependencies)
        if self._draft is None:
            return dict(self._own)
        deps = self._draft.task_dependencies(self._row)
        return {dep.task_id: self._options.get(dep.task_id) for dep in deps}

    def add_dependency(self, other_node: WorkflowNode, options: dict[str, Any] | None = None) -> None:
        if not isinstance(other_node, WorkflowNode):
            raise WorkflowException(f"add_dependency() takes a WorkflowNode, got {type(other_node).__name__}")
        if options is not None and not isinstance(options, dict):
            raise WorkflowException(f"Dependency options must be a dict, got {type(options).__name__}")
        if other_node.id in self.dependencies:
            raise WorkflowException(f"Dependency '{other_node.signature}' already added")
        if self._saved_dependencies is not None:
            raise WorkflowException(f"Node {self.id} was already applied; its edges are fixed")
        if self._draft is None and other_node._draft is None:
            self._own[other_node.id] = options
            return
        if self._draft is None or other_node._draft is not self._draft:
            raise WorkflowException(
                f"Nodes {self.id} and {other_node.id} do not belong to the same unsaved workflow"
            )
        _compat(self._draft.add_dependency, self._row, other_node._row)
        self._options[other_node.id] = options

    def to_dict(self) -> dict[str, Any]:
        """celery-dyrygent's node dict (the signature object itself, as there)."""
        return {
            "id": self.id, "signature": self.signature,
            "dependencies": self.dependencies, "custom_payload": self.custom_payload,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowNode:
        """A node outside any workflow, from ``to_dict()`` (celery-dyrygent's node from_dict)."""
        node = cls(Signature(data["signature"]))
        node._own = dict(data.get("dependencies") or {})
        node.custom_payload = dict(data.get("custom_payload") or {})
        return node

    def __repr__(self) -> str:
        return f"<WorkflowNode {self.id} {self.signature.task or '(no task name)'}>"


class WorkflowResult:
    """What ``Workflow.apply_async`` returns: wait for the workflow like for celery-dyrygent's processor."""

    def __init__(self, workflow: models.Workflow) -> None:
        self.model = workflow
        self.id = str(workflow.pk)

    @property
    def start_sent(self) -> bool | None:
        """None until the transaction commits; then whether the start reached the broker."""
        return self.model.start_sent

    @property
    def start_error(self) -> BaseException | None:
        return self.model.start_error

    @property
    def state(self) -> str | None:
        """The state read from the database now (None once the workflow was deleted)."""
        return models.Workflow.objects.filter(pk=self.model.pk).values_list("state", flat=True).first()

    def ready(self) -> bool:
        return self.state in (WorkflowState.SUCCESS, WorkflowState.FAILURE, WorkflowState.ERROR,
                              WorkflowState.CANCELED)

    def wait(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1, **_celery_kwargs: Any
    ) -> str:
        """Block until the workflow ends; return its final state.

        Like the peer's processor result, ERROR raises (WorkflowException) when
        ``propagate``; FAILURE returns normally. ``TimeoutError`` after ``timeout``.
        """
        try:
            state = self.model.wait(timeout=timeout, interval=interval)
        except TimeoutError as exc:
            raise WorkflowTimeout(str(exc)) from None
        if state == WorkflowState.ERROR and propagate:
            raise WorkflowException(f"Workflow {self.id} ended ERROR: {self.model.error}")
        return state

    get = wait

    def __repr__(self) -> str:
        return f"<WorkflowResult {self.id}>"


#: Nodes celery-dyrygent would show in ``wf.nodes``: the ones that run a task.
_VISIBLE_KINDS = (NodeKind.TASK, NodeKind.MAP)


class Workflow:
    """celery-dyrygent's ``Workflow``, built into a draft and run from rows.

    ``Workflow(options)`` sets the tick task's options, as the peer's
    processor options; other model fields (``name=``, ``pass_results=``,
    ``deadline=``, ...) may be given by keyword.
    """

    max_processing_time: float = int(timedelta(days=7).total_seconds())
    workflow_processor_task: ClassVar[Task[Any, Any] | None] = None

    def __init__(self, options: dict[str, Any] | None = None, **fields: Any) -> None:
        self._row = models.Workflow(options=dict(options or {}), **fields)
        #: None for a view of saved rows (``from_model``), which never builds.
        self._draft: Draft | None = self._row.draft
        self._nodes: dict[str, WorkflowNode] = {}  # task id -> WorkflowNode, in draft order
        self._saved_nodes: dict[str, WorkflowNode] | None = None  # a view's nodes, read once
        self._wrapped: dict[int, WorkflowNode] = {}  # id(row) -> WorkflowNode
        self._seen = 0  # how many draft nodes _nodes covers
        self._saved = False
        self.retry_policy: list[str | float] = ["random", 10, 30]
        self.result: WorkflowResult | None = None

    @classmethod
    def from_model(cls, row: models.Workflow) -> Workflow:
        """A read-only view of a saved workflow (what hooks receive)."""
        wf = cls.__new__(cls)
        wf._row, wf._draft, wf._saved = row, None, True
        wf._nodes, wf._saved_nodes, wf._wrapped, wf._seen = {}, None, {}, 0
        wf.retry_policy, wf.result = ["random", 10, 30], None
        return wf

    # -- what celery-dyrygent exposes ----------------------------------------------------------

    @property
    def model(self) -> models.Workflow:
        """The ``django_dyrygent.models.Workflow`` row (unsaved until apply_async)."""
        return self._row

    @property
    def id(self) -> str:
        return str(self._row.pk)

    @property
    def state(self) -> str:
        return self._row.state

    @property
    def custom_payload(self) -> dict[str, Any]:
        return self._row.custom_payload

    @custom_payload.setter
    def custom_payload(self, value: dict[str, Any]) -> None:
        self._row.custom_payload = value

    @property
    def workflow_options(self) -> dict[str, Any]:
        return self._row.options

    @property
    def tasks_options(self) -> dict[str, Any]:
        return self._row.tasks_options

    @property
    def nodes(self) -> dict[str, WorkflowNode]:
        """{task id: WorkflowNode} of every task node, in the order they were added."""
        if self._draft is None:  # a view of saved rows: read them once
            if self._saved_nodes is None:
                self._saved_nodes = self._load_saved_nodes()
            return self._saved_nodes
        if not self._saved:
            self._index_new_nodes(self._draft)
        return self._nodes

    def _index_new_nodes(self, draft: Draft) -> None:
        """Add the draft's nodes added since the last call (canvas may add several at once)."""
        rows = draft.nodes
        for row in rows[self._seen:]:
            if row.kind in _VISIBLE_KINDS:
                self._nodes.setdefault(row.task_id, self._node_for(draft, row))
        self._seen = len(rows)

    def _node_for(self, draft: Draft, row: models.WorkflowNode) -> WorkflowNode:
        node = self._wrapped.get(id(row))
        if node is None:
            signature = draft.source_of(row) or _signature_of(row)
            node = self._wrapped[id(row)] = WorkflowNode._wrap(row, signature, draft)
        return node

    def _load_saved_nodes(self) -> dict[str, WorkflowNode]:
        rows = {n.pk: n for n in self._row.nodes.all()}
        deps: dict[int, list[int]] = {pk: [] for pk in rows}
        for node_id, dep_id in models.WorkflowEdge.objects.filter(workflow=self._row).order_by(
            "node_id", "position"
        ).values_list("node_id", "dependency_id"):
            deps[node_id].append(dep_id)

        def tasks_behind(pk: int, seen: set[int]) -> Iterator[str]:
            for dep in deps[pk]:
                if dep not in seen:
                    seen.add(dep)
                    if rows[dep].kind == NodeKind.JOIN:
                        yield from tasks_behind(dep, seen)
                    else:
                        yield rows[dep].task_id

        return {
            row.task_id: WorkflowNode._wrap(
                row, _signature_of(row), dependencies={t: None for t in tasks_behind(pk, set())}
            )
            for pk, row in sorted(rows.items(), key=lambda item: item[1].position)
            if row.kind in _VISIBLE_KINDS
        }

    def iterate_dependencies(self) -> Iterator[tuple[WorkflowNode, WorkflowNode | None]]:
        """(node, dependency node or None) pairs, sorted by task id, as celery-dyrygent yields them."""
        nodes = self.nodes
        for node in sorted(nodes.values(), key=lambda n: n.id):
            deps = node.dependencies
            for dep in sorted(deps):
                yield node, nodes[dep]
            if not deps:
                yield node, None

    def is_success(self) -> bool:
        return self._row.state == WorkflowState.SUCCESS

    # -- building ------------------------------------------------------------------------------

    def _require_unsaved(self, what: str) -> Draft:
        """The draft to build with; refused once applied (a view of saved rows has none)."""
        if self._saved or self._draft is None:
            raise WorkflowException(f"Cannot {what}: workflow {self.id} was already applied")
        return self._draft

    def _rows(self, nodes: Iterable[WorkflowNode] | None) -> list[models.WorkflowNode]:
        rows = []
        for node in nodes or ():
            if not isinstance(node, WorkflowNode) or node._draft is not self._draft or node._row is None:
                raise WorkflowException(f"Dependency {node!r} is not a node of this workflow")
            rows.append(node._row)
        return rows

    def _as_nodes(self, draft: Draft, rows: Iterable[models.WorkflowNode]) -> list[WorkflowNode]:
        """Draft rows -> WorkflowNodes; a join (several leaves) stands for the tasks behind it."""
        out: list[WorkflowNode] = []
        for row in rows:
            if row.kind == NodeKind.JOIN:
                out.extend(self._node_for(draft, r) for r in draft.task_dependencies(row))
            else:
                out.append(self._node_for(draft, row))
        self._index_new_nodes(draft)
        return out

    def add_signature(
        self, signature: Signature | dict[str, Any], dependencies: Iterable[WorkflowNode] | None = None
    ) -> WorkflowNode:
        """Add one signature; returns its WorkflowNode. A second add of the same task id is refused."""
        draft = self._require_unsaved("add a signature")
        task_id = signature.id if isinstance(signature, Signature) else None
        if task_id is not None and task_id in self.nodes:
            raise WorkflowException(f"Looks like signature '{signature}' is already added to the workflow")
        row = _compat(celery_canvas.add_signature, draft, signature, self._rows(dependencies))
        return self._as_nodes(draft, [row])[0]

    def add_celery_canvas(
        self, canvas: Signature | dict[str, Any], dependencies: Iterable[WorkflowNode] | None = None
    ) -> list[WorkflowNode]:
        """Add a signature, chain, group or chord; returns the nodes a follower must depend on."""
        draft = self._require_unsaved("add a canvas")
        return self._as_nodes(draft, _compat(celery_canvas.add_canvas, draft, canvas, self._rows(dependencies)))

    def add_celery_signature(
        self, signature: Signature, dependencies: Iterable[WorkflowNode] | None = None
    ) -> list[WorkflowNode]:
        return self._typed(signature, dependencies, Signature, "signature")

    def add_celery_chain(
        self, chain: _chain, dependencies: Iterable[WorkflowNode] | None = None
    ) -> list[WorkflowNode]:
        return self._typed(chain, dependencies, _chain, "chain")

    def add_celery_group(
        self, group_: group, dependencies: Iterable[WorkflowNode] | None = None
    ) -> list[WorkflowNode]:
        return self._typed(group_, dependencies, group, "group")

    def add_celery_chord(
        self, chord: _chord, dependencies: Iterable[WorkflowNode] | None = None
    ) -> list[WorkflowNode]:
        return self._typed(chord, dependencies, _chord, "chord")

    def _typed(
        self, canvas: Signature, dependencies: Iterable[WorkflowNode] | None, kind: type[Signature], name: str
    ) -> list[WorkflowNode]:
        is_canvas = isinstance(canvas, (_chain, group, _chord))
        if not isinstance(canvas, kind) or (kind is Signature and is_canvas):
            raise WorkflowException(f"add_celery_{name}() takes a Celery {name}, got {type(canvas).__name__}")
        return self.add_celery_canvas(canvas, dependencies)

    def skip_tasks(self, task_ids: Iterable[str]) -> int:
        """Mark tasks done without running them: before apply_async, as celery-dyrygent.

        Every dependency of a skipped task must be skipped too. After
        apply_async this is the model's ``skip()`` (same rule, checked against
        the running workflow).
        """
        task_ids = list(task_ids)
        if self._saved:
            return _compat(self._row.skip, list(self._row.nodes.filter(task_id__in=task_ids)))
        draft = self._require_unsaved("skip tasks")
        nodes = self.nodes
        missing = [t for t in task_ids if t not in nodes]
        if missing:
            raise WorkflowException(f"Cannot skip tasks that are not in the workflow: {', '.join(missing)}")
        for task_id in task_ids:
            if any(parent not in task_ids for parent in nodes[task_id].dependencies):
                raise WorkflowException("Can't mark dependant task as finished when not all parents finished")
        _compat(draft.skip, [nodes[t]._row for t in task_ids])
        return len(task_ids)

    # -- policies ------------------------------------------------------------------------------

    def set_retry_policy(self, retry_type: str, *retry_args: float) -> None:
        """Accepted and checked as celery-dyrygent does; it shapes nothing here (see the migration guide).

        The peer's policy is how often its processor polls. Here a task's
        completion moves the workflow at once; the safety-net tick runs every
        DYRYGENT_TICK_INTERVAL seconds for every workflow.
        """
        if retry_type != "random":
            raise WorkflowException(f'Invalid retry policy, got "{retry_type}"')
        if len(retry_args) != 2 or not all(isinstance(a, Real) for a in retry_args) or not (
            0 < retry_args[0] <= retry_args[1]
        ):
            raise WorkflowException(
                f"The random retry policy takes min and max with 0 < min <= max, got {retry_args}"
            )
        self.retry_policy = [retry_type, *retry_args]

    def set_max_processing_time(self, seconds: float) -> None:
        """The workflow ends ERROR if still running this many seconds after apply_async.

        Any real number (a ``Fraction`` too); refused when the deadline would
        fall after the last date Python can store.
        """
        if not isinstance(seconds, Real) or isinstance(seconds, bool) or not seconds > 0:  # not: NaN too
            raise WorkflowException(
                f"max processing time must be a positive number of seconds, got {seconds!r}"
            )
        try:
            _deadline(seconds)
        except (OverflowError, ValueError):
            raise WorkflowException(
                f"max processing time {seconds!r} is too large: the deadline would be past {datetime.max:%Y}"
            ) from None
        self.max_processing_time = seconds

    @classmethod
    def set_workflow_processor_task(cls, task: Task[Any, Any]) -> None:
        cls.workflow_processor_task = task

    # -- running -------------------------------------------------------------------------------

    def apply_async(self, options: dict[str, Any] | None = None) -> WorkflowResult:
        """Save the workflow into rows and start it; returns a WorkflowResult to ``wait()`` on.

        ``options`` are Celery options for every task. As in celery-dyrygent
        they override a signature's own options of the same name.
        """
        draft = self._require_unsaved("apply it again")
        options = dict(options or {})
        for row in draft.nodes:
            if row.kind != NodeKind.JOIN and options:
                row.signature["options"] = {**row.signature.get("options", {}), **options}
        if self._row.deadline is None:
            self._row.deadline = _deadline(self.max_processing_time)
        _compat(self._row.apply_async, options)
        self._saved = True
        self.result = WorkflowResult(self._row)
        return self.result

    @classmethod
    def connect(cls, hook_name: str) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(workflow, payload)`` for 'on_state_change', 'on_finish', 'after_active_tick'.

        Handlers receive this class's view of the workflow (``id`` a string,
        ``nodes`` a dict of task ids), read from the rows after the change.
        """
        if hook_name not in COMPAT_HOOKS:
            raise WorkflowException(f"'{hook_name}': invalid signal")

        def real_connect(function: Handler) -> Handler:
            connect_compat_handler(hook_name, function, view=cls.from_model, error=WorkflowException)
            return function

        return real_connect

    # -- what only exists inside a Celery message -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError(_ROWS_NOT_MESSAGE.format("to_dict()"))

    @classmethod
    def from_dict(cls, workflow_dict: dict[str, Any]) -> Workflow:
        raise NotImplementedError(_ROWS_NOT_MESSAGE.format("from_dict()"))

    def simulate_tick(self) -> None:
        raise NotImplementedError(
            "simulate_tick(): the engine decides from rows; inspect the graph with wf.nodes / "
            "iterate_dependencies(), or run it on a worker (see docs/migrating-from-celery-dyrygent.md)."
        )

    def tick(self) -> None:
        raise NotImplementedError(
            "tick(): the engine ticks saved workflows; after apply_async use wf.model.tick()."
        )

    def __repr__(self) -> str:
        return f"<Workflow {self.id} {self.state}>"


_ROWS_NOT_MESSAGE = (
    "{}: a django-dyrygent workflow lives in database rows, not in a message; after apply_async "
    "read it with django_dyrygent.models.Workflow.objects.get(pk=wf.id) (see "
    "docs/migrating-from-celery-dyrygent.md)."
)


def _deadline(seconds: float) -> datetime:
    """Now plus ``seconds``: timedelta takes int and float, not every Real (a Fraction)."""
    return timezone.now() + timedelta(seconds=float(seconds))


def _signature_of(row: models.WorkflowNode) -> Signature:
    """A Celery signature rebuilt from a stored node (for nodes the user did not hand in)."""
    stored = row.signature or {}
    return Signature(
        stored.get("task"), args=stored.get("args", ()), kwargs=stored.get("kwargs", {}),
        options={**stored.get("options", {}), "task_id": row.task_id},
        immutable=stored.get("immutable", False),
    )

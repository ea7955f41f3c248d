"""celery-dyrygent's node, result and errors, for ``django_dyrygent.workflows`` (their public path).

Apart from the ``Workflow`` of that door because they hold no graph of their
own: a node wraps one draft node (or, made by hand, keeps its own
dependencies), a result wraps a saved workflow row. ``workflows`` imports and
re-exports every name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from celery import exceptions as celery_exceptions
from celery.canvas import Signature
from django.core.exceptions import ValidationError

from . import models
from .draft import Draft
from .states import WorkflowState

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

"""Validate a draft (``draft.Draft``) and save it (workflow, nodes, edges) in one transaction.

Everything a database column or a Celery message cannot hold is refused here,
with a ValidationError naming the node and the field, before any row is
written: a half-saved workflow would hang or run part of a graph.

Saving costs a number of statements that does not grow with the graph. On
PostgreSQL the node ids are taken from their sequence in one statement, then
nodes and edges are written with ``COPY … FROM STDIN`` (one statement per
table, values handed over as they are, JSON encoded once during validation);
other databases use ``bulk_create`` in batches of ``BULK_BATCH``. The COPY
writer is ``copywriter``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.utils import json as kombu_json

from ..conf import get_celery_app, settings
from ..draft import Draft, gc_paused
from ..serialization import NotSerialisable, to_tree
from ..states import COUNTED_KINDS, TASKLESS_KINDS, NodeKind, NodeState
from . import copywriter

if TYPE_CHECKING:
    from celery import Celery

    from ..models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
    from ..models import Workflow as WorkflowModel
    from ..models import WorkflowNode as Node

logger = logging.getLogger("django_dyrygent.builder")

BULK_BATCH = 1000



class Models(NamedTuple):
    """The model classes a save writes, handed in by the caller (``models.Workflow.apply_async``).

    Saving is called from a model's run method, so this package never imports
    ``models`` at run time: the classes come in, which keeps the import graph
    one way (models imports build lazily, build names models for types only).
    """

    workflow: type[Workflow]
    node: type[WorkflowNode]
    edge: type[WorkflowEdge]
    event: type[WorkflowEvent]

#: ``start(workflow, nodes)``: the engine's start, called in the transaction that saved the rows, last;
#: ``nodes`` None inside a caller's transaction (the start then waits for its commit).
Start = Callable[["Workflow", "Sequence[WorkflowNode] | None"], None]
#: The signature's parts that become Celery's JSON tree (``serialization.to_tree``).
CALL_PARTS = ("args", "kwargs", "options")
#: Exact types whose empty value is its own JSON tree.
_EMPTY_TYPES = (list, dict)
#: What ``canvas.signature_to_dict`` stores; a signature with other keys takes the slow checks.
SIGNATURE_KEYS = frozenset({"task", *CALL_PARTS, "immutable"})
#: In ASCII JSON text: an escaped NUL, or an escaped surrogate (lone or in a pair). Text without
#: one holds neither poison; text with one is checked value by value for the exact message.
_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _json_error(value: Any) -> str | None:
    """Payloads are stored with DjangoJSONEncoder: dates, UUIDs and Decimals are fine."""
    try:
        json.dumps(value, allow_nan=False, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _as_tree(value: Any, describe: str, errors: list[str], verb: str = "are") -> Any:
    """Arguments and options as Celery's JSON serializer would carry them, or an error."""
    try:
        return to_tree(value)
    except NotSerialisable as exc:
        errors.append(f"{describe} {verb} not JSON-serialisable: {exc}")
        return value


def _bad_text(value: Any, path: str = "", depth: int = 0) -> str | None:
    """Where ``value`` holds text no database column takes: a NUL or a lone surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path or 'the value'} contains a NUL character (\\x00)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path or 'the value'} contains a lone surrogate, which is not valid UTF-8"
        return None
    if depth > 200:
        return None  # JSON encoding already refused anything this deep
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _bad_text(key, f"{path} key {key!r}".strip(), depth + 1) or _bad_text(
                item, f"{path}[{key!r}]", depth + 1
            )
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _bad_text(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
    return None


def _check_text(describe: str, field: str, value: Any, errors: list[str]) -> None:
    problem = _bad_text(value, field)
    if problem:
        errors.append(f"{describe}: {problem}")


def _check_size(describe: str, field: str, value: Any, cap_name: str, errors: list[str]) -> None:
    cap = getattr(settings, cap_name)
    if not cap:
        return
    try:
        size = len(json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":")).encode("utf-8", "replace"))
    except (TypeError, ValueError):
        return  # reported as not JSON-serialisable
    if size > cap:
        errors.append(f"{describe}: {field} is {size} bytes, over DYRYGENT_{cap_name}={cap}")


def _needs_close_look(text: str, cap: int) -> bool:
    """Whether ASCII JSON ``text`` may hold a poison character or be over ``cap`` (0: no cap).

    ``text`` is ASCII with default separators, so its length is never below
    the UTF-8 size of the compact JSON the caps compare.
    """
    return bool(_SUSPECT.search(text)) or bool(cap and len(text) > cap)


def _describe(node: Node) -> str:
    if node.kind == NodeKind.JOIN:
        return f"join node #{node.position}"
    return f"node #{node.position} {node.task_name or '(no task name)'} (task id {node.task_id})"


def _registry_is_complete(app: Celery) -> bool:
    """True when the building process knows every task a worker of this app knows.

    That is the case in a worker process once Celery imported its task
    modules (``loader.init_worker``: includes and autodiscovery), and the
    app's shared tasks were added (finalize). A web or
    shell process holds only the tasks it happened to import, so a missing
    name there proves nothing.
    """
    # Reading app.tasks finalizes the app (adds every shared_task) if nothing did yet.
    finalized = getattr(app, "finalized", False) or getattr(app, "autofinalize", True)
    return bool(getattr(app.loader, "worker_initialized", False) and finalized)


def _check_task_names(draft: Draft, errors: list[str]) -> None:
    policy = settings.UNKNOWN_TASKS
    if policy == "ignore":
        return
    app = get_celery_app()
    if not _registry_is_complete(app):
        return
    known = app.tasks
    unknown = [n for n in draft.nodes if n.kind not in TASKLESS_KINDS and n.task_name and n.task_name not in known]
    for node in unknown:
        message = (
            f"{_describe(node)}: task {node.task_name!r} is not registered in the Celery app "
            f"{app.main or app!r} of this worker process"
        )
        if policy == "refuse":
            errors.append(message + " (DYRYGENT_UNKNOWN_TASKS='refuse')")
        else:
            logger.warning(
                "%s; workflow %s is saved anyway (DYRYGENT_UNKNOWN_TASKS='warn').", message, draft.label
            )


class Encoded:
    """The JSON text of each node's JSON columns, made once by ``validate`` and written as is.

    Keyed by ``id(node)``; a node missing here is encoded when written.
    """

    def __init__(self) -> None:
        self.signature: dict[int, str] = {}
        self.custom_payload: dict[int, str] = {}


def validate(draft: Draft) -> Encoded:
    """Raise ValidationError naming every offending node; touches no database row.

    Returns the JSON text of the nodes' signatures and payloads, so saving
    does not encode them again.
    """
    errors: list[str] = []
    encoded = Encoded()
    workflow = draft.workflow
    problem = _json_error(workflow.custom_payload)
    if problem:
        errors.append(f"Workflow custom_payload is not JSON-serialisable: {problem}")
    else:
        _check_size("Workflow", "custom_payload", workflow.custom_payload, "MAX_PAYLOAD_BYTES", errors)
    for field in ("name", "custom_payload"):
        _check_text("Workflow", field, getattr(workflow, field), errors)
    for field in ("options", "tasks_options"):
        setattr(workflow, field, _as_tree(getattr(workflow, field), f"Workflow {field}", errors, "is"))
        _check_text("Workflow", field, getattr(workflow, field), errors)
    seen: dict[str, Node] = {}
    payload_cap = settings.MAX_PAYLOAD_BYTES
    argument_cap = settings.MAX_ARGUMENT_BYTES
    encode = kombu_json.JSONEncoder(allow_nan=False).encode
    for node in draft.nodes:
        if node.kind not in TASKLESS_KINDS:
            text = _check_node_call(node, errors, argument_cap, encode)
            if text is not None:
                encoded.signature[id(node)] = text
        _check_payload(node, errors, payload_cap, encoded)
        for field in ("task_id", "task_name"):
            value = getattr(node, field)
            if not (isinstance(value, str) and value.isascii() and "\x00" not in value):
                _check_text(_describe(node), field, value, errors)
        task_id = node.task_id
        if not task_id:
            errors.append(f"{_describe(node)}: empty task id")
        elif task_id in seen:
            errors.append(f"{_describe(node)}: duplicate task id, also used by {_describe(seen[task_id])}")
        else:
            seen[task_id] = node
        deps = draft.dependencies_of(node)
        for dep in deps:
            if not draft.owns(dep):
                errors.append(f"{_describe(node)}: depends on a node of another workflow ({dep!r})")
        if deps and node.kind in (NodeKind.ERROR_CALLBACK, NodeKind.FINALIZER):
            errors.append(f"{_describe(node)}: workflow callbacks cannot have dependencies")
    _check_task_names(draft, errors)
    cycle = _find_cycle(draft) if draft.may_have_cycle else None
    if cycle:
        errors.append("Dependency cycle: " + " -> ".join(_describe(n) for n in cycle))
    if errors:
        raise ValidationError(errors)
    return encoded


def _check_payload(node: Node, errors: list[str], cap: int, encoded: Encoded) -> None:
    """A node's custom_payload: JSON (DjangoJSONEncoder), text a column takes, size cap."""
    payload = node.custom_payload
    if type(payload) is dict and not payload:  # the default
        encoded.custom_payload[id(node)] = "{}"
        return
    try:
        text = json.dumps(payload, allow_nan=False, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        errors.append(f"{_describe(node)}: custom_payload is not JSON-serialisable: {exc}")
        return
    if _needs_close_look(text, cap):
        describe = _describe(node)
        before = len(errors)
        _check_size(describe, "custom_payload", payload, "MAX_PAYLOAD_BYTES", errors)
        _check_text(describe, "custom_payload", payload, errors)
        if len(errors) > before:
            return
    encoded.custom_payload[id(node)] = text


def _check_node_call(node: Node, errors: list[str], cap: int, encode: Callable[[Any], str]) -> str | None:
    """Task name, arguments and options of one node: JSON, text a column takes, size cap.

    The usual signature is encoded once (Celery's JSON encoder; ``encode`` is
    one kombu encoder for the whole draft, where ``kombu_json.dumps`` would
    make one per call), and that text is both checked and returned for
    saving; the tree replaces the arguments and options, as Celery's
    serializer would carry them. Anything unusual takes the value-by-value
    checks, which name the culprit.
    """
    sig = node.signature or {}
    if not sig.get("task"):
        errors.append(f"{_describe(node)}: the signature names no task, so it cannot be published")
    if sig.keys() <= SIGNATURE_KEYS and isinstance(sig.get("task"), str) and isinstance(sig.get("immutable"), bool):
        try:
            text = encode(sig)
        except (TypeError, ValueError, OverflowError, RecursionError):
            pass  # the slow checks name the part
        else:
            if not _needs_close_look(text, cap):
                parts = [part for part in CALL_PARTS if part in sig]
                if all(type(sig[part]) in _EMPTY_TYPES and not sig[part] for part in parts):
                    # Nothing to pass (``.si()``): the tree of an empty list or dict is a new empty one.
                    for part in parts:
                        sig[part] = type(sig[part])()
                else:
                    tree = json.loads(text)
                    for part in parts:
                        sig[part] = tree[part]
                return text
    describe = _describe(node)
    for part in CALL_PARTS:
        if part in sig:
            sig[part] = _as_tree(sig[part], f"{describe}: {part}", errors)
            _check_text(describe, part, sig[part], errors)
    call = {"args": sig.get("args", []), "kwargs": sig.get("kwargs", {})}
    _check_size(describe, "args and kwargs", call, "MAX_ARGUMENT_BYTES", errors)
    return None


def _find_cycle(draft: Draft) -> list[Node] | None:
    """Kahn's algorithm; on failure walk the leftover nodes to name one cycle."""
    nodes = draft.nodes
    index = {id(n): n for n in nodes}
    indegree = {id(n): 0 for n in nodes}
    dependents: dict[int, list[Node]] = {id(n): [] for n in nodes}
    for node in nodes:
        for dep in draft.dependencies_of(node):
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
    path: list[Node] = []
    where: dict[int, int] = {}
    while id(node) not in where:
        where[id(node)] = len(path)
        path.append(node)
        node = next(d for d in draft.dependencies_of(node) if id(d) in index and indegree[id(d)] > 0)
    cycle = path[where[id(node)]:]
    return list(reversed(cycle + [node]))


def save_and_start(draft: Draft, options: dict[str, Any] | None, start: Start, models: Models) -> None:
    """Validate, save workflow, nodes and edges in one transaction and start the workflow.

    ``start(workflow, nodes)`` is the engine's (``engine.start_saved``, handed
    in by the model's run method), called last in that transaction: with the
    nodes in hand it starts the workflow there; inside a caller's transaction
    (``nodes`` None) it starts it at the caller's commit. It records on the workflow whether the broker
    took the start: ``start_sent`` is None until the transaction commits,
    then True or False, and ``start_error`` holds the exception when the
    broker refused it; the sweeper starts such a workflow later.
    """
    with gc_paused():
        _save_and_start(draft, options, start, models)


def _save_and_start(draft: Draft, options: dict[str, Any] | None, start: Start, models: Models) -> None:
    workflow = draft.workflow
    if options is not None:
        workflow.tasks_options = dict(options)
    encoded = validate(draft)
    nodes = draft.nodes
    node_model = models.node
    skipped = {id(n) for n in draft.skipped}
    workflow.nodes_total = sum(1 for n in nodes if n.kind in COUNTED_KINDS)
    workflow.nodes_skipped = sum(1 for n in draft.skipped if n.kind in COUNTED_KINDS)
    workflow.nodes_done = workflow.nodes_skipped
    workflow.start_sent = workflow.start_error = None
    now = timezone.now()
    connection = models.workflow.write_connection()
    using = connection.alias
    before_start: dict[str, Any] | None = None
    # Inside a caller's transaction the start waits for its commit (nothing of the workflow runs
    # or shows as started before the caller's rows are there); otherwise it is part of this one.
    in_hand = None if connection.in_atomic_block else nodes
    try:
        with transaction.atomic(using=using):
            workflow.save(force_insert=True, using=using)
            cached = node_model.workflow.is_cached
            for node in nodes:
                if not cached(node):  # the model's draft sets it when it makes the node
                    node.workflow = workflow
                # A dependency skipped before start never finishes, so it is not waited for.
                deps = draft.dependencies_of(node)
                node.waiting = sum(1 for d in deps if id(d) not in skipped) if skipped else len(deps)
                if skipped and id(node) in skipped:
                    node.state, node.finished_at = NodeState.SKIPPED, now
                    node.reason = "skipped before start"
            if connection.vendor == "postgresql":
                copywriter.copy_graph(connection, workflow, draft, encoded, models.node, models.edge)
            else:
                _bulk_create_graph(using, workflow, draft, models)
            _log_skipped(workflow, draft.skipped, now, using, models.event)
            before_start = {f: getattr(workflow, f) for f in _STARTED_FIELDS}
            start(workflow, in_hand)
    except IntegrityError as exc:
        _back_to_draft(workflow, nodes, before_start, skipped)
        taken = set(
            node_model.objects.using(using)
            .filter(task_id__in=[n.task_id for n in nodes[:10000]])
            .values_list("task_id", flat=True)
        )
        if taken:
            raise ValidationError(
                [
                    f"{_describe(n)}: task id already used by another workflow"
                    for n in nodes if n.task_id in taken
                ]
            ) from exc
        raise
    except BaseException:
        _back_to_draft(workflow, nodes, before_start, skipped)
        raise
    for node in nodes:
        node._state.adding = False
        node._state.db = using


def _bulk_create_graph(using: str, workflow: WorkflowModel, draft: Draft, models: Models) -> None:
    """Nodes, then edges, with ``bulk_create``: SQLite, MariaDB/MySQL and any other backend."""
    nodes = draft.nodes
    models.node.objects.using(using).bulk_create(nodes, batch_size=BULK_BATCH)
    if any(n.pk is None for n in nodes):
        # Backends that cannot return ids from a bulk insert (MySQL).
        ids = dict(models.node.objects.using(using).filter(workflow=workflow).values_list("task_id", "pk"))
        for node in nodes:
            node.pk = ids[node.task_id]
    edges = [
        models.edge(workflow=workflow, node=node, dependency=dep, position=i)
        for node in nodes
        for i, dep in enumerate(draft.dependencies_of(node))
    ]
    models.edge.objects.using(using).bulk_create(edges, batch_size=BULK_BATCH)


#: What the start may change on the workflow instance, put back by ``_back_to_draft``.
_STARTED_FIELDS = ("state", "started_at", "deadline", "next_tick_at", "nodes_done", "nodes_succeeded",
                   "nodes_failed", "nodes_skipped", "finished_at")
#: What the start may change on a node instance that was PENDING (``_back_to_draft``).
_NODE_STARTED_FIELDS = {"queued_at": None, "finished_at": None, "timeout_at": None, "reason": ""}


def _back_to_draft(
    workflow: WorkflowModel, nodes: Sequence[Node], before_start: dict[str, Any] | None, skipped: set[int],
) -> None:
    """After a rollback: the instances are unsaved again, so the draft can be fixed and applied.

    A start that ran in the rolled-back transaction is undone on the
    instances too: the workflow's fields as they were before it, its nodes
    PENDING again (those skipped before start stay so).
    """
    workflow._state.adding = True
    for field, value in (before_start or {}).items():
        setattr(workflow, field, value)
    for node in nodes:
        node._state.adding = True
        node.pk = None
        if before_start is not None and node.state != NodeState.PENDING and id(node) not in skipped:
            node.state = NodeState.PENDING
            for field, value in _NODE_STARTED_FIELDS.items():
                setattr(node, field, value)


def _log_skipped(
    workflow: WorkflowModel, skipped: Sequence[Node], now: datetime, using: str, event_model: type[WorkflowEvent]
) -> None:
    if not skipped or not settings.EVENT_LOG:
        return
    event_model.objects.using(using).bulk_create(
        [
            event_model(
                workflow=workflow, node=node, old_state=NodeState.PENDING, new_state=NodeState.SKIPPED,
                reason="skipped before start", created_at=now,
            )
            for node in skipped
        ],
        batch_size=BULK_BATCH,
    )



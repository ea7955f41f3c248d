"""Turn Celery canvas into the nodes and edges of a draft (``draft.Draft``).

Dependency rules are celery-dyrygent's: a chain threads its dependencies
through its steps, a group's members all depend on what the group depends on,
a chord's body depends on every leaf of its header, and an empty group or
chord header passes its dependencies through unchanged.

Where several nodes feed what follows, the importer inserts one internal join
node: chaining two groups of 100 then costs 200 edges instead of 10,000, and
in pass-results mode the join carries the list of results in header order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import group
from celery.canvas import Signature, _chain, chord, maybe_signature
from django.core.exceptions import ValidationError

from .draft import NO_DEFAULT, Draft, check_dependencies, gc_paused
from .serialization import NotSerialisable, to_tree
from .states import TASK_KINDS, WAITING_KINDS, NodeKind, TriggerRule

#: The longest concurrency key a node may declare (its column's length).
CONCURRENCY_KEY_MAX_LENGTH = 200

#: A ``models.WorkflowNode`` (this module does not import models, see draft.py).
Node = Any
#: Trigger rules as a set: ``TriggerRule.values`` builds a list on every read.
TRIGGER_RULES = frozenset(TriggerRule.values)
CANVAS_TYPES = (group, _chain, chord)

# Options by which Celery would chain tasks itself. The engine orders nodes, so
# they are not stored: a canvas that was already applied still imports cleanly.
# ``link`` and ``link_error`` are not dropped either: they become nodes (see
# _linked_callbacks) or are refused.
CELERY_CHAINING_OPTIONS = frozenset(
    {
        "link",
        "link_error",
        "chord",
        "group_id",
        "group_index",
        "root_id",
        "parent_id",
        "chain",
        "reply_to",
        "taskset",
        "chord_size",
        "task_id",
        "stamped_headers",
        "stamps",
    }
)


#: A hex digit's value with its two high bits set to 10 (RFC 4122's variant).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid() -> str:
    """A random (version 4) UUID as text, what ``celery.utils.uuid`` gives, in half its time.

    A canvas of 10,000 signatures needs 10,000 task ids, and ``uuid4()``
    builds a ``UUID`` object for each only to format it.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def signature_to_dict(sig: Signature) -> dict[str, Any]:
    """The JSON form a node stores: enough to publish the task, nothing Celery chains by."""
    # A Signature is a dict: its keys read faster than its properties (one node per signature).
    get = sig.get
    options = {k: v for k, v in (get("options") or {}).items() if k not in CELERY_CHAINING_OPTIONS}
    return {
        "task": get("task"),
        "args": list(get("args") or ()),
        "kwargs": dict(get("kwargs") or {}),
        "options": options,
        "immutable": bool(get("immutable")),
    }


def _as_signature(draft: Draft, obj: Any) -> Signature:
    original = obj
    if isinstance(obj, dict) and not isinstance(obj, Signature):
        try:
            # A plain dict is a signature only if it says which task (None for a nameless one).
            obj = maybe_signature(obj) if "task" in obj else None
        except (KeyError, TypeError, ValueError):
            obj = None
    # Celery itself wraps anything in a Signature (chord([sig, 42], ...) holds "42()"),
    # so the task must be a name. A signature naming no task at all is accepted
    # here, as celery-dyrygent accepts it to build graphs; apply_async refuses it.
    if not isinstance(obj, Signature) or not isinstance(obj.get("options"), dict) or not isinstance(
        obj.get("task"), (str, type(None))
    ):
        raise ValidationError(
            f"Workflow {draft.label}: expected a Celery signature or canvas, "
            f"got {type(original).__name__}: {original!r:.200}",
            code="not_a_signature",
        )
    return obj


def _as_timeout(timeout: float | timedelta | None) -> timedelta | None:
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return timedelta(seconds=timeout)
    if isinstance(timeout, timedelta) and timeout.total_seconds() > 0:
        return timeout
    raise ValidationError(
        f"timeout must be a positive number of seconds or a timedelta, got {timeout!r}",
        code="bad_timeout",
    )


def _as_attempts(max_attempts: int) -> int:
    if isinstance(max_attempts, int) and not isinstance(max_attempts, bool) and max_attempts >= 1:
        return max_attempts
    raise ValidationError(
        f"max_attempts must be a whole number of at least 1, got {max_attempts!r}",
        code="bad_max_attempts",
    )


def concurrency_fields(key: str | None, limit: int | None) -> dict[str, Any]:
    """A node's ``concurrency_key`` and ``concurrency_limit``, checked; empty without a key.

    Refused with a message naming the problem: a limit without a key (or a
    key without a limit), a limit that is not a whole number of at least 1,
    a key that is not a non-blank string that fits its column.
    """
    if key is None and limit is None:
        return {}
    if key is None:
        raise ValidationError(
            f"concurrency_limit={limit!r} was given without a concurrency_key: say which key it limits",
            code="bad_concurrency",
        )
    if not isinstance(key, str) or not key.strip() or len(key) > CONCURRENCY_KEY_MAX_LENGTH:
        raise ValidationError(
            f"concurrency_key must be a non-blank string of at most {CONCURRENCY_KEY_MAX_LENGTH} "
            f"characters, got {key!r:.300}",
            code="bad_concurrency",
        )
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValidationError(
            f"concurrency_limit of key {key!r} must be a whole number of at least 1, got {limit!r}",
            code="bad_concurrency",
        )
    return {"concurrency_key": key, "concurrency_limit": limit}


def default_concurrency(draft: Draft, key: str, limit: int | None) -> None:
    """Give every task of ``draft`` that has no concurrency key of its own ``key`` and ``limit``."""
    fields = concurrency_fields(key, limit)
    for node in draft.nodes:
        if node.kind == NodeKind.TASK and not node.concurrency_key:
            node.concurrency_key, node.concurrency_limit = fields["concurrency_key"], fields["concurrency_limit"]


def _single_task(sig: Signature, what: str) -> None:
    if isinstance(sig, CANVAS_TYPES):
        raise ValidationError(
            f"{what}() takes a single task signature, got a {type(sig).__name__}; "
            "use add_celery_canvas() for chains, groups and chords.",
            code="not_a_task",
        )


def _task_id(sig: Signature) -> str:
    task_id = sig["options"].get("task_id")
    if not task_id:
        # Same effect as sig.freeze() without needing the task registered here.
        task_id = uuid()
        sig.set(task_id=task_id)
    return task_id


def add_fanout(
    draft: Draft, template: Any, dependency: Node, timeout: float | timedelta | None = None
) -> Node:
    sig = _as_signature(draft, template)
    _single_task(sig, "add_fanout")
    (dep,) = check_dependencies(draft, [dependency])
    _no_links(sig, "a fan-out template")
    return draft.new_node(
        [dep], source=sig, task_id=uuid(), task_name=sig.task or "", kind=NodeKind.MAP,
        signature=signature_to_dict(sig), timeout=_as_timeout(timeout),
    )


def add_signature(
    draft: Draft,
    signature: Any,
    dependencies: Iterable[Node] | None = None,
    trigger_rule: str = TriggerRule.ALL_SUCCESS,
    timeout: float | timedelta | None = None,
    max_attempts: int = 1,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
) -> Node:
    sig = _as_signature(draft, signature)
    _single_task(sig, "add_signature")
    keyed = concurrency_fields(concurrency_key, concurrency_limit)
    if trigger_rule not in TRIGGER_RULES:
        raise ValidationError(
            f"Unknown trigger_rule {trigger_rule!r}; use one of {', '.join(TriggerRule.values)}.",
            code="bad_trigger_rule",
        )
    deps = check_dependencies(draft, dependencies)
    callbacks = _linked_callbacks(draft, sig)
    node = draft.new_node(
        deps,
        source=sig,
        task_id=_task_id(sig),
        task_name=sig.get("task") or "",
        signature=signature_to_dict(sig),
        trigger_rule=trigger_rule,
        timeout=None if timeout is None else _as_timeout(timeout),
        max_attempts=1 if max_attempts == 1 and type(max_attempts) is int else _as_attempts(max_attempts),
        **keyed,
    )
    if callbacks:
        _add_linked(draft, callbacks, [node])
    return node


def add_join(draft: Draft, dependencies: Iterable[Node]) -> Node:
    return draft.new_node(dependencies, task_id=uuid(), kind=NodeKind.JOIN)


#: ``add_wait``'s default for ``default``: a timed-out wait fails instead of succeeding.


def add_wait(
    draft: Draft, name: str, dependencies: Iterable[Node] | None = None,
    timeout: float | timedelta | None = None, default: Any = NO_DEFAULT,
) -> Node:
    """A node with no task: WAITING once its dependencies succeed, succeeded by a signal ``name``.

    The name is stored as the node's ``task_name`` (what ``wf.signal`` looks
    for). ``default``, when given, is the result a timed-out wait succeeds
    with; it is stored in the node's ``signature`` as the JSON tree a task
    result would be.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ValidationError(f"A wait needs a name of 1 to 255 characters, got {name!r}", code="bad_wait_name")
    signature: dict[str, Any] = {}
    if default is not NO_DEFAULT:
        try:
            signature["default"] = to_tree(default)
        except NotSerialisable as exc:
            raise ValidationError(f"The default of wait {name!r} is not JSON-serialisable: {exc}",
                                  code="bad_default") from None
    return draft.new_node(
        check_dependencies(draft, dependencies), task_id=uuid(), task_name=name, kind=NodeKind.WAIT,
        signature=signature, timeout=_as_timeout(timeout),
    )


def add_timer(
    draft: Draft, dependencies: Iterable[Node] | None = None, delay: float | timedelta | None = None,
    at: datetime | None = None, name: str = "",
) -> Node:
    """A node with no task that succeeds ``delay`` after it is reached, or at ``at``.

    The delay is the node's ``timeout``; ``at`` (an aware datetime) is kept in
    its ``signature`` until the node is reached, when either becomes its due
    time, ``timeout_at``.
    """
    if (delay is None) == (at is None):
        raise ValidationError("A timer needs a delay or a time (at=), not both", code="bad_timer")
    signature: dict[str, Any] = {}
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise ValidationError(f"at must be an aware datetime, got {at!r}", code="bad_timer")
        signature["at"] = at.isoformat()
    if not isinstance(name, str) or len(name) > 255:
        raise ValidationError(f"A timer's name is a string of at most 255 characters, got {name!r}",
                              code="bad_timer")
    return draft.new_node(
        check_dependencies(draft, dependencies), task_id=uuid(), task_name=name, kind=NodeKind.TIMER,
        signature=signature, timeout=_as_timeout(delay),
    )


def add_branch(
    draft: Draft, signature: Any, paths: dict[str, Any], dependencies: Iterable[Node] | None = None,
) -> Node:
    """A task whose result chooses its paths: ``paths`` maps each key to a node or a list of nodes.

    Every node of a path is made a dependent of the branch (an edge is added
    to a node built before it). The keys and the nodes' positions are kept in
    the branch's ``signature`` under ``paths``: positions, not task ids,
    because ``retry()`` gives failed nodes fresh task ids.
    """
    sig = _as_signature(draft, signature)
    _single_task(sig, "add_branch")
    _no_links(sig, "a branch")
    if not isinstance(paths, dict) or not paths:
        raise ValidationError("A branch needs its paths: a dict of key -> node(s)", code="bad_branch")
    node = draft.new_node(
        check_dependencies(draft, dependencies), source=sig, task_id=_task_id(sig), task_name=sig.get("task") or "",
        kind=NodeKind.BRANCH, signature=signature_to_dict(sig),
    )
    positions: dict[str, list[int]] = {}
    for key, members in paths.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"A branch's keys are non-empty strings, got {key!r}", code="bad_branch")
        members = list(members) if isinstance(members, (list, tuple)) else [members]
        for member in check_dependencies(draft, members):
            if member is node or member.kind not in (
                *TASK_KINDS, NodeKind.JOIN, NodeKind.MAP, NodeKind.SUBWORKFLOW, *WAITING_KINDS,
            ):
                raise ValidationError(f"Path {key!r} of a branch holds {member!r}, which cannot follow it",
                                      code="bad_branch")
            draft.add_dependency(member, node)
        positions[key] = [m.position for m in members]
    node.signature["paths"] = positions
    return node


def add_subworkflow(
    draft: Draft, definition: Any, params: dict[str, Any] | None = None,
    dependencies: Iterable[Node] | None = None, name: str = "",
) -> Node:
    """A node with no task that runs a child workflow: ``definition`` is a catalogue name or a factory.

    Only what builds the child is stored (the name or the factory's dotted
    path, and the parameters as a JSON tree): the child is built when the
    node is reached, so it sees the catalogue and the code of that moment.
    The task id is a UUID: it is the child workflow's id, so one attempt of
    the node can start one child only, and ``retry()`` (a fresh task id)
    starts a fresh child.
    """
    if isinstance(definition, str):
        if not definition.strip():
            raise ValidationError("A sub-workflow needs a catalogue definition's name or a factory",
                                  code="bad_subworkflow")
        source = {"definition": definition}
    elif callable(definition):
        path = f"{getattr(definition, '__module__', '')}.{getattr(definition, '__qualname__', '')}"
        if "<" in path or not getattr(definition, "__module__", None):
            raise ValidationError(
                f"A sub-workflow's factory must be a module-level function (it is stored by its dotted path "
                f"and imported when the node is reached), got {definition!r}", code="bad_subworkflow")
        source = {"factory": path}
    else:
        raise ValidationError(f"A sub-workflow needs a definition name or a factory, got {definition!r}",
                              code="bad_subworkflow")
    if params is not None and not isinstance(params, dict):
        raise ValidationError(f"A sub-workflow's params are a dict, got {type(params).__name__}",
                              code="bad_subworkflow")
    try:
        source["params"] = to_tree(params or {})
    except NotSerialisable as exc:
        raise ValidationError(f"The params of sub-workflow {next(iter(source.values()))!r} are not "
                              f"JSON-serialisable: {exc}", code="bad_subworkflow") from None
    label = name or source.get("definition") or source["factory"]
    if not isinstance(label, str) or len(label) > 255:
        raise ValidationError(f"A sub-workflow's name is a string of at most 255 characters, got {label!r}",
                              code="bad_subworkflow")
    return draft.new_node(
        check_dependencies(draft, dependencies), task_id=uuid(), task_name=label, kind=NodeKind.SUBWORKFLOW,
        signature={"subworkflow": source},
    )


def add_callback(draft: Draft, signature: Any, kind: str) -> Node:
    sig = _as_signature(draft, signature)
    _no_links(sig, "a workflow callback")
    return draft.new_node(
        source=sig, task_id=_task_id(sig), task_name=sig.task or "", kind=kind,
        signature=signature_to_dict(sig),
    )


# -- Celery's own callbacks (link / link_error) ------------------------------------------------


def _linked_callbacks(draft: Draft, sig: Signature) -> list[tuple[Signature, str]]:
    """The ``link`` / ``link_error`` callbacks of ``sig``, as (signature, trigger rule).

    Celery would call them itself; the engine orders tasks, so each becomes a
    node after ``sig``: a ``link`` one that runs when it succeeds, a
    ``link_error`` one that runs when it fails (``one_failed``). Where a node
    cannot receive what Celery would pass the callback, the signature is
    refused rather than silently dropped.
    """
    options = sig["options"]
    if not (options.get("link") or options.get("link_error")):
        return []
    found: list[tuple[Signature, str]] = []
    for option, rule in (("link", TriggerRule.ALL_SUCCESS), ("link_error", TriggerRule.ONE_FAILED)):
        for item in sig.options.get(option) or ():
            callback = _as_signature(draft, item)
            mutable = not callback.immutable
            if option == "link" and mutable and not draft.workflow.pass_results:
                raise ValidationError(
                    f"Signature {sig.task} (task id {sig.id}) has link={callback.task}: Celery would call "
                    "it with the task's result, which a workflow passes only with pass_results=True. "
                    "Make the callback immutable (.si()) or use Workflow(pass_results=True).",
                    code="mutable_link",
                )
            if option == "link_error" and mutable:
                raise ValidationError(
                    f"Signature {sig.task} (task id {sig.id}) has link_error={callback.task}: Celery would "
                    "call it with the failed task's request, exception and traceback, which a workflow "
                    "node cannot receive. Make the callback immutable (.si()), or use the workflow's "
                    "link_error().",
                    code="mutable_link_error",
                )
            found.append((callback, rule))
    return found


def _no_links(sig: Signature, what: str) -> None:
    linked = [o for o in ("link", "link_error") if sig.options.get(o)]
    if linked:
        raise ValidationError(
            f"Signature {sig.task} is {what} and has {' and '.join(linked)}; it has no node to follow, "
            "so Celery's callbacks cannot be run after it. Add them as nodes of the workflow instead.",
            code="link_not_supported",
        )


def _add_linked(draft: Draft, callbacks: list[tuple[Signature, str]], leaves: list[Node]) -> None:
    for callback, rule in callbacks:
        deps = _joined(draft, leaves)
        if isinstance(callback, CANVAS_TYPES):
            _add(draft, callback, deps)
        else:
            add_signature(draft, callback, deps, trigger_rule=rule)


# -- canvas ------------------------------------------------------------------------------------


def add_canvas(
    draft: Draft, canvas: Any, dependencies: Iterable[Node] | None = None,
    concurrency_key: str | None = None, concurrency_limit: int | None = None,
) -> list[Node]:
    """Add ``canvas`` after ``dependencies``; returns its leaves.

    A concurrency key applies to every task the canvas holds (not to the
    joins between them, which run no task, nor to its linked callbacks).
    """
    keyed = concurrency_fields(concurrency_key, concurrency_limit)
    with gc_paused():
        deps = check_dependencies(draft, dependencies)
        if len(deps) > 1:
            deps = [add_join(draft, deps)]
        first = len(draft.nodes)
        leaves = _add(draft, _as_signature(draft, canvas), deps)
    if keyed:
        for node in draft.nodes[first:]:
            if node.kind == NodeKind.TASK:
                node.concurrency_key, node.concurrency_limit = concurrency_key, concurrency_limit
    return leaves


def _add(draft: Draft, sig: Signature, deps: list[Node]) -> list[Node]:
    """Add ``sig`` after ``deps`` (at most one node); return its leaves."""
    if not isinstance(sig, CANVAS_TYPES):
        return [add_signature(draft, sig, deps)]
    callbacks = _linked_callbacks(draft, sig)
    if isinstance(sig, chord):
        # A frozen/applied chord holds its header as a group, not a list.
        header = sig.tasks
        header = list(header.tasks if isinstance(header, group) else header)
        leaves = _add_group(draft, header, deps) if header else deps
        body = sig.body
        if body is not None:
            # A chord body gets the list of header results even for a one-task
            # header (Celery: chord([a], body) calls body([a])), so always join it.
            leaves = _add(draft, _as_signature(draft, body), [add_join(draft, leaves)] if header else leaves)
    elif isinstance(sig, group):
        leaves = _add_group(draft, list(sig.tasks), deps)
    else:
        leaves = deps
        for task in sig.tasks:
            leaves = _add(draft, _as_signature(draft, task), _joined(draft, leaves))
    if callbacks and leaves:
        _add_linked(draft, callbacks, leaves)
    return leaves


def _add_group(draft: Draft, tasks: list[Any], deps: list[Node]) -> list[Node]:
    if not tasks:
        return deps
    leaves: list[Node] = []
    for task in tasks:
        leaves.extend(_add(draft, _as_signature(draft, task), deps))
    return leaves


def _joined(draft: Draft, leaves: list[Node]) -> list[Node]:
    """Several leaves feeding what follows: collapse them into one join node."""
    return [add_join(draft, leaves)] if len(leaves) > 1 else leaves

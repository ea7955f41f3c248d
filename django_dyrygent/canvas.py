"""Turn Celery canvas into the nodes and edges of a draft (``draft.Draft``).

Dependency rules are celery-dyrygent's: a chain threads its dependencies
through its steps, a group's members all depend on what the group depends on,
a chord's body depends on every leaf of its header, and an empty group or
chord header passes its dependencies through unchanged.

Where several nodes feed what follows, the importer inserts one internal join
node: chaining two groups of 100 then costs 200 edges instead of 10,000, and
in pass-results mode the join carries the list of results in header order.
"""

from datetime import timedelta

from celery import group
from celery.canvas import Signature, _chain, _chord, maybe_signature
from celery.utils import uuid
from django.core.exceptions import ValidationError

from .states import NodeKind, TriggerRule

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


def signature_to_dict(sig):
    """The JSON form a node stores: enough to publish the task, nothing Celery chains by."""
    options = {k: v for k, v in dict(sig.options).items() if k not in CELERY_CHAINING_OPTIONS}
    return {
        "task": sig.task,
        "args": list(sig.args or ()),
        "kwargs": dict(sig.kwargs or {}),
        "options": options,
        "immutable": bool(sig.immutable),
    }


def _as_signature(draft, obj):
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
        obj.task, (str, type(None))
    ):
        raise ValidationError(
            f"Workflow {draft.label}: expected a Celery signature or canvas, "
            f"got {type(original).__name__}: {original!r:.200}",
            code="not_a_signature",
        )
    return obj


def check_dependencies(draft, dependencies):
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


def _as_timeout(timeout):
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


def _as_attempts(max_attempts):
    if isinstance(max_attempts, int) and not isinstance(max_attempts, bool) and max_attempts >= 1:
        return max_attempts
    raise ValidationError(
        f"max_attempts must be a whole number of at least 1, got {max_attempts!r}",
        code="bad_max_attempts",
    )


def _single_task(sig, what):
    if isinstance(sig, (group, _chain, _chord)):
        raise ValidationError(
            f"{what}() takes a single task signature, got a {type(sig).__name__}; "
            "use add_celery_canvas() for chains, groups and chords.",
            code="not_a_task",
        )


def _task_id(sig):
    if not sig.id:
        # Same effect as sig.freeze() without needing the task registered here.
        sig.set(task_id=uuid())
    return sig.id


def add_fanout(draft, template, dependency, timeout=None):
    sig = _as_signature(draft, template)
    _single_task(sig, "add_fanout")
    (dep,) = check_dependencies(draft, [dependency])
    _no_links(sig, "a fan-out template")
    return draft.new_node(
        [dep], source=sig, task_id=uuid(), task_name=sig.task or "", kind=NodeKind.MAP,
        signature=signature_to_dict(sig), timeout=_as_timeout(timeout),
    )


def add_signature(draft, signature, dependencies=None, trigger_rule=TriggerRule.ALL_SUCCESS,
                  timeout=None, max_attempts=1):
    sig = _as_signature(draft, signature)
    _single_task(sig, "add_signature")
    if trigger_rule not in TriggerRule.values:
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
        task_name=sig.task or "",
        signature=signature_to_dict(sig),
        trigger_rule=trigger_rule,
        timeout=_as_timeout(timeout),
        max_attempts=_as_attempts(max_attempts),
    )
    _add_linked(draft, callbacks, [node])
    return node


def add_join(draft, dependencies):
    return draft.new_node(dependencies, task_id=uuid(), kind=NodeKind.JOIN)


def add_callback(draft, signature, kind):
    sig = _as_signature(draft, signature)
    _no_links(sig, "a workflow callback")
    return draft.new_node(
        source=sig, task_id=_task_id(sig), task_name=sig.task or "", kind=kind,
        signature=signature_to_dict(sig),
    )


# -- Celery's own callbacks (link / link_error) ------------------------------------------------


def _linked_callbacks(draft, sig):
    """The ``link`` / ``link_error`` callbacks of ``sig``, as (signature, trigger rule).

    Celery would call them itself; the engine orders tasks, so each becomes a
    node after ``sig``: a ``link`` one that runs when it succeeds, a
    ``link_error`` one that runs when it fails (``one_failed``). Where a node
    cannot receive what Celery would pass the callback, the signature is
    refused rather than silently dropped.
    """
    found = []
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


def _no_links(sig, what):
    linked = [o for o in ("link", "link_error") if sig.options.get(o)]
    if linked:
        raise ValidationError(
            f"Signature {sig.task} is {what} and has {' and '.join(linked)}; it has no node to follow, "
            "so Celery's callbacks cannot be run after it. Add them as nodes of the workflow instead.",
            code="link_not_supported",
        )


def _add_linked(draft, callbacks, leaves):
    for callback, rule in callbacks:
        deps = _joined(draft, leaves)
        if isinstance(callback, (group, _chain, _chord)):
            _add(draft, callback, deps)
        else:
            add_signature(draft, callback, deps, trigger_rule=rule)


# -- canvas ------------------------------------------------------------------------------------


def add_canvas(draft, canvas, dependencies=None):
    deps = check_dependencies(draft, dependencies)
    if len(deps) > 1:
        deps = [add_join(draft, deps)]
    return _add(draft, _as_signature(draft, canvas), deps)


def _add(draft, sig, deps):
    """Add ``sig`` after ``deps`` (at most one node); return its leaves."""
    if not isinstance(sig, (group, _chain, _chord)):
        return [add_signature(draft, sig, deps)]
    callbacks = _linked_callbacks(draft, sig)
    if isinstance(sig, _chord):
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


def _add_group(draft, tasks, deps):
    if not tasks:
        return deps
    leaves = []
    for task in tasks:
        leaves.extend(_add(draft, _as_signature(draft, task), deps))
    return leaves


def _joined(draft, leaves):
    """Several leaves feeding what follows: collapse them into one join node."""
    return [add_join(draft, leaves)] if len(leaves) > 1 else leaves

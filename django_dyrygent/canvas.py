"""Turn Celery canvas into draft nodes and edges of an unsaved Workflow.

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
# they are dropped: a canvas that was already applied still imports cleanly.
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


def _new_node(workflow, **fields):
    from .models import WorkflowNode

    node = WorkflowNode(**fields)
    node._draft_workflow = workflow
    node.position = len(workflow._draft)
    workflow._draft.append(node)
    return node


def _as_signature(workflow, obj):
    original = obj
    if isinstance(obj, dict) and not isinstance(obj, Signature):
        try:
            obj = maybe_signature(obj)
        except (KeyError, TypeError, ValueError):
            obj = None
    # Celery itself wraps anything in a Signature (chord([sig, 42], ...) holds "42()"),
    # so a signature must also name its task.
    if not isinstance(obj, Signature) or not isinstance(obj.task, str) or not obj.task:
        raise ValidationError(
            f"Workflow {workflow.name or workflow.pk}: expected a Celery signature or canvas, "
            f"got {type(original).__name__}: {original!r:.200}",
            code="not_a_signature",
        )
    return obj


def _check_dependencies(workflow, dependencies):
    deps = list(dependencies or [])
    for dep in deps:
        if getattr(dep, "_draft_workflow", None) is not workflow:
            raise ValidationError(
                f"Dependency {dep!r} does not belong to workflow {workflow.name or workflow.pk} "
                "(nodes can only depend on nodes of the same unsaved workflow).",
                code="foreign_dependency",
            )
    return deps


def add_dependency(node, other):
    wf = getattr(node, "_draft_workflow", None)
    if wf is None or not node._state.adding:
        raise ValidationError(
            f"Node {node} is not part of an unsaved workflow; edges are fixed once applied.",
            code="already_applied",
        )
    _check_dependencies(wf, [other])
    if other not in node._draft_deps:
        node._draft_deps.append(other)


def _as_timeout(workflow, timeout):
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


def add_fanout(workflow, template, dependency, timeout=None):
    sig = _as_signature(workflow, template)
    if isinstance(sig, (group, _chain, _chord)):
        raise ValidationError(
            f"add_fanout() takes a single task signature as template, got a {type(sig).__name__}",
            code="not_a_task",
        )
    (dep,) = _check_dependencies(workflow, [dependency])
    stored = signature_to_dict(sig)
    node = _new_node(
        workflow, task_id=uuid(), task_name=sig.task or "", kind=NodeKind.MAP, signature=stored,
        timeout=_as_timeout(workflow, timeout),
    )
    node._draft_deps.append(dep)
    return node


def add_signature(workflow, signature, dependencies=None, trigger_rule=TriggerRule.ALL_SUCCESS,
                  timeout=None, max_attempts=1):
    sig = _as_signature(workflow, signature)
    if isinstance(sig, (group, _chain, _chord)):
        raise ValidationError(
            f"add_signature() takes a single task signature, got a {type(sig).__name__}; "
            "use add_celery_canvas() for chains, groups and chords.",
            code="not_a_task",
        )
    if trigger_rule not in TriggerRule.values:
        raise ValidationError(
            f"Unknown trigger_rule {trigger_rule!r}; use one of {', '.join(TriggerRule.values)}.",
            code="bad_trigger_rule",
        )
    deps = _check_dependencies(workflow, dependencies)
    if not sig.id:
        # Same effect as sig.freeze() without needing the task registered here.
        sig.set(task_id=uuid())
    node = _new_node(
        workflow,
        task_id=sig.id,
        task_name=sig.task or "",
        signature=signature_to_dict(sig),
        trigger_rule=trigger_rule,
        timeout=_as_timeout(workflow, timeout),
        max_attempts=_as_attempts(max_attempts),
    )
    node._draft_deps.extend(deps)
    return node


def add_join(workflow, dependencies):
    node = _new_node(workflow, task_id=uuid(), kind=NodeKind.JOIN)
    node._draft_deps.extend(dependencies)
    return node


def add_callback(workflow, signature, kind):
    sig = _as_signature(workflow, signature)
    if not sig.id:
        sig.set(task_id=uuid())
    return _new_node(
        workflow, task_id=sig.id, task_name=sig.task or "", kind=kind,
        signature=signature_to_dict(sig),
    )


def add_canvas(workflow, canvas, dependencies=None):
    deps = _check_dependencies(workflow, dependencies)
    if len(deps) > 1:
        deps = [add_join(workflow, deps)]
    return _add(workflow, _as_signature(workflow, canvas), deps)


def _add(workflow, sig, deps):
    """Add ``sig`` after ``deps`` (at most one node); return its leaves."""
    if isinstance(sig, _chord):
        # A frozen/applied chord holds its header as a group, not a list.
        header = sig.tasks
        header = list(header.tasks if isinstance(header, group) else header)
        leaves = _add_group(workflow, header, deps) if header else deps
        body = sig.body
        if body is None:
            return leaves
        # A chord body gets the list of header results even for a one-task
        # header (Celery: chord([a], body) calls body([a])), so always join it.
        return _add(workflow, _as_signature(workflow, body), [add_join(workflow, leaves)] if header else leaves)
    if isinstance(sig, group):
        return _add_group(workflow, list(sig.tasks), deps)
    if isinstance(sig, _chain):
        leaves = deps
        for task in sig.tasks:
            leaves = _add(workflow, _as_signature(workflow, task), _joined(workflow, leaves))
        return leaves
    return [add_signature(workflow, sig, deps)]


def _add_group(workflow, tasks, deps):
    if not tasks:
        return deps
    leaves = []
    for task in tasks:
        leaves.extend(_add(workflow, _as_signature(workflow, task), deps))
    return leaves


def _joined(workflow, leaves):
    """Several leaves feeding what follows: collapse them into one join node."""
    return [add_join(workflow, leaves)] if len(leaves) > 1 else leaves

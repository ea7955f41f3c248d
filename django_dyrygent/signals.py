"""Django signals sent by the engine, always after the transaction that made the change commits.

Receivers are called with ``send_robust``: one that raises is logged and never
breaks the workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.apps import apps
from django.dispatch import Signal

from .states import WORKFLOW_FINAL, WorkflowState

logger = logging.getLogger("django_dyrygent.signals")

# args: workflow, old_state, new_state
workflow_state_changed = Signal()
# args: workflow
workflow_finished = Signal()
# args: workflow, nodes  (nodes just published by this engine step)
workflow_active_tick = Signal()
# args: node, old_state, new_state
node_state_changed = Signal()


def send(signal: Signal, **kwargs: Any) -> None:
    if not signal.receivers:
        return
    sender = apps.get_model("django_dyrygent", "Workflow")
    for receiver, response in signal.send_robust(sender=sender, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "Receiver %r of a django_dyrygent signal failed: %r", receiver, response,
                exc_info=(type(response), response, response.__traceback__),
            )


# -- celery-dyrygent style hooks: Workflow.connect('on_state_change' | 'on_finish' | 'after_active_tick')
#
# Order, as celery-dyrygent: when a workflow ends, ``on_finish`` handlers run
# first, then ``on_state_change`` with the final state. ``on_finish`` is not
# called for ERROR (celery-dyrygent's ERROR is "the processor crashed", which
# never reaches on_finish; here it is the deadline or the engine giving up),
# and is called for CANCELED (the workflow did finish, by request). Its
# payload is None, except for FAILURE: the workflow's ``error``, its first failure.

COMPAT_HOOKS = ("after_active_tick", "on_finish", "on_state_change")
#: ``handler(workflow, payload)``, and ``view(row)`` that turns the model into what it receives (or None).
CompatHandler = Callable[[Any, Any], Any]
CompatView = Callable[[Any], Any] | None
#: A handler as the ``connect`` decorators give it back (unchanged).
Handler = TypeVar("Handler", bound=CompatHandler)
_compat_handlers: dict[str, list[tuple[CompatHandler, CompatView]]] = {name: [] for name in COMPAT_HOOKS}


def connect_compat_handler(
    name: str, handler: CompatHandler, view: CompatView = None, error: type[Exception] = ValueError
) -> CompatHandler:
    """Register ``handler(workflow, payload)``; ``view(row)`` turns the model into what it receives."""
    if name not in _compat_handlers:
        raise error(f"Unknown workflow signal {name!r}; use one of {', '.join(COMPAT_HOOKS)}")
    _compat_handlers[name].append((handler, view))
    workflow_state_changed.connect(_state_changed, weak=False, dispatch_uid="django_dyrygent.compat.state")
    workflow_active_tick.connect(_active_tick, weak=False, dispatch_uid="django_dyrygent.compat.tick")
    return handler


def disconnect_compat_handler(name: str, handler: CompatHandler) -> None:
    _compat_handlers[name][:] = [(h, v) for h, v in _compat_handlers[name] if h is not handler]


def _call(name: str, workflow: Any, payload: Any) -> None:
    for handler, view in list(_compat_handlers[name]):
        try:
            handler(view(workflow) if view else workflow, payload)
        except Exception:  # a hook never breaks the workflow (celery-dyrygent's rule too)
            logger.exception("Workflow hook %r (%r) of workflow %s failed", name, handler, workflow.pk)


def _state_changed(sender: type, workflow: Any, old_state: str, new_state: str, **kwargs: Any) -> None:
    if new_state in WORKFLOW_FINAL and new_state != WorkflowState.ERROR:
        # celery-dyrygent's payload is None; a FAILURE also says which node failed first and why.
        # Read only for a FAILURE: the engine set it on the row it announces, so no query.
        _call("on_finish", workflow, (workflow.error or None) if new_state == WorkflowState.FAILURE else None)
    _call("on_state_change", workflow, new_state)


def _active_tick(sender: type, workflow: Any, **kwargs: Any) -> None:
    _call("after_active_tick", workflow, None)

"""Django signals sent by the engine, always after the transaction that made the change commits.

Receivers are called with ``send_robust``: one that raises is logged and never
breaks the workflow.
"""

from __future__ import annotations

import logging

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


def send(signal, **kwargs):
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
# and is called for CANCELED (the workflow did finish, by request).

COMPAT_HOOKS = ("after_active_tick", "on_finish", "on_state_change")
_compat_handlers = {name: [] for name in COMPAT_HOOKS}  # name -> [(handler, view), ...]


def connect_compat_handler(name, handler, view=None, error=ValueError):
    """Register ``handler(workflow, payload)``; ``view(row)`` turns the model into what it receives."""
    if name not in _compat_handlers:
        raise error(f"Unknown workflow signal {name!r}; use one of {', '.join(COMPAT_HOOKS)}")
    _compat_handlers[name].append((handler, view))
    workflow_state_changed.connect(_state_changed, weak=False, dispatch_uid="django_dyrygent.compat.state")
    workflow_active_tick.connect(_active_tick, weak=False, dispatch_uid="django_dyrygent.compat.tick")
    return handler


def disconnect_compat_handler(name, handler):
    _compat_handlers[name][:] = [(h, v) for h, v in _compat_handlers[name] if h is not handler]


def _call(name, workflow, payload):
    for handler, view in list(_compat_handlers[name]):
        try:
            handler(view(workflow) if view else workflow, payload)
        except Exception:  # a hook never breaks the workflow (celery-dyrygent's rule too)
            logger.exception("Workflow hook %r (%r) of workflow %s failed", name, handler, workflow.pk)


def _state_changed(sender, workflow, old_state, new_state, **kwargs):
    if new_state in WORKFLOW_FINAL and new_state != WorkflowState.ERROR:
        _call("on_finish", workflow, None)
    _call("on_state_change", workflow, new_state)


def _active_tick(sender, workflow, **kwargs):
    _call("after_active_tick", workflow, None)

"""Django signals sent by the engine, always after the transaction that made the change commits.

Receivers are called with ``send_robust``: one that raises is logged and never
breaks the workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

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
    from .models import Workflow

    if not signal.receivers:
        return
    for receiver, response in signal.send_robust(sender=Workflow, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "Receiver %r of a django_dyrygent signal failed: %r", receiver, response,
                exc_info=(type(response), response, response.__traceback__),
            )


# celery-dyrygent compatibility: Workflow.connect('on_state_change' | 'on_finish' | 'after_active_tick')
COMPAT_SIGNALS: dict[str, tuple[Signal, Callable[[dict[str, Any]], Any]]] = {
    "on_state_change": (workflow_state_changed, lambda kw: kw["new_state"]),
    "on_finish": (workflow_finished, lambda kw: None),
    "after_active_tick": (workflow_active_tick, lambda kw: None),
}

_compat_receivers: list[Callable[..., None]] = []  # strong references: Signal.connect keeps weak ones


def connect_compat_handler(name: str, handler: Callable[[Any, Any], Any]) -> Callable[..., None]:
    """Connect a celery-dyrygent style ``handler(workflow, payload)``; ValueError for an unknown name."""
    try:
        signal, payload = COMPAT_SIGNALS[name]
    except KeyError:
        raise ValueError(
            f"Unknown workflow signal {name!r}; use one of {', '.join(sorted(COMPAT_SIGNALS))}"
        ) from None

    def receiver(sender: type, workflow: Any, **kwargs: Any) -> None:
        handler(workflow, payload(kwargs))

    _compat_receivers.append(receiver)
    signal.connect(receiver, weak=False, dispatch_uid=("django_dyrygent.compat", name, id(handler)))
    return receiver

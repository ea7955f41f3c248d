"""``Workflow.wait()``: block until a workflow ends, woken by the commit that ends it.

A fixed polling interval would add up to that interval to every ``wait()``,
most of the time a short workflow takes. On PostgreSQL the engine
sends ``pg_notify`` in the transaction that ends a workflow (``notify_finished``,
called from ``steps.Step.flush``); PostgreSQL delivers it at commit and drops
it on rollback, so a waiter that LISTENs wakes within a round trip of the
commit. The row is still re-read every ``interval`` seconds: a notification
can be lost with a connection, and a deleted workflow sends none.

Other databases have no notifications: the waiter polls, starting at a few
milliseconds and backing off to ``interval``, so a short workflow is seen
ending almost at once and a long one costs a query per ``interval``.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db.backends.base.base import BaseDatabaseWrapper

from ..states import WORKFLOW_FINAL
from . import sql

if TYPE_CHECKING:
    from ..models import Workflow

#: First pause of the polling waiter (seconds); each pause is 1.5 times the last, up to ``interval``.
FIRST_POLL = 0.005
BACKOFF = 1.5


@dataclass(frozen=True)
class Outcome:
    """How a wait ended: the final state, and what noticed it ("final", "notify" or "poll")."""

    state: str
    woken_by: str


def channel(workflow_id: UUID | str) -> str:
    """The LISTEN channel of one workflow (an identifier: at most 63 bytes, so the bare uuid hex)."""
    return f"dyrygent_{getattr(workflow_id, 'hex', str(workflow_id).replace('-', ''))}"


def notify_finished(connection: BaseDatabaseWrapper, workflow_id: UUID | str, state: str) -> None:
    """Queue the "workflow ended" notification in the current transaction (PostgreSQL only)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.NOTIFY_SQL, [channel(workflow_id), str(state)])


def wait(workflow: Workflow, timeout: float | None = None, interval: float = 0.1) -> str:
    """Block until ``workflow`` is final; refresh it and return its state.

    Raises ``TimeoutError`` after ``timeout`` seconds (None: wait forever) and
    ``DoesNotExist`` when the row is gone.
    """
    wait_for(workflow, timeout, interval)
    workflow.refresh_from_db()
    return workflow.state


def wait_for(workflow: Workflow, timeout: float | None = None, interval: float = 0.1) -> Outcome:
    """The waiting itself; returns an ``Outcome`` (tests check what woke the waiter)."""
    if interval <= 0:
        raise ValueError(f"wait(interval=...) must be greater than zero, not {interval!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    state = _read_state(workflow)
    if state in WORKFLOW_FINAL:
        return Outcome(state, "final")
    connection = type(workflow).write_connection()
    if connection.vendor == "postgresql":
        outcome = _listen(connection, workflow, deadline, timeout, interval)
        if outcome is not None:
            return outcome
    return _poll(workflow, deadline, timeout, interval, FIRST_POLL)


def _read_state(workflow: Workflow) -> str:
    model = type(workflow)
    state = model._default_manager.filter(pk=workflow.pk).values_list("state", flat=True).first()
    if state is None:
        raise model.DoesNotExist(f"Workflow {workflow.pk} does not exist")
    return state


def _remaining(deadline: float | None, workflow: Workflow, state: str | None, timeout: float | None) -> float | None:
    """Seconds left before the deadline (None: no deadline); TimeoutError once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Workflow {workflow.pk} is still {state} after {timeout}s")
    return left


def _poll(workflow: Workflow, deadline: float | None, timeout: float | None, interval: float, first: float) -> Outcome:
    pause = min(first, interval)
    state: str | None = None
    while True:
        left = _remaining(deadline, workflow, state, timeout)
        time.sleep(pause if left is None else min(pause, left))
        state = _read_state(workflow)
        if state in WORKFLOW_FINAL:
            return Outcome(state, "poll")
        pause = min(pause * BACKOFF, interval)


def _listen(
    connection: BaseDatabaseWrapper, workflow: Workflow, deadline: float | None, timeout: float | None, interval: float
) -> Outcome | None:
    """LISTEN on a connection of its own; None when the driver cannot wait for notifications.

    A separate autocommit connection: notifications reach a session only
    between transactions, and the caller's connection may be inside one.
    """
    listener = connection.get_new_connection(connection.get_connection_params())
    try:
        listener.autocommit = True
        cursor = listener.cursor()
        cursor.execute(sql.listen_sql(connection, channel(workflow.pk)))
        cursor.close()
        # Read again now that we listen: an end committed before LISTEN sent nothing we can hear.
        state = _read_state(workflow)
        if state in WORKFLOW_FINAL:
            return Outcome(state, "final")
        while True:
            left = _remaining(deadline, workflow, state, timeout)
            heard = _notified(listener, interval if left is None else min(interval, left))
            if heard is None:
                return None
            state = _read_state(workflow)
            if state in WORKFLOW_FINAL:
                return Outcome(state, "notify" if heard else "poll")
    finally:
        listener.close()


def _notified(listener: Any, seconds: float) -> bool | None:
    """True when a notification arrived within ``seconds``; None when the driver cannot tell."""
    notifies = getattr(listener, "notifies", None)
    if callable(notifies):  # psycopg 3
        try:
            return any(True for _ in notifies(timeout=seconds, stop_after=1))
        except TypeError:  # psycopg < 3.2: notifies() takes no timeout
            return None
    # psycopg2: notifications are collected by poll() once the socket is readable.
    if select.select([listener], [], [], seconds)[0]:
        listener.poll()
        heard = bool(listener.notifies)
        listener.notifies.clear()
        return heard
    return False

"""Talking to Celery: publish nodes, revoke tasks, send the tick. After commit only.

Engine steps decide under the workflow lock and queue what the broker must
hear with ``transaction.on_commit``; this module is what runs then. It is
apart from the decisions so that they can be read (and tested) without a
broker, and so that nothing here ever runs while a lock is held. It knows
the tick task by its Celery name only (``TICK_TASK``): the engine never
imports ``tasks``, which wraps the engine.

A failure here is logged and repaired later, never raised: a node whose
message could not be sent is marked (``mark_unpublished``) for the next
tick, a lost tick is the sweeper's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable

from ..conf import get_celery_app, settings
from ..models import Workflow, WorkflowNode
from ..serialization import from_tree
from ..states import CALLBACK_KINDS, NodeState
from . import db

# The engine's documented logger (docs/operations.md): failed publishes, revokes and ticks.
logger = logging.getLogger("django_dyrygent.engine")

#: Message header naming the workflow a published task belongs to.
HEADER = "dyrygent_workflow"
#: Added when DYRYGENT_METRICS is on: when the node was published (epoch seconds), for the queue-wait histogram.
PUBLISHED_AT_HEADER = "dyrygent_published_at"
#: Celery name of the tick task (``tasks.tick``), sent by name.
TICK_TASK = "django_dyrygent.tick"
#: Celery name of the task that builds and starts a sub-workflow node's child (``tasks.start_subworkflow``).
START_CHILD_TASK = "django_dyrygent.start_subworkflow"


#: What ``publish`` sends: a QUEUED node and the arguments prepended to its call.
Entry = tuple[WorkflowNode, Sequence[Any]]


def _workflow_field(workflow_id: UUID | str, field: str) -> Any:
    """One JSON column of the workflow, read after commit (the lock query defers it)."""
    return Workflow.objects.filter(pk=workflow_id).values_list(field, flat=True).first() or {}


def send_tick(
    workflow_id: UUID | str, options: dict[str, Any] | None = None, countdown: float | None = None,
) -> Exception | None:
    """Send the tick task; None when the broker took it, else the exception (already logged).

    ``options`` None means the workflow's own tick options.

    The engine's ``countdown`` (the tick interval) replaces any countdown or
    eta in the options; without one (the first tick) the options' own apply.

    Sent through the configured app (``get_celery_app``) by name: where the
    tick task is registered the signature goes through it (with the options
    ``register_workflow_processor`` set on it), elsewhere through ``send_task``.
    """
    try:
        if options is None:
            options = _workflow_field(workflow_id, "options")
        options = dict(from_tree(options or {}))
        if countdown is not None:
            options.pop("eta", None)
            options["countdown"] = countdown
        get_celery_app().signature(TICK_TASK, args=(str(workflow_id),)).apply_async(**options)
    except Exception as exc:
        # The sweeper (dyrygent_tick) picks the workflow up once its tick is overdue.
        logger.exception("Could not send the tick of workflow %s", workflow_id)
        return exc
    return None


def send_child_starts(workflow_id: UUID | str, node_ids: Sequence[int]) -> None:
    """Ask a worker to build and start the child of each sub-workflow node, with the tick's options.

    Sent by name (``django_dyrygent.start_subworkflow``): building runs the
    user's factory, which the engine does not import. A message the broker
    refuses is logged; the parent's tick sends it again (``decisions.check_children``).
    """
    try:
        options = dict(from_tree(_workflow_field(workflow_id, "options") or {}))
        options.pop("countdown", None)
        options.pop("eta", None)
        for node_id in node_ids:
            get_celery_app().signature(START_CHILD_TASK, args=(node_id,)).apply_async(**options)
    except Exception:
        logger.exception("Could not send the start of sub-workflow node(s) %s of workflow %s", node_ids, workflow_id)


def publish(
    workflow_id: UUID | str, tasks_options: dict[str, Any] | None, entries: Sequence[Entry],
) -> Exception | None:
    """Publish queued nodes with their own task ids and the workflow header; the first error, if any.

    In one broker round trip per ``BATCH`` messages where the transport can
    (``_publish_batch``), else one message at a time.

    ``tasks_options`` None means the workflow's own (read here, after commit).
    A node whose message could not be sent is marked at once (``queued_at``
    cleared, state still QUEUED, see ``mark_unpublished``) so the next tick
    publishes it again, instead of after DYRYGENT_REQUEUE_AFTER. When the
    broker itself is unreachable the remaining nodes are not even tried (each
    attempt would wait for Celery's publish retries): they are marked too.
    The error is returned (already logged) for a caller that reports it:
    ``Workflow.apply_async``'s ``start_error``.
    """
    failed: list[WorkflowNode] = []
    error: Exception | None = None
    try:
        app = get_celery_app()
        if tasks_options is None:
            tasks_options = _workflow_field(workflow_id, "tasks_options")
        with app.producer_or_acquire() as producer:
            for start in range(0, len(entries), BATCH):
                chunk = entries[start:start + BATCH]
                args = (app, producer, workflow_id, tasks_options, chunk)
                not_sent, chunk_error = _publish_batch(*args)
                unreachable = False
                if not_sent is None:  # no batch, or its one round trip failed: each message on its own
                    not_sent, chunk_error, unreachable = _publish_each(*args)
                error = error or chunk_error
                failed.extend(n for n, _args in chunk if n.task_id in not_sent)
                if unreachable:  # the rest are not even tried
                    failed.extend(n for n, _args in entries[start + BATCH:])
                    break
    except Exception as exc:
        logger.exception("Could not publish %d node(s) of workflow %s", len(entries), workflow_id)
        error = error or exc
        done = {n.task_id for n in failed}
        failed.extend(n for n, _args in entries if n.task_id not in done)
    if failed:
        mark_unpublished(workflow_id, [n.task_id for n in failed])
    return error


#: Messages a batch sends in one broker round trip (``_publish_batch``).
BATCH = 500


def _publish_batch(
    app: Celery, producer: Any, workflow_id: UUID | str, tasks_options: dict[str, Any] | None,
    entries: Sequence[Entry],
) -> tuple[set[str] | None, Exception | None]:
    """Publish ``entries`` in one round trip where the transport can: (task ids not sent, error).

    Celery publishes one message per round trip; a released group of a
    hundred tasks then costs the releasing worker a hundred. kombu's
    ``Producer.batch`` (5.7+; the Redis transport: one pipeline) buffers the
    messages and sends them at once, half the time per message. Returns
    ``(None, None)`` when there is no batch to use (an older kombu, a
    transport without batches) or when its round trip failed: delivery is
    then uncertain, and the caller publishes each message again on its own
    (at-least-once, as any republish; the run guard takes the first
    STARTED, a second message of a finished node runs nothing).
    """
    batch = getattr(producer, "batch", None)
    if batch is None or len(entries) < 2 or not getattr(producer, "supports_batch_publish", False):
        return None, None
    try:
        # Two commands a message at most (a queue with an expiry): no flush before the end.
        with batch(max_size=2 * len(entries) + 1):
            not_sent, error, unreachable = _publish_each(app, producer, workflow_id, tasks_options, entries)
            if unreachable:
                raise BrokerUnreachable("the broker is unreachable: the batch is dropped")
    except Exception:
        logger.warning("Publishing %d node(s) of workflow %s in one round trip failed; one by one instead",
                       len(entries), workflow_id, exc_info=True)
        return None, None
    return not_sent, error


def _publish_each(
    app: Celery, producer: Any, workflow_id: UUID | str, tasks_options: dict[str, Any] | None,
    entries: Sequence[Entry],
) -> tuple[set[str], Exception | None, bool]:
    """Publish ``entries`` message by message: (task ids not sent, the first error, unreachable).

    Inside a batch (``_publish_batch``) each message is only buffered for the
    batch's one round trip; outside, each is its own round trip.

    When the broker itself is unreachable the remaining nodes are not even
    tried (each attempt would wait for Celery's publish retries): they are
    among those not sent, and the last item says so.
    """
    not_sent: set[str] = set()
    error: Exception | None = None
    for i, (node, extra_args) in enumerate(entries):
        try:
            _publish_one(app, producer, workflow_id, tasks_options, node, extra_args)
        except Exception as exc:
            logger.exception("Could not publish node %s (%s) of workflow %s",
                             node.task_id, node.task_name, workflow_id)
            error = error or exc
            not_sent.add(node.task_id)
            if _broker_unreachable(exc, producer):
                not_sent.update(n.task_id for n, _args in entries[i + 1:])
                return not_sent, error, True
    return not_sent, error, False


def _broker_unreachable(exc: Exception, producer: Any) -> bool:
    connection = getattr(producer, "connection", None)
    return isinstance(exc, (BrokerUnreachable, *getattr(connection, "connection_errors", ())))


def _publish_one(
    app: Celery, producer: Any, workflow_id: UUID | str, tasks_options: dict[str, Any] | None,
    node: WorkflowNode, extra_args: Sequence[Any],
) -> None:
    sig_dict = node.signature or {}
    options = {**from_tree(tasks_options or {}), **from_tree(sig_dict.get("options", {}))}
    options["headers"] = {**options.get("headers", {}), HEADER: str(workflow_id)}
    if settings.METRICS:
        options["headers"][PUBLISHED_AT_HEADER] = time.time()
    if "ignore_result" not in options and not _store_result(app, sig_dict["task"], options):
        options["ignore_result"] = True
    if node.kind in CALLBACK_KINDS and not sig_dict.get("immutable"):
        extra_args = (str(workflow_id),)
    sig = app.signature(
        sig_dict["task"], args=from_tree(sig_dict.get("args", [])),
        kwargs=from_tree(sig_dict.get("kwargs", {})),
        immutable=sig_dict.get("immutable", False),
    )
    sig.apply_async(args=tuple(extra_args), task_id=node.task_id, producer=producer, **options)


def _store_result(app: Celery, task_name: str, options: dict[str, Any]) -> bool:
    """Whether Celery must store this node's outcome in the result backend too.

    The node row holds the outcome, so by default it is not stored twice: the
    node is published with ``ignore_result=True`` (unless its own or the
    workflow's task options say ``ignore_result`` either way) and the
    worker's receivers write an outcome to the backend only when they cannot
    write it to the database (``handlers``): the tick's ``reconcile`` reads it
    there. Celery stores it as usual when DYRYGENT_STORE_NODE_RESULTS asks
    for it, and for a task with a hard time limit: the worker's main process
    stores its TimeLimitExceeded without telling our receivers (no request
    names the workflow there), so the backend is the only place the tick can
    read that failure from.
    """
    if settings.STORE_NODE_RESULTS:
        return True
    task = app.tasks.get(task_name)
    return bool(options.get("time_limit") or getattr(task, "time_limit", None) or app.conf.task_time_limit)


def mark_unpublished(workflow_id: UUID | str, task_ids: Sequence[str]) -> None:
    """Record that these QUEUED nodes' messages were never sent: ``queued_at`` NULL.

    Its own short statement, after the failed publish: no lock (the state does
    not change, and the UPDATE is conditional on the node being QUEUED under
    that task id, so a node a worker started or a retry renamed is left
    alone). ``reconcile`` treats a QUEUED node without ``queued_at`` as due.
    """
    try:
        for chunk in db.chunks(task_ids, Workflow.write_connection()):
            WorkflowNode.objects.filter(
                workflow_id=workflow_id, task_id__in=chunk, state=NodeState.QUEUED
            ).update(queued_at=None)
    except Exception:
        # The node keeps its queued_at: republished after DYRYGENT_REQUEUE_AFTER instead.
        logger.exception("Could not mark %d unpublished node(s) of workflow %s", len(task_ids), workflow_id)


#: Connection attempts a revoke makes before giving up on an unreachable broker.
REVOKE_CONNECT_RETRIES = 2


def revoke(task_ids: Sequence[str], terminate: bool = False) -> None:
    """Ask the workers to drop these tasks; best effort, never blocking on a broker that is down.

    Celery's broadcast retries its connection forever, which would hang the
    caller of ``cancel()`` for as long as the broker is away. The revoke only
    spares a worker the message: a node that is no longer runnable never runs
    its body anyway (the run guard), so giving up after a few attempts is safe.
    """
    app = get_celery_app()
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=REVOKE_CONNECT_RETRIES)
            app.control.revoke(list(task_ids), terminate=terminate, connection=connection)
    except Exception:
        logger.exception("Could not revoke %d task(s): %s", len(task_ids), ", ".join(list(task_ids)[:10]))

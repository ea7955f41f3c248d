"""Worker-side Celery signal receivers: they turn task events into engine steps.

A task belongs to a workflow when its message carries the ``dyrygent_workflow``
header; every other task costs one dictionary lookup. Each step runs on a
usable database connection and is retried while the database is away
(``db.run``); a receiver never lets an exception escape into Celery: after
DYRYGENT_OUTCOME_RETRY_FOR the event is logged and the sweep repairs it (the
worker no longer holds the task: result backend, else a re-run). Node tasks
are published with ``ignore_result=True`` (the node row holds the outcome),
so a success or failure that could not be written is written to the result
backend here (``_store_in_backend``), where the tick's ``reconcile`` reads it.

Run-time guard (cancel honoured where the work runs). A revoke broadcast
reaches only the workers that are up, and a worker checks its revoked set
before it hands a message to the pool, so a message taken by a worker that
was down during ``cancel()``, or received before the cancel committed, would
still run. The ``task_prerun`` receiver already records STARTED with a
conditional UPDATE (QUEUED/RETRY/STARTED -> STARTED, by task id): when that
UPDATE matches no row, the node is CANCELED, SKIPPED, final, or was given a
fresh task id by a retry, so the body must not run. A receiver cannot stop
the body (Celery's ``Signal.send`` swallows receiver exceptions), so the
receiver only marks the request, and ``before_start``, installed on every
task class at ``worker_init``, raises ``celery.exceptions.Ignore`` for a
marked request: Celery's tracer calls ``before_start`` inside the same
``try`` as the body and treats ``Ignore`` as "no state to record" (no
result, no failure, the message is acknowledged). This works alike in the
prefork, threads and solo pools (the tracer is the same; prefork children
inherit the patched classes and build their tracers after the fork) and it
costs no query: the decision is the UPDATE the receiver makes anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from traceback import format_exception
from typing import TYPE_CHECKING, Any, TypeVar

from billiard.exceptions import WorkerLostError
from celery import signals as celery_signals
from celery.exceptions import Ignore
from celery.states import FAILURE, SUCCESS
from django.db import DatabaseError

from ..conf import settings
from ..engine import db, hotpath, outcomes
from ..engine.messaging import HEADER
from . import backend, broker, recovery
from . import heartbeat as worker

logger = logging.getLogger("django_dyrygent.handlers")

if TYPE_CHECKING:
    from celery import Task  # not subscriptable at run time before Celery 5.4

    #: A task class's ``before_start(self, task_id, args, kwargs)``.
    BeforeStart = Callable[[Task[Any, Any], str, tuple[Any, ...], dict[str, Any]], None]

T = TypeVar("T")

#: Request attribute set by the task_prerun receiver when the node is not runnable.
NOT_RUNNABLE = "dyrygent_not_runnable"

# Per executing thread: task ids whose outcome this thread has recorded, and
# task ids whose body returned although Celery then reports a failure.
_local = threading.local()


def _marks(name: str) -> set[str | None]:
    marks = getattr(_local, name, None)
    if marks is None:
        marks = set()
        setattr(_local, name, marks)
    return marks


def _workflow_id(request: Any) -> str | None:
    if request is None:
        return None
    if isinstance(request, dict):  # task_internal_error passes the raw request dict
        return request.get(HEADER) or (request.get("headers") or {}).get(HEADER)
    value = getattr(request, HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(HEADER)
    return value


def _task_request(sender: Any, request: Any = None) -> Any:
    if request is not None:
        return request
    return getattr(sender, "request", None)


def _step(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an engine step on a usable connection, retried while the database is away.

    The retry lasts DYRYGENT_OUTCOME_RETRY_FOR seconds, then the last error is raised.
    """
    return db.run(func, *args, retry_for=float(settings.OUTCOME_RETRY_FOR), what=what, **kwargs)


def _guarded(
    what: str, func: Callable[..., T], *args: Any, fallback: Callable[[], None] | None = None, **kwargs: Any,
) -> T | None:
    """``_step``, but a step that still fails is logged, ``fallback`` called, and left to the sweeper.

    The worker will no longer hold the task, so the node is re-run or
    repaired from the result backend (where ``fallback`` leaves an outcome).
    """
    try:
        return _step(what, func, *args, **kwargs)
    except Exception:
        logger.exception(
            "django_dyrygent could not record %s of workflow %s; the sweep will repair it",
            what, args[0] if args else "?",
        )
        if fallback is not None:
            fallback()
        return None


def _store_in_backend(
    task: Task[Any, Any] | None, request: Any, task_id: str | None, state: str, value: Any,
    traceback: str | None = None,
) -> None:
    """The outcome could not reach the node row: leave it in the result backend for the tick.

    Node tasks are published with ``ignore_result=True`` (``messaging``), so
    Celery stored nothing: the tick's ``reconcile`` reads a lost outcome from
    the backend, and this is where it finds it. When Celery did store it
    (the message did not ask to ignore it), nothing more is done. A backend
    that refuses too (the same database, down) leaves the node to the sweep.
    """
    if not getattr(request, "ignore_result", False) or task is None or task_id is None:
        return
    try:
        task.backend.store_result(task_id, value, state, traceback=traceback, request=request)
    except Exception:
        logger.exception("django_dyrygent could not store the outcome of task %s in the result backend "
                         "either; the sweep will re-run it", task_id)


def on_task_prerun(sender: Any = None, task_id: str | None = None, task: Task[Any, Any] | None = None,
                   **kwargs: Any) -> None:
    _marks("recorded").clear()
    _marks("body_succeeded").clear()
    request = _task_request(task or sender)
    workflow_id = _workflow_id(request)
    if workflow_id and task_id:
        hostname = getattr(request, "hostname", None) or ""
        pid = worker.MAIN_PID if hostname else None
        try:
            node = _step(f"the start of task {task_id}", hotpath.node_started, workflow_id, task_id, hostname, pid)
        except Exception:
            # Cannot tell (database unreachable): run it, as Celery would; its
            # outcome report is ignored if the node turns out not runnable.
            logger.exception("django_dyrygent could not record the start of task %s of workflow %s; "
                             "the sweep will repair it", task_id, workflow_id)
            return
        if node is None and request is not None:
            setattr(request, NOT_RUNNABLE, True)


def guard_before_start(before_start: BeforeStart) -> BeforeStart:
    """Wrap a task class's ``before_start``: refuse to run a node that is no longer runnable."""
    def guarded_before_start(
        self: Task[Any, Any], task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if getattr(self.request, NOT_RUNNABLE, False):
            logger.info("Task %s (%s) is not runnable any more (its node was canceled, skipped, "
                        "finished or retried under a new task id); its body is not run", task_id, self.name)
            raise Ignore()
        return before_start(self, task_id, args, kwargs)

    # A marker on the function object (install_run_guard reads it); mypy allows no attribute on a function.
    guarded_before_start.dyrygent_guard = True  # type: ignore[attr-defined]
    return guarded_before_start


def serve_worker(sender: Any = None, **kwargs: Any) -> None:
    """worker_init: this process is a worker, so the hot path keeps connections of its own (``engine.db``)."""
    if sender is not None:
        db.serve_worker()


def install_run_guard(sender: Any = None, **kwargs: Any) -> None:
    """worker_init: put the guard on the app's base Task class and on every task class.

    The base class covers tasks registered later; the per-class pass covers
    classes that define their own ``before_start`` (the guard wraps theirs and
    calls it). Not ``Task.add_around``: it would unwrap a ``functools.wraps``
    decorated ``before_start`` of the user's. Idempotent.
    """
    app = getattr(sender, "app", None)
    if app is None:
        return
    for cls in [app.Task] + [type(task) for task in app.tasks.values()]:
        if not getattr(cls.before_start, "dyrygent_guard", False):
            cls.before_start = guard_before_start(cls.before_start)


def on_task_success(sender: Task[Any, Any] | None = None, result: Any = None, **kwargs: Any) -> None:
    request = _task_request(sender)
    workflow_id = _workflow_id(request)
    if workflow_id:
        _marks("recorded").add(request.id)
        _guarded(f"the success of task {request.id}", hotpath.node_succeeded, workflow_id, request.id, result,
                 fallback=partial(_store_in_backend, sender, request, request.id, SUCCESS, result))


def on_task_postrun(
    sender: Any = None, task_id: str | None = None, task: Task[Any, Any] | None = None, retval: Any = None,
    state: str | None = None, **kwargs: Any,
) -> None:
    """The body returned but Celery sent no task_success: storing its result failed.

    Celery then reports the storage error through task_failure, as if the
    task had raised (a database blip during the django-db result backend's
    write). Record the success from here instead, and have the failure
    report ignored.
    """
    if state != SUCCESS or task_id in _marks("recorded"):
        return
    request = _task_request(task or sender)
    workflow_id = _workflow_id(request)
    if workflow_id:
        _marks("body_succeeded").add(task_id)
        _guarded(f"the success of task {task_id}", hotpath.node_succeeded, workflow_id, task_id, retval,
                 fallback=partial(_store_in_backend, task or sender, request, task_id, SUCCESS, retval))


def on_task_failure(
    sender: Task[Any, Any] | None = None, task_id: str | None = None, exception: BaseException | None = None,
    einfo: Any = None, **kwargs: Any,
) -> None:
    request = _task_request(sender)
    workflow_id = _workflow_id(request)
    if not workflow_id:
        return
    task_id = task_id or request.id
    if task_id in _marks("body_succeeded"):
        logger.warning("Task %s succeeded but Celery could not store its result (%r); "
                       "the success is recorded, the failure report ignored", task_id, exception)
        return
    if isinstance(exception, WorkerLostError):
        # A pool child died under the task (OOM killer, SIGKILL, SIGTERM to the group):
        # the worker is lost, the task did not fail.
        _guarded(f"the lost worker of task {task_id}", recovery.worker_lost, workflow_id, task_id, str(exception))
        return
    traceback = getattr(einfo, "traceback", "") or ""
    _guarded(f"the failure of task {task_id}", outcomes.node_failed, workflow_id, task_id, exception, traceback,
             fallback=partial(_store_in_backend, sender, request, task_id, FAILURE, exception, traceback))


def on_task_internal_error(
    sender: Any = None, task_id: str | None = None, request: Any = None, exception: BaseException | None = None,
    **kwargs: Any,
) -> None:
    """The result backend refused to store a task's failure (a NUL in its message, on PostgreSQL).

    Celery then never sends ``task_failure`` for the task's own exception,
    and the node would stay STARTED until reconciled. The task's exception is
    the deepest one in the chain of the storage error: record it (escaped).
    Only for a refused value: any other storage error (database down) is
    not about the outcome and is left to the tick.
    """
    workflow_id = _workflow_id(request)
    if not (workflow_id and task_id):
        return
    if not isinstance(exception, outcomes.VALUE_REFUSED):
        return
    original: BaseException = exception
    while (original.__cause__ or original.__context__) is not None:
        original = original.__cause__ or original.__context__  # type: ignore[assignment]  # not None: the loop test
    if original is exception or isinstance(original, outcomes.VALUE_REFUSED + (DatabaseError,)):
        return
    traceback = "".join(format_exception(type(original), original, original.__traceback__))
    note = f"\n(The result backend could not store this failure: {type(exception).__name__}: {exception})"
    _guarded(f"the failure of task {task_id}", outcomes.node_failed, workflow_id, task_id, original,
             traceback + note)


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **kwargs: Any) -> None:
    workflow_id = _workflow_id(request)
    if workflow_id:
        _guarded(f"the retry of task {request.id}", outcomes.node_retrying, workflow_id, request.id, reason)


def on_task_revoked(
    sender: Any = None, request: Any = None, terminated: bool | None = None, signum: Any = None,
    expired: bool | None = None, **kwargs: Any,
) -> None:
    workflow_id = _workflow_id(request)
    if workflow_id:
        why = "expired" if expired else ("terminated" if terminated else "revoked")
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        _guarded(f"the revocation of task {task_id}", outcomes.node_revoked, workflow_id, task_id, why)


def _message_ids(message: Any) -> tuple[str | None, str | None, str | None]:
    """(workflow id, task id, task name) from a raw message's headers; Nones when they are missing."""
    headers = getattr(message, "headers", None) or {}
    return headers.get(HEADER), headers.get("id"), headers.get("task")


def _report_not_run(workflow_id: str, task_id: str, error: str, reason: str) -> None:
    # Runs in the worker's consumer, not in a task: _guarded starts on a usable connection.
    _guarded(f"the rejection of task {task_id}", outcomes.node_not_run, workflow_id, task_id, error, reason)


def on_task_unknown(
    sender: Any = None, message: Any = None, exc: BaseException | None = None, name: str | None = None,
    id: str | None = None, **kwargs: Any,
) -> None:
    """The worker has no task of that name: fail the node now rather than after the requeue timeout."""
    workflow_id = _message_ids(message)[0]
    if workflow_id and id:
        hostname = getattr(sender, "hostname", None) or "the worker"
        _report_not_run(workflow_id, id, outcomes.unknown_task_error(name, hostname), "task not registered")


def on_task_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **kwargs: Any) -> None:
    """The worker could not decode the node's message and rejected it: fail the node now."""
    workflow_id, task_id, name = _message_ids(message)
    if workflow_id and task_id:
        hostname = getattr(sender, "hostname", None) or "the worker"
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        error = (
            f"A worker rejected the message of task {name!r}: {hostname} could not read it{why} and "
            "discarded it. Check that the caller and the workers use the same serializer and "
            "Celery message protocol, then retry the workflow."
        )
        _report_not_run(workflow_id, task_id, error, "message rejected")


def connect_worker_signals() -> None:
    """Idempotent: dispatch_uid keeps one connection per receiver."""
    celery_signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="django_dyrygent.prerun")
    celery_signals.task_success.connect(on_task_success, weak=False, dispatch_uid="django_dyrygent.success")
    celery_signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="django_dyrygent.postrun")
    celery_signals.task_failure.connect(on_task_failure, weak=False, dispatch_uid="django_dyrygent.failure")
    celery_signals.task_retry.connect(on_task_retry, weak=False, dispatch_uid="django_dyrygent.retry")
    celery_signals.task_internal_error.connect(
        on_task_internal_error, weak=False, dispatch_uid="django_dyrygent.internal_error"
    )
    celery_signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid="django_dyrygent.revoked")
    celery_signals.task_unknown.connect(on_task_unknown, weak=False, dispatch_uid="django_dyrygent.unknown")
    celery_signals.task_rejected.connect(on_task_rejected, weak=False, dispatch_uid="django_dyrygent.rejected")
    celery_signals.worker_init.connect(install_run_guard, weak=False, dispatch_uid="django_dyrygent.guard")
    celery_signals.worker_init.connect(serve_worker, weak=False, dispatch_uid="django_dyrygent.serve_worker")
    celery_signals.worker_init.connect(broker.guard_redis_restore, weak=False,
                                       dispatch_uid="django_dyrygent.redis_restore")
    celery_signals.worker_init.connect(backend.guard_database_backend, weak=False,
                                       dispatch_uid="django_dyrygent.result_backend")
    worker.connect()


def worker_signals_connected() -> bool:
    return any(
        "django_dyrygent.success" in str(key) for key, _ in celery_signals.task_success.receivers
    )

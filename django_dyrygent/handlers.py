"""Worker-side Celery signal receivers: they turn task events into engine steps.

A task belongs to a workflow when its message carries the ``dyrygent_workflow``
header; every other task costs one dictionary lookup. Each step runs on a
usable database connection and is retried while the database is away
(``db.run``); a receiver never lets an exception escape into Celery: after
DYRYGENT_OUTCOME_RETRY_FOR the event is logged and the sweep repairs it (the
worker no longer holds the task: result backend, else a re-run).
"""

import logging
import threading

from billiard.exceptions import WorkerLostError
from celery import signals as celery_signals
from celery.states import SUCCESS

from . import db, engine, recovery, worker
from .conf import settings

logger = logging.getLogger("django_dyrygent.handlers")

# Per executing thread: task ids whose outcome this thread has recorded, and
# task ids whose body returned although Celery then reports a failure.
_local = threading.local()


def _marks(name):
    marks = getattr(_local, name, None)
    if marks is None:
        marks = set()
        setattr(_local, name, marks)
    return marks


def _workflow_id(request):
    if request is None:
        return None
    value = getattr(request, "dyrygent_workflow", None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get("dyrygent_workflow")
    return value


def _task_request(sender, request=None):
    if request is not None:
        return request
    return getattr(sender, "request", None)


def _guarded(what, func, *args, **kwargs):
    """Run an engine step on a usable connection, retried while the database is away.

    The retry lasts DYRYGENT_OUTCOME_RETRY_FOR seconds; after that the event
    is logged and left to the sweeper (the worker will no longer hold the
    task, so the node is re-run or repaired from the result backend).
    """
    try:
        return db.run(func, *args, retry_for=float(settings.OUTCOME_RETRY_FOR), what=what, **kwargs)
    except Exception:
        logger.exception(
            "django_dyrygent could not record %s of workflow %s; the sweep will repair it",
            what, args[0] if args else "?",
        )
        return None


def on_task_prerun(sender=None, task_id=None, task=None, **kwargs):
    _marks("recorded").clear()
    _marks("body_succeeded").clear()
    request = _task_request(task or sender)
    workflow_id = _workflow_id(request)
    if workflow_id and task_id:
        hostname = getattr(request, "hostname", None) or ""
        pid = worker.MAIN_PID if hostname else None
        _guarded(f"the start of task {task_id}", engine.node_started, workflow_id, task_id, hostname, pid)


def on_task_success(sender=None, result=None, **kwargs):
    request = _task_request(sender)
    workflow_id = _workflow_id(request)
    if workflow_id:
        _marks("recorded").add(request.id)
        _guarded(f"the success of task {request.id}", engine.node_succeeded, workflow_id, request.id, result)


def on_task_postrun(sender=None, task_id=None, task=None, retval=None, state=None, **kwargs):
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
        _guarded(f"the success of task {task_id}", engine.node_succeeded, workflow_id, task_id, retval)


def on_task_failure(sender=None, task_id=None, exception=None, einfo=None, **kwargs):
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
    _guarded(f"the failure of task {task_id}", engine.node_failed, workflow_id, task_id, exception, traceback)


def on_task_retry(sender=None, request=None, reason=None, **kwargs):
    workflow_id = _workflow_id(request)
    if workflow_id:
        _guarded(f"the retry of task {request.id}", engine.node_retrying, workflow_id, request.id, reason)


def on_task_revoked(sender=None, request=None, terminated=None, signum=None, expired=None, **kwargs):
    workflow_id = _workflow_id(request)
    if workflow_id:
        why = "expired" if expired else ("terminated" if terminated else "revoked")
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        _guarded(f"the revocation of task {task_id}", engine.node_revoked, workflow_id, task_id, why)


def connect_worker_signals():
    """Idempotent: dispatch_uid keeps one connection per receiver."""
    celery_signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="django_dyrygent.prerun")
    celery_signals.task_success.connect(on_task_success, weak=False, dispatch_uid="django_dyrygent.success")
    celery_signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="django_dyrygent.postrun")
    celery_signals.task_failure.connect(on_task_failure, weak=False, dispatch_uid="django_dyrygent.failure")
    celery_signals.task_retry.connect(on_task_retry, weak=False, dispatch_uid="django_dyrygent.retry")
    celery_signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid="django_dyrygent.revoked")
    worker.connect()


def worker_signals_connected():
    return any(
        "django_dyrygent.success" in str(key) for key, _ in celery_signals.task_success.receivers
    )

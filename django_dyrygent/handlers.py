"""Worker-side Celery signal receivers: they turn task events into engine steps.

A task belongs to a workflow when its message carries the ``dyrygent_workflow``
header; every other task costs one dictionary lookup. A receiver never lets an
exception escape into Celery: the event is logged and the tick reconciles it
later from the result backend.
"""

import logging

from celery import signals as celery_signals
from django.db import close_old_connections

logger = logging.getLogger("django_dyrygent.handlers")


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
    try:
        return func(*args, **kwargs)
    except Exception:
        logger.exception(
            "django_dyrygent could not record %s of workflow %s; the tick will reconcile it",
            what, args[0] if args else "?",
        )
        return None


def on_task_prerun(sender=None, task_id=None, task=None, **kwargs):
    request = _task_request(task or sender)
    workflow_id = _workflow_id(request)
    if workflow_id and task_id:
        from . import engine

        _guarded(f"the start of task {task_id}", engine.node_started, workflow_id, task_id)


def on_task_success(sender=None, result=None, **kwargs):
    request = _task_request(sender)
    workflow_id = _workflow_id(request)
    if workflow_id:
        from . import engine

        _guarded(f"the success of task {request.id}", engine.node_succeeded, workflow_id, request.id, result)


def on_task_failure(sender=None, task_id=None, exception=None, einfo=None, **kwargs):
    request = _task_request(sender)
    workflow_id = _workflow_id(request)
    if workflow_id:
        from . import engine

        traceback = getattr(einfo, "traceback", "") or ""
        _guarded(
            f"the failure of task {task_id}", engine.node_failed, workflow_id,
            task_id or request.id, exception, traceback,
        )


def on_task_retry(sender=None, request=None, reason=None, **kwargs):
    workflow_id = _workflow_id(request)
    if workflow_id:
        from . import engine

        _guarded(f"the retry of task {request.id}", engine.node_retrying, workflow_id, request.id, reason)


def on_task_revoked(sender=None, request=None, terminated=None, signum=None, expired=None, **kwargs):
    workflow_id = _workflow_id(request)
    if workflow_id:
        from . import engine

        why = "expired" if expired else ("terminated" if terminated else "revoked")
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        # Runs in the worker's main process: make sure its connection is usable.
        close_old_connections()
        _guarded(f"the revocation of task {task_id}", engine.node_revoked, workflow_id, task_id, why)


def _message_ids(message):
    """(workflow id, task id, task name) from a raw message's headers; Nones when they are missing."""
    headers = getattr(message, "headers", None) or {}
    return headers.get("dyrygent_workflow"), headers.get("id"), headers.get("task")


def _report_not_run(workflow_id, task_id, error, reason):
    from . import engine

    # Runs in the worker's consumer (not in a task): make sure its connection is usable.
    close_old_connections()
    _guarded(f"the rejection of task {task_id}", engine.node_not_run, workflow_id, task_id, error, reason)


def on_task_unknown(sender=None, message=None, exc=None, name=None, id=None, **kwargs):
    """The worker has no task of that name: fail the node now rather than after the requeue timeout."""
    workflow_id = _message_ids(message)[0]
    if workflow_id and id:
        from . import engine

        hostname = getattr(sender, "hostname", None) or "the worker"
        _report_not_run(workflow_id, id, engine.unknown_task_error(name, hostname), "task not registered")


def on_task_rejected(sender=None, message=None, exc=None, **kwargs):
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


def connect_worker_signals():
    """Idempotent: dispatch_uid keeps one connection per receiver."""
    celery_signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="django_dyrygent.prerun")
    celery_signals.task_success.connect(on_task_success, weak=False, dispatch_uid="django_dyrygent.success")
    celery_signals.task_failure.connect(on_task_failure, weak=False, dispatch_uid="django_dyrygent.failure")
    celery_signals.task_retry.connect(on_task_retry, weak=False, dispatch_uid="django_dyrygent.retry")
    celery_signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid="django_dyrygent.revoked")
    celery_signals.task_unknown.connect(on_task_unknown, weak=False, dispatch_uid="django_dyrygent.unknown")
    celery_signals.task_rejected.connect(on_task_rejected, weak=False, dispatch_uid="django_dyrygent.rejected")


def worker_signals_connected():
    return any(
        "django_dyrygent.success" in str(key) for key, _ in celery_signals.task_success.receivers
    )

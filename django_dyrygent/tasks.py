"""Celery tasks: thin wrappers over ``engine`` and ``recovery``.

Both run on a usable database connection and retry a step that hit a
database blip (``db.run``): a worker child must never keep failing ticks on
a connection the server dropped.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from celery import Celery, Task, shared_task

from . import engine, launch, subworkflows
from .catalogue import UnknownDefinition
from .engine import db
from .engine.messaging import START_CHILD_TASK, TICK_TASK
from .worker.recovery import Sweeper

#: Keeps its broker probe between two sweeps run by this process.
_sweeper = Sweeper()

# Seconds a tick or sweep task retries on a fresh connection before giving up.
RETRY_FOR = 10.0


@shared_task(name=TICK_TASK, ignore_result=True)
def tick(workflow_id: UUID | str) -> str:
    """Advance one workflow: start it, reconcile lost events, enforce its deadline."""
    return db.run(engine.tick, workflow_id, scheduled=True, retry_for=RETRY_FOR, what="a tick")


@shared_task(name="django_dyrygent.sweep", ignore_result=True)
def sweep(stale_after: float | None = None, batch_size: int = 100) -> int:
    """Tick every running workflow whose tick is overdue and recover nodes of lost workers.

    Workers with DYRYGENT_LIVENESS already do this themselves; scheduling it
    with Celery beat is optional.
    """
    ticked, _recovered = db.run(
        _sweeper.sweep_once, batch_size=batch_size, stale_after=stale_after, retry_for=RETRY_FOR, what="a sweep",
    )
    return ticked


@shared_task(name=START_CHILD_TASK, ignore_result=True)
def start_subworkflow(node_id: int) -> str:
    """Build and start the child workflow of a reached sub-workflow node (``subworkflows.start``)."""
    return db.run(subworkflows.start, node_id, retry_for=RETRY_FOR, what="a sub-workflow start")


# Expected failures: Celery logs them in one line, without a traceback.
@shared_task(name="django_dyrygent.start_definition", throws=(UnknownDefinition, launch.StartError))
def start_definition(name: str, params: dict[str, Any] | None = None) -> dict[str, str | None]:
    """Start a catalogue definition from a schedule, under its overlap policy.

    Beat entry: ``{"task": "django_dyrygent.start_definition", "schedule": ...,
    "kwargs": {"name": "nightly-report", "params": {"limit": 10}}}``. An unknown
    name or bad parameters fail the task with the form's message and what to
    do, and leave a ``FailedStart`` row that the admin shows.
    """
    try:
        outcome = launch.start_scheduled(name, params)
    except (UnknownDefinition, launch.StartError) as exc:
        failed = launch.record_failed_start(name, params, exc, hostname=start_definition.request.hostname or "")
        # The task's result says what to do too (ParameterError's own constructor wants a form).
        error_class = UnknownDefinition if isinstance(exc, UnknownDefinition) else launch.StartError
        raise error_class(failed.error) from None
    return {"status": outcome.status, "workflow": str(outcome.workflow.pk) if outcome.workflow else None}



# celery-dyrygent's processor-task keywords that describe its own task, not how ticks are sent.
PROCESSOR_ONLY_KEYWORDS = frozenset({"name", "bind", "max_retries", "base", "typing"})
# Task attributes Celery turns into publish options (celery.app.task.extract_exec_options).
PUBLISH_KEYWORDS = frozenset({
    "queue", "routing_key", "exchange", "priority", "expires", "serializer", "delivery_mode",
    "compression", "time_limit", "soft_time_limit",
})


def register_workflow_processor(app: Celery, **decorator_kws: Any) -> Task[Any, Any]:
    """celery-dyrygent compatibility: return the tick task of ``app``, shaped by the peer's keywords.

    The tick is a ``shared_task`` named ``django_dyrygent.tick`` whatever
    ``name=`` says (route that name). Keywords that are Task attributes
    (``queue``, ``priority``, ``routing_key``, ``acks_late``, ``time_limit``,
    ...) are set on the app's tick task, as celery-dyrygent's decorator would
    set them on its processor, so every tick is sent with them.
    """
    task = app.tasks[tick.name]
    unknown = sorted(
        k for k in decorator_kws
        if k not in PROCESSOR_ONLY_KEYWORDS and k not in PUBLISH_KEYWORDS and not hasattr(task, k)
    )
    if unknown:
        raise TypeError(f"register_workflow_processor() got unknown task option(s): {', '.join(unknown)}")
    for key, value in decorator_kws.items():
        if key not in PROCESSOR_ONLY_KEYWORDS:
            setattr(task, key, value)
    # Celery caches the publish options read from the attributes (private: not in the stubs).
    task._exec_options = None  # type: ignore[attr-defined]
    return task

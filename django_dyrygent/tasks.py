"""Celery tasks: thin wrappers over ``engine``."""

from celery import shared_task

from . import engine


@shared_task(name="django_dyrygent.tick", ignore_result=True)
def tick(workflow_id):
    """Advance one workflow: start it, reconcile lost events, enforce its deadline."""
    return engine.tick(workflow_id, scheduled=True)


@shared_task(name="django_dyrygent.sweep", ignore_result=True)
def sweep(stale_after=None, batch_size=100):
    """Tick every running workflow whose tick is overdue; schedule it with Celery beat."""
    return engine.sweep(stale_after=stale_after, batch_size=batch_size)


# celery-dyrygent's processor-task keywords that describe its own task, not how ticks are sent.
PROCESSOR_ONLY_KEYWORDS = frozenset({"name", "bind", "max_retries", "base", "typing"})
# Task attributes Celery turns into publish options (celery.app.task.extract_exec_options).
PUBLISH_KEYWORDS = frozenset({
    "queue", "routing_key", "exchange", "priority", "expires", "serializer", "delivery_mode",
    "compression", "time_limit", "soft_time_limit",
})


def register_workflow_processor(app, **decorator_kws):
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
    task._exec_options = None  # Celery caches the publish options read from the attributes
    return task

"""Celery tasks: thin wrappers over ``engine``."""

from celery import shared_task

from . import engine, launch


@shared_task(name="django_dyrygent.tick", ignore_result=True)
def tick(workflow_id):
    """Advance one workflow: start it, reconcile lost events, enforce its deadline."""
    return engine.tick(workflow_id, scheduled=True)


@shared_task(name="django_dyrygent.sweep", ignore_result=True)
def sweep(stale_after=None, batch_size=100):
    """Tick every running workflow whose tick is overdue; schedule it with Celery beat."""
    return engine.sweep(stale_after=stale_after, batch_size=batch_size)


@shared_task(name="django_dyrygent.start_definition")
def start_definition(name, params=None):
    """Start a catalogue definition from a schedule, under its overlap policy.

    Beat entry: ``{"task": "django_dyrygent.start_definition", "schedule": ...,
    "kwargs": {"name": "nightly-report", "params": {"limit": 10}}}``. An unknown
    name or bad parameters fail the task with the form's message.
    """
    outcome = launch.start_scheduled(name, params)
    return {"status": outcome.status, "workflow": str(outcome.workflow.pk) if outcome.workflow else None}


def register_workflow_processor(app):
    """celery-dyrygent compatibility: the tick is a shared_task, so this only returns it."""
    return app.tasks[tick.name] if tick.name in app.tasks else tick

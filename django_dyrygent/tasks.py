"""Celery tasks: thin wrappers over ``engine`` and ``recovery``.

Both run on a usable database connection and retry a step that hit a
database blip (``db.run``): a worker child must never keep failing ticks on
a connection the server dropped.
"""

from celery import shared_task

from . import db, engine
from .recovery import Sweeper

#: Keeps its broker probe between two sweeps run by this process.
_sweeper = Sweeper()

# Seconds a tick or sweep task retries on a fresh connection before giving up.
RETRY_FOR = 10.0


@shared_task(name="django_dyrygent.tick", ignore_result=True)
def tick(workflow_id):
    """Advance one workflow: start it, reconcile lost events, enforce its deadline."""
    return db.run(engine.tick, workflow_id, scheduled=True, retry_for=RETRY_FOR, what="a tick")


@shared_task(name="django_dyrygent.sweep", ignore_result=True)
def sweep(stale_after=None, batch_size=100):
    """Tick every running workflow whose tick is overdue and recover nodes of lost workers.

    Workers with DYRYGENT_LIVENESS already do this themselves; scheduling it
    with Celery beat is optional.
    """
    ticked, _recovered = db.run(
        _sweeper.sweep_once, batch_size=batch_size, stale_after=stale_after, retry_for=RETRY_FOR, what="a sweep",
    )
    return ticked


def register_workflow_processor(app):
    """celery-dyrygent compatibility: the tick is a shared_task, so this only returns it."""
    return app.tasks[tick.name] if tick.name in app.tasks else tick

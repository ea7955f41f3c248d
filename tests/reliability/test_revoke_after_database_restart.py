"""A revoke after a database restart still reaches the result backend.

A worker's revoke control command stores REVOKED in the django-db result
backend for each revoked task it does not hold (``celery.worker.control``),
on its main thread's Django connection. Nothing on that thread checks the
connection: after PostgreSQL restarted, the revokes of tasks held elsewhere
failed on the dead connection (``Failed to mark task ... as revoked in
backend``) until something else on that thread happened to replace it.
``worker/backend.py`` makes those calls on a usable connection.

The workflows here publish to a queue no worker consumes, so the worker
hears of their tasks only through the revoke.
"""

import pytest
from celery import current_app, group
from django_celery_results.models import TaskResult

from django_dyrygent import engine
from django_dyrygent.models import Workflow, WorkflowNode
from tests.reliability import harness
from tests.reliability.tasks import run

pytestmark = pytest.mark.django_db(transaction=True)

PARKED = "dyrygent-rel-parked"


def _canceled(rel, name):
    """The task ids of a three-node workflow on the parked queue, canceled while QUEUED."""
    wf = Workflow(name=name, options={"queue": PARKED})
    wf.add_celery_canvas(group(run.si(f"{name}{i}") for i in range(3)))
    wf.apply_async(options={"queue": PARKED})
    engine.tick(wf.pk, scheduled=False)  # its tick went to the parked queue too: queue the nodes here
    task_ids = set(wf.nodes.filter(state=WorkflowNode.State.QUEUED).values_list("task_id", flat=True))
    assert len(task_ids) == 3
    assert wf.cancel()
    return task_ids


def _revoked(task_ids):
    return set(TaskResult.objects.filter(task_id__in=task_ids, status="REVOKED").values_list("task_id", flat=True))


def test_revoke__the_worker_stores_revoked_after_a_database_restart(rel):
    worker = rel.ready_worker("revoke-db")
    # A broadcast reaches only a worker already listening: wait until it answers one.
    harness.wait_for(lambda: current_app.control.ping([worker.hostname], timeout=0.5), 60, what="a ping answered")
    first = _canceled(rel, "first")  # the worker's main thread connects for these
    harness.wait_for(lambda: rel.query(lambda: _revoked(first) == first), 60, what="the first revokes stored")

    rel.restart_database()
    second = _canceled(rel, "second")
    try:
        harness.wait_for(lambda: rel.query(lambda: _revoked(second) == second), 60,
                         what="the revokes after the restart stored")
    except TimeoutError as exc:  # the worker's log says why (Failed to mark task ... as revoked in backend)
        raise AssertionError(f"{exc}\n{rel.logs()}") from None

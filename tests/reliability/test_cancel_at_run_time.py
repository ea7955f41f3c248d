"""Cancel honoured where the work runs: a node that is no longer runnable never runs its body.

Celery's revoke is a broadcast: a worker that was down when ``cancel()``
ran never hears it, and a worker checks its revoked set only before it
hands a message to the pool. The engine's own guard (handlers.py) decides
at the start of the body, from the STARTED conditional UPDATE, so neither
case runs a body: each test counts the bodies that ran (one Execution row
per run).
"""

import pytest
from celery import group
from celery.worker import state as worker_state
from django.conf import settings

from django_dyrygent import engine
from django_dyrygent.engine import messaging
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import purge_queue, wait_for, wait_worker_idle
from tests.models import Execution
from tests.reliability.relb_worker import start_worker, stop_worker
from tests.tasks import record

pytestmark = pytest.mark.worker

S = WorkflowNode.State
# The run's own queue name plus a suffix: runs sharing a RabbitMQ vhost must not share it.
QUEUE = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-relb-cancel"


@pytest.fixture
def own_queue():
    """A queue no shared worker consumes, empty before and after the test."""
    purge_queue(QUEUE)  # RabbitMQ: a queue it has never seen is no error there
    yield QUEUE
    purge_queue(QUEUE)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_cancel__a_worker_down_during_cancel_runs_none_of_the_bodies_and_retry_runs_each_once(
    own_queue, tmp_path, pool
):
    wf = Workflow(name="cancel-worker-down", options={"queue": own_queue})
    wf.add_celery_canvas(group(record.si(f"r{i}") for i in range(12)))
    skipped = wf.add_signature(record.si("skipped"))
    wf.apply_async(options={"queue": own_queue})
    engine.tick(wf.pk, scheduled=False)  # no worker yet: this process starts it and publishes
    assert wf.nodes.filter(state=S.QUEUED).count() == 13
    assert wf.skip([skipped]) == 1
    assert wf.cancel(reason="stop") is True  # the revoke broadcast reaches nobody
    old_ids = set(wf.nodes.values_list("task_id", flat=True))

    proc = start_worker(tmp_path / "worker.log", own_queue, pool=pool)
    try:
        # With one execution slot the queue is worked in order: once this marker ran,
        # every message of the canceled workflow has been taken.
        record.apply_async(("marker",), queue=own_queue)
        wait_for(lambda: Execution.objects.filter(label="marker").exists(), "the marker task", timeout=60)
        assert list(Execution.objects.values_list("label", flat=True)) == ["marker"], (
            (tmp_path / "worker.log").read_text())
        states = dict(wf.nodes.values_list("signature__args__0", "state"))
        assert states == {"skipped": S.SKIPPED, **{f"r{i}": S.CANCELED for i in range(12)}}

        # retry(): fresh task ids; the old messages are gone, each body runs once.
        assert wf.retry() == 12
        assert wf.wait(timeout=60) == Workflow.State.SUCCESS, (tmp_path / "worker.log").read_text()
    finally:
        stop_worker(proc)
    ran = Execution.objects.exclude(label="marker")
    assert sorted(ran.values_list("label", flat=True)) == sorted(f"r{i}" for i in range(12))
    new_ids = set(ran.values_list("task_id", flat=True))
    assert not new_ids & old_ids
    assert new_ids == set(wf.nodes.filter(state=S.SUCCESS).values_list("task_id", flat=True))
    wf.refresh_from_db()
    counters = (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_skipped, wf.nodes_failed)
    assert counters == (13, 13, 12, 1, 0)


def test_cancel__messages_the_worker_received_before_the_cancel_committed_do_not_run(worker, monkeypatch):
    """The revoke broadcast is lost here on purpose: only the run-time guard stands in the way."""
    monkeypatch.setattr(messaging, "revoke", lambda task_ids, terminate=False: None)
    wf = Workflow(name="cancel-received")
    wf.add_celery_canvas(group(record.si(f"s{i}", sleep=0.6) for i in range(12)))
    wf.apply_async()
    nodes = wf.nodes.filter(kind=WorkflowNode.Kind.TASK)
    wait_for(lambda: nodes.filter(state=S.STARTED).count() == 4, "four of them to start (four threads)")
    # The worker prefetches: the other eight messages are in its hands already.
    assert wf.cancel() is True
    started_before_cancel = set(nodes.exclude(started_at=None).values_list("task_id", flat=True))
    assert wait_worker_idle(timeout=30)
    wait_for(lambda: not worker_state.reserved_requests, "the worker to drop what it reserved", timeout=30)
    ran = set(Execution.objects.values_list("task_id", flat=True))
    # Those already running finish (a thread cannot be stopped); none of the others ran.
    assert ran == started_before_cancel and len(ran) == 4
    assert set(nodes.values_list("state", flat=True)) == {S.CANCELED}
    wf.refresh_from_db()
    assert wf.state == Workflow.State.CANCELED
    assert (wf.nodes_done, wf.nodes_failed, wf.nodes_succeeded) == (12, 12, 0)

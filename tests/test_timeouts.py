import time

import pytest
from django.core.exceptions import ValidationError

from django_dyrygent import engine
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import noop, sleep


def test_add_signature__rejects_a_non_positive_timeout():
    wf = Workflow()
    with pytest.raises(ValidationError, match="timeout must be a positive"):
        wf.add_signature(noop.si(), timeout=0)


@pytest.mark.worker
def test_timeout__a_started_node_past_its_timeout_fails_and_descendants_do_not_run(worker, settings):
    wf = Workflow(name="timeout")
    slow = wf.add_signature(sleep.si(3), timeout=0.5)
    after = wf.add_signature(noop.si(), dependencies=[slow])
    wf.apply_async()
    # Wait for the worker to report the start, then let the timeout pass and tick.
    for _ in range(100):
        slow.refresh_from_db()
        if slow.state == WorkflowNode.State.STARTED:
            break
        time.sleep(0.05)
    assert slow.state == WorkflowNode.State.STARTED
    assert slow.timeout_at is not None
    time.sleep(0.8)
    engine.tick(wf.pk, scheduled=False)
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.state == WorkflowNode.State.FAILURE
    assert slow.reason == "timed out" and "Timed out" in slow.error
    assert after.state == WorkflowNode.State.UPSTREAM_FAILED
    assert wf.wait(timeout=10) == Workflow.State.FAILURE
    # The late success of the slow task (thread pool: cannot be terminated) changes nothing.
    time.sleep(3)
    slow.refresh_from_db()
    assert slow.state == WorkflowNode.State.FAILURE


@pytest.mark.worker
def test_deadline__ends_the_workflow_error_and_cancels_what_still_runs(worker):
    from datetime import timedelta

    from django.utils import timezone

    wf = Workflow(name="deadline")
    slow = wf.add_signature(sleep.si(2))
    after = wf.add_signature(noop.si(), dependencies=[slow])
    wf.apply_async()
    for _ in range(100):
        slow.refresh_from_db()
        if slow.state == WorkflowNode.State.STARTED:
            break
        time.sleep(0.05)
    Workflow.objects.filter(pk=wf.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.ERROR
    assert "deadline" in wf.error
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.state == WorkflowNode.State.CANCELED
    assert after.state == WorkflowNode.State.CANCELED

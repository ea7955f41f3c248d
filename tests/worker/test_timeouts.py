import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import wait_worker_idle
from tests.tasks import noop, sleep


def _wait_started(node, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node.refresh_from_db()
        if node.state == WorkflowNode.State.STARTED:
            return
        time.sleep(0.05)
    raise AssertionError(f"node {node.task_id} is {node.state}, not STARTED, after {timeout}s")


def _pass_timeout(node):
    """Move the node's timeout into the past, as the clock would, without waiting for it."""
    WorkflowNode.objects.filter(pk=node.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))


def test_add_signature__rejects_a_non_positive_timeout():
    wf = Workflow()
    with pytest.raises(ValidationError, match="timeout must be a positive"):
        wf.add_signature(noop.si(), timeout=0)


@pytest.mark.worker
def test_timeout__a_started_node_past_its_timeout_fails_and_descendants_do_not_run(worker, settings):
    wf = Workflow(name="timeout")
    slow = wf.add_signature(sleep.si(3), timeout=60)
    after = wf.add_signature(noop.si(), dependencies=[slow])
    wf.apply_async()
    # Wait for the worker to report the start, then let the timeout pass and tick.
    _wait_started(slow)
    assert slow.timeout_at is not None
    _pass_timeout(slow)
    engine.tick(wf.pk, scheduled=False)
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.state == WorkflowNode.State.FAILURE
    assert slow.reason == "timed out" and "Timed out" in slow.error
    assert after.state == WorkflowNode.State.UPSTREAM_FAILED
    assert wf.wait(timeout=10) == Workflow.State.FAILURE
    # The late success of the slow task (thread pool: cannot be terminated) changes nothing.
    assert wait_worker_idle(timeout=20), "the slow task never ended"
    slow.refresh_from_db()
    assert slow.state == WorkflowNode.State.FAILURE


@pytest.mark.worker
def test_deadline__ends_the_workflow_error_and_cancels_what_still_runs(worker):
    wf = Workflow(name="deadline")
    slow = wf.add_signature(sleep.si(2))
    after = wf.add_signature(noop.si(), dependencies=[slow])
    wf.apply_async()
    _wait_started(slow)
    Workflow.objects.filter(pk=wf.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    assert wf.state == Workflow.State.ERROR
    assert "deadline" in wf.error
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.state == WorkflowNode.State.CANCELED
    assert after.state == WorkflowNode.State.CANCELED


def test_add_signature__rejects_max_attempts_below_one():
    wf = Workflow()
    with pytest.raises(ValidationError, match="max_attempts must be a whole number of at least 1"):
        wf.add_signature(noop.si(), timeout=1, max_attempts=0)


@pytest.mark.worker
def test_timeout__a_node_with_attempts_left_runs_again_under_a_fresh_task_id(worker):
    from tests.models import Execution
    from tests.tasks import slow_first

    wf = Workflow(name="timeout-retry")
    node = wf.add_signature(slow_first.si("n"), timeout=60, max_attempts=2)
    after = wf.add_signature(noop.si(), dependencies=[node])
    wf.apply_async()
    first_id = node.task_id
    _wait_started(node)
    _pass_timeout(node)
    engine.tick(wf.pk, scheduled=False)
    node.refresh_from_db()
    assert node.task_id != first_id and node.previous_task_ids == [first_id]
    assert node.attempts == 2
    assert node.reason == "timed out; attempt 2 of 2"
    assert wf.wait(timeout=20) == Workflow.State.SUCCESS
    node.refresh_from_db()
    after.refresh_from_db()
    assert node.state == WorkflowNode.State.SUCCESS and after.state == WorkflowNode.State.SUCCESS
    # Both runs happened; the abandoned one's late success (thread pool: not terminable) was ignored.
    assert Execution.objects.filter(label="start:n").count() == 2
    assert wait_worker_idle(timeout=20), "the abandoned first run never ended"
    node.refresh_from_db()
    assert node.task_id != first_id and node.state == WorkflowNode.State.SUCCESS

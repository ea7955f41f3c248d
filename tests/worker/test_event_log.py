"""The event log: one WorkflowEvent per transition, written with the change, pruned with the workflow."""

import pytest

from django_dyrygent.models import Workflow, WorkflowEvent
from tests.tasks import fail, record


@pytest.mark.worker
def test_event_log__records_every_transition_of_a_run_in_order(worker):
    wf = Workflow(name="events")
    a = wf.add_signature(record.si("a"))
    b = wf.add_signature(record.si("b"), dependencies=[a])
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    workflow_events = list(
        wf.events.filter(node__isnull=True).values_list("old_state", "new_state")
    )
    assert workflow_events == [("INITIAL", "RUNNING"), ("RUNNING", "SUCCESS")]
    for node in (a, b):
        path = list(node.events.order_by("created_at", "id").values_list("old_state", "new_state"))
        # STARTED writes no event row (one UPDATE on the hot path): the node's started_at records it.
        assert path == [("PENDING", "QUEUED"), ("STARTED", "SUCCESS")]
        node.refresh_from_db()
        assert node.queued_at <= node.started_at <= node.finished_at
    # b was queued in the transaction that recorded a's success: same timestamp, same step.
    a_done = a.events.get(new_state="SUCCESS").created_at
    b_queued = b.events.get(new_state="QUEUED").created_at
    assert a_done == b_queued


@pytest.mark.worker
def test_event_log__says_why_a_node_did_not_run(worker):
    wf = Workflow(name="events-failure")
    broken = wf.add_signature(fail.si("disk full"))
    after = wf.add_signature(record.si("after"), dependencies=[broken])
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.FAILURE
    event = after.events.get()
    assert (event.old_state, event.new_state) == ("PENDING", "UPSTREAM_FAILED")
    assert event.reason == "a dependency did not succeed"
    assert wf.events.filter(node__isnull=True, new_state="FAILURE").exists()


@pytest.mark.django_db(transaction=True)
def test_event_log__is_deleted_with_its_workflow(monkeypatch):
    from django_dyrygent import engine
    from django_dyrygent.engine import messaging

    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    wf = Workflow()
    wf.add_signature(record.si("x"))
    wf.apply_async()
    engine.tick(wf.pk)
    assert WorkflowEvent.objects.filter(workflow=wf).count() == 2
    Workflow.objects.filter(pk=wf.pk).delete()
    assert not WorkflowEvent.objects.exists()

"""End-of-workflow bugs of issue 8 (item 7), each end to end where a worker is involved.

Each test failed before its fix: retry() of a SUCCESS workflow whose
finalizer failed raised TransitionNotAllowed; a fan-out without followers
whose source returned no list let the workflow end SUCCESS; a lost callback
publish was never repaired once the workflow had ended; retry() kept
engine_errors; skip() racing a worker raised TransitionNotAllowed.
"""

import time

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from django_dyrygent import engine
from django_dyrygent.engine import messaging, outcomes, repair, steps
from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.states import NodeKind
from tests.conftest import wait_for, wait_worker_idle
from tests.models import Execution
from tests.tasks import add, gate, on_end, record, square

S = WorkflowNode.State
TIMEOUT = 30
CALLBACKS = (NodeKind.ERROR_CALLBACK, NodeKind.FINALIZER)


def labels():
    return list(Execution.objects.values_list("label", flat=True))


def callbacks_settled(wf):
    final = [S.SUCCESS, S.SKIPPED, S.FAILURE]
    return not wf.nodes.filter(kind__in=CALLBACKS).exclude(state__in=final).exists()


@pytest.mark.worker
def test_retry__a_success_workflow_whose_finalizer_failed_reruns_the_finalizer_only(worker, admin_client):
    wf = Workflow(name="finalizer-failed")
    wf.add_signature(record.si("work"))
    final = wf.link_finalizer(gate.si("fin"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    wait_for(lambda: WorkflowNode.objects.get(pk=final.pk).state == S.FAILURE, "the finalizer to fail")
    old_task_id = WorkflowNode.objects.get(pk=final.pk).task_id

    Execution.objects.create(label="flag:fin")  # the cause is fixed
    response = admin_client.post(reverse("admin:django_dyrygent_workflow_changelist"), {
        "action": "retry_workflows", "_selected_action": [wf.pk], "index": 0,
    })
    assert response.status_code == 302  # was a 500 (TransitionNotAllowed: SUCCESS -> RUNNING)
    wait_for(lambda: WorkflowNode.objects.get(pk=final.pk).state == S.SUCCESS, "the finalizer to run again")
    final.refresh_from_db()
    wf.refresh_from_db()
    assert wf.state == Workflow.State.SUCCESS  # the outcome stands
    assert final.task_id != old_task_id and final.previous_task_ids == [old_task_id]
    assert labels().count("work") == 1 and labels().count("gate:fin") == 2
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (1, 1, 1, 0)
    assert engine.retry(wf.pk) == 0  # nothing failed any more


@pytest.mark.worker
def test_fanout__a_source_without_a_list_and_no_followers_ends_failure_and_runs_link_error(worker):
    wf = Workflow(name="fanout-no-followers")
    source = wf.add_signature(add.si(1, 2))
    fan = wf.add_fanout(square.s(), dependency=source)
    wf.link_error(on_end.s("error"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE  # was SUCCESS
    fan.refresh_from_db()
    assert fan.state == S.FAILURE and "not a list" in fan.error
    # The fan-out counts as one failed node.
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (2, 2, 1, 1)
    wait_for(lambda: callbacks_settled(wf), "the error callback")
    assert labels() == [f"error:{wf.pk}"]


@pytest.mark.worker
def test_callbacks__a_lost_callback_publish_is_repaired_after_the_workflow_ended(
    worker, monkeypatch, settings, admin_client
):
    settings.DYRYGENT_REQUEUE_AFTER = 0.5
    real_publish = messaging.publish
    lost = []
    wf = Workflow(name="lost-finalizer")

    def lossy_publish(workflow_id, tasks_options, entries):
        # The process "dies" between the commit that ended the workflow and the publish.
        mine = str(workflow_id) == str(wf.pk)
        if mine and not lost and any(node.kind in CALLBACKS for node, _args in entries):
            lost.extend(node.task_id for node, _args in entries)
            return None
        return real_publish(workflow_id, tasks_options, entries)

    monkeypatch.setattr(messaging, "publish", lossy_publish)
    wf.add_signature(record.si("work"))
    final = wf.link_finalizer(on_end.s("final"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert lost == [final.task_id]
    wf.refresh_from_db()
    assert wf.next_tick_at is not None  # the finished workflow is still watched
    status = reverse("admin:django_dyrygent_workflow_status", args=[wf.pk])
    assert admin_client.get(status).json()["final"] is False  # the page keeps polling meanwhile

    time.sleep(0.6)  # past DYRYGENT_REQUEUE_AFTER
    assert engine.tick(wf.pk) == Workflow.State.SUCCESS  # the watching tick republishes it
    wait_for(lambda: WorkflowNode.objects.get(pk=final.pk).state == S.SUCCESS, "the finalizer to run")
    engine.tick(wf.pk)  # nothing left to watch: the chain stops
    wf.refresh_from_db()
    assert wf.next_tick_at is None and wf.state == Workflow.State.SUCCESS
    assert admin_client.get(status).json()["final"] is True  # and the page stops polling
    assert wait_worker_idle()
    assert labels() == ["work", f"final:{wf.pk}"]
    assert WorkflowNode.objects.get(pk=final.pk).publish_count == 2


@pytest.mark.django_db(transaction=True)
def test_retry__resets_engine_errors_so_one_failed_tick_does_not_end_it_error(monkeypatch, settings):
    settings.DYRYGENT_MAX_ENGINE_ERRORS = 3
    # The retried node is due for reconciliation at once: a tick with nothing due never
    # calls reconcile (engine._idle_tick), and this one must reach the broken step.
    settings.DYRYGENT_REQUEUE_AFTER = 0
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    wf = Workflow(name="retry-engine-errors")
    node = wf.add_signature(record.si("x"))
    wf.apply_async()
    engine.tick(wf.pk)
    outcomes.node_failed(wf.pk, node.task_id, RuntimeError("boom"))
    Workflow.objects.filter(pk=wf.pk).update(engine_errors=2)  # two ticks had failed before the end
    assert wf.retry() == 1
    assert wf.engine_errors == 0 and wf.state == Workflow.State.RUNNING

    def broken(step):
        raise RuntimeError("one bad tick")

    monkeypatch.setattr(repair, "reconcile", broken)
    assert engine.tick(wf.pk) == "error"
    wf.refresh_from_db()
    assert wf.state == Workflow.State.RUNNING and wf.engine_errors == 1  # was ERROR (2 + 1 = the limit)


@pytest.mark.django_db(transaction=True)
def test_skip__a_node_a_worker_starts_meanwhile_gives_a_validation_error_and_skips_nothing(monkeypatch):
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "revoke", lambda *a, **k: None)
    wf = Workflow(name="skip-race")
    first = wf.add_signature(record.si("first"))
    other = wf.add_signature(record.si("other"))
    wf.add_signature(record.si("after"), dependencies=[first])
    wf.apply_async()
    engine.tick(wf.pk)
    real = steps.Step.transition_nodes

    def worker_starts_first(self, nodes, target, reason="", **fields):
        if target == S.SKIPPED:
            # The worker's STARTED lands between skip()'s check and its UPDATE.
            WorkflowNode.objects.filter(pk=first.pk, state=S.QUEUED).update(state=S.STARTED)
        return real(self, nodes, target, reason, **fields)

    monkeypatch.setattr(steps.Step, "transition_nodes", worker_starts_first)
    with pytest.raises(ValidationError, match="started by a worker meanwhile"):
        wf.skip([other, first])
    assert dict(wf.nodes.values_list("signature__args__0", "state")) == {
        "first": S.QUEUED, "other": S.QUEUED, "after": S.PENDING,  # nothing half saved
    }
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_skipped) == (0, 0)

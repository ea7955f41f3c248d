"""Lost messages and lost events: the tick repairs them (rows are the truth)."""

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone
from django_celery_results.models import TaskResult

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, messaging, outcomes, repair
from django_dyrygent.models import Workflow, WorkflowNode
from tests.models import Execution
from tests.tasks import Boom, fail, record


def _age_queued_nodes(wf, seconds=3600):
    WorkflowNode.objects.filter(workflow=wf, state=WorkflowNode.State.QUEUED).update(
        queued_at=timezone.now() - timedelta(seconds=seconds)
    )


def _wait_for(predicate, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.worker
def test_reconcile__a_publish_lost_after_commit_is_republished_with_the_same_task_id(worker, monkeypatch):
    real_publish = messaging.publish
    lost = []
    wf = Workflow(name="lost-publish")

    def lossy_publish(workflow_id, tasks_options, entries):
        # The process "dies" between commit and publish for this workflow's first node
        # (the worker is shared: other tests' stragglers publish through here too).
        if not lost and str(workflow_id) == str(wf.pk):
            lost.extend(node.task_id for node, _ in entries)
            return None
        return real_publish(workflow_id, tasks_options, entries)

    monkeypatch.setattr(messaging, "publish", lossy_publish)
    first = wf.add_signature(record.si("first"))
    wf.add_signature(record.si("second"), dependencies=[first])
    wf.apply_async()
    assert _wait_for(lambda: WorkflowNode.objects.filter(pk=first.pk, state="QUEUED").exists())
    assert _wait_for(lambda: lost)  # the publish runs just after the commit that queued it
    assert lost == [first.task_id]
    # Nothing moves until the grace period is over.
    engine.tick(wf.pk, scheduled=False)
    assert Execution.objects.count() == 0
    _age_queued_nodes(wf)
    engine.tick(wf.pk, scheduled=False)
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    first.refresh_from_db()
    assert first.task_id == lost[0]
    assert first.publish_count == 2
    assert list(Execution.objects.values_list("label", flat=True)) == ["first", "second"]
    assert first.events.filter(reason__startswith="republished").exists()


@pytest.mark.worker
def test_reconcile__a_lost_success_event_is_recovered_from_the_result_backend(worker, monkeypatch, settings):
    settings.DYRYGENT_STORE_NODE_RESULTS = True  # Celery stores every outcome, as it does for plain tasks
    real = hotpath.node_succeeded  # what the worker's task_success receiver calls
    dropped = []
    wf = Workflow(name="lost-event")

    def flaky_event(workflow_id, task_id, result):
        if not dropped and str(workflow_id) == str(wf.pk):
            dropped.append(task_id)  # the worker crashed before recording the outcome
            return None
        return real(workflow_id, task_id, result)

    monkeypatch.setattr(hotpath, "node_succeeded", flaky_event)
    first = wf.add_signature(record.si("first"))
    wf.add_signature(record.si("second"), dependencies=[first])
    wf.apply_async()
    assert _wait_for(lambda: Execution.objects.filter(label="first").exists() and dropped)
    # The result backend (django-db) knows the outcome; the node row does not yet.
    assert _wait_for(lambda: WorkflowNode.objects.get(pk=first.pk).state == "STARTED")
    WorkflowNode.objects.filter(pk=first.pk).update(queued_at=timezone.now() - timedelta(hours=1))
    engine.tick(wf.pk, scheduled=False)
    first.refresh_from_db()
    assert first.state == WorkflowNode.State.SUCCESS
    assert first.result == "first"
    assert first.reason == "reconciled"
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    # Reconciling did not run the task again.
    assert list(Execution.objects.values_list("label", flat=True)) == ["first", "second"]


@pytest.mark.worker
@pytest.mark.parametrize("store", [False, True])
def test_result_backend__holds_no_second_copy_of_a_success_the_node_row_holds(worker, settings, store):
    settings.DYRYGENT_STORE_NODE_RESULTS = store
    wf = Workflow(name="one copy")
    first = wf.add_signature(record.si("first"))
    wf.add_signature(record.si("second"), dependencies=[first])
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    nodes = list(wf.nodes.all())
    assert [n.result for n in nodes] == ["first", "second"]
    stored = TaskResult.objects.filter(task_id__in=[n.task_id for n in nodes], status="SUCCESS")
    assert stored.count() == (2 if store else 0)


@pytest.mark.worker
def test_reconcile__a_success_the_worker_could_not_write_is_left_in_the_backend_and_repaired(
    worker, monkeypatch, settings,
):
    settings.DYRYGENT_OUTCOME_RETRY_FOR = 0  # give up at once (one immediate retry)
    real = hotpath.node_succeeded
    wf = Workflow(name="database down")
    first = wf.add_signature(record.si("first"))
    wf.add_signature(record.si("second"), dependencies=[first])
    refused = []

    def database_down(workflow_id, task_id, result):
        if task_id == first.task_id:
            refused.append(task_id)
            raise OperationalError("server closed the connection unexpectedly")
        return real(workflow_id, task_id, result)

    monkeypatch.setattr(hotpath, "node_succeeded", database_down)
    wf.apply_async()
    # The node row could not be written: the worker left the outcome in the result backend.
    assert _wait_for(lambda: TaskResult.objects.filter(task_id=first.task_id, status="SUCCESS").exists())
    assert len(refused) == 2  # the first try and db.run's immediate retry
    first.refresh_from_db()
    assert first.state == WorkflowNode.State.STARTED
    WorkflowNode.objects.filter(pk=first.pk).update(queued_at=timezone.now() - timedelta(hours=1))
    engine.tick(wf.pk, scheduled=False)
    first.refresh_from_db()
    assert (first.state, first.result, first.reason) == (WorkflowNode.State.SUCCESS, "first", "reconciled")
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    assert list(Execution.objects.values_list("label", flat=True)) == ["first", "second"]  # not run again
    # The other node's outcome reached its row: no copy of it in the backend.
    assert not TaskResult.objects.filter(task_id=wf.nodes.get(result="second").task_id).exists()


@pytest.mark.worker
def test_reconcile__a_failure_the_worker_could_not_write_is_left_in_the_backend_and_repaired(
    worker, monkeypatch, settings,
):
    settings.DYRYGENT_OUTCOME_RETRY_FOR = 0
    wf = Workflow(name="database down on failure")
    node = wf.add_signature(fail.si("down"))

    def database_down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(outcomes, "node_failed", database_down)
    wf.apply_async()
    assert _wait_for(lambda: TaskResult.objects.filter(task_id=node.task_id, status="FAILURE").exists())
    node.refresh_from_db()
    assert node.state == WorkflowNode.State.STARTED
    WorkflowNode.objects.filter(pk=node.pk).update(queued_at=timezone.now() - timedelta(hours=1))
    monkeypatch.undo()
    engine.tick(wf.pk, scheduled=False)
    node.refresh_from_db()
    assert (node.state, node.reason) == (WorkflowNode.State.FAILURE, "reconciled")
    assert Boom.__name__ in node.error and "down" in node.error
    assert wf.wait(timeout=30) == Workflow.State.FAILURE


@pytest.mark.django_db(transaction=True)
def test_reconcile__a_lost_tick_is_picked_up_by_the_sweeper(monkeypatch):
    sent = []
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: sent.append(a[0]))
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    wf = Workflow(name="lost-tick", options={"countdown": 60})  # a delayed start: the first tick's
    wf.add_signature(record.si("x"))
    wf.apply_async()
    assert sent == [wf.pk]  # the first tick, "lost" on its way
    assert engine.sweep(stale_after=3600) == 0  # not stale yet
    Workflow.objects.filter(pk=wf.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert engine.sweep(stale_after=3600) == 1
    wf.refresh_from_db()
    assert wf.state == Workflow.State.RUNNING
    assert wf.next_tick_at is not None
    assert WorkflowNode.objects.get(workflow=wf).state == WorkflowNode.State.QUEUED


@pytest.mark.django_db(transaction=True)
def test_tick__gives_up_with_error_after_consecutive_engine_failures(monkeypatch, settings):
    settings.DYRYGENT_MAX_ENGINE_ERRORS = 3
    # Its node is due for reconciliation at once: a tick with nothing due never calls
    # reconcile (engine._idle_tick), and this one must reach the broken step.
    settings.DYRYGENT_REQUEUE_AFTER = 0
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "revoke", lambda *a, **k: None)
    wf = Workflow(name="broken")
    wf.add_signature(record.si("x"))
    wf.apply_async()
    engine.tick(wf.pk)

    def broken(step):
        raise RuntimeError("corrupt row")

    monkeypatch.setattr(repair, "reconcile", broken)
    for expected in (1, 2):
        Workflow.objects.filter(pk=wf.pk).update(next_tick_at=None)
        assert engine.tick(wf.pk) == "error"
        wf.refresh_from_db()
        assert wf.state == Workflow.State.RUNNING
        assert wf.engine_errors == expected
        assert "corrupt row" in wf.error
    assert engine.tick(wf.pk) == "error"
    wf.refresh_from_db()
    assert wf.state == Workflow.State.ERROR
    assert "3 consecutive ticks failed" in wf.error
    assert WorkflowNode.objects.get(workflow=wf).state == WorkflowNode.State.CANCELED


@pytest.mark.django_db(transaction=True)
def test_tick__a_good_tick_resets_the_engine_error_count(monkeypatch):
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    wf = Workflow(name="flaky-engine")
    wf.add_signature(record.si("x"))
    wf.apply_async()
    engine.tick(wf.pk)
    Workflow.objects.filter(pk=wf.pk).update(engine_errors=4, error="Tick failed")
    engine.tick(wf.pk)
    wf.refresh_from_db()
    assert wf.engine_errors == 0 and wf.error == ""

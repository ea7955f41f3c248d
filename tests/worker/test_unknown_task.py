"""A node whose message no worker can run fails at once, with a sentence, on a real worker.

Celery only logs "Received unregistered task" (or rejects an unreadable
message) and discards it; the ``task_unknown`` / ``task_rejected`` receivers
turn that into a FAILURE of the node instead of a wait for the requeue timeout.
"""

import pytest
from django.db import transaction

from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.worker import handlers
from tests.tasks import record

pytestmark = pytest.mark.worker


def run_with_broken_middle_node(**signature_changes):
    """a -> b -> c, with b's stored signature changed before the first tick can publish it."""
    wf = Workflow(name="broken middle")
    first = wf.add_signature(record.si("a"))
    middle = wf.add_signature(record.si("b"), dependencies=[first])
    wf.add_signature(record.si("c"), dependencies=[middle])
    with transaction.atomic():  # the first tick is sent on commit: the change is in place before it
        wf.apply_async()
        node = wf.nodes.get(position=1)
        signature = dict(node.signature)
        options = {**signature.get("options", {}), **signature_changes.pop("options", {})}
        signature.update(signature_changes, options=options)
        WorkflowNode.objects.filter(pk=node.pk).update(signature=signature, task_name=signature["task"])
    # Far beyond the wait below: only the worker's report can fail the node in time.
    return wf, wf.wait(timeout=30)


def test_unknown_task__fails_the_node_at_once_with_a_sentence(worker, settings):
    settings.DYRYGENT_REQUEUE_AFTER = 3600.0
    wf, state = run_with_broken_middle_node(task="tests.no_such_task")
    assert state == Workflow.State.FAILURE
    nodes = {n.position: n for n in wf.nodes.all()}
    assert nodes[0].state == "SUCCESS"
    assert nodes[1].state == "FAILURE" and nodes[1].reason == "task not registered"
    assert nodes[1].error.startswith("No worker knows the task 'tests.no_such_task': ")
    assert nodes[1].error.endswith(
        "Check the task name and that the worker imports its module "
        "(autodiscover_tasks() or CELERY_IMPORTS), then retry the workflow."
    )
    assert "{" not in nodes[1].error and "Traceback" not in nodes[1].error
    assert nodes[2].state == "UPSTREAM_FAILED"


def test_rejected_message__fails_the_node_at_once_naming_the_cause(worker, settings):
    """A message in a serializer the worker does not accept (pickle) is rejected, not run."""
    settings.DYRYGENT_REQUEUE_AFTER = 3600.0
    wf, state = run_with_broken_middle_node(options={"serializer": "pickle"})
    assert state == Workflow.State.FAILURE
    middle = wf.nodes.get(position=1)
    assert middle.state == "FAILURE" and middle.reason == "message rejected"
    assert middle.error.startswith("A worker rejected the message of task 'tests.record': ")
    assert "ContentDisallowed" in middle.error and "serializer" in middle.error


def test_task_unknown__message_of_another_app_is_left_alone(db):
    """A plain Celery task (no workflow header) costs a dictionary lookup and touches no row."""

    class Message:
        headers = {"id": "x", "task": "other.task"}

    handlers.on_task_unknown(message=Message(), exc=KeyError("other.task"), name="other.task", id="x")
    handlers.on_task_rejected(message=Message(), exc=None)
    assert not WorkflowNode.objects.exists()


def test_connect_worker_signals__connects_unknown_and_rejected_receivers():
    from celery import signals

    handlers.connect_worker_signals()
    for signal, uid in ((signals.task_unknown, "django_dyrygent.unknown"),
                        (signals.task_rejected, "django_dyrygent.rejected")):
        assert any(uid in str(key) for key, _ in signal.receivers)


def test_reconcile__unknown_task_stored_by_celery_reads_as_the_same_sentence(worker, settings):
    """Without the receiver (an old worker), the tick still turns Celery's stored NotRegistered into words."""
    import time
    from datetime import timedelta

    from celery import signals
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from django_dyrygent import engine

    settings.DYRYGENT_REQUEUE_AFTER = 3600.0
    signals.task_unknown.disconnect(dispatch_uid="django_dyrygent.unknown")
    try:
        wf = Workflow(name="old worker")
        wf.add_signature(record.si("a"))
        with transaction.atomic():
            wf.apply_async()
            WorkflowNode.objects.filter(workflow=wf).update(
                task_name="tests.no_such_task", signature={"task": "tests.no_such_task", "args": [], "kwargs": {}},
            )
        node = wf.nodes.get()
        deadline = time.monotonic() + 20
        while not TaskResult.objects.filter(task_id=node.task_id, status="FAILURE").exists():
            assert time.monotonic() < deadline, "the worker never stored the NotRegistered failure"
            time.sleep(0.1)
    finally:
        handlers.connect_worker_signals()
    node.refresh_from_db()
    assert node.state == "QUEUED"  # nobody told the engine
    WorkflowNode.objects.filter(pk=node.pk).update(queued_at=timezone.now() - timedelta(hours=2))
    engine.tick(wf.pk, scheduled=False)
    node.refresh_from_db()
    assert node.state == "FAILURE" and node.reason == "reconciled"
    assert node.error.startswith("No worker knows the task 'tests.no_such_task': ")
    assert "{" not in node.error


def test_stored_exception__other_failures_read_type_and_message():
    from django_dyrygent.engine.outcomes import stored_exception

    assert stored_exception({"exc_type": "ValueError", "exc_message": ["bad", 3]}) == "ValueError: bad, 3"
    assert stored_exception("plain") == "'plain'"

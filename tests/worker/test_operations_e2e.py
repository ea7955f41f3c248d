"""Operations on running and finished workflows, end to end on a real worker and broker:
cancel, retry, skip, workflow callbacks and trigger rules.
"""

import time

import pytest
from celery import chain, group
from celery.worker import state as worker_state
from django.conf import settings
from django.core.exceptions import ValidationError

from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import purge_queue, wait_worker_idle
from tests.models import Execution
from tests.tasks import fail, gate, on_end, record

pytestmark = pytest.mark.worker

TIMEOUT = 30
S = WorkflowNode.State
# A queue no test worker consumes: a node published there stays QUEUED until someone acts.
# The run's own queue name plus a suffix: runs sharing a RabbitMQ vhost must not share it.
PARKED = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-parked"


def labels():
    return list(Execution.objects.values_list("label", flat=True))


def node(wf, label):
    """The task node whose first argument is ``label``.

    Compared in Python: a JSON key lookup (signature__args__0=label) finds
    nothing on MariaDB under Django 4.2.
    """
    (found,) = [n for n in wf.nodes.filter(kind=WorkflowNode.Kind.TASK) if n.signature["args"][:1] == [label]]
    return found


def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_callbacks(wf):
    """Callbacks are published when the workflow ends, so they finish after wait() returns."""
    callbacks = wf.nodes.filter(kind__in=[WorkflowNode.Kind.ERROR_CALLBACK, WorkflowNode.Kind.FINALIZER])
    wait_for(lambda: not callbacks.exclude(state__in=[S.SUCCESS, S.SKIPPED, S.FAILURE]).exists(),
             "the workflow callbacks")


@pytest.fixture
def parked_queue():
    yield PARKED
    purge_queue(PARKED)


# -- cancel --------------------------------------------------------------------------------


def test_cancel__revokes_queued_and_started_nodes_and_cancels_the_rest(worker):
    wf = Workflow(name="cancel")
    wf.add_celery_canvas(
        chain(
            record.si("first"),
            # Six sleepers on a four-thread worker: four start, two stay QUEUED.
            group(record.si(f"slow{i}", sleep=1.5) for i in range(6)),
            record.si("never"),
        )
    )
    wf.apply_async()
    slow = wf.nodes.filter(signature__args__0__startswith="slow")
    wait_for(lambda: slow.filter(state=S.STARTED).count() == 4, "four sleepers to start")

    assert wf.cancel(reason="operator said stop") is True
    assert wf.state == Workflow.State.CANCELED and wf.finished_at is not None
    states = dict(wf.nodes.filter(kind=WorkflowNode.Kind.TASK).values_list("signature__args__0", "state"))
    assert states == {"first": S.SUCCESS, "never": S.CANCELED, **{f"slow{i}": S.CANCELED for i in range(6)}}
    assert slow.filter(reason="operator said stop").count() == 6

    # Idempotent: a second cancel changes nothing and says so.
    assert wf.cancel() is False
    assert wf.state == Workflow.State.CANCELED

    # The revoke reached the worker for exactly the published nodes. The thread
    # pool still runs what it had already taken (threads cannot be stopped, and
    # Celery checks a revoke only before handing a message to the pool), so the
    # sleepers may finish; their late success reports must change nothing.
    wait_for(lambda: {n.task_id for n in slow} <= set(worker_state.revoked), "the revoke to reach the worker")
    assert node(wf, "first").task_id not in worker_state.revoked
    assert node(wf, "never").task_id not in worker_state.revoked
    assert wait_worker_idle()
    wf.tick()
    assert wait_worker_idle()
    ran = labels()
    assert "never" not in ran
    assert sum(label.startswith("slow") for label in ran) >= 4  # late reports did arrive ...
    # ... and were ignored: the nodes stay CANCELED.
    assert set(slow.values_list("state", flat=True)) == {S.CANCELED}
    wf.refresh_from_db()
    assert wf.state == Workflow.State.CANCELED
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (8, 8, 1, 7)


# -- retry ----------------------------------------------------------------------------------


def test_retry__resumes_failed_part_with_fresh_task_ids_keeping_successes(worker):
    wf = Workflow(name="retry")
    wf.add_celery_canvas(
        group(chain(record.si("a"), gate.si("r"), record.si("b")), record.si("independent"))
    )
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE
    before = {n.pk: (n.task_id, n.state) for n in wf.nodes.all()}
    gate_node = wf.nodes.get(task_name="tests.gate")
    assert gate_node.state == S.FAILURE and "flag r is not set" in gate_node.error
    assert node(wf, "b").state == S.UPSTREAM_FAILED

    Execution.objects.create(label="flag:r")  # the cause of the failure is fixed
    assert wf.retry() == 2
    assert wf.state == Workflow.State.RUNNING
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS

    after = {n.pk: n for n in wf.nodes.all()}
    for pk, (task_id, state) in before.items():
        if state == S.SUCCESS:
            assert after[pk].task_id == task_id and after[pk].attempts == 1
        else:
            assert after[pk].task_id != task_id and after[pk].previous_task_ids == [task_id]
            assert after[pk].attempts == 2 and after[pk].state == S.SUCCESS
    ran = labels()
    assert ran.count("a") == 1 and ran.count("independent") == 1 and ran.count("b") == 1
    assert ran.count("gate:r") == 2
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (4, 4, 0)


# -- skip -------------------------------------------------------------------------------------


def test_skip__queued_node_is_skipped_and_its_dependents_run(worker, parked_queue):
    wf = Workflow(name="skip")
    wf.add_celery_canvas(
        chain(record.si("a"), record.si("parked").set(queue=parked_queue), record.si("after"))
    )
    wf.apply_async()
    parked, after = node(wf, "parked"), node(wf, "after")
    wait_for(lambda: WorkflowNode.objects.get(pk=parked.pk).state == S.QUEUED, "the parked node to be queued")

    # "after" still waits for "parked": skipping it alone is refused, nothing changes.
    with pytest.raises(ValidationError, match="neither done nor skipped") as excinfo:
        wf.skip([after])
    assert parked.task_id in str(excinfo.value)
    assert WorkflowNode.objects.get(pk=after.pk).state == S.PENDING

    assert wf.skip([parked], reason="not needed today") == 1
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    parked.refresh_from_db()
    assert parked.state == S.SKIPPED and parked.reason == "not needed today"
    assert labels() == ["a", "after"]
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_skipped, wf.nodes_failed) == (3, 2, 1, 0)


# -- workflow callbacks --------------------------------------------------------------------


def test_callbacks__link_error_and_finalizer_run_once_on_failure(worker):
    wf = Workflow(name="callbacks-failure")
    wf.add_celery_canvas(chain(record.si("a"), fail.si("cb")))
    wf.link_error(on_end.s("error"))
    wf.link_finalizer(on_end.s("final"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE
    wait_callbacks(wf)
    wf.tick(), wf.tick()  # extra ticks after the end must not run them again
    assert wait_worker_idle()
    ran = labels()
    assert ran.count(f"error:{wf.pk}") == 1
    assert ran.count(f"final:{wf.pk}") == 1
    assert set(wf.nodes.filter(kind__in=["error_callback", "finalizer"]).values_list("state", flat=True)) == {
        S.SUCCESS
    }


def test_callbacks__finalizer_runs_once_and_link_error_not_at_all_on_success(worker):
    wf = Workflow(name="callbacks-success")
    wf.add_celery_canvas(chain(record.si("a"), record.si("b")))
    error = wf.link_error(on_end.s("error"))
    final = wf.link_finalizer(on_end.s("final"))
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    wait_callbacks(wf)
    wf.tick()
    assert wait_worker_idle()
    ran = labels()
    assert ran == ["a", "b", f"final:{wf.pk}"]
    assert WorkflowNode.objects.get(pk=error.pk).state == S.SKIPPED
    assert WorkflowNode.objects.get(pk=final.pk).state == S.SUCCESS
    # Callbacks are not counted as workflow nodes.
    wf.refresh_from_db()
    assert (wf.nodes_total, wf.nodes_succeeded) == (2, 2)


# -- trigger rules ---------------------------------------------------------------------------


def test_trigger_rules__all_done_and_one_failed_end_to_end(worker):
    wf = Workflow(name="trigger-rules")
    broken = wf.add_signature(fail.si("tr"))
    fine = wf.add_signature(record.si("fine"))
    cleanup = wf.add_signature(record.si("cleanup"), dependencies=[broken, fine], trigger_rule="all_done")
    alert = wf.add_signature(record.si("alert"), dependencies=[broken], trigger_rule="one_failed")
    quiet = wf.add_signature(record.si("quiet"), dependencies=[fine], trigger_rule="one_failed")
    strict = wf.add_signature(record.si("strict"), dependencies=[broken, fine])
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.FAILURE
    got = {n.pk: n for n in wf.nodes.all()}
    assert got[broken.pk].state == S.FAILURE
    assert got[fine.pk].state == got[cleanup.pk].state == got[alert.pk].state == S.SUCCESS
    assert got[quiet.pk].state == S.SKIPPED
    assert got[strict.pk].state == S.UPSTREAM_FAILED
    assert got[cleanup.pk].started_at >= max(got[broken.pk].finished_at, got[fine.pk].finished_at)
    assert got[alert.pk].started_at >= got[broken.pk].finished_at
    assert sorted(labels()) == sorted(["fail:tr", "fine", "cleanup", "alert"])

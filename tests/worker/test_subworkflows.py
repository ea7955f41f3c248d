"""Sub-workflows end to end on a real worker: the child starts when its node is reached, the node ends
as the child did, and cancel goes both ways; a child failing while its parent is canceled ends
consistently whichever commits first.
"""

import threading

import pytest

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from tests import subflows
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import identity, record

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State
#: The ends a parent, its sub-workflow node and the child may reach when the child fails as the parent is canceled.
CONSISTENT = {
    (W.CANCELED, S.CANCELED, W.CANCELED),  # the cancel came first and reached the child
    (W.CANCELED, S.CANCELED, W.FAILURE),  # the child failed first; its report found the node canceled
    (W.FAILURE, S.FAILURE, W.FAILURE),  # the child's failure reached the parent before the cancel
}


def child_of(node):
    wait_for(lambda: Workflow.objects.filter(parent_node=node).exists(), "the child to be started")
    return Workflow.objects.get(parent_node=node)


def counters_match_rows(wf):
    wf.refresh_from_db()
    counted = wf.nodes.exclude(kind__in=["join", "finalizer", "error_callback"])
    assert wf.nodes_total == counted.count()
    assert wf.nodes_done == counted.filter(state__in=[S.SUCCESS, S.FAILURE, S.UPSTREAM_FAILED, S.SKIPPED,
                                                      S.CANCELED]).count()


@pytest.mark.worker
def test_subworkflow__factory_child_runs_and_its_result_is_passed_on(worker):
    wf = Workflow(name="parent", pass_results=True)
    first = wf.add_signature(record.si("first"))
    sub = wf.add_subworkflow(subflows.adder, {"x": 3}, dependencies=[first])
    last = wf.add_signature(identity.s(), dependencies=[sub])
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    sub.refresh_from_db()
    last.refresh_from_db()
    child = Workflow.objects.get(parent_node=sub)
    assert (child.state, str(child.pk)) == (W.SUCCESS, sub.task_id)
    assert child.started_at >= Execution.objects.get(label="first").at  # started once reached
    assert (sub.state, sub.result, last.result) == (S.SUCCESS, 50, 50)
    assert sub.reason == f"sub-workflow {child.pk} ended SUCCESS"
    counters_match_rows(wf)


@pytest.mark.worker
def test_subworkflow__catalogue_definition_child_and_a_failing_child(worker):
    wf = Workflow(name="parent")
    ok = wf.add_subworkflow("tests.add", {"x": 1, "y": 4})
    bad = wf.add_subworkflow(subflows.failing, {"message": "child says no"}, dependencies=[ok])
    after = wf.add_signature(record.si("never"), dependencies=[bad])
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.FAILURE
    ok.refresh_from_db()
    bad.refresh_from_db()
    after.refresh_from_db()
    assert (ok.state, ok.result) == (S.SUCCESS, 50)
    assert Workflow.objects.get(parent_node=ok).definition == "tests.add"
    assert bad.state == S.FAILURE and "child says no" in bad.error
    assert after.state == S.UPSTREAM_FAILED
    wf.refresh_from_db()
    assert "child says no" in wf.error


@pytest.mark.worker
def test_subworkflow__canceling_the_parent_cancels_the_running_child(worker):
    wf = Workflow(name="parent")
    sub = wf.add_subworkflow(subflows.held, {"flag": "cancel-down"})
    wf.apply_async()
    child = child_of(sub)
    wait_for(lambda: Execution.objects.filter(label="child-start:cancel-down").exists(), "the child to run")
    assert wf.cancel("stop everything")
    child.refresh_from_db()
    sub.refresh_from_db()
    assert (wf.state, sub.state, child.state) == (W.CANCELED, S.CANCELED, W.CANCELED)
    assert not child.nodes.exclude(state__in=[S.SUCCESS, S.CANCELED]).exists()
    Execution.objects.create(label="release:cancel-down")


@pytest.mark.worker
def test_subworkflow__canceling_the_child_cancels_its_node_and_fails_the_parent(worker):
    wf = Workflow(name="parent")
    sub = wf.add_subworkflow(subflows.held, {"flag": "cancel-up"})
    wf.add_signature(record.si("after-cancel-up"), dependencies=[sub])
    wf.apply_async()
    child = child_of(sub)
    wait_for(lambda: Execution.objects.filter(label="child-start:cancel-up").exists(), "the child to run")
    assert child.cancel("not needed")
    assert wf.wait(timeout=TIMEOUT) == W.FAILURE
    sub.refresh_from_db()
    assert sub.state == S.CANCELED and sub.reason == f"sub-workflow {child.pk} ended CANCELED"
    assert not Execution.objects.filter(label="after-cancel-up").exists()
    Execution.objects.create(label="release:cancel-up")


@pytest.mark.worker
@pytest.mark.parametrize("order", ["cancel-first", "fail-first", "together"])
def test_subworkflow__child_failing_while_parent_is_canceled_ends_consistently(worker, order):
    flag = f"race-{order}"
    wf = Workflow(name="race parent")
    sub = wf.add_subworkflow(subflows.fail_after, {"flag": flag})
    wf.add_signature(record.si(f"after-{flag}"), dependencies=[sub])
    wf.apply_async()
    child = child_of(sub)
    held = child.nodes.get(task_name="tests.hold")
    wait_for(lambda: WorkflowNode.objects.get(pk=held.pk).state == S.STARTED, "the child's task to start")
    release = threading.Thread(target=lambda: Execution.objects.create(label=f"release:{flag}"))
    if order == "fail-first":
        release.start()
        release.join()
        wait_for(lambda: child.nodes.filter(state=S.FAILURE).exists(), "the child's task to fail")
        wf.cancel("race")
    elif order == "cancel-first":
        wf.cancel("race")
        release.start()
        release.join()
    else:
        release.start()
        wf.cancel("race")
        release.join()
    wait_for(lambda: Workflow.objects.get(pk=child.pk).is_final, "the child to end")
    wait_for(lambda: WorkflowNode.objects.get(pk=sub.pk).is_final, "the node to end")
    wf.refresh_from_db()
    sub.refresh_from_db()
    child.refresh_from_db()
    assert (wf.state, sub.state, child.state) in CONSISTENT
    assert not Execution.objects.filter(label=f"after-{flag}").exists()
    assert not WorkflowNode.objects.filter(workflow__in=[wf, child]).exclude(
        state__in=[S.SUCCESS, S.FAILURE, S.CANCELED, S.UPSTREAM_FAILED]).exists()
    counters_match_rows(wf)
    counters_match_rows(child)
    # A late report changes nothing.
    outcomes.node_failed(child.pk, held.task_id, RuntimeError("late"))
    engine.tick(wf.pk, scheduled=False)
    assert (Workflow.objects.get(pk=wf.pk).state, WorkflowNode.objects.get(pk=sub.pk).state) == (wf.state, sub.state)


@pytest.mark.worker
def test_subworkflow__depth_cap_fails_the_deepest_node_and_every_level_fails(worker, settings):
    settings.DYRYGENT_MAX_SUBWORKFLOW_DEPTH = 3
    wf = Workflow(name="recursive")
    wf.add_subworkflow(subflows.nested, {"level": 1})
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.FAILURE
    levels = [wf]
    while (child := Workflow.objects.filter(parent_node__workflow=levels[-1]).first()) is not None:
        levels.append(child)
    assert len(levels) == 4
    deepest = levels[-1].nodes.get(kind="subworkflow")
    assert "over DYRYGENT_MAX_SUBWORKFLOW_DEPTH=3" in deepest.error
    assert all(w.state == W.FAILURE for w in Workflow.objects.filter(pk__in=[w.pk for w in levels]))

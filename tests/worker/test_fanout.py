import pytest

from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import make_list, square, tsum


def _fanout_workflow(n, pass_results=True):
    wf = Workflow(name=f"fanout-{n}", pass_results=pass_results)
    source = wf.add_signature(make_list.s(n))
    fan = wf.add_fanout(square.s(), dependency=source)
    total = wf.add_signature(tsum.s(), dependencies=[fan])
    return wf, fan, total


@pytest.mark.worker
def test_fanout__expands_at_run_time_and_joins_results_in_item_order(worker):
    wf, fan, total = _fanout_workflow(7)
    wf.apply_async()
    assert wf.wait(timeout=60) == Workflow.State.SUCCESS
    fan.refresh_from_db()
    assert fan.fanout_size == 7
    assert fan.result == [i * i for i in range(7)]
    total.refresh_from_db()
    assert total.result == sum(i * i for i in range(7))
    # 7 expanded task nodes + source + sum
    assert wf.nodes_total == 9 and wf.nodes_succeeded == 9
    children = WorkflowNode.objects.filter(workflow=wf, task_name="tests.square", kind="task")
    assert sorted(children.values_list("result", flat=True)) == sorted(i * i for i in range(7))


@pytest.mark.worker
def test_fanout__empty_list_succeeds_without_children(worker):
    wf, fan, total = _fanout_workflow(0)
    wf.apply_async()
    assert wf.wait(timeout=60) == Workflow.State.SUCCESS
    total.refresh_from_db()
    assert total.result == 0
    assert WorkflowNode.objects.filter(workflow=wf, task_name="tests.square", kind="task").count() == 0


@pytest.mark.worker
def test_fanout__thousands_of_items(worker):
    wf, fan, total = _fanout_workflow(2000)
    wf.apply_async()
    assert wf.wait(timeout=240) == Workflow.State.SUCCESS
    total.refresh_from_db()
    assert total.result == sum(i * i for i in range(2000))
    assert wf.nodes_total == 2002


@pytest.mark.worker
def test_fanout__source_not_a_list_fails_the_fanout_node(worker):
    from tests.tasks import add

    wf = Workflow(name="fanout-bad")
    source = wf.add_signature(add.s(1, 2))
    fan = wf.add_fanout(square.s(), dependency=source)
    after = wf.add_signature(tsum.s(), dependencies=[fan])
    wf.apply_async()
    assert wf.wait(timeout=60) == Workflow.State.FAILURE
    fan.refresh_from_db()
    after.refresh_from_db()
    assert fan.state == WorkflowNode.State.FAILURE
    assert "not a list" in fan.error
    assert after.state == WorkflowNode.State.UPSTREAM_FAILED

"""Concurrency keys end to end on a real worker: slots across workflows, the race for the last one.

Every node runs ``tests.hold``, which runs until the test releases it: what
holds a slot, and when it frees it, is the test's choice, not the clock's.
"""

import pytest
from django.core.management import call_command
from django.db import transaction

from django_dyrygent.engine import slots
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import hold

pytestmark = pytest.mark.worker

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State
KEY = "customer-42"


def held(name, key=KEY, limit=2):
    """An unsaved workflow of one ``hold`` node (flag ``name``) under ``key``."""
    wf = Workflow(name=name)
    wf.add_signature(hold.si(name), concurrency_key=key, concurrency_limit=limit)
    return wf


def node(wf):
    return WorkflowNode.objects.get(workflow=wf)


def release(name):
    Execution.objects.create(label=f"release:{name}", task_id="")


def states(flows):
    return sorted(node(wf).state for wf in flows)


@pytest.fixture
def released():
    """Names to release when the test ends, whatever happened: no task is left holding a worker thread."""
    names = []
    yield names
    for name in names:
        release(name)


def test_concurrency_key__end_to_end_at_most_the_limit_run_and_the_waiter_runs_when_a_slot_frees(
    worker, capsys, released,
):
    names = ["first", "second", "third"]
    released.extend(names)
    flows = [held(name).apply_async() for name in names]
    wait_for(lambda: states(flows) == [S.STARTED, S.STARTED, S.WAITING], "two nodes to run and one to wait")
    (waiter,) = [wf for wf in flows if node(wf).state == S.WAITING]
    running = [wf for wf in flows if wf is not waiter]
    why = f"waiting for concurrency key {KEY}: 2 of 2 running"
    assert WorkflowNode.objects.key_waits([node(waiter)]) == {node(waiter).pk: why}
    call_command("dyrygent_status", str(waiter.pk))
    assert why in capsys.readouterr().out
    release(running[0].name)
    assert running[0].wait(timeout=TIMEOUT) == W.SUCCESS
    wait_for(lambda: node(waiter).state == S.STARTED, "the waiter to take the freed slot")
    assert node(running[1]).state == S.STARTED  # still two, never three
    for wf in running[1:] + [waiter]:
        release(wf.name)
    assert [wf.wait(timeout=TIMEOUT) for wf in flows] == [W.SUCCESS] * 3
    assert [node(wf).publish_count for wf in flows] == [1, 1, 1]
    assert Execution.objects.filter(label__startswith="held:").count() == 3


def test_concurrency_key__two_workflows_started_together_race_for_the_last_slot(worker, released):
    released.extend(["holder", "racer-a", "racer-b"])
    holder = held("holder", key="race").apply_async()
    wait_for(lambda: node(holder).state == S.STARTED, "the holder to take one of the two slots")
    with transaction.atomic():  # both first ticks go out at one commit: two worker threads race
        racers = [held(name, key="race").apply_async() for name in ("racer-a", "racer-b")]
    wait_for(lambda: states(racers) == [S.STARTED, S.WAITING], "one racer to run and the other to wait")
    assert WorkflowNode.objects.filter(concurrency_key="race", state__in=slots.HOLDS_SLOT).count() == 2
    loser = next(wf for wf in racers if node(wf).state == S.WAITING)
    release("holder")
    wait_for(lambda: node(loser).state == S.STARTED, "the loser to take the slot the holder freed")
    for name in ("racer-a", "racer-b"):
        release(name)
    assert [wf.wait(timeout=TIMEOUT) for wf in (holder, *racers)] == [W.SUCCESS] * 3
    assert [node(wf).publish_count for wf in (holder, *racers)] == [1, 1, 1]

"""Graphs that grow while they run, without a worker: ``growth.extend`` given the node, the engine driven
directly."""

import pytest
from celery import chain, group
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.growth import extend
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import identity, record, tsum

S = WorkflowNode.State
W = Workflow.State


def running(pass_results=False):
    """split -> after, started; split is QUEUED (nothing published: no worker)."""
    wf = Workflow(name="grow", pass_results=pass_results)
    split = wf.add_signature(record.si("split"))
    after = wf.add_signature(tsum.s() if pass_results else record.si("after"), dependencies=[split])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    split.refresh_from_db()
    return wf, split, after


def labels(nodes):
    return [n.signature["args"][0] for n in nodes]


@pytest.mark.django_db
def test_extend__a_map_the_dependents_wait_for_runs_after_the_node_and_before_them():
    wf, split, after = running()
    leaves = extend("parts", group(record.si(f"part-{i}") for i in range(3)), node=split)
    assert labels(leaves) == ["part-0", "part-1", "part-2"]
    wf.refresh_from_db()
    after.refresh_from_db()
    assert wf.nodes_total == 5 and after.waiting == 4 and after.state == S.PENDING
    outcomes.node_succeeded(wf.pk, split.task_id, "split")
    parts = wf.nodes.filter(signature__args__0__startswith="part-")
    assert set(parts.values_list("state", flat=True)) == {S.QUEUED}
    after.refresh_from_db()
    assert after.state == S.PENDING
    for part in parts:
        outcomes.node_succeeded(wf.pk, part.task_id, part.signature["args"][0])
    after.refresh_from_db()
    assert after.state == S.QUEUED
    outcomes.node_succeeded(wf.pk, after.task_id, "after")
    wf.refresh_from_db()
    assert (wf.state, wf.nodes_done, wf.nodes_total) == (W.SUCCESS, 5, 5)


@pytest.mark.django_db
def test_extend__the_same_key_again_adds_nothing_and_returns_the_first_nodes():
    wf, split, after = running()
    first = extend("parts", group(record.si("a"), record.si("b")), node=split)
    again = extend("parts", group(record.si("x"), record.si("y"), record.si("z")), node=split)
    assert [n.pk for n in again] == [n.pk for n in first]
    wf.refresh_from_db()
    after.refresh_from_db()
    assert (wf.nodes_total, wf.nodes.count(), after.waiting) == (4, 4, 3)
    other = extend("more", record.si("c"), node=split)
    assert labels(other) == ["c"]


@pytest.mark.django_db
def test_extend__also_run_that_leaves_the_dependents_alone_but_the_workflow_waits_for_it():
    wf, split, after = running()
    extend("also", chain(record.si("also-1"), record.si("also-2")), node=split, dependents_wait=False)
    outcomes.node_succeeded(wf.pk, split.task_id, "split")
    after.refresh_from_db()
    assert after.state == S.QUEUED
    outcomes.node_succeeded(wf.pk, after.task_id, "after")
    wf.refresh_from_db()
    assert wf.state == W.RUNNING
    for label in ("also-1", "also-2"):
        node = wf.nodes.get(signature__args__0=label)
        assert node.state == S.QUEUED
        outcomes.node_succeeded(wf.pk, node.task_id, label)
    wf.refresh_from_db()
    assert wf.state == W.SUCCESS


@pytest.mark.django_db
def test_extend__pass_results_feeds_the_roots_and_the_dependent_gets_the_list():
    wf, split, after = running(pass_results=True)
    extend("parts", group(identity.s(), identity.s()), node=split)
    outcomes.node_succeeded(wf.pk, split.task_id, 1)
    for part in wf.nodes.filter(task_name="tests.identity"):
        outcomes.node_succeeded(wf.pk, part.task_id, 2)
    after.refresh_from_db()
    assert after.state == S.QUEUED
    from django_dyrygent.engine import decisions
    from django_dyrygent.engine.steps import Step
    assert decisions.call_args(Step(wf), [after])[after.pk] == ([1, 2, 2],)


@pytest.mark.django_db
def test_extend__refused_when_the_node_or_workflow_ended_or_the_canvas_is_bad_and_nothing_is_saved(settings):
    wf, split, after = running()
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        extend("bad", group(record.si("ok"), record.si({1, 2})), node=split)
    settings.DYRYGENT_MAX_ARGUMENT_BYTES = 100
    with pytest.raises(ValidationError, match="over DYRYGENT_MAX_ARGUMENT_BYTES=100"):
        extend("big", record.si("x" * 200), node=split)
    with pytest.raises(ValidationError, match="key of 1 to 100"):
        extend("", record.si("x"), node=split)
    taken = record.si("dup").set(task_id=after.task_id)
    with pytest.raises(ValidationError, match=f"task id {after.task_id} is already used"):
        extend("dup", group(record.si("fine"), taken), node=split)
    assert wf.nodes.count() == 2
    outcomes.node_succeeded(wf.pk, split.task_id, "split")
    split.refresh_from_db()
    with pytest.raises(ValidationError, match="only a task node that has not ended"):
        extend("late", record.si("late"), node=split)
    wf.cancel()
    with pytest.raises(ValidationError, match="is CANCELED: nodes can only be added"):
        extend("late", record.si("late"), node=after)
    with pytest.raises(ValidationError, match="not a workflow node's task"):
        extend("outside", record.si("x"))
    assert wf.nodes.count() == 2


@pytest.mark.django_db
def test_extend__costs_a_fixed_number_of_statements_whatever_its_size():
    counts = []
    for size in (2, 20):
        wf, split, _after = running()
        with CaptureQueriesContext(connection) as queries:
            extend("parts", group(record.si(f"p{i}") for i in range(size)), node=split)
        counts.append(len(queries))
    assert counts[0] == counts[1]

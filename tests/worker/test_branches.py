"""Branches: a task whose result names the paths that run; the others are SKIPPED with the reason,
and so is everything after them that waits for nothing else; an unknown key fails the branch.
"""

import pytest
from celery import group
from django.core.exceptions import ValidationError

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from tests.models import Execution
from tests.tasks import identity, record

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State


def by_label(wf):
    """Task nodes by their first argument, branches by their kind."""
    nodes = {}
    for node in wf.nodes.all():
        args = node.signature.get("args") or []
        nodes[args[0] if node.kind == "task" and args else node.kind + str(node.position)] = node
    return nodes


def sized():
    """choose -> small: [a] | large: [b -> c]; merge after a and c."""
    wf = Workflow(name="branch")
    a, b = wf.add_signature(record.si("a")), wf.add_signature(record.si("b"))
    c = wf.add_signature(record.si("c"), dependencies=[b])
    branch = wf.add_branch(record.si("choose"), {"small": [a], "large": b})
    wf.add_signature(record.si("merge"), dependencies=[a, c])
    return wf, branch


def started(wf):
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    return wf


def succeed(wf, node, result=None):
    outcomes.node_succeeded(wf.pk, node.task_id, result)
    node.refresh_from_db()
    return node


def states(wf):
    return {label: node.state for label, node in by_label(wf).items()}


def test_add_branch__refuses_bad_paths():
    wf = Workflow()
    with pytest.raises(ValidationError, match="needs its paths"):
        wf.add_branch(record.si("x"), {})
    other = Workflow().add_signature(record.si("elsewhere"))
    with pytest.raises(ValidationError, match="does not belong"):
        wf.add_branch(record.si("x"), {"a": [other]})
    callback = wf.link_finalizer(record.si("end"))
    with pytest.raises(ValidationError, match="cannot follow it"):
        wf.add_branch(record.si("x"), {"a": callback})


@pytest.mark.django_db
def test_add_branch__a_path_before_the_branch_is_a_cycle():
    wf = Workflow()
    first = wf.add_signature(record.si("first"))
    wf.add_branch(record.si("x"), {"back": first}, dependencies=[first])
    with pytest.raises(ValidationError, match="cycle"):
        wf.apply_async()


@pytest.mark.django_db
def test_branch__skips_the_other_path_through_to_the_merge_which_runs():
    wf, branch = sized()
    started(wf)
    succeed(wf, branch, "small")
    assert branch.result == "small"
    nodes = by_label(wf)
    assert states(wf) == {
        "a": S.QUEUED, "b": S.SKIPPED, "c": S.SKIPPED, "merge": S.PENDING, f"branch{branch.position}": S.SUCCESS,
    }
    assert nodes["b"].reason == "branch chose 'small'" and nodes["c"].reason == "branch chose 'small'"
    succeed(wf, nodes["a"])
    assert by_label(wf)["merge"].state == S.QUEUED
    succeed(wf, nodes["merge"])
    wf.refresh_from_db()
    assert (wf.state, wf.nodes_total, wf.nodes_done, wf.nodes_skipped) == (W.SUCCESS, 5, 5, 2)


@pytest.mark.django_db
def test_branch__a_list_of_keys_runs_every_path_named():
    wf, branch = sized()
    started(wf)
    succeed(wf, branch, ["small", "large"])
    assert states(wf)["a"] == S.QUEUED and states(wf)["b"] == S.QUEUED


@pytest.mark.parametrize("result", ["medium", ["small", "medium"], [], None, 3])
@pytest.mark.django_db
def test_branch__a_result_naming_no_known_key_fails_it_clearly(result):
    wf, branch = sized()
    started(wf)
    succeed(wf, branch, result)
    assert branch.state == S.FAILURE
    assert "must return one of 'large', 'small', or a non-empty list of them" in branch.error
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    assert {states(wf)[k] for k in ("a", "b", "c", "merge")} == {S.UPSTREAM_FAILED}


@pytest.mark.django_db
def test_branch__nested_branch_on_an_unchosen_path_is_skipped_with_its_paths():
    wf = Workflow(name="nested")
    n1, n2, other = (wf.add_signature(record.si(label)) for label in ("n1", "n2", "other"))
    inner = wf.add_branch(record.si("inner"), {"p": n1, "q": n2})
    outer = wf.add_branch(record.si("outer"), {"x": inner, "y": other})
    started(wf)
    succeed(wf, outer, "y")
    inner.refresh_from_db()
    assert inner.state == S.SKIPPED
    assert (states(wf)["n1"], states(wf)["n2"], states(wf)["other"]) == (S.SKIPPED, S.SKIPPED, S.QUEUED)


@pytest.mark.django_db
def test_branch__a_join_inside_an_unchosen_path_is_skipped_with_what_follows_it():
    """group(f1, f2) -> group(g1, g2): the canvas importer puts a join between the two groups."""
    for chosen, expected in (("fan", S.QUEUED), ("solo", S.SKIPPED)):
        wf = Workflow(name="join-in-path")
        members = wf.add_celery_canvas(group(record.si("f1"), record.si("f2")))
        wf.add_celery_canvas(group(record.si("g1"), record.si("g2")), dependencies=members)
        solo = wf.add_signature(record.si("solo"))
        branch = wf.add_branch(record.si("choose"), {"fan": members, "solo": solo})
        started(wf)
        succeed(wf, branch, chosen)
        got = states(wf)
        assert got["f1"] == got["f2"] == expected
        join = wf.nodes.get(kind="join")
        assert join.state == (S.PENDING if chosen == "fan" else S.SKIPPED)
        assert got["g1"] == got["g2"] == (S.PENDING if chosen == "fan" else S.SKIPPED)


@pytest.mark.django_db
def test_branch__a_follower_directly_under_the_branch_runs_whatever_it_chose():
    """It waits for the branch itself (which succeeded), so it is not behind skipped nodes only."""
    wf = Workflow(name="direct")
    a, b = wf.add_signature(record.si("a")), wf.add_signature(record.si("b"))
    branch = wf.add_branch(record.si("choose"), {"small": a, "large": b})
    wf.add_signature(record.si("direct"), dependencies=[branch, b])
    started(wf)
    succeed(wf, branch, "small")
    got = states(wf)
    assert (got["a"], got["b"], got["direct"]) == (S.QUEUED, S.SKIPPED, S.QUEUED)


@pytest.mark.worker
def test_branch__end_to_end_runs_the_chosen_path_only(worker):
    wf = Workflow(name="branch-e2e")
    small, large = wf.add_signature(record.si("small")), wf.add_signature(record.si("large"))
    wf.add_branch(identity.si("large"), {"small": small, "large": [large]})
    wf.add_signature(record.si("merge"), dependencies=[small, large])
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    assert sorted(Execution.objects.values_list("label", flat=True)) == ["large", "merge"]
    small.refresh_from_db()
    assert (small.state, small.reason) == (S.SKIPPED, "branch chose 'large'")

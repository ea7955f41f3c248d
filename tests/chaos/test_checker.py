"""The soak's checker finds what it is meant to find: rows and body records made by hand, no worker.

A clean two-node chain passes; each test then breaks one thing the soak
checks (a dependent started early, an unexplained re-run, a body started
after the end, wrong counters, the wrong final state) and expects exactly
that violation.
"""

import json
from datetime import datetime, timedelta, timezone

import pytest

from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.chaos import checker, traffic
from tests.chaos.faults import Fault

S = WorkflowNode.State
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _run(runs, label, task_id, start, end, failed=False, suffix="a"):
    path = runs / f"{label}.{task_id}.{suffix}.start"
    path.write_text(json.dumps({"pid": 1, "t": (T0 + timedelta(seconds=start)).timestamp(), "id": task_id}))
    path.with_suffix(".done").write_text(
        json.dumps({"t": (T0 + timedelta(seconds=end)).timestamp(), "failed": failed})
    )


def _chain(runs, script="none"):
    """A SUCCESS chain a -> b, its events, and one clean run of each body."""
    wf = Workflow.objects.create(name="chaos-0-chain", state=Workflow.State.SUCCESS, nodes_total=2, nodes_done=2,
                                 nodes_succeeded=2)
    a = WorkflowNode.objects.create(workflow=wf, task_id="ta", task_name="chaos.body",
                                    signature={"args": ["w0.c0"]}, state=S.SUCCESS)
    b = WorkflowNode.objects.create(workflow=wf, task_id="tb", task_name="chaos.body",
                                    signature={"args": ["w0.c1"]}, state=S.SUCCESS)
    WorkflowEdge.objects.create(workflow=wf, node=b, dependency=a)
    WorkflowEvent.objects.create(workflow=wf, old_state="INITIAL", new_state="RUNNING", created_at=T0)
    WorkflowEvent.objects.create(workflow=wf, old_state="RUNNING", new_state="SUCCESS",
                                 created_at=T0 + timedelta(seconds=10))
    _run(runs, "w0.c0", "ta", 1, 2)
    _run(runs, "w0.c1", "tb", 3, 4)
    spec = traffic.Spec(index=0, at=0, shape="chain", script=script, delay=0,
                        nodes=[("w0.c0", 0, "ok", []), ("w0.c1", 0, "ok", ["w0.c0"])], pk=wf.pk, script_done=True)
    return spec, wf, a, b


def _violations(spec, runs):
    violations, _ = checker.check([spec], [], runs)
    return violations


@pytest.mark.django_db
def test_checker__a_clean_chain_passes(tmp_path):
    spec, *_ = _chain(tmp_path)
    assert _violations(spec, tmp_path) == []


@pytest.mark.django_db
def test_checker__a_dependent_started_before_its_dependency_succeeded(tmp_path):
    spec, *_ = _chain(tmp_path)
    _run(tmp_path, "w0.c1", "tb", 1.5, 1.6, suffix="b")  # before a's end (2 s)
    assert any("started before its dependency w0.c0" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_rerun_under_an_id_no_event_explains(tmp_path):
    spec, wf, a, b = _chain(tmp_path)
    WorkflowNode.objects.filter(pk=b.pk).update(task_id="tb2", previous_task_ids=["tb"])
    _run(tmp_path, "w0.c1", "tb2", 5, 6)
    assert any("no event saying why" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_rerun_after_a_lost_worker_is_counted_not_failed(tmp_path):
    spec, wf, a, b = _chain(tmp_path)
    WorkflowNode.objects.filter(pk=b.pk).update(task_id="tb2", previous_task_ids=["tb"], attempts=2)
    WorkflowEvent.objects.create(workflow=wf, node=b, old_state="STARTED", new_state="QUEUED",
                                 reason="worker lost: no heartbeat; attempt 2 of 4", created_at=T0)
    _run(tmp_path, "w0.c1", "tb2", 5, 6)
    violations, report = checker.check([spec], [], tmp_path)
    assert violations == [] and report["duplicates"] == {"worker lost": 1}


@pytest.mark.django_db
def test_checker__a_body_started_after_the_workflow_ended(tmp_path):
    spec, *_ = _chain(tmp_path)
    _run(tmp_path, "w0.c1", "tb", 11, 12, suffix="late")
    assert any("started while the workflow was final" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__counters_that_differ_from_the_rows(tmp_path):
    spec, wf, *_ = _chain(tmp_path)
    Workflow.objects.filter(pk=wf.pk).update(nodes_done=1)
    assert any(v.startswith("chaos-0-chain (none): counters") for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_final_state_the_outcomes_do_not_imply(tmp_path):
    spec, *_ = _chain(tmp_path)
    spec.nodes[1] = ("w0.c1", 0, "fail", ["w0.c0"])  # the traffic said this body fails
    assert any("ended SUCCESS, expected FAILURE" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_workflow_left_running(tmp_path):
    spec, wf, a, b = _chain(tmp_path)
    Workflow.objects.filter(pk=wf.pk).update(state=Workflow.State.RUNNING)
    WorkflowNode.objects.filter(pk=b.pk).update(state=S.QUEUED)
    found = _violations(spec, tmp_path)
    assert any("left RUNNING" in v for v in found) and any("left QUEUED" in v for v in found)


@pytest.mark.django_db
def test_checker__a_rerun_of_a_draining_workers_node_is_counted_apart(tmp_path):
    spec, wf, a, b = _chain(tmp_path)  # every run's pid is 1
    WorkflowNode.objects.filter(pk=b.pk).update(task_id="tb2", previous_task_ids=["tb"], attempts=2)
    WorkflowEvent.objects.create(workflow=wf, node=b, old_state="STARTED", new_state="QUEUED",
                                 reason="worker lost: no heartbeat; attempt 2 of 4", created_at=T0)
    _run(tmp_path, "w0.c1", "tb2", 5, 6)
    scaled_down = Fault(at=0, kind="scale", target=0, child=0, hold=20, started=0.0, pids=[1],
                        wall_start=T0.timestamp())
    violations, report = checker.check([spec], [scaled_down], tmp_path)
    assert violations == []
    assert report["duplicates"] == {"worker lost while draining (SIGTERM to its main process)": 1}

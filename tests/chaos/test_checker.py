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
from django_dyrygent.states import NodeKind
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


# -- control flow: branches, waits, timers, pauses ------------------------------------------------


def _event(wf, new_state, at, node=None, old_state="", reason=""):
    return WorkflowEvent.objects.create(workflow=wf, node=node, old_state=old_state, new_state=new_state,
                                        reason=reason, created_at=T0 + timedelta(seconds=at))


def _tid(label):
    return "t-" + label.replace(".", "-")  # a body's file name is <label>.<task id>.<random>.start


def _node(wf, label, state, kind=NodeKind.TASK, task_name="chaos.body", args=None):
    return WorkflowNode.objects.create(workflow=wf, task_id=_tid(label), task_name=task_name, kind=kind,
                                       signature={"args": args or [label]}, state=state)


def _gated(runs, kind, outcome="signal"):
    """A SUCCESS workflow pre -> wait (signalled at 4 s) or timer (delay 5 s, fired at 8 s) -> post."""
    wf = Workflow.objects.create(name="chaos-0-gate", state=Workflow.State.SUCCESS, nodes_total=3, nodes_done=3,
                                 nodes_succeeded=3)
    pre = _node(wf, "w0.pre", S.SUCCESS)
    gate = _node(wf, "gate", S.SUCCESS, kind=kind, task_name="go-0" if kind == NodeKind.WAIT else "timer-0", args=[])
    post = _node(wf, "w0.post", S.SUCCESS)
    WorkflowEdge.objects.create(workflow=wf, node=gate, dependency=pre)
    WorkflowEdge.objects.create(workflow=wf, node=post, dependency=gate)
    _event(wf, "RUNNING", 0, old_state="INITIAL")
    _event(wf, S.WAITING, 2, node=gate, old_state=S.PENDING)
    done_at, reason = (4, "signal 'go-0'") if kind == NodeKind.WAIT else (8, "timer fired")
    _event(wf, S.SUCCESS, done_at, node=gate, old_state=S.WAITING, reason=reason)
    _event(wf, "SUCCESS", 20, old_state="RUNNING")
    _run(runs, "w0.pre", _tid("w0.pre"), 0.5, 1)
    _run(runs, "w0.post", _tid("w0.post"), done_at + 1, done_at + 2)
    spec = traffic.Spec(index=0, at=0, shape="wait" if kind == NodeKind.WAIT else "timer", script="none", delay=0,
                        nodes=[("w0.pre", 0, "ok", []), ("w0.post", 0, "ok", [])], pk=wf.pk, script_done=True)
    if kind == NodeKind.WAIT:
        spec.wait = {"name": "go-0", "after": "w0.pre", "before": "w0.post", "outcome": outcome, "timeout": None,
                     "delay": 1}
        spec.results = {"signals": [0, 1, 0]}
    else:
        spec.timer = {"after": "w0.pre", "before": "w0.post", "delay": 5}
    return spec, wf, gate


@pytest.mark.django_db
@pytest.mark.parametrize("kind", [NodeKind.WAIT, NodeKind.TIMER])
def test_checker__a_signalled_wait_and_a_timer_that_kept_their_rules_pass(tmp_path, kind):
    spec, *_ = _gated(tmp_path, kind)
    assert _violations(spec, tmp_path) == []


@pytest.mark.django_db
def test_checker__a_wait_completed_twice(tmp_path):
    spec, wf, gate = _gated(tmp_path, NodeKind.WAIT)
    _event(wf, S.SUCCESS, 5, node=gate, old_state=S.WAITING, reason="signal 'go-0'")
    spec.results = {"signals": [1, 1]}
    found = _violations(spec, tmp_path)
    assert any("succeeded 2 times" in v for v in found)
    assert any("completed by the soak 2 times" in v for v in found)


@pytest.mark.django_db
def test_checker__a_wait_that_should_have_timed_out(tmp_path):
    spec, *_ = _gated(tmp_path, NodeKind.WAIT, outcome="timeout")
    spec.results = {}
    assert any("should have timed out, yet succeeded" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_wait_that_should_have_taken_its_default(tmp_path):
    spec, wf, gate = _gated(tmp_path, NodeKind.WAIT, outcome="default")
    spec.results = {}
    assert any("should have timed out with its default, yet: \"signal 'go-0'\"" in v
               for v in _violations(spec, tmp_path))
    WorkflowEvent.objects.filter(node=gate, new_state=S.SUCCESS).update(reason="timed out: default taken")
    assert _violations(spec, tmp_path) == []


@pytest.mark.django_db
def test_checker__a_body_started_before_the_wait_it_follows_was_done(tmp_path):
    spec, *_ = _gated(tmp_path, NodeKind.WAIT)
    _run(tmp_path, "w0.post", _tid("w0.post"), 3, 3.5, suffix="early")  # signalled at 4 s
    assert any("w0.post started before the wait it follows was done" in v for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_timer_that_fired_before_its_time(tmp_path):
    spec, wf, gate = _gated(tmp_path, NodeKind.TIMER)
    WorkflowEvent.objects.filter(node=gate, new_state=S.SUCCESS).update(created_at=T0 + timedelta(seconds=4))
    _run(tmp_path, "w0.post", _tid("w0.post"), 4.5, 5, suffix="early")  # reached at 2 s, delay 5 s
    found = _violations(spec, tmp_path)
    assert any("timer fired 2.000s after it was reached, before its delay" in v for v in found)
    assert any("w0.post started 2.500s after its timer was reached" in v for v in found)


def _branch(runs):
    """A SUCCESS workflow pre -> branch choosing 'left': l0 ran, r0 SKIPPED, merge after both."""
    wf = Workflow.objects.create(name="chaos-0-branch", state=Workflow.State.SUCCESS, nodes_total=5, nodes_done=5,
                                 nodes_succeeded=4, nodes_skipped=1)
    pre = _node(wf, "w0.pre", S.SUCCESS)
    br = _node(wf, "w0.br", S.SUCCESS, kind=NodeKind.BRANCH, task_name="chaos.choose", args=["w0.br", "left"])
    l0 = _node(wf, "w0.l0", S.SUCCESS)
    r0 = _node(wf, "w0.r0", S.SKIPPED)
    merge = _node(wf, "w0.merge", S.SUCCESS)
    for node, dep in ((br, pre), (l0, br), (r0, br), (merge, l0), (merge, r0)):
        WorkflowEdge.objects.create(workflow=wf, node=node, dependency=dep)
    _event(wf, "RUNNING", 0, old_state="INITIAL")
    _event(wf, S.SKIPPED, 2.1, node=r0, old_state=S.PENDING, reason="branch chose 'left'")
    _event(wf, "SUCCESS", 20, old_state="RUNNING")
    for i, label in enumerate(("w0.pre", "w0.br", "w0.l0", "w0.merge")):
        _run(runs, label, _tid(label), i + 0.5, i + 1)
    spec = traffic.Spec(index=0, at=0, shape="branch", script="none", delay=0, pk=wf.pk, script_done=True,
                        nodes=[("w0.pre", 0, "ok", []), ("w0.l0", 0, "ok", []), ("w0.r0", 0, "ok", []),
                               ("w0.merge", 0, "ok", ["w0.l0", "w0.r0"])])
    spec.branch = {"label": "w0.br", "after": "w0.pre", "key": "left", "mode": "ok",
                   "paths": {"left": ["w0.l0"], "right": ["w0.r0"]}}
    return spec, wf, r0


@pytest.mark.django_db
def test_checker__a_branch_that_kept_its_rules_passes(tmp_path):
    spec, *_ = _branch(tmp_path)
    assert _violations(spec, tmp_path) == []


@pytest.mark.django_db
def test_checker__a_body_on_a_path_the_branch_did_not_choose_ran(tmp_path):
    spec, *_ = _branch(tmp_path)
    _run(tmp_path, "w0.r0", _tid("w0.r0"), 3, 3.5)
    assert any("w0.r0 is on a path the branch did not choose, yet its body ran 1 times" in v
               for v in _violations(spec, tmp_path))


@pytest.mark.django_db
def test_checker__a_node_of_an_unchosen_path_not_skipped(tmp_path):
    spec, wf, r0 = _branch(tmp_path)
    WorkflowNode.objects.filter(pk=r0.pk).update(state=S.SUCCESS)
    assert any("did not choose, yet it is SUCCESS" in v for v in _violations(spec, tmp_path))


def _paused_chain(runs, b_queued_at):
    """The clean chain, paused from 2.5 s to 6 s; b published at ``b_queued_at``; its body started at 3 s."""
    spec, wf, a, b = _chain(runs)
    spec.script = "pause"
    events = [(2.5, "pause"), (6, "resume"), (b_queued_at, "queue")]
    for at, what in sorted(events):
        if what == "pause":
            _event(wf, "PAUSED", at, old_state="RUNNING", reason="chaos pause")
        elif what == "resume":
            _event(wf, "RUNNING", at, old_state="PAUSED", reason="chaos resume")
        else:
            _event(wf, S.QUEUED, at, node=b, old_state=S.PENDING)
    return spec


@pytest.mark.django_db
def test_checker__a_body_published_before_the_pause_may_start_during_it(tmp_path):
    spec = _paused_chain(tmp_path, b_queued_at=2.0)
    assert _violations(spec, tmp_path) == []


@pytest.mark.django_db
def test_checker__a_node_published_while_paused(tmp_path):
    spec = _paused_chain(tmp_path, b_queued_at=2.8)
    found = _violations(spec, tmp_path)
    assert any("w0.c1 queued while the workflow was paused" in v for v in found)
    assert any("body w0.c1 started while the workflow was paused, and was not published before" in v for v in found)

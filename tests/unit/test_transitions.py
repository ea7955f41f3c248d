"""The state machine and the engine's decisions, driven by hand without a worker.

Worker events are replaced by direct calls to ``outcomes.node_succeeded`` /
``node_failed`` and the broker by a recorder, so each test can say exactly
which nodes were published after each event. Running on-commit callbacks
explicitly keeps the test inside pytest-django's transaction.
"""

import itertools
from collections import Counter
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
from celery import chain, chord, group
from celery.canvas import Signature
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test.utils import CaptureQueriesContext

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, messaging, outcomes
from django_dyrygent.engine.steps import ConcurrentTransition, Step, TransitionNotAllowed, lock_workflow
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from django_dyrygent.states import (
    NODE_FINAL,
    NODE_TRANSITIONS,
    WORKFLOW_FINAL,
    WORKFLOW_TRANSITIONS,
    NodeState,
    WorkflowState,
)
from tests.celery_app import app as celery_app
from tests.tasks import noop

pytestmark = pytest.mark.django_db

S = NodeState
W = WorkflowState


def t(label):
    return noop.si(label).set(task_id=f"task-{label}")


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def broker(monkeypatch):
    """Record what the engine would send to Celery instead of sending it."""
    calls = SimpleNamespace(published=[], ticks=[], revoked=[])

    def fake_apply_async(sig, args=(), kwargs=None, task_id=None, producer=None, **options):
        call_args = tuple(sig.args) if sig.immutable else tuple(args) + tuple(sig.args)
        calls.published.append(
            SimpleNamespace(task=sig.task, task_id=task_id, args=call_args, options=options)
        )

    monkeypatch.setattr(Signature, "apply_async", fake_apply_async)
    monkeypatch.setattr(celery_app, "producer_or_acquire", lambda *a, **k: nullcontext())
    monkeypatch.setattr(messaging, "send_tick", lambda pk, options=None, countdown=None: calls.ticks.append(
        (str(pk), countdown)))
    monkeypatch.setattr(messaging, "revoke", lambda ids, terminate=False: calls.revoked.extend(ids))

    def take():
        out = [c.task_id for c in calls.published]
        calls.published.clear()
        return out

    calls.take = take
    return calls


def states(wf):
    return {n.task_id: n.state for n in WorkflowNode.objects.filter(workflow=wf, kind="task")}


def node(task_id):
    return WorkflowNode.objects.get(task_id=task_id)


def started(run, wf):
    run(wf.apply_async)
    run(engine.tick, wf.pk)
    wf.refresh_from_db()
    return wf


def one_node_workflow(state=S.PENDING, kind="task"):
    wf = Workflow()
    n = wf.add_signature(noop.si())
    wf.apply_async()
    WorkflowNode.objects.filter(pk=n.pk).update(state=state, kind=kind)
    Workflow.objects.filter(pk=wf.pk).update(state=W.RUNNING)
    return wf, WorkflowNode.objects.get(pk=n.pk)


def locked_step(wf):
    return Step(lock_workflow(wf.pk))


# -- the state tables -----------------------------------------------------------------------


def test_states__final_node_states_only_leave_through_retry():
    for state in NODE_FINAL:
        assert NODE_TRANSITIONS[state] <= {S.PENDING}, state
    assert NODE_TRANSITIONS[S.SUCCESS] == set()
    assert WORKFLOW_TRANSITIONS[W.SUCCESS] == set()
    for state in WORKFLOW_FINAL - {W.SUCCESS}:
        assert WORKFLOW_TRANSITIONS[state] == {W.RUNNING}, state
    assert set(NODE_TRANSITIONS) == set(S) and set(WORKFLOW_TRANSITIONS) == set(W)


@pytest.mark.parametrize("old, new", list(itertools.product(S, S)), ids=lambda s: s.value)
def test_transition_nodes__follows_the_table(old, new):
    wf, n = one_node_workflow(old)
    with transaction.atomic():
        step = locked_step(wf)
        if new in NODE_TRANSITIONS[old]:
            step.transition_nodes([n], new, reason="test")
            assert node(n.task_id).state == new and n.state == new
            assert [(e.old_state, e.new_state) for e in step.events] == [(old, new)]
        else:
            with pytest.raises(TransitionNotAllowed, match=f"{old} -> {new}"):
                step.transition_nodes([n], new)
            assert node(n.task_id).state == old and n.state == old
            assert step.events == [] and not step.counters


def test_transition_nodes__one_forbidden_node_stops_the_whole_batch():
    wf = Workflow()
    a, b = wf.add_signature(noop.si()), wf.add_signature(noop.si())
    wf.apply_async()
    WorkflowNode.objects.filter(pk=b.pk).update(state=S.SUCCESS)
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position"))
    with transaction.atomic():
        step = locked_step(wf)
        with pytest.raises(TransitionNotAllowed, match=b.task_id):
            step.transition_nodes(nodes, S.QUEUED)
        assert states(wf) == {a.task_id: S.PENDING, b.task_id: S.SUCCESS}
        assert step.events == []


def test_transition_nodes__row_changed_behind_the_engine_raises_concurrent_transition():
    wf = Workflow()
    a, b = wf.add_signature(noop.si()), wf.add_signature(noop.si())
    wf.apply_async()
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position"))
    # Someone writes b without the lock after the engine read it.
    WorkflowNode.objects.filter(pk=b.pk).update(state=S.CANCELED)
    with pytest.raises(ConcurrentTransition, match="was CANCELED, not PENDING"):
        with transaction.atomic():
            locked_step(wf).transition_nodes(nodes, S.QUEUED)
    # The transaction rolled back: a was not queued either.
    assert states(wf) == {a.task_id: S.PENDING, b.task_id: S.CANCELED}


def test_transition_nodes__a_node_a_worker_started_meanwhile_moves_from_its_new_state():
    wf = Workflow()
    a, b = wf.add_signature(noop.si()), wf.add_signature(noop.si())
    wf.apply_async()
    WorkflowNode.objects.filter(workflow=wf).update(state=S.QUEUED)
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position"))
    # task_prerun records STARTED without the workflow lock, after the engine read QUEUED.
    WorkflowNode.objects.filter(pk=b.pk).update(state=S.STARTED)
    with transaction.atomic():
        step = locked_step(wf)
        moved = step.transition_nodes(nodes, S.CANCELED)
        step.flush()
    assert {n.pk for n in moved} == {a.pk, b.pk}
    assert states(wf) == {a.task_id: S.CANCELED, b.task_id: S.CANCELED}
    assert set(WorkflowEvent.objects.filter(node_id=b.pk).values_list("old_state", "new_state")) == {
        (S.STARTED, S.CANCELED)
    }


def test_transition_nodes__a_republish_of_a_node_that_started_meanwhile_is_dropped():
    wf = Workflow()
    a, b = wf.add_signature(noop.si()), wf.add_signature(noop.si())
    wf.apply_async()
    WorkflowNode.objects.filter(workflow=wf).update(state=S.QUEUED)
    nodes = list(WorkflowNode.objects.filter(workflow=wf).order_by("position"))
    WorkflowNode.objects.filter(pk=b.pk).update(state=S.STARTED)
    with transaction.atomic():
        moved = locked_step(wf).transition_nodes(nodes, S.QUEUED)
    assert [n.pk for n in moved] == [a.pk]
    assert states(wf) == {a.task_id: S.QUEUED, b.task_id: S.STARTED}


def test_flush__workflow_changed_behind_the_engine_raises_concurrent_transition():
    wf = Workflow()
    wf.add_signature(noop.si())
    wf.apply_async()
    with pytest.raises(ConcurrentTransition, match="no longer INITIAL"):
        with transaction.atomic():
            step = locked_step(wf)
            Workflow.objects.filter(pk=wf.pk).update(state=W.CANCELED)
            step.transition_workflow(W.RUNNING)
            step.flush()
    # Everything in the transaction, the intruder's write included, rolled back.
    wf.refresh_from_db()
    assert wf.state == W.INITIAL and wf.started_at is None
    assert not WorkflowEvent.objects.filter(workflow=wf).exists()


def test_transition_workflow__forbidden_change_raises_and_changes_nothing():
    wf, _n = one_node_workflow()
    Workflow.objects.filter(pk=wf.pk).update(state=W.SUCCESS)
    with transaction.atomic():
        step = locked_step(wf)
        with pytest.raises(TransitionNotAllowed, match="SUCCESS -> RUNNING"):
            step.transition_workflow(W.RUNNING)
        assert step.wf.state == W.SUCCESS and step.wf_fields == {} and step.events == []
        step.transition_workflow(W.SUCCESS)  # same state: nothing to do
        assert step.events == []
    assert Workflow.objects.get(pk=wf.pk).state == W.SUCCESS


@pytest.mark.parametrize(
    "old, new, counter",
    [
        (S.QUEUED, S.SUCCESS, "nodes_succeeded"),
        (S.STARTED, S.FAILURE, "nodes_failed"),
        (S.QUEUED, S.CANCELED, "nodes_failed"),
        (S.PENDING, S.UPSTREAM_FAILED, "nodes_failed"),
        (S.PENDING, S.SKIPPED, "nodes_skipped"),
        (S.QUEUED, S.STARTED, None),
    ],
)
def test_flush__moves_the_counters_and_writes_events(old, new, counter):
    wf, n = one_node_workflow(old)
    with transaction.atomic():
        step = locked_step(wf)
        step.transition_nodes([n], new, reason="why not")
        step.flush()
    wf.refresh_from_db()
    counters = {k: getattr(wf, k) for k in ("nodes_done", "nodes_succeeded", "nodes_failed", "nodes_skipped")}
    expected = dict.fromkeys(counters, 0)
    if counter:
        expected.update({"nodes_done": 1, counter: 1})
        assert node(n.task_id).finished_at is not None
    assert counters == expected
    (event,) = WorkflowEvent.objects.filter(workflow=wf)
    assert (event.node_id, event.old_state, event.new_state, event.reason) == (n.pk, old, new, "why not")


def test_flush__join_nodes_do_not_count_as_work():
    wf, n = one_node_workflow(S.PENDING, kind="join")
    with transaction.atomic():
        step = locked_step(wf)
        step.transition_nodes([n], S.SUCCESS)
        step.flush()
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_succeeded) == (0, 0)


def test_node_retrying__a_retry_reported_after_the_next_run_retried_still_counts(broker, run):
    """Celery publishes the retried run before it sends task_retry: the next run may start
    and retry on another process first, so the late report finds the node in RETRY already."""
    wf, n = one_node_workflow(state=S.STARTED)
    outcomes.node_retrying(wf.pk, n.task_id, "second run's retry")  # arrives first
    outcomes.node_retrying(wf.pk, n.task_id, "first run's retry")   # late, node already RETRY
    n.refresh_from_db()
    assert (n.state, n.retries) == (S.RETRY, 2)
    hotpath.node_started(wf.pk, n.task_id)
    n.refresh_from_db()
    assert (n.state, n.retries) == (S.STARTED, 2)


def test_flush__retry_transition_does_not_count_twice():
    wf, n = one_node_workflow(S.FAILURE)
    # The counters a failed node left behind; retry's move back to PENDING takes them back.
    Workflow.objects.filter(pk=wf.pk).update(nodes_done=1, nodes_failed=1)
    with transaction.atomic():
        step = locked_step(wf)
        step.transition_nodes([n], S.PENDING)
        step.flush()
    wf.refresh_from_db()
    assert wf.nodes_done == 0 and wf.nodes_failed == 0


def test_flush__no_event_rows_when_the_event_log_is_off(settings):
    settings.DYRYGENT_EVENT_LOG = False
    wf, n = one_node_workflow(S.QUEUED)
    with transaction.atomic():
        step = locked_step(wf)
        step.transition_nodes([n], S.SUCCESS)
        step.transition_workflow(W.SUCCESS)
        step.flush()
    assert not WorkflowEvent.objects.exists()
    assert Workflow.objects.get(pk=wf.pk).nodes_succeeded == 1


# -- the engine, event by event ----------------------------------------------------------


def test_apply_async__starts_the_workflow_at_commit_and_publishes_only_the_roots(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), group(t("b"), t("c")), t("d")))
    wf.add_signature(t("x"))
    run(wf.apply_async)
    # No start tick: the roots go out from the caller's commit, the tick chain starts after them.
    assert sorted(broker.take()) == ["task-a", "task-x"]
    assert broker.ticks == [(str(wf.pk), 30.0)] and wf.start_sent is True
    assert states(wf) == {
        "task-a": S.QUEUED, "task-x": S.QUEUED, "task-b": S.PENDING, "task-c": S.PENDING, "task-d": S.PENDING,
    }
    wf.refresh_from_db()
    assert wf.state == W.RUNNING and wf.started_at and wf.deadline and wf.finished_at is None
    assert wf.next_tick_at is not None and broker.ticks[-1][1] == 30.0  # DYRYGENT_TICK_INTERVAL
    assert node("task-a").queued_at is not None and node("task-a").publish_count == 1
    events = WorkflowEvent.objects.filter(workflow=wf)
    assert {(e.old_state, e.new_state) for e in events if e.node_id is None} == {(W.INITIAL, W.RUNNING)}
    assert sorted(e.node.task_id for e in events if e.new_state == S.QUEUED) == ["task-a", "task-x"]
    # A tick publishes nothing new.
    assert run(engine.tick, wf.pk) == W.RUNNING
    assert broker.take() == []


def test_apply_async__a_delayed_start_is_left_to_the_first_tick(broker, run):
    wf = Workflow(options={"countdown": 5})
    wf.add_signature(t("a"))
    run(wf.apply_async)
    assert broker.take() == [] and broker.ticks == [(str(wf.pk), None)]
    assert Workflow.objects.get(pk=wf.pk).state == W.INITIAL and wf.start_sent is True
    assert run(engine.tick, wf.pk) == W.RUNNING
    assert broker.take() == ["task-a"]


@pytest.mark.django_db(transaction=True)
def test_apply_async__outside_a_transaction_starts_in_the_one_that_saves_without_reading_the_nodes_back(
    broker, monkeypatch,
):
    wf = Workflow(name="in-hand")
    wf.add_celery_canvas(chain(t("a"), group(t("b"), t("c")), t("d")))
    wf.add_signature(t("x"))
    commits = []
    real_commit = transaction.get_connection().commit
    monkeypatch.setattr(transaction.get_connection(), "commit", lambda: commits.append(1) or real_commit())
    with CaptureQueriesContext(transaction.get_connection()) as ctx:
        wf.apply_async()
    assert len(commits) == 1  # the rows and the start: one transaction
    node_table = WorkflowNode._meta.db_table
    read_back = [q["sql"] for q in ctx.captured_queries
                 if q["sql"].startswith("SELECT") and node_table in q["sql"].split(" FROM ", 1)[-1]
                 and "nextval" not in q["sql"]]
    assert read_back == []
    assert sorted(broker.take()) == ["task-a", "task-x"] and wf.start_sent is True
    assert states(wf) == {
        "task-a": S.QUEUED, "task-x": S.QUEUED, "task-b": S.PENDING, "task-c": S.PENDING, "task-d": S.PENDING,
    }
    wf.refresh_from_db()
    assert wf.state == W.RUNNING and wf.started_at and wf.deadline and wf.finished_at is None
    assert Counter(wf.events.values_list("node__task_id", "old_state", "new_state")) == Counter([
        (None, W.INITIAL, W.RUNNING), ("task-a", S.PENDING, S.QUEUED), ("task-x", S.PENDING, S.QUEUED),
    ])
    assert set(wf.nodes.filter(state=S.QUEUED).values_list("publish_count", flat=True)) == {1}


@pytest.mark.django_db(transaction=True)
def test_apply_async__inside_a_caller_s_transaction_the_workflow_starts_at_its_commit(broker):
    wf = Workflow(name="deferred")
    wf.add_celery_canvas(chain(t("a"), t("b")))
    with transaction.atomic():
        wf.apply_async()
        assert Workflow.objects.get(pk=wf.pk).state == W.INITIAL
        assert broker.take() == [] and wf.start_sent is None
    assert broker.take() == ["task-a"] and wf.start_sent is True
    assert Workflow.objects.get(pk=wf.pk).state == W.RUNNING


@pytest.mark.django_db(transaction=True)
def test_apply_async__a_start_that_fails_with_the_rows_in_hand_runs_after_the_commit(broker, monkeypatch):
    from django_dyrygent.engine import decisions

    real_start, calls = decisions.start, []

    def start_once_failing(step, candidates=None):
        calls.append(candidates)
        if len(calls) == 1:
            raise RuntimeError("the in-hand start broke")
        return real_start(step, candidates)

    monkeypatch.setattr(engine, "start", start_once_failing)
    wf = Workflow(name="fallback")
    wf.add_celery_canvas(chain(t("a"), t("b")))
    wf.apply_async()
    assert [c is None for c in calls] == [False, True]  # in hand, then read back after the commit
    assert broker.take() == ["task-a"] and wf.start_sent is True
    assert Workflow.objects.get(pk=wf.pk).state == W.RUNNING
    assert list(wf.events.filter(node=None).values_list("old_state", "new_state")) == [(W.INITIAL, W.RUNNING)]


def test_publish__sends_the_nodes_task_id_header_and_merged_options(broker, run):
    wf = Workflow()
    wf.add_signature(t("a").set(queue="fast"))
    run(wf.apply_async, options={"priority": 8, "queue": "slow"})
    run(engine.tick, wf.pk)
    (call,) = broker.published
    assert (call.task, call.task_id, call.args) == ("tests.noop", "task-a", ("a",))
    assert call.options["priority"] == 8 and call.options["queue"] == "fast"
    assert call.options["headers"] == {messaging.HEADER: str(wf.pk)}
    # The node row holds the outcome: Celery is not asked to store a second copy.
    assert call.options["ignore_result"] is True


@pytest.mark.parametrize(("sig_options", "wf_options", "store_setting", "expected"), [
    ({"ignore_result": False}, {}, False, False),  # the user asked for the backend copy
    ({}, {"ignore_result": False}, False, False),  # the workflow's task options did
    ({}, {}, True, False),  # DYRYGENT_STORE_NODE_RESULTS: Celery's default
    ({"time_limit": 30}, {}, False, False),  # a hard time limit: only the backend hears of it
    ({}, {"time_limit": 30}, False, False),
    ({"soft_time_limit": 30}, {}, False, True),  # a soft one raises in the task: reported
])
def test_publish__asks_celery_to_store_the_result_only_when_something_needs_it(
    broker, run, settings, sig_options, wf_options, store_setting, expected,
):
    settings.DYRYGENT_STORE_NODE_RESULTS = store_setting
    wf = Workflow()
    wf.add_signature(t("a").set(**sig_options))
    run(wf.apply_async, options=wf_options)
    run(engine.tick, wf.pk)
    (call,) = broker.published
    assert call.options.get("ignore_result", False) is expected


def test_node_succeeded__releases_a_dependent_only_after_its_last_dependency(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chord([t("a"), t("b"), t("c")], t("body")))
    started(run, wf)
    assert sorted(broker.take()) == ["task-a", "task-b", "task-c"]
    run(outcomes.node_succeeded, wf.pk, "task-a", 1)
    run(outcomes.node_succeeded, wf.pk, "task-c", 3)
    assert broker.take() == []
    assert node("task-body").state == S.PENDING
    join = WorkflowNode.objects.get(workflow=wf, kind="join")
    assert (join.state, join.waiting) == (S.PENDING, 1)
    run(outcomes.node_succeeded, wf.pk, "task-b", 2)
    assert broker.take() == ["task-body"]
    join.refresh_from_db()
    assert (join.state, join.waiting) == (S.SUCCESS, 0)
    assert node("task-a").result == 1
    run(outcomes.node_succeeded, wf.pk, "task-body", None)
    wf.refresh_from_db()
    assert wf.state == W.SUCCESS
    assert wf.started_at <= wf.finished_at and wf.next_tick_at is None
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (4, 4, 4, 0)


def test_node_failed__marks_every_descendant_upstream_failed_and_other_branches_go_on(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), group(t("b"), chain(t("c"), t("d"))), t("e")))
    x = wf.add_signature(t("x"))
    wf.add_signature(t("y"), dependencies=[x])
    started(run, wf)
    assert sorted(broker.take()) == ["task-a", "task-x"]
    run(outcomes.node_failed, wf.pk, "task-a", ValueError("bad input"), "Traceback: ...")
    assert states(wf) == {
        "task-a": S.FAILURE, "task-b": S.UPSTREAM_FAILED, "task-c": S.UPSTREAM_FAILED,
        "task-d": S.UPSTREAM_FAILED, "task-e": S.UPSTREAM_FAILED, "task-x": S.QUEUED, "task-y": S.PENDING,
    }
    assert "ValueError: bad input" in node("task-a").error
    assert Workflow.objects.get(pk=wf.pk).state == W.RUNNING
    assert broker.take() == []
    run(outcomes.node_succeeded, wf.pk, "task-x", None)
    assert broker.take() == ["task-y"]
    run(outcomes.node_succeeded, wf.pk, "task-y", None)
    wf.refresh_from_db()
    assert wf.state == W.FAILURE and wf.finished_at is not None
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (7, 2, 5)


def test_node_succeeded__a_late_or_duplicate_report_is_ignored(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), t("b")))
    started(run, wf)
    broker.take()
    run(outcomes.node_succeeded, wf.pk, "task-a", "first")
    assert broker.take() == ["task-b"]
    events = WorkflowEvent.objects.count()
    assert run(outcomes.node_succeeded, wf.pk, "task-a", "second") is None
    assert run(outcomes.node_failed, wf.pk, "task-a", ValueError("late")) is None
    assert run(outcomes.node_succeeded, wf.pk, "not-a-node", 1) is None
    assert broker.take() == []
    assert node("task-a").result == "first" and node("task-a").state == S.SUCCESS
    assert WorkflowEvent.objects.count() == events
    wf.refresh_from_db()
    assert (wf.nodes_done, wf.nodes_succeeded) == (1, 1)
    # A failure reported first wins over a later success too.
    run(outcomes.node_failed, wf.pk, "task-b", ValueError("x"))
    run(outcomes.node_succeeded, wf.pk, "task-b", 1)
    assert node("task-b").state == S.FAILURE
    assert Workflow.objects.get(pk=wf.pk).state == W.FAILURE


def test_node_succeeded__unstorable_result_fails_the_node(broker, run, settings):
    settings.DYRYGENT_MAX_RESULT_BYTES = 100
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), t("b")))
    started(run, wf)
    run(outcomes.node_succeeded, wf.pk, "task-a", "x" * 1000)
    assert node("task-a").state == S.FAILURE and "DYRYGENT_MAX_RESULT_BYTES" in node("task-a").error
    assert node("task-b").state == S.UPSTREAM_FAILED


def test_trigger_rule_all_done__runs_after_a_failed_dependency(broker, run):
    wf = Workflow()
    a = wf.add_signature(t("a"))
    b = wf.add_signature(t("b"))
    wf.add_signature(t("cleanup"), dependencies=[a, b], trigger_rule="all_done")
    started(run, wf)
    broker.take()
    run(outcomes.node_failed, wf.pk, "task-a", ValueError())
    assert broker.take() == [] and node("task-cleanup").state == S.PENDING  # b not done yet
    run(outcomes.node_succeeded, wf.pk, "task-b", None)
    assert broker.take() == ["task-cleanup"]
    run(outcomes.node_succeeded, wf.pk, "task-cleanup", None)
    wf.refresh_from_db()
    assert wf.state == W.FAILURE and (wf.nodes_succeeded, wf.nodes_failed) == (2, 1)


def test_trigger_rule_one_failed__runs_at_the_first_failure_and_is_skipped_otherwise(broker, run):
    wf = Workflow()
    a, b = wf.add_signature(t("a")), wf.add_signature(t("b"))
    wf.add_signature(t("alert"), dependencies=[a, b], trigger_rule="one_failed")
    started(run, wf)
    broker.take()
    run(outcomes.node_failed, wf.pk, "task-a", ValueError())
    assert broker.take() == ["task-alert"]  # without waiting for b

    wf2 = Workflow()
    a, b = wf2.add_signature(t("a2")), wf2.add_signature(t("b2"))
    after = wf2.add_signature(t("after"), dependencies=[a, b], trigger_rule="one_failed")
    wf2.add_signature(t("after-after"), dependencies=[after])
    started(run, wf2)
    broker.take()
    run(outcomes.node_succeeded, wf2.pk, "task-a2", None)
    run(outcomes.node_succeeded, wf2.pk, "task-b2", None)
    # Skipped, and a skip lets an all_success dependent run.
    assert node("task-after").state == S.SKIPPED
    assert broker.take() == ["task-after-after"]
    run(outcomes.node_succeeded, wf2.pk, "task-after-after", None)
    wf2.refresh_from_db()
    assert wf2.state == W.SUCCESS and (wf2.nodes_skipped, wf2.nodes_succeeded) == (1, 3)


def test_skip__refuses_a_node_whose_dependency_is_not_done(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), t("b"), t("c")))
    started(run, wf)
    broker.take()
    before = (states(wf), WorkflowEvent.objects.count())
    with pytest.raises(ValidationError, match="depends on task-a, which is QUEUED"):
        run(wf.skip, [node("task-b")])
    assert (states(wf), WorkflowEvent.objects.count()) == before
    # Skipping the dependency in the same call is allowed; the next node is released.
    assert run(wf.skip, [node("task-a"), node("task-b")]) == 2
    assert broker.revoked == ["task-a"]
    assert broker.take() == ["task-c"]
    assert node("task-a").state == S.SKIPPED and node("task-b").state == S.SKIPPED
    with pytest.raises(ValidationError, match="only PENDING or QUEUED"):
        run(wf.skip, [node("task-a")])


def test_cancel__is_idempotent(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(group(t("a"), t("b")), t("c")))
    started(run, wf)
    broker.take()
    run(outcomes.node_succeeded, wf.pk, "task-a", None)
    assert run(wf.cancel, "enough") is True
    assert broker.revoked == ["task-b"]
    assert states(wf) == {"task-a": S.SUCCESS, "task-b": S.CANCELED, "task-c": S.CANCELED}
    assert wf.state == W.CANCELED and wf.finished_at is not None
    events = WorkflowEvent.objects.count()
    assert run(wf.cancel) is False
    assert broker.revoked == ["task-b"] and WorkflowEvent.objects.count() == events
    assert (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (3, 1, 2)
    # A cancelled workflow is not moved by a late report or a tick.
    run(outcomes.node_succeeded, wf.pk, "task-b", None)
    run(engine.tick, wf.pk)
    assert broker.take() == [] and Workflow.objects.get(pk=wf.pk).state == W.CANCELED


def test_retry__reruns_failed_nodes_with_fresh_task_ids(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), group(t("b"), t("c")), t("d")))
    wf.add_signature(t("x"))
    started(run, wf)
    broker.take()
    run(outcomes.node_succeeded, wf.pk, "task-x", "kept")
    run(outcomes.node_succeeded, wf.pk, "task-a", None)
    broker.take()
    run(outcomes.node_failed, wf.pk, "task-b", ValueError())
    run(outcomes.node_succeeded, wf.pk, "task-c", None)
    wf.refresh_from_db()
    assert wf.state == W.FAILURE and (wf.nodes_done, wf.nodes_failed) == (5, 2)

    assert run(wf.retry) == 2  # b and d; the join between them is reset too, not counted
    assert wf.state == W.RUNNING and wf.finished_at is None
    (new_b,) = broker.take()
    b = WorkflowNode.objects.get(task_id=new_b)
    assert new_b != "task-b" and b.previous_task_ids == ["task-b"] and b.attempts == 2
    assert (b.state, b.error, b.position) == (S.QUEUED, "", 1)
    d = WorkflowNode.objects.get(previous_task_ids=["task-d"])
    assert (d.state, d.attempts, d.waiting, d.failed_dependencies) == (S.PENDING, 2, 1, 0)
    assert node("task-x").result == "kept" and node("task-x").attempts == 1
    assert (wf.nodes_done, wf.nodes_failed) == (3, 0)
    # The old task id is no longer a node: its late report changes nothing.
    assert run(outcomes.node_succeeded, wf.pk, "task-b", None) is None
    run(outcomes.node_succeeded, wf.pk, new_b, None)
    assert broker.take() == [d.task_id]
    run(outcomes.node_succeeded, wf.pk, d.task_id, None)
    wf.refresh_from_db()
    assert wf.state == W.SUCCESS and (wf.nodes_done, wf.nodes_succeeded, wf.nodes_failed) == (5, 5, 0)
    assert run(wf.retry) == 0


def test_link_error_and_finalizer__queued_once_when_the_workflow_fails(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), t("b")))
    wf.link_error(noop.s("on-error").set(task_id="task-err"))
    wf.link_finalizer(t("fin"))
    started(run, wf)
    assert broker.take() == ["task-a"]  # callbacks are not roots
    run(outcomes.node_failed, wf.pk, "task-a", ValueError())
    calls = {c.task_id: c for c in broker.published}
    assert sorted(calls) == ["task-err", "task-fin"]
    # A mutable error callback gets the workflow id first; an immutable one runs as written.
    assert calls["task-err"].args == (str(wf.pk), "on-error")
    assert calls["task-fin"].args == ("fin",)
    broker.take()
    assert Workflow.objects.get(pk=wf.pk).state == W.FAILURE
    run(outcomes.node_failed, wf.pk, "task-err", ValueError("callback broke"))
    run(outcomes.node_succeeded, wf.pk, "task-fin", None)
    run(engine.tick, wf.pk)
    assert broker.take() == []
    wf.refresh_from_db()
    # Callbacks are not workflow nodes: they neither count nor change the outcome.
    assert wf.state == W.FAILURE and (wf.nodes_total, wf.nodes_done) == (2, 2)


def test_link_error__skipped_and_finalizer_queued_when_the_workflow_succeeds(broker, run):
    wf = Workflow()
    wf.add_signature(t("a"))
    wf.link_error(t("err"))
    wf.link_finalizer(t("fin"))
    started(run, wf)
    broker.take()
    run(outcomes.node_succeeded, wf.pk, "task-a", None)
    assert broker.take() == ["task-fin"]
    assert node("task-err").state == S.SKIPPED
    run(engine.tick, wf.pk)
    assert broker.take() == []
    assert Workflow.objects.get(pk=wf.pk).state == W.SUCCESS


def test_link_error__runs_when_a_canceled_then_retried_workflow_fails(broker, run):
    """Found by the chaos soak (seed 20261207): the cancel skipped the error callback for good."""
    wf = Workflow()
    wf.add_celery_canvas(chain(t("a"), t("b")))
    wf.link_error(t("err"))
    wf.link_finalizer(t("fin"))
    started(run, wf)
    broker.take()
    assert run(wf.cancel) is True
    assert node("task-err").state == S.SKIPPED and broker.take() == ["task-fin"]
    run(outcomes.node_succeeded, wf.pk, "task-fin", None)
    assert run(wf.retry) == 2
    assert node("task-err").state == S.PENDING
    (new_a,) = broker.take()
    run(outcomes.node_failed, wf.pk, new_a, ValueError())
    assert Workflow.objects.get(pk=wf.pk).state == W.FAILURE
    # The error callback runs once now; the finalizer, which ran at the cancel, does not run again.
    assert broker.take() == ["task-err"] and node("task-err").state == S.QUEUED


def test_retry__a_canceled_workflow_that_then_succeeds_skips_its_error_callback_again(broker, run):
    wf = Workflow()
    wf.add_signature(t("a"))
    wf.link_error(t("err"))
    started(run, wf)
    broker.take()
    run(wf.cancel)
    run(wf.retry)
    (new_a,) = broker.take()
    run(outcomes.node_succeeded, wf.pk, new_a, None)
    assert Workflow.objects.get(pk=wf.pk).state == W.SUCCESS
    assert node("task-err").state == S.SKIPPED and broker.take() == []


def test_tick__an_empty_workflow_succeeds_at_once(broker, run):
    wf = Workflow()
    wf.add_celery_canvas(group())
    started(run, wf)
    assert wf.state == W.SUCCESS and wf.started_at and wf.finished_at and broker.take() == []


def test_edges__stay_in_place_while_the_engine_runs(broker, run):
    """The engine keeps its bookkeeping in counters, never by deleting edges."""
    wf = Workflow()
    wf.add_celery_canvas(chain(group(t("a"), t("b")), t("c")))
    started(run, wf)
    edges = WorkflowEdge.objects.filter(workflow=wf).count()
    for task_id in ("task-a", "task-b", "task-c"):
        run(outcomes.node_succeeded, wf.pk, task_id, None)
    assert WorkflowEdge.objects.filter(workflow=wf).count() == edges == 3


class _Victim(Exception):
    sqlstate = "40P01"  # what psycopg 3 says of a deadlock's victim


def _deadlock():
    from django.db import OperationalError

    exc = OperationalError("deadlock detected")
    exc.__cause__ = _Victim()
    return exc


@pytest.mark.django_db(transaction=True)
def test_locked_step__a_deadlock_s_victim_waiting_for_the_lock_asks_again(broker, monkeypatch):
    from django_dyrygent.engine import steps

    wf = Workflow(name="victim")
    wf.add_celery_canvas(chain(t("a"), t("b")))
    wf.apply_async()
    broker.take()
    real_lock, locks = steps.lock_workflow, []

    def lock_once_a_victim(pk, skip_locked=False):
        locks.append(pk)
        if len(locks) == 1:
            raise _deadlock()
        return real_lock(pk, skip_locked)

    monkeypatch.setattr(steps, "lock_workflow", lock_once_a_victim)
    assert engine.cancel(wf.pk, reason="after a deadlock") is True
    assert len(locks) == 2
    assert Workflow.objects.get(pk=wf.pk).state == W.CANCELED
    assert broker.revoked == ["task-a"]


@pytest.mark.django_db(transaction=True)
def test_locked_step__other_errors_a_caller_s_transaction_and_a_started_action_are_not_retried(broker, monkeypatch):
    from django.db import OperationalError

    from django_dyrygent.engine import steps

    wf = Workflow(name="not-retried")
    wf.add_celery_canvas(chain(t("a"), t("b")))
    wf.apply_async()
    errors = iter([OperationalError("server closed the connection"), _deadlock()])
    locks = []

    def failing_lock(pk, skip_locked=False):
        locks.append(pk)
        raise next(errors)

    real_lock = steps.lock_workflow
    monkeypatch.setattr(steps, "lock_workflow", failing_lock)
    with pytest.raises(OperationalError, match="server closed"):
        steps.locked_step(wf.pk, lambda step: None)
    with pytest.raises(OperationalError, match="deadlock"), transaction.atomic():
        steps.locked_step(wf.pk, lambda step: None)
    assert len(locks) == 2

    # Once the action has started, its objects may hold what the rolled-back transaction wrote.
    monkeypatch.setattr(steps, "lock_workflow", real_lock)
    actions = []

    def victim_after_the_lock(step):
        actions.append(step)
        raise _deadlock()

    with pytest.raises(OperationalError, match="deadlock"):
        steps.locked_step(wf.pk, victim_after_the_lock)
    assert len(actions) == 1

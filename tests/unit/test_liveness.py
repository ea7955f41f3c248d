"""Liveness decisions and recovery steps, on rows (every database); the fault suite runs them for real.

Publishing happens after commit, and these tests never commit (pytest-django's
``db``), so the recovered nodes' messages are not sent: the rows are what is
asserted.
"""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from billiard.exceptions import WorkerLostError
from celery.states import SUCCESS
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.conf import get_celery_app
from django_dyrygent.engine import db, hotpath, messaging, outcomes
from django_dyrygent.models import WorkerHeartbeat, Workflow, WorkflowEvent, WorkflowNode
from django_dyrygent.worker import handlers, liveness, recovery
from django_dyrygent.worker.recovery import Sweeper, lost_worker_runs
from tests.tasks import noop

S = WorkflowNode.State
HOST = "w1@host"


@pytest.fixture
def running(db, settings):
    """A running workflow: a -> b, with ``a`` STARTED on worker w1@host (pid 100)."""
    settings.DYRYGENT_LIVENESS = True
    wf = Workflow(name="liveness")
    a = wf.add_signature(noop.si())
    b = wf.add_signature(noop.si(), dependencies=[a])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    hotpath.node_started(wf.pk, a.task_id, HOST, 100)
    a.refresh_from_db()
    return wf, a, b


def _beat(hostname=HOST, pid=100, age=0.0, started_age=3600.0, held=()):
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        hostname=hostname, pid=pid, started_at=now - timedelta(seconds=started_age),
        last_seen=now - timedelta(seconds=age), active_task_ids=list(held),
    )


def _age(node, seconds):
    when = timezone.now() - timedelta(seconds=seconds)
    WorkflowNode.objects.filter(pk=node.pk).update(started_at=when, queued_at=when)
    node.refresh_from_db()


def _verdict(node, observing_since=None):
    snapshot = liveness.Snapshot.load(timezone.now(), observing_since)
    return liveness.started_verdict(node, snapshot, snapshot.held())


def test_node_started__records_the_worker_in_the_same_update(running):
    _wf, a, _b = running
    assert (a.state, a.worker_hostname, a.worker_pid) == (S.STARTED, HOST, 100)


def test_started_verdict__alive_and_holding_the_task_is_left_alone(running):
    _wf, a, _b = running
    _age(a, 60)
    _beat(held=[a.task_id])
    assert _verdict(a) is None


def test_started_verdict__stale_heartbeat_means_the_worker_is_lost(running):
    _wf, a, _b = running
    _age(a, 120)
    _beat(age=100)
    assert _verdict(a).startswith("worker lost: no heartbeat from w1@host (pid 100)")


def test_started_verdict__a_database_outage_seen_by_the_judge_kills_nobody(running):
    _wf, a, _b = running
    _age(a, 120)
    _beat(age=100)
    # The judge itself could not beat until 2 s ago: the 100 s of silence are not evidence.
    assert _verdict(a, observing_since=timezone.now() - timedelta(seconds=2)) is None


def test_started_verdict__no_heartbeat_ever_falls_back_to_started_at(running):
    _wf, a, _b = running
    assert _verdict(a) is None  # just started: may still beat
    _age(a, 120)
    assert _verdict(a) == "worker lost: w1@host (pid 100) never sent a heartbeat"


def test_started_verdict__a_restarted_worker_with_the_same_name_and_pid_is_another_worker(running):
    _wf, a, _b = running
    _age(a, 60)
    _beat(started_age=10)
    assert "restarted after the node started" in _verdict(a)


def test_started_verdict__alive_worker_no_longer_holding_the_task_lost_its_outcome(running):
    _wf, a, _b = running
    _age(a, 60)
    _beat(held=["another-task"])
    assert _verdict(a).startswith("outcome lost")


def test_started_verdict__a_worker_that_marked_itself_stopped_is_judged_at_once(running):
    _wf, a, _b = running
    _age(a, 60)
    beat = _beat(age=1, held=[a.task_id])
    WorkerHeartbeat.objects.filter(pk=beat.pk).update(stopped_at=beat.last_seen)
    snapshot = liveness.Snapshot.load(timezone.now())
    assert snapshot.live() == [] and snapshot.held() == set()
    # Its real last beat, one second old: neither back-dated nor waited for.
    stopped = beat.last_seen.isoformat()
    assert _verdict(a) == f"worker lost: w1@host (pid 100) stopped at {stopped} without reporting it"


def _thread(monkeypatch, held):
    from django_dyrygent.worker import heartbeat

    monkeypatch.setattr(heartbeat, "held_task_ids", lambda: (list(held), []))
    thread = heartbeat.LivenessThread(HOST, 100)
    thread.next_sweep = float("inf")  # beats only
    monkeypatch.setattr(heartbeat, "_thread", thread)
    return thread


def test_liveness_step__a_warm_stop_keeps_beating_until_worker_shutdown(db, monkeypatch):
    """Celery stops this step before the pool: the worker must stay alive to its peers while the pool drains."""
    from django_dyrygent.worker import heartbeat

    thread = _thread(monkeypatch, ["draining-task"])
    step = heartbeat.LivenessStep(SimpleNamespace())
    step.obj = thread
    step.stop(SimpleNamespace())
    assert thread.draining and not thread.stopping.is_set()
    thread.step()
    row = WorkerHeartbeat.objects.get(hostname=HOST, pid=100)
    assert (row.active_task_ids, row.stopped_at) == (["draining-task"], None)
    assert thread.is_leader()  # it still sweeps while it drains: its peers defer to the oldest live worker
    heartbeat.on_worker_shutdown(sender=None)  # every step stopped, the pool drained
    row.refresh_from_db()
    assert row.stopped_at is not None and row.last_seen == row.stopped_at and row.active_task_ids == []
    assert not liveness.Snapshot.load(timezone.now()).live() and not thread.is_leader()


def test_liveness_thread__a_beat_takes_the_row_back_from_an_earlier_worker_with_the_same_name_and_pid(
    db, monkeypatch,
):
    old = _beat(started_age=3600, age=100)
    WorkerHeartbeat.objects.filter(pk=old.pk).update(stopped_at=old.last_seen)
    thread = _thread(monkeypatch, [])
    thread.beat()
    row = WorkerHeartbeat.objects.get(pk=old.pk)
    assert (row.started_at, row.stopped_at) == (thread.started_at, None)


def test_liveness_step__a_cold_stop_marks_the_worker_stopped_at_once(db, monkeypatch):
    from django_dyrygent.worker import heartbeat

    thread = _thread(monkeypatch, ["cancelled"])
    step = heartbeat.LivenessStep(SimpleNamespace())
    step.obj = thread
    step.terminate(SimpleNamespace())
    assert WorkerHeartbeat.objects.get(hostname=HOST, pid=100).stopped_at is not None


def test_started_verdict__a_node_of_a_worker_without_liveness_is_never_judged(running):
    _wf, a, _b = running
    WorkflowNode.objects.filter(pk=a.pk).update(worker_hostname="", worker_pid=None)
    a.refresh_from_db()
    _age(a, 3600)
    assert _verdict(a) is None


def _queued(wf):
    node = WorkflowNode.objects.get(workflow=wf, state=S.QUEUED)
    _age(node, 30)
    return node


def test_waiting_verdict__a_message_in_a_busy_queue_is_never_lost_before_the_long_bound(running, settings):
    wf, a, _b = running
    outcomes.node_succeeded(wf.pk, a.task_id, None)
    b = _queued(wf)
    _beat(age=0)
    snapshot = liveness.Snapshot.load(timezone.now())
    probe = liveness.QueueProbe(taken_at=timezone.now() - timedelta(seconds=5), sizes={"q": 3})
    assert liveness.waiting_verdict(b, snapshot, set(), probe, "q") is None
    settings.DYRYGENT_QUEUED_LOST_AFTER = 20
    assert liveness.waiting_verdict(b, snapshot, set(), probe, "q").startswith("message lost: no live worker")


def test_waiting_verdict__empty_queue_and_nobody_holding_it_means_lost(running):
    wf, a, _b = running
    outcomes.node_succeeded(wf.pk, a.task_id, None)
    b = _queued(wf)
    _beat(age=0)
    snapshot = liveness.Snapshot.load(timezone.now())
    probe = liveness.QueueProbe(taken_at=timezone.now() - timedelta(seconds=5), sizes={"q": 0})
    assert liveness.waiting_verdict(b, snapshot, {b.task_id}, probe, "q") is None  # prefetched by a live worker
    assert "queue 'q' is empty" in liveness.waiting_verdict(b, snapshot, set(), probe, "q")
    # A live worker that has not beaten since the probe may have fetched it meanwhile.
    WorkerHeartbeat.objects.update(last_seen=timezone.now() - timedelta(seconds=6))
    snapshot = liveness.Snapshot.load(timezone.now())
    assert liveness.waiting_verdict(b, snapshot, set(), probe, "q") is None
    assert liveness.waiting_verdict(b, snapshot, set(), None, "q") is None  # no probe yet


def test_recover__a_node_of_a_dead_worker_runs_again_then_fails_with_a_clear_message(running):
    wf, a, _b = running
    first_id = a.task_id
    _age(a, 120)
    _beat(age=100)
    assert Sweeper().recover() == 1
    a.refresh_from_db()
    assert (a.state, a.attempts, a.previous_task_ids, a.worker_pid) == (S.QUEUED, 2, [first_id], None)
    event = WorkflowEvent.objects.filter(node=a).latest("id")
    assert event.reason.startswith("worker lost: no heartbeat") and event.reason.endswith("attempt 2 of 2")
    # The old run's late report is ignored; the new run is lost as well.
    assert outcomes.node_succeeded(wf.pk, first_id, "late") is None
    hotpath.node_started(wf.pk, a.task_id, HOST, 100)
    _age(a, 120)
    assert Sweeper().recover() == 1
    a.refresh_from_db()
    wf.refresh_from_db()
    assert a.state == S.FAILURE and a.error.startswith("Worker lost 2 time(s); giving up")
    assert wf.state == Workflow.State.FAILURE


def _rerun(node):
    """Have the sweep judge ``node``'s worker dead and re-run it; returns the task id it ran under."""
    old = node.task_id
    _age(node, 120)
    _beat(age=100)
    assert Sweeper().recover() == 1
    node.refresh_from_db()
    assert node.task_id != old and node.previous_task_ids == [old]
    return old


def _rows(wf):
    nodes = WorkflowNode.objects.filter(workflow=wf).order_by("pk")
    counters = Workflow.objects.filter(pk=wf.pk).values_list("state", "nodes_done", "nodes_succeeded", "nodes_failed")
    return [(n.state, n.task_id, n.waiting, n.publish_count, n.result) for n in nodes], list(counters)


def test_stale_report__a_woken_workers_reports_of_a_replaced_task_change_nothing_and_are_logged(running):
    """A worker paused past the liveness window wakes up and reports the task its node was re-run without."""
    wf, a, b = running
    old = _rerun(a)
    hotpath.node_started(wf.pk, a.task_id, "w2@host", 200)
    hotpath.node_succeeded(wf.pk, a.task_id, "re-run")
    b.refresh_from_db()
    assert b.state == S.QUEUED  # released by the re-run
    before = _rows(wf)
    assert hotpath.node_succeeded(wf.pk, old, "zombie") is None
    assert outcomes.node_failed(wf.pk, old, ValueError("zombie")) is None
    assert outcomes.node_retrying(wf.pk, old, "zombie") is None
    assert outcomes.node_revoked(wf.pk, old) is None
    assert recovery.worker_lost(wf.pk, old, "signal 9 (SIGKILL)") is None
    assert hotpath.node_started(wf.pk, old, HOST, 100) is None  # a message it had prefetched
    assert _rows(wf) == before  # nothing released twice, no state moved back
    events = list(WorkflowEvent.objects.filter(node=a, reason__startswith=outcomes.STALE_REPORT).order_by("id")
                  .values_list("old_state", "new_state", "reason"))
    assert {(o, n) for o, n, _ in events} == {(S.SUCCESS, S.SUCCESS)}
    assert [r for _, _, r in events] == [
        f"stale report ignored: {report} of task {old}, replaced by {a.task_id}{note}"
        for report, note in [("SUCCESS", ""), ("FAILURE", ""), ("RETRY", ""), ("CANCELED", ""), ("worker lost", ""),
                             ("STARTED", "; its body was not run")]
    ]


def test_stale_report__a_task_id_no_node_ever_had_writes_no_event(running):
    wf, a, _b = running
    assert outcomes.node_succeeded(wf.pk, "never-a-node", 1) is None
    assert hotpath.node_started(wf.pk, "never-a-node", HOST, 100) is None
    assert not WorkflowEvent.objects.filter(reason__startswith=outcomes.STALE_REPORT).exists()


def test_lost_worker_runs__max_attempts_wins_when_larger(settings):
    settings.DYRYGENT_LOST_WORKER_RETRIES = 1
    assert lost_worker_runs(SimpleNamespace(max_attempts=1)) == 2
    assert lost_worker_runs(SimpleNamespace(max_attempts=4)) == 4
    settings.DYRYGENT_LOST_WORKER_RETRIES = 0
    assert lost_worker_runs(SimpleNamespace(max_attempts=1)) == 1


def test_recover__the_result_backend_is_consulted_first(running):
    from django_celery_results.models import TaskResult

    wf, a, b = running
    _age(a, 120)
    _beat(age=100)
    TaskResult.objects.create(task_id=a.task_id, status="SUCCESS", result='"from backend"',
                              content_type="application/json", content_encoding="utf-8")
    Sweeper().recover()
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.state, a.attempts, a.result) == (S.SUCCESS, 1, "from backend")
    assert b.state == S.QUEUED


def _request(wf, task_id):
    return SimpleNamespace(id=task_id, headers={messaging.HEADER: str(wf.pk)}, hostname=HOST)


def test_on_task_failure__worker_lost_error_reruns_the_node_instead_of_failing_it(running):
    wf, a, _b = running
    sender = SimpleNamespace(request=_request(wf, a.task_id))
    handlers.on_task_failure(sender=sender, task_id=a.task_id, exception=WorkerLostError("signal 9 (SIGKILL)"))
    a.refresh_from_db()
    assert (a.state, a.attempts) == (S.QUEUED, 2)
    assert "worker lost: signal 9" in WorkflowEvent.objects.filter(node=a).latest("id").reason


def test_on_task_postrun__success_recorded_when_storing_the_result_failed_and_the_failure_ignored(running):
    wf, a, b = running
    sender = SimpleNamespace(request=_request(wf, a.task_id))
    handlers.on_task_prerun(sender=sender, task_id=a.task_id, task=sender)
    # Celery: the body returned, the result backend's store raised: no task_success,
    # task_postrun with state SUCCESS, then task_failure with the storage error.
    handlers.on_task_postrun(sender=sender, task_id=a.task_id, task=sender, retval=7, state=SUCCESS)
    handlers.on_task_failure(sender=sender, task_id=a.task_id, exception=OperationalError("connection is closed"))
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.state, a.result, a.error) == (S.SUCCESS, 7, "")
    assert b.state == S.QUEUED


def test_db_run__retries_a_connection_error_on_a_fresh_connection():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "ok"

    assert db.run(flaky, retry_for=30) == "ok" and len(calls) == 3


def test_db_run__gives_up_after_its_time_and_raises_the_error():
    calls = []

    def down():
        calls.append(1)
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError):
        db.run(down, retry_for=0)
    assert len(calls) == 2  # the immediate retry on a fresh connection, then no time left


def test_db_run__other_errors_are_not_retried():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        db.run(broken, retry_for=30)
    assert len(calls) == 1


def test_held_task_ids__celery_5_3_has_no_scheduled_requests(monkeypatch):
    """Celery 5.3's worker state has no ``scheduled_requests`` (5.4+): the heartbeat still reads
    the active and reserved requests instead of failing on every beat."""
    from celery.worker import state as worker_state

    from django_dyrygent.worker import heartbeat as worker

    monkeypatch.setattr(worker_state, "active_requests", [SimpleNamespace(id="running")])
    monkeypatch.setattr(worker_state, "reserved_requests", [SimpleNamespace(id="running"), SimpleNamespace(id="next")])
    monkeypatch.delattr(worker_state, "scheduled_requests", raising=False)
    assert worker.held_task_ids() == (["running"], ["next"])
    monkeypatch.setattr(worker_state, "scheduled_requests", [SimpleNamespace(id="later")], raising=False)
    assert worker.held_task_ids() == (["running"], ["later", "next"])
    monkeypatch.undo()  # before the suite's teardown hook reads the worker's state


def test_queue_of__asks_the_router_once_per_task_name_in_a_batch(monkeypatch):
    """The sweep routes up to a thousand queued nodes per pass: one routing per task name."""
    from celery import current_app

    asked = []
    real_route = current_app.amqp.router.route
    monkeypatch.setattr(current_app.amqp.router, "route",
                        lambda options, name, *a, **k: asked.append(name) or real_route(options, name, *a, **k))
    nodes = [WorkflowNode(task_name=name, signature={"task": name})
             for name in ("tests.noop", "tests.noop", "tests.record", "tests.noop")]
    own = WorkflowNode(task_name="tests.noop", signature={"task": "tests.noop", "options": {"queue": "own"}})
    routes: dict[str, str] = {}
    batch = [liveness.queue_of(current_app, n, None, routes) for n in [*nodes, own]]
    assert asked == ["tests.noop", "tests.record"]
    asked.clear()
    assert batch == [liveness.queue_of(current_app, n, None) for n in [*nodes, own]]  # same answers unbatched
    assert len(asked) == len(nodes) and batch[-1] == "own"


@pytest.fixture
def ended_with_finalizer(db, settings):
    """A workflow that ended FAILURE, its finalizer STARTED on w1@host (pid 100)."""
    settings.DYRYGENT_LIVENESS = True
    wf = Workflow(name="ended")
    a = wf.add_signature(noop.si())
    final = wf.link_finalizer(noop.si())
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_failed(wf.pk, a.task_id, exception=RuntimeError("boom"))
    final.refresh_from_db()
    assert (Workflow.objects.get(pk=wf.pk).state, final.state) == (Workflow.State.FAILURE, S.QUEUED)
    hotpath.node_started(wf.pk, final.task_id, HOST, 100)
    final.refresh_from_db()
    return wf, final


def test_recover__a_finished_workflows_callback_whose_worker_died_runs_again(ended_with_finalizer):
    wf, final = ended_with_finalizer
    first_id = final.task_id
    _age(final, 120)
    _beat(age=100)
    assert Sweeper().recover() == 1
    final.refresh_from_db()
    assert (final.state, final.attempts, final.previous_task_ids) == (S.QUEUED, 2, [first_id])
    assert Workflow.objects.get(pk=wf.pk).state == Workflow.State.FAILURE  # the workflow's end stands


def test_on_task_failure__worker_lost_error_reruns_a_finished_workflows_callback(ended_with_finalizer):
    wf, final = ended_with_finalizer
    sender = SimpleNamespace(request=_request(wf, final.task_id))
    handlers.on_task_failure(sender=sender, task_id=final.task_id, exception=WorkerLostError("signal 9 (SIGKILL)"))
    final.refresh_from_db()
    assert (final.state, final.attempts) == (S.QUEUED, 2)
    assert Workflow.objects.get(pk=wf.pk).state == Workflow.State.FAILURE


# -- the sweep's scan of waiting nodes reads only what a verdict can act on --------------------------


@pytest.fixture
def judged(db, settings, monkeypatch):
    """The task ids ``waiting_verdict`` was asked about (the nodes the scan read), the queues probed.

    Every probe finds its queues empty; one live worker beat just now.
    """
    settings.DYRYGENT_LIVENESS = True
    _beat(age=0)
    seen = SimpleNamespace(nodes=[], probed=[], verdict=liveness.waiting_verdict)
    monkeypatch.setattr(liveness, "waiting_verdict",
                        lambda node, *args: seen.nodes.append(node.task_id) or seen.verdict(node, *args))

    def probe(app, queues, now):
        seen.probed.append(set(queues))
        return liveness.QueueProbe(taken_at=now, sizes=dict.fromkeys(queues, 0))

    monkeypatch.setattr(liveness, "probe_queues", probe)
    return seen


def _backlog(count, queued_age, queue=None, **fields):
    """A RUNNING workflow of ``count`` QUEUED nodes, published ``queued_age`` seconds ago."""
    wf = Workflow(name=f"backlog-{count}", **fields)
    for i in range(count):
        wf.add_signature(noop.si(i).set(queue=queue) if queue else noop.si(i))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    wf.nodes.update(queued_at=timezone.now() - timedelta(seconds=queued_age))
    return wf


def _previous_probe(sizes, age=10):
    return liveness.QueueProbe(taken_at=timezone.now() - timedelta(seconds=age), sizes=sizes)


def test_recover__a_backlog_queued_since_the_previous_probe_is_not_read_whatever_its_size(judged):
    default = get_celery_app().conf.task_default_queue
    sweeper = Sweeper()
    statements = []
    for count in (3, 300):
        _backlog(count, queued_age=5)
        sweeper.probe = _previous_probe({default: 0})
        with CaptureQueriesContext(connection) as ctx:
            assert sweeper.recover() == 0
        statements.append(len(ctx.captured_queries))
    assert statements[0] == statements[1]
    assert judged.nodes == []  # queued after the probe and well within QUEUED_LOST_AFTER: none can be lost
    assert judged.probed == [{default}, {default}]  # their queue is still probed, for the next sweep


def test_recover__what_is_lost_is_found_and_recovered_as_every_verdict_says(judged):
    """The filter in SQL leaves the verdicts as they were: the same nodes recovered, for the same reasons."""
    default = get_celery_app().conf.task_default_queue
    lost = _backlog(2, queued_age=30)  # published before the probe, its queue empty since: lost
    backlog = _backlog(50, queued_age=5)
    retry = backlog.nodes.order_by("position").first()  # a retry due since before the probe: lost too
    WorkflowNode.objects.filter(pk=retry.pk).update(state=S.RETRY, started_at=timezone.now() - timedelta(seconds=30))
    sweeper = Sweeper()
    sweeper.probe = _previous_probe({default: 0})
    snapshot = liveness.Snapshot.load(timezone.now())
    verdicts = {n: judged.verdict(n, snapshot, set(), sweeper.probe, default)
                for n in WorkflowNode.objects.filter(state__in=[S.QUEUED, S.RETRY])}
    expected = {n.pk: (n.task_id, why) for n, why in verdicts.items() if why}
    untouched = {n.pk: n.task_id for n, why in verdicts.items() if not why}
    assert sorted(expected) == sorted([*lost.nodes.values_list("pk", flat=True), retry.pk])

    assert sweeper.recover() == 3
    assert sorted(judged.nodes) == sorted(task_id for task_id, _why in expected.values())  # only these were read
    for node in WorkflowNode.objects.filter(pk__in=expected):
        task_id, why = expected[node.pk]
        event = WorkflowEvent.objects.filter(node=node).latest("id")
        assert (node.state, node.task_id != task_id) == (S.QUEUED, True)
        assert why in event.reason
    assert dict(backlog.nodes.exclude(pk=retry.pk).values_list("pk", "task_id")) == untouched


def test_recover__past_the_long_bound_a_node_is_found_without_a_probe(judged, settings):
    settings.DYRYGENT_QUEUED_LOST_AFTER = 20
    old, recent = _backlog(2, queued_age=30), _backlog(3, queued_age=5)
    old_ids = set(old.nodes.values_list("task_id", flat=True))
    assert Sweeper().recover() == 2
    assert set(judged.nodes) == old_ids
    assert not old.nodes.filter(task_id__in=old_ids).exists()  # republished under fresh task ids
    assert recent.nodes.filter(publish_count=1).count() == 3


def test_recover__each_node_is_judged_against_its_queue_read_in_sql(judged):
    """Its own queue option, else its workflow's, else the task's route: what ``queue_of`` says of the row."""
    default = get_celery_app().conf.task_default_queue
    own = _backlog(2, queued_age=30, queue="own")
    workflows = _backlog(2, queued_age=30, tasks_options={"queue": "wfq"})
    routed = _backlog(2, queued_age=30)
    sweeper = Sweeper()
    sweeper.probe = _previous_probe({"own": 0, "wfq": 3, default: None})
    app = get_celery_app()
    for wf in (own, workflows, routed):
        wf.refresh_from_db()
        assert {liveness.queue_of(app, n, wf.tasks_options) for n in wf.nodes.all()} == \
            {{own.pk: "own", workflows.pk: "wfq", routed.pk: default}[wf.pk]}
    assert sweeper.recover() == 2  # only the empty queue's
    assert not own.nodes.filter(publish_count=1).exists()
    assert workflows.nodes.filter(publish_count=1).count() == routed.nodes.filter(publish_count=1).count() == 2
    assert judged.probed == [{"own", "wfq", default}]

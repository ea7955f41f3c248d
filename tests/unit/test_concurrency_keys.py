"""Concurrency keys on rows (every database): admission, FIFO, slots freed by every ending, the nudge.

The broker is a recorder (``messaging.publish``, ``send_tick``), and the
commit callbacks are run (``django_capture_on_commit_callbacks``), so each
test sees which workflows a freed slot ticks and plays those ticks itself.
The real-worker run is ``tests/worker/test_concurrency_keys.py``; the race
for the last slot, with threads on PostgreSQL, is at the end of this file.
"""

import threading
import unittest.mock
from datetime import timedelta

import pytest
from celery import group
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, messaging, outcomes
from django_dyrygent.models import ConcurrencyKey, WorkerHeartbeat, Workflow, WorkflowNode
from django_dyrygent.operations import graph_data, graph_to_dot, graph_to_mermaid
from django_dyrygent.worker.recovery import Sweeper
from tests.conftest import idle_tick_locks
from tests.tasks import noop

S = WorkflowNode.State
KEY = "customer-42"


class Broker:
    """Records publications and ticks; ``ticks`` are the workflows a commit asked to tick."""

    def __init__(self):
        self.published = []
        self.ticks = []

    def publish(self, workflow_id, tasks_options, entries):
        self.published.extend(node.task_id for node, _args in entries)

    def send_tick(self, workflow_id, options=None, countdown=None):
        if countdown is None:  # a nudge (the tick chain's own ticks carry the interval)
            self.ticks.append(str(workflow_id))


@pytest.fixture
def broker(monkeypatch):
    fake = Broker()
    monkeypatch.setattr(messaging, "publish", fake.publish)
    monkeypatch.setattr(messaging, "send_tick", fake.send_tick)
    monkeypatch.setattr(messaging, "revoke", lambda *args, **kwargs: None)
    return fake


def keyed(limit=1, key=KEY, count=1, name="keyed"):
    """A started workflow of ``count`` independent nodes of ``key``; returns it and its nodes."""
    wf = Workflow(name=name)
    nodes = [wf.add_signature(noop.si(), concurrency_key=key, concurrency_limit=limit) for _ in range(count)]
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    return wf, [WorkflowNode.objects.get(pk=n.pk) for n in nodes]


def state(node):
    return WorkflowNode.objects.get(pk=node.pk).state


def succeed(wf, node, run):
    run(hotpath.node_succeeded, wf.pk, WorkflowNode.objects.get(pk=node.pk).task_id, "ok")


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs, message", [
    ({"concurrency_limit": 2}, "concurrency_limit=2 was given without a concurrency_key"),
    ({"concurrency_key": KEY}, f"concurrency_limit of key '{KEY}' must be a whole number of at least 1, got None"),
    ({"concurrency_key": KEY, "concurrency_limit": 0}, "must be a whole number of at least 1, got 0"),
    ({"concurrency_key": KEY, "concurrency_limit": -1}, "must be a whole number of at least 1, got -1"),
    ({"concurrency_key": KEY, "concurrency_limit": True}, "got True"),
    ({"concurrency_key": KEY, "concurrency_limit": 1.5}, "got 1.5"),
    ({"concurrency_key": "k" * 201, "concurrency_limit": 1}, "at most 200 characters"),
    ({"concurrency_key": "  ", "concurrency_limit": 1}, "concurrency_key must be a non-blank string"),
    ({"concurrency_key": 42, "concurrency_limit": 1}, "concurrency_key must be a non-blank string"),
])
def test_add_signature__bad_concurrency_is_refused_naming_it_and_nothing_is_saved(kwargs, message):
    wf = Workflow(name="bad")
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wf.add_signature(noop.si(), **kwargs)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wf.add_celery_canvas(group(noop.si(), noop.si()), **kwargs)
    assert wf.draft.nodes == []
    assert not Workflow.objects.exists() and not WorkflowNode.objects.exists()


@pytest.mark.django_db
def test_add_celery_canvas__the_key_goes_on_every_task_not_on_joins():
    wf = Workflow(name="canvas")
    wf.add_celery_canvas(group(noop.si(), noop.si()) | noop.si(), concurrency_key=KEY, concurrency_limit=3)
    wf.apply_async()
    rows = list(wf.nodes.values_list("kind", "concurrency_key", "concurrency_limit"))
    assert sorted(r for r in rows if r[0] == "task") == [("task", KEY, 3)] * 3
    assert [r for r in rows if r[0] == "join"] == [("join", None, None)]


@pytest.mark.django_db
def test_admission__at_most_limit_hold_a_slot_the_rest_wait_with_the_reason(broker):
    wf, nodes = keyed(limit=2, count=4)
    assert [state(n) for n in nodes] == [S.QUEUED, S.QUEUED, S.WAITING, S.WAITING]
    waiting = WorkflowNode.objects.get(pk=nodes[2].pk)
    assert waiting.reason == f"waiting for concurrency key {KEY}"
    assert waiting.started_at is None and waiting.timeout_at is None  # no timeout runs while it waits


@pytest.mark.django_db
def test_release__a_freed_slot_lets_in_the_oldest_waiter_of_any_workflow_exactly_once(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    third, (c,) = keyed(name="third")
    assert [state(a), state(b), state(c)] == [S.QUEUED, S.WAITING, S.WAITING]
    succeed(first, a, run)
    assert broker.ticks == [str(second.pk)]  # only the head of the queue is ticked
    run(engine.tick, second.pk)
    run(engine.tick, third.pk)  # not its turn: nothing changes
    assert [state(b), state(c)] == [S.QUEUED, S.WAITING]
    run(engine.tick, second.pk)  # a second tick admits nothing twice
    assert broker.published.count(WorkflowNode.objects.get(pk=b.pk).task_id) == 1
    # A failure frees the slot as a success does.
    run(outcomes.node_failed, second.pk, WorkflowNode.objects.get(pk=b.pk).task_id, exception=ValueError("x"))
    assert broker.ticks[-1] == str(third.pk)
    run(engine.tick, third.pk)
    assert state(c) == S.QUEUED


@pytest.mark.django_db
def test_release__a_waiter_of_the_same_workflow_is_let_in_by_its_tick(broker, run):
    wf, (a, b) = keyed(count=2)
    succeed(wf, a, run)
    assert broker.ticks == [str(wf.pk)]
    run(engine.tick, wf.pk)
    assert state(b) == S.QUEUED


@pytest.mark.django_db
def test_release__cancelling_the_holder_s_workflow_frees_its_slot(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    run(Workflow.objects.get(pk=first.pk).cancel)
    assert state(a) == S.CANCELED and broker.ticks == [str(second.pk)]
    run(engine.tick, second.pk)
    assert state(b) == S.QUEUED


@pytest.mark.django_db
def test_release__a_revoked_node_frees_its_slot(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    run(outcomes.node_revoked, first.pk, WorkflowNode.objects.get(pk=a.pk).task_id)
    assert state(a) == S.CANCELED and broker.ticks == [str(second.pk)]


@pytest.mark.django_db
def test_pause__a_paused_workflow_s_waiter_gives_up_its_place_and_takes_it_back_on_resume(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    third, (c,) = keyed(name="third")
    run(Workflow.objects.get(pk=second.pk).pause)
    succeed(first, a, run)
    assert broker.ticks == [str(third.pk)]  # the paused waiter is passed over
    run(engine.tick, third.pk)
    assert [state(b), state(c)] == [S.WAITING, S.QUEUED]
    run(Workflow.objects.get(pk=second.pk).resume)
    assert state(b) == S.WAITING  # the slot is taken: it waits on, first in the queue again
    fourth, (d,) = keyed(name="fourth")
    succeed(third, c, run)
    assert broker.ticks[-1] == str(second.pk)
    run(engine.tick, second.pk)
    assert [state(b), state(d)] == [S.QUEUED, S.WAITING]


@pytest.mark.django_db
def test_pause__while_a_slot_is_free_the_waiter_is_let_in_by_resume(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    run(Workflow.objects.get(pk=second.pk).pause)
    succeed(first, a, run)
    assert broker.ticks == []
    run(Workflow.objects.get(pk=second.pk).resume)
    assert state(b) == S.QUEUED


@pytest.mark.django_db
def test_safety_net__a_lost_nudge_is_made_up_by_the_scheduled_tick(broker, run):
    first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    succeed(first, a, run)
    broker.ticks.clear()  # the nudge is lost
    assert run(engine.tick, second.pk, scheduled=True) == "RUNNING"
    assert state(b) == S.QUEUED


@pytest.mark.django_db
def test_safety_net__a_waiter_with_no_free_slot_leaves_the_tick_idle(broker, run):
    _first, (a,) = keyed(name="first")
    second, (b,) = keyed(name="second")
    Workflow.objects.filter(pk=second.pk).update(next_tick_at=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        run(engine.tick, second.pk, scheduled=True)
    sql = [q["sql"] for q in queries.captured_queries]
    assert [q for q in sql if "FOR UPDATE" in q] == idle_tick_locks(sql)  # not the locked tick
    assert state(b) == S.WAITING


@pytest.mark.django_db
def test_sweep__a_slot_held_by_a_dead_worker_s_node_is_freed_when_the_sweep_fails_it(broker, run, settings):
    settings.DYRYGENT_LIVENESS = True
    first = Workflow(name="first")
    a = first.add_signature(noop.si(), concurrency_key=KEY, concurrency_limit=1, max_attempts=1)
    first.apply_async()
    engine.tick(first.pk, scheduled=False)
    second, (b,) = keyed(name="second")
    hotpath.node_started(first.pk, a.task_id, "w1@host", 100)
    long_ago = timezone.now() - timedelta(seconds=3600)
    WorkflowNode.objects.filter(pk=a.pk).update(started_at=long_ago, queued_at=long_ago)
    WorkerHeartbeat.objects.create(hostname="w1@host", pid=100, started_at=long_ago,
                                   last_seen=long_ago)
    settings.DYRYGENT_LOST_WORKER_RETRIES = 0  # one run in all: the sweep fails it
    run(Sweeper().recover)
    assert state(a) == S.FAILURE  # its worker died, its runs are used up: the slot is free
    assert broker.ticks == [str(second.pk)]
    run(engine.tick, second.pk)
    assert state(b) == S.QUEUED


def plain_lifecycle(run):
    """Start a plain a -> b workflow and succeed ``a``; the statements it took."""
    wf = Workflow(name="plain")
    a = wf.add_signature(noop.si())
    wf.add_signature(noop.si(), dependencies=[a])
    wf.apply_async()
    with CaptureQueriesContext(connection) as queries:
        run(engine.tick, wf.pk, scheduled=False)
        succeed(wf, a, run)
        run(engine.tick, wf.pk, scheduled=True)
    return [q["sql"] for q in queries.captured_queries]


@pytest.mark.django_db
def test_plain_nodes__run_the_same_statements_while_keys_are_busy_and_never_touch_them(broker, run):
    alone = plain_lifecycle(run)
    keyed(limit=1, count=3, name="busy key")  # keys in use elsewhere: one running, two waiting
    beside = plain_lifecycle(run)
    assert len(beside) == len(alone), (alone, beside)
    table = ConcurrencyKey._meta.db_table
    assert not any(table in q for q in alone + beside)
    assert broker.ticks == []


@pytest.mark.django_db
def test_keyed_success__takes_the_locked_path_on_postgresql(broker, run):
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement success is PostgreSQL's")
    wf, (a, b) = keyed(count=2)
    calls = []
    fast = hotpath._fast_success

    def spy(*args):
        try:
            return fast(*args)
        except hotpath._Fallback as why:
            calls.append(str(why))
            raise

    with unittest.mock.patch.object(hotpath, "_fast_success", spy):
        succeed(wf, a, run)
    assert calls and "not an active task" in calls[0]
    assert state(a) == S.SUCCESS and broker.ticks == [str(wf.pk)]


# -- the race for the last slot (PostgreSQL: real row locks, real threads) ----------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_race__two_workflows_starting_at_once_for_the_last_slot_exactly_one_gets_it(broker):
    if django_settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("needs row locks: SQLite serialises every writer")
    for round_ in range(5):
        key = f"race-{round_}"
        holder = Workflow(name="holder")
        holder.add_signature(noop.si(), concurrency_key=key, concurrency_limit=2)
        holder.apply_async()
        engine.tick(holder.pk, scheduled=False)  # one of the two slots taken
        racers = []
        for i in range(2):
            wf = Workflow(name=f"racer-{i}")
            wf.add_signature(noop.si(), concurrency_key=key, concurrency_limit=2)
            wf.apply_async()
            racers.append(wf)
        barrier = threading.Barrier(len(racers))
        errors = []

        def start(wf, barrier=barrier, errors=errors):
            try:
                barrier.wait(timeout=30)
                engine.tick(wf.pk, scheduled=False)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=start, args=(wf,)) for wf in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        states = sorted(WorkflowNode.objects.filter(workflow__in=racers).values_list("state", flat=True))
        assert states == [S.QUEUED, S.WAITING], states
        assert WorkflowNode.objects.filter(concurrency_key=key, state=S.QUEUED).count() == 2


# -- what the admin shows ------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin__node_page_list_and_picture_say_why_a_node_waits(admin_client, broker):
    keyed(limit=2, count=2, name="holder")
    wf, (waiter,) = keyed(limit=2, name="waiter")
    why = f"waiting for concurrency key {KEY}: 2 of 2 running"
    page = admin_client.get(f"/admin/django_dyrygent/workflownode/{waiter.pk}/change/").content.decode()
    assert why in page and f"<code>{KEY}</code> (limit 2)" in page
    listing = admin_client.get("/admin/django_dyrygent/workflownode/", {"state__exact": "WAITING"}).content.decode()
    assert why in listing
    picture = admin_client.get(f"/admin/django_dyrygent/workflow/{wf.pk}/change/").content.decode()
    assert why in picture and "dy-keyed" in picture and "concurrency key (waits for a slot when WAITING)" in picture
    assert f"key {KEY}" in picture  # the box's second line


@pytest.mark.django_db
def test_admin__node_list_queries_do_not_grow_with_keyed_rows(admin_client, broker):
    keyed(limit=1, count=3, name="small")
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get("/admin/django_dyrygent/workflownode/").status_code == 200
    keyed(limit=1, count=30, name="large")
    with CaptureQueriesContext(connection) as large:
        assert admin_client.get("/admin/django_dyrygent/workflownode/").status_code == 200
    assert len(small.captured_queries) == len(large.captured_queries)


@pytest.mark.django_db
def test_status_and_exports__name_the_key_and_why_the_node_waits(broker, capsys):
    keyed(limit=1, name="holder")
    wf, (waiter,) = keyed(limit=1, name="waiter")
    call_command("dyrygent_status", str(wf.pk))
    assert f"waiting for concurrency key {KEY}: 1 of 1 running" in capsys.readouterr().out
    data = graph_data(wf)
    assert [n["concurrency_key"] for n in data["nodes"]] == [KEY]
    assert f"WAITING\\nkey {KEY}" in graph_to_dot(data)
    assert f"WAITING<br/>key {KEY}" in graph_to_mermaid(data)

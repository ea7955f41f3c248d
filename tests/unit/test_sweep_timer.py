"""The workers' sweep as the only timer of running workflows (DYRYGENT_LIVENESS on).

A running workflow that is only waiting must cost nothing of its own at
rest: no tick message, no statement. The sweep asks in one SELECT which
running workflows have anything due and ticks those. Counted in statements
and messages, never in time: the same sweep over 3 and over 30 live
workflows issues the same statements.
"""

from datetime import timedelta

import pytest
from celery import chain
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.models import Workflow, WorkflowNode
from tests.tasks import noop

pytestmark = pytest.mark.django_db


@pytest.fixture
def swept(settings):
    settings.DYRYGENT_LIVENESS = True


@pytest.fixture
def sent_ticks(monkeypatch):
    sent = []
    monkeypatch.setattr("django_dyrygent.engine.messaging.send_tick", lambda *args: sent.append(args[0]))
    return sent


def live(count, start=0):
    """``count`` RUNNING workflows, each waiting on its one STARTED node (a long task)."""
    flows = []
    for i in range(start, start + count):
        wf = Workflow(name=f"live-{i}")
        wf.add_celery_canvas(chain(noop.si(i).set(task_id=f"live-{i}-a"), noop.si(i).set(task_id=f"live-{i}-b")))
        wf.apply_async()
        engine.tick(wf.pk)
        flows.append(wf)
    WorkflowNode.objects.filter(state="QUEUED").update(state="STARTED", started_at=timezone.now())
    return flows


def statements(fn, *args, **kwargs):
    with CaptureQueriesContext(connection) as ctx:
        fn(*args, **kwargs)
    return [q["sql"] for q in ctx.captured_queries]


def test_start__of_a_swept_workflow_leaves_no_tick_chain(swept, sent_ticks, django_capture_on_commit_callbacks):
    wf = Workflow(name="one")
    wf.add_celery_canvas(noop.si(1))
    wf.apply_async()
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.tick(wf.pk) == "RUNNING"
    wf.refresh_from_db()
    assert (wf.next_tick_at, sent_ticks) == (None, [])


def test_sweep__at_rest_issues_the_same_statements_for_3_and_30_live_workflows_and_sends_nothing(
    swept, sent_ticks, django_capture_on_commit_callbacks,
):
    an_hour_ago = timezone.now() - timedelta(hours=1)  # live for an hour: any tick of theirs would be overdue
    live(3)
    Workflow.objects.update(created_at=an_hour_ago, started_at=an_hour_ago)
    Workflow.objects.filter(next_tick_at__isnull=False).update(next_tick_at=an_hour_ago)  # a chain's, if any
    with django_capture_on_commit_callbacks(execute=True):
        few = statements(engine.sweep, stale_after=60)
    live(27, start=3)
    Workflow.objects.update(created_at=an_hour_ago, started_at=an_hour_ago)
    Workflow.objects.filter(next_tick_at__isnull=False).update(next_tick_at=an_hour_ago)  # a chain's, if any
    ticks_before = dict(Workflow.objects.values_list("pk", "ticks"))
    with django_capture_on_commit_callbacks(execute=True):
        many = statements(engine.sweep, stale_after=60)
    assert len(few) == len(many) == 2, many  # the overdue check and the due check; no write
    assert sent_ticks == []
    assert dict(Workflow.objects.values_list("pk", "ticks")) == ticks_before
    assert not Workflow.objects.filter(next_tick_at__isnull=False).exists()


def test_sweep__without_liveness_keeps_each_workflow_s_chain(sent_ticks, django_capture_on_commit_callbacks):
    """The counterpart: nothing sweeps unless scheduled, so each overdue workflow is ticked and sent on."""
    flows = live(3)
    Workflow.objects.update(next_tick_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep(stale_after=60)
    assert sorted(sent_ticks) == sorted(wf.pk for wf in flows)


@pytest.mark.parametrize("due", ["ready", "stale", "late", "deadline", "engine_errors", "last_node"])
def test_sweep__ticks_a_live_workflow_with_something_due_at_the_first_sweep(
    due, swept, sent_ticks, settings, django_capture_on_commit_callbacks,
):
    """Each thing the locked tick repairs is seen by the sweep's one SELECT; the waiting ones are left alone."""
    wf, *waiting = live(3)
    nodes = WorkflowNode.objects.filter(workflow=wf)
    now = timezone.now()
    if due == "ready":  # a PENDING node whose counters say "go" (a lost release)
        nodes.filter(state="PENDING").update(waiting=0)
    elif due == "stale":  # a QUEUED node no worker reported for REQUEUE_AFTER
        settings.DYRYGENT_REQUEUE_AFTER = 60
        nodes.filter(state="STARTED").update(state="QUEUED", queued_at=now - timedelta(seconds=120))
    elif due == "late":  # a STARTED node past its timeout
        nodes.filter(state="STARTED").update(timeout=timedelta(seconds=5), timeout_at=now - timedelta(seconds=1))
    elif due == "deadline":
        Workflow.objects.filter(pk=wf.pk).update(deadline=now - timedelta(seconds=1))
    elif due == "engine_errors":
        Workflow.objects.filter(pk=wf.pk).update(engine_errors=1, error="Tick failed")
    elif due == "last_node":
        Workflow.objects.filter(pk=wf.pk).update(nodes_done=F("nodes_total"))
    assert [row[0] for row in engine.due_workflows(timezone.now(), 100)] == [wf.pk]
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.sweep() == 1
    ticks = dict(Workflow.objects.values_list("pk", "ticks"))
    assert ticks == {wf.pk: 2, **{w.pk: 1 for w in waiting}}
    assert sent_ticks == []


def test_tick__a_chain_left_by_a_process_without_liveness_ends_at_its_next_tick(
    swept, sent_ticks, django_capture_on_commit_callbacks,
):
    (wf,) = live(1)
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        engine.tick(wf.pk)
    wf.refresh_from_db()
    assert (wf.next_tick_at, wf.ticks, sent_ticks) == (None, 2, [])
    with django_capture_on_commit_callbacks(execute=True):
        engine.tick(wf.pk)  # an extra tick ("tick now") with nothing due: counted, nothing sent
    wf.refresh_from_db()
    assert (wf.next_tick_at, wf.ticks, sent_ticks) == (None, 3, [])

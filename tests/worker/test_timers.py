"""Timers: a node with no task whose due time is a column of its row, fired by the tick or the
workers' sweep; nothing waits in a broker message, so losing the tick message loses nothing.
"""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.operations import graph_data, graph_to_dot, graph_to_mermaid
from django_dyrygent.worker.recovery import Sweeper
from tests.conftest import wait_for
from tests.models import Execution
from tests.tasks import record

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State
PAST = timedelta(seconds=1)


def delayed(**timer):
    """before -> timer -> after, started in this process (nothing published: no worker)."""
    wf = Workflow(name="timer")
    before = wf.add_signature(record.si("before"))
    pause = wf.add_timer(dependencies=[before], name="cool-down", **timer)
    wf.add_signature(record.si("after"), dependencies=[pause])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    outcomes.node_succeeded(wf.pk, wf.nodes.get(position=0).task_id, None)
    wf.refresh_from_db()
    return wf, wf.nodes.get(kind="timer"), wf.nodes.get(position=2)


def make_due(timer):
    WorkflowNode.objects.filter(pk=timer.pk).update(timeout_at=timezone.now() - PAST)


def lose_tick(wf):
    """As after a broker restart: the countdown tick never comes, so next_tick_at is overdue."""
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now() - timedelta(hours=1))


def test_add_timer__needs_a_delay_or_an_aware_time():
    wf = Workflow()
    with pytest.raises(ValidationError, match="a delay or a time"):
        wf.add_timer()
    with pytest.raises(ValidationError, match="a delay or a time"):
        wf.add_timer(delay=1, at=timezone.now())
    with pytest.raises(ValidationError, match="aware datetime"):
        wf.add_timer(at=timezone.now().replace(tzinfo=None))
    with pytest.raises(ValidationError, match="timeout must be"):
        wf.add_timer(delay=0)


@pytest.mark.django_db
def test_timer__waits_then_fires_at_the_tick_once_due():
    wf, timer, after = delayed(delay=3600)
    assert timer.state == S.WAITING
    assert timer.timeout_at - timer.started_at == timedelta(seconds=3600)
    assert engine.tick(wf.pk, scheduled=False) == W.RUNNING
    timer.refresh_from_db()
    assert timer.state == S.WAITING
    make_due(timer)
    assert engine.tick(wf.pk, scheduled=True) == W.RUNNING
    timer.refresh_from_db(), after.refresh_from_db()
    assert (timer.state, timer.reason) == (S.SUCCESS, "timer fired")
    assert after.state == S.QUEUED
    wf.refresh_from_db()
    assert (wf.nodes_total, wf.nodes_done) == (3, 2)


@pytest.mark.django_db
def test_timer__at_a_given_time_is_due_then():
    at = timezone.now() + timedelta(hours=2)
    _wf, timer, _after = delayed(at=at)
    assert timer.state == S.WAITING and timer.timeout_at == at


@pytest.mark.django_db
def test_timer__a_lost_tick_message_loses_nothing_the_sweep_fires_it():
    wf, timer, after = delayed(delay=60)
    make_due(timer)
    lose_tick(wf)
    assert engine.sweep(stale_after=0) == 1
    timer.refresh_from_db(), after.refresh_from_db()
    assert timer.state == S.SUCCESS and after.state == S.QUEUED


@pytest.mark.django_db
def test_timer__does_not_fire_while_paused_and_fires_after_resume():
    wf, timer, after = delayed(delay=60)
    assert wf.pause()
    make_due(timer)
    assert engine.tick(wf.pk, scheduled=False) == W.PAUSED
    timer.refresh_from_db()
    assert timer.state == S.WAITING
    assert wf.resume()
    engine.tick(wf.pk, scheduled=False)
    timer.refresh_from_db(), after.refresh_from_db()
    assert timer.state == S.SUCCESS and after.state == S.QUEUED


@pytest.mark.django_db
def test_timer__is_not_a_signal_target_but_complete_fires_it_early():
    wf, timer, after = delayed(delay=60)
    assert wf.signal("cool-down") == 0
    assert timer.complete() is True
    after.refresh_from_db()
    assert after.state == S.QUEUED


@pytest.mark.django_db
def test_timer__shown_in_status_and_graph_export(capsys):
    wf, _timer, _after = delayed(delay=60)
    call_command("dyrygent_status", str(wf.pk))
    out = capsys.readouterr().out
    assert "cool-down (timer)" in out and "WAITING" in out and "timer due at 20" in out
    assert 'style="rounded,filled,dashed"' in graph_to_dot(graph_data(wf))
    assert '{{"cool-down (timer)' in graph_to_mermaid(graph_data(wf))


@pytest.mark.worker
def test_timer__end_to_end_fired_by_the_workers_sweep_without_its_tick_message(worker):
    wf = Workflow(name="timer-e2e")
    before = wf.add_signature(record.si("before"))
    timer = wf.add_timer(dependencies=[before], delay=3600)
    wf.add_signature(record.si("after"), dependencies=[timer])
    wf.apply_async()
    wait_for(lambda: WorkflowNode.objects.get(pk=timer.pk).state == S.WAITING, "the timer to be reached")
    assert not Execution.objects.filter(label="after").exists()
    make_due(timer)
    lose_tick(wf)
    Sweeper().sweep_once(stale_after=0)
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    assert Execution.objects.filter(label="after").count() == 1
    timer.refresh_from_db()
    assert timer.reason == "timer fired"

"""Workflow.wait(): woken by the commit that ends the workflow (PostgreSQL), backing-off polls elsewhere.

No wall-clock thresholds: the tests check *what* woke the waiter (a
notification, not a poll), which statement sends the notification, and the
sequence of pauses of the polling waiter.
"""

import time
from types import SimpleNamespace

import pytest
from celery import chain
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_dyrygent import engine
from django_dyrygent.engine import hotpath, outcomes, waiting
from django_dyrygent.models import Workflow
from tests.tasks import noop, record

TIMEOUT = 30
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's; other databases poll"
)


def slow_chain(name):
    # The first task sleeps, so the waiter is certainly waiting (not finding the end at once).
    wf = Workflow(name=name)
    wf.add_celery_canvas(chain(record.si(f"{name}-1", sleep=0.5), record.si(f"{name}-2")))
    wf.apply_async()
    return wf


@pytest.mark.worker
@postgres_only
def test_wait_for__on_postgresql_wakes_by_the_notification_not_a_poll(worker):
    wf = slow_chain("notified")
    # A poll every 10 minutes: only the notification can end this wait in time.
    outcome = waiting.wait_for(wf, timeout=TIMEOUT, interval=600)
    assert outcome == waiting.Outcome(Workflow.State.SUCCESS, "notify")


@pytest.mark.worker
@postgres_only
def test_wait__on_postgresql_returns_the_refreshed_final_state(worker):
    wf = slow_chain("refreshed")
    assert wf.wait(timeout=TIMEOUT, interval=600) == Workflow.State.SUCCESS
    assert wf.state == Workflow.State.SUCCESS and wf.finished_at is not None


@pytest.mark.worker
def test_wait_for__without_notifications_polls_backing_off_to_the_interval(worker, monkeypatch):
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        time.sleep(seconds)

    # Only the waiter's clock: the worker's threads sleep in this process too.
    monkeypatch.setattr(waiting, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    wf = slow_chain("polled")
    outcome = waiting._poll(wf, None, None, 0.05, waiting.FIRST_POLL)
    assert outcome == waiting.Outcome(Workflow.State.SUCCESS, "poll")
    assert len(pauses) >= 3, pauses  # the first task alone sleeps 0.5 s
    expected = [waiting.FIRST_POLL]
    while len(expected) < len(pauses):
        expected.append(min(expected[-1] * waiting.BACKOFF, 0.05))
    assert pauses == pytest.approx(expected)


@pytest.mark.worker
@pytest.mark.skipif(connection.vendor == "postgresql", reason="PostgreSQL waits for a notification")
def test_wait_for__on_other_databases_polls(worker):
    wf = slow_chain("other-db")
    assert waiting.wait_for(wf, timeout=TIMEOUT) == waiting.Outcome(Workflow.State.SUCCESS, "poll")


@pytest.mark.django_db
def test_wait__times_out_naming_the_state_it_last_saw():
    wf = Workflow.objects.create(name="never started")
    with pytest.raises(TimeoutError, match=r"still INITIAL after 0\.2s"):
        wf.wait(timeout=0.2, interval=0.05)


@pytest.mark.django_db
def test_wait__of_a_finished_workflow_returns_at_once():
    wf = Workflow.objects.create(name="done", state=Workflow.State.CANCELED)
    assert waiting.wait_for(wf, timeout=0) == waiting.Outcome(Workflow.State.CANCELED, "final")


@pytest.mark.django_db
def test_wait__of_a_deleted_workflow_raises_does_not_exist():
    wf = Workflow.objects.create(name="gone")
    Workflow.objects.filter(pk=wf.pk).delete()
    with pytest.raises(Workflow.DoesNotExist, match=str(wf.pk)):
        wf.wait(timeout=1)


@pytest.mark.django_db
def test_wait__rejects_an_interval_that_is_not_positive():
    wf = Workflow.objects.create(name="bad interval")
    with pytest.raises(ValueError, match="interval"):
        wf.wait(timeout=1, interval=0)


@pytest.mark.django_db
@postgres_only
def test_step_flush__notifies_in_the_transaction_that_ends_the_workflow_and_no_other():
    wf = Workflow(name="notify")
    wf.add_celery_canvas(chain(noop.si().set(task_id="n-1"), noop.si().set(task_id="n-2")))
    wf.apply_async()

    def notifications(fn, *args):
        with CaptureQueriesContext(connection) as ctx:
            fn(*args)
        return [q["sql"] for q in ctx.captured_queries if "pg_notify" in q["sql"]]

    assert notifications(engine.tick, wf.pk) == []
    assert notifications(hotpath.node_started, wf.pk, "n-1") == []
    assert notifications(outcomes.node_succeeded, wf.pk, "n-1", None) == []
    (sql,) = notifications(outcomes.node_succeeded, wf.pk, "n-2", None)
    assert waiting.channel(wf.pk) in sql and "SUCCESS" in sql
    # A tick of the finished workflow changes nothing and says nothing.
    assert notifications(engine.tick, wf.pk) == []

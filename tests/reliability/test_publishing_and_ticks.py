"""Publishing and ticks: failed publishes come back at the next tick, busy ticks do not
multiply, the lock query leaves large columns alone, tick options may carry a countdown.
"""

import socket
import threading

import pytest
from celery import Celery, group
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_dyrygent import conf, engine, tasks
from django_dyrygent.engine import messaging, outcomes
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import lock_held_elsewhere, purge_queue
from tests.models import Execution
from tests.tasks import record

S = WorkflowNode.State
TIMEOUT = 30


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: A Celery app whose broker is down (nothing listens on its port): what the engine
#: publishes through while "the broker is down" (DYRYGENT_CELERY_APP points here).
DOWN = Celery("broker-down", set_as_current=False)
# The write URL: CELERY_BROKER_URL in the environment would override broker_url.
DOWN.conf.broker_write_url = f"redis://127.0.0.1:{_closed_port()}/0"


PARKED = "dyrygent-relb-parked"


@pytest.fixture
def parked():
    yield PARKED
    purge_queue(PARKED)


@pytest.mark.worker
def test_publish__a_publish_that_failed_is_retried_by_the_next_tick_not_after_requeue_after(
    worker, settings, parked
):
    assert conf.settings.REQUEUE_AFTER == 300.0  # the default: the old path would wait 5 minutes
    # Its ticks go to a queue nobody consumes: this test ticks it itself.
    wf = Workflow(name="broker-down", options={"queue": PARKED})
    wf.add_celery_canvas(group(record.si(f"p{i}") for i in range(5)))
    settings.DYRYGENT_CELERY_APP = f"{__name__}.DOWN"
    with transaction.atomic():  # the start runs at the commit: it queues the five nodes; every publish fails
        wf.apply_async()
    assert wf.start_sent is False
    nodes = wf.nodes.all()
    assert set(nodes.values_list("state", flat=True)) == {S.QUEUED}
    # The failure is recorded at once: no queued_at (nothing was sent).
    assert list(nodes.values_list("queued_at", flat=True)) == [None] * 5

    del settings.DYRYGENT_CELERY_APP  # the broker is back
    engine.tick(wf.pk, scheduled=False)  # the next tick republishes them, same task ids
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert sorted(Execution.objects.values_list("label", flat=True)) == [f"p{i}" for i in range(5)]
    assert set(nodes.values_list("publish_count", flat=True)) == {2}
    ran = set(Execution.objects.values_list("task_id", flat=True))
    assert ran == set(nodes.values_list("task_id", flat=True))


# -- busy ticks -----------------------------------------------------------------------------------


class SentTicks(list):
    """Countdowns of the ticks sent, per workflow (a shared worker may tick other workflows)."""

    def of(self, wf):
        return [countdown for pk, countdown in self if str(pk) == str(wf.pk)]


@pytest.fixture
def sent_ticks(monkeypatch):
    sent = SentTicks()
    monkeypatch.setattr(messaging, "send_tick",
                        lambda pk, options=None, countdown=None: sent.append((pk, countdown)))
    monkeypatch.setattr(messaging, "publish", lambda *a, **k: None)
    return sent


@pytest.fixture
def started(transactional_db, sent_ticks):
    """A running workflow whose next tick is one interval away; no tick sent yet."""
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite has no row locks: a tick waits for the workflow instead of finding it busy")
    wf = Workflow(name="busy")
    wf.add_signature(record.si("x"))
    wf.apply_async()
    engine.tick(wf.pk)
    sent_ticks.clear()
    return wf


def test_tick__busy_ticks_are_dropped_unless_due_and_do_not_multiply(started, sent_ticks):
    wf = started
    with lock_held_elsewhere(wf.pk):
        outcomes = [engine.tick(wf.pk, scheduled=True) for _ in range(50)]
    assert outcomes == ["busy"] * 50
    assert sent_ticks.of(wf) == []  # not due: every busy tick is an extra one, dropped (was 50 re-sends)

    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=None)  # the chain's tick is due
    with lock_held_elsewhere(wf.pk):
        assert engine.tick(wf.pk, scheduled=True) == "busy"
    assert sent_ticks.of(wf) == [1.0]  # the due tick survives: tried again shortly, not an interval later


def test_tick__concurrent_ticks_of_one_workflow_send_at_most_one_next_tick(started, sent_ticks):
    wf = started
    start = threading.Barrier(12)

    def tick():
        try:
            start.wait(10)
            engine.tick(wf.pk, scheduled=True)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sent_ticks.of(wf) == []  # none was due; before the fix every busy one re-sent itself


# -- the lock query -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_lock_workflow__does_not_load_custom_payload_options_or_error(sent_ticks):
    wf = Workflow(name="big", custom_payload={"blob": "x" * 200_000}, options={"priority": 3})
    first = wf.add_signature(record.si("a"))
    second = wf.add_signature(record.si("b"), dependencies=[first])
    wf.apply_async()
    engine.tick(wf.pk)
    with CaptureQueriesContext(connection) as ctx:
        outcomes.node_succeeded(wf.pk, first.task_id, "a")
        engine.tick(wf.pk)
    columns = ("custom_payload", '"options"', "tasks_options", '"error"')
    loading = [q["sql"] for q in ctx.captured_queries
               if q["sql"].lstrip().upper().startswith("SELECT") and "django_dyrygent_workflow" in q["sql"]
               and any(c in q["sql"] for c in columns)]
    # Only the on-commit readers of the small option columns, never the payload or the error.
    assert all("custom_payload" not in sql and '"error"' not in sql for sql in loading), loading
    assert WorkflowNode.objects.get(pk=second.pk).state == S.QUEUED


# -- tick options ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_send_tick__options_with_a_countdown_still_send_the_tick(monkeypatch):
    sent = []
    # The tick goes by name through the app's registered task (messaging.send_tick).
    monkeypatch.setattr(tasks.tick, "apply_async", lambda args, kwargs=None, **options: sent.append((args, options)))
    wf = Workflow(name="countdown", options={"countdown": 0.2, "queue": "dyrygent-tests"})
    wf.add_signature(record.si("x"))
    wf.apply_async()  # first tick: the workflow's own countdown applies
    engine.tick(wf.pk)  # reschedules: the engine's interval replaces it (was a swallowed TypeError)
    assert [call for call in sent if call[0] == (str(wf.pk),)] == [
        ((str(wf.pk),), {"countdown": 0.2, "queue": "dyrygent-tests"}),
        ((str(wf.pk),), {"countdown": 30.0, "queue": "dyrygent-tests"}),
    ]

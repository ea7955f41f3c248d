"""The idle tick (``engine._idle_tick``) counts a tick without waiting for a workflow row a step holds.

A step holding the row is the locked tick's business: it says "busy" at once
(``SKIP LOCKED``). The idle tick must not wait out the step either, on any
database with row locks; SQLite has none (one writer at a time).
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.engine import messaging
from django_dyrygent.models import Workflow
from tests.conftest import lock_held_elsewhere
from tests.tasks import noop

#: Bounds the join only: a tick that waited for the lock would outlast it (the holder keeps the row 30 s).
JOIN_TIMEOUT = 15


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(messaging, "send_tick", lambda *args, **kwargs: None)
    monkeypatch.setattr(messaging, "publish", lambda *args, **kwargs: None)


def idle_and_due():
    """A RUNNING workflow with nothing to repair whose tick is the due one."""
    wf = Workflow(name="idle")
    a = wf.add_signature(noop.si())
    wf.add_signature(noop.si(), dependencies=[a])
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    Workflow.objects.filter(pk=wf.pk).update(next_tick_at=timezone.now() - timedelta(seconds=1))
    return Workflow.objects.get(pk=wf.pk)


def tick_fields(wf):
    return Workflow.objects.filter(pk=wf.pk).values_list("state", "ticks", "next_tick_at").get()


@pytest.mark.django_db
def test_idle_tick__a_free_row_is_counted_and_the_chain_moves_on():
    wf = idle_and_due()
    assert engine._idle_tick(wf.pk) == "RUNNING"
    state, ticks, next_tick_at = tick_fields(wf)
    assert (state, ticks) == ("RUNNING", wf.ticks + 1)
    assert next_tick_at > timezone.now()


def test_idle_tick__a_row_another_transaction_holds_is_not_waited_for(transactional_db):
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite has no row locks: the idle tick waits for the write lock like any step")
    wf = idle_and_due()
    before = tick_fields(wf)
    answers = []

    def ticks():
        try:
            answers.append(engine._idle_tick(wf.pk))
            answers.append(engine.tick(wf.pk, scheduled=True))
        finally:
            connection.close()

    thread = threading.Thread(target=ticks)
    with lock_held_elsewhere(wf.pk):
        thread.start()
        thread.join(JOIN_TIMEOUT)
        returned_while_held = not thread.is_alive()
    thread.join()
    assert returned_while_held
    assert answers == [None, "busy"]  # not counted: the locked tick found it busy
    assert tick_fields(wf) == before
    assert engine.tick(wf.pk, scheduled=True) == "RUNNING"  # released: counted by the idle tick
    assert tick_fields(wf)[1] == before[1] + 1


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "mysql", reason="a MySQL/MariaDB server's feature")
def test_idle_tick__a_server_without_skip_locked_leaves_it_to_the_locked_tick(monkeypatch):
    wf = idle_and_due()
    before = tick_fields(wf)
    monkeypatch.setattr(connection.features, "has_select_for_update_skip_locked", False)
    assert engine._idle_tick(wf.pk) is None
    assert tick_fields(wf) == before

"""The hot path's own connection: in a worker process, whatever DYRYGENT_LIVENESS says; per process.

``worker_init`` marks the process a worker (``engine.db.serve_worker``); the
hot path then keeps a connection of its own per thread, and a forked child
(another pid) opens its own instead of using its parent's socket.
"""

import os
from types import SimpleNamespace

import pytest
from celery import signals as celery_signals
from django.db import connection, connections

from django_dyrygent.engine import db, hotpath
from django_dyrygent.worker import handlers

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="the own connection is PostgreSQL's")


@pytest.fixture
def not_a_worker(monkeypatch):
    """This process starts as no worker; whatever the test marks is undone after."""
    monkeypatch.setattr(db, "_worker_pid", None)
    yield
    hotpath.close_connection()


@pytest.mark.parametrize("liveness", [True, False])
def test_serve_worker__worker_init_marks_the_process_whatever_liveness_says(settings, not_a_worker, liveness):
    settings.DYRYGENT_LIVENESS = liveness
    assert any("django_dyrygent.serve_worker" in str(key) for key, _ in celery_signals.worker_init.receivers)
    assert not db.in_worker()
    handlers.serve_worker(sender=None)  # no worker sent it: nothing marked
    assert not db.in_worker()
    handlers.serve_worker(sender=SimpleNamespace(app=None))
    assert db.in_worker()


@pytest.mark.django_db(transaction=True)
def test_hotpath_connection__outside_a_worker_is_djangos(not_a_worker):
    assert hotpath._connection() is connections["default"]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_hotpath_connection__a_worker_without_liveness_has_its_own(settings, not_a_worker):
    settings.DYRYGENT_LIVENESS = False
    db.serve_worker()
    own = hotpath._connection()
    assert own is not connections["default"]
    assert hotpath._connection() is own


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_hotpath_connection__a_forked_child_opens_its_own_and_keeps_the_parents_open(monkeypatch, not_a_worker):
    db.serve_worker()
    parent = hotpath._connection()
    parent.ensure_connection()
    real_pid = os.getpid()
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: real_pid + 1)  # as in a pool child after fork
        child = hotpath._connection()
        assert child is not parent and hotpath._connection() is child
        assert parent in hotpath._inherited and parent.connection is not None  # not closed: the parent's socket
        hotpath.close_connection()
    hotpath._inherited.remove(parent)
    parent.close()

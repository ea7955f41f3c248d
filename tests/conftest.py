import contextlib
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from tests.celery_app import app as celery_app


def pytest_configure(config):
    config.addinivalue_line("markers", "worker: end-to-end test with a real Celery worker")


def purge_queue(name):
    """Drop the messages queue ``name`` holds; a queue the broker has never seen holds none.

    RabbitMQ answers a purge of an unknown queue with a channel error (404 NOT_FOUND),
    where Redis and the file-system broker purge nothing.
    """
    with celery_app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(name)
        except conn.channel_errors:
            pass


@pytest.fixture(scope="session")
def purged_broker():
    """Drop messages a previous run left in the broker (countdown ticks and the like)."""
    purge_queue(celery_app.conf.task_default_queue)
    return celery_app


@pytest.fixture(scope="session")
def session_worker(django_db_setup, django_db_blocker, purged_broker):
    """A real Celery worker (thread pool) consuming the real broker, in this process.

    Started once per session: stopping a worker costs seconds (its consumer
    loop drains the broker with a 2 s timeout), which would dominate the suite.
    Celery 5.3's Django fixup runs the system checks as the worker starts, and
    on Django 6 those open a database connection: allowed while it starts only.
    """
    with contextlib.ExitStack() as stack:
        with django_db_blocker.unblock():
            w = stack.enter_context(start_worker(
                celery_app, pool="threads", concurrency=4, perform_ping_check=False,
                loglevel="WARNING", shutdown_timeout=30,
            ))
        _worker_running.append(w)
        yield w
        _worker_running.clear()
    import gc

    from django_dyrygent.engine import hotpath

    # Finished worker threads keep their database connections (Django's and the
    # hot path's own) until their thread-locals are collected; PostgreSQL will
    # not drop the test database while one is open.
    hotpath.close_connection()
    gc.collect()


_worker_running = []  # the session worker, once a test has started it


@pytest.fixture
def worker(transactional_db, session_worker):
    """The session's worker, with a committed-data test database (idle after: the hook below)."""
    return session_worker


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    """Once the session worker runs, every test waits for it to go idle before its fixtures end.

    Before the test database's tables are flushed: a task that starts during the
    TRUNCATE takes row locks on tables the TRUNCATE still has to lock, and
    PostgreSQL breaks that deadlock by failing one side, sometimes the flush
    ("Database ... couldn't be flushed"). Not only tests with the ``worker``
    fixture publish: a transactional test that applies a workflow does too.
    """
    if _worker_running:
        wait_worker_idle(15)


@pytest.fixture
def is_postgres():
    return connection.vendor == "postgresql"


# -- end-to-end helpers -----------------------------------------------------------------------


def wait_worker_idle(timeout=20.0):
    """Block until the shared worker runs no task and holds none it has received (e.g. before
    counting what ran).

    Received is not yet running: the thread pool marks a request active only once
    a thread starts it, so a message taken just before the check would run after it.
    (Countdown messages wait in the worker's timer and count once they are due.)
    """
    from celery.worker import state

    def busy():
        return bool(state.reserved_requests or state.active_requests)

    deadline = time.monotonic() + timeout
    while busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not busy()


def wait_for(predicate, what, timeout=30.0):
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


_configure_base = pytest_configure


def pytest_configure(config):  # noqa: F811 - extends the hook above, keeping what it registers
    _configure_base(config)
    config.addinivalue_line("markers", "large: end-to-end test of a large workflow (runs on every database)")


@pytest.fixture
def compat_handler():
    """Register celery-dyrygent style handlers with Workflow.connect; disconnect them after the test.

    ``Workflow.connect`` has no disconnect of its own, and a handler left
    connected would see every later test's workflows.
    """
    from django_dyrygent import signals as dy_signals
    from django_dyrygent.models import Workflow

    connected = []

    def connect(name, handler):
        Workflow.connect(name)(handler)
        connected.append((name, handler))
        return handler

    yield connect
    for name, handler in connected:
        dy_signals.disconnect_compat_handler(name, handler)

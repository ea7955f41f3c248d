import contextlib
import io
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from django.core.management import call_command
from django.db import connection, transaction

from tests.celery_app import app as celery_app


def pytest_configure(config):
    config.addinivalue_line("markers", "worker: end-to-end test with a real Celery worker")
    config.addinivalue_line("markers", "large: end-to-end test of a large workflow (runs on every database)")


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
    hotpath.close_all_connections()
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


# -- helpers shared by the test folders (unit/, worker/, reliability/, compat/) -------------------

#: Celery apps for DYRYGENT_CELERY_APP, named by dotted path in tests of checks and settings.
no_backend_app = Celery("no-backend", set_as_current=False, broker="memory://")
backend_app = Celery("with-backend", set_as_current=False, broker="memory://", backend="cache+memory://")


def wait_until(predicate, timeout=30, interval=0.1):
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for(predicate, what, timeout=30):
    """Like ``wait_until``, but a timeout fails the test naming what never happened."""
    if not wait_until(predicate, timeout, interval=0.05):
        raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def lock_held_elsewhere(pk):
    """The workflow row locked by another connection (a thread's) for the duration of the block.

    The row must be committed for the other connection to see it: use it with ``transactional_db``.
    """
    from django_dyrygent.engine import steps

    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                steps.lock_workflow(pk)
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        thread.join()


def idle_tick_locks(sql):
    """The statements among ``sql`` that lock as the idle tick does on MySQL/MariaDB.

    An UPDATE there cannot skip a locked row, so the idle tick first takes the
    workflow's id alone ``FOR UPDATE SKIP LOCKED``: never waited for, unlike
    the locked tick's, which reads the whole row.
    """
    from django_dyrygent.models import Workflow

    quote = connection.ops.quote_name
    workflow_id = f"SELECT {quote(Workflow._meta.db_table)}.{quote('id')}"
    return [q for q in sql if q.endswith(" FOR UPDATE SKIP LOCKED")
            and q.startswith(workflow_id) and "," not in q.partition(" FROM ")[0]]


def database_url():
    """This test database as a URL a subprocess worker can open (DATABASE_URL)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    if connection.vendor in ("postgresql", "mysql"):
        scheme, port = ("postgres", 5432) if connection.vendor == "postgresql" else ("mysql", 3306)
        return f"{scheme}://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or port}/{s['NAME']}"
    pytest.skip(f"no subprocess-worker URL for {connection.vendor}")


def stop_process(proc, sig=signal.SIGTERM):
    """Signal a subprocess started in its own session, and its whole group; kill it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def python_block_after(marker):
    """The fenced python block of README.md whose first line is ``marker``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        if block.startswith(marker):
            return block
    raise AssertionError(f"No python block starting with {marker!r} in README.md")


def run_command(*args, **kwargs):
    """Run a management command; return what it wrote to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=kwargs.pop("stdout", out), stderr=err, **kwargs)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def demo_app(settings):
    """The demo app installed (its templates) and the example's URLs mounted."""
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "example_project.demo"]
    settings.ROOT_URLCONF = "example_project.urls"

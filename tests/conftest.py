import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from tests.celery_app import app as celery_app


def pytest_configure(config):
    config.addinivalue_line("markers", "worker: end-to-end test with a real Celery worker")


@pytest.fixture(scope="session")
def purged_broker():
    """Drop messages a previous run left in the broker (countdown ticks and the like)."""
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge(celery_app.conf.task_default_queue)
    return celery_app


@pytest.fixture
def worker(transactional_db, purged_broker):
    """A real Celery worker (thread pool) consuming the real broker, in this process."""
    with start_worker(
        celery_app, pool="threads", concurrency=4, perform_ping_check=False,
        loglevel="WARNING", shutdown_timeout=30,
    ) as w:
        yield w


@pytest.fixture
def is_postgres():
    return connection.vendor == "postgresql"

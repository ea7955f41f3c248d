"""Fixtures of the fault suite: private PostgreSQL and Redis servers, subprocess workers.

The fault tests (those using the ``rel`` fixture) run against servers they
start themselves, never the machine's own (they stop and restart them). They
run in the PostgreSQL pass of the suite (DATABASE_URL=postgres://...) on a
machine with PostgreSQL and Redis server binaries; ``DYRYGENT_RELIABILITY=1``
forces them on in any pass, ``=0`` skips them.

In a test, the main thread's ``default`` connection and current Celery app
point at the private servers (``rel`` fixture), so the engine, the models
and ``Workflow.apply_async`` are used exactly as in an application.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import dj_database_url
import pytest
from celery import Celery
from django.db import DatabaseError, connections
from django.db.utils import load_backend

from tests.celery_app import app as suite_app
from tests.reliability import harness

DATABASE = "dyrygent_rel"
HERE = Path(__file__).resolve().parent


def _reason_to_skip():
    wanted = os.environ.get("DYRYGENT_RELIABILITY")
    if wanted == "0":
        return "DYRYGENT_RELIABILITY=0"
    missing = harness.missing_binaries()
    if missing:
        return f"fault suite needs real servers: {missing}"
    if wanted != "1" and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return ("fault suite runs in the PostgreSQL pass (DATABASE_URL=postgres://...) on its own servers; "
                "set DYRYGENT_RELIABILITY=1 to run it in this pass too")
    return None


def pytest_collection_modifyitems(config, items):
    """Mark the reliability tests; skip the fault tests where they cannot run, and run them first.

    First, so they never share the process with the in-process worker of the
    rest of the suite, which may still be busy with a previous test's leftovers.
    """
    reason = _reason_to_skip()
    here = [item for item in items if Path(str(item.fspath)).resolve().parent == HERE]
    # Only the tests on private servers (the ``rel`` fixture) need them; the
    # others use the suite's own database and worker, in every pass.
    faults = [item for item in here if "rel" in getattr(item, "fixturenames", ())]
    for item in here:
        item.add_marker(pytest.mark.reliability)
    for item in faults:
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
    chosen = set(map(id, faults))
    items[:] = faults + [item for item in items if id(item) not in chosen]


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: fault-injection test with private servers and worker processes")


@pytest.fixture(scope="session")
def rel_base():
    base = Path(os.environ.get("DYRYGENT_TEST_DIR", "/tmp/dyrygent-tests")) / "reliability"
    base.mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="session")
def rel_servers(rel_base):
    """One PostgreSQL cluster (with the migrated database) and one redis-server for the session."""
    pg = harness.Postgres(rel_base / "pg")
    redis = harness.Redis(rel_base / "redis")
    try:
        pg.init()
        pg.start()
        pg.sql(f"CREATE DATABASE {DATABASE}")
        env = dict(os.environ, DATABASE_URL=pg.url(DATABASE), PYTHONPATH=str(harness.ROOT),
                   DJANGO_SETTINGS_MODULE="tests.settings", DYRYGENT_TEST_DIR=str(rel_base / "migrate"))
        subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=harness.ROOT,
                       env=env, check=True, timeout=180)
        redis.start()
        yield pg, redis
    finally:
        redis.stop()
        pg.stop(mode="immediate")
        if pg.as_root:  # its own directory under /tmp (see harness.Postgres)
            shutil.rmtree(pg.base, ignore_errors=True)


class Rel:
    """What a fault test works with: the servers, workers it starts, and bounded waits."""

    def __init__(self, pg, redis, base):
        self.pg = pg
        self.redis = redis
        self.base = base
        self.workers = []

    def worker(self, name, concurrency=2, env=None, include=()):
        w = harness.Worker(self.base, name, self.pg.url(DATABASE), self.redis.url, concurrency=concurrency,
                           env=env, include=include)
        self.workers.append(w)
        return w.start()

    def ready_worker(self, name, **options):
        """Start a worker and wait until it beats (it consumes by then)."""
        worker = self.worker(name, **options)
        self.wait_ready(worker)
        return worker

    def stop_database(self):
        connections["default"].close()
        self.pg.stop()

    def start_database(self):
        self.pg.start()
        connections["default"].close()

    def restart_database(self):
        self.stop_database()
        self.start_database()

    def wait_ready(self, worker, timeout=60):
        """Until the worker's liveness thread wrote its heartbeat (it consumes by then)."""
        from django_dyrygent.models import WorkerHeartbeat

        def beating():
            assert worker.alive(), worker.log()
            return self.query(lambda: WorkerHeartbeat.objects.filter(hostname=worker.hostname).exists())

        return harness.wait_for(beating, timeout, what=f"heartbeat of {worker.hostname}")

    def query(self, func, default=None):
        """``func()``, or ``default`` while the database is unreachable (the connection is reset)."""
        try:
            return func()
        except DatabaseError:
            connections["default"].close()
            return default

    def node(self, pk):
        from django_dyrygent.models import WorkflowNode

        return self.query(lambda: WorkflowNode.objects.get(pk=pk))

    def wait_node(self, pk, states, timeout=60):
        return harness.wait_for(
            lambda: (n := self.node(pk)) is not None and n.state in states and n, timeout,
            what=f"node {pk} in {states}",
        )

    def wait_final(self, wf, timeout):
        from django_dyrygent.models import Workflow
        from django_dyrygent.states import WORKFLOW_FINAL

        def final():
            state = self.query(lambda: Workflow.objects.filter(pk=wf.pk).values_list("state", flat=True).first())
            return state in WORKFLOW_FINAL and state

        try:
            harness.wait_for(final, timeout, what=f"workflow {wf.pk} final")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        wf.refresh_from_db()
        return wf.state

    def logs(self, tail=4000):
        return "\n".join(f"--- {w.name} ---\n{w.log()[-tail:]}" for w in self.workers)

    def flush_redis(self):
        with socket.create_connection(("127.0.0.1", self.redis.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


def _client_app(broker_url):
    app = Celery("dyrygent-reliability-client")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.update(broker_url=broker_url, broker_transport=None, broker_transport_options={},
                    result_backend="django-db")
    return app


@pytest.fixture
def rel(rel_servers, rel_base, django_db_blocker):
    """The main thread's database and Celery app pointed at the private servers; workers stopped after."""
    pg, redis = rel_servers
    runs = rel_base / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    os.environ["DYRYGENT_RELIABILITY_RUNS"] = str(runs)
    saved = connections["default"]
    settings_dict = connections.configure_settings(
        {"default": dj_database_url.parse(pg.url(DATABASE), conn_max_age=0)}
    )["default"]
    connections["default"] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "default")
    # Celery lets these variables win over any configuration (the PostgreSQL
    # pass sets them for the machine's Redis): point them at the private servers.
    saved_env = {name: os.environ.get(name) for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    os.environ.update(CELERY_BROKER_URL=redis.url, CELERY_RESULT_BACKEND="django-db")
    app = _client_app(redis.url)
    app.set_current()
    helper = Rel(pg, redis, rel_base)
    with django_db_blocker.unblock():
        try:
            pg.sql("SELECT 1")  # a previous test may have left the server stopped
        except Exception:
            pg.start()
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "TRUNCATE django_dyrygent_workflow, django_dyrygent_workflownode, django_dyrygent_workflowedge, "
                "django_dyrygent_workflowevent, django_dyrygent_workerheartbeat, "
                "django_celery_results_taskresult CASCADE"
            )
        helper.flush_redis()
        try:
            yield helper
        finally:
            for w in helper.workers:
                if w.alive():
                    w.kill()
            connections["default"].close()
            connections["default"] = saved
            os.environ.pop("DYRYGENT_RELIABILITY_RUNS", None)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            suite_app.set_current()
            app.close()

"""An upgrade under traffic: the next release's migrations applied while the previous release's workers run.

The procedure docs/operations.md ("Upgrading") promises: migrate first, with
the old workers (and the old web processes) still running, then roll the
workers. This test runs it with real processes on the fault suite's private
servers: the previous release's source (``git archive`` of ``OLD_RELEASE``)
migrates a fresh database to its last migration, runs a prefork worker and
submits workflows; the current code migrates that database to the head while
both keep going; an old worker started after the migration must come up too
(a restart or a scale-up during the upgrade); then new workers take over by a
rolling restart (SIGTERM to the old ones) while the new code submits more.
Nothing may be lost: every workflow ends in SUCCESS, every body ran, the
counters equal the rows, and no process logged an error.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import dj_database_url
import pytest
from celery import chain, group
from django.db import connections
from django.db.utils import load_backend
from django.utils import timezone

from django_dyrygent.models import WorkerHeartbeat, Workflow, WorkflowNode
from django_dyrygent.states import COUNTED_KINDS, WORKFLOW_FINAL
from tests.reliability import harness
from tests.reliability.tasks import run

#: The previous release: the last main before migrations 0006-0010 (its migrations end at 0005_lighter_build).
OLD_RELEASE = "2ae3b77"
DATABASE = "dyrygent_upgrade"
#: What an error looks like in a worker's or a submitter's output.
ERRORS = ("Traceback", "ProgrammingError", "IntegrityError", "DataError", "NotNullViolation", "ERROR/")

#: Runs in the OLD source tree (its cwd and first on its path): submits a workflow of a chain and a
#: group (its bodies take a moment, so some run when a worker stops) every ``interval`` seconds until
#: the stop file appears. Errors are printed, not raised, so it keeps submitting after a failure and
#: the test reports every one.
SUBMITTER = '''
import sys, time, traceback
from pathlib import Path

import django

django.setup()
from celery import chain, group

import django_dyrygent
from django_dyrygent.models import Workflow
from tests.celery_app import app  # noqa: F401  (the current app: the private broker)
from tests.reliability.tasks import run

prefix, stop, interval = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
print("django_dyrygent from", django_dyrygent.__file__, flush=True)
i = 0
while not stop.exists():
    print("attempt", i, flush=True)
    try:
        wf = Workflow(name=f"{prefix}{i}")
        bodies = group(run.si(f"{prefix}{i}-g{j}", seconds=0.2) for j in range(3))
        wf.add_celery_canvas(chain(run.si(f"{prefix}{i}-a"), bodies, run.si(f"{prefix}{i}-z")))
        wf.apply_async()
        print("applied", wf.pk, flush=True)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
    i += 1
    time.sleep(interval)
'''


def _old_tree(base):
    """The previous release's source, exported from git; skip when the history does not have it."""
    tree = base / "old-release"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    try:
        subprocess.run(["git", "cat-file", "-e", f"{OLD_RELEASE}^{{commit}}"], cwd=harness.ROOT, check=True,
                       capture_output=True, timeout=30)
        archive = subprocess.run(
            ["git", "archive", OLD_RELEASE, "django_dyrygent", "tests", "example_project", "manage.py",
             "setup.cfg", "pyproject.toml"], cwd=harness.ROOT, check=True, capture_output=True, timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the previous release ({OLD_RELEASE}) is not in this checkout's git history "
                    f"(a shallow clone or an sdist?): {exc}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
    return tree


def _env(root, pg, redis, base):
    return dict(os.environ, PYTHONPATH=str(root), DATABASE_URL=pg.url(DATABASE), CELERY_BROKER_URL=redis.url,
                CELERY_RESULT_BACKEND="django-db", DJANGO_SETTINGS_MODULE="tests.settings",
                DYRYGENT_TEST_DIR=str(base / "upgrade-dir"))


def _migrate(root, env, log):
    """``migrate`` to the head of the tree at ``root``; its output goes to ``log``."""
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "1"], cwd=root, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=180)


def _use_database(pg):
    """Point the test's ``default`` connection at the upgraded database (the ``rel`` fixture restores it)."""
    connections["default"].close()
    settings_dict = connections.configure_settings(
        {"default": dj_database_url.parse(pg.url(DATABASE), conn_max_age=0)}
    )["default"]
    connections["default"] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "default")


def _beats(pg, hostname):
    """Whether the worker's heartbeat row exists, read with psql (any schema version)."""
    return pg.sql(f"SELECT count(*) FROM django_dyrygent_workerheartbeat WHERE hostname = '{hostname}'",
                  database=DATABASE).strip() not in ("", "0")


def _attempts(log):
    return log.read_text(errors="replace").count("\nattempt ") if log.exists() else 0


def _errors(text):
    return [line for line in text.splitlines() if any(mark in line for mark in ERRORS)]


def _new_workflow(i):
    wf = Workflow(name=f"new{i}")
    wf.add_celery_canvas(chain(run.si(f"new{i}-a"), group(run.si(f"new{i}-g{j}", seconds=0.2) for j in range(3)),
                               run.si(f"new{i}-z")))
    return wf.apply_async()


def test_upgrade_under_traffic__migrate_to_head_while_the_old_release_runs_then_roll_the_workers(rel):
    pg, redis, base = rel.pg, rel.redis, rel.base / "upgrade"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    old_root = _old_tree(base)
    pg.sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    pg.sql(f"CREATE DATABASE {DATABASE}")
    old_env, new_env = _env(old_root, pg, redis, base), _env(harness.ROOT, pg, redis, base)
    _migrate(old_root, old_env, base / "migrate-old.log")
    assert "0005_lighter_build" in pg.sql("SELECT max(name) FROM django_migrations WHERE app = 'django_dyrygent'",
                                          database=DATABASE)

    def worker(name, root):
        w = harness.Worker(base, name, pg.url(DATABASE), redis.url, root=root)
        rel.workers.append(w)
        return w.start()

    def ready(w, timeout=60):
        harness.wait_for(lambda: (w.alive() or pytest.fail(w.log())) and _beats(pg, w.hostname), timeout,
                         what=f"heartbeat of {w.hostname}")

    def submitting():
        """True while the old release's submitter runs; the test fails with its output if it died."""
        return submitter.poll() is None or pytest.fail(submitter_log.read_text(errors="replace"))

    stop = base / "stop-submitting"
    submitter_log = base / "submitter-old.log"
    submitter = None
    try:
        old = worker("old", old_root)
        ready(old)
        with open(submitter_log, "ab") as out:
            submitter = subprocess.Popen(
                [sys.executable, "-c", SUBMITTER, "old", str(stop), "0.3"], cwd=old_root, env=old_env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        harness.wait_for(lambda: submitting() and _attempts(submitter_log) >= 3, 30,
                         what="the old release submitting")
        # The next release's migrations, while the old worker runs and the old code submits.
        _migrate(harness.ROOT, new_env, base / "migrate-new.log")
        migrated_at = timezone.now()
        _use_database(pg)
        # The old release keeps submitting against the new schema, and an old worker started
        # now (a restart during the upgrade) writes its first heartbeat into the new table.
        migrated = _attempts(submitter_log)
        late = worker("old-late", old_root)
        harness.wait_for(lambda: submitting() and _attempts(submitter_log) >= migrated + 5, 30,
                         what="the old release submitting after the migration")
        ready(late, timeout=30)
        stop.write_text("")
        submitter.wait(timeout=30)
        # Rolling restart: a new worker first, then SIGTERM to the old ones, the new code submitting throughout.
        new = worker("new", harness.ROOT)
        ready(new)
        applied = [_new_workflow(i) for i in range(4)]
        for w in (old, late):
            os.kill(w.pid, signal.SIGTERM)  # the main process, as systemd: a warm shutdown
        applied += [_new_workflow(i) for i in range(4, 8)]
        for w in (old, late):
            w.proc.wait(timeout=60)
        applied += [_new_workflow(i) for i in range(8, 10)]
        assert all(wf.start_sent for wf in applied)

        workflows = Workflow.objects.all()
        deadline = time.monotonic() + 60
        while workflows.exclude(state__in=WORKFLOW_FINAL).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.write_text("")
        harness.stop_process(submitter)
        for w in rel.workers:
            w.stop()

    logs = {"submitter-old": submitter_log.read_text(errors="replace")}
    logs.update((w.name, w.log()) for w in rel.workers)
    report = "\n".join(f"--- {name} ---\n{text[-3000:]}" for name, text in logs.items())
    assert str(old_root) in logs["submitter-old"], "the submitter did not run the old release's code"
    errors = {name: _errors(text) for name, text in logs.items()}
    assert not any(errors.values()), report

    names = sorted(Workflow.objects.values_list("name", flat=True))
    assert sum(n.startswith("old") for n in names) == logs["submitter-old"].count("\napplied ")
    assert sum(n.startswith("new") for n in names) == 10
    not_done = dict(Workflow.objects.exclude(state=Workflow.State.SUCCESS).values_list("name", "state"))
    assert not not_done, f"{not_done}\n{report}"
    S = WorkflowNode.State
    twice = 0
    for wf in Workflow.objects.all():
        nodes = WorkflowNode.objects.filter(workflow=wf)
        assert set(nodes.values_list("state", flat=True)) == {S.SUCCESS}, wf.name
        count = nodes.filter(kind__in=COUNTED_KINDS).count()  # the counters leave out the joins
        assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded) == (count, count, count), wf.name
        assert (wf.nodes_failed, wf.nodes_upstream_failed, wf.nodes_skipped) == (0, 0, 0), wf.name
        for node in nodes.filter(kind=WorkflowNode.Kind.TASK):
            ran = harness.runs(node.signature["args"][0])
            assert ran >= 1, (wf.name, node.signature)
            twice += ran > 1
    # At least once: a body running on an old worker at its SIGTERM may run again (docs/operations.md).
    print(f"{len(names)} workflows, {twice} bodies ran more than once")
    # The old release's workers ran nodes on the new schema, and the new worker took over.
    ran_on = set(WorkflowNode.objects.filter(workflow__created_at__gte=migrated_at, kind=WorkflowNode.Kind.TASK)
                 .values_list("worker_hostname", flat=True))
    assert ran_on & {old.hostname, late.hostname} and new.hostname in ran_on, ran_on
    # The heartbeats of both releases load in the new code's model, and tell the releases apart: the
    # previous one marked its stop by back-dating last_seen, this one sets stopped_at (so the old
    # workers really ran the old code).
    stopped = dict(WorkerHeartbeat.objects.values_list("hostname", "stopped_at"))
    assert stopped.keys() == {old.hostname, late.hostname, new.hostname}, stopped
    assert stopped[old.hostname] is None and stopped[late.hostname] is None and stopped[new.hostname], stopped

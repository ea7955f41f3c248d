"""Scheduled starts on a real worker: the beat task, a real ``celery beat`` process, overlap policies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.worker import state as worker_state
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from django_dyrygent import launch, tasks
from django_dyrygent.models import QueuedRun, Workflow
from tests.celery_app import app as celery_app
from tests.conftest import database_url, stop_process, wait_until
from tests.models import Execution

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def release(flag):
    Execution.objects.create(label=f"release:{flag}")


def labels():
    return list(Execution.objects.values_list("label", flat=True))


def test_start_definition__task_on_a_real_worker_starts_and_runs_the_workflow(worker):
    result = tasks.start_definition.delay("tests.add", {"x": 2, "y": 3})
    answer = result.get(timeout=TIMEOUT)

    assert answer["status"] == "started"
    wf = Workflow.objects.get(pk=answer["workflow"])
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert (wf.definition, wf.trigger, wf.parameters) == ("tests.add", "schedule", {"x": 2, "y": 3, "label": ""})
    assert wf.nodes.get(task_name="tests.mul").result == 50  # pass_results from the definition


def test_start_definition__bad_parameters_fail_the_task_and_start_nothing(worker):
    result = tasks.start_definition.delay("tests.add", {"x": "two"})
    # The worker's ParameterError comes back through the result backend as its base class.
    with pytest.raises(launch.StartError, match="Invalid parameters for workflow definition 'tests.add': "
                                                "x: Enter a whole number."):
        result.get(timeout=TIMEOUT)
    unknown = tasks.start_definition.delay("tests.nope")
    with pytest.raises(LookupError, match="No workflow definition named 'tests.nope'"):
        unknown.get(timeout=TIMEOUT)
    assert not Workflow.objects.exists()


def test_overlap_queue__the_waiting_run_starts_when_the_previous_ends(worker):
    first = launch.start_scheduled("tests.hold-queue", {"flag": "q1"})
    second = launch.start_scheduled("tests.hold-queue", {"flag": "q2"})
    assert (first.status, second.status) == ("started", "queued")
    assert wait_until(lambda: "start:q1" in labels())
    release("q2")  # the second run may finish as soon as it starts
    # What a workflow's end does (start the next queued run) refuses while q1 holds.
    assert launch.start_next_queued("tests.hold-queue") is None
    assert "start:q2" not in labels() and QueuedRun.objects.count() == 1

    release("q1")
    assert first.workflow.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert wait_until(lambda: Workflow.objects.filter(definition="tests.hold-queue").count() == 2)
    later = Workflow.objects.exclude(pk=first.workflow.pk).get()
    assert later.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    first.workflow.refresh_from_db()
    assert later.trigger == "queue" and later.parameters == {"flag": "q2"}
    assert later.created_at >= first.workflow.finished_at
    order = labels()
    assert order.index("held:q1") < order.index("start:q2")
    assert not QueuedRun.objects.exists()


def test_overlap_allow__runs_side_by_side(worker):
    runs = [launch.start_scheduled("tests.hold-allow", {"flag": "a"}) for _ in range(2)]
    assert wait_until(lambda: labels().count("start:a") == 2)  # both running before any release
    release("a")
    assert [r.workflow.wait(timeout=TIMEOUT) for r in runs] == [Workflow.State.SUCCESS] * 2


def _fires():
    return [
        json.loads(r.result)["status"]
        for r in TaskResult.objects.filter(task_name="django_dyrygent.start_definition", status="SUCCESS")
        .order_by("date_done", "id")
    ]


def _beat_until_skipped(tmp_path, flag, *args, env=None):
    """Run ``celery beat`` until the worker answered two fires with "skipped"; stop it, drop later fires.

    Returns the one run those fires found going (``tests.hold-skip`` holds until released).
    """
    log = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.beat_app", "beat", "-s", str(tmp_path / "schedule"),
         "--max-interval", "1", "-l", "info", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), stdout=open(log, "wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert wait_until(lambda: _fires().count("skipped") >= 2, timeout=40), log.read_text()
    finally:
        stop_process(beat)
        with celery_app.connection_for_write() as conn:  # fires beat sent that no worker took yet
            conn.default_channel.queue_purge(celery_app.conf.task_default_queue)
        # Fires the worker already took run out; only the held run's task may stay.
        assert wait_until(lambda: all(r.name == "tests.hold" for r in list(worker_state.reserved_requests)),
                        timeout=20)
    wf = Workflow.objects.get(definition="tests.hold-skip")  # one run, however many fires
    assert wf.trigger == "schedule" and wf.parameters == {"flag": flag} and _fires()[0] == "started"
    release(flag)
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert Workflow.objects.count() == 1
    return log.read_text()


def test_beat__a_real_beat_process_starts_the_definition_and_skips_while_it_runs(worker, tmp_path):
    """``celery beat`` fires every second (tests/beat_app.py); one run starts, later fires skip."""
    log = _beat_until_skipped(tmp_path, "beat")
    assert "Sending due task catalogue-hold-skip" in log


def test_django_celery_beat__database_schedule_starts_the_definition(worker, tmp_path, admin_client):
    """django-celery-beat's DatabaseScheduler reads a PeriodicTask made as its admin would make it."""
    form = admin_client.get(reverse("admin:django_celery_beat_periodictask_add")).content.decode()
    assert '<option value="django_dyrygent.start_definition">' in form  # offered in "Task (registered)"
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="hold from the database", task="django_dyrygent.start_definition", interval=every_second,
        kwargs=json.dumps({"name": "tests.hold-skip", "params": {"flag": "db"}}),
    )
    log = _beat_until_skipped(tmp_path, "db", "-S", "django_celery_beat.schedulers:DatabaseScheduler",
                              env={"DATABASE_URL": database_url()})
    assert "DatabaseScheduler" in log and "Sending due task hold from the database" in log

"""Scheduled starts on a real worker: the beat task, a real ``celery beat`` process, overlap policies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.worker import state as worker_state
from django_celery_results.models import TaskResult

from django_dyrygent import launch, tasks
from django_dyrygent.models import QueuedRun, Workflow
from tests.celery_app import app as celery_app
from tests.models import Execution

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


def wait_for(predicate, timeout=TIMEOUT, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


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
    assert wait_for(lambda: "start:q1" in labels())
    release("q2")  # the second run may finish as soon as it starts
    time.sleep(0.3)  # not an assertion: the queued run must still be waiting while q1 holds
    assert "start:q2" not in labels() and QueuedRun.objects.count() == 1

    release("q1")
    assert first.workflow.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert wait_for(lambda: Workflow.objects.filter(definition="tests.hold-queue").count() == 2)
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
    assert wait_for(lambda: labels().count("start:a") == 2)  # both running before any release
    release("a")
    assert [r.workflow.wait(timeout=TIMEOUT) for r in runs] == [Workflow.State.SUCCESS] * 2


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _fires():
    return [
        json.loads(r.result)["status"]
        for r in TaskResult.objects.filter(task_name="django_dyrygent.start_definition", status="SUCCESS")
        .order_by("date_done", "id")
    ]


def test_beat__a_real_beat_process_starts_the_definition_and_skips_while_it_runs(worker, tmp_path):
    """``celery beat`` fires every second; the worker starts one run, then skips while it holds."""
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.beat_app", "beat", "-s", str(tmp_path / "schedule"),
         "--max-interval", "1", "-l", "info"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=open(tmp_path / "beat.log", "wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert wait_for(lambda: _fires().count("skipped") >= 2, timeout=40), (tmp_path / "beat.log").read_text()
    finally:
        _stop(beat)
        with celery_app.connection_for_write() as conn:  # fires beat sent that no worker took yet
            conn.default_channel.queue_purge(celery_app.conf.task_default_queue)
        # Fires the worker already took run out; only the held run's task may stay.
        assert wait_for(lambda: all(r.name == "tests.hold" for r in list(worker_state.reserved_requests)),
                        timeout=20)
    assert "Sending due task catalogue-hold-skip" in (tmp_path / "beat.log").read_text()
    wf = Workflow.objects.get(definition="tests.hold-skip")  # one run, however many fires
    assert wf.trigger == "schedule" and _fires()[0] == "started"
    release("beat")
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert Workflow.objects.count() == 1

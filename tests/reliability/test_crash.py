"""A worker process killed mid-task loses nothing: real subprocess workers, SIGKILL, recovery.

The killed worker's task is gone (its message was taken, its process is
dead). The node's timeout makes the engine give up on that run and publish
the node again under a fresh task id to the replacement worker.
"""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from django_dyrygent import engine
from django_dyrygent.models import Workflow, WorkflowNode
from tests.conftest import database_url, purge_queue, stop_process, wait_until
from tests.models import Execution
from tests.tasks import record, slow_first

# The run's own queue name plus a suffix: runs sharing a RabbitMQ vhost must not share it.
QUEUE = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-crash"
ROOT = Path(__file__).resolve().parents[2]


def _start_worker(tmp_path, name):
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONPATH=str(ROOT))
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", "prefork", "-c", "1",
         "-Q", QUEUE, "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_crash__a_worker_killed_mid_task_is_recovered_by_the_timeout_on_a_new_worker(tmp_path):
    purge_queue(QUEUE)  # what an aborted earlier run may have left
    wf = Workflow(name="crash", options={"queue": QUEUE})
    slow = wf.add_signature(slow_first.si("crash", seconds=60), timeout=60, max_attempts=2)
    after = wf.add_signature(record.si("after"), dependencies=[slow])
    first = _start_worker(tmp_path, "doomed")
    second = None
    try:
        wf.apply_async(options={"queue": QUEUE})
        # Mid-task: the body has begun (its row is written), not only the node marked STARTED.
        # Killed before that row, every later run is a "first" one and sleeps 60 s; on RabbitMQ
        # the killed message comes straight back and holds the one-process replacement.
        assert wait_until(
            lambda: WorkflowNode.objects.get(pk=slow.pk).state == WorkflowNode.State.STARTED
            and Execution.objects.filter(label="start:crash").exists()
        ), (tmp_path / "doomed.log").read_text()
        doomed_task_id = WorkflowNode.objects.get(pk=slow.pk).task_id
        stop_process(first, signal.SIGKILL)  # the whole process group: main process and pool child
        second = _start_worker(tmp_path, "replacement")
        # Past the node's timeout, as the clock would be, without waiting for it.
        WorkflowNode.objects.filter(pk=slow.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))

        def timed_out_and_republished():
            # A tick finding the workflow busy (a scheduled tick holds it) skips it: tick again.
            engine.tick(wf.pk, scheduled=False)
            return WorkflowNode.objects.get(pk=slow.pk).task_id != doomed_task_id

        assert wait_until(timed_out_and_republished, timeout=30)
        assert wf.wait(timeout=60) == Workflow.State.SUCCESS, (tmp_path / "replacement.log").read_text()
    finally:
        stop_process(first, signal.SIGKILL)
        if second is not None:
            stop_process(second)
    slow.refresh_from_db()
    after.refresh_from_db()
    assert slow.attempts == 2 and slow.previous_task_ids == [doomed_task_id]
    assert slow.state == after.state == WorkflowNode.State.SUCCESS
    assert Execution.objects.filter(label="start:crash").count() == 2  # the killed run and the new one
    assert Execution.objects.filter(label="after").count() == 1

"""Bodies the fault suite runs; each execution leaves a file, so counting needs no database."""

import os
import signal
import time
import uuid
from pathlib import Path

from celery import shared_task


def _runs_dir():
    path = Path(os.environ.get("DYRYGENT_RELIABILITY_RUNS") or Path(os.environ["DYRYGENT_TEST_DIR"]) / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


@shared_task(bind=True, name="rel.run")
def run(self, label, seconds=0.0):
    """Record the start (with this process's pid), sleep, record the end; return the label."""
    execution = _start(label, self.request.id)
    if seconds:
        time.sleep(seconds)
    execution.with_suffix(".done").write_text("")
    return label


@shared_task(bind=True, name="rel.run_late", acks_late=True)
def run_late(self, label, seconds=0.0):
    """``run`` acknowledged after the body (acks_late): a killed worker's message stays unacked in the broker."""
    return run.run(label, seconds)


def _start(label, task_id):
    """One file per execution (a redelivered message has the same task id, so add a unique part)."""
    path = _runs_dir() / f"{label}.{task_id}.{uuid.uuid4().hex[:8]}.start"
    path.write_text(str(os.getpid()))
    return path


@shared_task(bind=True, name="rel.die")
def die(self, label, times=1000, seconds=0.2):
    """Kill the pool process running it (as the OOM killer would) in its first ``times`` runs."""
    _start(label, self.request.id)
    if len(list(_runs_dir().glob(f"{label}.*.start"))) <= times:
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
    return label


@shared_task(name="rel.noop")
def noop(*args):
    """Nothing at all: the resource test runs thousands of these and counts nothing per run."""
    return None


@shared_task(bind=True, name="rel.hold")
def hold(self, label, seconds=60.0):
    """The first execution of ``label`` waits for its release file (at most ``seconds``); later ones return at once.

    So a test decides when the body it interrupts ends, and a re-run does not wait.
    """
    execution = _start(label, self.request.id)
    if len(list(_runs_dir().glob(f"{label}.*.start"))) == 1:
        deadline = time.monotonic() + seconds
        while not (_runs_dir() / f"{label}.release").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    execution.with_suffix(".done").write_text("")
    return label

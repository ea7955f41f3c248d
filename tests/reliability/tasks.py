"""Bodies the fault suite runs; each execution leaves a file, so counting needs no database."""

import os
import signal
import time
from pathlib import Path

from celery import shared_task


def _runs_dir():
    path = Path(os.environ.get("DYRYGENT_RELIABILITY_RUNS") or Path(os.environ["DYRYGENT_TEST_DIR"]) / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


@shared_task(bind=True, name="rel.run")
def run(self, label, seconds=0.0):
    """Record the start (with this process's pid), sleep, record the end; return the label."""
    directory = _runs_dir()
    (directory / f"{label}.{self.request.id}.start").write_text(str(os.getpid()))
    if seconds:
        time.sleep(seconds)
    (directory / f"{label}.{self.request.id}.done").write_text("")
    return label


@shared_task(bind=True, name="rel.die")
def die(self, label, times=1000, seconds=0.2):
    """Kill the pool process running it (as the OOM killer would) in its first ``times`` runs."""
    directory = _runs_dir()
    (directory / f"{label}.{self.request.id}.start").write_text(str(os.getpid()))
    if len(list(directory.glob(f"{label}.*.start"))) <= times:
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
    return label

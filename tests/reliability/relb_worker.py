"""A Celery worker subprocess on its own queue, started and stopped by pid (rel-b's tests)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import database_url, stop_process

ROOT = Path(__file__).resolve().parents[2]


def start_worker(log_path, queue, concurrency=1, pool="prefork"):
    """A worker (prefork by default) consuming ``queue`` only; its output goes to ``log_path``."""
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONPATH=str(ROOT))
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", pool,
         "-c", str(concurrency), "-Q", queue, "-n", f"{queue}-{os.getpid()}@%h", "--without-mingle",
         "--without-gossip", "-l", "info"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_worker(proc):
    """SIGTERM the worker's process group (warm shutdown), SIGKILL after 20 s."""
    stop_process(proc)

"""A Celery worker subprocess on its own queue, started and stopped by pid (rel-b's tests)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_crash import _database_url as database_url

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
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)

"""Bodies of the chaos soak; every execution leaves its own record, so the checker needs no worker.

One ``<label>.<task id>.<random>.start`` file per execution, written first
(JSON: pid, wall-clock time, task id), and the same name with ``.done`` written
last (time, and whether the body failed). The label names the node: unique in
a run (``w<index>.<name>``; a fan-out item is ``<prefix>.<item>``).

A body's outcome is fixed by its arguments, so the traffic knows it in advance:
``ok`` succeeds, ``fail`` always raises, ``flaky`` raises until the soak writes
``<label>.heal`` (before it calls ``retry()``).
"""

import json
import os
import time
import uuid
from pathlib import Path

from celery import shared_task


class ChaosFailure(Exception):
    """The failure a body was told to have."""


def runs_dir():
    path = Path(os.environ.get("DYRYGENT_CHAOS_RUNS") or Path(os.environ["DYRYGENT_TEST_DIR"]) / "chaos-runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _execute(label, task_id, seconds, mode):
    path = runs_dir() / f"{label}.{task_id}.{uuid.uuid4().hex[:8]}.start"
    path.write_text(json.dumps({"pid": os.getpid(), "t": time.time(), "id": task_id}))
    if seconds:
        time.sleep(seconds)
    failed = mode == "fail" or (mode == "flaky" and not (runs_dir() / f"{label}.heal").exists())
    path.with_suffix(".done").write_text(json.dumps({"t": time.time(), "failed": failed}))
    if failed:
        raise ChaosFailure(f"{label}: failure chosen by the soak ({mode})")
    return label


@shared_task(bind=True, name="chaos.body")
def body(self, label, seconds=0.0, mode="ok"):
    """A node's body: record, sleep, succeed or fail as told."""
    return _execute(label, self.request.id, seconds, mode)


@shared_task(bind=True, name="chaos.source")
def source(self, label, count, seconds=0.0):
    """A fan-out's source: record like ``body``, return the items ``0 .. count - 1``."""
    _execute(label, self.request.id, seconds, "ok")
    return list(range(count))


@shared_task(bind=True, name="chaos.choose")
def choose(self, label, key, seconds=0.0, mode="ok"):
    """A branch's task: record like ``body``, then return the path key the traffic chose."""
    _execute(label, self.request.id, seconds, mode)
    return key


@shared_task(bind=True, name="chaos.item")
def item(self, index, prefix, seconds=0.0, fail_index=-1):
    """One fan-out item (the item comes first): label ``<prefix>.<index>``; item ``fail_index`` fails."""
    return _execute(f"{prefix}.{index}", self.request.id, seconds, "fail" if index == fail_index else "ok")

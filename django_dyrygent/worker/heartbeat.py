"""The liveness thread of a Celery worker's main process: heartbeat, and the sweep.

Run by a worker bootstep (``LivenessStep``, added to the worker's blueprint
on ``worker_init``), so every worker runs it, started from the command line
or embedded; ``worker_init`` also records the main process id before the
pool forks, so a pool child's ``task_prerun`` can name the worker on the
node (a node is only judged when its worker runs the thread). Every
DYRYGENT_HEARTBEAT_INTERVAL seconds the thread writes the worker's
``WorkerHeartbeat`` row with the task ids the worker holds (running,
prefetched, scheduled); the oldest live worker also runs ``Sweeper.sweep_once``
every DYRYGENT_SWEEP_INTERVAL seconds. So recovery needs neither beat nor a
countdown tick message (which would die with the worker that held it).

Shutdown. Celery stops a worker's steps in the reverse of their start order:
the consumer, then this step, then the pool, which waits for the running
bodies in a warm shutdown (SIGTERM to the main process). Were the worker
marked gone when its step stops, a peer would re-run the bodies still
draining. So a warm stop only notes the drain and the thread keeps beating,
listing the running tasks, until ``worker_shutdown`` (sent once every step,
the pool included, has stopped): then the row gets ``stopped_at``, and
peers judge whatever of this worker is left at once. ``last_seen`` stays a
real beat. A worker killed while it drains simply stops beating. A cold
shutdown (the pool's bodies are cancelled) marks the worker stopped at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from celery import bootsteps
from celery import signals as celery_signals
from celery.worker import WorkController
from celery.worker import state as worker_state
from django.db import connections
from django.utils import timezone

from ..conf import settings
from ..engine import db
from ..models import WorkerHeartbeat
from . import liveness
from .recovery import Sweeper

logger = logging.getLogger("django_dyrygent.worker")

#: Pid of this worker's main process; set before the pool forks, None outside a liveness worker.
MAIN_PID: int | None = None
#: Heartbeat rows of workers gone this long are deleted by the sweeper.
FORGET_AFTER = timedelta(days=1)
#: The liveness thread of this process's worker (marked stopped on ``worker_shutdown``).
_thread: LivenessThread | None = None

def held_task_ids() -> tuple[list[str], list[str]]:
    """(active, reserved) task ids of this worker, read from Celery's bookkeeping in the main process."""
    for _ in range(10):
        try:
            active = {r.id for r in list(worker_state.active_requests)}
            waiting = {r.id for r in list(worker_state.reserved_requests)}
            # Countdown/ETA messages waiting in the worker's timer: a WeakSet in celery/worker/state.py
            # since Celery 5.4 (celery-types 0.26 lacks it too). Celery 5.3 does not track them there.
            scheduled = getattr(worker_state, "scheduled_requests", ())
            waiting |= {r.id for r in list(scheduled)}
            return sorted(active), sorted(waiting - active)
        except RuntimeError:  # the sets changed while we copied them; try again
            time.sleep(0.001)
    return [], []


def consumed_queues(worker: WorkController | None) -> list[str]:
    """The queues ``worker`` consumes now (``-Q``, and any added since with add_consumer), for the admin to show.

    The consumer's own list when it is up, else the app's ``consume_from``
    (what ``-Q`` asked for, or every declared queue).
    """
    if worker is None:
        return []
    task_consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    queues = getattr(task_consumer, "queues", None)
    if queues:
        return sorted({queue.name for queue in queues})
    return sorted(worker.app.amqp.queues.consume_from or ())


class LivenessThread(threading.Thread):
    """Beats for one worker, and sweeps while that worker is the oldest live one."""

    def __init__(self, hostname: str, pid: int, worker: WorkController | None = None) -> None:
        super().__init__(name="dyrygent-liveness", daemon=True)
        self.hostname = hostname
        self.pid = pid
        self.worker = worker
        self.started_at = timezone.now()
        self.stopping = threading.Event()
        #: The worker stopped consuming and waits for its pool: beats go on, it is not gone yet.
        self.draining = False
        self.sweeper = Sweeper()
        self.next_sweep = 0.0

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.step()
                self.stopping.wait(float(settings.HEARTBEAT_INTERVAL))
        finally:
            connections.close_all()

    def step(self) -> None:
        try:
            db.run(self.beat, retry_for=0, what="the worker heartbeat")
        except Exception:
            self.sweeper.observing_since = None
            logger.exception("Worker heartbeat of %s failed; next try in %ss",
                             self.hostname, settings.HEARTBEAT_INTERVAL)
            return
        if self.sweeper.observing_since is None:
            self.sweeper.observing_since = timezone.now()
        if time.monotonic() < self.next_sweep:
            return
        self.next_sweep = time.monotonic() + float(settings.SWEEP_INTERVAL)
        try:
            if db.run(self.is_leader, retry_for=0, what="the leader check"):
                db.run(self.sweeper.sweep_once, retry_for=0, what="the sweep")
        except Exception:
            logger.exception("Sweep from worker %s failed; next one in %ss", self.hostname, settings.SWEEP_INTERVAL)

    def beat(self, stopped: bool = False) -> None:
        """Write the row: alive now, holding these tasks; ``stopped``: the last write, holding nothing.

        ``started_at`` is written every time: a restarted worker with the same
        name and pid (a container restart) must not pass for the old one.
        """
        now = timezone.now()
        active, reserved = ([], []) if stopped else held_task_ids()
        values = dict(last_seen=now, started_at=self.started_at, active_task_ids=active,
                      reserved_task_ids=reserved, stopped_at=now if stopped else None,
                      queues=consumed_queues(self.worker))
        if not WorkerHeartbeat.objects.filter(hostname=self.hostname, pid=self.pid).update(**values):
            WorkerHeartbeat.objects.create(hostname=self.hostname, pid=self.pid, **values)

    def is_leader(self) -> bool:
        now = timezone.now()
        if liveness.leader(now) == (self.hostname, self.pid):
            WorkerHeartbeat.objects.filter(last_seen__lt=now - FORGET_AFTER).delete()
            return True
        return False

    def drain(self) -> None:
        """The worker stopped consuming; keep beating (its pool still runs bodies) until ``stop``."""
        if not self.stopping.is_set():
            self.draining = True
            logger.info("Worker %s is draining: it keeps its heartbeat until its pool is empty", self.hostname)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating and mark this worker stopped, so peers judge what it left at once."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)
        try:
            db.run(self.beat, True, retry_for=0, what="the last heartbeat")
        except Exception:
            logger.exception("Could not mark worker %s as stopped", self.hostname)


class LivenessStep(bootsteps.StartStopStep):
    """Worker bootstep: runs the liveness thread while the worker runs (CLI and embedded workers alike).

    Started after the pool, so the thread is not running when the pool forks
    its first children; so also stopped before the pool: a warm stop only
    starts the drain, ``on_worker_shutdown`` ends it (module docstring).
    """

    label = "dyrygent-liveness"
    requires = ("celery.worker.components:Pool",)

    def include_if(self, w: WorkController) -> bool:
        return bool(settings.LIVENESS) and MAIN_PID == os.getpid()

    # The stubs say create() returns None; Celery keeps what it returns as the object it starts and stops.
    def create(self, w: WorkController) -> LivenessThread:  # type: ignore[override]
        global _thread
        assert MAIN_PID is not None, "include_if() only lets the step in once on_worker_init set MAIN_PID"
        _thread = LivenessThread(w.hostname, MAIN_PID, w)  # type: ignore[attr-defined]  # hostname: not in the stubs
        return _thread

    def stop(self, w: WorkController) -> None:
        if self.obj is not None:
            self.obj.drain()

    def terminate(self, w: WorkController) -> None:
        if self.obj is not None:
            self.obj.stop()


def on_worker_shutdown(sender: WorkController | None = None, **kwargs: Any) -> None:
    """Every step has stopped, the pool's last body included: the worker is gone now."""
    if _thread is not None:
        _thread.stop()


def on_worker_init(sender: WorkController | None = None, **kwargs: Any) -> None:
    """Before the pool forks: note the main pid and add the liveness step to this worker's blueprint."""
    global MAIN_PID
    if settings.LIVENESS and sender is not None:
        MAIN_PID = os.getpid()
        sender.app.steps["worker"].add(LivenessStep)


def connect() -> None:
    """Idempotent: dispatch_uid keeps one connection per receiver."""
    celery_signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="django_dyrygent.worker_init")
    celery_signals.worker_shutdown.connect(
        on_worker_shutdown, weak=False, dispatch_uid="django_dyrygent.worker_shutdown"
    )

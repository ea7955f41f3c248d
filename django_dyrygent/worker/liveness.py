"""Liveness decisions: is the worker of a node alive, and does anyone still hold its task?

Plain functions over ``WorkerHeartbeat`` rows and a broker probe; they change
nothing. ``recovery.py`` acts on their verdicts under the workflow lock.

The rules, and why:

* A STARTED node names its worker (host name and main-process pid, written
  by ``task_prerun``). The worker is **dead** when its heartbeat is older than
  DYRYGENT_WORKER_TIMEOUT, when it restarted after the node started (same
  name and pid, later ``started_at``: a container restart), or, when no beat
  of it was ever seen, when the node started longer ago than the timeout.
  It is **gone** once it marked itself stopped (``stopped_at``): it does so
  only after its pool drained, so a body still running in a warm shutdown
  keeps its worker alive and listed.
* A worker that is alive but has not listed the task (active, prefetched or
  scheduled) in a beat taken well after the node started **lost its
  outcome** (the report could not be written, or the pool child vanished
  without a WorkerLostError).
* A QUEUED (or RETRY) node is **lost** only when no live worker holds its
  task *and* its queue was empty in a broker probe taken after it was
  published and before every live worker's last beat. A message waiting in a
  healthy backlog is in the queue, so it is never republished; a message a
  dead worker had prefetched is out of the queue and in nobody's list. When
  the broker cannot tell (no probe, a transport without message counts), or
  the queue never empties, only DYRYGENT_QUEUED_LOST_AFTER (long) applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from ..conf import settings
from ..models import WorkerHeartbeat, WorkflowNode
from ..states import NodeState


def grace() -> timedelta:
    """How long after an event a beat must be taken to count as having seen it."""
    return timedelta(seconds=2 * float(settings.HEARTBEAT_INTERVAL))


@dataclass
class Snapshot:
    """Every heartbeat row, read once per sweep, and what they say."""

    now: datetime
    beats: dict[tuple[str, int], WorkerHeartbeat] = field(default_factory=dict)
    #: Since when the judge has been able to see beats without a break (its own
    #: beats succeeded). A worker is only found silent over time the judge saw:
    #: after a database outage every worker missed its beats, none is dead for it.
    observing_since: datetime | None = None

    @classmethod
    def load(cls, now: datetime, observing_since: datetime | None = None) -> Snapshot:
        beats = {(b.hostname, b.pid): b for b in WorkerHeartbeat.objects.all()}
        return cls(now=now, beats=beats, observing_since=observing_since)

    def silent_since(self, moment: datetime) -> datetime:
        """``moment``, or the start of the judge's observation if that is later."""
        if self.observing_since is not None and self.observing_since > moment:
            return self.observing_since
        return moment

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=float(settings.WORKER_TIMEOUT))

    def live(self) -> list[WorkerHeartbeat]:
        return [b for b in self.beats.values()
                if b.stopped_at is None and self.silent_since(b.last_seen) >= self.now - self.timeout]

    def held(self) -> set[str]:
        """Task ids some live worker runs, prefetched or scheduled at its last beat."""
        ids: set[str] = set()
        for beat in self.live():
            ids |= beat.held_task_ids
        return ids



def leader(now: datetime) -> tuple[str, int] | None:
    """The worker that sweeps, as ``(hostname, pid)``: the oldest live one (ties: lowest id).

    Live: it beat within DYRYGENT_WORKER_TIMEOUT and has not marked itself
    stopped (a draining worker does not sweep). One query for one row, run by
    every worker before each sweep (``heartbeat.LivenessThread``).
    """
    live = WorkerHeartbeat.objects.filter(
        last_seen__gte=now - timedelta(seconds=float(settings.WORKER_TIMEOUT)), stopped_at__isnull=True,
    )
    return live.order_by("started_at", "id").values_list("hostname", "pid").first()


def started_verdict(node: WorkflowNode, snapshot: Snapshot, held: set[str]) -> str | None:
    """Why a STARTED node must be taken from its worker, or None while it may still run."""
    if not node.worker_hostname or node.worker_pid is None or node.started_at is None:
        return None  # started by a worker without liveness: only its timeout applies
    if node.task_id in held:
        return None
    beat = snapshot.beats.get((node.worker_hostname, node.worker_pid))
    who = f"{node.worker_hostname} (pid {node.worker_pid})"
    if beat is None:
        if snapshot.silent_since(node.started_at) < snapshot.now - snapshot.timeout:
            return f"worker lost: {who} never sent a heartbeat"
        return None
    if beat.started_at > node.started_at:
        return f"worker lost: {who} restarted after the node started"
    if beat.stopped_at is not None:
        return f"worker lost: {who} stopped at {beat.stopped_at.isoformat()} without reporting it"
    if beat.last_seen < snapshot.now - snapshot.timeout:
        if snapshot.silent_since(beat.last_seen) < snapshot.now - snapshot.timeout:
            return f"worker lost: no heartbeat from {who} since {beat.last_seen.isoformat()}"
        return None  # silent only while the judge could not see either: wait for fresh beats
    if beat.last_seen > node.started_at + grace():
        return f"outcome lost: {who} is alive but no longer runs the task"
    return None


@dataclass
class QueueProbe:
    """Message counts of queues, taken at ``taken_at`` (None for a queue the broker could not count)."""

    taken_at: datetime
    sizes: dict[str, int | None]


def probe_queues(app: Celery, queues: Iterable[str], now: datetime) -> QueueProbe:
    """Count the messages waiting in each queue with a passive declare (Redis, AMQP, file system).

    A queue the broker does not know holds nothing (Redis drops an empty
    list's key); any other error leaves the count unknown (None).
    """
    sizes: dict[str, int | None] = {}
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in queues:
                try:
                    # The stubs type the channel as kombu's abstract StdChannel; every transport's has queue_declare.
                    sizes[name] = channel.queue_declare(  # type: ignore[attr-defined]
                        queue=name, passive=True
                    ).message_count
                except ChannelError:
                    sizes[name] = 0
                    channel = conn.channel()  # AMQP closes the channel after a 404
                except Exception:  # a transport without message counts
                    sizes[name] = None
    except Exception:
        sizes = dict.fromkeys(queues)
    return QueueProbe(taken_at=now, sizes=sizes)


def queue_of(
    app: Celery, node: WorkflowNode, tasks_options: dict[str, Any] | None, routes: dict[str, str] | None = None,
) -> str:
    """The queue a node's message goes to: its own option, the workflow's, the routes, the default."""
    signature = node.signature or {}
    return route(app, (signature.get("options") or {}).get("queue"), (tasks_options or {}).get("queue"),
                 node.task_name or signature.get("task", ""), routes)


def route(app: Celery, own: Any, workflow: Any, task: str, routes: dict[str, str] | None = None) -> str:
    """``queue_of`` from the parts the sweep reads in SQL: the node's and the workflow's queue option, the task.

    ``routes`` (task name -> queue) keeps what the router said for the
    caller's batch: the sweep asks about every kind of queued node every
    few seconds, most of them the same few tasks, and each routing costs
    Python in the worker's main process, which also hands tasks to the pool.
    """
    queue = own or workflow
    if queue:
        name = getattr(queue, "name", queue)
        return name or app.conf.task_default_queue
    if routes is not None and task in routes:
        return routes[task]
    queue = app.amqp.router.route({}, task).get("queue")
    found = getattr(queue, "name", queue) or app.conf.task_default_queue
    if routes is not None:
        routes[task] = found
    return found


def lost_before(snapshot: Snapshot, probe: QueueProbe | None) -> datetime:
    """Only a node waiting since before this moment can ``waiting_verdict`` find lost.

    The sweep filters on it in SQL, so a node queued since the previous probe
    (most of a healthy backlog) is not even read. Past the long bound any
    node; before the probe only when the probe can tell: some queue was empty
    and every live worker beat after it (else no node of it can be lost yet).
    """
    bound = snapshot.now - timedelta(seconds=float(settings.QUEUED_LOST_AFTER))
    if probe is None or 0 not in probe.sizes.values():
        return bound
    if any(b.last_seen <= probe.taken_at for b in snapshot.live()):
        return bound
    return max(bound, probe.taken_at)


def waiting_verdict(
    node: WorkflowNode, snapshot: Snapshot, held: set[str], probe: QueueProbe | None, queue: str
) -> str | None:
    """Why a QUEUED / RETRY node's message is taken as lost, or None while it may still arrive."""
    if node.task_id in held:
        return None
    since = node.queued_at if node.state == NodeState.QUEUED else node.started_at
    if since is None:
        return None
    bound = timedelta(seconds=float(settings.QUEUED_LOST_AFTER))
    if since < snapshot.now - bound:
        return f"message lost: no live worker holds it after {bound.total_seconds():g}s"
    if probe is None or since >= probe.taken_at or probe.sizes.get(queue) != 0:
        return None
    if any(b.last_seen <= probe.taken_at for b in snapshot.live()):
        return None  # a live worker may have fetched it since its last beat
    return f"message lost: its queue {queue!r} is empty and no live worker holds it"

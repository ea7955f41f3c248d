"""The soak's faults: a schedule derived from the seed, and the servers and workers they hit.

``schedule(seed, seconds)``: one fault every 10 to 30 s, kinds drawn from a
shuffled bag of all of them (so a 3-minute run sees nearly every kind), each
with its own parameters (which worker, which pool child, how long it lasts).
Everything is drawn from the seed, so a failing seed replays the same faults
at the same offsets.

``Cluster``: the soak's PostgreSQL cluster, redis-server and workers; it
injects a fault, ends it when its time is up, and supervises the workers like
systemd's ``Restart=always`` (a worker that died is started again, under the
same name, a second later).
"""

import os
import random
import signal
import time
from dataclasses import dataclass, field

from tests.reliability import harness

KINDS = ("kill9_worker", "kill9_child", "sigstop", "pg_terminate", "pg_restart", "redis_restart", "scale")
#: Liveness of the soak's workers (seconds): the fault suite's short settings, ticks every 5 s.
WORKER_TIMEOUT = 6.0
WORKER_ENV = {
    **harness.FAST,
    "DYRYGENT_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
    "DYRYGENT_TICK_INTERVAL": "5",
    # A node hit by several faults in a row still ends the way its body decides.
    "DYRYGENT_LOST_WORKER_RETRIES": "3",
}


@dataclass
class Fault:
    at: float  # seconds after the start of the traffic
    kind: str
    target: int  # which of the two workers
    child: int  # which pool child (modulo how many there are)
    hold: float  # how long the fault lasts (stopped, down, scaled up), or the restart delay
    started: float | None = None  # monotonic time of the injection
    ended: float | None = None
    detail: str = ""
    snapshot: dict | None = None  # active nodes at the injection: pk -> (state, task_id)
    recovered: float | None = None  # seconds from the injection until each of them moved on
    pids: list = field(default_factory=list)
    wall_start: float = 0.0  # wall-clock times, to compare with the bodies' records
    wall_end: float = 0.0


def schedule(seed, seconds):
    rng = random.Random(f"{seed}-faults")
    faults, bag, at = [], [], rng.uniform(10, 30)
    while at < seconds:
        if not bag:
            bag = list(KINDS)
            rng.shuffle(bag)
        kind = bag.pop()
        hold = {
            "kill9_worker": rng.uniform(1, 6),  # restarted by the supervisor after this
            "sigstop": WORKER_TIMEOUT + rng.uniform(2, 3.5),  # past the liveness window, short of the next fault
            "pg_restart": rng.uniform(0.5, 5),  # down between stop and start
            "redis_restart": rng.uniform(0.5, 4),
            "scale": rng.uniform(15, 40),  # a third worker up this long, then SIGTERM (a drain)
        }.get(kind, 0.0)
        faults.append(Fault(at, kind, target=rng.randrange(2), child=rng.randrange(8), hold=round(hold, 2)))
        at += rng.uniform(10, 30)
    return faults


class Cluster:
    """The servers and workers of one soak, and the faults done to them."""

    def __init__(self, base, pg, redis, database, log):
        self.base = base
        self.pg = pg
        self.redis = redis
        self.database = database
        self.log = log
        self.workers = [self._worker("w1"), self._worker("w2")]
        self.extra = None  # the scaled-up worker, while there is one
        self.draining = []  # workers sent SIGTERM, not yet exited
        self.down_until = {}  # worker name -> monotonic time before which the supervisor leaves it dead
        self.pg_down = self.redis_down = False
        self.stopped = set()  # workers under SIGSTOP
        self.restarts = {"supervisor": 0, "exited by itself": 0}
        self.killed = set()  # workers this soak killed and the supervisor has not restarted yet

    def _worker(self, name):
        return harness.Worker(self.base, name, self.pg.url(self.database), self.redis.url, concurrency=2,
                              env={**WORKER_ENV, "DYRYGENT_CHAOS_RUNS": os.environ["DYRYGENT_CHAOS_RUNS"]},
                              include=("tests.chaos.tasks",))

    def all_workers(self):
        return [*self.workers, *([self.extra] if self.extra else []), *self.draining]

    # -- faults ------------------------------------------------------------------------

    def inject(self, fault):
        worker = self.workers[fault.target]
        fault.started = time.monotonic()
        fault.wall_start = fault.wall_end = time.time()
        kind = fault.kind
        if kind == "kill9_worker":
            fault.pids = [worker.pid, *worker.children()]
            worker.kill(signal.SIGKILL)
            self.killed.add(worker.name)
            self.down_until[worker.name] = time.monotonic() + fault.hold
            fault.detail = f"{worker.name} (pids {fault.pids}) killed, restarted after {fault.hold:.1f}s"
        elif kind == "kill9_child":
            children = worker.children()
            if children:
                victim = children[fault.child % len(children)]
                os.kill(victim, signal.SIGKILL)
                fault.pids = [victim]
                fault.detail = f"pool child {victim} of {worker.name}"
            else:
                fault.detail = f"{worker.name} had no pool child"
        elif kind == "sigstop":
            fault.pids = [worker.pid, *worker.children()]
            os.killpg(worker.pid, signal.SIGSTOP)
            self.stopped.add(worker)
            fault.detail = f"{worker.name} (pids {fault.pids}) stopped for {fault.hold:.1f}s"
        elif kind == "pg_terminate":
            fault.detail = f"{self.pg.terminate_backends(self.database)} backends terminated"
        elif kind == "pg_restart":
            self.pg.stop()
            self.pg_down = True
            fault.detail = f"PostgreSQL down {fault.hold:.1f}s"
        elif kind == "redis_restart":
            self.redis.stop()
            self.redis_down = True
            fault.detail = f"redis-server down {fault.hold:.1f}s, queue lost"
        elif kind == "scale":
            if self.extra is None:
                self.extra = self._worker("w3").start()
                fault.detail = f"w3 started, SIGTERM after {fault.hold:.1f}s"
            else:
                fault.detail = "w3 already up"
        self.log(f"fault {kind}: {fault.detail}")

    def end(self, fault):
        """End a fault whose time is up (the ones that last); True once ended."""
        kind = fault.kind
        if kind == "sigstop":
            self._resume(self.workers[fault.target])
        elif kind == "pg_restart" and self.pg_down:
            self.pg.start()
            self.pg_down = False
        elif kind == "redis_restart" and self.redis_down:
            self.redis.start()
            self.redis_down = False
        elif kind == "scale" and self.extra is not None:
            # Scale down like an orchestrator: SIGTERM to the main process, a warm shutdown.
            fault.pids = [self.extra.pid, *self.extra.children()]
            self.extra.proc.send_signal(signal.SIGTERM)
            self.draining.append(self.extra)
            self.extra = None
        fault.ended = time.monotonic()
        fault.wall_end = time.time()
        self.log(f"end of {kind}")

    def _resume(self, worker):
        if worker in self.stopped:
            try:
                os.killpg(worker.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped.discard(worker)

    def supervise(self):
        """Start again a worker that died (after its restart delay), like systemd's Restart=always."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.alive() or now < self.down_until.get(worker.name, 0):
                continue
            if worker.proc is not None:
                if worker.name in self.killed:
                    self.killed.discard(worker.name)
                else:
                    self.restarts["exited by itself"] += 1
                    self.log(f"{worker.name} exited by itself (rc {worker.proc.returncode}); restarting")
            self.restarts["supervisor"] += 1
            worker.start()
        self.draining = [w for w in self.draining if w.alive()]

    def restore(self):
        """Undo whatever fault is still on: before the drain, and in ``finally``."""
        for worker in list(self.stopped):
            self._resume(worker)
        if self.pg_down:
            self.pg.start()
            self.pg_down = False
        if self.redis_down:
            self.redis.start()
            self.redis_down = False
        self.down_until.clear()

    def stop_workers(self):
        for worker in self.all_workers():
            self._resume(worker)
            harness.stop_process(worker.proc, signal.SIGTERM, timeout=30)
        self.extra = None
        self.draining = []

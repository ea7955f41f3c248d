"""The chaos soak: mixed traffic on two prefork workers, a random fault every 10-30 s, then a checker.

Run it with ``make chaos`` (3 minutes, fixed seed) or ``make chaos-long``
(30 minutes, random seed), or directly::

    python -m tests.chaos.soak --minutes 3 --seed 1234

It starts its own PostgreSQL cluster and redis-server on free loopback ports
(``tests/reliability/harness.py``), two workers (``-c 2``) supervised like
systemd's ``Restart=always``, submits the traffic of ``traffic.py`` and injects
the faults of ``faults.py`` (both derived from the seed, printed first: a
failing seed replays the same schedule), then stops the faults, lets
everything drain (bounded), stops the workers and runs ``checker.py``. Exit
status 0 when the checker found nothing; the summary is printed and kept in
``<dir>/summary.txt``.
"""

import argparse
import heapq
import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from tests.chaos import faults as chaos_faults
from tests.reliability import harness

DATABASE = "dyrygent_chaos"
LASTING = ("sigstop", "pg_restart", "redis_restart", "scale")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Soak:
    def __init__(self, seed, seconds, base, pg, redis, drain):
        from tests.chaos import traffic

        self.seed = seed
        self.seconds = seconds
        self.drain = drain
        self.specs = traffic.plan(seed, seconds)
        self.faults = chaos_faults.schedule(seed, seconds)
        self.cluster = chaos_faults.Cluster(base, pg, redis, DATABASE, self.log)
        self.runs_dir = Path(os.environ["DYRYGENT_CHAOS_RUNS"])
        self.queue = []
        self.counter = itertools.count()
        self.t0 = time.monotonic()
        self.op_errors = Counter()

    def log(self, message):
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    def later(self, when, name, func):
        heapq.heappush(self.queue, (when, next(self.counter), name, func))

    # -- traffic -----------------------------------------------------------------------

    def submit(self, spec):
        from django_dyrygent.models import Workflow
        from tests.chaos import traffic

        pk = Workflow.objects.filter(name=spec.name).values_list("pk", flat=True).first()
        if pk is None:  # not saved by an earlier attempt that failed after its commit
            pk = traffic.build(spec).apply_async().pk
        spec.pk = pk
        now = time.monotonic()
        if spec.wait and spec.wait["outcome"] in ("signal", "complete"):
            spec.wait_done = False
            self.later(now + spec.wait["delay"], f"{spec.wait['outcome']} {spec.name}", lambda: self.signal(spec))
        if spec.script == "none":
            spec.script_done = True
        elif spec.script == "pause":
            self.later(now + spec.delay, f"pause {spec.name}", lambda: self.pause(spec))
        elif spec.script in ("cancel", "cancel-retry"):
            self.later(now + spec.delay, f"cancel {spec.name}", lambda: self.cancel(spec))
        elif spec.script == "retry":
            self.later(now + spec.delay, f"retry {spec.name}", lambda: self.retry(spec, when_final=False))
        elif spec.script == "heal":
            self.later(now + 1, f"heal {spec.name}", lambda: self.retry(spec, when_final=True))

    def _workflow(self, spec):
        from django_dyrygent.models import Workflow

        return Workflow.objects.get(pk=spec.pk)

    def cancel(self, spec):
        from tests.chaos import traffic

        spec.results.setdefault("cancel", []).append(self._workflow(spec).cancel(reason=traffic.CANCEL_REASON))
        if spec.script == "cancel-retry":
            self.later(time.monotonic() + 1, f"retry {spec.name}", lambda: self.retry(spec, when_final=True))
        else:
            spec.script_done = True

    def pause(self, spec):
        wf = self._workflow(spec)
        spec.results.setdefault("pause", []).append(wf.pause(reason="chaos pause"))
        # PAUSED without this call: an earlier attempt committed, then raised (a connection lost).
        if spec.results["pause"][-1] or wf.state == wf.State.PAUSED:
            self.later(time.monotonic() + spec.hold, f"resume {spec.name}", lambda: self.resume(spec))
        else:
            spec.script_done = True

    def resume(self, spec):
        spec.results.setdefault("resume", []).append(self._workflow(spec).resume(reason="chaos resume"))
        spec.script_done = True

    def signal(self, spec):
        """Complete the wait once it is waiting (retried each second), then once more: that one must do nothing."""
        from django_dyrygent.models import WorkflowNode
        from django_dyrygent.states import NodeKind

        wf = self._workflow(spec)
        if spec.wait["outcome"] == "signal":
            done = wf.signal(spec.wait["name"])
        else:
            done = int(WorkflowNode.objects.get(workflow_id=wf.pk, kind=NodeKind.WAIT).complete())
        results = spec.results.setdefault("signals", [])
        results.append(done)
        if any(results[:-1]) or (not done and wf.is_final):  # the repeat after the success, or too late
            spec.wait_done = True
            return None
        if done:
            return 0.3  # once more: it must complete nothing
        return 1.0

    def retry(self, spec, when_final):
        wf = self._workflow(spec)
        if when_final and not wf.is_final:
            return 1.0  # look again in a second
        if spec.script == "heal":
            if wf.state != wf.State.FAILURE:
                spec.results["heal"] = f"found {wf.state}, not FAILURE"
            for label, _, mode, _ in spec.nodes:
                if mode == "flaky":
                    (self.runs_dir / f"{label}.heal").write_text("")
        spec.results.setdefault("retry", []).append(wf.retry())
        spec.script_done = True
        return None

    # -- faults ------------------------------------------------------------------------

    def active_nodes(self):
        from django_dyrygent.models import WorkflowNode
        from django_dyrygent.states import NODE_ACTIVE, NodeKind

        rows = WorkflowNode.objects.filter(kind=NodeKind.TASK, state__in=NODE_ACTIVE)
        return {pk: (state, task_id) for pk, state, task_id in rows.values_list("pk", "state", "task_id")}

    def inject(self, fault):
        try:
            fault.snapshot = self.active_nodes()
        except Exception as exc:
            self.log(f"active nodes before {fault.kind} not read ({exc!r}): its recovery is not measured")
            self.reset_connection()
            fault.snapshot = None
        try:
            self.cluster.inject(fault)
        except Exception as exc:
            fault.detail += f" (injection failed: {exc!r})"
            self.log(f"fault {fault.kind} could not be injected: {exc!r}")
            if fault.started is None:
                fault.started = time.monotonic()
        if fault.kind in LASTING:
            self.later(fault.started + fault.hold, f"end {fault.kind}", lambda: self.cluster.end(fault))
        if fault.snapshot:
            self.later(time.monotonic() + 0.5, f"recovery {fault.kind}", lambda: self.measure(fault))

    def measure(self, fault):
        """Recovered once every node active at the injection moved on (started, finished, re-run)."""
        from django_dyrygent.models import WorkflowNode

        rows = WorkflowNode.objects.filter(pk__in=list(fault.snapshot)).values_list("pk", "state", "task_id")
        if any(fault.snapshot[pk] == (state, task_id) for pk, state, task_id in rows):
            return 0.5
        fault.recovered = time.monotonic() - fault.started
        return None

    # -- the loop ----------------------------------------------------------------------

    def reset_connection(self):
        from django.db import connections

        for conn in connections.all():
            try:
                conn.close()
            except Exception:
                pass

    def step(self, now):
        while self.queue and self.queue[0][0] <= now:
            _, _, name, func = heapq.heappop(self.queue)
            try:
                again = func()
            except Exception as exc:
                self.op_errors[type(exc).__name__] += 1
                if self.op_errors[type(exc).__name__] <= 3:
                    self.log(f"{name}: {exc!r}; again in 1s")
                self.reset_connection()
                again = 1.0
            if again:
                self.later(now + again, name, func)
        self.cluster.supervise()

    def finished(self):
        from django_dyrygent.models import Workflow, WorkflowNode
        from django_dyrygent.states import NODE_ACTIVE, WORKFLOW_ACTIVE, WORKFLOW_FINAL

        if not all(s.pk is not None and s.script_done and s.wait_done for s in self.specs):
            return False
        if Workflow.objects.filter(state__in=WORKFLOW_ACTIVE).exists():
            return False
        # Callbacks (and late nodes) of ended workflows too.
        waiting = [*NODE_ACTIVE, WorkflowNode.State.PENDING]
        return not WorkflowNode.objects.filter(state__in=waiting, workflow__state__in=WORKFLOW_FINAL).exists()

    def run(self):
        cluster = self.cluster
        cluster.supervise()
        for worker in cluster.workers:
            harness.wait_for(lambda w=worker: self._beating(w), 120, what=f"{worker.name} ready")
        self.t0 = start = time.monotonic()
        self.log(f"seed {self.seed}: {len(self.specs)} workflows, {len(self.faults)} faults planned: "
                 + ", ".join(f"{f.at:.0f}s {f.kind}" for f in self.faults))
        for spec in self.specs:
            self.later(start + spec.at, f"submit {spec.name}", lambda s=spec: self.submit(s))
        for fault in self.faults:
            self.later(start + fault.at, f"fault {fault.kind}", lambda f=fault: self.inject(f))
        while time.monotonic() < start + self.seconds:
            self.step(time.monotonic())
            time.sleep(0.1)
        # Drain: no new fault; end the ones still on; let every workflow finish (bounded).
        self.queue = [item for item in self.queue if not item[2].startswith("fault ")]
        heapq.heapify(self.queue)
        for item in [item for item in self.queue if item[2].startswith("end ")]:
            self.queue.remove(item)
            try:
                item[3]()
            except Exception as exc:
                self.log(f"{item[2]}: {exc!r}")
        heapq.heapify(self.queue)
        cluster.restore()
        self.log(f"traffic over; draining (at most {self.drain:.0f}s)")
        deadline = time.monotonic() + self.drain
        drained, last = False, 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            self.step(now)
            if now - last >= 2:
                last = now
                try:
                    drained = self.finished()
                except Exception:
                    self.reset_connection()
                if drained:
                    break
            time.sleep(0.1)
        self.log("drained" if drained else "NOT drained within the bound")
        cluster.stop_workers()
        return drained

    def _beating(self, worker):
        from django_dyrygent.models import WorkerHeartbeat

        try:
            return WorkerHeartbeat.objects.filter(hostname=worker.hostname).exists()
        except Exception:
            self.reset_connection()
            return False

    def summary(self, drained, violations, report):
        from django_dyrygent.models import Workflow, WorkflowNode
        from django_dyrygent.states import NodeKind

        lines = [f"chaos soak, seed {self.seed}, {self.seconds / 60:g} min "
                 f"(replay: python -m tests.chaos.soak --seed {self.seed} --minutes {self.seconds / 60:g})"]
        shapes = Counter(s.shape for s in self.specs)
        scripts = Counter(s.script for s in self.specs)
        lines.append(f"workflows: {len(self.specs)} ({dict(shapes)}); scripts {dict(scripts)}; "
                     f"final states {dict(report['final states'])}")
        tasks = WorkflowNode.objects.filter(kind=NodeKind.TASK).count()
        bodies = sum(1 for _ in self.runs_dir.glob("*.start"))
        lines.append(f"nodes: {tasks} task nodes, {bodies} body runs, {Workflow.objects.count()} workflow rows")
        kinds = Counter(f.kind for f in self.faults if f.started is not None)
        lines.append(f"faults: {sum(kinds.values())} ({dict(kinds)}); worker restarts {self.cluster.restarts}")
        for kind in chaos_faults.KINDS:
            measured = [f for f in self.faults if f.kind == kind and f.started is not None]
            times = [f.recovered for f in measured if f.recovered is not None]
            unmeasured = sum(1 for f in measured if not f.snapshot)
            open_ = sum(1 for f in measured if f.snapshot and f.recovered is None)
            figure = f"p50 {percentile(times, 50):.1f}s, p99 {percentile(times, 99):.1f}s" if times else "-"
            lines.append(f"  recovery after {kind}: {figure} (n={len(times)}; nothing active {unmeasured}; "
                         f"not recovered {open_})")
        lines.append(f"duplicates by cause: {dict(report['duplicates']) or 'none'}")
        lines.append(f"duplicates by (cause, fault before): {dict(report['duplicates by fault']) or 'none'}")
        lines.append(f"retry() re-runs: {report['retry() re-runs']}; allowed late starts: "
                     f"{dict(report['allowed late starts']) or 'none'}; gave up after lost workers: "
                     f"{report['gave up after lost workers']}")
        lines.append(f"client operation errors (retried): {dict(self.op_errors) or 'none'}")
        lines.append("drained: yes" if drained else "drained: NO")
        lines.append(f"violations: {len(violations)}")
        lines += [f"  {v}" for v in violations[:50]]
        return lines


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", dest="minutes", type=float, default=3.0, help="length of the traffic")
    parser.add_argument("--seed", dest="seed", type=int, default=None, help="seed (default: random, printed)")
    parser.add_argument("--drain", dest="drain", type=float, default=300.0,
                        help="seconds allowed for every workflow to end after the traffic")
    parser.add_argument("--dir", dest="dir", default=None,
                        help="working directory (default: $DYRYGENT_TEST_DIR/chaos or /tmp/dyrygent-tests/chaos)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # `timeout`, CI: stop the servers and workers too
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"chaos soak: seed {seed}, {args.minutes:g} minutes", flush=True)
    root = Path(args.dir or Path(os.environ.get("DYRYGENT_TEST_DIR", "/tmp/dyrygent-tests")) / "chaos")
    base = root / f"seed-{seed}"
    shutil.rmtree(base, ignore_errors=True)
    (base / "runs").mkdir(parents=True)
    pg = harness.Postgres(base / "pg")
    redis = harness.Redis(base / "redis")
    os.environ.update(
        DATABASE_URL=pg.url(DATABASE), CELERY_BROKER_URL=redis.url, CELERY_RESULT_BACKEND="django-db",
        DJANGO_SETTINGS_MODULE="tests.settings", DYRYGENT_CHAOS_RUNS=str(base / "runs"),
        DYRYGENT_TEST_DIR=str(base / "client"), PYTHONPATH=str(harness.ROOT),
    )
    soak = None
    try:
        pg.init()
        pg.start()
        pg.sql(f"CREATE DATABASE {DATABASE}")
        subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=harness.ROOT,
                       env=os.environ, check=True, timeout=300)
        redis.start()
        import django

        django.setup()
        import tests.celery_app  # noqa: F401  (the current app: the soak's broker)
        from tests.chaos import checker

        soak = Soak(seed, args.minutes * 60, base, pg, redis, args.drain)
        drained = soak.run()
        soak.reset_connection()
        violations, report = checker.check(soak.specs, soak.faults, base / "runs")
        lines = soak.summary(drained, violations, report)
        print("\n".join(lines), flush=True)
        (base / "summary.txt").write_text("\n".join(lines) + "\n")
        return 0 if drained and not violations else 1
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        if soak is not None:
            soak.cluster.restore()
            soak.cluster.stop_workers()
        redis.stop()
        pg.stop(mode="immediate")
        if pg.as_root:  # its own directory under /tmp (see harness.Postgres)
            shutil.rmtree(pg.base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

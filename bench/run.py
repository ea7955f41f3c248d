#!/usr/bin/env python
"""Time django-dyrygent against native Celery canvas and celery-dyrygent on one real worker.

One run starts a ``celery worker`` subprocess (prefork, concurrency 2,
django_dyrygent installed so its worker hooks are active) that consumes the
tasks of all three systems, measures the wall-clock time from submitting a
workflow to seeing it complete, and prints medians and ratios:

1. a chain of 20 no-op tasks;
2. a group of 100 no-ops followed by one task (a chord);
3. 10 chained groups of 100 (1,000 nodes). Native Celery runs in a child
   process with a timeout and a memory cap, so a canvas blow-up is reported
   as "timeout"/"error" instead of hanging the run.

It also reports the size of the first message each system publishes, the
number of messages and bytes the submitting process publishes, and the SQL
statements our engine runs per node in the worker. With ``--sqlite`` our
engine is measured a second time on SQLite + the kombu file-system broker.
The worker is always killed at the end, and the whole run has a time limit.

Usage (from the repository root, in the benchmark's virtualenv):
    python bench/run.py [--reps 3] [--sqlite] [--json results.json]
"""

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

NATIVE, CELERY_DYRYGENT, OURS = "native", "celery-dyrygent", "django-dyrygent"
CASES = {
    "chain20": ("chain of 20 no-ops", 20),
    "chord100": ("group of 100 + 1 (chord)", 101),
    "groups10x100": ("10 chained groups of 100", 1000),
}
# celery-dyrygent's fastest tick policy: set_retry_policy("random", min, max)
# draws randint(min, max) seconds and asserts 0 < min <= max, so 1 s is the floor.
CD_RETRY_POLICY = ("random", 1, 1)
COUNTER_URL = "redis://127.0.0.1:6379/4"
MEMORY_CAP = 4 * 1024**3  # bytes of address space per process, worker and native child alike
DEFAULT_DIR = Path(tempfile.gettempdir()) / "dyrygent-bench"


class Watchdog(BaseException):
    """The run's time limit was reached (BaseException: no library's ``except Exception`` swallows it)."""


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# -- environment ---------------------------------------------------------------------------


def ensure_postgres_database(url):
    """Create the benchmark's PostgreSQL database afresh.

    Afresh, not "if missing": while the app is young its initial migration
    still changes, and an old database would lack the new columns.
    """
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    with psycopg.connect(
        host=cfg["HOST"],
        port=cfg["PORT"] or 5432,
        user=cfg["USER"],
        password=cfg["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{cfg["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')


def setup_django():
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def flush_redis():
    """Empty the benchmark's own Redis databases (broker db 4, result db 5)."""
    import redis
    from django.conf import settings

    for url in (settings.CELERY_BROKER_URL, settings.CELERY_RESULT_BACKEND):
        if url and url.startswith("redis://"):
            redis.Redis.from_url(url).flushdb()


def limit_memory():
    """Cap this process's address space (children inherit it): a canvas blow-up fails, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


class Worker:
    """``celery worker`` subprocess in its own process group; stop() always kills it."""

    def __init__(self, logfile, env):
        self.logfile = Path(logfile)
        self.env = env
        self.proc = None

    def start(self):
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-Q",
            "dyrygent-bench",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{os.getpid()}@%h",
        ]
        with open(self.logfile, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def check_alive(self):
        if self.proc.poll() is not None:
            tail = self.logfile.read_text()[-3000:]
            raise RuntimeError(f"The worker exited with code {self.proc.returncode}:\n{tail}")

    def children(self):
        """Process ids of the prefork pool (for py-spy)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], check=False, capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # setsid(): the worker leads its own group
        try:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: unacked messages go back to the broker
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def worker_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


# -- what the client publishes ---------------------------------------------------------------


class PublishRecorder:
    """Sizes of the messages this process publishes (JSON body + headers, as Celery serialises them)."""

    def __init__(self):
        self.sizes = []
        self.active = False

    def __call__(self, sender=None, body=None, headers=None, **kwargs):
        if not self.active:
            return
        from kombu.utils.json import dumps

        self.sizes.append(len(dumps(body).encode()) + len(dumps(headers or {}).encode()))

    def __enter__(self):
        self.sizes = []
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    def summary(self):
        return {
            "first_message_bytes": self.sizes[0] if self.sizes else None,
            "client_messages": len(self.sizes),
            "client_bytes": sum(self.sizes),
        }


RECORDER = PublishRecorder()
LOADS = []  # 1-minute load average at the start of every case: the machine may be shared


def connect_recorder():
    from celery.signals import before_task_publish

    before_task_publish.connect(RECORDER, weak=False, dispatch_uid="bench.recorder")


class QueryCounter:
    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


# -- the three systems -------------------------------------------------------------------------


def build_canvas(case):
    from celery import chain, chord, group

    from bench.tasks import noop

    if case == "chain20":
        return chain(*[noop.si() for _ in range(20)])
    if case == "chord100":
        return chord(group(noop.si() for _ in range(100)), noop.si())
    if case == "groups10x100":
        return chain(*[group(noop.si() for _ in range(100)) for _ in range(10)])
    if case == "warmup":
        return chain(noop.si(), noop.si())
    raise ValueError(f"unknown case {case!r}")


def run_native(case, timeout, partial):
    canvas = build_canvas(case)
    t0 = time.perf_counter()
    with RECORDER:
        result = canvas.apply_async()
    t1 = time.perf_counter()
    partial.update(submit_seconds=t1 - t0, **RECORDER.summary())
    result.get(timeout=timeout, disable_sync_subtasks=False)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, **partial}


def run_celery_dyrygent(case, timeout, partial):
    from celery_dyrygent.workflows import Workflow as CDWorkflow

    canvas = build_canvas(case)
    t0 = time.perf_counter()
    wf = CDWorkflow()
    wf.set_retry_policy(*CD_RETRY_POLICY)
    wf.add_celery_canvas(canvas)
    with RECORDER:
        result = wf.apply_async()
    t1 = time.perf_counter()
    partial.update(submit_seconds=t1 - t0, **RECORDER.summary())
    result.get(timeout=timeout)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, **partial}


def _worker_queries(client):
    value = client.get("bench:queries") if client else None
    return int(value or 0)


def run_ours(case, timeout, partial, counter_client=None):
    from django.db import connection

    from django_dyrygent.models import Workflow

    canvas = build_canvas(case)
    if counter_client:
        counter_client.delete("bench:queries")
    client_queries = QueryCounter()
    t0 = time.perf_counter()
    wf = Workflow(name=f"bench {case}")
    wf.add_celery_canvas(canvas)
    with RECORDER, connection.execute_wrapper(client_queries):
        wf.apply_async()
    t1 = time.perf_counter()
    partial.update(submit_seconds=t1 - t0, **RECORDER.summary())
    state = wf.wait(timeout=timeout, interval=0.01)
    t2 = time.perf_counter()
    if state != Workflow.State.SUCCESS:
        raise RuntimeError(f"workflow {wf.pk} ended {state}: {wf.error}")
    out = {
        "seconds": t2 - t0,
        **partial,
        "engine_seconds": (wf.finished_at - wf.created_at).total_seconds(),
        "rows": wf.nodes.count(),
        "client_queries": client_queries.count,
    }
    if counter_client:
        time.sleep(0.3)  # the last task's counter is flushed in task_postrun, after the commit we saw
        out["worker_queries"] = _worker_queries(counter_client)
    return out


RUNNERS = {NATIVE: run_native, CELERY_DYRYGENT: run_celery_dyrygent, OURS: run_ours}


def measure(system, case, timeout, **kwargs):
    """One timed run; failures become a row that says so instead of stopping the benchmark."""
    partial = {}  # what is known before the wait: submit time, messages published
    try:
        return RUNNERS[system](case, timeout, partial, **kwargs)
    except Watchdog:
        raise
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
        kind = "timeout" if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc) else "error"
        log(f"  {system} {case}: {kind}: {type(exc).__name__}: {str(exc)[:300]}")
        return {"error": kind, "detail": f"{type(exc).__name__}: {str(exc)[:300]}", **partial}


# -- phases ----------------------------------------------------------------------------------------


def _alarm(seconds):
    def fire(signum, frame):
        raise Watchdog(f"time limit of {seconds}s reached")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(int(seconds))


def run_cases(systems, cases, reps, timeout, counter_client=None, results=None):
    results = results if results is not None else {}
    for case in cases:
        LOADS.append(os.getloadavg()[0])
        log(f"case {case}: {', '.join(systems)} x {reps} (load average {LOADS[-1]:.2f})")
        for rep in range(reps):
            for system in systems:
                kwargs = {"counter_client": counter_client} if system == OURS else {}
                row = results.setdefault(case, {}).setdefault(system, [])
                if row and all("error" in r for r in row) and row[0]["error"] == "timeout":
                    continue  # one timeout is the answer; do not wait for it again
                r = measure(system, case, timeout, **kwargs)
                row.append(r)
                if "seconds" in r:
                    log(f"  rep {rep + 1} {system}: {r['seconds']:.3f}s")
    return results


def native_big_in_child(args, bench_dir):
    """Run native Celery on the 1,000-node canvas in a child process with a timeout."""
    out = bench_dir / "native-big.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        "native-big",
        "--reps",
        str(args.big_reps),
        "--timeout",
        str(args.native_big_timeout),
        "--json",
        str(out),
    ]
    log(f"case groups10x100: native x {args.big_reps} (child process, timeout {args.native_big_timeout}s)")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), start_new_session=True)
    try:
        proc.wait(timeout=args.native_big_timeout * args.big_reps + 30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if out.exists():
        return json.loads(out.read_text())
    if proc.returncode and proc.returncode < 0:
        return [
            {
                "error": "timeout",
                "detail": f"native client killed after the timeout (signal {-proc.returncode})",
            }
        ]
    return [{"error": "error", "detail": f"native child exited {proc.returncode} without a result"}]


def phase_native_big(args):
    """Child process: native Celery, 1,000 nodes; writes its rows to --json as they come."""
    limit_memory()
    import redis
    from django.conf import settings

    import bench.celery_app  # noqa: F401  (configures the app this process publishes with)

    connect_recorder()
    results_db = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
    rows = []
    path = Path(args.json)
    for _ in range(args.reps):
        results_db.flushdb()  # only this case's results from here on: lets us count finished tasks
        _alarm(args.timeout + 15)
        try:
            r = measure(NATIVE, "groups10x100", args.timeout)
        except Watchdog:
            r = {
                "error": "timeout",
                "detail": f"apply_async/get did not return within {args.timeout + 15:.0f}s",
            }
        signal.alarm(0)
        if "error" in r:
            r["tasks_done"] = sum(1 for _ in results_db.scan_iter("celery-task-meta-*", count=1000))
            r["queued"] = redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(
                settings.CELERY_TASK_DEFAULT_QUEUE
            )
            r["detail"] += (
                f" ({r['tasks_done']} of 1000 tasks had stored a result by then; "
                f"{r['queued']} messages waiting in the queue)"
            )
        rows.append(r)
        path.write_text(json.dumps(rows))
        if "error" in r:
            break
        log(f"  native groups10x100: {r['seconds']:.3f}s")
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: pending AsyncResults of a timed-out canvas only add noise


def phase_sqlite(args):
    """Child process: our engine alone on SQLite + the file-system broker."""
    _alarm(args.max_seconds)
    bench_dir = Path(os.environ["BENCH_DIR"])
    shutil.rmtree(bench_dir, ignore_errors=True)
    bench_dir.mkdir(parents=True)
    setup_django()
    import bench.celery_app  # noqa: F401

    connect_recorder()
    worker = Worker(bench_dir / "worker.log", worker_env()).start()
    try:
        measure(OURS, "warmup", 60)
        worker.check_alive()
        results = {}
        for case in CASES:  # written after each case: a watchdog stop keeps what was measured
            run_cases(
                [OURS],
                [case],
                args.big_reps if case == "groups10x100" else args.reps,
                args.timeout,
                results=results,
            )
            Path(args.json).write_text(json.dumps(results))
    finally:
        worker.stop()


def profile_ours(worker, case, seconds_hint, bench_dir):
    """Run one of our workflows under py-spy (both pool processes) and keep the flat profiles."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in worker.children():
        out = bench_dir / f"profile-{case}-{pid}.txt"
        procs.append(
            (
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--duration",
                        str(int(seconds_hint) + 2),
                        "--output",
                        str(out),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
                out,
            )
        )
    time.sleep(1.0)
    r = measure(OURS, case, 120)
    for proc, _out in procs:
        try:
            proc.wait(timeout=seconds_hint + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
    outcome = r.get("seconds", r.get("error"))
    log(f"py-spy profiles of {case} ({outcome}): {', '.join(str(o) for _p, o in procs)}")
    return r


def start_worker(bench_dir, name, extra_env, counter):
    from django.core.management import call_command

    # The tree may have gained a migration since the run began (others work in it too).
    call_command("migrate", verbosity=0, interactive=False)
    env = worker_env(
        {
            "BENCH_COUNT_QUERIES": "1",
            "BENCH_COUNTER_URL": COUNTER_URL,
            "BENCH_WORKER_MEMORY_CAP": "1",
            **extra_env,
        }
    )
    worker = Worker(bench_dir / f"worker-{name}.log", env).start()
    # The first run waits for the worker to boot; it is not measured.
    r = measure(OURS, "warmup", 60, counter_client=counter)
    worker.check_alive()
    log(f"worker {name}: up (first workflow {r.get('seconds', r)})")
    return worker


def main_phase(args):
    bench_dir = Path(args.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _alarm(args.max_seconds)
    ensure_postgres_database(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dy_bench")
    )
    setup_django()
    flush_redis()
    import redis

    import bench.celery_app  # noqa: F401

    connect_recorder()
    counter = redis.Redis.from_url(COUNTER_URL)
    report = {"reps": args.reps, "big_reps": args.big_reps, "machine": machine()}
    cases = [c for c in CASES if c in args.cases]
    small = [c for c in cases if c != "groups10x100"]

    # 1. One worker with Celery's defaults consumes all three systems' tasks.
    worker = start_worker(bench_dir, "default", {}, counter)
    try:
        for system in (NATIVE, CELERY_DYRYGENT):
            r = measure(system, "warmup", 60)
            log(f"warm-up {system}: {r.get('seconds', r)}")
        results = run_cases([NATIVE, CELERY_DYRYGENT, OURS], small, args.reps, args.timeout, counter)
        if "groups10x100" in cases:
            run_cases(
                [CELERY_DYRYGENT, OURS], ["groups10x100"], args.big_reps, args.timeout, counter, results
            )
            worker.check_alive()
            # Last on this worker: a canvas blow-up must not spoil the other measurements.
            results["groups10x100"][NATIVE] = native_big_in_child(args, bench_dir)
        report["results"] = results
    finally:
        worker.stop()
    flush_redis()  # whatever native Celery left queued

    # 2. Our engine again on a worker that keeps its database connections.
    extra = {"BENCH_DB_REUSE_MAX": "1000"}
    if args.query_times:
        qdir = bench_dir / "query-times"
        shutil.rmtree(qdir, ignore_errors=True)
        qdir.mkdir()
        extra["BENCH_QUERY_TIMES"] = str(qdir)
    worker = start_worker(bench_dir, "reuse", extra, counter)
    try:
        reuse = run_cases([OURS], small, args.reps, args.timeout, counter)
        if "groups10x100" in cases:
            run_cases([OURS], ["groups10x100"], args.big_reps, args.timeout, counter, reuse)
        report["reuse"] = reuse
        if args.query_times:
            report["query_times"] = read_query_times(bench_dir / "query-times")
        if args.profile:
            report["profile"] = profile_ours(worker, "groups10x100", 30, bench_dir)
    finally:
        worker.stop()
    flush_redis()

    if args.sqlite:
        report["sqlite"] = sqlite_in_child(args, bench_dir, started)
    report["total_seconds"] = time.monotonic() - started
    report["load_average"] = [min(LOADS), max(LOADS)] if LOADS else None
    signal.alarm(0)
    return report


def read_query_times(folder):
    """Statements the worker ran, aggregated over its processes: [sql, count, seconds], slowest first."""
    agg = {}
    for path in Path(folder).glob("queries-*.json"):
        for sql, (count, seconds) in json.loads(path.read_text()).items():
            entry = agg.setdefault(sql, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return sorted(([sql, c, t] for sql, (c, t) in agg.items()), key=lambda row: -row[2])


def sqlite_in_child(args, bench_dir, started):
    left = args.max_seconds - (time.monotonic() - started) - 10
    if left < 30:
        log("no time left for the SQLite row")
        return {"error": "skipped: no time left"}
    out = bench_dir / "sqlite.json"
    out.unlink(missing_ok=True)
    env = worker_env(
        {"BENCH_BACKEND": "sqlite", "BENCH_DIR": str(bench_dir / "sqlite"), "BENCH_DB_REUSE_MAX": "1000"}
    )
    env.pop("BENCH_COUNT_QUERIES", None)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        "sqlite",
        "--reps",
        str(args.reps),
        "--big-reps",
        str(args.big_reps),
        "--timeout",
        str(args.timeout),
        "--max-seconds",
        str(int(left)),
        "--json",
        str(out),
    ]
    log("SQLite + file-system broker: django-dyrygent only")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        proc.wait(timeout=left + 20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if out.exists():
        return json.loads(out.read_text())
    return {"error": f"sqlite child exited {proc.returncode} without results"}


def machine():
    import platform

    import celery
    import django

    try:
        from importlib.metadata import version

        import celery_dyrygent  # noqa: F401

        cd_version = version("celery-dyrygent")
    except Exception:  # noqa: BLE001
        cd_version = "?"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "django": django.get_version(),
        "celery_dyrygent": cd_version,
        "platform": platform.platform(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "engine_dirty": bool(_git("status", "--porcelain", "--", "django_dyrygent")),
    }


def _git(*args):
    try:
        return subprocess.run(
            ["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


# -- report ------------------------------------------------------------------------------------------


def median(rows, key="seconds"):
    values = [r[key] for r in rows if key in r]
    if not values:
        errors = sorted({r.get("error", "error") for r in rows})
        return None, "/".join(errors) or "n/a"
    return statistics.median(values), None


def fmt_seconds(rows):
    value, problem = median(rows or [{"error": "n/a"}])
    return problem if value is None else f"{value:.3f}s"


def ratio(a_rows, b_rows):
    a, _ = median(a_rows or [])
    b, _ = median(b_rows or [])
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def first(rows, key):
    for r in rows or []:
        if r.get(key) is not None:
            return r[key]
    return None


def render(report):
    res = report.get("results", {})
    reuse = report.get("reuse", {})
    sqlite = report.get("sqlite") if isinstance(report.get("sqlite"), dict) else {}
    has_sqlite = bool(sqlite) and "error" not in sqlite
    lines = []
    m = report["machine"]
    lines.append(
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, Celery {m['celery']}, Django {m['django']}, "
        f"celery-dyrygent {m['celery_dyrygent']}; commit {m.get('commit') or '?'}"
        f"{' + uncommitted engine changes' if m.get('engine_dirty') else ''}"
    )
    lines.append(
        f"Worker: celery worker -P prefork -c 2, all systems' tasks on one queue; "
        f"median of {report['reps']} runs ({report['big_reps']} for 1,000 nodes); "
        "wall clock from submit to done"
    )
    lines.append(
        f"celery-dyrygent tick policy: set_retry_policy{CD_RETRY_POLICY!r} (its floor: 1 s between ticks)"
    )
    lines.append(
        "ours(PG) = Celery's default Django fixup (connections closed around every task), same worker as "
        "the other two; ours(PG, reuse) = CELERY_DB_REUSE_MAX=1000"
    )
    lines.append("")
    head = [
        "case",
        "nodes",
        NATIVE,
        CELERY_DYRYGENT,
        "ours(PG)",
        "ours/native",
        "ours/c-d",
        "ours(PG, reuse)",
        "reuse/native",
        "reuse/c-d",
    ]
    if has_sqlite:
        head.append("ours(SQLite)")
    table = [head]
    for case, (label, nodes) in CASES.items():
        if case not in res:
            continue
        row = res[case]
        tuned = reuse.get(case, {}).get(OURS)
        line = [
            label,
            str(nodes),
            fmt_seconds(row.get(NATIVE)),
            fmt_seconds(row.get(CELERY_DYRYGENT)),
            fmt_seconds(row.get(OURS)),
            ratio(row.get(OURS), row.get(NATIVE)),
            ratio(row.get(OURS), row.get(CELERY_DYRYGENT)),
            fmt_seconds(tuned),
            ratio(tuned, row.get(NATIVE)),
            ratio(tuned, row.get(CELERY_DYRYGENT)),
        ]
        if has_sqlite:
            line.append(fmt_seconds(sqlite.get(case, {}).get(OURS)))
        table.append(line)
    lines.extend(_table(table))
    lines.append("")
    lines.append(
        "Submit time (until apply_async returns) and what the submitting process publishes "
        "(JSON body + headers):"
    )
    table = [["case", "system", "submit", "first message", "client messages", "client bytes"]]
    for case in CASES:
        for system in (NATIVE, CELERY_DYRYGENT, OURS):
            rows = res.get(case, {}).get(system)
            if not rows:
                continue
            submit, problem = median(rows, "submit_seconds")
            size = first(rows, "first_message_bytes")
            total = first(rows, "client_bytes")
            table.append(
                [
                    case,
                    system,
                    problem or f"{submit:.3f}s",
                    "n/a" if size is None else f"{size:,} B",
                    str(first(rows, "client_messages") or "n/a"),
                    "n/a" if total is None else f"{total:,} B",
                ]
            )
    lines.extend(_table(table))
    lines.append("")
    lines.append(
        "django-dyrygent on PostgreSQL: SQL statements (median of runs; worker counts include the first tick)"
    )
    table = [
        [
            "case",
            "worker",
            "task nodes",
            "node rows",
            "submit stmts",
            "worker stmts",
            "per task node",
            "engine time (created->finished)",
        ]
    ]
    for name, source in (("default", res), ("reuse", reuse)):
        for case, (_label, nodes) in CASES.items():
            rows = source.get(case, {}).get(OURS)
            if not rows:
                continue
            wq, _ = median(rows, "worker_queries")
            cq, _ = median(rows, "client_queries")
            eng, _ = median(rows, "engine_seconds")
            table.append(
                [
                    case,
                    name,
                    str(nodes),
                    str(first(rows, "rows") or "n/a"),
                    "n/a" if cq is None else f"{cq:.0f}",
                    "n/a" if wq is None else f"{wq:.0f}",
                    "n/a" if wq is None else f"{wq / nodes:.1f}",
                    "n/a" if eng is None else f"{eng:.3f}s",
                ]
            )
    lines.extend(_table(table))
    if report.get("query_times"):
        qt = report["query_times"]
        total = sum(t for _sql, _c, t in qt)
        lines.append("")
        lines.append(
            f"Where the worker's SQL time goes (reuse worker, all its runs; {total:.2f}s in "
            f"{sum(c for _s, c, _t in qt)} statements):"
        )
        table = [["seconds", "share", "count", "ms each", "statement"]]
        for sql, count, seconds in qt[:10]:
            table.append(
                [
                    f"{seconds:.2f}",
                    f"{seconds / total * 100:.0f}%",
                    str(count),
                    f"{seconds / count * 1000:.2f}",
                    sql[:70],
                ]
            )
        lines.extend(_table(table))
    errors = [
        f"{case} {system}: {r['detail']}"
        for source in (res, reuse, sqlite if has_sqlite else {})
        for case, systems in source.items()
        for system, rows in systems.items()
        for r in rows
        if "error" in r
    ]
    if errors:
        lines.append("")
        lines.append("Errors / timeouts:")
        lines.extend(f"  {e}" for e in sorted(set(errors)))
    lines.append("")
    lines.append(f"Total run time: {report.get('total_seconds', 0):.0f}s")
    if report.get("load_average"):
        low, high = report["load_average"]
        lines.append(
            f"1-minute load average at the start of each case: {low:.2f} to {high:.2f} "
            f"on {m['cpus']} CPUs (above ~1 means other processes competed for the CPUs)"
        )
    return "\n".join(lines)


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=3, help="runs per case and system; the median is reported"
    )
    parser.add_argument("--big-reps", type=int, default=2, help="runs of the 1,000-node case")
    parser.add_argument(
        "--timeout", type=float, default=90, help="seconds one run may take before it counts as timeout"
    )
    parser.add_argument(
        "--native-big-timeout",
        type=float,
        default=45,
        help="seconds native Celery gets for the 1,000-node canvas",
    )
    parser.add_argument("--max-seconds", type=int, default=420, help="hard limit of the whole run")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--sqlite", action="store_true", help="also run our engine on SQLite + file-system broker"
    )
    parser.add_argument(
        "--query-times",
        action="store_true",
        help="time every SQL statement of our engine on the connection-reusing worker",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra 1,000-node run of ours under py-spy (raw profiles in --dir)",
    )
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="worker logs, profiles, intermediate results")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--phase", default="main", choices=["main", "native-big", "sqlite"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.phase == "native-big":
        return phase_native_big(args)
    if args.phase == "sqlite":
        return phase_sqlite(args)
    report = main_phase(args)
    text = render(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

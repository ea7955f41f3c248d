#!/usr/bin/env python
"""Issue 9's target table, from one run: django-dyrygent vs native Celery vs celery-dyrygent.

One real ``celery worker -P prefork`` subprocess at a time consumes the tasks
of all three systems from one queue (PostgreSQL + Redis). Each case is timed
from building the workflow until the submitting process sees it complete:

* Celery's default database handling (the Django fixup closes the connection
  around every task): native, celery-dyrygent and ours on one ``-c 4``
  worker, then the wide case on a ``-c 8`` worker;
* ``CELERY_DB_REUSE_MAX=1000``: ours again on a ``-c 4`` and a ``-c 8`` worker
  (native Celery and celery-dyrygent never touch the database); this worker
  also runs the ``apply_async`` of 10,000 nodes and the 100,000-node workflow
  (build, run, admin page, peak memory).

The worker probes (bench/probes.py) add, for ours: SQL statements per plain
task node, the time each completion holds the workflow row lock, the latency
from a dependency's task returning to its dependent being published, and the
latency of ``wait()`` after the commit that ends the workflow.

Usage (from the repository root, in the benchmark's virtualenv; bench/run.sh does both):
    python bench/run.py [--smoke] [--reps 3] [--json results.json]
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench import cases as C  # noqa: E402
from bench import harness as H  # noqa: E402
from bench.live import run_live  # noqa: E402
from bench.report import errors, render  # noqa: E402

DEFAULT_DIR = Path(tempfile.gettempdir()) / "dyrygent-bench"
RUNNERS = {C.NATIVE: C.run_native, C.CELERY_DYRYGENT: C.run_celery_dyrygent, C.OURS: C.run_ours}


class Watchdog(BaseException):
    """The run's time limit was reached (BaseException: no library's ``except Exception`` swallows it)."""


def _alarm(seconds):
    def fire(signum, frame):
        raise Watchdog(f"time limit of {seconds}s reached")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(int(seconds))


def measure(system, case, timeout, probes=None):
    """One timed run; a failure becomes a row that says so instead of stopping the benchmark."""
    canvases = (case.native if system == C.NATIVE and case.native else case.ours)()
    progress = {}
    try:
        if system == C.OURS:
            C.reset_probes(probes)
            row = C.run_ours(canvases, timeout, name=f"bench {case.name}", progress=progress)
            row.update(C.read_probes(probes, row))
            del row["wait_returned"], row["wait_called"]
            return row
        return RUNNERS[system](canvases, timeout)
    except Watchdog:
        raise
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
        kind = "timeout" if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc) else "error"
        H.log(f"  {system} {case.name}: {kind}: {type(exc).__name__}: {str(exc)[:300]}")
        row = {"error": kind, "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if progress.get("workflows"):
            # What the probes saw of the runs that did not finish still counts (latencies, statements).
            row["partial"] = C.read_probes(probes, progress)
        return row


def run_cases(todo, systems, args, probes, results):
    for case in todo:
        load = os.getloadavg()[0]
        results.setdefault("loads", []).append(load)
        reps = args.big_reps if case.big else args.reps
        H.log(f"case {case.name}: {', '.join(systems)} x {reps} (load average {load:.2f})")
        for rep in range(reps):
            for system in systems:
                if system == C.CELERY_DYRYGENT and rep >= args.cd_reps:
                    continue  # its 1 s tick floor makes its figure stable; one run is enough
                row = measure(system, case, args.timeout, probes)
                results.setdefault(case.name, {}).setdefault(system, []).append(row)
                H.log(f"  rep {rep + 1} {system}: " + (f"{row['seconds']:.3f}s" if "seconds" in row else row["error"]))


def start_worker(bench_dir, name, concurrency, extra_env, probes):
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)  # the tree may have gained a migration
    env = H.child_env({"BENCH_PROBES": "1", "BENCH_WORKER_MEMORY_CAP": "1", **extra_env})
    worker = H.Worker(bench_dir / f"worker-{name}.log", env, concurrency).start()
    warmup = C.Case("warmup", "warm-up", 0, lambda: [C.chained_groups(2, 1)], None)
    row = measure(C.OURS, warmup, 60, probes)  # waits for the worker to boot; not measured
    worker.check_alive()
    H.log(f"worker {name} (-c {concurrency}): up ({row.get('seconds', row)})")
    return worker


def phase_worker(args, bench_dir, probes, name, concurrency, extra, systems, todo, report, after=None):
    worker = start_worker(bench_dir, name, concurrency, extra, probes)
    try:
        for system in systems:
            if system != C.OURS:
                measure(system, C.Case("warmup", "warm-up", 0, lambda: [C.chained_groups(2, 1)], None), 60)
        run_cases(todo, systems, args, probes, report.setdefault(name, {}))
        if after:
            after(worker)
        report.setdefault("worker_peak_bytes", {})[f"{name} -c {concurrency}"] = worker.peak_memory()
    finally:
        worker.stop()
    H.flush_redis()  # whatever a timed-out native canvas left queued


def main_phase(args):
    bench_dir = Path(args.dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _alarm(args.max_seconds)
    H.recreate_postgres_database(H.database_url())
    H.setup_django()
    H.flush_redis()
    import redis
    from django.conf import settings

    import bench.celery_app  # noqa: F401  (the app this process publishes with)

    os.environ["BENCH_COUNTER_URL"] = settings.CELERY_RESULT_BACKEND
    probes = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
    sizes = C.SMOKE if args.smoke else C.FULL
    todo = [c for c in C.cases(sizes) if c.name in args.cases]
    narrow, wide = [c for c in todo if not c.wide], [c for c in todo if c.wide]
    everyone = [C.NATIVE, C.OURS] if args.smoke else [C.NATIVE, C.CELERY_DYRYGENT, C.OURS]
    report = {
        "machine": H.machine(), "sizes": sizes, "smoke": args.smoke, "reps": args.reps,
        "big_reps": args.big_reps, "cd_reps": 0 if args.smoke else args.cd_reps,
        "cases": [(c.name, c.label, c.target, c.nodes) for c in todo], "timeout": args.timeout,
    }
    reuse = {"BENCH_DB_REUSE_MAX": "1000"}
    if args.query_times:
        qdir = bench_dir / "query-times"
        shutil.rmtree(qdir, ignore_errors=True)
        qdir.mkdir()
        reuse = {**reuse, "BENCH_QUERY_TIMES": str(qdir)}
    # The smoke run keeps to two workers of 2 processes (a few seconds in CI).
    small_c, wide_c = (2, 2) if args.smoke else (4, 8)
    if args.smoke:
        narrow, wide = todo, []

    def save():  # after every phase: a run stopped later keeps what it measured (--render)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))

    def build_and_profile(worker):
        if not args.skip_big:
            report["build"] = C.run_build(*sizes["build"])
            H.log(f"apply_async of {report['build']['nodes']} nodes: {report['build']['seconds']:.3f}s")
        if args.profile:
            report["profile"] = profile_ours(worker, [c for c in todo if c.name in PROFILED],
                                             bench_dir, args, probes)

    if narrow:
        phase_worker(args, bench_dir, probes, "default", small_c, {}, everyone, narrow, report)
        save()
    if narrow or not args.skip_big or args.profile:
        phase_worker(args, bench_dir, probes, "reuse", small_c, reuse, [C.OURS], narrow, report,
                     build_and_profile)
        save()
    if wide:
        phase_worker(args, bench_dir, probes, "default-wide", wide_c, {}, everyone, wide, report)

        def profile_wide(worker):
            if args.profile:
                report.setdefault("profile", {}).update(
                    profile_ours(worker, [c for c in wide if c.name in PROFILED], bench_dir, args, probes))

        phase_worker(args, bench_dir, probes, "reuse-wide", wide_c, reuse, [C.OURS], wide, report, profile_wide)
        save()
    if args.live:
        phase_worker(args, bench_dir, probes, "live", small_c, {"BENCH_DB_REUSE_MAX": "1000"}, [C.OURS], [],
                     report, lambda worker: report.update(live=run_live(
                         probes, args.live, args.live_sleep, args.live_window, args.live_settle, args.timeout)))
        save()
    if args.query_times:
        report["query_times"] = read_query_times(bench_dir / "query-times")
    if not (args.skip_big or args.skip_huge):
        # Last: the longest part, and the table above is complete without it.
        phase_worker(args, bench_dir, probes, "huge", small_c, {"BENCH_DB_REUSE_MAX": "1000"}, [C.OURS], [],
                     report, lambda worker: report.update(huge=huge(args, bench_dir, sizes["huge"], worker)))
    report["total_seconds"] = time.monotonic() - started
    signal.alarm(0)
    return report


# -- the 100,000-node workflow: build and admin page in child processes (their own peak memory) ----


def huge(args, bench_dir, size, worker):
    levels, width = size
    out = {"nodes": levels * width}
    built = _child(["--phase", "huge-build", "--levels", str(levels), "--width", str(width)], 600)
    out["build"] = built
    if "workflow" not in built:
        return out
    from django_dyrygent.models import Workflow

    wf = Workflow.objects.get(pk=built["workflow"])
    t0 = time.perf_counter()  # the build's child committed it: the run starts now
    try:
        out["state"] = wf.wait(timeout=args.huge_timeout)
        out["run_seconds"] = (wf.finished_at - wf.created_at).total_seconds()
    except TimeoutError:
        # Out of time: say how far it got, then stop it (the admin page is still rendered).
        out["state"] = "timeout"
        out["run_seconds"] = time.perf_counter() - t0
    wf.refresh_from_db()
    out["nodes_done"] = wf.nodes_succeeded  # before a cancel counts the rest as done
    if out["state"] == "timeout":
        wf.cancel("benchmark: out of time")
    out["worker_peak_bytes"] = worker.peak_memory()
    H.log(f"huge: {out.get('state')} in {out.get('run_seconds')}")
    out["admin"] = _child(["--phase", "huge-admin", "--workflow", built["workflow"]], 600)
    return out


def _child(argv, timeout):
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=H.child_env(), capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"exit {proc.returncode}: {proc.stderr[-500:]}"}


def phase_huge_build(args):
    import django

    django.setup()
    import bench.celery_app  # noqa: F401
    from django_dyrygent.models import Workflow

    t0 = time.perf_counter()
    wf = Workflow(name=f"huge {args.levels}x{args.width}")
    wf.add_celery_canvas(C.chained_groups(args.levels, args.width))
    wf.apply_async()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"workflow": str(wf.pk), "seconds": seconds, "peak_bytes": peak}))


def phase_huge_admin(args):
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    setup_test_environment()
    admin = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "", "pw")
    client = Client()
    client.force_login(admin)
    out = {}
    for what, name in (("page", "change"), ("status", "status")):
        url = reverse(f"admin:django_dyrygent_workflow_{name}", args=[args.workflow])
        t0 = time.perf_counter()
        response = client.get(url)
        out[f"{what}_seconds"] = time.perf_counter() - t0
        out[f"{what}_status"] = response.status_code
        out[f"{what}_bytes"] = len(response.content)
    out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


# -- profiling -------------------------------------------------------------------------------------


#: The cases ``--profile`` runs once more under py-spy, when they are among ``--cases``.
PROFILED = ("chain", "dag", "many", "wide")


def profile_ours(worker, todo, bench_dir, args, probes):
    """Run each case --profile-reps times under py-spy (every pool process); keep the raw profiles in --dir.

    With --profile-native, native Celery's canvas too (``profile-native-<case>-<pid>.txt``), on the
    same worker: the two profiles compare hop by hop (``bench/profile_shares.py``).
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    done = {}
    systems = [C.OURS] + ([C.NATIVE] if args.profile_native else [])
    for system, case in [(system, case) for system in systems for case in todo]:
        prefix = "profile" if system == C.OURS else "profile-native"
        spies = []
        # The pool processes, and the main one: its liveness thread sweeps (recovery.py).
        for pid in [*worker.children(), worker.proc.pid]:
            out = bench_dir / f"{prefix}-{case.name}-{pid}.txt"
            spies.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        time.sleep(1.0)
        for _ in range(args.profile_reps):
            row = measure(system, case, args.timeout, probes)
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        label = case.name if system == C.OURS else f"{case.name} (native)"
        done[label] = row.get("seconds", row.get("error"))
        H.log(f"py-spy profiles of {label} ({done[label]}) in {bench_dir}")
    return done


def read_query_times(folder):
    """Statements the worker ran, aggregated over its processes: [sql, count, seconds], slowest first."""
    agg = {}
    for path in Path(folder).glob("queries-*.json"):
        for sql, (count, seconds) in json.loads(path.read_text()).items():
            entry = agg.setdefault(sql, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return sorted(([sql, c, t] for sql, (c, t) in agg.items()), key=lambda row: -row[2])


def merge(reports):
    """One report from several runs (e.g. the table, then the large workflows run on their own)."""
    merged = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "machine":
                merged[key] = {**merged[key], **value}
            elif value or key not in merged:
                merged[key] = value
    merged["runs"] = len(reports)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one run each, no celery-dyrygent: a few seconds (CI)")
    parser.add_argument("--reps", type=int, default=3, help="runs per small case and system (median shown)")
    parser.add_argument("--big-reps", type=int, default=1, help="runs of the large cases")
    parser.add_argument("--cd-reps", type=int, default=1, help="runs of celery-dyrygent per case")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    parser.add_argument("--huge-timeout", type=float, default=1800, help="seconds the 100,000-node run may take")
    parser.add_argument("--max-seconds", type=int, default=5400, help="hard limit of the whole run")
    names = [c.name for c in C.cases(C.SMOKE)]
    parser.add_argument("--cases", nargs="*", default=names, choices=names,
                        help="which cases of the table (none: only --profile and the large workflows)")
    parser.add_argument("--skip-big", action="store_true",
                        help="skip the apply_async of 10,000 nodes and the 100,000-node workflow")
    parser.add_argument("--skip-huge", action="store_true",
                        help="skip the 100,000-node workflow only (its run takes minutes)")
    parser.add_argument("--query-times", action="store_true",
                        help="time every SQL statement of ours on the connection-reusing worker")
    parser.add_argument("--profile", action="store_true",
                        help="one more chain, DAG, many and wide run of ours under py-spy (raw profiles in --dir)")
    parser.add_argument("--profile-reps", type=int, default=1,
                        help="runs of each case under py-spy (more runs: more samples per hop)")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile, native Celery's canvas of the same cases too")
    parser.add_argument("--live", type=int, default=0, metavar="N",
                        help="the live-workflows case: N workflows each waiting on a sleeping node, at rest")
    parser.add_argument("--live-sleep", type=float, default=60, help="seconds each live workflow's node sleeps")
    parser.add_argument("--live-window", type=float, default=30, help="seconds the live case measures at rest")
    parser.add_argument("--live-settle", type=float, default=15,
                        help="seconds between the last start and the window (start-up traffic)")
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="worker logs, profiles, intermediate files")
    parser.add_argument("--json", help="also write the raw results here (after every phase)")
    parser.add_argument("--render", metavar="JSON", nargs="+",
                        help="print the report of earlier runs' --json files (later ones add to earlier ones)")
    parser.add_argument("--phase", default="main", choices=["main", "huge-build", "huge-admin"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--levels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workflow", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps = args.big_reps = 1
        args.timeout = min(args.timeout, 60)
        args.huge_timeout = min(args.huge_timeout, 60)
        args.max_seconds = min(args.max_seconds, 240)
    if args.phase == "huge-build":
        return phase_huge_build(args)
    if args.phase == "huge-admin":
        return phase_huge_admin(args)
    if args.render:
        report = merge([json.loads(Path(path).read_text()) for path in args.render])
    else:
        report = main_phase(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    text = render(report)
    print(text)
    problems = errors(report)
    if problems and args.smoke:
        print("The smoke run failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the demo workflow to its end, printing its progress as it goes.

With ``--worker`` it also starts a real Celery worker (prefork) for the run
and stops it afterwards, so the whole quick start is one command and needs
no server. Exits non-zero when the workflow does not end as expected.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Count
from django.urls import reverse

from django_dyrygent.models import Workflow, WorkflowNode

from ...workflows import DEFAULT_HOSTS, build_demo_workflow

# The repository root: where ``celery -A example_project`` finds the package.
PROJECT_ROOT = Path(__file__).resolve().parents[4]
DEMO_USER = "admin"
DEMO_PASSWORD = "admin"  # local demo only; refused unless DEBUG is on
# How long a workflow may stay INITIAL before we say no worker seems to run.
NO_WORKER_HINT_AFTER = 15.0
# The start of Celery's SecurityWarning about a worker running as root.
ROOT_WARNING = "You're running the worker with superuser privileges"


class Command(BaseCommand):
    help = "Start the demo workflow and print its progress until it ends."

    def add_arguments(self, parser):
        parser.add_argument("--hosts", dest="hosts", type=int, default=DEFAULT_HOSTS,
                            help="Hosts in the demo (tasks per group/chord header). Default %(default)s.")
        parser.add_argument("--delay", dest="delay", type=float, default=0.2,
                            help="Seconds each demo task sleeps. Default %(default)s.")
        parser.add_argument("--fail", dest="fail", action="store_true", default=False,
                            help="Make one host fail: the workflow is then expected to end FAILURE.")
        parser.add_argument("--timeout", dest="timeout", type=float, default=120.0,
                            help="Give up (exit 1) after this many seconds. Default %(default)s.")
        parser.add_argument("--interval", dest="interval", type=float, default=0.25,
                            help="Seconds between two progress reads. Default %(default)s.")
        parser.add_argument("--worker", dest="worker", action="store_true", default=False,
                            help="Start a Celery worker (prefork) for this run and stop it afterwards.")
        parser.add_argument("--concurrency", dest="concurrency", type=int, default=2,
                            help="Worker processes with --worker. Default %(default)s.")
        parser.add_argument("--superuser", dest="superuser", action="store_true", default=False,
                            help=f"Create the superuser {DEMO_USER!r} with password {DEMO_PASSWORD!r} "
                                 "if it does not exist (DEBUG only: for a local demo).")

    def handle(self, *args, **options):
        worker = self.start_worker(options["concurrency"]) if options["worker"] else None
        try:
            wf = self.run(options, worker)
        finally:
            if worker is not None:
                self.stop_worker(worker)
        self.explain(wf, options["superuser"])

    # -- the run ----------------------------------------------------------------------

    def run(self, options, worker):
        try:
            wf = build_demo_workflow(hosts=options["hosts"], delay=options["delay"], fail=options["fail"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        wf.apply_async()
        kinds = dict(wf.nodes.values_list("kind").annotate(n=Count("id")))
        self.stdout.write(
            f"Started workflow {wf.pk}: {wf.nodes_total} tasks"
            + (f" (+{kinds.get(WorkflowNode.Kind.JOIN, 0)} internal join node(s))"
               if kinds.get(WorkflowNode.Kind.JOIN) else "")
            + f"; broker {settings.CELERY_BROKER_URL.split('://')[0]}, database {connection.vendor}"
        )
        began = time.monotonic()
        last_line = None
        hinted = False
        while True:
            wf.refresh_from_db()
            by_state = dict(
                wf.nodes.filter(kind=WorkflowNode.Kind.TASK).values_list("state").annotate(n=Count("id"))
            )
            active = sum(by_state.get(s, 0) for s in ("QUEUED", "STARTED", "RETRY"))
            line = (
                f"{wf.state:<8} {wf.nodes_done:>3}/{wf.nodes_total} done, "
                f"{by_state.get('STARTED', 0)} running, {active - by_state.get('STARTED', 0)} queued, "
                f"{wf.nodes_failed} failed"
            )
            elapsed = time.monotonic() - began
            if line != last_line:
                self.stdout.write(f"[{elapsed:6.1f}s] {line}")
                last_line = line
            if wf.is_final:
                break
            if worker is not None and worker.poll() is not None:
                raise CommandError(f"The Celery worker exited early with code {worker.returncode}.")
            if not hinted and wf.state == Workflow.State.INITIAL and elapsed > NO_WORKER_HINT_AFTER:
                self.stderr.write(
                    "The workflow has not started yet: is a Celery worker running? "
                    "Start one with: celery -A example_project worker -l info  (or pass --worker)"
                )
                hinted = True
            if elapsed > options["timeout"]:
                raise CommandError(
                    f"Workflow {wf.pk} is still {wf.state} after {options['timeout']:g}s "
                    f"({wf.nodes_done}/{wf.nodes_total} nodes done)."
                )
            time.sleep(options["interval"])
        expected = Workflow.State.FAILURE if options["fail"] else Workflow.State.SUCCESS
        summary = wf.nodes.filter(task_name="demo.summarize").values_list("result", flat=True).first()
        if summary:
            self.stdout.write(f"summarize returned {summary}")
        if wf.state != expected:
            failed = wf.nodes.filter(state=WorkflowNode.State.FAILURE).exclude(error="").first()
            detail = f"\nFirst failure ({failed.task_name}):\n{failed.error}" if failed else ""
            raise CommandError(f"Workflow {wf.pk} ended {wf.state}, expected {expected}.{detail}")
        # One clock for every line: the [..s] of the progress lines. The workflow's own
        # duration (first tick to end) leaves out the wait for the worker to start.
        self.stdout.write(self.style.SUCCESS(
            f"[{elapsed:6.1f}s] Workflow {wf.pk} ended {wf.state} as expected "
            f"({wf.duration.total_seconds():.1f}s from its first tick to its end)."
        ))
        return wf

    # -- the worker -------------------------------------------------------------------

    def start_worker(self, concurrency):
        """A real ``celery worker`` process, as in production, with this command's settings."""
        cmd = [
            sys.executable,
            # Celery warns (SecurityWarning) when the worker runs as root, as it does in a container
            # or CI; this throw-away local worker accepts JSON only, which is what the warning is about.
            # (-W matches the message: a third-party warning class cannot be named at start-up.)
            "-W", f"ignore:{ROOT_WARNING}",
            "-m", "celery", "--quiet", "-A", "example_project", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING",
            # No other workers to meet: skip the start-up handshakes.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"demo-{os.getpid()}@%h",
        ]
        env = dict(os.environ, DJANGO_SETTINGS_MODULE=os.environ.get(
            "DJANGO_SETTINGS_MODULE", "example_project.settings"))
        self.stdout.write(f"Starting a Celery worker: {' '.join(cmd[cmd.index('-m') + 1:])}")
        return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env)

    def stop_worker(self, worker, timeout=30):
        """Warm shutdown (SIGTERM: finish running tasks), then kill if it hangs."""
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The worker did not stop within {timeout}s; killing it.")
                worker.kill()
                worker.wait()
        self.stdout.write(f"Celery worker stopped (exit code {worker.returncode}).")

    # -- where to look next -----------------------------------------------------------

    def explain(self, wf, superuser):
        path = reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])
        python = self.python()
        self.stdout.write("")
        self.stdout.write("See it in the Django admin:")
        self.stdout.write(f"  {python} manage.py runserver")
        self.stdout.write(f"  http://127.0.0.1:8000{path}")
        if superuser:
            if not settings.DEBUG:
                raise CommandError("--superuser creates a known password; it is refused when DEBUG is off.")
            User = get_user_model()
            if User.objects.filter(username=DEMO_USER).exists():
                self.stdout.write(f"  log in as {DEMO_USER!r} (the demo superuser, created earlier)")
            else:
                User.objects.create_superuser(DEMO_USER, "admin@example.invalid", DEMO_PASSWORD)
                self.stdout.write(self.style.WARNING(
                    f"  log in as {DEMO_USER!r} / password {DEMO_PASSWORD!r}: a superuser just created "
                    "for this local demo only; never use it on a reachable server"
                ))
        else:
            self.stdout.write(f"  create a login first: {python} manage.py createsuperuser")
        self.stdout.write(
            "Start more workflows from http://127.0.0.1:8000/ with a worker running beside the server:"
        )
        self.stdout.write(f"  {python} -m celery -A example_project worker -l info")

    def python(self):
        """The interpreter to tell the user about: ``.venv/bin/python`` after ``make demo``."""
        try:
            return str(Path(sys.executable).relative_to(PROJECT_ROOT))
        except ValueError:
            return "python"

#!/usr/bin/env python
"""Take the admin screenshots of the docs (docs/img/*.png) again, from the example project.

Builds a throw-away example project (its own SQLite database and broker
folder in a temporary directory), fills it with workflows driven through the
engine (no worker: nothing is published; start and finish times are then
spread out so the timeline has something to show), serves it with Django's
live server and photographs each page with headless Chromium through
Selenium, cropped to the part the docs describe.

Usage (from the repository root, with the test extra installed and Debian's
chromium and chromium-driver):
    python docs/screenshots.py [--out docs/img] [--only admin-grid ...]

Each picture must stay under 200 KB (the script says so when one does not).
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VAR = tempfile.mkdtemp(prefix="dyrygent-screenshots-")
os.environ["DYRYGENT_VAR_DIR"] = VAR
os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
    os.environ.pop(name, None)  # the example's own SQLite and file-system broker, in VAR

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.testcases import LiveServerThread  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_dyrygent import engine  # noqa: E402
from django_dyrygent.engine import messaging, outcomes  # noqa: E402
from django_dyrygent.models import ApiToken, FailedStart, WorkerHeartbeat, Workflow, WorkflowNode  # noqa: E402
from example_project.demo.workflows import build_demo_workflow  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: The docs' limit for one picture.
MAX_BYTES = 200_000
S = WorkflowNode.State


def quiet_broker():
    """Nothing reaches a broker: the pictures need rows, not running tasks."""
    for name in ("publish", "send_tick", "revoke"):
        setattr(messaging, name, lambda *args, **kwargs: None)


def drive(wf, failing=(), rounds=99, running=()):
    """Run ``wf`` through the engine: each round queues what is ready and ends it.

    Returns the round in which each node was queued and finished, for ``spread``.
    A node is named by its first argument, else its task name: those in
    ``failing`` fail, those in ``running`` are left STARTED, and the rounds
    stop after ``rounds``.
    """
    queued, finished = {}, {}
    for step in range(rounds):
        engine.tick(wf.pk, scheduled=False)
        ready = list(wf.nodes.filter(state=S.QUEUED))
        if not ready:
            break
        for node in ready:
            queued.setdefault(node.pk, step)
            label = node.args[0] if node.args else node.task_name
            if label in running:
                WorkflowNode.objects.filter(pk=node.pk).update(state=S.STARTED)
            elif label in failing:
                outcomes.node_failed(wf.pk, node.task_id, exception=ConnectionError(
                    f"{label}: ssh: connect to host port 22: Connection timed out"))
                finished[node.pk] = step
            else:
                outcomes.node_succeeded(wf.pk, node.task_id, f"{label} done")
                finished[node.pk] = step
    return queued, finished


def spread(wf, queued, finished, seconds=4.0, seed=7, ago=timedelta(minutes=2)):
    """Times a real run would have: rounds ``seconds`` apart, a little wait, runs of varied length."""
    rng = random.Random(seed)
    start = timezone.now() - ago
    nodes = list(wf.nodes.all())
    for node in nodes:
        if node.pk not in queued:
            continue
        node.queued_at = start + timedelta(seconds=queued[node.pk] * seconds)
        node.started_at = node.queued_at + timedelta(seconds=rng.uniform(0.05, 0.6))
        if node.pk in finished:
            node.finished_at = node.started_at + timedelta(seconds=rng.uniform(0.8, seconds - 0.7))
    WorkflowNode.objects.bulk_update(nodes, ["queued_at", "started_at", "finished_at"])
    Workflow.objects.filter(pk=wf.pk).update(created_at=start, started_at=start)


def demo_running():
    """The demo with its last host's provisioning failed, audit done, and the rest still going."""
    wf = build_demo_workflow(hosts=4, fail=True).apply_async()
    queued, finished = drive(wf, failing=("web-4",), running=("web-3",), rounds=3)
    spread(wf, queued, finished, ago=timedelta(seconds=14))
    return wf


def demo_failed():
    wf = build_demo_workflow(hosts=4, fail=True, name="demo").apply_async()
    queued, finished = drive(wf, failing=("web-4",))
    spread(wf, queued, finished)
    return wf


def wide_group(size=2000):
    """A fan-out of ``size`` nodes and its summary, finished: the timeline collapses it to task names."""
    from celery import chain, group

    from example_project.demo.tasks import check, notify, provision

    wf = Workflow(name=f"provision {size} hosts")
    wf.add_celery_canvas(chain(
        group(provision.si(f"web-{i}") for i in range(size)),
        group(check.si(f"web-{i}") for i in range(size)),
        notify.si("ops"),
    ))
    wf.apply_async()
    rng = random.Random(3)
    start = timezone.now() - timedelta(minutes=5)
    nodes = list(wf.nodes.order_by("position"))
    for node in nodes:
        first = node.task_name == "demo.provision"
        base = start if first else start + timedelta(seconds=70)
        if node.task_name == "demo.notify":
            base = start + timedelta(seconds=150)
        node.queued_at = base + timedelta(seconds=rng.uniform(0, 2))
        node.started_at = node.queued_at + timedelta(seconds=rng.expovariate(1 / 12))
        node.finished_at = node.started_at + timedelta(seconds=rng.uniform(3, 20))
        node.state = S.SUCCESS
    nodes[-5].state = S.FAILURE
    WorkflowNode.objects.bulk_update(nodes, ["queued_at", "started_at", "finished_at", "state"])
    Workflow.objects.filter(pk=wf.pk).update(state=Workflow.State.FAILURE, started_at=start,
                                             finished_at=start + timedelta(seconds=170))
    return wf


def past_runs(count=14):
    """Nightly audits started by beat: mostly green, one failed night and one canceled."""
    from celery import chain

    from example_project.demo.tasks import audit, notify

    runs = []
    for night in range(count):
        wf = Workflow(name="nightly-audit", definition="nightly-audit", trigger="schedule")
        wf.add_celery_canvas(chain(audit.si(delay=0), notify.si("ops", delay=0)))
        wf.apply_async()
        if night == 9:
            drive(wf, failing=("ops",))
        elif night == 11:
            engine.tick(wf.pk, scheduled=False)
            wf.cancel("canceled by an operator")
        elif night < count - 1:
            drive(wf)
        else:
            drive(wf, rounds=1, running=("ops",))
        runs.append(wf)
    return runs


def workers():
    """Two workers alive (the oldest sweeps), one silent for 20 minutes."""
    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="celery@web-1", pid=4211, started_at=now - timedelta(hours=6),
                                   last_seen=now, queues=["celery", "reports"], active_task_ids=["a", "b"])
    WorkerHeartbeat.objects.create(hostname="celery@web-2", pid=4388, started_at=now - timedelta(minutes=40),
                                   last_seen=now, queues=["celery"], reserved_task_ids=["c"])
    WorkerHeartbeat.objects.create(hostname="celery@batch-1", pid=977, started_at=now - timedelta(days=1),
                                   last_seen=now - timedelta(minutes=20), queues=["celery"])


def workers_gone():
    WorkerHeartbeat.objects.update(last_seen=timezone.now() - timedelta(minutes=20))


def schedules():
    """A failed scheduled start (what the schedules page and the list say) beside the example's beat entry."""
    FailedStart.objects.create(definition="nightly-audit", trigger="schedule", error=(
        "No workflow definition named 'nightly-audit' in this worker: it started before the definition "
        "was added. Restart the workers."))


def tokens(user):
    ApiToken.issue(user, "deploy pipeline")
    ApiToken.issue(user, "grafana exporter")
    old, _key = ApiToken.issue(user, "laptop (left the team)")
    ApiToken.objects.filter(pk=old.pk).update(revoked_at=timezone.now())


class Camera:
    """One headless Chromium, logged in as a superuser, that saves cropped pictures."""

    def __init__(self, base_url, user, out, only):
        from selenium import webdriver

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        self.profile = tempfile.mkdtemp(prefix="dy-chromium-")
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                     "--window-size=1400,1000", f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
        self.base_url, self.out, self.only = base_url, Path(out), set(only or ())
        self.out.mkdir(parents=True, exist_ok=True)
        client = Client()
        client.force_login(user)
        self.driver.get(base_url + "/admin/login/")
        self.driver.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"})
        # The navigation sidebar closed: the pages get the width, the pictures the content.
        self.driver.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false');")
        self.sizes = {}

    def shoot(self, name, url, selector="#content", height=1000, until="", hide=""):
        """Open ``url`` and save the element ``selector`` as ``name``.png.

        The picture ends with the element ``until`` (what follows it is
        removed) and leaves out the elements matching ``hide``.
        """
        from selenium.webdriver.common.by import By

        if self.only and name not in self.only:
            return
        self.driver.set_window_size(1400, height)
        self.driver.get(self.base_url + url)
        self.driver.execute_script(
            "var root = document.querySelector(arguments[0]);"
            "if (arguments[1]) { for (var el = document.querySelector(arguments[1]); el && el !== root;"
            "  el = el.parentElement) { while (el.nextElementSibling) { el.nextElementSibling.remove(); } } }"
            "if (arguments[2]) { root.querySelectorAll(arguments[2]).forEach(function (el) {"
            "  el.style.display = 'none'; }); }", selector, until, hide)
        target = self.out / f"{name}.png"
        target.write_bytes(self.driver.find_element(By.CSS_SELECTOR, selector).screenshot_as_png)
        self.sizes[name] = target.stat().st_size

    def close(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    try:
        take()
    finally:
        shutil.rmtree(VAR, ignore_errors=True)


def take():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="where the PNG files go")
    parser.add_argument("--only", nargs="*", help="names of the pictures to take again (default: all)")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    quiet_broker()
    user = User.objects.create_superuser("alice", "alice@example.com", "pw")
    running, failed, wide = demo_running(), demo_failed(), wide_group()
    past_runs()
    failed_node = failed.nodes.get(state=S.FAILURE)
    schedules()
    tokens(user)

    server = LiveServerThread("localhost", StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    camera = Camera(f"http://localhost:{server.port}", user, args.out, args.only)
    try:
        change = "admin:django_dyrygent_workflow_change"
        camera.shoot("admin-workflow-page", reverse(change, args=[running.pk]), "#content-main", until="#dy-timeline")
        camera.shoot("admin-dag", reverse(change, args=[running.pk]), "#dy-panel")
        camera.shoot("admin-timeline", reverse(change, args=[failed.pk]), "#dy-timeline")
        camera.shoot("admin-timeline-2000", reverse(change, args=[wide.pk]), "#dy-timeline")
        camera.shoot("admin-grid", reverse("admin:django_dyrygent_workflow_grid", args=["nightly-audit"]))
        camera.shoot("admin-node-actions", reverse("admin:django_dyrygent_workflownode_change",
                                                   args=[failed_node.pk]),
                     height=1400, hide="fieldset:nth-of-type(n+3):not(:has(#dy-node-actions)), .submit-row")
        workflows = reverse("admin:django_dyrygent_workflow_changelist")
        camera.shoot("admin-workflow-list-why", workflows, "div.main")
        with override_settings(DYRYGENT_LIVENESS=True):
            workers()
            camera.shoot("admin-worker-heartbeats", reverse("admin:django_dyrygent_workerheartbeat_changelist"),
                         height=600)
            workers_gone()
            camera.shoot("admin-workflow-list-no-worker", workflows, "div.main", height=800)
        camera.shoot("admin-schedules", reverse("admin:django_dyrygent_workflow_schedules"))
        camera.shoot("admin-api-tokens", reverse("admin:django_dyrygent_apitoken_changelist"), height=600)
    finally:
        camera.close()
        server.terminate()
    too_big = {name: size for name, size in camera.sizes.items() if size > MAX_BYTES}
    print(json.dumps(camera.sizes, indent=1))
    if too_big:
        sys.exit(f"over {MAX_BYTES} bytes: {too_big}")


if __name__ == "__main__":
    main()
